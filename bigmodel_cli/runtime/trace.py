"""Estimate one forward pass without running it: the component is built from its config
on the meta device with its own library (diffusers / transformers), turned into fake
tensors (``FakeTensorMode``: shapes and dtypes, no memory), and called once on fake inputs
while torch's ``MemTracker`` (``torch.distributed._tools.mem_tracker``) counts the bytes
of live tensors. The activations are the peak less the weights.

Building the model also tells the planner which weights belong to linear layers (what
``--quantize`` replaces), and tracing it the order in which its modules run (the forward
order for ``auto``: registration order is not it, a UNet registers ``up_blocks`` before
``mid_block``).
torch and the libraries are imported here only, on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bigmodel_cli.runtime.calls import forward, make_inputs
from bigmodel_cli.runtime.inputs import Model, Shape, kind_of

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


class LibraryMissing(Exception):
    """The component's library is not installed: no estimate."""


def library(name: str) -> Any:
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise LibraryMissing(name) from None
    module.utils.logging.set_verbosity_error()
    return module


def build(m: Model, dtype: torch.dtype) -> Any:
    """The component's model on the meta device at ``dtype`` (no memory, no init cost)."""
    import torch

    lib = library(m.library or "")
    cls = getattr(lib, m.class_name or "", None)
    if cls is None:
        raise LookupError(f"{m.library} has no class {m.class_name}")
    with torch.device("meta"):
        if m.library == "transformers":
            config = cls.config_class.from_dict(dict(m.config))
            model = cls._from_config(config)
        else:
            model = cls.from_config(dict(m.config))
    return torch.nn.Module.to(model, dtype).eval()


def describe(model: Any) -> Built:
    import torch

    linear_types: tuple[type, ...] = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

        linear_types += (Conv1D,)
    except ImportError:
        pass
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

    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = model.to_empty(device="cpu")
        tracker = _tracker()
        tracker.track_external(fake)
        hook = register_module_forward_pre_hook(seen)
        try:
            with tracker:
                forward(kind, fake, make_inputs(shapes, dtype))
        finally:
            hook.remove()
        peak = tracker.get_tracker_snapshot("peak")
    return max((_beyond_weights(snap) for snap in peak.values()), default=0), tuple(ran)


def _beyond_weights(snapshot: Mapping[Any, int]) -> int:
    weights = sum(n for key, n in snapshot.items() if str(key).endswith(("PARAM", "BUFFER")))
    return int(snapshot.get("Total", 0)) - weights


def _tracker() -> Any:
    """torch's MemTracker, less its per-module peak bookkeeping: it walks every module
    on every operation (3x the time on an SD-1.5 UNet); the global peak is all we read."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class PeakTracker(MemTracker):
        def _update_peak_stats(self, peak_state: Any) -> None:
            for device, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(device, 0) < snap["Total"]:
                    self._peak_mem[device] = snap["Total"]
                    self._peak_mem_snap[device] = dict(snap)

    return PeakTracker()


def trace(
    m: Model, dtype: torch.dtype, shapes: Mapping[str, Shape] | None
) -> tuple[Built, int | None]:
    """Build ``m`` on meta; its description and, when ``shapes`` are known, its activations."""
    model = build(m, dtype)
    built = describe(model)
    kind = kind_of(m)
    if shapes is None or kind is None:
        return built, None
    peak, ran = activations(model, kind, shapes, dtype)
    order = ran + tuple(name for name in built.order if name not in set(ran))
    return replace(built, order=order), peak
