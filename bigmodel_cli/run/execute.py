"""``bigmodel run SOURCE --plan plan.json`` in one process: check, load, verify, report.

The decisions are pure (:mod:`.place`); the checks are :mod:`.checks`, loading and
verifying :mod:`.load`, ``--forward`` :mod:`.forward`; this module puts the numbers into
a :class:`~.report.RunReport`, warnings included (the caller shows them).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bigmodel_cli import arguments as a
from bigmodel_cli.checkpoint import Checkpoint
from bigmodel_cli.devices import reset_gpu_peaks
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.placement.plan import Plan, PlanLike, as_plan
from bigmodel_cli.progress import shown
from bigmodel_cli.run.checks import check_machine, prepare
from bigmodel_cli.run.load import load_tensors, verify_tensors
from bigmodel_cli.run.place import Placements, load_bytes, placements
from bigmodel_cli.run.report import (
    ComponentRun,
    DeviceRun,
    RunReport,
    component_runs,
    device_runs,
)
from bigmodel_cli.run.request import RunPlanOptions, RunPlanRequest, as_record
from bigmodel_cli.sizes import DType, as_target_dtype
from bigmodel_cli.torchrun import TORCHRUN_ARGUMENTS

if TYPE_CHECKING:
    from typing import Unpack

    from bigmodel_cli.run.forward import ForwardResult


def run_plan(
    source: str | os.PathLike[str] | None = None,
    *,
    plan: PlanLike = "plan.json",
    request: RunPlanRequest | None = None,
    **options: Unpack[RunPlanOptions],
) -> RunReport:
    """Check ``plan`` (a :class:`Plan`, its JSON dict, or a plan file) against SOURCE
    (default: the current folder) and this machine, load every tensor onto its device,
    and report what that cost; as ``request`` asks, or the keywords of a
    :class:`~.request.RunPlanRequest` (``dtype``, ``verify``, ``forward`` ...) do.

    >>> report = run_plan("sdxl/", plan="plan.json", verify=True)  # doctest: +SKIP
    """
    began = time.perf_counter()
    a.path(source, "source")
    r = as_record(RunPlanRequest, request, options)
    the_plan = as_plan(plan)
    if the_plan.world is not None:  # a plan over ranks: run/distributed.py, under torchrun
        w = the_plan.world.world
        raise BigmodelError(
            f"is a plan over {w.size} torchrun ranks; start it with torchrun with "
            f"nnodes={w.nodes}, nproc_per_node={w.procs_per_node} (-m bigmodel_cli run)",
            the_plan.path,
            argument=TORCHRUN_ARGUMENTS,
        )
    wanted = as_target_dtype(r.dtype)
    ckpt, target, notes = prepare(source, the_plan, wanted, r.variant, r.offline)
    place = placements(ckpt, the_plan)
    try:
        notes += check_machine(the_plan, load_bytes(ckpt, place, target), r.require_fit)
        reset_gpu_peaks(the_plan.named_devices())
        loaded = _load(ckpt, the_plan, place, target, r)
        results: tuple[ForwardResult, ...] = ()
        if r.forward:
            from bigmodel_cli.run.forward import run_forward

            _free_cuda()
            results = run_forward(ckpt, the_plan, target)
    except BigmodelError as error:
        error.warnings += tuple(notes)  # what the run would have warned about, shown first
        raise
    return RunReport(
        source=ckpt.origin,
        plan_file=str(the_plan.path) if the_plan.path is not None else None,
        strategy=the_plan.strategy,
        dtype=target.name if target else None,
        devices=loaded.devices,
        components=loaded.components,
        verified=r.verify,
        load_seconds=loaded.load_seconds,
        verify_seconds=loaded.verify_seconds,
        total_seconds=time.perf_counter() - began,
        forward=results,
        warnings=tuple(notes),
        cpu_load="copied" if r.copy else "mapped",
    )


@dataclass(frozen=True)
class _Loaded:
    devices: tuple[DeviceRun, ...]
    components: tuple[ComponentRun, ...]
    load_seconds: float
    verify_seconds: float | None


def _load(
    ckpt: Checkpoint,
    plan: Plan,
    place: Placements,
    target: DType | None,
    r: RunPlanRequest,
) -> _Loaded:
    """Every tensor onto its device (and compared with the file): what it cost. The
    tensors are let go before returning (a forward pass builds its own models)."""
    with shown(r.progress) as bar:
        start = time.perf_counter()
        acc = load_tensors(ckpt, place, target, bar, copy=r.copy)
        load_seconds = time.perf_counter() - start
        verify_seconds = None
        if r.verify:
            start = time.perf_counter()
            verify_tensors(acc, target, bar)
            verify_seconds = time.perf_counter() - start
    return _Loaded(
        device_runs(plan, acc),
        component_runs(ckpt, plan, place, acc),
        load_seconds,
        verify_seconds,
    )


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
