"""``bigmodel plan``: read the headers, build the planner's items, run a strategy, and
describe the result as a :class:`Plan` (and its JSON document, schema version 1).

No model class is built and neither diffusers nor transformers is imported; torch is
imported only to detect GPUs when ``--max-memory`` is not given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bigmodel_cli import planner
from bigmodel_cli.blocks import build_units
from bigmodel_cli.checkpoint import Checkpoint, Component, fingerprint, load_checkpoint
from bigmodel_cli.checkpoint import read_json_file as read_config
from bigmodel_cli.devices import Budget, Device, DeviceKey, make_budget
from bigmodel_cli.errors import UsageError
from bigmodel_cli.plan_file import PLAN_VERSION
from bigmodel_cli.planner import Bin, Layout, Part, Placement
from bigmodel_cli.sizes import DTYPES, DType, bytes_at

STRATEGIES: dict[str, Callable[[Sequence[Part], Sequence[Bin]], Layout]] = {
    "balanced": planner.balanced,
    "auto": planner.auto,
    "sequential": planner.sequential,
}


@dataclass(frozen=True)
class DevicePlan:
    """A device of the plan: its budget, the reserve held back, and what is planned on it."""

    key: DeviceKey
    budget: int | None  # None: unlimited
    reserve: int
    planned: int
    held: int = 0  # kept free for offloaded blocks run here (auto)

    @property
    def capacity(self) -> int | None:
        return None if self.budget is None else max(0, self.budget - self.reserve)

    @property
    def label(self) -> str:
        return f"GPU {self.key}" if isinstance(self.key, int) else str(self.key)


@dataclass(frozen=True)
class Plan:
    """Where each component (and, when split, each block) goes."""

    source: str
    fingerprint: str
    strategy: str
    dtype: str | None
    variant: str | None
    devices: tuple[DevicePlan, ...]
    components: Mapping[str, int]  # bytes at the plan's dtype
    device_map: Mapping[str, DeviceKey]  # a GPU index, "cpu", "disk" or "split"
    component_maps: Mapping[str, Mapping[str, DeviceKey]]
    offloaded: tuple[str, ...]
    fits: bool
    peak_fits: bool | None
    execution_device: int | None
    peak_gpu: int | None
    held_for_offload: int
    detected: bool  # no --max-memory: devices found on this machine
    block_bytes: Mapping[str, Mapping[DeviceKey, int]]  # split components: bytes per device
    skipped: tuple[str, ...] = ()

    @property
    def gpus(self) -> tuple[DevicePlan, ...]:
        return tuple(d for d in self.devices if isinstance(d.key, int))


def make_plan(
    source: str | None,
    max_memory: str | None,
    strategy: str,
    dtype: DType | None,
    reserve: str | None,
    no_split: list[str],
    variant: str | None,
) -> Plan:
    """Plan SOURCE (default: the current folder) on the devices of ``--max-memory``."""
    if strategy not in STRATEGIES:
        raise UsageError(
            f"unknown --strategy {strategy!r}; expected one of: {', '.join(STRATEGIES)}"
        )
    budget = make_budget(max_memory, reserve)
    ckpt = load_checkpoint(source, variant)
    parts = [_part(c, dtype, no_split, with_units=strategy == "auto") for c in ckpt.components]
    bins = [Bin(d.key, d.capacity) for d in budget.devices]
    layout = STRATEGIES[strategy](parts, bins)
    return _describe(ckpt, budget, strategy, dtype, parts, layout)


def _part(c: Component, dtype: DType | None, no_split: Sequence[str], with_units: bool) -> Part:
    sizes = [(t.name, bytes_at(DTYPES[t.dtype], t.numel, dtype)) for t in c.tensors]
    total = sum(n for _, n in sizes)
    if not with_units or c.name in no_split:
        return Part(c.name, total)
    return Part(c.name, total, build_units(sizes, read_config(c.folder / "config.json"), no_split))


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
    if strategy == "sequential":  # the largest component fits the GPU that runs it in turn
        peak_fits = runner is not None and (layout.peak_gpu or 0) <= _capacity(budget, runner)
    return Plan(
        source=str(ckpt.source.resolve()),
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
        return any(not isinstance(d, int) for _, d in p.units)
    return not isinstance(p.device, int)


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


# ---------------------------------------------------------------- the JSON document


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """The plan file, schema version 1 (``bigmodel run --plan`` reads it)."""
    return {
        "version": PLAN_VERSION,
        "source": plan.source,
        "fingerprint": plan.fingerprint,
        "strategy": plan.strategy,
        "dtype": plan.dtype,
        "variant": plan.variant,
        "devices": {
            str(d.key): {
                "capacity": d.capacity,
                "planned": d.planned,
                "budget": d.budget,
                "reserve": d.reserve,
                "held": d.held,
            }
            for d in plan.devices
        },
        "device_map": dict(plan.device_map),
        "component_maps": {name: dict(m) for name, m in plan.component_maps.items()},
        "offloaded": list(plan.offloaded),
        "fits": plan.fits,
        "peak_fits": plan.peak_fits,
        "components": {name: {"bytes": n} for name, n in plan.components.items()},
        "execution_device": plan.execution_device,
        "peak_gpu": plan.peak_gpu,
        "held_for_offload": plan.held_for_offload,
        "detected": plan.detected,
        "split_bytes": {
            name: {str(k): n for k, n in by_device.items()}
            for name, by_device in plan.block_bytes.items()
        },
        "skipped": list(plan.skipped),
    }
