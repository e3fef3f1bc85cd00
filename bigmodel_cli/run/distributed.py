"""``torchrun ... -m bigmodel_cli run SOURCE --plan plan.json``: every rank loads its share.

Each rank joins the process group torchrun's environment describes
(:class:`~bigmodel_cli.torchrun.Group`), checks its RANK / LOCAL_RANK and the checkpoint
against the plan, reads only its byte ranges (:mod:`.ranges`), optionally verifies them
and runs its pipeline stage (:mod:`.pipeline_stage`, ``--forward``), and sends rank 0 what that
cost. Rank 0 returns the :class:`WorldRunReport`; the others return None.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bigmodel_cli.checkpoint import Checkpoint, is_repo_id, load_checkpoint
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.placement.plan import Plan, PlanLike, as_plan
from bigmodel_cli.placement.ranks import check_reads
from bigmodel_cli.placement.world import RankPlan, World
from bigmodel_cli.progress import NullProgress, Progress, shown
from bigmodel_cli.run.checks import prepare
from bigmodel_cli.run.hub_ranges import is_remote, read_hub
from bigmodel_cli.run.load import Loaded, verify_tensors
from bigmodel_cli.run.place import check_source
from bigmodel_cli.run.ranges import Read, Share, rank_share, read_share
from bigmodel_cli.run.request import WorldOptions, WorldRequest, as_record
from bigmodel_cli.sizes import DType, as_target_dtype
from bigmodel_cli.torchrun import READERS, TORCHRUN_ARGUMENTS, Group, RankEnv

if TYPE_CHECKING:
    from typing import Unpack

    from bigmodel_cli.run.pipeline_stage import PipelineResult


@dataclass(frozen=True)
class RankRun:
    """What one rank loaded and what it cost."""

    rank: int
    node: int
    local_rank: int
    host: str
    device: str  # "cpu" or "cuda:N"
    planned: int  # the plan's bytes for this rank
    bytes_read: int  # counted at the read calls
    tensors: int
    seconds: float
    verify_seconds: float | None
    peak_rss: int  # the process's peak resident memory
    peak_gpu: int | None  # torch.cuda.max_memory_allocated on its GPU


@dataclass(frozen=True)
class WorldRunReport:
    source: str
    plan_file: str | None
    strategy: str
    dtype: str | None
    world: World
    reader: str
    ranks: tuple[RankRun, ...]
    checkpoint_bytes: int  # tensor bytes of the checkpoint
    duplicate_bytes: int  # bytes the plan has more than one rank read
    verified: bool
    total_seconds: float
    forward: PipelineResult | None = None
    warnings: tuple[str, ...] = ()

    @property
    def bytes_read(self) -> int:
        return sum(r.bytes_read for r in self.ranks)


@dataclass(frozen=True)
class _Job:
    """One rank's checked work: the plan, its entry, the checkpoint and its share."""

    plan: Plan
    me: RankPlan
    ckpt: Checkpoint
    target: DType | None
    share: Share
    device: str
    notes: tuple[str, ...]


def _check_world(plan: Plan, env: RankEnv) -> RankPlan:
    if plan.world is None:
        raise BigmodelError(
            "is a plan for one machine; plan over ranks with nodes and procs_per_node",
            plan.path,
            argument=("nodes", "procs_per_node"),
        )
    w = plan.world.world
    if env.world_size != w.size or env.local_world_size != w.procs_per_node:
        raise BigmodelError(
            f"plan is for {w.nodes} node(s) x {w.procs_per_node} process(es), but torchrun "
            f"started {env.world_size} ranks, {env.local_world_size} on this node (start "
            f"torchrun with nnodes={w.nodes}, nproc_per_node={w.procs_per_node})",
            plan.path,
            argument=TORCHRUN_ARGUMENTS,
        )
    me = plan.world.ranks[env.rank]
    if (me.local_rank, me.node) != (env.local_rank, env.node):
        raise BigmodelError(
            f"plan rank {env.rank} is local rank {me.local_rank} of node {me.node}, but torchrun "
            f"made it local rank {env.local_rank} of node {env.node}",
            plan.path,
        )
    return me


def _device(me: RankPlan, env: RankEnv) -> str:
    if me.device == "cpu":
        return "cpu"
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if env.local_rank >= count:
        raise BigmodelError(
            f"rank {env.rank} needs cuda:{env.local_rank}, and its node has {count} GPU(s)"
        )
    return f"cuda:{env.local_rank}"


def _from_the_hub(
    source: str | os.PathLike[str] | None, plan: Plan, variant: str | None, offline: bool
) -> Checkpoint | None:
    """SOURCE as the plan's repo id at its commit: from the cache, else from the Hub's headers
    (each rank then fetches only its ranges); None for a local path."""
    path = None if source is None else os.fspath(source)
    commit = plan.commit_for(path)
    if commit is None or path is None or not is_repo_id(path):
        return None
    try:
        return load_checkpoint(path, variant, revision=commit, remote=False)
    except BigmodelError:
        return load_checkpoint(path, variant, revision=commit, offline=offline)


def _prepare_rank(
    source: str | os.PathLike[str] | None,
    plan: PlanLike,
    r: WorldRequest,
    dtype: DType | None,
    env: RankEnv,
) -> _Job:
    the_plan = as_plan(plan)
    me = _check_world(the_plan, env)
    device = _device(me, env)
    ckpt = _from_the_hub(source, the_plan, r.variant or the_plan.variant, r.offline)
    if ckpt is None:  # a path, or a repo id in the cache: run's own checks
        ckpt, target, notes = prepare(source, the_plan, dtype, r.variant, r.offline)
    else:
        check_source(ckpt, the_plan)
        target, notes = dtype or the_plan.target, []
    if is_remote(ckpt) and (r.reader != READERS[0] or r.verify):
        asked = "verify" if r.verify else f"reader {r.reader}"
        raise BigmodelError(
            "this rank fetches its ranges from the Hub (the repo is not in its cache): "
            f"{asked} needs the files here (hf download first)",
            ckpt.origin,
            argument=asked.split()[0],
        )
    check_reads(ckpt, the_plan)  # the ranks' reads cover every tensor once
    share = rank_share(ckpt, me, the_plan.path)
    if r.stage is not None:
        from bigmodel_cli.run.pipeline_stage import check_pipeline

        check_pipeline(ckpt, the_plan, r.stage)
    return _Job(the_plan, me, ckpt, target, share, device, tuple(notes))


def _read(job: _Job, reader: str, progress: Progress) -> Read:
    if is_remote(job.ckpt):
        return read_hub(job.ckpt, job.share, job.device, job.target, progress)
    return read_share(job.share, reader, job.device, job.target, progress)


def _verify(job: _Job, read: Read) -> float:
    began = time.perf_counter()
    loaded = Loaded()
    key = "cpu" if job.device == "cpu" else int(job.device.split(":")[1])
    for info, tensor in read.tensors:
        loaded.add(info, key, tensor, 0.0)
    verify_tensors(loaded, job.target, NullProgress())
    return time.perf_counter() - began


def _peaks(device: str) -> tuple[int, int | None]:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    if device == "cpu":
        return rss, None
    import torch

    return rss, int(torch.cuda.max_memory_allocated(device))


def run_world(
    source: str | os.PathLike[str] | None = None,
    *,
    plan: PlanLike = "plan.json",
    request: WorldRequest | None = None,
    **options: Unpack[WorldOptions],
) -> WorldRunReport | None:
    """This rank's part of a plan over ranks, as ``request`` (or the keywords of a
    :class:`~.request.WorldRequest`) asks; rank 0 gets the report of all of them."""
    began = time.perf_counter()
    r = as_record(WorldRequest, request, options)
    wanted = as_target_dtype(r.dtype)
    with Group() as group:
        env = group.env
        job = group.agree(lambda: _prepare_rank(source, plan, r, wanted, env), "checking the plan")
        with shown(r.progress if env.rank == 0 else NullProgress()) as bar:
            read = group.agree(lambda: _read(job, r.reader, bar), "loading")
        verify_seconds = group.agree(lambda: _verify(job, read), "verifying") if r.verify else None
        result = None
        if r.stage is not None:
            from bigmodel_cli.run.pipeline_stage import run_pipeline

            result = run_pipeline(
                group, job.ckpt, job.plan, job.me, read, job.share, job.device, r.stage
            )
        mine = _rank_run(env, job, read, verify_seconds)
        runs = group.gather(mine, "gathering the report")
    if env.rank != 0:
        return None
    return _report(job, tuple(runs), r.reader, r.verify, time.perf_counter() - began, result)


def _rank_run(env: RankEnv, job: _Job, read: Read, verify_seconds: float | None) -> RankRun:
    rss, gpu = _peaks(job.device)
    return RankRun(
        env.rank,
        env.node,
        env.local_rank,
        socket.gethostname(),
        job.device,
        job.me.bytes,
        read.bytes_read,
        len(read.tensors),
        read.seconds,
        verify_seconds,
        rss,
        gpu,
    )


def _report(
    job: _Job,
    runs: tuple[RankRun, ...],
    reader: str,
    verify: bool,
    seconds: float,
    result: PipelineResult | None,
) -> WorldRunReport:
    world = job.plan.world
    assert world is not None
    return WorldRunReport(
        source=job.ckpt.origin,
        plan_file=str(job.plan.path) if job.plan.path is not None else None,
        strategy=job.plan.strategy,
        dtype=job.target.name if job.target else None,
        world=world.world,
        reader=reader,
        ranks=runs,
        checkpoint_bytes=sum(c.nbytes for c in job.ckpt.components),
        duplicate_bytes=sum(d.bytes * (len(d.ranks) - 1) for d in world.duplicates),
        verified=verify,
        total_seconds=seconds,
        forward=result,
        warnings=job.notes,
    )
