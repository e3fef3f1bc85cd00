"""The shard stage: ``bigmodel shard`` and ``bigmodel merge``. Decide (:mod:`.plan`: a
:class:`~.plan.WritePlan`, pure data), then do (:mod:`.write`: stream the bytes) inside an
:class:`~.output.AtomicFolder` that appears whole or not at all (:mod:`.result`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from bigmodel_cli.progress import Progress
from bigmodel_cli.sharding.reading import ReadingOptions, SourceReading, shard_limit, source_reading
from bigmodel_cli.sharding.result import WriteResult, write_checkpoint

if TYPE_CHECKING:
    from typing import Unpack

    from bigmodel_cli.sizes import DTypeLike

__all__ = ["ReadingOptions", "SourceReading", "WriteResult", "merge", "shard"]


def shard(
    source: str | os.PathLike[str] | None,
    output: str | os.PathLike[str] | None = None,
    *,
    max_shard_size: int | str = "5GB",
    dtype: DTypeLike | None = None,
    force: bool = False,
    progress: Progress | None = None,
    **reading: Unpack[ReadingOptions],
) -> WriteResult:
    """Write SOURCE as shards of at most ``max_shard_size`` tensor bytes (an int, or
    ``"5GB"`` / ``"500MiB"`` as ``save_pretrained`` takes it) into OUT (default:
    ``SOURCE-sharded`` beside it); a tensor larger than that gets a shard of its own, as in
    Hugging Face. ``dtype``: ``"fp16"``, ``"F16"`` or ``torch.float16``. ``reading``:
    ``variant``, ``include_optimizer``, ``config`` (:class:`~.reading.ReadingOptions`).

    >>> shard("unet/", "unet-sharded/", max_shard_size="5GB")  # doctest: +SKIP
    """
    limit, read = shard_limit(max_shard_size), source_reading(reading)
    return write_checkpoint(source, output, "shard", limit, dtype, read, force, progress)


def merge(
    source: str | os.PathLike[str] | None,
    output: str | os.PathLike[str] | None = None,
    *,
    dtype: DTypeLike | None = None,
    force: bool = False,
    progress: Progress | None = None,
    **reading: Unpack[ReadingOptions],
) -> WriteResult:
    """Write SOURCE with each component in one ``.safetensors`` file (the plain name,
    indexes dropped) into OUT (default: ``SOURCE-merged`` beside it); ``reading`` as
    :func:`shard`'s.

    >>> merge("unet-sharded/", "unet/")  # doctest: +SKIP
    """
    read = source_reading(reading)
    return write_checkpoint(source, output, "merge", None, dtype, read, force, progress)
