"""The shard stage: ``bigmodel shard`` and ``bigmodel merge``.

Decide (:mod:`.plan`: a :class:`~.plan.WritePlan`, pure data), then do
(:mod:`.write`: stream the bytes) inside an :class:`~.output.AtomicFolder` that appears
whole or not at all.
"""

from __future__ import annotations

import os

from bigmodel_cli.errors import UsageError
from bigmodel_cli.progress import Progress
from bigmodel_cli.sharding.result import WriteResult, write_checkpoint
from bigmodel_cli.sizes import DType

__all__ = ["WriteResult", "merge", "shard"]


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
    return write_checkpoint(
        source, output, "shard", max_shard_size, dtype, variant, force, progress
    )


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
    return write_checkpoint(source, output, "merge", None, dtype, variant, force, progress)
