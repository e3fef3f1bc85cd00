"""The pure-Python safetensors header reader against files written by safetensors itself."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.safetensors import (
    MAX_HEADER_BYTES,
    HeaderEntry,
    build_header,
    read_header,
)

TORCH_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}

names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20
).filter(lambda n: n != "__metadata__")
shapes = st.lists(st.integers(min_value=0, max_value=5), max_size=3)


@st.composite
def state_dicts(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    keys = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    out = {}
    for key in keys:
        dtype = draw(st.sampled_from(list(TORCH_DTYPES)))
        seed = draw(st.integers(0, 2**16))
        values = torch.randn(draw(shapes), generator=torch.Generator().manual_seed(seed)) * 10
        out[key] = (values > 0) if dtype is torch.bool else values.to(dtype)
    return out


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


metadata = st.one_of(st.none(), st.dictionaries(names, st.text(max_size=10), max_size=3))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tensors=state_dicts(), meta=metadata)
def test_headers_written_by_safetensors_round_trip(
    tmp_path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None
) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(save(tensors, metadata=meta))
    header = read_header(path)
    assert header.metadata == meta
    assert {t.name for t in header.tensors} == set(tensors)
    raw = path.read_bytes()
    for t in header.tensors:
        assert t.dtype == TORCH_DTYPES[tensors[t.name].dtype]
        assert t.shape == tuple(tensors[t.name].shape)
        assert t.nbytes == tensors[t.name].numel() * tensors[t.name].element_size()
        assert raw[t.start : t.end] == tensor_bytes(tensors[t.name])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tensors=state_dicts(), meta=metadata)
def test_built_headers_are_read_by_safetensors(
    tmp_path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None
) -> None:
    entries = [HeaderEntry(k, TORCH_DTYPES[v.dtype], tuple(v.shape)) for k, v in tensors.items()]
    data = b"".join(tensor_bytes(v) for v in tensors.values())
    path = tmp_path / "built.safetensors"
    path.write_bytes(build_header(entries, meta) + data)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(tensors)
        assert f.metadata() == meta
        for k, v in tensors.items():
            assert tensor_bytes(f.get_tensor(k)) == tensor_bytes(v)
    assert (8 + read_header(path).header_len) % 8 == 0


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tensors=state_dicts(),
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4
    ),
    cut=st.one_of(st.none(), st.integers(min_value=0)),
)
def test_corrupted_headers_give_our_error_or_agree_with_safetensors(
    tmp_path: Path, tensors: dict[str, torch.Tensor], edits: list[tuple[int, int]], cut: int | None
) -> None:
    raw = bytearray(save(tensors))
    header_end = 8 + struct.unpack("<Q", bytes(raw[:8]))[0]
    for pos, value in edits:
        raw[pos % header_end] = value
    if cut is not None:
        raw = raw[: cut % (len(raw) + 1)]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(bytes(raw))
    try:
        header = read_header(path)
    except BigmodelError as error:
        assert str(path) in str(error)
        return
    # Accepted: then safetensors itself must agree on what the file holds.
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == {t.name for t in header.tensors}


def _file(tmp_path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _entry(dtype: str, shape: list[int], start: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


@pytest.mark.parametrize(
    ("header", "data", "length", "message"),
    [
        ({"a": _entry("F32", [2], 0, 8)}, b"\0" * 4, None, "file has"),
        (b'{"a": ', b"", None, "not valid JSON"),
        (b"\xff\xfe{}", b"", None, "start with"),
        (b'{"a": 1, "a": 2}', b"", None, "duplicate key"),
        (b"[1, 2]", b"", None, "start with"),
        (
            {"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)},
            b"\0" * 12,
            None,
            "overlaps",
        ),
        ({"a": _entry("F32", [2], 4, 12)}, b"\0" * 12, None, "hole"),
        ({"a": _entry("F32", [3], 0, 8)}, b"\0" * 8, None, "x F32 is 12 bytes"),
        ({"a": _entry("F17", [2], 0, 8)}, b"\0" * 8, None, "unknown dtype"),
        ({"a": _entry("F32", [-2], 0, 8)}, b"\0" * 8, None, "shape"),
        ({"a": _entry("F32", [2], 8, 0)}, b"\0" * 8, None, "data_offsets"),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}},
            b"\0" * 8,
            None,
            "exactly",
        ),
        ({"__metadata__": {"format": 1}}, b"", None, "__metadata__"),
        ({}, b"", 10**6, "runs past the end"),
        ({}, b"", MAX_HEADER_BYTES + 1, "byte limit"),
    ],
)
def test_malformed_headers_are_refused_naming_the_file(
    tmp_path: Path, header: object, data: bytes, length: int | None, message: str
) -> None:
    path = _file(tmp_path, header, data, length)
    with pytest.raises(BigmodelError, match=message) as info:
        read_header(path)
    assert str(path) in str(info.value)


def test_nan_and_deep_nesting_are_refused(tmp_path: Path) -> None:
    for raw in (b'{"__metadata__": NaN}', b"{" + b'"a":[' * 100_000 + b"]" * 100_000 + b"}"):
        with pytest.raises(BigmodelError, match="not valid JSON"):
            read_header(_file(tmp_path, raw))


def test_tiny_file_claiming_a_huge_header_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(struct.pack("<Q", 90_000_000) + b"{}" * 46)
    with pytest.raises(BigmodelError, match="runs past the end"):
        read_header(path)


def test_files_shorter_than_the_length_field(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(BigmodelError, match="too small"):
        read_header(path)


def test_lone_surrogate_names_are_refused(tmp_path: Path) -> None:
    raw = b'{"\\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    with pytest.raises(BigmodelError, match="not valid UTF-8"):
        read_header(_file(tmp_path, raw, b"\0" * 4))
    raw = b'{"__metadata__": {"k": "\\udfff"}}'
    with pytest.raises(BigmodelError, match="__metadata__"):
        read_header(_file(tmp_path, raw))


def test_shapes_overflowing_64_bits_are_refused(tmp_path: Path) -> None:
    header = {"a": _entry("F32", [2**62, 2**62, 0], 0, 0)}
    with pytest.raises(BigmodelError, match="overflows 64 bits"):
        read_header(_file(tmp_path, header))
    header = {"a": _entry("F32", [2**62], 0, 0)}  # 2**64 bytes: also past safetensors' limit
    with pytest.raises(BigmodelError, match="overflows 64 bits"):
        read_header(_file(tmp_path, header))
