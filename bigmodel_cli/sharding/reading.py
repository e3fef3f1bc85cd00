"""How ``shard`` / ``merge`` read SOURCE (:class:`SourceReading`: which variant, the
optimizer's state too, the model's ``config.json`` given for it) and the API's arguments
checked into it and into the shard limit, before anything is read."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from bigmodel_cli import arguments as a
from bigmodel_cli.errors import BigmodelError, UsageError
from bigmodel_cli.formats.json import read_json
from bigmodel_cli.sizes import as_size


@dataclass(frozen=True)
class SourceReading:
    """``variant``: the files of that variant; ``include_optimizer``: a training
    checkpoint's optimizer state written too; ``config``: the model's ``config.json`` to put
    in OUT (a DCP folder often has none beside it)."""

    variant: str | None = None
    include_optimizer: bool = False
    config: Path | None = None


class ReadingOptions(TypedDict, total=False):
    """:class:`SourceReading`'s fields as ``shard`` / ``merge``'s keywords (``config``: a
    path, checked)."""

    variant: str | None
    include_optimizer: bool
    config: str | os.PathLike[str] | None


def source_reading(options: ReadingOptions) -> SourceReading:
    """``options`` as one record, each checked (an unknown keyword: TypeError)."""
    given: dict[str, Any] = {**options, "config": checked_config(options.get("config"))}
    reading = SourceReading(**given)
    a.text(reading.variant, "variant")
    a.flag(reading.include_optimizer, "include_optimizer")
    return reading


def checked_config(config: str | os.PathLike[str] | None) -> Path | None:
    """``config`` when it is a readable JSON object (as ``from_pretrained`` needs)."""
    if config is None:
        return None
    path = a.file(config, "config")
    try:
        read_json(path, "config")
    except BigmodelError as error:
        raise BigmodelError(error.reason, path, argument="config") from None
    return path


def shard_limit(max_shard_size: int | str) -> int:
    """``max_shard_size`` in bytes: an int, or ``"5GB"`` / ``"500MiB"``; positive."""
    limit = as_size(max_shard_size, "max_shard_size")
    if limit <= 0:
        raise UsageError(f"max_shard_size must be positive, not {limit}", argument="max_shard_size")
    return limit
