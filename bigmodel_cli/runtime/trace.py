"""Estimate one forward pass without running it: the component is built from its config
on the meta device with its own library (:mod:`.library`), turned into fake
tensors (``FakeTensorMode``: shapes and dtypes, no memory), and called once on fake inputs
while a dispatch mode counts the bytes of the tensors the pass creates while they live
(:func:`live_bytes`: MemTracker's accounting without its per-module snapshots). The
activations are that count's peak: inputs, intermediates and outputs, not the weights.

Building the model also tells the planner which weights belong to linear layers (what
``--quantize`` replaces), and tracing it the order in which its modules run (the forward
order for ``auto``: registration order is not it, a UNet registers ``up_blocks`` before
``mid_block``).
torch is imported here on first use, the libraries by :mod:`.library`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bigmodel_cli.runtime.calls import forward, make_inputs
from bigmodel_cli.runtime.inputs import Model, Shape, kind_of
from bigmodel_cli.runtime.library import attribute, build_on_meta, held

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Built:
    """What building a component on the meta device tells: its modules (in the order they
    ran when traced, else registered), the weights of its linear layers, and the modules
    the quantizers keep."""

    order: tuple[str, ...]
    linears: frozenset[str]
    keep: frozenset[str]


def describe(model: Any) -> Built:
    import torch

    linear_types: tuple[type, ...] = (torch.nn.Linear,)
    if type(model).__module__.startswith("transformers."):
        linear_types += (attribute("transformers.pytorch_utils", "Conv1D"),)  # GPT-2's
    modules = list(model.named_modules())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return Built(
        order=tuple(name for name, _ in modules if name),
        linears=frozenset(f"{n}.weight" for n, mod in modules if isinstance(mod, linear_types)),
        keep=frozenset(n for n, mod in modules if head is not None and mod is head),
    )


def activations(
    model: Any, kind: str, shapes: Mapping[str, Shape], dtype: torch.dtype
) -> tuple[int, tuple[str, ...]]:
    """Peak bytes of live tensors beyond the weights during one forward pass of ``model``
    (built on meta) fed ``shapes``, traced on fake tensors; and its modules in the order
    they first ran."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.modules.module import register_module_forward_pre_hook

    names = {id(mod): name for name, mod in model.named_modules() if name}
    ran: dict[str, None] = {}

    def seen(module: Any, args: Any) -> None:
        name = names.get(id(module))
        if name is not None:
            ran.setdefault(name)

    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        _to_fake(model, mode)
        tracker = live_bytes([*model.parameters(), *model.buffers()])
        hook = register_module_forward_pre_hook(seen)
        try:
            with tracker:
                forward(kind, model, make_inputs(shapes, dtype))
        finally:
            hook.remove()
    return tracker.peak, tuple(ran)


def _to_fake(model: Any, mode: Any) -> None:
    """Swap the meta tensors of ``model`` for fake CPU tensors of the same shapes (four
    times quicker than ``to_empty`` under the fake mode)."""
    import torch

    cpu = torch.device("cpu")
    convert = mode.fake_tensor_converter.from_meta_and_device
    for module in model.modules():
        for key, p in list(module._parameters.items()):
            if p is not None:
                fake = convert(mode, p, cpu)
                module._parameters[key] = torch.nn.Parameter(fake, p.requires_grad)
        for key, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[key] = convert(mode, b, cpu)


def live_bytes(weights: Sequence[Any] = ()) -> Any:
    """A dispatch mode counting the bytes of tensors created inside it while they live
    (each storage once, freed when its last reference goes), and their peak; views of
    ``weights`` (``weight.t()``) are not new bytes.

    torch's MemTracker (``torch.distributed._tools.mem_tracker``) keeps the same count,
    to the byte on the models tested (a test compares them), but also takes module-level
    snapshots through hooks on every module call: 1.7x the trace time of an SD-1.5 UNet
    for figures the planner does not use."""
    import weakref
    from functools import partial

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    from torch.utils.weak import WeakIdKeyDictionary

    class LiveBytes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live = 0
            self.peak = 0
            self.storages = WeakIdKeyDictionary()
            for w in weights:  # already there: views of them cost nothing
                self.storages[w.untyped_storage()] = None

        def _free(self, nbytes: int, _gone: object) -> None:
            self.live -= nbytes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self._count(t.untyped_storage())
            return out

        def _count(self, storage: Any) -> None:
            if storage in self.storages:
                return
            n = int(storage.nbytes())
            self.storages[storage] = weakref.ref(storage, partial(self._free, n))
            self.live += n
            self.peak = max(self.peak, self.live)

    return LiveBytes()


def trace(
    m: Model, dtype: torch.dtype, shapes: Mapping[str, Shape] | None
) -> tuple[Built, int | None]:
    """Build ``m`` on meta; its description and, when ``shapes`` are known, its activations."""
    with held():
        model = build_on_meta(m, dtype)
        built = describe(model)
        kind = kind_of(m)
        if shapes is None or kind is None:
            return built, None
        peak, ran = activations(model, kind, shapes, dtype)
    order = ran + tuple(name for name in built.order if name not in set(ran))
    return replace(built, order=order), peak
