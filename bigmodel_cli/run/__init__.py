"""The run stage: ``bigmodel run SOURCE --plan plan.json`` executes a plan here.

Before anything moves, the plan is checked against the checkpoint (header fingerprint)
and this machine (its GPUs, free memory now). The decisions are pure (:mod:`.place`);
loading and verifying are done by :mod:`.load`, ``--forward`` by :mod:`.forward`; this
module puts the numbers into a :class:`RunReport`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bigmodel_cli.checkpoint import Checkpoint, is_repo_id, load_checkpoint
from bigmodel_cli.checkpoint.discover import read_path
from bigmodel_cli.checkpoint.resolve import fetch_for_plan
from bigmodel_cli.devices import (
    DeviceKey,
    available_ram,
    device_order,
    is_gpu,
    reset_gpu_peaks,
    torch_device,
)
from bigmodel_cli.errors import BigmodelError, FitError
from bigmodel_cli.placement.plan import Plan, PlanLike, as_plan
from bigmodel_cli.progress import Progress, shown
from bigmodel_cli.run.load import Loaded, load_tensors, verify_tensors
from bigmodel_cli.run.place import (
    Placements,
    check_source,
    load_bytes,
    missing_devices,
    placements,
    shortfalls,
)
from bigmodel_cli.sizes import DType, as_target_dtype

if TYPE_CHECKING:
    from bigmodel_cli.run.forward import ForwardResult
    from bigmodel_cli.sizes import DTypeLike


@dataclass(frozen=True)
class DeviceRun:
    """What one device holds after the run, beside what the plan promised."""

    key: DeviceKey
    planned: int
    loaded: int
    allocated: int | None
    peak: int | None
    seconds: float

    @property
    def label(self) -> str:
        return torch_device(self.key)

    @property
    def gb_per_s(self) -> float:
        return self.loaded / self.seconds / 1e9 if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ComponentRun:
    """One component: where the plan put it, how many tensors and bytes were loaded."""

    name: str
    device: DeviceKey
    tensors: int
    bytes: int
    bytes_by_device: dict[DeviceKey, int]


@dataclass(frozen=True)
class RunReport:
    source: str
    plan_file: str | None
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
    cpu_load: str = "mapped"  # cpu tensors: "mapped" from the file, or "copied" (--copy)


# ---------------------------------------------------------------- checking this machine


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def free_memory(dev: DeviceKey) -> int | None:
    """Free bytes on a device now; None for disk (disk tensors are mapped from the source)."""
    if dev == "disk":
        return None
    if dev == "cpu":
        return available_ram()
    import torch

    return int(torch.cuda.mem_get_info(torch_device(dev))[0])


def _check_machine(plan: Plan, need: dict[DeviceKey, int], require_fit: bool) -> list[str]:
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

    keys = {d.key for d in plan.devices} | set(acc.nbytes)
    runs = []
    for dev in sorted(keys, key=device_order):
        loaded = acc.nbytes.get(dev, 0)
        allocated: int | None = None if dev == "disk" else loaded
        peak = allocated
        if is_gpu(dev):
            allocated = int(torch.cuda.memory_allocated(dev))
            peak = int(torch.cuda.max_memory_allocated(dev))
        device = plan.device(dev)
        planned = 0  # what is loaded here is weights: a plan's run time is not loaded
        if device is not None:
            planned = device.planned if device.weights is None else device.weights
        runs.append(DeviceRun(dev, planned, loaded, allocated, peak, acc.seconds.get(dev, 0.0)))
    return tuple(runs)


def _component_runs(
    ckpt: Checkpoint, plan: Plan, place: Placements, acc: Loaded
) -> tuple[ComponentRun, ...]:
    sizes = {
        (info.file, info.name): tensor.numel() * tensor.element_size()
        for info, _dev, tensor in acc.tensors
    }
    runs = []
    for c in ckpt.components:
        by_device: dict[DeviceKey, int] = {}
        for t in c.tensors:
            dev = place[c.name][t.name]
            by_device[dev] = by_device.get(dev, 0) + sizes[(t.file, t.name)]
        runs.append(
            ComponentRun(
                c.name,
                plan.device_map[c.name],
                len(c.tensors),
                sum(by_device.values()),
                by_device,
            )
        )
    return tuple(runs)


def _checkpoint(
    source: str | os.PathLike[str] | None, plan: Plan, variant: str | None, offline: bool
) -> Checkpoint:
    """The checkpoint to load: a local path, or a repo id's downloaded files (the ones
    the plan uses are fetched first when they are not all in the cache)."""
    path = None if source is None else os.fspath(source)
    commit = plan.commit_for(path)
    try:
        return load_checkpoint(path, variant, revision=commit, remote=False)
    except BigmodelError:
        if offline or commit is None or path is None or not is_repo_id(path):
            raise
    return read_path(fetch_for_plan(path, commit, variant), path.rsplit("/", 1)[1], variant)


def _prepare(
    source: str | os.PathLike[str] | None,
    plan: Plan,
    dtype: DType | None,
    variant: str | None,
    offline: bool,
) -> tuple[Checkpoint, DType | None, list[str]]:
    notes = []
    target = dtype if dtype is not None else plan.target
    if dtype is not None and dtype.name != plan.dtype:
        planned_at = plan.dtype or "checkpoint dtypes"
        notes.append(
            f"--dtype {dtype.name} differs from the plan's {planned_at}; "
            "its planned bytes are not what this run loads"
        )
    ckpt = _checkpoint(source, plan, variant or plan.variant, offline)
    check_source(ckpt, plan)
    return ckpt, target, notes


def run_plan(
    source: str | os.PathLike[str] | None = None,
    *,
    plan: PlanLike = "plan.json",
    dtype: DTypeLike | None = None,
    verify: bool = False,
    forward: bool = False,
    require_fit: bool = False,
    variant: str | None = None,
    offline: bool = False,
    copy: bool = False,
    progress: Progress | None = None,
) -> RunReport:
    """Check ``plan`` (a :class:`Plan`, its JSON dict, or a plan file) against SOURCE
    (default: the current folder) and this machine, load every tensor onto its device,
    and report what that cost.

    >>> report = run_plan("sdxl/", plan="plan.json", verify=True)  # doctest: +SKIP
    """
    began = time.perf_counter()
    the_plan = as_plan(plan)
    if the_plan.world is not None:  # a plan over ranks: run/distributed.py, under torchrun
        w = the_plan.world.world
        raise BigmodelError(
            f"is a plan over {w.size} torchrun ranks; start it with torchrun --nnodes "
            f"{w.nodes} --nproc-per-node {w.procs_per_node} ... -m bigmodel_cli run",
            the_plan.path,
        )
    wanted = as_target_dtype(dtype)
    ckpt, target, notes = _prepare(source, the_plan, wanted, variant, offline)
    place = placements(ckpt, the_plan)
    notes += _check_machine(the_plan, load_bytes(ckpt, place, target), require_fit)
    for note in notes:
        _warn(note)
    reset_gpu_peaks(the_plan.named_devices())

    with shown(progress) as bar:
        start = time.perf_counter()
        acc = load_tensors(ckpt, place, target, bar, copy=copy)
        load_seconds = time.perf_counter() - start
        devices = _device_runs(the_plan, acc)
        components = _component_runs(ckpt, the_plan, place, acc)
        verify_seconds = None
        if verify:
            start = time.perf_counter()
            verify_tensors(acc, target, bar)
            verify_seconds = time.perf_counter() - start
    del acc  # forward builds its own models: give the memory back first
    results: tuple[ForwardResult, ...] = ()
    if forward:
        from bigmodel_cli.run.forward import run_forward

        _free_cuda()
        results = run_forward(ckpt, the_plan, target)
    return RunReport(
        source=ckpt.origin,
        plan_file=str(the_plan.path) if the_plan.path is not None else None,
        strategy=the_plan.strategy,
        dtype=target.name if target else None,
        devices=devices,
        components=components,
        verified=verify,
        load_seconds=load_seconds,
        verify_seconds=verify_seconds,
        total_seconds=time.perf_counter() - began,
        forward=results,
        warnings=tuple(notes),
        cpu_load="copied" if copy else "mapped",
    )


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
