"""``make_plan`` with the run's shape: estimate each component's run-time needs, place the
parts that count them, and describe the result with weights and run time apart."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from bigmodel_cli.checkpoint import Checkpoint
from bigmodel_cli.devices import Budget
from bigmodel_cli.formats.json import read_config
from bigmodel_cli.placement.counted import DeviceUse, counted_part, device_use
from bigmodel_cli.placement.file import Plan
from bigmodel_cli.placement.items import Bin, Layout, Part, widest_gpu
from bigmodel_cli.placement.needs import Needs
from bigmodel_cli.placement.strategies import STRATEGIES
from bigmodel_cli.runtime.estimate import Estimate, estimate
from bigmodel_cli.runtime.shape import RunShape
from bigmodel_cli.sizes import DType

Describe = Callable[[Checkpoint, Budget, str, DType | None, Sequence[Part], Layout], Plan]


def plan_counted(
    ckpt: Checkpoint,
    budget: Budget,
    strategy: str,
    target: DType | None,
    shape: RunShape,
    no_split: Sequence[str],
    bins: Sequence[Bin],
    describe: Describe,
) -> Plan:
    """The plan of ``ckpt`` at ``shape`` (``describe``: the weights-only description)."""
    found = estimate(ckpt, shape, target)
    splits = STRATEGIES[strategy].splits_blocks
    parts = [
        counted_part(
            found.components[c.name],
            read_config(c.folder) if ckpt.kind != "file" else None,
            no_split,
            splits,
            shape.counted,
            widest_gpu(bins),
        )
        for c in ckpt.components
    ]
    layout = STRATEGIES[strategy].place(parts, bins)
    plan = describe(ckpt, budget, strategy, target, parts, layout)
    use = device_use(layout, parts, found, STRATEGIES[strategy].reports_peak)
    devices = tuple(
        replace(d, planned=u.weights + u.runtime, weights=u.weights, runtime=u.runtime)
        for d in plan.devices
        for u in [use.get(d.key, DeviceUse())]
    )
    return replace(
        plan,
        devices=devices,
        components={name: c.weight_bytes for name, c in found.components.items()},
        runtime=_run_info(found),
        needs=_needs(found),
    )


def _run_info(found: Estimate) -> RunShape:
    """The shape with the defaults the estimate filled in."""
    run = found.resolved
    if run is None:
        return found.shape
    return replace(
        found.shape, height=run.height, width=run.width, frames=run.frames, context=run.context
    )


def _needs(found: Estimate) -> dict[str, Needs]:
    if not found.shape.counted:
        return {}
    return {
        name: Needs(c.activations, c.kv.total if c.kv else None, c.inputs, c.note)
        for name, c in found.components.items()
    }
