"""Building a component with its own library (diffusers / transformers): the one place.

Here only are the libraries imported (:func:`import_library`, :func:`attribute`), a class
resolved from its name (:func:`component_class`), ``from_pretrained``'s arguments
assembled (:func:`from_pretrained`: ``device_map``, the dtype under the name the library
takes, ``variant``, ``offload_folder``) and a model built on the meta device from its
config (:func:`build_on_meta`). ``load()``, ``run --forward``, ``run --generate``, the
planner's tracing and the torchrun pipeline stages all build through these.

Their output is held back once, by :func:`held`: while a library is imported and called,
the warnings and log records of it and what it imports (torch, torchao, bitsandbytes,
accelerate), whatever handlers they set, are kept as lines, and progress bars are off;
``run --generate --verbose`` shows the lines, an error leaving :func:`held` carries them.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigmodel_cli.checkpoint.built_names import NOT_IMPORTABLE, BuiltNames, renamed_by_patterns
from bigmodel_cli.checkpoint.summary import CheckpointSummary
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.json import read_config
from bigmodel_cli.runtime.inputs import LIBRARIES, Model
from bigmodel_cli.runtime.kept_names import kept_or_asked, names_key
from bigmodel_cli.runtime.kv_layers import PER_LAYER, ConfigRead
from bigmodel_cli.sizes import DType, torch_dtype

if TYPE_CHECKING:
    import torch

# loggers whose lines are held back: the libraries and what they import (bitsandbytes'
# CPU kernels, torchao's extensions and torch's pytree registry talk on import)
HELD = ("torch", "bitsandbytes", "torchao", "accelerate", "huggingface_hub", *LIBRARIES)


class LibraryMissing(BigmodelError):
    """A component's library is not installed (exit 2, naming the extra to install)."""


# ---------------------------------------------------------------- their output, held


_CALL_HANDLERS = logging.Logger.callHandlers  # the logging module's own


def _held_name(name: str) -> bool:
    return name.split(".")[0] in HELD


@dataclass
class Held:
    """What the libraries said while held (internal, mutable): one line per log record or
    warning, in order, and the progress bars to turn back on."""

    lines: list[str] = field(default_factory=list)
    _bars: list[Any] = field(default_factory=list)

    def take_over(self) -> None:
        """Records of the held loggers (their children too: torch gives many a handler of
        their own, some while a library is imported) go to :attr:`lines`, whatever their
        handlers; the libraries' progress bars off (again after an import)."""
        lines = self.lines

        def call_handlers(logger: logging.Logger, record: logging.LogRecord) -> None:
            if not _held_name(record.name):
                _CALL_HANDLERS(logger, record)
                return
            lines.append(f"{record.name}: {record.levelname.lower()}: {record.getMessage()}")

        logging.Logger.callHandlers = call_handlers  # type: ignore[method-assign,assignment]
        for name in LIBRARIES:
            utils = _imported(f"{name}.utils.logging")
            if utils is not None and utils.is_progress_bar_enabled():
                utils.disable_progress_bar()
                self._bars.append(utils)

    def give_back(self) -> None:
        logging.Logger.callHandlers = _CALL_HANDLERS  # type: ignore[method-assign]
        for utils in self._bars:
            utils.enable_progress_bar()
        self._bars.clear()

    def warned(self, caught: list[warnings.WarningMessage]) -> None:
        for w in caught:
            line = f"{w.category.__name__}: {w.message} ({Path(w.filename).name}:{w.lineno})"
            if line not in self.lines:
                self.lines.append(line)


def _imported(name: str) -> Any:
    import sys

    return sys.modules.get(name)


_current: list[Held] = []  # the innermost held(), which imports re-apply


@contextmanager
def held() -> Iterator[Held]:
    """The libraries' warnings, log lines and progress bars held back while inside; their
    lines are in the :class:`Held` it gives (stderr stays ours), and in the ``warnings``
    of a :class:`BigmodelError` that leaves it (shown with the error)."""
    if _current:  # nested: the outer one holds already
        yield _current[-1]
        return
    now = Held()
    _current.append(now)
    now.take_over()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield now
            except BigmodelError as error:
                now.warned(caught)
                error.warnings += tuple(now.lines)
                raise
            finally:
                now.warned(caught)
    finally:
        _current.pop()
        now.give_back()


# ---------------------------------------------------------------- importing, resolving


def import_library(name: str, needed_for: str = "loading this model") -> Any:
    """diffusers / transformers (their output held), or :class:`LibraryMissing` naming
    the extra that provides it. Nothing else is imported, whatever a file names."""
    _check_library(name)
    with held() as h:
        try:
            module = importlib.import_module(name)
        except ImportError:
            raise LibraryMissing(
                f"{needed_for} needs the {name} library: pip install 'bigmodel-cli[{name}]'"
            ) from None
        h.take_over()
    return module


def _check_library(name: object, where: str | Path | None = None) -> None:
    if name not in LIBRARIES:
        allowed = " or ".join(LIBRARIES)
        raise BigmodelError(f"names library {name!r}; only {allowed} are imported", where)


def attribute(module: str, name: str) -> Any:
    """``name`` of a submodule of a library (``transformers.masking_utils``)."""
    import_library(module.split(".")[0])
    with held():
        return getattr(importlib.import_module(module), name)


def component_class(
    library: str,
    class_name: str,
    where: str | Path | None = None,
    needed_for: str = "loading this model",
) -> Any:
    """The class a component's ``model_index.json`` entry or ``config.json`` names."""
    _check_library(library, where)
    module = import_library(library, needed_for)
    with held() as h:  # the class's own module may be imported only now
        cls = getattr(module, class_name, None)
        h.take_over()
    if cls is None:
        version = getattr(module, "__version__", "")
        raise BigmodelError(f"{library} {version} has no class {class_name}".strip(), where)
    return cls


def dtype_kwarg(library: Any) -> str:
    """transformers >= 4.56 calls it ``dtype``; diffusers and older ones ``torch_dtype``."""
    if library.__name__ != "transformers":
        return "torch_dtype"
    major, minor = (int(p) for p in library.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


# ---------------------------------------------------------------- building


@dataclass(frozen=True)
class Pretrained:
    """What ``from_pretrained`` is given besides the folder."""

    device_map: dict[str, Any] | None = None
    dtype: DType | None = None
    variant: str | None = None
    offload_folder: str | None = None


def pretrained_kwargs(library: Any, how: Pretrained) -> dict[str, Any]:
    """``from_pretrained``'s keyword arguments for ``how`` (pure, but for the dtype)."""
    kwargs: dict[str, Any] = {}
    if how.device_map is not None:
        kwargs["device_map"] = how.device_map
    if how.offload_folder is not None:
        kwargs["offload_folder"] = how.offload_folder
    if how.dtype is not None:
        kwargs[dtype_kwarg(library)] = torch_dtype(how.dtype.code)
    if how.variant is not None:
        kwargs["variant"] = how.variant
    return kwargs


def from_pretrained(cls: Any, folder: str | Path, how: Pretrained, **parts: Any) -> Any:
    """``cls.from_pretrained(folder, ...)`` with ``how`` (and a pipeline's ``parts``), the
    library's output held."""
    library = import_library(cls.__module__.split(".")[0])
    with held():
        return cls.from_pretrained(str(folder), **pretrained_kwargs(library, how), **parts)


def build_on_meta(m: Model, dtype: torch.dtype | None = None) -> Any:
    """The component's model from its config on the meta device (no memory, no init
    cost), at ``dtype`` when given; in eval mode."""
    import torch

    cls = component_class(m.library or "", m.class_name or "", needed_for="tracing")
    with held(), torch.device("meta"):
        if m.library == "transformers":
            model = cls._from_config(cls.config_class.from_dict(dict(m.config)))
        else:
            model = cls.from_config(dict(m.config))
    if dtype is not None:
        model = torch.nn.Module.to(model, dtype)
    return model.eval()


# ---------------------------------------------------------------- reading a config


def library_config(cfg: Mapping[str, Any]) -> ConfigRead | None:
    """``cfg`` as transformers' own config class reads it: its defaults filled in, and its
    decoder's layers as ``DynamicCache`` dispatches them (``get_layer_types_and_kwargs``);
    None without transformers, for a model type it does not know, or a config it refuses."""
    try:
        mapping = attribute("transformers", "CONFIG_MAPPING")
        layer_types = attribute("transformers.cache_utils", "get_layer_types_and_kwargs")
    except (LibraryMissing, AttributeError):
        return None
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in mapping:
        return None
    cls = mapping[model_type]
    decode = getattr(cls, "_decode_special_floats", None)  # {"__float__": "Infinity"}, as read
    with held():
        try:
            made = cls.from_dict(decode(dict(cfg)) if decode else dict(cfg))
            text = made.get_text_config(decoder=True)
            kinds, _ = layer_types(text)
            layers = list(text.per_layer_config)
        except Exception:  # a config its class refuses, an older transformers: the JSON alone
            return None
        common = {**text.to_dict(), "model_type": getattr(text, "model_type", model_type)}
        per_layer = tuple(common | {k: getattr(c, k, None) for k in PER_LAYER} for c in layers)
        return ConfigRead({**made.to_dict(), **common}, tuple(kinds), per_layer)


# ---------------------------------------------------------------- the names it builds


def library_version(name: str = "transformers") -> str | None:
    """``"transformers 5.25.0"``, or None when it is not importable."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    return f"{name} {module.__version__}"


def library_names(
    folder: Path, stored: Sequence[str], library: tuple[str, str] | None = None
) -> BuiltNames:
    """The names the library builds for the model in ``folder`` (``config.json``) whose
    checkpoint stores ``stored``. ``library`` is a pipeline entry's ``(library, class)``;
    without it the class is ``config.json``'s first ``architectures`` entry."""
    config = read_config(folder) or {}
    if library is not None and library[0] != "transformers":
        return BuiltNames(note=f"{library[0]} builds the names it stores")
    if library is None and ("_class_name" in config or "_diffusers_version" in config):
        return BuiltNames(note="diffusers builds the names it stores")
    archs = config.get("architectures")
    class_name = library[1] if library else None
    if class_name is None and isinstance(archs, list) and archs and isinstance(archs[0], str):
        class_name = archs[0]
    if class_name is None and "model_type" not in config:
        return BuiltNames(note="config.json names no transformers class")
    return kept_or_asked(
        names_key(class_name, config, stored), stored, lambda: _asked(folder, class_name, stored)
    )


def _asked(folder: Path, class_name: str | None, stored: Sequence[str]) -> BuiltNames:
    try:
        transformers = import_library("transformers")
    except LibraryMissing:
        return BuiltNames(note=NOT_IMPORTABLE)
    try:
        with held():
            return _from_transformers(transformers, folder, class_name, stored)
    except BigmodelError:
        raise
    except Exception as exc:  # the library's own refusal, as one line
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else repr(exc)
        return BuiltNames(note=f"transformers could not build {class_name} on meta ({reason})")


def _from_transformers(
    transformers: Any, folder: Path, class_name: str | None, stored: Sequence[str]
) -> BuiltNames:
    import torch

    config = transformers.AutoConfig.from_pretrained(str(folder))
    cls = getattr(transformers, class_name, None) if class_name else None
    with torch.device("meta"):
        if cls is not None and hasattr(cls, "_from_config"):
            model = cls._from_config(config)
        else:
            cls = transformers.AutoModelForCausalLM
            model = cls.from_config(config)
    meta = model.state_dict()
    built, rules = _renamed(model, stored, meta)
    classes = set(getattr(model, "_no_split_modules", None) or ())
    no_split = tuple(
        name for name, m in model.named_modules() if name and type(m).__name__ in classes
    )
    return BuiltNames(
        library=f"transformers {transformers.__version__}",
        class_name=type(model).__name__,
        built=built,
        params=tuple(meta),
        tied=_tied(model),
        no_split=no_split,
        key_mapping=rules,
    )


def _renamed(
    model: Any, stored: Sequence[str], meta: dict[str, Any]
) -> tuple[dict[str, str | None], dict[str, str]]:
    """Each stored name as ``from_pretrained`` renames it (its conversion mapping and
    ``base_model_prefix``), None where the model takes no such tensor; and the rules used."""
    prefix = model.base_model_prefix
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            WeightConverter,
            WeightRenaming,
            rename_source_key,
        )
    except ImportError:  # transformers 4: the class's own key mapping
        mapping_v4 = getattr(model, "_checkpoint_conversion_mapping", None) or {}
        return renamed_by_patterns(mapping_v4, prefix, stored, meta), dict(mapping_v4)
    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    built: dict[str, str | None] = {}
    for name in stored:
        new, _ = rename_source_key(name, renamings, converters, prefix, meta)
        if new not in meta and name in meta:
            new, _ = rename_source_key(name, [], [], prefix, meta)
        built[name] = new if new in meta else None
    rules = {
        "|".join(m._original_source_patterns): "|".join(m._original_target_patterns)
        for m in mapping
        if getattr(m, "_was_used", False)
    }
    return built, rules


def _tied(model: Any) -> tuple[tuple[str, ...], ...]:
    """Groups of parameter names that share one tensor in the built model."""
    by_tensor: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(param), []).append(name)
    return tuple(tuple(sorted(g)) for g in by_tensor.values() if len(g) > 1)


def with_built_names(summary: CheckpointSummary) -> CheckpointSummary:
    """``summary`` with each component's stored -> built names where they differ."""
    if summary.checkpoint is None or summary.checkpoint.kind == "file":
        return summary
    found = {
        c.name: library_names(c.folder, [t.name for t in c.tensors], c.library).renamed()
        for c in summary.checkpoint.components
    }
    return replace(summary, built={name: m for name, m in found.items() if m})
