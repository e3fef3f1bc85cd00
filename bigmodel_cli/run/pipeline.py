"""``load(folder, plan)``: the ready object a user's own script runs, placed as a plan says.

A diffusers pipeline folder (``model_index.json``) becomes the ``DiffusionPipeline`` it
names, its weight components built one by one with their library's
``from_pretrained(sub, device_map=<the plan's map>)`` (a pipeline refuses a dict
``device_map``) and the rest loaded by diffusers; ``sequential`` is diffusers' model CPU
offload. A transformers folder (``config.json``) becomes its ``architectures`` class.
``disk`` blocks go to a temporary offload folder that lives as long as the object.
``generate(obj, prompt)`` runs it: an image, or text (token ids) for a causal LM.
diffusers and transformers are optional extras, imported (:mod:`bigmodel_cli.runtime.library`)
only when needed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import weakref
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigmodel_cli import arguments as a
from bigmodel_cli.checkpoint import Checkpoint, load_checkpoint
from bigmodel_cli.checkpoint.model_index import pipeline_entries, read_model_index
from bigmodel_cli.devices import DeviceKey, is_gpu, torch_device
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.json import read_config
from bigmodel_cli.placement.built import library_map
from bigmodel_cli.placement.plan import SPLIT, Plan, PlanLike, as_plan
from bigmodel_cli.placement.strategies import STRATEGIES
from bigmodel_cli.run.place import check_source
from bigmodel_cli.run.request import GenerateOptions, GenerateRequest, as_record
from bigmodel_cli.runtime.inputs import LIBRARIES
from bigmodel_cli.runtime.library import (
    Pretrained,
    component_class,
    from_pretrained,
    import_library,
)

if TYPE_CHECKING:
    from typing import Unpack

_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Offload:
    """One temporary folder for a load's ``disk`` blocks, a subfolder per component."""

    def __init__(self) -> None:
        self.root: Path | None = None

    def folder(self, component: str) -> str:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="bigmodel-offload-"))
        sub = self.root / (component or "model")
        sub.mkdir(exist_ok=True)
        return str(sub)

    def keep_with(self, obj: Any) -> None:
        """Remove the folder when ``obj`` is collected (or at interpreter exit), or when
        :func:`release` is called on it."""
        if self.root is not None:
            obj._bigmodel_offload_folder = str(self.root)
            obj._bigmodel_release = weakref.finalize(obj, _remove, self.root)

    def discard(self) -> None:
        if self.root is not None:
            _remove(self.root)


def _remove(folder: Path) -> None:
    with _signals_held():
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """A SIGINT / SIGTERM arriving inside is held and raised again on leaving, so an
    interrupt cannot leave half of a clean-up undone (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    kept = {s: signal.signal(s, lambda n, _: caught.append(n)) for s in _HELD_SIGNALS}
    try:
        yield
    finally:
        for number, handler in kept.items():
            signal.signal(number, handler)
        if caught:
            signal.raise_signal(caught[0])


def release(obj: Any) -> None:
    """Remove what :func:`load` made for ``obj`` now (its disk offload folder) instead of
    when it is collected; ``obj`` is not to be run after. Safe to call more than once."""
    finalizer = getattr(obj, "_bigmodel_release", None)
    if finalizer is not None:
        with _signals_held():  # the finalizer detaches itself before it removes
            finalizer()


def _build(
    cls: Any, folder: Path, device_map: dict[str, DeviceKey] | None, plan: Plan, off: _Offload
) -> Any:
    """``cls.from_pretrained(folder, device_map=..., dtype, variant, offload_folder)``."""
    disk = device_map is not None and "disk" in device_map.values()
    how = Pretrained(
        device_map, plan.target, plan.variant, off.folder(folder.name) if disk else None
    )
    return from_pretrained(cls, folder, how)


# ---------------------------------------------------------------- load


def load(source: str | os.PathLike[str] | None, plan: PlanLike) -> Any:
    """The ready object: the diffusers pipeline or transformers model in ``source`` (a
    folder, or a Hugging Face repo id whose files are cached), each part where ``plan``
    (a :class:`Plan`, its JSON document, or a plan file) says.

    >>> pipe = load("sd15/", "plan.json")  # doctest: +SKIP
    >>> image = generate(pipe, "an astronaut riding a horse", steps=20)  # doctest: +SKIP
    """
    a.path(source, "source")
    view = as_plan(plan)
    if view.world is not None:
        raise BigmodelError(
            "is a plan over torchrun ranks; load() builds one process's model: make a plan "
            "for one process (no nodes / procs_per_node)",
            view.path,
        )
    ckpt = _checked(source, view)
    folder = ckpt.root
    off = _Offload()
    try:
        if (folder / "model_index.json").is_file():
            obj = _load_pipeline(ckpt, view, off)
        elif (folder / "config.json").is_file():
            obj = _load_model(ckpt, view, off)
        else:
            raise BigmodelError("not a diffusers pipeline or transformers model folder", folder)
    except BaseException:
        off.discard()
        raise
    off.keep_with(obj)
    return obj


def _checked(source: str | os.PathLike[str] | None, plan: Plan) -> Checkpoint:
    """The checkpoint of ``source``, whose headers must still be the ones the plan was made
    from (as ``bigmodel run`` checks)."""
    path = None if source is None else os.fspath(source)
    ckpt = load_checkpoint(path, plan.variant, revision=plan.commit_for(path), remote=False)
    check_source(ckpt, plan)
    return ckpt


def _load_pipeline(ckpt: Checkpoint, plan: Plan, off: _Offload) -> Any:
    folder = ckpt.root
    index = read_model_index(folder)
    entries = pipeline_entries(index)
    for name in plan.device_map:
        if None in entries.get(name, (None, None)):
            raise BigmodelError(f"plan places {name!r}, which model_index.json lacks", folder)
        if not (folder / name / "config.json").is_file():
            raise BigmodelError(
                "is missing: the component cannot be built", folder / name / "config.json"
            )
    diffusers = import_library("diffusers")
    for lib, _ in entries.values():
        if lib in LIBRARIES:
            import_library(lib)
    sequential = STRATEGIES[plan.strategy].reports_peak  # all on cpu, moved in turn
    built = {}
    for name in plan.device_map:
        cls = component_class(*entries[name], folder / "model_index.json")  # type: ignore[arg-type]
        component = next(c for c in ckpt.components if c.name == name)
        placed = None if sequential else library_map(plan, component)  # in its built names
        built[name] = _build(cls, folder / name, placed, plan, off)
        if not sequential and plan.device_map[name] != SPLIT:
            _hook_whole(built[name], plan.device_map[name], _main_device(plan))
    cls = getattr(diffusers, str(index.get("_class_name")), diffusers.DiffusionPipeline)
    pipe = from_pretrained(cls, folder, Pretrained(dtype=plan.target), **built)
    if sequential:
        pipe.enable_model_cpu_offload(device=_execution_device(plan))
    else:
        pipe.hf_device_map = dict(plan.device_map)
    return pipe


def _main_device(plan: Plan) -> DeviceKey:
    """The GPU that runs blocks kept on cpu (diffusers uses GPU 0), else cpu."""
    maps = [plan.device_map, *plan.component_maps.values()]
    return next((d for m in maps for d in m.values() if is_gpu(d)), "cpu")


def _hook_whole(model: Any, where: DeviceKey, main: DeviceKey) -> None:
    """Dispatch a whole component as diffusers' pipeline device_map does: with a root hook
    that moves inputs to its execution device and outputs back, so components on different
    devices call each other; on cpu beside a GPU its weights are streamed to ``main``."""
    import torch
    from accelerate import dispatch_model
    from accelerate.hooks import remove_hook_from_module

    if not isinstance(model, torch.nn.Module) or where == "disk":  # disk: hooked already
        return
    remove_hook_from_module(model, recurse=True)
    kwargs: dict[str, Any] = {"force_hooks": True, "skip_keys": getattr(model, "_skip_keys", None)}
    if where == "cpu" and main != "cpu":
        kwargs.update(main_device=main, state_dict=model.state_dict())
    dispatch_model(model, device_map={"": where}, **kwargs)


def _execution_device(plan: Plan) -> str:
    """Where a sequential plan runs each component: its GPU, or cpu on a machine without."""
    return "cpu" if plan.execution_device is None else torch_device(plan.execution_device)


def _load_model(ckpt: Checkpoint, plan: Plan, off: _Offload) -> Any:
    folder = ckpt.root
    config = read_config(folder) or {}
    archs = config.get("architectures")
    transformers = import_library("transformers")
    name = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    cls = getattr(transformers, name, None) if name else None
    cls = cls or transformers.AutoModelForCausalLM
    if len(plan.device_map) != 1:
        raise BigmodelError("plan places several components; this folder holds one model", folder)
    component = replace(ckpt.components[0], name=next(iter(plan.device_map)))
    sequential = STRATEGIES[plan.strategy].reports_peak
    device_map: dict[str, DeviceKey] = {"": "cpu"}
    if not sequential:
        device_map = library_map(plan, component)  # in the names the library builds
    model = _build(cls, folder, device_map, plan, off)
    if sequential:  # model CPU offload: on the execution device while it runs
        from accelerate import cpu_offload_with_hook

        model, hook = cpu_offload_with_hook(model, _execution_device(plan))
        model._bigmodel_offload_hook = hook
    return model


# ---------------------------------------------------------------- generate


def is_pipeline(obj: Any) -> bool:
    return any(c.__name__ == "DiffusionPipeline" for c in type(obj).__mro__)


def generate(
    obj: Any,
    prompt: str | None = None,
    request: GenerateRequest | None = None,
    **options: Unpack[GenerateOptions],
) -> Any:
    """Run what :func:`load` returned, as ``request`` (or the keywords of a
    :class:`~.request.GenerateRequest`) asks. A pipeline gives its first image (a PIL image,
    or what ``output_type`` asks for); a causal LM its greedy continuation: text when given
    a prompt (tokenizer from the model's folder), new token ids when given ``input_ids``.

    >>> generate(pipe, "an astronaut riding a horse", steps=20).save("out.png")  # doctest: +SKIP
    >>> generate(llama, "The capital of France is", max_new_tokens=8)  # doctest: +SKIP
    """
    a.text(prompt, "prompt")
    r = as_record(GenerateRequest, request, options)
    if is_pipeline(obj):
        if prompt is None:
            raise BigmodelError("generate() needs a prompt for a pipeline")
        return _image(obj, prompt, r)
    return _text(obj, prompt, r.seed, r.max_new_tokens, r.input_ids)


def _image(pipe: Any, prompt: str, r: GenerateRequest) -> Any:
    import torch

    out = pipe(
        prompt,
        num_inference_steps=r.steps,
        generator=torch.Generator("cpu").manual_seed(r.seed),
        height=r.height,
        width=r.width,
        output_type=r.output_type,
    )
    return out.images[0]


def _input_device(model: Any) -> str:
    """The first GPU of the model's map (no hook moves inputs there), else cpu."""
    placed = getattr(model, "hf_device_map", None) or {}
    gpu = next((d for d in placed.values() if is_gpu(d)), None)
    return "cpu" if gpu is None else torch_device(gpu)


def _tokenizer(model: Any) -> Any:
    folder = Path(str(getattr(model, "name_or_path", "") or ""))
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((folder / n).is_file() for n in names):
        raise BigmodelError(
            "no tokenizer in the model's folder; pass input_ids instead of a prompt", folder
        )
    return from_pretrained(import_library("transformers").AutoTokenizer, folder, Pretrained())


def _text(model: Any, prompt: str | None, seed: int, max_new_tokens: int, input_ids: Any) -> Any:
    import torch

    if (prompt is None) == (input_ids is None):
        raise BigmodelError("generate() needs a prompt or input_ids (one of them)")
    tokenizer = _tokenizer(model) if input_ids is None else None
    ids = tokenizer(prompt, return_tensors="pt").input_ids if tokenizer else input_ids
    ids = torch.as_tensor(ids).reshape(1, -1).to(_input_device(model))
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=_pad_id(model, tokenizer),
        )
    new = out[0, ids.shape[1] :].tolist()
    return tokenizer.decode(new, skip_special_tokens=True) if tokenizer else new


def _pad_id(model: Any, tokenizer: Any) -> int:
    config = model.generation_config
    found = (config.pad_token_id, getattr(tokenizer, "pad_token_id", None), config.eos_token_id)
    for value in found:
        value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, int):
            return value
    return 0
