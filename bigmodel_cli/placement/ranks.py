"""``bigmodel plan --nodes N --procs-per-node P``: a plan over N x P ranks (pure).

``--max-memory`` is one rank's budget: ``0=80GB`` is each rank's own GPU
(``cuda:LOCAL_RANK``, backend nccl), ``cpu=64GB`` a cpu rank (backend gloo). The strategy
(:mod:`.spans`) places units on ranks; :func:`describe_world` turns that into what each
rank holds and the byte ranges it reads (adjacent tensors of a file merged into one range).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bigmodel_cli.checkpoint import Checkpoint, Component
from bigmodel_cli.checkpoint.blocks import group_blocks
from bigmodel_cli.devices import DeviceKey, MaxMemory, is_gpu, parse_max_memory, parse_reserve
from bigmodel_cli.errors import BigmodelError, UsageError
from bigmodel_cli.formats.json import read_config
from bigmodel_cli.placement.describe import assemble
from bigmodel_cli.placement.items import SPLIT, Assignment, Bin, Part, Placement, Unit
from bigmodel_cli.placement.plan import DevicePlan, Plan
from bigmodel_cli.placement.request import PlanRequest
from bigmodel_cli.placement.spans import absent_ties, forward_units
from bigmodel_cli.placement.strategies import RANKS_STRATEGY, STRATEGIES
from bigmodel_cli.placement.units import coarsen
from bigmodel_cli.placement.world import (
    Duplicate,
    RankPlan,
    World,
    WorldPlan,
    coverage_gap,
    ranges_bytes,
)
from bigmodel_cli.sizes import DTYPES, DType, bytes_at


@dataclass(frozen=True)
class RankBudget:
    """``max_memory`` for one rank: its device, budget and reserve."""

    key: DeviceKey  # 0: the rank's own GPU; "cpu"
    budget: int
    reserve: int

    @property
    def capacity(self) -> int:
        return max(0, self.budget - self.reserve)

    @property
    def device(self) -> str:
        return "cuda" if is_gpu(self.key) else "cpu"


def rank_budget(max_memory: MaxMemory | None, reserve: str | int | None) -> RankBudget:
    """One rank's device from ``max_memory``: ``0=80GB`` (its own GPU) or ``cpu=64GB``."""
    if max_memory is None:
        raise UsageError(
            "a plan over torchrun ranks is for other machines: give one rank's budget with "
            "max_memory (0=80GB for a GPU per rank, cpu=64GB for cpu ranks)",
            argument="max_memory",
        )
    entries = parse_max_memory(max_memory)
    if len(entries) != 1 or entries[0][0] not in (0, "cpu"):
        raise UsageError(
            f"invalid max_memory {max_memory!r} for a plan over ranks: name one rank's "
            "device, 0=SIZE (its own GPU, cuda:LOCAL_RANK) or cpu=SIZE",
            argument="max_memory",
        )
    key, budget = entries[0]
    assert budget is not None  # only disk may be unlimited, and it is refused above
    held = parse_reserve(reserve).of(budget) if is_gpu(key) else 0
    return RankBudget(key, budget, held)


@dataclass(frozen=True)
class RankRequest:
    """What ``plan --nodes N --procs-per-node P --max-memory BUDGET`` asks for, checked."""

    strategy: str
    budget: RankBudget
    world: World
    reason: str | None = None  # why the strategy, when it was not asked for

    @staticmethod
    def of(asked: PlanRequest) -> RankRequest:
        strategy, reason = asked.chosen_strategy(None)
        if not STRATEGIES[strategy].over_ranks:
            raise UsageError(
                f"strategy {strategy} places on this machine's devices; nodes and "
                f"procs_per_node plan over ranks with strategy {RANKS_STRATEGY}",
                argument=("strategy", "nodes", "procs_per_node"),
            )
        budget = rank_budget(asked.max_memory, asked.reserve)
        backend = "nccl" if budget.device == "cuda" else "gloo"
        world = World(asked.nodes or 1, asked.procs_per_node or 1, backend)
        return RankRequest(strategy, budget, world, reason)


def plan_ranks(source: str | os.PathLike[str] | None, asked: PlanRequest) -> Plan:
    """The plan of ``source`` over the torchrun ranks ``asked`` names."""
    target, request = asked.target(), RankRequest.of(asked)
    return plan_world(asked.load(source), request, target, asked.no_split)


def world_parts(ckpt: Checkpoint, dtype: DType | None, no_split: Sequence[str]) -> tuple[Part, ...]:
    """Each component with its units in forward order (:func:`forward_units`)."""
    parts = []
    for c in ckpt.components:
        if any(t.start < 0 for t in c.tensors):
            raise BigmodelError(
                "a plan over ranks reads byte ranges, which pickle files lack; convert the "
                "checkpoint to safetensors first (bigmodel shard)",
                c.files[0] if c.files else c.folder,
            )
        sizes = [(t.name, bytes_at(DTYPES[t.dtype], t.numel, dtype)) for t in c.tensors]
        config = read_config(c.folder)
        parts.append(Part(c.name, sum(n for _, n in sizes), forward_units(sizes, config, no_split)))
    return tuple(parts)


def plan_world(
    ckpt: Checkpoint,
    request: RankRequest,
    dtype: DType | None,
    no_split: Sequence[str] = (),
) -> Plan:
    """The plan over the ranks of ``request.world``, each with ``request.budget``."""
    budget, world = request.budget, request.world
    parts = world_parts(ckpt, dtype, no_split)
    bins = [Bin(r, budget.capacity) for r in range(world.size)]
    assignment = STRATEGIES[request.strategy].place(parts, bins)
    ranks, duplicates = describe_world(ckpt, assignment, world, budget.device, dtype, no_split)
    largest = max((r.weights for r in ranks), default=0)
    return assemble(
        ckpt,
        (request.strategy, request.reason),
        dtype,
        devices=(DevicePlan(budget.key, budget.budget, budget.reserve, largest),),
        device_map={c.name: budget.key for c in ckpt.components},
        components={p.name: p.nbytes for p in parts},
        fits=all(r.weights <= budget.capacity for r in ranks),
        world=WorldPlan(world, ranks, duplicates),
    )


# ---------------------------------------------------------------- what each rank reads


def qualify(ckpt: Checkpoint, component: str, name: str) -> str:
    """A module or tensor name as one rank sees it: prefixed by the component in a pipeline."""
    if ckpt.kind != "pipeline":
        return name
    return f"{component}.{name}" if name else component


@dataclass
class _Shares:
    """What each rank holds, gathered component by component (internal, mutable)."""

    modules: dict[DeviceKey, list[str]]
    held: dict[DeviceKey, set[tuple[str, str]]]  # (component, tensor)
    tied: dict[DeviceKey, dict[str, str]]
    duplicates: list[Duplicate]

    def add(self, ckpt: Checkpoint, c: Component, p: Placement, no_split: Sequence[str]) -> None:
        """Component ``c`` placed by ``p``: whole on one rank, or its units over ranks."""
        config = read_config(c.folder)
        units = p.units or tuple((u, p.device) for u in _units(c, config, no_split))
        where = {prefix: rank for unit, rank in units for prefix in unit.prefixes}
        if p.device != SPLIT and ckpt.kind == "pipeline":
            self.modules[p.device].append(c.name)
        else:
            for unit, rank in units:
                self.modules[rank] += [qualify(ckpt, c.name, b) for b in unit.prefixes]
        infos = {t.name: t for t in c.tensors}
        ties = absent_ties(list(infos), config)
        blocks = group_blocks(list(infos) + list(ties))
        rank_of = {n: where[coarsen(b, no_split)] for n, b in blocks.items()}
        for name, rank in rank_of.items():
            source = ties.get(name, name)
            self.held[rank].add((c.name, source))
            if source == name:
                continue
            self.tied[rank][qualify(ckpt, c.name, name)] = qualify(ckpt, c.name, source)
            if rank_of[source] != rank:
                info = infos[source]
                ranks = tuple(sorted({int(rank_of[source]), int(rank)}))
                duplicate = Duplicate(
                    qualify(ckpt, c.name, source), _rel(ckpt, info.file), info.nbytes, ranks
                )
                self.duplicates.append(duplicate)


def describe_world(
    ckpt: Checkpoint,
    assignment: Assignment,
    world: World,
    device: str,
    dtype: DType | None,
    no_split: Sequence[str],
) -> tuple[tuple[RankPlan, ...], tuple[Duplicate, ...]]:
    """Per rank: modules, tensors (by file range), bytes read and held; and the duplicates."""
    shares = _Shares(
        {r: [] for r in range(world.size)},
        {r: set() for r in range(world.size)},
        {r: {} for r in range(world.size)},
        [],
    )
    by_name = {p.name: p for p in assignment.placements}
    for c in ckpt.components:
        shares.add(ckpt, c, by_name[c.name], no_split)
    infos = {(c.name, t.name): t for c in ckpt.components for t in c.tensors}
    result = []
    for r in range(world.size):
        tensors = [infos[key] for key in sorted(shares.held[r])]
        reads = _merged(ckpt, [(t.file, t.start, t.end) for t in tensors])
        result.append(
            RankPlan(
                rank=r,
                node=r // world.procs_per_node,
                local_rank=r % world.procs_per_node,
                device=device,
                bytes=ranges_bytes(reads),
                modules=tuple(shares.modules[r]),
                reads=reads,
                weights=sum(bytes_at(DTYPES[t.dtype], t.numel, dtype) for t in tensors),
                tied=shares.tied[r],
            )
        )
    return tuple(result), tuple(shares.duplicates)


def check_reads(ckpt: Checkpoint, plan: Plan) -> None:
    """Refuse a plan over ranks whose reads do not cover ``ckpt``'s tensors exactly once
    (before any rank reads: a rank given another's reads would load half the model)."""
    if plan.world is None:
        return
    spans: dict[str, list[tuple[int, int]]] = {}
    for c in ckpt.components:
        for t in c.tensors:
            spans.setdefault(_rel(ckpt, t.file), []).append((t.start, t.end))
    problem = coverage_gap(plan.world, spans)
    if problem is not None:
        raise BigmodelError(f"plan ranks: {problem}", plan.path)


def _units(
    c: Component, config: Mapping[str, object] | None, no_split: Sequence[str]
) -> tuple[Unit, ...]:
    return forward_units([(t.name, t.nbytes) for t in c.tensors], config, no_split)


def _rel(ckpt: Checkpoint, file: os.PathLike[str]) -> str:
    return os.path.relpath(file, ckpt.root)


def _merged(
    ckpt: Checkpoint, spans: Sequence[tuple[os.PathLike[str], int, int]]
) -> dict[str, tuple[tuple[int, int], ...]]:
    """``(file, start, end)`` spans as ``{file: ((offset, length), ...)}``, files in name
    order, adjacent spans merged."""
    by_file: dict[str, list[list[int]]] = {}
    for file, start, end in sorted(spans, key=lambda s: (_rel(ckpt, s[0]), s[1])):
        ranges = by_file.setdefault(_rel(ckpt, file), [])
        if ranges and ranges[-1][0] + ranges[-1][1] == start:
            ranges[-1][1] += end - start
        elif end > start:
            ranges.append([start, end - start])
    return {f: tuple((a, n) for a, n in ranges) for f, ranges in by_file.items() if ranges}
