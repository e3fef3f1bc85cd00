"""What ``shard`` / ``merge`` add for a training checkpoint (pure, on a planned write):
the reader's notes (what it left out, the wrappers it stripped) as the plan's warnings, and
the ``config.json`` given with ``config`` (a DCP folder often has none beside it)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bigmodel_cli.checkpoint import Checkpoint
from bigmodel_cli.sharding.plan import FileCopy, WritePlan
from bigmodel_cli.sharding.reading import SourceReading

CONFIG_NAME = "config.json"


def with_training(plan: WritePlan, ckpt: Checkpoint, reading: SourceReading) -> WritePlan:
    """``plan`` with the reader's notes first among its warnings and ``config`` copied as
    OUT's ``config.json`` (replacing one found beside the source)."""
    copies = plan.copies
    config = reading.config or _config_above(ckpt)
    if config is not None:
        folder = plan.components[0].folder if len(plan.components) == 1 else ""
        target = f"{folder}/{CONFIG_NAME}" if folder else CONFIG_NAME
        copies = (*(c for c in copies if c.target != target), FileCopy(config, target))
    return replace(plan, copies=copies, warnings=(*ckpt.notes, *plan.warnings))


def _config_above(ckpt: Checkpoint) -> Path | None:
    """A training checkpoint's ``config.json`` one folder up (DeepSpeed's ``global_stepN``
    sits in the folder the config was saved to), when none is beside it."""
    training = ckpt.components and ckpt.components[0].layout in ("dcp", "zero")
    above = ckpt.root.parent / CONFIG_NAME
    if not training or (ckpt.root / CONFIG_NAME).exists() or not above.is_file():
        return None
    return above
