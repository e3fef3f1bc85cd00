"""``bigmodel run --forward``: build each component with its own library, run it once.

A component whose ``model_index.json`` entry (or ``config.json``) names a diffusers or
transformers class is built with ``from_pretrained(folder, device_map=<the plan's map>)``
and given one forward pass on dummy inputs shaped from its config. This proves that the
plan's placement is one the libraries accept and can execute across devices. diffusers
and transformers are optional extras, imported only here and only when asked.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigmodel_cli.checkpoint import Checkpoint, Component
from bigmodel_cli.devices import DeviceKey, is_gpu, torch_device
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.placement.plan import Plan
from bigmodel_cli.run.peak import measure_peak
from bigmodel_cli.run.pipeline import dtype_kwarg
from bigmodel_cli.runtime.calls import forward, make_inputs
from bigmodel_cli.runtime.estimate import model_of
from bigmodel_cli.runtime.inputs import LIBRARIES, kind_of
from bigmodel_cli.runtime.trace import quiet
from bigmodel_cli.sizes import DType, torch_dtype

if TYPE_CHECKING:
    import torch

SEQUENCE = 8  # tokens of dummy text input
MAX_SIDE = 32  # largest dummy latent side, so a forward pass stays cheap


@dataclass(frozen=True)
class ForwardResult:
    """One component's forward pass, or why there was none (``skipped``)."""

    component: str
    library: str | None
    class_name: str | None
    output_shape: tuple[int, ...] | None
    seconds: float
    skipped: str | None = None
    peak: int | None = None  # bytes the pass allocated above its weights (measured)
    estimate: int | None = None  # the plan's activations for it (at the plan's inputs)


def model_class(ckpt: Checkpoint, c: Component) -> tuple[str, str] | None:
    """(library, class) from the pipeline's model_index.json entry, else config.json."""
    m = model_of(ckpt, c)
    return (m.library, m.class_name) if m.library and m.class_name else None


def input_device(device_map: dict[str, DeviceKey]) -> str:
    """Where dummy inputs start: the first module's GPU, else cpu (hooks move them on)."""
    first = next(iter(device_map.values()), "cpu")
    return torch_device(first) if is_gpu(first) else "cpu"


def _library(name: str, component: str, class_name: str) -> Any:
    try:
        with quiet():  # the libraries' import-time warnings are not this run's
            module = importlib.import_module(name)
    except ImportError:
        raise BigmodelError(
            f"--forward needs the {name} library to build {component} ({class_name}); "
            f"install it with pip install 'bigmodel-cli[{name}]'"
        ) from None
    module.utils.logging.set_verbosity_error()
    module.utils.logging.disable_progress_bar()
    return module


def _side(config: Any, blocks: int, scale: int = 1) -> int:
    size = config.get("sample_size", 32) if isinstance(config, dict) else 32
    size = size[0] if isinstance(size, list | tuple) else int(size or 32)
    factor = 2 ** max(blocks - 1, 0)
    return max(factor, min(size // scale, MAX_SIDE) // factor * factor)


def _unet_call(model: Any, device: str) -> torch.Tensor:
    import torch

    cfg, dtype = model.config, model.dtype
    side = _side(dict(cfg), len(cfg.block_out_channels))
    cross = cfg.cross_attention_dim
    cross = cross[0] if isinstance(cross, list | tuple) else cross
    sample = torch.randn(1, cfg.in_channels, side, side, dtype=dtype, device=device)
    text = torch.randn(1, SEQUENCE, cross, dtype=dtype, device=device)
    extra: dict[str, Any] = {}
    if cfg.addition_embed_type == "text_time":  # SDXL: pooled text and six time ids
        width = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, width, dtype=dtype, device=device),
            "time_ids": torch.zeros(1, 6, dtype=dtype, device=device),
        }
    timestep = torch.tensor([1], device=device)
    return model(sample, timestep, encoder_hidden_states=text, **extra).sample


def _vae_call(model: Any, device: str) -> torch.Tensor:
    import torch

    cfg = model.config
    factor = 2 ** max(len(cfg.block_out_channels) - 1, 0)
    side = max(1, min(int(cfg.sample_size) // factor, MAX_SIDE))
    latent = torch.randn(1, cfg.latent_channels, side, side, dtype=model.dtype, device=device)
    return model.decode(latent).sample


def _text_call(model: Any, device: str) -> torch.Tensor | None:
    import torch

    config = model.config
    vocab = getattr(config, "vocab_size", None)
    if vocab is None and hasattr(config, "get_text_config"):
        vocab = getattr(config.get_text_config(), "vocab_size", None)
    if not isinstance(vocab, int) or vocab <= 0:
        return None
    ids = torch.randint(0, vocab, (1, SEQUENCE), device=device)
    extra = {"decoder_input_ids": ids} if getattr(config, "is_encoder_decoder", False) else {}
    out = model(input_ids=ids, **extra)
    for key in ("logits", "last_hidden_state"):
        if getattr(out, key, None) is not None:
            return getattr(out, key)
    return out[0]


def _call(library: str, class_name: str, model: Any, device: str) -> torch.Tensor | None:
    """One forward pass on dummy inputs, or None when the class is not one we can feed."""
    if library == "transformers":
        return _text_call(model, device)
    config = model.config
    if "cross_attention_dim" in config and "in_channels" in config:
        return _unet_call(model, device)
    if "latent_channels" in config and hasattr(model, "decode"):
        return _vae_call(model, device)
    return None


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _forward_one(
    ckpt: Checkpoint,
    c: Component,
    library: str,
    class_name: str,
    plan: Plan,
    dtype: DType | None,
) -> ForwardResult:
    import torch

    module = _library(library, c.name, class_name)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise BigmodelError(
            f"--forward: {library} {module.__version__} has no class {class_name}", c.folder
        )
    device_map = plan.module_map(c.name)
    kwargs: dict[str, Any] = {"device_map": device_map}
    if dtype is not None:
        kwargs[dtype_kwarg(module)] = torch_dtype(dtype.code)
    if ckpt.variant is not None:
        kwargs["variant"] = ckpt.variant
    offload = (
        Path(tempfile.mkdtemp(prefix="bigmodel-offload-"))
        if "disk" in device_map.values()
        else None
    )
    if offload is not None:
        kwargs["offload_folder"] = str(offload)
    needs = plan.needs.get(c.name)
    shapes = needs.inputs if needs is not None else None
    kind = kind_of(model_of(ckpt, c))
    try:
        model = cls.from_pretrained(str(c.folder), **kwargs).eval()
        _sync()
        start = time.perf_counter()
        device = input_device(device_map)
        if shapes and kind is not None:  # the plan's inputs: its estimate, measured
            fed = make_inputs(shapes, model.dtype, device)
            out, peak = measure_peak(lambda: forward(kind, model, fed), _gpus(device_map))
        else:
            with torch.no_grad():
                out = _call(library, class_name, model, device)
            peak = None
        _sync()
        seconds = time.perf_counter() - start
    except BigmodelError:
        raise
    except Exception as exc:  # the library's reason, as one line
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise BigmodelError(f"--forward: {class_name} failed ({reason})", c.folder) from None
    finally:
        if offload is not None:
            shutil.rmtree(offload, ignore_errors=True)
    if out is None:
        return ForwardResult(
            c.name, library, class_name, None, 0.0, f"no dummy inputs known for {class_name}"
        )
    estimate = needs.activations if needs is not None else None
    return ForwardResult(
        c.name, library, class_name, tuple(out.shape), seconds, None, peak, estimate
    )


def _gpus(device_map: dict[str, DeviceKey]) -> list[int]:
    return sorted({d for d in device_map.values() if is_gpu(d)})


def run_forward(ckpt: Checkpoint, plan: Plan, dtype: DType | None) -> tuple[ForwardResult, ...]:
    """One forward pass per component that names a diffusers / transformers class."""
    import gc

    import torch

    results = []
    for c in ckpt.components:
        found = model_class(ckpt, c)
        if found is None:
            why = "no model_index.json entry or config.json names its class"
            results.append(ForwardResult(c.name, None, None, None, 0.0, why))
            continue
        library, class_name = found
        if library not in LIBRARIES:
            why = f"{library} is not a library --forward knows ({', '.join(LIBRARIES)})"
            results.append(ForwardResult(c.name, library, class_name, None, 0.0, why))
            continue
        results.append(_forward_one(ckpt, c, library, class_name, plan, dtype))
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return tuple(results)
