"""Legacy PyTorch pickle checkpoints (``.bin``, ``.pt``, ``.pth``), read safely.

Only ever ``torch.load(weights_only=True, mmap=True)``: the restricted unpickler
refuses any pickle that would import or call arbitrary code, and memory-mapping keeps
the tensor data on disk until it is touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.base import FileTensors, Layout, TensorInfo
from bigmodel_cli.formats.files import check_regular
from bigmodel_cli.sizes import torch_dtype_code

if TYPE_CHECKING:
    import torch

_NESTED_KEYS = ("state_dict", "model", "module")


def load_state_dict(path: Path) -> dict[str, Any]:
    """The tensors of a pickle checkpoint, memory-mapped; never runs code from the file."""
    import pickle

    import torch

    check_regular(path, "file")  # torch.load would wait on a FIFO
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), "")
        raise BigmodelError(
            "refused to unpickle: it would import or call code, not just hold tensors"
            + (f" ({detail[:200]})" if detail else ""),
            path,
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # EOFError: ""
        raise BigmodelError(f"cannot read pickle checkpoint ({first[:200]})", path) from None
    return _flatten(obj, path)


def _flatten(obj: Any, path: Path) -> dict[str, Any]:
    import torch

    if isinstance(obj, dict) and len(obj) == 1:
        ((key, inner),) = obj.items()
        if key in _NESTED_KEYS and isinstance(inner, dict):
            obj = inner
    if not isinstance(obj, dict):
        raise BigmodelError("pickle checkpoint is not a dict of tensors", path)
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors or not all(isinstance(k, str) for k in tensors):
        raise BigmodelError("pickle checkpoint holds no named tensors", path)
    return tensors


def read_pickle_tensors(path: Path) -> list[TensorInfo]:
    """Tensor records of a pickle file (no byte ranges: ``start == end == -1``)."""
    import torch

    records = []
    for name, tensor in load_state_dict(path).items():
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type != "cpu":
            kind = "quantized" if tensor.is_quantized else f"{tensor.layout} on {tensor.device}"
            raise BigmodelError(
                f"is a {kind} tensor; only dense tensors with data can be read", path, name
            )
        try:
            code = torch_dtype_code(tensor.dtype)
        except KeyError:
            raise BigmodelError(
                f"dtype {tensor.dtype} has no safetensors equivalent", path, name
            ) from None
        records.append(TensorInfo(name, code, tuple(tensor.shape), path, -1, -1))
    return records


class PickleFormat:
    """The reader protocol for legacy pickle files: no byte ranges, read through torch."""

    name: str = "pickle"
    suffixes: tuple[str, ...] = (".bin", ".pt", ".pth")
    layouts: tuple[Layout, Layout] = ("pickle", "pickle")
    raw: bool = False

    def read(self, path: Path) -> FileTensors:
        return FileTensors(tuple(read_pickle_tensors(path)), None)

    def open(self, path: Path) -> Mapping[str, torch.Tensor]:
        return load_state_dict(path)


PICKLE = PickleFormat()
