"""The shard stage: ``bigmodel shard`` and ``bigmodel merge``.

Decide (:mod:`.layout`: a :class:`~.layout.WritePlan`, pure data), then do
(:mod:`.write`: stream the bytes) inside an :class:`~.output.AtomicFolder` that appears
whole or not at all.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from bigmodel_cli.checkpoint import load_checkpoint
from bigmodel_cli.errors import UsageError
from bigmodel_cli.progress import Progress, shown
from bigmodel_cli.sharding.layout import Mode, WritePlan, plan_write
from bigmodel_cli.sharding.output import AtomicFolder, check_output, default_output
from bigmodel_cli.sharding.write import check_space, execute, verify
from bigmodel_cli.sizes import DType

__all__ = ["WriteResult", "merge", "shard"]


@dataclass(frozen=True)
class WriteResult:
    """What ``shard`` / ``merge`` wrote: the plan carried out, bytes and time."""

    plan: WritePlan
    bytes_written: int
    seconds: float

    @property
    def output(self) -> str:
        return os.path.abspath(self.plan.output)


def shard(
    source: str | os.PathLike[str] | None,
    output: str | os.PathLike[str] | None = None,
    *,
    max_shard_size: int = 5 * 10**9,
    dtype: DType | None = None,
    variant: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> WriteResult:
    """Write SOURCE as shards of at most ``max_shard_size`` tensor bytes into OUT
    (default: ``SOURCE-sharded`` beside it); a tensor larger than that gets a shard of
    its own, as in Hugging Face.

    >>> shard("unet/", "unet-sharded/", max_shard_size=5 * 10**9)  # doctest: +SKIP
    """
    if max_shard_size <= 0:
        raise UsageError(
            f"max_shard_size must be positive, not {max_shard_size}", argument="max_shard_size"
        )
    return _write(source, output, "shard", max_shard_size, dtype, variant, force, progress)


def merge(
    source: str | os.PathLike[str] | None,
    output: str | os.PathLike[str] | None = None,
    *,
    dtype: DType | None = None,
    variant: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> WriteResult:
    """Write SOURCE with each component in one ``.safetensors`` file (the plain name,
    indexes dropped) into OUT (default: ``SOURCE-merged`` beside it).

    >>> merge("unet-sharded/", "unet/")  # doctest: +SKIP
    """
    return _write(source, output, "merge", None, dtype, variant, force, progress)


def _write(
    source: str | os.PathLike[str] | None,
    output: str | os.PathLike[str] | None,
    mode: Mode,
    limit: int | None,
    dtype: DType | None,
    variant: str | None,
    force: bool,
    progress: Progress | None,
) -> WriteResult:
    started = time.perf_counter()
    src = None if source is None else os.fspath(source)
    ckpt = load_checkpoint(src, variant, remote=False)  # the bytes, not a header mirror
    out = Path(output) if output is not None else default_output(src, ckpt, mode)
    check_output(ckpt, out)
    with AtomicFolder(out, force) as folder, shown(progress) as bar:
        plan = plan_write(ckpt, out, mode, limit, dtype)
        check_space(plan, folder.path)
        written = execute(plan, folder.path, bar)
        verify(plan, folder.path)
        folder.commit()
    return WriteResult(plan, written, time.perf_counter() - started)
