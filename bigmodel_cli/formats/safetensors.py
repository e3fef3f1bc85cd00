"""The safetensors format in pure Python: read and validate a header, build one.

A file is an 8-byte little-endian header length N, N bytes of JSON, then the data
buffer. The JSON maps tensor names to ``{"dtype", "shape", "data_offsets"}`` (offsets
relative to the buffer) plus an optional ``__metadata__`` str->str map. Only the
header is ever read here; the tensor bytes stay on disk.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.base import FileTensors, Layout, TensorInfo
from bigmodel_cli.formats.files import MAX_HEADER_BYTES, open_regular
from bigmodel_cli.formats.json import parse_json_object
from bigmodel_cli.sizes import DTYPES

if TYPE_CHECKING:
    import torch

ALIGNMENT = 8


@dataclass(frozen=True)
class Header:
    """A parsed, validated safetensors header. ``tensors`` are in byte order."""

    file: Path
    header_len: int
    metadata: dict[str, str] | None
    tensors: tuple[TensorInfo, ...]

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


U64_MAX = 2**64 - 1


def _is_text(value: str) -> bool:
    """Encodable as UTF-8: JSON escapes can smuggle in lone surrogates, which cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _numel(shape: list[int], bits: int) -> int | None:
    """Element count, or None when the count or its byte size overflows 64 bits at any
    step (safetensors computes it with checked 64-bit arithmetic and refuses the file)."""
    count = 1
    for dim in shape:
        count *= dim
        if count * max(bits // 8, 1) > U64_MAX:
            return None
    return count


def _tensor_entry(name: str, entry: Any, path: Path, data_start: int) -> TensorInfo:
    if not _is_text(name):
        raise BigmodelError("tensor name is not valid UTF-8 (a lone surrogate escape)", path)
    if not isinstance(entry, dict):
        raise BigmodelError("header entry is not an object", path, name)
    extra = set(entry) - {"dtype", "shape", "data_offsets"}
    if extra or len(entry) != 3:
        raise BigmodelError(
            f"header entry needs exactly dtype, shape, data_offsets (got {sorted(entry)})",
            path,
            name,
        )
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise BigmodelError(f"unknown dtype {str(dtype)[:40]!r}", path, name)
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise BigmodelError("shape must be a list of non-negative integers", path, name)
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise BigmodelError("data_offsets must be two integers 0 <= begin <= end", path, name)
    bits = DTYPES[dtype].bits
    numel = _numel(shape, bits)
    if numel is None:
        raise BigmodelError(f"shape {shape} overflows 64 bits", path, name)
    if numel * bits % 8:
        raise BigmodelError(
            f"{numel} elements of {dtype} are not a whole number of bytes", path, name
        )
    expected = numel * bits // 8
    if offsets[1] - offsets[0] != expected:
        raise BigmodelError(
            f"shape {shape} x {dtype} is {expected} bytes but data_offsets span "
            f"{offsets[1] - offsets[0]}",
            path,
            name,
        )
    return TensorInfo(
        name, dtype, tuple(shape), path, data_start + offsets[0], data_start + offsets[1]
    )


def header_length(first: bytes, file_size: int, path: Path | str) -> int:
    """The header length N that the first 8 bytes of a ``file_size``-byte file declare,
    checked: at most :data:`MAX_HEADER_BYTES`, and ``8 + N`` inside the file."""
    if file_size < 8 or len(first) < 8:
        raise BigmodelError(f"file is {file_size} bytes, too small for a safetensors header", path)
    (n,) = struct.unpack("<Q", first[:8])
    if n > MAX_HEADER_BYTES:
        raise BigmodelError(
            f"header claims {n} bytes, more than the {MAX_HEADER_BYTES} byte limit", path
        )
    if 8 + n > file_size:
        raise BigmodelError(
            f"header length {n} runs past the end of the file ({file_size} bytes); "
            "the file is truncated or not safetensors",
            path,
        )
    return int(n)


def read_header(path: str | os.PathLike[str]) -> Header:
    """Read and validate the header of ``path``; the tensor data is not read."""
    path = Path(path)
    try:
        with os.fdopen(open_regular(path, "file"), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            n = header_length(f.read(8), size, path)
            raw = f.read(n)
    except OSError as exc:
        raise BigmodelError(f"cannot read file ({exc.strerror or exc})", path) from None
    if len(raw) != n:
        raise BigmodelError("file changed while its header was read", path)
    return parse_header(raw, path, size)


def parse_header(raw: bytes, path: Path, file_size: int) -> Header:
    """Validate the JSON header ``raw`` of a file of ``file_size`` bytes."""
    if not raw.lstrip(b" ").startswith(b"{"):
        raise BigmodelError("header does not start with '{'; not a safetensors file", path)
    obj = parse_json_object(raw, path, "header")
    metadata = obj.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict)
        and all(
            isinstance(k, str) and isinstance(v, str) and _is_text(k) and _is_text(v)
            for k, v in metadata.items()
        )
    ):
        raise BigmodelError("__metadata__ must map strings to strings", path)
    data_start = 8 + len(raw)
    tensors = sorted(
        (_tensor_entry(name, entry, path, data_start) for name, entry in obj.items()),
        key=lambda t: (t.start, t.end),
    )
    cursor = data_start
    for t in tensors:
        if t.start != cursor:
            kind = "overlaps the previous tensor" if t.start < cursor else "leaves a hole before it"
            raise BigmodelError(
                f"data_offsets {t.start - data_start}..{t.end - data_start} {kind}", path, t.name
            )
        cursor = t.end
    if cursor != file_size:
        raise BigmodelError(
            f"tensor data ends at byte {cursor} but the file has {file_size} bytes", path
        )
    return Header(path, len(raw), metadata, tuple(tensors))


@dataclass(frozen=True)
class HeaderEntry:
    """What a writer needs to know of one tensor: name, dtype code, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return DTYPES[self.dtype].nbytes(math.prod(self.shape))


def build_header(entries: Iterable[HeaderEntry], metadata: dict[str, str] | None) -> bytes:
    """The 8-byte length plus JSON header for ``entries`` laid out in the given order.

    The JSON is padded with spaces to a multiple of 8 bytes, as the safetensors library
    does, so that the data buffer starts aligned.
    """
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for e in entries:
        header[e.name] = {
            "dtype": e.dtype,
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % ALIGNMENT)
    return struct.pack("<Q", len(raw)) + raw


class SafetensorsFormat:
    """The reader protocol for ``.safetensors`` files: byte ranges, copied and mapped raw."""

    name: str = "safetensors"
    suffixes: tuple[str, ...] = (".safetensors",)
    layouts: tuple[Layout, Layout] = ("single", "sharded")
    raw: bool = True

    def read(self, path: Path) -> FileTensors:
        header = read_header(path)
        return FileTensors(header.tensors, header.metadata)

    def open(self, path: Path) -> Mapping[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(path)  # mapped: pages are read when a tensor is used


SAFETENSORS = SafetensorsFormat()
