"""The shard stage: ``bigmodel shard`` and ``bigmodel merge``. Decide (:mod:`.plan`: a
:class:`~.plan.WritePlan`, pure data), then do (:mod:`.write`: stream the bytes) inside an
:class:`~.output.AtomicFolder` that appears whole or not at all (:mod:`.result`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from bigmodel_cli.errors import UsageError
from bigmodel_cli.progress import Progress
from bigmodel_cli.sharding.result import WriteResult, write_checkpoint
from bigmodel_cli.sharding.training import TrainingInput, checked_config
from bigmodel_cli.sizes import as_size, as_target_dtype

if TYPE_CHECKING:
    from bigmodel_cli.sizes import DTypeLike

__all__ = ["WriteResult", "merge", "shard"]


def shard(
    source: str | os.PathLike[str] | None,
    output: str | os.PathLike[str] | None = None,
    *,
    max_shard_size: int | str = "5GB",
    dtype: DTypeLike | None = None,
    variant: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    include_optimizer: bool = False,
    config: str | os.PathLike[str] | None = None,
) -> WriteResult:
    """Write SOURCE as shards of at most ``max_shard_size`` tensor bytes (an int, or
    ``"5GB"`` / ``"500MiB"`` as ``save_pretrained`` takes it) into OUT (default:
    ``SOURCE-sharded`` beside it); a tensor larger than that gets a shard of its own, as in
    Hugging Face. ``dtype``: ``"fp16"``, ``"F16"`` or ``torch.float16``.

    >>> shard("unet/", "unet-sharded/", max_shard_size="5GB")  # doctest: +SKIP
    """
    limit = as_size(max_shard_size, "max_shard_size")
    if limit <= 0:
        raise UsageError(f"max_shard_size must be positive, not {limit}", argument="max_shard_size")
    target = as_target_dtype(dtype)
    training = TrainingInput(include_optimizer, checked_config(config))
    return write_checkpoint(
        source, output, "shard", limit, target, variant, force, progress, training
    )


def merge(
    source: str | os.PathLike[str] | None,
    output: str | os.PathLike[str] | None = None,
    *,
    dtype: DTypeLike | None = None,
    variant: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    config: str | os.PathLike[str] | None = None,
    include_optimizer: bool = False,
) -> WriteResult:
    """Write SOURCE with each component in one ``.safetensors`` file (the plain name,
    indexes dropped) into OUT (default: ``SOURCE-merged`` beside it).

    >>> merge("unet-sharded/", "unet/")  # doctest: +SKIP
    """
    target = as_target_dtype(dtype)
    training = TrainingInput(include_optimizer, checked_config(config))
    return write_checkpoint(
        source, output, "merge", None, target, variant, force, progress, training
    )
