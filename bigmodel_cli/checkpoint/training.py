"""Training checkpoints as a SOURCE: a ``torch.distributed.checkpoint`` folder (its
``.metadata`` beside ``*.distcp`` files), read from its metadata alone into one component of
the model's tensors (with ``include_optimizer``, the optimizer's too)."""

from __future__ import annotations

from pathlib import Path

from bigmodel_cli.checkpoint.checkpoint import Checkpoint, Component
from bigmodel_cli.formats.base import TensorInfo
from bigmodel_cli.formats.dcp import read_checkpoint
from bigmodel_cli.formats.dcp_metadata import METADATA_NAME


def training_metadata(path: Path) -> Path | None:
    """The DCP metadata file that ``path`` names (the folder or the file itself), or None."""
    if path.name == METADATA_NAME and path.is_file():
        return path
    candidate = path / METADATA_NAME
    return candidate if path.is_dir() and candidate.is_file() else None


def read_training(metadata: Path, include_optimizer: bool = False) -> Checkpoint:
    """The DCP folder of ``metadata`` as a checkpoint of one component, ``model``."""
    found = read_checkpoint(metadata, include_optimizer)
    tensors = tuple(
        TensorInfo(name, e.dtype, e.shape, metadata, -1, -1)
        for name, e in found.entries.items()
        if e.dtype is not None
    )
    folder = metadata.parent
    component = Component(
        "model", folder, "dcp", "model", (metadata, *found.files), tensors, {"format": "pt"}
    )
    return Checkpoint(folder, folder, "model", (component,), notes=found.notes)
