"""What ``shard`` / ``merge`` carry out: the checkpoint planned (:mod:`.plan`), streamed
(:mod:`.write`) into an :class:`~.output.AtomicFolder`, verified; and the
:class:`WriteResult` that says so."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bigmodel_cli import arguments as a
from bigmodel_cli.checkpoint import load_checkpoint
from bigmodel_cli.progress import Progress, shown
from bigmodel_cli.sharding.output import AtomicFolder, check_output, default_output
from bigmodel_cli.sharding.plan import Mode, WritePlan, plan_write
from bigmodel_cli.sharding.reading import SourceReading
from bigmodel_cli.sharding.training import with_training
from bigmodel_cli.sharding.write import check_space, execute, verify
from bigmodel_cli.sizes import as_target_dtype

if TYPE_CHECKING:
    from bigmodel_cli.sizes import DTypeLike


@dataclass(frozen=True)
class WriteResult:
    """What ``shard`` / ``merge`` wrote: the plan carried out, bytes and time."""

    plan: WritePlan
    bytes_written: int
    seconds: float

    @property
    def output(self) -> str:
        return os.path.abspath(self.plan.output)


def write_checkpoint(
    source: str | os.PathLike[str] | None,
    output: str | os.PathLike[str] | None,
    mode: Mode,
    limit: int | None,
    dtype: DTypeLike | None,
    reading: SourceReading,
    force: bool,
    progress: Progress | None,
) -> WriteResult:
    """Plan and write ``source``, read as ``reading`` says, into ``output`` (``mode``: shard
    at ``limit``, or merge; ``dtype``: as :func:`~bigmodel_cli.sizes.as_target_dtype` takes it)."""
    started = time.perf_counter()
    a.path(source, "source")
    a.path(output, "output")
    a.flag(force, "force")
    a.progress(progress, "progress")
    target = as_target_dtype(dtype)
    src = None if source is None else os.fspath(source)
    ckpt = load_checkpoint(  # the bytes, not a header mirror
        src, reading.variant, remote=False, include_optimizer=reading.include_optimizer
    )
    out = Path(output) if output is not None else default_output(src, ckpt, mode)
    check_output(ckpt, out)
    with AtomicFolder(out, force) as folder, shown(progress) as bar:
        plan = with_training(plan_write(ckpt, out, mode, limit, target), ckpt, reading)
        check_space(plan, folder.path)
        written = execute(plan, folder.path, bar)
        verify(plan, folder.path)
        folder.commit()
    return WriteResult(plan, written, time.perf_counter() - started)
