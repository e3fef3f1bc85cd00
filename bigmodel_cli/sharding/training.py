"""What ``shard`` / ``merge`` add for a training checkpoint (pure, on a planned write):
the reader's notes (what it left out, the wrappers it stripped) as the plan's warnings, and
a ``config.json`` given with ``config`` (a DCP folder often has none beside it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from bigmodel_cli.checkpoint import Checkpoint
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.json import parse_json_object
from bigmodel_cli.sharding.plan import FileCopy, WritePlan

CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class TrainingInput:
    """``include_optimizer``: write the optimizer's state too; ``config``: the model's
    ``config.json`` to put in OUT."""

    include_optimizer: bool = False
    config: Path | None = None


def checked_config(config: str | os.PathLike[str] | None) -> Path | None:
    """``config`` when it is a readable JSON object (as ``from_pretrained`` needs)."""
    if config is None:
        return None
    path = Path(config)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BigmodelError(
            f"config: cannot read ({exc.strerror})", path, argument="config"
        ) from None
    parse_json_object(raw, path, "config")
    return path


def with_training(plan: WritePlan, ckpt: Checkpoint, training: TrainingInput) -> WritePlan:
    """``plan`` with the reader's notes first among its warnings and ``config`` copied as
    OUT's ``config.json`` (replacing one found beside the source)."""
    copies = plan.copies
    config = training.config or _config_above(ckpt)
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
