"""Where a ``torch.save``d tensor's bytes are, without loading it.

DCP's file writer stores each chunk as one ``torch.save`` record inside a ``.distcp`` file: a
zip archive (every member stored uncompressed) holding ``data.pkl`` (a small pickle that
rebuilds the tensor from a storage, an offset, a shape and strides) and ``data/<key>`` (the
storage's raw bytes). :func:`locate` reads the archive's directory and the pickle (with an
unpickler that knows only what ``torch.save`` writes for a dense tensor) and returns where the
raw bytes are in the file, so that they can be copied by the kernel like a safetensors range.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.sizes import DTYPES

# ``torch.<Name>Storage`` -> safetensors code (torch.save names typed storages so)
STORAGE_DTYPES = {
    "FloatStorage": "F32",
    "DoubleStorage": "F64",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "Float8_e4m3fnStorage": "F8_E4M3",
    "Float8_e5m2Storage": "F8_E5M2",
}
MAX_PICKLE = 1 << 20


@dataclass(frozen=True)
class RawTensor:
    """A stored tensor: its storage's bytes at ``data`` in the file, and the view on them."""

    dtype: str
    data: int  # absolute offset of the storage's first byte in the file
    storage_bytes: int
    offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def width(self) -> int:
        return DTYPES[self.dtype].bits // 8

    @property
    def contiguous(self) -> bool:
        """Row-major with no gaps: its bytes are one range of the storage."""
        expected = 1
        for size, stride in reversed(list(zip(self.shape, self.stride, strict=True))):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    @property
    def start(self) -> int:
        return self.data + self.offset * self.width

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.width


class _Window(io.RawIOBase):
    """``length`` bytes of an open file from ``base``, as a seekable file of their own."""

    def __init__(self, fd: int, base: int, length: int) -> None:
        self.fd, self.base, self.length, self.pos = fd, base, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = {0: pos, 1: self.pos + pos, 2: self.length + pos}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self.length - self.pos))
        got = os.preadv(self.fd, [view[:count]], self.base + self.pos) if count else 0
        self.pos += got
        return got


class _Storage:
    def __init__(self, name: str) -> None:
        self.name = name


class _RecordUnpickler(pickle.Unpickler):
    """``torch._utils._rebuild_tensor_v2`` over one persistent storage, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, *_: data
        if (module, name) == ("collections", "OrderedDict"):
            return lambda items=(): dict(items)
        if module == "torch" and name.endswith("Storage"):
            return _Storage(name)
        raise pickle.UnpicklingError(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError("a storage this reader does not know")
        kind, key, numel = pid[1], pid[2], pid[4]
        return (kind.name if isinstance(kind, _Storage) else "", str(key), int(numel))


def _rebuild(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> Any:
    return ("tensor", storage, int(offset), tuple(size), tuple(stride))


def locate(path: Path, fd: int, start: int, length: int, where: str) -> RawTensor:
    """The tensor ``torch.save`` wrote at ``start`` .. ``start + length`` of ``path``."""
    try:
        return _locate(fd, start, length)
    except (zipfile.BadZipFile, pickle.UnpicklingError, ValueError, KeyError, TypeError,
            EOFError, struct.error, IndexError) as exc:  # fmt: skip
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise BigmodelError(
            f"{where}: bytes {start}..{start + length} are not a torch.save record of a dense "
            f"tensor ({reason})",
            path,
        ) from None


def _locate(fd: int, start: int, length: int) -> RawTensor:
    window = _Window(fd, start, length)
    with zipfile.ZipFile(io.BufferedReader(window, 1 << 16)) as archive:
        members = {info.filename.split("/", 1)[-1]: info for info in archive.infolist()}
        order = archive.read(members["byteorder"]) if "byteorder" in members else b"little"
        if order != b"little":
            raise ValueError(f"byte order {order.decode(errors='replace')}")
        if members["data.pkl"].file_size > MAX_PICKLE:
            raise ValueError("data.pkl is too large")
        found = _RecordUnpickler(io.BytesIO(archive.read(members["data.pkl"]))).load()
        if not (isinstance(found, tuple) and found and found[0] == "tensor"):
            raise ValueError("it holds something other than one tensor")
        _, (kind, key, numel), offset, shape, stride = found
        info = members[f"data/{key}"]
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise ValueError("its storage is compressed")
        data = _data_offset(fd, start, info)
    width = info.file_size // numel if numel else 0
    dtype = STORAGE_DTYPES.get(kind)
    if dtype is None or (numel and width * numel != info.file_size):
        raise ValueError(f"storage {kind or '?'} of {numel} elements in {info.file_size} bytes")
    raw = RawTensor(dtype, start + data, info.file_size, offset, shape, stride)
    reach = offset + 1 + sum((s - 1) * st for s, st in zip(shape, stride, strict=True))
    if math.prod(shape) and (offset < 0 or min(stride, default=0) < 0 or reach > numel):
        raise ValueError("its view reaches outside its storage")
    if data + info.file_size > (length if length else 0):
        raise ValueError("its storage reaches past the record")
    return raw


def _data_offset(fd: int, start: int, info: zipfile.ZipInfo) -> int:
    """Offset of a stored member's bytes from the archive's start (past its local header)."""
    header = os.pread(fd, 30, start + info.header_offset)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ValueError("a zip member has no local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len
