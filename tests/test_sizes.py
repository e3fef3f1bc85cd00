from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bigmodel_cli.cli import as_flags
from bigmodel_cli.devices import parse_max_memory, parse_reserve
from bigmodel_cli.errors import UsageError
from bigmodel_cli.sizes import (
    DTYPES,
    as_size,
    bytes_at,
    cast_to,
    format_size,
    parse_dtype,
    parse_size,
    parse_target_dtype,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5GB", 5_000_000_000),
        ("5gb", 5_000_000_000),
        ("5 GB", 5_000_000_000),
        ("5GiB", 5 * 2**30),
        ("1.5GB", 1_500_000_000),
        ("1.5GiB", 1_610_612_736),
        ("123", 123),
        ("123B", 123),
        ("10KB", 10_000),
        ("10kib", 10_240),
        ("2MB", 2_000_000),
        ("2MiB", 2 * 2**20),
        ("1TB", 10**12),
        ("1TiB", 2**40),
        (".5KB", 500),
    ],
)
def test_parse_size_accepts_spec_forms(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "GB", "5XB", "-5GB", "5 G B", "five", "1e9", "5GB5", "nan", "١٠KB", "５GB"]
)
def test_parse_size_rejects_anything_else_naming_the_value(text: str) -> None:
    with pytest.raises(UsageError, match="invalid max_shard_size") as info:
        parse_size(text, "max_shard_size", "max_shard_size")
    assert as_flags(info.value).startswith("invalid --max-shard-size")


@given(st.integers(min_value=0, max_value=10**15))
def test_plain_integers_are_bytes(n: int) -> None:
    assert parse_size(str(n)) == n


def test_format_size_uses_decimal_units() -> None:
    assert format_size(3_440_000_000) == "3.44 GB"
    assert format_size(999) == "999 B"
    assert format_size(1_500_000) == "1.50 MB"
    assert format_size(2 * 10**12) == "2.00 TB"


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("float32", "F32"),
        ("fp32", "F32"),
        ("float16", "F16"),
        ("fp16", "F16"),
        ("bfloat16", "BF16"),
        ("bf16", "BF16"),
        ("float8_e4m3fn", "F8_E4M3"),
        ("fp8", "F8_E4M3"),
        ("float8_e5m2", "F8_E5M2"),
        ("torch.float16", "F16"),
        ("F16", "F16"),
        ("int8", "I8"),
    ],
)
def test_parse_dtype_names(name: str, code: str) -> None:
    assert parse_dtype(name).code == code


def test_unknown_dtype_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown dtype 'fp12'"):
        parse_dtype("fp12")


def test_every_safetensors_dtype_has_a_width() -> None:
    expected = {
        "BOOL": 1,
        "U8": 1,
        "I8": 1,
        "F16": 2,
        "BF16": 2,
        "I32": 4,
        "F32": 4,
        "I64": 8,
        "F64": 8,
    }
    for code, width in expected.items():
        assert DTYPES[code].nbytes(10) == 10 * width
    assert DTYPES["F4"].nbytes(4) == 2


def test_target_dtype_changes_floating_tensors_only() -> None:
    fp16 = parse_dtype("fp16")
    assert bytes_at(DTYPES["F32"], 10, fp16) == 20
    assert bytes_at(DTYPES["I64"], 10, fp16) == 80
    assert bytes_at(DTYPES["BOOL"], 10, fp16) == 10
    assert bytes_at(DTYPES["F32"], 10, None) == 40


@pytest.mark.parametrize("name", ["int8", "uint8", "bool", "complex64", "I64"])
def test_target_dtype_must_be_floating(name: str) -> None:
    with pytest.raises(UsageError, match="not a floating type"):
        parse_target_dtype(name)
    assert parse_target_dtype("bf16").code == "BF16"


@pytest.mark.parametrize("code", sorted(DTYPES))
def test_a_cast_changes_floating_tensors_only_as_torch_would(code: str) -> None:
    """The one rule (plan sizes, shard's output dtypes, run's loaded dtypes): a floating
    tensor takes the target, any other keeps its own, the same answer torch's is_floating_point
    gives where torch has the dtype."""
    import torch

    target = DTYPES["F16"]
    found = cast_to(DTYPES[code], target)
    dtype = getattr(torch, DTYPES[code].name, None)
    if dtype is not None:
        assert (found == target) == (dtype.is_floating_point or DTYPES[code] == target)
    assert cast_to(DTYPES[code], None) == DTYPES[code]
    assert bytes_at(DTYPES[code], 8, target) == found.nbytes(8)


@pytest.mark.parametrize(
    "call",
    [
        lambda: as_size(10**40, "max_shard_size"),
        lambda: parse_size("99999999999999999999999GB", "max_shard_size", "max_shard_size"),
        lambda: parse_max_memory({"cpu": 10**40}),
        lambda: parse_max_memory("cpu=10000000000000000000000000TB"),
        lambda: parse_reserve(10**40),
    ],
)
def test_a_size_past_what_any_file_or_device_holds_is_refused(call: Any) -> None:
    with pytest.raises(UsageError):
        call()
    assert as_size(2**63 - 1, "max_shard_size") == 2**63 - 1
