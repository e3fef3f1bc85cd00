"""The reader protocol every checkpoint file format implements, and the tensor record.

A format knows its file suffixes, reads a file's tensor records (names, dtypes, shapes,
and byte ranges where the format has them) without reading tensor data, and opens a
file's tensors with torch (on cpu, memory-mapped where it can). Discovery
(:mod:`bigmodel_cli.checkpoint`), ``shard``/``merge`` and ``run`` only talk to this
protocol, so a new input format is one new module here and one entry in
:data:`bigmodel_cli.formats.FORMATS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from bigmodel_cli.sizes import DTYPES

if TYPE_CHECKING:
    import torch

Layout = Literal["single", "sharded", "pickle", "dcp", "zero"]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a checkpoint: where its bytes are and what they mean.

    ``start``/``end`` are absolute byte offsets in ``file`` (``-1`` for pickle files,
    whose tensors have no byte range that can be copied raw).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return DTYPES[self.dtype].nbytes(self.numel)


class TensorSum:
    """A record holding ``tensors`` (anything with ``nbytes``): their total bytes."""

    tensors: tuple[TensorInfo, ...] | tuple[Any, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True)
class FileTensors:
    """What a format reads from one file: its tensors in byte order and its metadata."""

    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str] | None


class Format(Protocol):
    """One checkpoint file format."""

    name: str
    suffixes: tuple[str, ...]  # the first also names index files: ``X<suffix>.index.json``
    layouts: tuple[Layout, Layout]  # a component's layout with one file, and with several
    raw: bool  # tensors are byte ranges of the file, copied and mapped as they are

    def read(self, path: Path) -> FileTensors:
        """The tensor records of ``path`` (no tensor data read)."""
        ...

    def open(self, path: Path) -> Mapping[str, torch.Tensor]:
        """The tensors of ``path`` on cpu, memory-mapped where the format allows."""
        ...
