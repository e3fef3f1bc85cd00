"""Before ``bigmodel run`` moves a byte: the checkpoint the plan was made from (its
header fingerprint), and this machine (the plan's GPUs, free memory now). What is not
fatal comes back as warnings, for the report."""

from __future__ import annotations

import os

from bigmodel_cli.checkpoint import Checkpoint, is_repo_id, load_checkpoint
from bigmodel_cli.checkpoint.discover import read_path
from bigmodel_cli.checkpoint.resolve import fetch_for_plan
from bigmodel_cli.devices import DeviceKey, available_ram, torch_device
from bigmodel_cli.errors import BigmodelError, FitError, Warned
from bigmodel_cli.placement.plan import Plan
from bigmodel_cli.run.place import check_source, missing_devices, shortfalls
from bigmodel_cli.sizes import DType


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


def check_machine(plan: Plan, need: dict[DeviceKey, int], require_fit: bool) -> list[str]:
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


def checkpoint_for(
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


def prepare(
    source: str | os.PathLike[str] | None,
    plan: Plan,
    dtype: DType | None,
    variant: str | None,
    offline: bool,
) -> tuple[Checkpoint, DType | None, list[str]]:
    notes: list[str] = []
    target = dtype if dtype is not None else plan.target
    if dtype is not None and dtype.name != plan.dtype:
        planned_at = plan.dtype or "checkpoint dtypes"
        notes.append(
            Warned(
                f"dtype {dtype.name} differs from the plan's {planned_at}; "
                "its planned bytes are not what this run loads",
                argument="dtype",
            )
        )
    ckpt = checkpoint_for(source, plan, variant or plan.variant, offline)
    check_source(ckpt, plan)
    return ckpt, target, notes
