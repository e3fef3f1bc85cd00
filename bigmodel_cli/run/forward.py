"""``bigmodel run --forward``: build each component with its own library, run it once.

A component whose ``model_index.json`` entry (or ``config.json``) names a diffusers or
transformers class is built with ``from_pretrained(folder, device_map=<the plan's map>)``
(:mod:`bigmodel_cli.runtime.library`) and given one forward pass
(:func:`bigmodel_cli.runtime.calls.forward`, the pass the planner traced): on the plan's
inputs when it counted them (the peak is measured beside its estimate), else on small
dummy ones. This proves that the plan's placement is one the libraries accept and can
execute across devices. diffusers and transformers are optional extras, imported only
when asked.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bigmodel_cli.checkpoint import Checkpoint, Component
from bigmodel_cli.devices import DeviceKey, is_gpu, torch_device
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.placement.plan import Plan
from bigmodel_cli.run.peak import measure_peak
from bigmodel_cli.runtime.calls import forward, make_inputs
from bigmodel_cli.runtime.estimate import model_of
from bigmodel_cli.runtime.inputs import LIBRARIES, Model, Shape, dummy_inputs, kind_of
from bigmodel_cli.runtime.library import Pretrained, component_class, from_pretrained, held
from bigmodel_cli.sizes import DType

if TYPE_CHECKING:
    import torch


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


def input_device(device_map: dict[str, DeviceKey]) -> str:
    """Where dummy inputs start: the first module's GPU, else cpu (hooks move them on)."""
    first = next(iter(device_map.values()), "cpu")
    return torch_device(first) if is_gpu(first) else "cpu"


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _fed(
    m: Model, planned: Mapping[str, Shape] | None
) -> tuple[str, Mapping[str, Shape], bool] | None:
    """How to feed ``m``: the plan's inputs, whose peak is measured against its estimate,
    else small dummy ones (:func:`~bigmodel_cli.runtime.inputs.dummy_inputs`)."""
    kind = kind_of(m)
    if planned and kind is not None:
        return kind, planned, True
    dummy = dummy_inputs(m)
    return None if dummy is None else (*dummy, False)


def _forward_one(
    ckpt: Checkpoint, c: Component, m: Model, plan: Plan, dtype: DType | None
) -> ForwardResult:
    library, class_name = m.library or "", m.class_name or ""
    cls = component_class(
        library, class_name, c.folder, f"a forward pass of {c.name} ({class_name})"
    )
    needs = plan.needs.get(c.name)
    fed = _fed(m, needs.inputs if needs is not None else None)
    if fed is None:
        why = f"no dummy inputs known for {class_name}"
        return ForwardResult(c.name, library, class_name, None, 0.0, why)
    kind, shapes, measured = fed
    device_map = plan.module_map(c.name)
    offload = (
        Path(tempfile.mkdtemp(prefix="bigmodel-offload-"))
        if "disk" in device_map.values()
        else None
    )
    how = Pretrained(device_map, dtype, ckpt.variant, None if offload is None else str(offload))
    try:
        with held():
            model = from_pretrained(cls, c.folder, how).eval()
            _sync()
            start = time.perf_counter()
            inputs = make_inputs(shapes, model.dtype, input_device(device_map))

            def call() -> torch.Tensor:
                return forward(kind, model, inputs)

            out, peak = measure_peak(call, _gpus(device_map)) if measured else (call(), None)
            _sync()
            seconds = time.perf_counter() - start
    except BigmodelError:
        raise
    except Exception as exc:  # the library's reason, as one line
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise BigmodelError(
            f"the forward pass of {class_name} failed ({reason})", c.folder
        ) from None
    finally:
        if offload is not None:
            shutil.rmtree(offload, ignore_errors=True)
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
        m = model_of(ckpt, c)
        library, class_name = m.library, m.class_name
        if library is None or class_name is None:
            why = "no model_index.json entry or config.json names its class"
            results.append(ForwardResult(c.name, None, None, None, 0.0, why))
            continue
        if library not in LIBRARIES:
            why = f"{library} is not a library components are built with ({', '.join(LIBRARIES)})"
            results.append(ForwardResult(c.name, library, class_name, None, 0.0, why))
            continue
        results.append(_forward_one(ckpt, c, m, plan, dtype))
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return tuple(results)
