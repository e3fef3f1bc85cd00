"""A ``torch.distributed.checkpoint`` folder's ``.metadata``, read without torch's unpickler.

``.metadata`` is a pickle of torch's ``Metadata`` dataclass: for every state-dict entry its
global shape, dtype and chunks (offsets and sizes in the tensor), and for every chunk a
``_StorageInfo`` (the ``.distcp`` file, the offset and length of its record there). We read
it with an unpickler that knows exactly the classes DCP writes and builds plain stand-ins
for them (no torch import, no code from the file: any other class is refused), then check
it against the folder (every file there, every record inside its file, every tensor's
chunks covering it once) before anything else happens.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.files import MAX_DCP_METADATA_BYTES, read_small_file
from bigmodel_cli.formats.index import safe_member
from bigmodel_cli.sizes import DTYPES, parse_dtype

METADATA_NAME = ".metadata"


@dataclass(frozen=True)
class Chunk:
    """One stored piece of a tensor: where it sits in the tensor, and its record's bytes."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: Path
    start: int  # the record (a ``torch.save`` of the piece) in ``file``
    length: int

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)


@dataclass(frozen=True)
class Entry:
    """One state-dict entry: a tensor (``dtype``, ``shape``, ``chunks``) or pickled bytes."""

    key: str  # DCP's flattened key (``model.model.embed_tokens.weight``)
    path: tuple[str, ...]  # the nested keys it was flattened from (``("model", "model.embed...")``)
    dtype: str | None  # safetensors code; None for a bytes entry
    shape: tuple[int, ...]
    chunks: tuple[Chunk, ...]

    @property
    def is_tensor(self) -> bool:
        return self.dtype is not None


# --- the unpickler: DCP's classes as plain records ------------------------------------


class _Record:
    """A DCP dataclass instance: its fields as attributes, whatever way it was pickled."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict, slots) state
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["state"] = state  # TensorProperties pickles a tuple

    def field(self, name: str, default: Any = None) -> Any:
        return self.__dict__.get(name, default)


def _record_class(name: str) -> type[_Record]:
    return type(name, (_Record,), {})


_DCP = "torch.distributed.checkpoint."
_CLASSES: dict[tuple[str, str], Any] = {
    (_DCP + "metadata", name): _record_class(name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
    )
} | {(_DCP + "filesystem", n): _record_class(n) for n in ("_StorageInfo", "_StoragePrefix")}
_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch", "Size"): lambda dims=(): tuple(dims),
    ("torch.serialization", "_get_layout"): lambda name: str(name),
    (_DCP + "metadata", "_MEM_FORMAT_ENCODING"): lambda value: int(value),
    ("collections", "OrderedDict"): lambda items=(): dict(items),
    ("pathlib", "PosixPath"): lambda *parts: "/".join(map(str, parts)),
    ("pathlib", "WindowsPath"): lambda *parts: "\\".join(map(str, parts)),
    ("pathlib", "PurePosixPath"): lambda *parts: "/".join(map(str, parts)),
}


class Refused(pickle.UnpicklingError):
    """The pickle names a class or function the reader does not allow."""


class _DType(str):
    """``torch.float32`` as it appears in the pickle: its name."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _CLASSES:
            return _CLASSES[module, name]
        if (module, name) in _FUNCTIONS:
            return _FUNCTIONS[module, name]
        if module == "torch" and name in {d.name for d in DTYPES.values()}:
            return _DType(name)
        raise Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise Refused("a persistent id (not DCP metadata)")


def unpickle_metadata(path: Path) -> Any:
    """The ``Metadata`` record of ``path``; anything but DCP's classes is refused."""
    data = read_small_file(path, "DCP metadata", MAX_DCP_METADATA_BYTES)
    try:
        meta = _MetadataUnpickler(io.BytesIO(data)).load()
    except Refused as exc:
        raise BigmodelError(
            f"refused to unpickle: {exc} is not a class torch.distributed.checkpoint writes",
            path,
        ) from None
    except Exception as exc:  # a truncated or corrupt pickle raises anything
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise BigmodelError(f"not readable DCP metadata ({reason})", path) from None
    if type(meta).__name__ != "Metadata" or not isinstance(meta, _Record):
        raise BigmodelError("not DCP metadata (no Metadata record)", path)
    return meta


# --- the records, checked against the folder ------------------------------------------


def _ints(value: Any, what: str, path: Path, key: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise BigmodelError(f"{what} is not a list of sizes", path, key)
    return value


def _storage(meta: Any, path: Path) -> dict[tuple[str, tuple[int, ...]], Any]:
    storage = meta.field("storage_data")
    if not isinstance(storage, dict):
        raise BigmodelError("has no storage records (not written by DCP's file writer?)", path)
    found: dict[tuple[str, tuple[int, ...]], Any] = {}
    for index, info in storage.items():
        if not isinstance(index, _Record) or not isinstance(info, _Record):
            raise BigmodelError("storage records are not DCP's", path)
        offsets = index.field("offset")
        found[(str(index.field("fqn")), tuple(offsets) if offsets is not None else ())] = info
    return found


def read_entries(path: Path) -> tuple[Entry, ...]:
    """Every state-dict entry of the DCP ``.metadata`` at ``path``, checked: each tensor's
    chunks cover it exactly once, each chunk's record lies inside an existing file of the
    folder. Reads the metadata and the files' sizes, never a tensor byte."""
    meta = unpickle_metadata(path)
    items = meta.field("state_dict_metadata")
    if not isinstance(items, dict):
        raise BigmodelError("not DCP metadata (no state_dict_metadata)", path)
    if meta.field("storage_data") is None and items:
        raise BigmodelError("has no storage records (not written by DCP's file writer?)", path)
    storage = _storage(meta, path)
    planner = meta.field("planner_data")
    paths = planner if isinstance(planner, dict) else {}
    sizes: dict[str, int] = {}
    entries = []
    for key, item in items.items():
        if not isinstance(key, str) or not isinstance(item, _Record):
            raise BigmodelError("a state-dict entry is not DCP's", path)
        nested = paths.get(key)
        keys = tuple(str(k) for k in nested) if isinstance(nested, tuple) and nested else (key,)
        if type(item).__name__ == "BytesStorageMetadata":
            entries.append(Entry(key, keys, None, (), ()))
            continue
        entries.append(_tensor_entry(path, key, keys, item, storage, sizes))
    return tuple(entries)


def _tensor_entry(
    path: Path,
    key: str,
    keys: tuple[str, ...],
    item: Any,
    storage: dict[tuple[str, tuple[int, ...]], Any],
    sizes: dict[str, int],
) -> Entry:
    shape = _ints(item.field("size"), "its size", path, key)
    properties = item.field("properties")
    state = properties.field("state") if isinstance(properties, _Record) else None
    dtype_name = state[0] if isinstance(state, tuple) and state else properties.field("dtype")
    try:
        dtype = parse_dtype(str(dtype_name)).code
    except BigmodelError:
        raise BigmodelError(
            f"dtype {dtype_name} has no safetensors equivalent", path, key
        ) from None
    chunks = []
    for chunk in item.field("chunks") or ():
        offsets = _ints(chunk.field("offsets"), "a chunk's offsets", path, key)
        extent = _ints(chunk.field("sizes"), "a chunk's sizes", path, key)
        if len(offsets) != len(shape) or len(extent) != len(shape):
            raise BigmodelError(
                f"a chunk has {len(extent)} dimensions, the tensor {len(shape)}", path, key
            )
        if any(o + s > d for o, s, d in zip(offsets, extent, shape, strict=True)):
            raise BigmodelError(
                f"chunk at {list(offsets)} reaches past the tensor's size {list(shape)}", path, key
            )
        info = storage.get((key, offsets))
        if info is None:
            raise BigmodelError(f"chunk at {list(offsets)} has no storage record", path, key)
        chunks.append(_located(path, key, offsets, extent, info, sizes))
    check_cover(path, key, shape, chunks)
    return Entry(key, keys, dtype, shape, tuple(chunks))


def _located(
    path: Path, key: str, offsets: tuple[int, ...], extent: tuple[int, ...], info: Any,
    sizes: dict[str, int],
) -> Chunk:  # fmt: skip
    name, start, length = info.field("relative_path"), info.field("offset"), info.field("length")
    if not isinstance(name, str) or not isinstance(start, int) or not isinstance(length, int):
        raise BigmodelError(f"chunk at {list(offsets)} has a malformed storage record", path, key)
    if info.field("transform_descriptors"):
        kinds = ", ".join(map(str, info.field("transform_descriptors")))
        raise BigmodelError(
            f"is stored transformed ({kinds}); only plain records can be read", path, key
        )
    file = safe_member(path.parent, name, path)
    if name not in sizes:
        try:
            sizes[name] = os.stat(file).st_size
        except OSError as exc:
            raise BigmodelError(
                f"names {name}, which cannot be read ({exc.strerror})", path, key
            ) from None
    if start < 0 or length <= 0 or start + length > sizes[name]:
        raise BigmodelError(
            f"chunk at {list(offsets)}: bytes {start}..{start + length} are past the end of "
            f"{name} ({sizes[name]} bytes)",
            path,
            key,
        )
    return Chunk(offsets, extent, file, start, length)


def check_cover(path: Path, key: str, shape: tuple[int, ...], chunks: Iterable[Chunk]) -> None:
    """Refuse chunks that overlap, or leave part of the tensor uncovered."""
    pieces = sorted((c for c in chunks if c.numel), key=lambda c: c.offsets)
    covered = sum(c.numel for c in pieces)
    for i, a in enumerate(pieces):
        for b in pieces[i + 1 :]:
            if _before(a, b):
                break
            if all(
                ao < bo + bs and bo < ao + as_
                for ao, as_, bo, bs in zip(a.offsets, a.sizes, b.offsets, b.sizes, strict=True)
            ):
                raise BigmodelError(
                    f"chunks at {list(a.offsets)} and {list(b.offsets)} overlap", path, key
                )
    if covered != math.prod(shape):
        raise BigmodelError(
            f"its chunks hold {covered} of its {math.prod(shape)} elements (a chunk is missing)",
            path,
            key,
        )


def _before(a: Chunk, b: Chunk) -> bool:
    """``b`` (sorted after ``a``) starts past ``a``'s end on the first dimension: neither it
    nor any later chunk can overlap ``a``."""
    return bool(a.offsets) and b.offsets[0] >= a.offsets[0] + a.sizes[0]
