"""Byte sizes (``5GB``, ``1.5GiB``) and tensor dtypes (names, bit widths)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from bigmodel_cli.errors import BigmodelError, UsageError

if TYPE_CHECKING:
    import torch

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
MAX_SIZE = 2**63 - 1  # bytes: what an off_t holds; a size past it is no real device or file
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE | re.ASCII)


def parse_size(text: str, what: str = "size", argument: str | None = None) -> int:
    """``"5GB"`` -> 5_000_000_000; ``"1.5GiB"`` -> 1_610_612_736; ``"123"`` -> 123 bytes.
    ``what`` names the value in the error (``argument``: the API argument it names)."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise UsageError(
            f"invalid {what} {text!r}: expected bytes or a number with a unit "
            "(KB MB GB TB, KiB MiB GiB TiB), e.g. 5GB",
            argument=argument,
        )
    try:
        value = Decimal(match.group(1)) * _UNITS[unit]
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only numbers
        raise UsageError(f"invalid {what} {text!r}", argument=argument) from exc
    return _bounded(int(value), what, argument)


def _bounded(n: int, what: str, argument: str | None) -> int:
    """``n`` when no machine could be refused it: at most 2**63 - 1 bytes."""
    if n > MAX_SIZE:
        raise UsageError(f"invalid {what} {n}: more than {MAX_SIZE} bytes", argument=argument)
    return n


def as_size(value: int | str, argument: str) -> int:
    """A size argument as the ecosystem writes it: bytes (``5_000_000_000``) or a string
    (``"5GB"``, ``"500MiB"``), as ``save_pretrained(max_shard_size=...)`` takes it."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _bounded(value, argument, argument)
    if isinstance(value, str):
        return parse_size(value, argument, argument)
    raise UsageError(
        f"{argument} must be bytes (int) or a size such as '5GB' or '500MiB', not {value!r}",
        argument=argument,
    )


def format_size(n: int | float) -> str:
    """Decimal units, as Hugging Face prints them: 3_440_000_000 -> ``3.44 GB``."""
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.2f} {unit}"
        n /= 1000
    return f"{sign}{n:.2f} TB"


@dataclass(frozen=True)
class DType:
    """A safetensors dtype: its header code, the torch name, its width in bits."""

    code: str
    name: str
    bits: int
    floating: bool

    def nbytes(self, numel: int) -> int:
        return numel * self.bits // 8


_DTYPE_LIST = [
    DType("BOOL", "bool", 8, False),
    DType("U8", "uint8", 8, False),
    DType("I8", "int8", 8, False),
    DType("U16", "uint16", 16, False),
    DType("I16", "int16", 16, False),
    DType("U32", "uint32", 32, False),
    DType("I32", "int32", 32, False),
    DType("U64", "uint64", 64, False),
    DType("I64", "int64", 64, False),
    DType("F4", "float4_e2m1fn_x2", 4, True),
    DType("F6_E2M3", "float6_e2m3fn", 6, True),
    DType("F6_E3M2", "float6_e3m2fn", 6, True),
    DType("F8_E5M2", "float8_e5m2", 8, True),
    DType("F8_E4M3", "float8_e4m3fn", 8, True),
    DType("F8_E5M2FNUZ", "float8_e5m2fnuz", 8, True),
    DType("F8_E4M3FNUZ", "float8_e4m3fnuz", 8, True),
    DType("F8_E8M0", "float8_e8m0fnu", 8, True),
    DType("F16", "float16", 16, True),
    DType("BF16", "bfloat16", 16, True),
    DType("F32", "float32", 32, True),
    DType("F64", "float64", 64, True),
    DType("C64", "complex64", 64, False),
]
DTYPES: dict[str, DType] = {d.code: d for d in _DTYPE_LIST}
_ALIASES = {
    "fp32": "F32",
    "fp16": "F16",
    "half": "F16",
    "bf16": "BF16",
    "fp8": "F8_E4M3",
    "fp64": "F64",
    "double": "F64",
    "float": "F32",
    "float8_e4m3": "F8_E4M3",
    "float8_e8m0": "F8_E8M0",
}
_BY_NAME = {d.name: d.code for d in _DTYPE_LIST} | {d.code.lower(): d.code for d in _DTYPE_LIST}


def parse_dtype(text: str) -> DType:
    """``fp16`` / ``float16`` / ``F16`` -> the F16 dtype; unknown names are a usage error."""
    key = text.strip().lower().removeprefix("torch.")
    code = _ALIASES.get(key) or _BY_NAME.get(key)
    if code is None:
        known = "float32|fp32, float16|fp16, bfloat16|bf16, float8_e4m3fn|fp8, " + ", ".join(
            d.name for d in _DTYPE_LIST if d.code not in ("F32", "F16", "BF16", "F8_E4M3")
        )
        raise UsageError(f"unknown dtype {text!r}; expected one of: {known}")
    return DTYPES[code]


if TYPE_CHECKING:  # a dtype argument's forms (torch is not imported to say so)
    DTypeLike = DType | str | torch.dtype


def as_target_dtype(value: DTypeLike | None) -> DType | None:
    """A ``dtype`` argument in any of its forms: our names (``"fp16"``), torch's
    (``"float16"``, ``torch.float16``), safetensors' codes (``"F16"``), or a :class:`DType`;
    None stays None. Floating only (:func:`parse_target_dtype`)."""
    if value is None:
        return None
    if isinstance(value, DType):
        return parse_target_dtype(value.code)
    if isinstance(value, str):
        return parse_target_dtype(value)
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        return parse_target_dtype(str(value))  # "torch.float16"
    raise UsageError(
        "dtype must be a name ('fp16', 'bfloat16'), a safetensors code ('F16') or a torch "
        f"dtype (torch.float16), not {value!r}",
        argument="dtype",
    )


def parse_target_dtype(text: str) -> DType:
    """A ``dtype`` target: floating only (integer and bool tensors never change)."""
    dtype = parse_dtype(text)
    if not dtype.floating:
        raise UsageError(
            f"dtype {text!r} is not a floating type; a target applies to floating "
            "tensors only (e.g. fp16, bf16, fp32, fp8)",
            argument="dtype",
        )
    return dtype


def cast_to(dtype: DType, target: DType | None) -> DType:
    """A ``dtype`` tensor's dtype once cast to ``target``: floating tensors take it, the
    others (integers, bool, complex) keep theirs, as accelerate casts (the one rule)."""
    return target if target is not None and dtype.floating else dtype


def bytes_at(dtype: DType, numel: int, target: DType | None) -> int:
    """Size of a tensor once cast to ``target`` (:func:`cast_to`)."""
    return cast_to(dtype, target).nbytes(numel)


# ---------------------------------------------------------------- torch dtypes (lazy torch)


def torch_dtype_code(dtype: torch.dtype) -> str:
    """The safetensors dtype code of a torch dtype (``torch.float16`` -> ``F16``), from the
    one table above; KeyError for a dtype safetensors has no code for."""
    import torch

    for d in _DTYPE_LIST:
        if getattr(torch, d.name, None) == dtype:
            return d.code
    raise KeyError(str(dtype))


def torch_dtype(code: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype code (``F16`` -> ``torch.float16``)."""
    import torch

    dtype = getattr(torch, DTYPES[code].name, None)
    if not isinstance(dtype, torch.dtype):
        raise BigmodelError(f"this torch ({torch.__version__}) has no dtype {DTYPES[code].name}")
    return dtype
