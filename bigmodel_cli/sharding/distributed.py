"""``torchrun ... -m bigmodel_cli shard`` (and ``merge``): the output files written by all ranks.

Every rank makes the same :class:`~.layout.WritePlan` from the headers (pure, so they
agree without talking). :func:`divide` deals the output files to the ranks by bytes
(largest first, to the rank with the fewest bytes so far); rank 0 also writes the indexes
and copies the other files. Rank 0 opens the :class:`~.output.AtomicFolder` (the lock and
the temporary folder, which must be on a file system every node sees) and tells the
others where it is; each rank writes its own files into it; after a barrier on which
every rank reports success, rank 0 verifies the headers and indexes and renames the folder
into place. OUT is byte for byte what one process writes.

If any rank fails, no OUT appears: rank 0 removes the temporary folder. If rank 0 itself
dies, a surviving rank takes the lock it held (the kernel released it) and removes what
it left, as the next run of ``shard`` would.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

from bigmodel_cli.checkpoint import load_checkpoint
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.progress import NullProgress, Progress, shown
from bigmodel_cli.sharding.output import AtomicFolder, check_output, default_output
from bigmodel_cli.sharding.plan import Mode, WritePlan, plan_write
from bigmodel_cli.sharding.reading import SourceReading
from bigmodel_cli.sharding.result import WriteResult
from bigmodel_cli.sharding.training import with_training
from bigmodel_cli.sharding.write import check_space, execute, verify
from bigmodel_cli.sizes import DType
from bigmodel_cli.torchrun import Group


def divide(plan: WritePlan, ranks: int) -> tuple[frozenset[str], ...]:
    """The paths (relative to OUT) each rank writes: weight files by bytes, largest first
    to the least loaded rank (the lowest of equals); indexes and copies to rank 0."""
    load = [0] * ranks
    shares: list[set[str]] = [set() for _ in range(ranks)]
    files = [(f.nbytes, c.path(f.name)) for c in plan.components for f in c.files]
    for nbytes, rel in sorted(files, key=lambda item: (-item[0], item[1])):
        r = min(range(ranks), key=lambda i: (load[i], i))
        load[r] += nbytes
        shares[r].add(rel)
    shares[0].update(c.path(c.index_name) for c in plan.components if c.index_name)
    shares[0].update(copy.target for copy in plan.copies)
    return tuple(frozenset(s) for s in shares)


def _plan(
    source: str | None, output: str | os.PathLike[str] | None, mode: Mode, limit: int | None,
    dtype: DType | None, reading: SourceReading,
) -> WritePlan:  # fmt: skip
    ckpt = load_checkpoint(  # the bytes, not a header mirror
        source, reading.variant, remote=False, include_optimizer=reading.include_optimizer
    )
    out = Path(output) if output is not None else default_output(source, ckpt, mode)
    check_output(ckpt, out)
    return with_training(plan_write(ckpt, out, mode, limit, dtype), ckpt, reading)


def _clean_after_rank0(out: Path) -> None:
    """Rank 0 is gone: if its lock is free, remove the temporary folder it left."""
    with contextlib.suppress(BigmodelError, OSError), AtomicFolder(out, force=True):
        pass  # taking the lock cleans stale temporary folders; the new one is removed


def write_world(
    source: str | os.PathLike[str] | None,
    output: str | os.PathLike[str] | None,
    mode: Mode,
    limit: int | None = None,
    dtype: DType | None = None,
    reading: SourceReading | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> WriteResult | None:
    """This rank's part of ``shard`` / ``merge`` (``reading``: how SOURCE is read; default:
    the plain files); rank 0 returns the result, others None."""
    started = time.perf_counter()
    src = None if source is None else os.fspath(source)
    wanted = reading if reading is not None else SourceReading()
    with Group(device="cpu") as group:
        plan = group.agree(
            lambda: _plan(src, output, mode, limit, dtype, wanted), "planning the output"
        )
        mine = divide(plan, group.size)[group.rank]
        folder = AtomicFolder(plan.output, force) if group.rank == 0 else None
        root: Path | None = None
        try:
            group.agree(lambda: _open(folder, plan), "creating the output folder")
            root = at = Path(group.broadcast(str(folder.path) if folder else "", "sharing it"))
            with shown(progress if group.rank == 0 else NullProgress()) as bar:
                written = group.agree(lambda: execute(plan, at, bar, mine), "writing")
            total = sum(group.gather(written, "counting the bytes written"))
            group.agree(lambda: _finish(folder, plan), "moving OUT into place")
        except BaseException:
            if folder is None and root is not None:  # rank 0 may be gone: clean up for it
                _clean_after_rank0(plan.output)
            raise
        finally:
            if folder is not None:
                folder.__exit__(None, None, None)
    if group.rank != 0:
        return None
    return WriteResult(plan, total, time.perf_counter() - started)


def _open(folder: AtomicFolder | None, plan: WritePlan) -> None:
    if folder is not None:
        folder.__enter__()
        check_space(plan, folder.path)


def _finish(folder: AtomicFolder | None, plan: WritePlan) -> None:
    if folder is not None:
        verify(plan, folder.path)
        folder.commit()


__all__: Sequence[str] = ("divide", "write_world")
