"""DeepSpeed ZeRO checkpoints (stage 1, 2 and 3): a ``global_stepN/`` folder of
``*mp_rank_00_model_states.pt`` and ``zero_pp_rank_R_mp_rank_00_optim_states.pt`` files.

The model's fp32 weights are not stored whole: each rank's optimizer-states file holds its
flat partition of them (stage 1/2: one flat vector per parameter group, cut across ranks;
stage 3: every parameter cut across ranks, each rank's pieces one after the other). The
model-states file names the parameters and their shapes (and holds the buffers). Every file
is opened with ``torch.load(weights_only=True, mmap=True)`` and stand-ins for exactly the
classes DeepSpeed pickles, so only the bytes of the tensors asked for are ever read: the
Adam moments beside the partitions never are. As ``zero_to_fp32.py`` rebuilds them, so does
:class:`ZeroTensors`, one tensor at a time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.base import FileTensors, Layout, TensorInfo
from bigmodel_cli.formats.files import MAX_TAG_BYTES, read_small_file
from bigmodel_cli.sizes import torch_dtype_code

if TYPE_CHECKING:
    import torch

MODEL_STATES = "_model_states.pt"
OPTIM_STATES = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")


class _StandIn:
    """A DeepSpeed object in a checkpoint (loss scaler, stage enum, fragment address):
    never needed, built from its state without DeepSpeed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


_DEEPSPEED = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def load_safely(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True, mmap=True)`` with DeepSpeed's classes as stand-ins;
    a pickle naming anything else is refused."""
    import pickle

    import torch

    stand_ins = [(type(name.rsplit(".", 1)[1], (_StandIn,), {}), name) for name in _DEEPSPEED]
    try:
        with torch.serialization.safe_globals(stand_ins):  # type: ignore[arg-type]
            found = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        detail = f" ({lines[0][:200]})" if lines else ""
        raise BigmodelError(
            f"refused to unpickle: it names a class DeepSpeed checkpoints do not hold{detail}",
            path,
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, AttributeError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise BigmodelError(f"cannot read DeepSpeed checkpoint file ({reason})", path) from None
    if not isinstance(found, dict):
        raise BigmodelError("not a DeepSpeed checkpoint file (no dict inside)", path)
    return found


def zero_folder(path: Path) -> Path | None:
    """The ``global_stepN`` folder that ``path`` names (itself, or the one its ``latest``
    file names), or None when it is no DeepSpeed checkpoint."""
    latest = path / "latest"
    if path.is_dir() and latest.is_file():
        raw = read_small_file(latest, "DeepSpeed's latest tag", MAX_TAG_BYTES, inside=path)
        tag = raw.decode("utf-8", errors="replace").strip()
        if not tag or "/" in tag or tag in (".", ".."):
            raise BigmodelError(f"names no checkpoint folder ({tag[:80]!r})", latest)
        path = path / tag
        if not path.is_dir():
            raise BigmodelError(f"names {tag}, which is not a folder here", latest)
    if path.is_dir() and any(OPTIM_STATES.search(p.name) for p in path.iterdir()):
        return path
    return None


@dataclass(frozen=True)
class ZeroLayout:
    """Where each tensor of a ZeRO folder comes from (pure data, from the pickles)."""

    stage: int
    world: int
    optim_files: tuple[Path, ...]  # by rank
    buffers: dict[str, tuple[str, tuple[int, ...]]]  # name -> dtype, shape
    params: tuple[tuple[str, tuple[int, ...], int, int], ...]  # name, shape, group, offset
    shared: dict[str, str]  # alias -> the parameter it is


def read_layout(folder: Path) -> tuple[ZeroLayout, Path]:
    """The layout of a ``global_stepN`` folder, and its first model-states file."""
    model_files = sorted(p for p in folder.iterdir() if p.name.endswith(MODEL_STATES))
    optim = {int(m.group(1)): p for p in folder.iterdir() if (m := OPTIM_STATES.search(p.name))}
    if not model_files:
        raise BigmodelError("DeepSpeed folder without a *_model_states.pt file", folder)
    if any(OPTIM_STATES.search(p.name).group(2) != "00" for p in optim.values()):  # type: ignore[union-attr]
        raise BigmodelError("model-parallel ZeRO checkpoints (mp_rank > 0) are not read", folder)
    states = load_safely(model_files[0])
    first = load_safely(optim[min(optim)])["optimizer_state_dict"]
    stage = int(first["zero_stage"].args[0]) if "zero_stage" in first else 0
    count = first.get("partition_count")
    world = int(count[0] if isinstance(count, list) else count)
    missing = sorted(set(range(world)) - set(optim))
    if missing:
        name = f"zero_pp_rank_{missing[0]}_mp_rank_00_optim_states.pt"
        raise BigmodelError(f"rank {missing[0]} of {world} is missing: no {name}", folder)
    if states.get("frozen_param_shapes"):
        raise BigmodelError("has frozen parameters; those are not read yet", model_files[0])
    if stage not in (1, 2, 3):
        raise BigmodelError(f"ZeRO stage {stage} is not one this reader knows", folder)
    module = states.get("module") or {}
    buffers = {
        n: (torch_dtype_code(module[n].dtype), tuple(module[n].shape))
        for n in states.get("buffer_names", [])
        if n in module
    }
    paddings = first.get("param_alignment_paddings") if stage < 3 else None
    params = _params(states["param_shapes"], stage, world, paddings)
    shared = {str(k): str(v) for k, v in (states.get("shared_params") or {}).items()}
    files = tuple(optim[r] for r in range(world))
    return ZeroLayout(stage, world, files, buffers, params, shared), model_files[0]


def _params(
    shapes: list[dict[str, Any]], stage: int, world: int, paddings: list[list[int]] | None
) -> tuple[tuple[str, tuple[int, ...], int, int], ...]:
    """Each parameter's group and offset: in its group's flat vector (stage 1/2), or in
    every rank's own flat partition (stage 3: each rank holds ceil(numel / world) of it)."""
    found = []
    offset = 0
    for group, named in enumerate(shapes):
        if stage < 3:
            offset = 0
        for i, (name, shape) in enumerate(named.items()):
            numel = math.prod(shape)
            found.append(
                (str(name), tuple(int(d) for d in shape), group if stage < 3 else 0, offset)
            )
            offset += numel if stage < 3 else math.ceil(numel / world)
            if paddings is not None:
                offset += paddings[group][i]
    return tuple(found)


class ZeroTensors(Mapping[str, "torch.Tensor"]):
    """The model's tensors of a ZeRO folder, rebuilt one at a time from mapped partitions."""

    def __init__(self, folder: Path) -> None:
        self.layout, model_file = read_layout(folder)
        self._module = load_safely(model_file).get("module") or {}
        self._flat: list[list[torch.Tensor]] | None = None
        self._params = {p[0]: p for p in self.layout.params}

    def _partitions(self) -> list[list[torch.Tensor]]:
        if self._flat is None:
            key = (
                "fp32_flat_groups" if self.layout.stage == 3 else "single_partition_of_fp32_groups"
            )
            self._flat = []
            for path in self.layout.optim_files:
                groups = load_safely(path)["optimizer_state_dict"][key]
                self._flat.append(list(groups))
        return self._flat

    def names(self) -> list[str]:
        return [*self.layout.buffers, *self._params, *self.layout.shared]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, name: str) -> torch.Tensor:
        import torch

        if name in self.layout.buffers:
            return self._module[name]
        name = self.layout.shared.get(name, name)
        _, shape, group, offset = self._params[name]
        numel = math.prod(shape)
        flats = self._partitions()
        if self.layout.stage == 3:
            part = math.ceil(numel / self.layout.world)
            pieces = [piece for rank in flats for piece in _slices(rank, offset, part)]
        else:
            pieces = _slices([rank[group] for rank in flats], offset, numel)
        whole = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        return whole[:numel].view(shape)


def _slices(partitions: list[torch.Tensor], offset: int, numel: int) -> list[torch.Tensor]:
    """``numel`` elements from ``offset`` of the partitions laid end to end."""
    pieces, start = [], 0
    for flat in partitions:
        end = start + flat.numel()
        lo, hi = max(offset, start), min(offset + numel, end)
        if lo < hi:
            pieces.append(flat.narrow(0, lo - start, hi - lo))
        start = end
    if sum(p.numel() for p in pieces) != numel:
        raise BigmodelError("the fp32 partitions end before the parameters do")
    return pieces


class ZeroFormat:
    """The reader protocol for ZeRO folders, named by their model-states file."""

    name: str = "zero"
    suffixes: tuple[str, ...] = (MODEL_STATES,)
    layouts: tuple[Layout, Layout] = ("zero", "zero")
    raw: bool = False

    def read(self, path: Path) -> FileTensors:
        layout, _ = read_layout(path.parent)
        tensors = [TensorInfo(n, d, s, path, -1, -1) for n, (d, s) in layout.buffers.items()]
        tensors += [TensorInfo(n, "F32", s, path, -1, -1) for n, s, _, _ in layout.params]
        shapes = {n: s for n, s, _, _ in layout.params}
        tensors += [TensorInfo(a, "F32", shapes[p], path, -1, -1) for a, p in layout.shared.items()]
        return FileTensors(tuple(tensors), {"format": "pt"})

    def open(self, path: Path) -> ZeroTensors:
        return ZeroTensors(path.parent)


ZERO = ZeroFormat()
