"""The plan stage: ``bigmodel plan``. Read the headers, build the planner's items
(:mod:`.items`, :mod:`.units`), run a strategy from the registry (:mod:`.strategies`), and
describe the result as a :class:`~.file.Plan` (:mod:`.file` writes and reads it).

Weights-only plans build no model class and import neither diffusers nor transformers;
torch is imported only to detect GPUs when ``--max-memory`` is not given. With the run's
shape (``batch``, ``height`` ... or ``runtime=True``), activations and KV caches are
estimated (:mod:`bigmodel_cli.runtime`) and counted (:mod:`.counted`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

from bigmodel_cli.checkpoint import Checkpoint, Component, fingerprint, load_checkpoint
from bigmodel_cli.devices import Budget, Device, DeviceKey, is_gpu, make_budget
from bigmodel_cli.errors import UsageError
from bigmodel_cli.formats.json import read_config
from bigmodel_cli.placement.file import DevicePlan, Plan, plan_from_json, read_plan
from bigmodel_cli.placement.items import Bin, Layout, Part, Placement, widest_gpu
from bigmodel_cli.placement.order import forward_order
from bigmodel_cli.placement.strategies import DEFAULT_STRATEGY, RANKS_STRATEGY, STRATEGIES
from bigmodel_cli.placement.units import build_units
from bigmodel_cli.runtime.shape import RunShape, parse_quantize
from bigmodel_cli.sizes import DTYPES, DType, bytes_at, parse_target_dtype

__all__ = ["STRATEGIES", "DevicePlan", "Plan", "make_plan", "plan_from_json", "read_plan"]


def make_plan(
    source: str | os.PathLike[str] | None = None,
    *,
    max_memory: str | None = None,
    strategy: str | None = None,
    dtype: DType | str | None = None,
    reserve: str | None = None,
    no_split: Sequence[str] = (),
    variant: str | None = None,
    revision: str | None = None,
    offline: bool = False,
    nodes: int | None = None,
    procs_per_node: int | None = None,
    runtime: bool = False,
    batch: int | None = None,
    height: int | None = None,
    width: int | None = None,
    frames: int | None = None,
    context: int | None = None,
    quantize: str | None = None,
    no_quantize: Sequence[str] = (),
    double_quant: bool = False,
) -> Plan:
    """Plan SOURCE (default: the current folder) on the devices of ``max_memory``
    (``"0=8GB,1=8GB,cpu=32GB"``; default: the GPUs and RAM found on this machine).

    >>> plan = make_plan("sdxl/", max_memory="0=8GB,1=8GB", dtype="fp16")  # doctest: +SKIP
    >>> plan.save("plan.json")  # doctest: +SKIP

    With ``nodes`` / ``procs_per_node`` (``--nodes``, ``--procs-per-node``) it plans over
    that many torchrun ranks, ``max_memory`` being one rank's budget (:mod:`.ranks`).

    The run's shape (``batch``, ``height``, ``width``, ``frames``, ``context``, or
    ``runtime=True`` for the defaults) makes the plan count activations and KV caches;
    ``quantize`` (``"nf4"`` or ``"unet=int8,..."``) sizes linear weights as quantized.
    """
    over_ranks = nodes is not None or procs_per_node is not None
    strategy = strategy or (RANKS_STRATEGY if over_ranks else DEFAULT_STRATEGY)
    if strategy not in STRATEGIES:
        raise UsageError(
            f"unknown --strategy {strategy!r}; expected one of: {', '.join(STRATEGIES)}"
        )
    target = parse_target_dtype(dtype) if isinstance(dtype, str) else dtype
    path = None if source is None else os.fspath(source)
    shaped = runtime or any(v is not None for v in (batch, height, width, frames, context))
    if over_ranks or STRATEGIES[strategy].over_ranks:  # torchrun ranks: placement/ranks.py
        if shaped or quantize:
            raise UsageError(
                "run-shape flags and --quantize are not counted over torchrun ranks yet; "
                "plan the ranks by weights (each rank's 'runtime' is 0)"
            )
        from bigmodel_cli.placement.ranks import RankRequest, plan_world

        request = RankRequest.parse(strategy, max_memory, reserve, nodes, procs_per_node)
        ckpt = load_checkpoint(path, variant, revision=revision, offline=offline)
        return plan_world(ckpt, request, target, no_split)
    budget = make_budget(max_memory, reserve)
    ckpt = load_checkpoint(path, variant, revision=revision, offline=offline)
    splits = STRATEGIES[strategy].splits_blocks
    shape = RunShape(
        shaped,
        1 if batch is None else batch,
        height,
        width,
        frames,
        context,
        parse_quantize(quantize, [c.name for c in ckpt.components]),
        tuple(no_quantize),
        double_quant,
    )
    bins = [Bin(d.key, d.capacity) for d in budget.devices]
    if shape.counted or shape.quantize:
        from bigmodel_cli.placement.runplan import plan_counted  # the estimator, when asked

        return plan_counted(ckpt, budget, strategy, target, shape, no_split, bins, _describe)
    limit = widest_gpu(bins)
    parts = [_part(c, target, no_split, splits, limit) for c in ckpt.components]
    layout = STRATEGIES[strategy].place(parts, bins)
    return _describe(ckpt, budget, strategy, target, parts, layout)


def _part(
    c: Component, dtype: DType | None, no_split: Sequence[str], with_units: bool, limit: int | None
) -> Part:
    sizes = [(t.name, bytes_at(DTYPES[t.dtype], t.numel, dtype)) for t in c.tensors]
    total = sum(n for _, n in sizes)
    if not with_units or c.name in no_split:
        return Part(c.name, total)
    units = build_units(sizes, read_config(c.folder), no_split, limit)
    return Part(c.name, total, forward_order(units))


def _describe(
    ckpt: Checkpoint,
    budget: Budget,
    strategy: str,
    dtype: DType | None,
    parts: Sequence[Part],
    layout: Layout,
) -> Plan:
    sizes = {p.name: p.nbytes for p in parts}
    placements = {p.name: p for p in layout.placements}
    offloaded = tuple(p.name for p in layout.placements if _off_gpu(p))
    runner = layout.execution_device
    reserve = next((d.reserve for d in budget.devices if d.key == runner), 0)
    peak = None if layout.peak_gpu is None else layout.peak_gpu + reserve
    fits = not offloaded  # the spec's meaning: nothing on cpu or disk (never, for sequential)
    peak_fits = None
    if STRATEGIES[strategy].reports_peak:  # the largest component fits the GPU running it
        peak_fits = runner is not None and (layout.peak_gpu or 0) <= _capacity(budget, runner)
    return Plan(
        source=ckpt.origin if ckpt.repo is not None else str(ckpt.source.resolve()),
        fingerprint=fingerprint(ckpt),
        strategy=strategy,
        dtype=dtype.name if dtype else None,
        variant=ckpt.variant,
        devices=_device_plans(budget.devices, placements.values(), sizes),
        components=sizes,
        device_map={p.name: p.device for p in layout.placements},
        component_maps={
            p.name: {prefix: d for unit, d in p.units for prefix in unit.prefixes}
            for p in layout.placements
            if p.units
        },
        offloaded=offloaded,
        fits=fits,
        peak_fits=peak_fits,
        execution_device=runner,
        peak_gpu=peak,
        held_for_offload=sum(p.held for p in layout.placements),
        detected=budget.detected,
        block_bytes={p.name: _bytes_by_device(p) for p in layout.placements if p.units},
        skipped=ckpt.skipped,
        notes=(ckpt.repo.note,) if ckpt.repo is not None else (),
    )


def _capacity(budget: Budget, key: DeviceKey | None) -> int:
    return next((d.capacity or 0 for d in budget.devices if d.key == key), 0)


def _bytes_by_device(p: Placement) -> dict[DeviceKey, int]:
    found: dict[DeviceKey, int] = {}
    for unit, key in p.units:
        found[key] = found.get(key, 0) + unit.nbytes
    return found


def _off_gpu(p: Placement) -> bool:
    if p.units:
        return any(not is_gpu(d) for _, d in p.units)
    return not is_gpu(p.device)


def _device_plans(
    devices: Sequence[Device], placements: Iterable[Placement], sizes: Mapping[str, int]
) -> tuple[DevicePlan, ...]:
    planned: dict[DeviceKey, int] = {d.key: 0 for d in devices}
    held: dict[DeviceKey, int] = {d.key: 0 for d in devices}
    for p in placements:
        if p.units:
            for unit, key in p.units:
                planned[key] += unit.nbytes
        else:
            planned[p.device] += sizes[p.name]
        if p.execution_device is not None:
            held[p.execution_device] += p.held
    return tuple(
        DevicePlan(d.key, d.budget, d.reserve, planned[d.key], held[d.key]) for d in devices
    )
