"""A plan that counts the run: estimate each component's run-time needs, place the parts
that count them, and describe the result with weights and run time apart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from bigmodel_cli.checkpoint import Checkpoint, Component
from bigmodel_cli.devices import Budget
from bigmodel_cli.formats.json import read_config
from bigmodel_cli.placement.built import Pairs, place_in_built_names, with_built_names
from bigmodel_cli.placement.counted import counted_part, device_use
from bigmodel_cli.placement.describe import Chosen, Counted, describe
from bigmodel_cli.placement.items import Bin, Part, widest_gpu
from bigmodel_cli.placement.needs import Needs
from bigmodel_cli.placement.plan import Plan
from bigmodel_cli.placement.strategies import STRATEGIES
from bigmodel_cli.runtime.estimate import Estimate, estimate
from bigmodel_cli.runtime.shape import RunShape
from bigmodel_cli.sizes import DType


def plan_counted(
    ckpt: Checkpoint,
    budget: Budget,
    chosen: Chosen,
    target: DType | None,
    shape: RunShape,
    no_split: Sequence[str],
) -> Plan:
    """The plan of ``ckpt`` on ``budget``'s devices at ``shape`` (``chosen``: the strategy,
    and why when it was not asked for)."""
    strategy = chosen[0]
    found = estimate(ckpt, shape, target)
    bins = [Bin(d.key, d.capacity) for d in budget.devices]
    splits = STRATEGIES[strategy].splits_blocks
    limit = widest_gpu(bins)

    def part_of(c: Component, joined: Pairs) -> Part:
        config = read_config(c.folder) if ckpt.kind != "file" else None
        needs = found.components[c.name]
        return counted_part(needs, config, no_split, splits, shape.counted, limit, joined)

    parts, assignment, names = place_in_built_names(ckpt, part_of, STRATEGIES[strategy].place, bins)
    counted = Counted(
        use=device_use(assignment, parts, found, STRATEGIES[strategy].reports_peak),
        weights={name: c.weight_bytes for name, c in found.components.items()},
        shape=_run_info(found),
        needs=_needs(found),
    )
    plan = describe(ckpt, budget, chosen, target, (parts, assignment), counted)
    return with_built_names(plan, names)


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
        name: Needs(
            c.activations,
            c.kv.total if c.kv else None,
            c.inputs,
            c.note,
            c.kv.dtype if c.kv else None,
        )
        for name, c in found.components.items()
    }
