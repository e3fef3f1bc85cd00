"""``torch.distributed.checkpoint`` folders (FSDP2, torchtitan, accelerate's sharded FSDP
state, Megatron's ``torch_dist``): a ``.metadata`` file and ``*.distcp`` files.

:meth:`DcpFormat.read` lists the model's tensors from ``.metadata`` alone (global shape,
dtype; :mod:`.dcp_metadata` checks every chunk against the folder). Their bytes are not one
range of one file: each tensor is the union of its chunks, each chunk a ``torch.save`` record
in some ``.distcp`` file. :meth:`DcpFormat.open` gives a mapping whose :meth:`~DcpTensors.spans`
are the byte ranges that, copied one after the other, are the tensor in row-major order
(when every chunk is a contiguous stretch of it, as FSDP's row shards and whole tensors are),
and whose items are the tensors assembled in memory (any other layout).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.base import FileTensors, Layout, TensorInfo
from bigmodel_cli.formats.dcp_metadata import METADATA_NAME, Chunk, Entry, read_entries
from bigmodel_cli.formats.state_names import Stored, select
from bigmodel_cli.formats.torch_record import RawTensor, locate
from bigmodel_cli.sizes import torch_dtype

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Span:
    """``end - start`` bytes of ``file`` that are a stretch of a tensor."""

    file: Path
    start: int
    end: int


@dataclass(frozen=True)
class DcpCheckpoint:
    """What the reader chose from a DCP folder: tensors by output name, and notes."""

    entries: dict[str, Entry]
    notes: tuple[str, ...]
    files: tuple[Path, ...]  # the .distcp files the chosen tensors live in


def read_checkpoint(path: Path, include_optimizer: bool = False) -> DcpCheckpoint:
    """The model's tensors of the DCP metadata at ``path`` (and the optimizer's with
    ``include_optimizer``), named as the model names them."""
    entries = read_entries(path)
    chosen = select([Stored(e.path, e.is_tensor) for e in entries], include_optimizer, str(path))
    named = {name: entries[i] for i, name in chosen.chosen}
    files = sorted({c.file for e in named.values() for c in e.chunks}, key=lambda p: p.name)
    return DcpCheckpoint(named, chosen.notes, tuple(files))


def row_offset(shape: tuple[int, ...], offsets: tuple[int, ...]) -> int:
    """Row-major element index of ``offsets`` in a tensor of ``shape``."""
    index = 0
    for size, offset in zip(shape, offsets, strict=True):
        index = index * size + offset
    return index


def is_stretch(shape: tuple[int, ...], chunk: Chunk) -> bool:
    """Is ``chunk`` one contiguous stretch of the row-major tensor? (Leading dimensions of
    size 1, then one partial dimension, then full ones: FSDP's row shards, whole tensors.)"""
    dims = list(zip(chunk.sizes, shape, strict=True))
    first = next((i for i, (size, _) in enumerate(dims) if size != 1), len(dims))
    return all(size == full for size, full in dims[first + 1 :])


class DcpTensors(Mapping[str, "torch.Tensor"]):
    """The chosen tensors of one DCP folder, located on first use; ``close()`` the files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.checkpoint = read_checkpoint(path, include_optimizer=True)
        self._fds: dict[Path, int] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.assemble(self.checkpoint.entries[name], name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.checkpoint.entries)

    def __len__(self) -> int:
        return len(self.checkpoint.entries)

    def _fd(self, file: Path) -> int:
        if file not in self._fds:
            try:
                self._fds[file] = os.open(file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as exc:
                raise BigmodelError(f"cannot open ({exc.strerror})", file) from None
        return self._fds[file]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def record(self, entry: Entry, chunk: Chunk, name: str) -> RawTensor:
        """The stored piece ``chunk`` of ``entry``, checked against the metadata."""
        where = f"tensor {name!r} chunk at {list(chunk.offsets)}"
        raw = locate(chunk.file, self._fd(chunk.file), chunk.start, chunk.length, where)
        if raw.dtype != entry.dtype or raw.shape != chunk.sizes:
            raise BigmodelError(
                f"{where}: holds {raw.dtype} {list(raw.shape)}, the metadata says "
                f"{entry.dtype} {list(chunk.sizes)}",
                chunk.file,
            )
        return raw

    def spans(self, name: str) -> tuple[Span, ...] | None:
        """The byte ranges that, one after the other, are tensor ``name``; None when its
        chunks are not contiguous stretches of it (then read it whole with ``self[name]``)."""
        entry = self.checkpoint.entries[name]
        if not all(is_stretch(entry.shape, c) for c in entry.chunks):
            return None
        ordered = sorted(
            (c for c in entry.chunks if c.numel), key=lambda c: row_offset(entry.shape, c.offsets)
        )
        spans = []
        for chunk in ordered:
            raw = self.record(entry, chunk, name)
            if not raw.contiguous:
                return None
            spans.append(Span(chunk.file, raw.start, raw.start + raw.nbytes))
        return tuple(spans)

    def assemble(self, entry: Entry, name: str) -> torch.Tensor:
        """The whole tensor in memory, each chunk read into its place."""
        import torch

        assert entry.dtype is not None
        dtype = torch_dtype(entry.dtype)
        out = torch.empty(entry.shape, dtype=dtype)
        for chunk in (c for c in entry.chunks if c.numel):
            raw = self.record(entry, chunk, name)
            buffer = bytearray(raw.storage_bytes)
            got = os.preadv(self._fd(chunk.file), [buffer], raw.data)
            if got != raw.storage_bytes:
                raise BigmodelError("file ended early (changed while reading?)", chunk.file, name)
            storage = (
                torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
            )
            piece = storage.as_strided(raw.shape, raw.stride, raw.offset)
            target = out
            for dim, (offset, size) in enumerate(zip(chunk.offsets, chunk.sizes, strict=True)):
                target = target.narrow(dim, offset, size)
            target.copy_(piece)
        return out


class DcpFormat:
    """The reader protocol for DCP folders, named by their ``.metadata`` file."""

    name: str = "dcp"
    suffixes: tuple[str, ...] = (METADATA_NAME,)
    layouts: tuple[Layout, Layout] = ("dcp", "dcp")
    raw: bool = False

    def read(self, path: Path, include_optimizer: bool = False) -> FileTensors:
        found = read_checkpoint(path, include_optimizer)
        tensors = tuple(
            TensorInfo(name, e.dtype, e.shape, path, -1, -1)
            for name, e in found.entries.items()
            if e.dtype is not None
        )
        return FileTensors(tensors, {"format": "pt"})

    def open(self, path: Path) -> DcpTensors:
        return DcpTensors(path)


DCP = DcpFormat()
