"""Execute a plan on this machine: ``bigmodel run SOURCE --plan plan.json``.

Before anything moves, the plan (read by :mod:`bigmodel_cli.plan_file`) is checked against
the checkpoint (header fingerprint) and this machine (its GPUs, free memory now). The
decisions are pure functions: which device each tensor goes to (accelerate's
longest-prefix rule for split components), how many bytes each device receives. The
loading and verifying are done by :mod:`bigmodel_cli.loading`, ``--forward`` by
:mod:`bigmodel_cli.forward`; this module puts the numbers into a :class:`RunReport`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bigmodel_cli import loading
from bigmodel_cli.checkpoint import Checkpoint, fingerprint, load_checkpoint
from bigmodel_cli.devices import available_ram
from bigmodel_cli.errors import BigmodelError, FitError
from bigmodel_cli.loading import Loaded
from bigmodel_cli.plan_file import Plan, read_plan, torch_device
from bigmodel_cli.progress import Progress
from bigmodel_cli.sizes import DTYPES, DType, bytes_at, format_size

if TYPE_CHECKING:
    from bigmodel_cli.forward import ForwardResult

CHANGED = "checkpoint changed since the plan was made; re-run bigmodel plan"


@dataclass(frozen=True)
class DeviceRun:
    """What one device holds after the run, beside what the plan promised."""

    id: str
    planned: int
    loaded: int
    allocated: int | None
    peak: int | None
    seconds: float

    @property
    def label(self) -> str:
        return torch_device(self.id)

    @property
    def gb_per_s(self) -> float:
        return self.loaded / self.seconds / 1e9 if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ComponentRun:
    """One component: where the plan put it, how many tensors and bytes were loaded."""

    name: str
    device: int | str
    tensors: int
    bytes: int
    bytes_by_device: dict[str, int]


@dataclass(frozen=True)
class RunReport:
    source: str
    plan_file: str
    strategy: str
    dtype: str | None
    devices: tuple[DeviceRun, ...]
    components: tuple[ComponentRun, ...]
    verified: bool
    load_seconds: float
    verify_seconds: float | None
    total_seconds: float
    forward: tuple[ForwardResult, ...] = ()
    warnings: tuple[str, ...] = ()


# ---------------------------------------------------------------- deciding (pure)


def module_device(name: str, module_map: dict[str, str]) -> str | None:
    """accelerate's rule: the device of the longest dotted prefix of ``name`` in the map."""
    parts = name.split(".")
    for i in range(len(parts), -1, -1):
        prefix = ".".join(parts[:i])
        if prefix in module_map:
            return module_map[prefix]
    return None


def placements(ckpt: Checkpoint, plan: Plan) -> dict[str, dict[str, str]]:
    """Component name -> tensor name -> device id, for every tensor of the checkpoint."""
    result: dict[str, dict[str, str]] = {}
    for c in ckpt.components:
        where = plan.device_map.get(c.name)
        if where is None:
            raise BigmodelError(f"plan has no device for component {c.name!r}", plan.path)
        if where != "split":
            result[c.name] = {t.name: where for t in c.tensors}
            continue
        module_map = plan.component_maps[c.name]
        place: dict[str, str] = {}
        for t in c.tensors:
            dev = module_device(t.name, module_map)
            if dev is None:
                raise BigmodelError(
                    f"component_maps[{c.name!r}] has no entry for this tensor", plan.path, t.name
                )
            place[t.name] = dev
        result[c.name] = place
    return result


def load_bytes(
    ckpt: Checkpoint, place: dict[str, dict[str, str]], target: DType | None
) -> dict[str, int]:
    """Bytes each device will hold, floating tensors at ``target`` (accelerate's rule)."""
    totals: dict[str, int] = {}
    for c in ckpt.components:
        for t in c.tensors:
            dev = place[c.name][t.name]
            totals[dev] = totals.get(dev, 0) + bytes_at(DTYPES[t.dtype], t.numel, target)
    return totals


def missing_devices(needed: set[str], gpu_count: int) -> list[str]:
    """GPU ids the plan names that this machine does not have, in index order."""
    return sorted((d for d in needed if d.isdigit() and int(d) >= gpu_count), key=int)


def shortfalls(need: dict[str, int], free: dict[str, int | None]) -> list[str]:
    """One sentence per device whose free memory now is less than what goes there."""
    return [
        f"{torch_device(dev)}: {format_size(n)} to load but {format_size(free[dev] or 0)} free now"
        for dev, n in sorted(need.items())
        if free.get(dev) is not None and n > (free[dev] or 0)
    ]


# ---------------------------------------------------------------- checking this machine


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def free_memory(dev: str) -> int | None:
    """Free bytes on a device now; None for disk (disk tensors are mapped from the source)."""
    if dev == "disk":
        return None
    if dev == "cpu":
        return available_ram()
    import torch

    return int(torch.cuda.mem_get_info(int(dev))[0])


def _check_machine(plan: Plan, need: dict[str, int], require_fit: bool) -> list[str]:
    count = gpu_count()
    missing = missing_devices(plan.named_devices(), count)
    if missing:
        has = (
            "no CUDA GPU (only cpu and disk)"
            if count == 0
            else f"{count} CUDA GPU(s): {', '.join(f'cuda:{i}' for i in range(count))}"
        )
        names = ", ".join(f"cuda:{d}" for d in missing)
        raise BigmodelError(
            f"plan needs {names}, which this machine lacks; it has {has}", plan.path
        )
    short = shortfalls(need, {dev: free_memory(dev) for dev in need})
    if short and require_fit:
        raise FitError("not enough free memory for the plan now: " + "; ".join(short), plan.path)
    return short


def _warn(message: str) -> None:
    sys.stderr.write(f"bigmodel: warning: {message}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- the command


def _device_runs(plan: Plan, acc: Loaded) -> tuple[DeviceRun, ...]:
    import torch

    ids = set(plan.devices) | set(acc.nbytes)
    runs = []
    for dev in sorted(ids, key=lambda d: (not d.isdigit(), int(d) if d.isdigit() else d)):
        loaded = acc.nbytes.get(dev, 0)
        allocated: int | None = None if dev == "disk" else loaded
        peak = allocated
        if dev.isdigit():
            allocated = int(torch.cuda.memory_allocated(int(dev)))
            peak = int(torch.cuda.max_memory_allocated(int(dev)))
        planned = plan.devices[dev].planned if dev in plan.devices else 0
        runs.append(DeviceRun(dev, planned, loaded, allocated, peak, acc.seconds.get(dev, 0.0)))
    return tuple(runs)


def _component_runs(
    ckpt: Checkpoint, plan: Plan, place: dict[str, dict[str, str]], acc: Loaded
) -> tuple[ComponentRun, ...]:
    sizes = {
        (info.file, info.name): tensor.numel() * tensor.element_size()
        for info, _dev, tensor in acc.tensors
    }
    runs = []
    for c in ckpt.components:
        by_device: dict[str, int] = {}
        for t in c.tensors:
            dev = place[c.name][t.name]
            by_device[dev] = by_device.get(dev, 0) + sizes[(t.file, t.name)]
        runs.append(
            ComponentRun(
                c.name,
                plan.plan_value(c.name),
                len(c.tensors),
                sum(by_device.values()),
                by_device,
            )
        )
    return tuple(runs)


def _prepare(
    source: str | None, plan: Plan, dtype: DType | None, variant: str | None
) -> tuple[Checkpoint, DType | None, list[str]]:
    notes = []
    target = dtype if dtype is not None else plan.dtype
    if dtype is not None and (plan.dtype is None or dtype.code != plan.dtype.code):
        planned_at = plan.dtype.name if plan.dtype else "checkpoint dtypes"
        notes.append(
            f"--dtype {dtype.name} differs from the plan's {planned_at}; "
            "its planned bytes are not what this run loads"
        )
    ckpt = load_checkpoint(source, variant or plan.variant)
    if fingerprint(ckpt) != plan.fingerprint:
        if os.path.realpath(plan.source) != os.path.realpath(ckpt.source):
            raise BigmodelError(
                f"the plan was made for {plan.source}, a different checkpoint; "
                "run bigmodel plan on this one",
                ckpt.source,
            )
        raise BigmodelError(CHANGED, ckpt.source)
    return ckpt, target, notes


def run_plan(
    source: str | None,
    plan_file: str,
    dtype: DType | None,
    verify: bool,
    forward: bool,
    require_fit: bool,
    variant: str | None,
    progress: Progress,
) -> RunReport:
    """Check ``plan_file`` against SOURCE (default: the current folder) and this machine,
    load every tensor onto its device, and report what that cost."""
    began = time.perf_counter()
    plan = read_plan(Path(plan_file))
    ckpt, target, notes = _prepare(source, plan, dtype, variant)
    place = placements(ckpt, plan)
    notes += _check_machine(plan, load_bytes(ckpt, place, target), require_fit)
    for note in notes:
        _warn(note)
    _reset_peaks(plan)

    start = time.perf_counter()
    acc = loading.load(ckpt, place, target, progress)
    load_seconds = time.perf_counter() - start
    devices = _device_runs(plan, acc)
    components = _component_runs(ckpt, plan, place, acc)

    verify_seconds = None
    if verify:
        start = time.perf_counter()
        loading.verify(acc, target, progress)
        verify_seconds = time.perf_counter() - start
    del acc  # forward builds its own models: give the memory back first
    results: tuple[ForwardResult, ...] = ()
    if forward:
        from bigmodel_cli.forward import run_forward

        _free_cuda()
        results = run_forward(ckpt, plan, target)
    return RunReport(
        str(ckpt.source),
        str(plan.path),
        plan.strategy,
        target.name if target else None,
        devices,
        components,
        verify,
        load_seconds,
        verify_seconds,
        time.perf_counter() - began,
        results,
        tuple(notes),
    )


def _reset_peaks(plan: Plan) -> None:
    import torch

    for dev in plan.named_devices():
        if dev.isdigit():
            torch.cuda.reset_peak_memory_stats(int(dev))


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
