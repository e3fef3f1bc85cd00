"""Hypothesis strategies that turn valid checkpoints into hostile ones.

Each strategy draws a *case*: a function that writes a (possibly broken) checkpoint into a
folder and returns the SOURCE path to hand to a command.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

Case = Callable[[Path], Path]

GOOD_TENSORS: dict[str, dict[str, Any]] = {
    "embed.weight": {"dtype": "F32", "shape": [4, 2]},
    "blocks.0.w": {"dtype": "F16", "shape": [3]},
    "blocks.1.flag": {"dtype": "BOOL", "shape": []},
    "head.b": {"dtype": "BF16", "shape": [0]},
}
WIDTH = {"F32": 4, "F16": 2, "BOOL": 1, "BF16": 2}


def header_for(tensors: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """A valid header for ``tensors`` (name -> dtype and shape), and its data size."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, entry in tensors.items():
        n = WIDTH[entry["dtype"]]
        for d in entry["shape"]:
            n *= d
        header[name] = dict(entry, data_offsets=[offset, offset + n])
        offset += n
    return header, offset


def good_header() -> tuple[dict[str, Any], int]:
    return header_for(GOOD_TENSORS)


def pack(raw: bytes, data: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


odd_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63, 10**309, -(10**309), 10**4000]),  # past int64, past a float
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.lists(st.integers(-3, 10), max_size=3),
)
odd_values = st.recursive(odd_numbers, lambda inner: st.lists(inner, max_size=3), max_leaves=6)


@st.composite
def header_edits(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    """A valid header with one to three fields replaced by odd values."""
    header, size = good_header()
    names = [n for n in header if n != "__metadata__"]
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from([*names, "__metadata__"]))
        if name == "__metadata__":
            header[name] = draw(
                st.one_of(odd_values, st.dictionaries(st.text(max_size=3), odd_values))
            )
            continue
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra", "whole"]))
        value = draw(st.one_of(odd_values, st.sampled_from(["F32", "I64", "F8_E4M3", "F4", "X"])))
        if field == "whole":
            header[name] = value
        else:
            base = header[name] if isinstance(header[name], dict) else {}
            header[name] = dict(base, **{field: value})
    return header, size


RAW_JSON = [
    b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {}}',
    b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}',
    b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, Infinity]}}',
    b"{" + b'"x":[' * 50_000 + b"]" * 50_000 + b"}",
    b'{"\xff\xfe": 1}',
    b'{"\\ud800": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
    b'{"a": {"dtype": "F32", "shape": [4611686018427387904, 4611686018427387904, 0], '
    b'"data_offsets": [0, 0]}}',
    b"{\x00}",
    b"   ",
    b"[]",
    b'{"a": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}}',
    b'{"a": {"dtype": "F32", "shape": [99999999999999999999999], "data_offsets": [0, 4]}}',
]


@st.composite
def safetensors_cases(draw: st.DrawFn) -> Case:
    """A single .safetensors file, broken in one of many ways (or left valid)."""
    kind = draw(st.sampled_from(["valid", "edit", "raw", "length", "bytes", "truncate", "extend"]))
    header, size = good_header()
    data = bytes(size)
    raw = json.dumps(header).encode()
    length: int | None = None
    if kind == "edit":
        edited, size = draw(header_edits())
        raw = json.dumps(edited).encode()
    elif kind == "raw":
        raw = draw(st.sampled_from(RAW_JSON))
    elif kind == "length":
        length = draw(
            st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 90_000_000, 2**63]))
        )
    elif kind == "bytes":
        mutable = bytearray(raw)
        for pos, value in draw(
            st.lists(st.tuples(st.integers(0), st.integers(0, 255)), min_size=1, max_size=5)
        ):
            mutable[pos % len(mutable)] = value
        raw = bytes(mutable)
    blob = pack(raw, data, length)
    if kind == "truncate":
        blob = blob[: draw(st.integers(0, len(blob) - 1))]
    elif kind == "extend":
        blob += draw(st.binary(min_size=1, max_size=16))

    def write(folder: Path) -> Path:
        path = folder / "model.safetensors"
        path.write_bytes(blob)
        return path

    return write


# Cases every command must refuse (exit 2), whatever else is drawn.
MUST_FAIL = {
    "dotdot",
    "absolute",
    "subdir",
    "symlink",
    "missing_shard",
    "extra_tensor",
    "missing_tensor",
    "not_json",
    "weight_map_type",
    "duplicate_tensor",
}


@st.composite
def sharded_cases(draw: st.DrawFn) -> Case:
    """A two-shard folder with an index, the index or the shards broken."""
    header, size = good_header()
    names = [n for n in header if n != "__metadata__"]
    split = {
        n: ("model-00001-of-00002.safetensors" if i < 2 else "model-00002-of-00002.safetensors")
        for i, n in enumerate(names)
    }
    kind = draw(st.sampled_from(["valid", "total_size", *sorted(MUST_FAIL)]))
    total = draw(st.one_of(st.just(None), odd_values)) if kind == "total_size" else None
    odd_map = draw(odd_values) if kind == "weight_map_type" else None

    def write(folder: Path) -> Path:
        files: dict[str, dict[str, Any]] = {}
        for name in names:
            files.setdefault(split[name], {})[name] = GOOD_TENSORS[name]
        if kind == "duplicate_tensor":
            files["model-00002-of-00002.safetensors"]["embed.weight"] = GOOD_TENSORS["embed.weight"]
        nbytes = 0
        for fname, tensors in files.items():
            h, offset = header_for(tensors)
            nbytes += offset
            (folder / fname).write_bytes(pack(json.dumps(h).encode(), bytes(offset)))
        weight_map: Any = dict(split)
        index: dict[str, Any] = {"metadata": {"total_size": nbytes}, "weight_map": weight_map}
        outside = folder.parent / f"outside-{folder.name}.safetensors"
        if kind == "dotdot":
            weight_map["head.b"] = "../model-00002-of-00002.safetensors"
        elif kind == "absolute":
            weight_map["head.b"] = str(folder / "model-00002-of-00002.safetensors")
        elif kind == "subdir":
            weight_map["head.b"] = "sub/model-00002-of-00002.safetensors"
        elif kind == "symlink":
            (folder / "model-00002-of-00002.safetensors").rename(outside)
            (folder / "model-00002-of-00002.safetensors").symlink_to(outside)
        elif kind == "missing_shard":
            (folder / "model-00002-of-00002.safetensors").unlink()
        elif kind == "extra_tensor":
            weight_map["ghost"] = "model-00001-of-00002.safetensors"
        elif kind == "missing_tensor":
            del weight_map["embed.weight"]
        elif kind == "total_size":
            index["metadata"]["total_size"] = total
        elif kind == "weight_map_type":
            index["weight_map"] = odd_map
        text = json.dumps(index)
        if kind == "not_json":
            text = text[: len(text) // 2]
        (folder / "model.safetensors.index.json").write_text(text)
        return folder

    write.must_fail = kind in MUST_FAIL  # type: ignore[attr-defined]
    return write


# -- whole JSON documents: plans, kept traces, Hub listings ---------------------------------


def _slots(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document (dict keys and list indexes), depth first."""
    found = [path] if path else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            found += _slots(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += _slots(v, (*path, i))
    return found


@st.composite
def document_edits(draw: st.DrawFn, doc: Any) -> Any:
    """``doc`` (a JSON document) with one to four places replaced by odd values, deleted,
    or wrapped in a list; the top level may be replaced too."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 4))):
        slots = _slots(doc)
        if not slots or not isinstance(doc, dict | list):
            return draw(odd_values)
        path = draw(st.sampled_from(slots))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        op = draw(st.sampled_from(["replace", "replace", "delete", "wrap", "huge"]))
        if op == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif op == "wrap":
            parent[path[-1]] = [parent[path[-1]]]
        elif op == "huge":
            parent[path[-1]] = draw(st.sampled_from([2**64, 10**400 // 10**350, -1, 1e300]))
        else:
            parent[path[-1]] = draw(
                st.one_of(odd_values, st.dictionaries(st.text(max_size=4), odd_values, max_size=3))
            )
    return doc


@st.composite
def json_file_bytes(draw: st.DrawFn, doc: Any) -> bytes:
    """The bytes of a JSON file made from ``doc``: edited, raw-broken, or left valid."""
    kind = draw(st.sampled_from(["valid", "edit", "edit", "raw", "bytes", "truncate", "nonfinite"]))
    if kind == "raw":
        return draw(st.sampled_from(RAW_JSON))
    text = json.dumps(draw(document_edits(doc)) if kind != "valid" else doc)
    raw = text.encode()
    if kind == "bytes" and raw:
        mutable = bytearray(raw)
        for pos, value in draw(
            st.lists(st.tuples(st.integers(0), st.integers(0, 255)), min_size=1, max_size=5)
        ):
            mutable[pos % len(mutable)] = value
        raw = bytes(mutable)
    elif kind == "truncate":
        raw = raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    elif kind == "nonfinite":
        for number in ("0", "1", "2", "4"):  # a digit somewhere becomes NaN / Infinity
            raw = raw.replace(
                number.encode(), draw(st.sampled_from([b"NaN", b"-Infinity", b"1e400"])), 1
            )
    return raw


SPECIAL_FILES = ["fifo", "dev_zero_link", "folder", "sparse_3gb", "dangling_link"]


def write_special(path: Path, kind: str) -> None:
    """Put something that is not a small regular file at ``path``."""
    import os

    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero_link":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    elif kind == "sparse_3gb":
        with open(path, "wb") as f:
            f.truncate(3_000_000_000)
    else:
        path.symlink_to(path.parent / "nowhere")


HOSTILE_SEGMENTS = ["..", ".", "", "unet", "vae", "x", "a\\b", "%2e%2e", "\x00", "~", "config.json"]


@st.composite
def listed_names(draw: st.DrawFn, outside: str) -> str:
    """A file name a Hub could list: relative, absolute, with ``..``, odd characters."""
    kind = draw(st.sampled_from(["segments", "absolute", "known", "text"]))
    if kind == "absolute":
        return f"{outside}/{draw(st.sampled_from(['pwned.json', 'x/pwned.json']))}"
    if kind == "known":
        return draw(
            st.sampled_from(
                [
                    "model_index.json",
                    "unet/config.json",
                    "unet/diffusion_pytorch_model.safetensors.index.json",
                    "vae/diffusion_pytorch_model.safetensors",
                    "text_encoder/model.safetensors",
                ]
            )
        )
    if kind == "text":
        return draw(st.text(alphabet="./\\ax%\x00-", min_size=1, max_size=12)) + ".json"
    parts = draw(st.lists(st.sampled_from(HOSTILE_SEGMENTS), min_size=1, max_size=4))
    return "/".join([*parts, "pwned.json"])
