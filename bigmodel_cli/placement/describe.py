"""An assignment described as a :class:`~bigmodel_cli.placement.plan.Plan`: the one place a
plan is assembled from a checkpoint (:func:`assemble`), and the description of a plan on
one machine's devices (:func:`describe`), weights only or with the run counted."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bigmodel_cli.checkpoint import Checkpoint, fingerprint
from bigmodel_cli.devices import Budget, Device, DeviceKey, is_gpu
from bigmodel_cli.placement.items import Assignment, Part, Placement
from bigmodel_cli.placement.needs import Needs
from bigmodel_cli.placement.plan import DevicePlan, Plan
from bigmodel_cli.placement.strategies import STRATEGIES
from bigmodel_cli.runtime.shape import RunShape
from bigmodel_cli.sizes import DType

Chosen = tuple[str, str | None]  # a strategy, and why when it is the default


@dataclass(frozen=True)
class DeviceUse:
    """What an assignment puts on one device: weights, and what the run needs beyond them
    (KV cache, activations)."""

    weights: int = 0
    run_bytes: int = 0

    @property
    def split(self) -> tuple[int, int]:
        return self.weights, self.run_bytes


@dataclass(frozen=True)
class Counted:
    """What counting the run found: per device, per component, and the shape counted."""

    use: Mapping[DeviceKey, DeviceUse]
    weights: Mapping[str, int]  # each component's weight bytes (after dtype and quantize)
    shape: RunShape
    needs: Mapping[str, Needs] = field(default_factory=dict)


def assemble(ckpt: Checkpoint, chosen: Chosen, dtype: DType | None, **fields: Any) -> Plan:
    """The plan of ``ckpt``: what the checkpoint says of itself, and ``fields``."""
    return Plan(
        source=ckpt.origin if ckpt.repo is not None else str(ckpt.source.resolve()),
        fingerprint=fingerprint(ckpt),
        strategy=chosen[0],
        strategy_reason=chosen[1],
        dtype=dtype.name if dtype else None,
        variant=ckpt.variant,
        skipped=ckpt.skipped,
        notes=(ckpt.repo.note,) if ckpt.repo is not None else (),
        **fields,
    )


def describe(
    ckpt: Checkpoint,
    budget: Budget,
    chosen: Chosen,
    dtype: DType | None,
    placed: tuple[Sequence[Part], Assignment],
    counted: Counted | None = None,
) -> Plan:
    """The plan of ``placed`` (the parts and the strategy's assignment) on ``budget``'s
    devices; ``counted``: with the run's needs apart from the weights."""
    parts, assignment = placed
    strategy = chosen[0]
    sizes = {p.name: p.nbytes for p in parts}
    offloaded = tuple(p.name for p in assignment.placements if _off_gpu(p))
    runner = assignment.execution_device
    reserve = next((d.reserve for d in budget.devices if d.key == runner), 0)
    peak = None if assignment.peak_gpu is None else assignment.peak_gpu + reserve
    peak_fits = None
    if STRATEGIES[strategy].reports_peak:  # the largest component fits the GPU running it
        peak_fits = runner is not None and (assignment.peak_gpu or 0) <= _capacity(budget, runner)
    return assemble(
        ckpt,
        chosen,
        dtype,
        devices=_device_plans(budget.devices, assignment.placements, sizes, counted),
        components=sizes if counted is None else dict(counted.weights),
        device_map={p.name: p.device for p in assignment.placements},
        component_maps={
            p.name: {prefix: d for unit, d in p.units for prefix in unit.prefixes}
            for p in assignment.placements
            if p.units
        },
        offloaded=offloaded,
        fits=not offloaded,  # the spec's meaning: nothing on cpu or disk (never, sequential)
        peak_fits=peak_fits,
        execution_device=runner,
        peak_gpu=peak,
        held_for_offload=sum(p.held for p in assignment.placements),
        detected=budget.detected,
        block_bytes={p.name: _bytes_by_device(p) for p in assignment.placements if p.units},
        shape=RunShape() if counted is None else counted.shape,
        needs={} if counted is None else counted.needs,
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
    devices: Sequence[Device],
    placements: Iterable[Placement],
    sizes: Mapping[str, int],
    counted: Counted | None,
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
    if counted is None:
        return tuple(
            DevicePlan(d.key, d.budget, d.reserve, planned[d.key], held[d.key]) for d in devices
        )
    return tuple(
        DevicePlan(d.key, d.budget, d.reserve, u.weights + u.run_bytes, held[d.key], *u.split)
        for d in devices
        for u in [counted.use.get(d.key, DeviceUse())]
    )
