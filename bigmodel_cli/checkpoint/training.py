"""Training checkpoints as a SOURCE: a ``torch.distributed.checkpoint`` folder (its
``.metadata`` beside ``*.distcp`` files), read from its metadata alone into one component of
the model's tensors (with ``include_optimizer``, the optimizer's too); a DeepSpeed ZeRO
folder (``latest`` or ``global_stepN/``), its fp32 weights from the optimizer partitions."""

from __future__ import annotations

from pathlib import Path

from bigmodel_cli.checkpoint.checkpoint import Checkpoint, Component
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.base import TensorInfo
from bigmodel_cli.formats.dcp import read_checkpoint
from bigmodel_cli.formats.dcp_metadata import METADATA_NAME
from bigmodel_cli.formats.zero import MODEL_STATES, ZERO, read_layout, zero_folder


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


def read_zero(folder: Path) -> Checkpoint:
    """A ZeRO ``global_stepN`` folder as a checkpoint of one component, ``model``."""
    layout, model_file = read_layout(folder)
    found = ZERO.read(model_file)
    others = sorted(
        p for p in folder.iterdir() if p.name.endswith(MODEL_STATES) and p != model_file
    )
    files = (model_file, *others, *layout.optim_files)
    component = Component("model", folder, "zero", "model", files, found.tensors, {"format": "pt"})
    notes = (f"ZeRO stage {layout.stage} over {layout.world} ranks: the fp32 weights, "
             "rebuilt from the optimizer's partitions",)  # fmt: skip
    return Checkpoint(folder, folder, "model", (component,), notes=notes)


def read_training_path(path: Path, include_optimizer: bool) -> Checkpoint | None:
    """The training checkpoint at ``path``, or None when it is none."""
    metadata = training_metadata(path)
    if metadata is not None:
        return read_training(metadata, include_optimizer)
    folder = zero_folder(path)
    if folder is not None and include_optimizer:
        raise BigmodelError(
            "include_optimizer: a ZeRO folder's optimizer state is not written (its fp32 "
            "weights are)",
            folder,
            argument="include_optimizer",
        )
    return read_zero(folder) if folder is not None else None
