"""A plan on one machine's devices: the checkpoint's components as the planner's parts,
placed by the strategy on the budget's devices, described as a plan. With the run's shape
(or ``quantize``) the parts count what the run needs (:mod:`.runplan`)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from bigmodel_cli.checkpoint import Component
from bigmodel_cli.devices import make_budget
from bigmodel_cli.formats.json import read_config
from bigmodel_cli.placement.built import Pairs, place_in_built_names, with_built_names
from bigmodel_cli.placement.describe import describe
from bigmodel_cli.placement.items import Bin, Part, widest_gpu
from bigmodel_cli.placement.order import forward_order
from bigmodel_cli.placement.plan import Plan
from bigmodel_cli.placement.request import PlanRequest
from bigmodel_cli.placement.strategies import STRATEGIES
from bigmodel_cli.placement.units import build_units
from bigmodel_cli.sizes import DTYPES, DType, bytes_at


def plan_devices(source: str | os.PathLike[str] | None, asked: PlanRequest) -> Plan:
    """The plan of ``source`` on the devices of ``asked.max_memory`` (or this machine's)."""
    target = asked.target()
    budget = make_budget(asked.max_memory, asked.reserve)
    ckpt = asked.load(source)
    strategy, reason = asked.chosen_strategy(ckpt.kind)
    shape = asked.shape([c.name for c in ckpt.components])
    bins = [Bin(d.key, d.capacity) for d in budget.devices]
    if shape.counted or shape.quantize:
        from bigmodel_cli.placement.runplan import plan_counted  # the estimator, when asked

        return plan_counted(ckpt, budget, (strategy, reason), target, shape, asked.no_split)
    splits = STRATEGIES[strategy].splits_blocks
    limit = widest_gpu(bins)

    def part_of(c: Component, joined: Pairs) -> Part:
        return _part(c, target, asked.no_split, splits, limit, joined)

    parts, assignment, names = place_in_built_names(ckpt, part_of, STRATEGIES[strategy].place, bins)
    plan = describe(ckpt, budget, (strategy, reason), target, (parts, assignment))
    return with_built_names(plan, names)


def _part(
    c: Component,
    dtype: DType | None,
    no_split: Sequence[str],
    with_units: bool,
    limit: int | None,
    joined: Pairs = (),
) -> Part:
    """The planner's part for ``c``: its bytes at ``dtype``, in units when it may split;
    ``joined``: tensors its library needs together (:mod:`.built`)."""
    sizes = [(t.name, bytes_at(DTYPES[t.dtype], t.numel, dtype)) for t in c.tensors]
    total = sum(n for _, n in sizes)
    if not with_units or c.name in no_split:
        return Part(c.name, total)
    units = build_units(sizes, read_config(c.folder), no_split, limit, joined)
    return Part(c.name, total, forward_order(units))
