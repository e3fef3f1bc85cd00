"""Checkpoint file formats: safetensors, Hugging Face index JSON, legacy pickle, and
torch.distributed.checkpoint folders (named by their ``.metadata``), DeepSpeed ZeRO
folders (by their model-states file).

Each weights format implements :class:`~bigmodel_cli.formats.base.Format`;
:data:`FORMATS` lists them in order of preference (safetensors over pickle when a
folder holds both).
"""

from __future__ import annotations

from pathlib import Path

from bigmodel_cli.formats.base import FileTensors, Format, Layout, TensorInfo
from bigmodel_cli.formats.dcp import DCP
from bigmodel_cli.formats.pickle import PICKLE
from bigmodel_cli.formats.safetensors import SAFETENSORS
from bigmodel_cli.formats.zero import ZERO

FORMATS: tuple[Format, ...] = (SAFETENSORS, ZERO, PICKLE, DCP)  # ZeRO's names end in .pt

__all__ = ["FORMATS", "FileTensors", "Format", "Layout", "TensorInfo", "format_of"]


def format_of(path: Path | str) -> Format | None:
    """The format of a weights file by its suffix, or None."""
    name = str(path)
    return next((f for f in FORMATS if name.endswith(f.suffixes)), None)
