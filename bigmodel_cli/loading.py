"""Load a checkpoint's tensors onto their devices, and check them against the files.

The executor half of ``bigmodel run`` (:mod:`bigmodel_cli.runner` decides and reports).
Every tensor is read one at a time, in file order:

- a GPU: ``safe_open(file, device="cuda:N")``, straight from the file to device memory;
- ``cpu``: ``safe_open(file, device="cpu", backend="pread")``: the bytes are read into the
  tensor's own memory, so the process holds the loaded tensors and nothing more (with the
  default mmap backend, safetensors 0.8 reads nothing until a tensor is used, and copies
  of mapped tensors leave every touched page counted twice while the file is open);
- ``disk``: a copy-on-write ``mmap`` of the file viewed as a tensor (``torch.frombuffer``):
  nothing is read until the tensor is used, and the file is never written. A disk tensor
  that ``--dtype`` changes is cast on its own and written to an unnamed temporary file
  (accelerate's offload folder, without the folder), which is then mapped the same way.

Pickle components are opened with ``formats.pickle.load_state_dict`` (weights only,
memory-mapped) and each tensor is copied to its device; disk ones stay mapped.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from bigmodel_cli.checkpoint import Checkpoint, Component
from bigmodel_cli.errors import BigmodelError, FitError
from bigmodel_cli.formats.pickle import torch_dtype
from bigmodel_cli.formats.safetensors import TensorInfo
from bigmodel_cli.plan_file import torch_device
from bigmodel_cli.progress import Progress
from bigmodel_cli.sizes import DTYPES, DType

if TYPE_CHECKING:
    import torch


@dataclass
class Loaded:
    """Accumulated while loading (internal, mutable): tensors in file order, per-device tallies."""

    tensors: list[tuple[TensorInfo, str, torch.Tensor]] = field(default_factory=list)
    nbytes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, info: TensorInfo, dev: str, tensor: torch.Tensor, seconds: float) -> None:
        self.tensors.append((info, dev, tensor))
        self.nbytes[dev] = self.nbytes.get(dev, 0) + tensor.numel() * tensor.element_size()
        self.time(dev, seconds)

    def time(self, dev: str, seconds: float) -> None:
        self.seconds[dev] = self.seconds.get(dev, 0.0) + seconds


def cast_dtype(code: str, target: DType | None) -> torch.dtype:
    """The dtype a ``code`` tensor is loaded at: ``target`` for floating tensors only."""
    floating = target is not None and DTYPES[code].floating
    return torch_dtype(target.code if target is not None and floating else code)


def cast(tensor: torch.Tensor, code: str, target: DType | None) -> torch.Tensor:
    """The tensor at ``target`` when it is floating (accelerate's rule), else unchanged."""
    to = cast_dtype(code, target)
    return tensor if tensor.dtype == to else tensor.to(to)


def _by_file(tensors: tuple[TensorInfo, ...]) -> Iterator[tuple[Path, list[TensorInfo]]]:
    groups: dict[Path, list[TensorInfo]] = {}
    for t in tensors:
        groups.setdefault(t.file, []).append(t)
    yield from groups.items()


def _view(
    mm: mmap.mmap, offset: int, nbytes: int, dtype: torch.dtype, shape: tuple[int, ...]
) -> torch.Tensor:
    """A tensor over ``nbytes`` of a mapping: no copy; the tensor keeps the mapping alive."""
    import torch

    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(mm, dtype=torch.uint8, count=nbytes, offset=offset)
    return flat.view(dtype).reshape(shape)


def _mapping(f: BinaryIO) -> mmap.mmap:
    """A private (copy-on-write) mapping: tensors may be written, the file never is."""
    return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)


def _mapped(file: Path) -> Callable[[TensorInfo], torch.Tensor]:
    """Tensors viewed on a mapping of ``file``: nothing is read until they are used."""
    with open(file, "rb") as f:
        mm = _mapping(f)
    return lambda info: _view(mm, info.start, info.nbytes, torch_dtype(info.dtype), info.shape)


class _Spill:
    """Disk tensors whose dtype changes (accelerate's offload folder): each is cast in memory
    on its own, appended to an unnamed temporary file, and mapped back when the file is done."""

    def __init__(self) -> None:
        self.file: BinaryIO | None = None
        self.pending: list[tuple[TensorInfo, int, int, torch.dtype]] = []

    def put(self, info: TensorInfo, tensor: torch.Tensor) -> None:
        import torch

        if self.file is None:
            self.file = tempfile.TemporaryFile(prefix="bigmodel-disk-")  # noqa: SIM115 - take()
        offset = self.file.seek(0, os.SEEK_END)
        offset += self.file.write(bytes(-offset % 64))
        flat = tensor.contiguous().reshape(-1).view(torch.uint8)
        if flat.numel():
            self.file.write((ctypes.c_char * flat.numel()).from_address(flat.data_ptr()))
        self.pending.append((info, offset, flat.numel(), tensor.dtype))

    def take(self) -> list[tuple[TensorInfo, torch.Tensor]]:
        if self.file is None:
            return []
        with self.file:
            self.file.flush()
            mm = _mapping(self.file) if self.file.tell() else mmap.mmap(-1, 1)
        found = [(info, _view(mm, at, n, dtype, info.shape)) for info, at, n, dtype in self.pending]
        self.file, self.pending = None, []
        return found


def _keep(
    acc: Loaded, spill: _Spill, info: TensorInfo, dev: str, tensor: torch.Tensor, began: float
) -> None:
    """Record one loaded (already cast) tensor; a disk tensor that changed dtype is spilled."""
    if dev == "disk" and tensor.dtype != torch_dtype(info.dtype):
        spill.put(info, tensor)
        acc.time(dev, time.perf_counter() - began)
    else:
        acc.add(info, dev, tensor, time.perf_counter() - began)


def _opened(file: Path, dev: str, stack: ExitStack) -> Callable[[TensorInfo], torch.Tensor]:
    """A reader of ``file``'s tensors onto ``dev``."""
    from safetensors import safe_open

    if dev == "disk":
        return _mapped(file)
    if dev != "cpu":
        handle = stack.enter_context(safe_open(file, framework="pt", device=torch_device(dev)))
        return lambda info: handle.get_tensor(info.name)
    try:
        cpu = stack.enter_context(safe_open(file, framework="pt", device="cpu", backend="pread"))
    except TypeError:  # safetensors before 0.8 has no backend; its cpu tensors are mapped
        old = stack.enter_context(safe_open(file, framework="pt", device="cpu"))
        return lambda info: old.get_tensor(info.name).clone()
    return lambda info: cpu.get_tensor(info.name)


def _finish_file(acc: Loaded, spill: _Spill, used: set[str]) -> None:
    """Wait for the GPUs (their time counts) and map back what was spilled."""
    import torch

    for dev in used - {"cpu", "disk"}:
        began = time.perf_counter()
        torch.cuda.synchronize(int(dev))
        acc.time(dev, time.perf_counter() - began)
    for info, tensor in spill.take():
        acc.add(info, "disk", tensor, 0.0)


def _load_safetensors(
    c: Component, place: dict[str, str], target: DType | None, acc: Loaded, progress: Progress
) -> None:
    from safetensors import SafetensorError

    for info in c.tensors:
        if DTYPES[info.dtype].bits % 8:
            raise BigmodelError(
                f"{info.dtype} packs several values per byte; torch cannot load it as a tensor",
                info.file,
                info.name,
            )
    spill = _Spill()
    for file, infos in _by_file(c.tensors):
        used = {place[t.name] for t in infos}
        with ExitStack() as stack:
            readers = {dev: _opened(file, dev, stack) for dev in sorted(used)}
            for info in infos:
                dev = place[info.name]
                began = time.perf_counter()
                try:
                    tensor = readers[dev](info)
                except (SafetensorError, OSError, ValueError) as exc:
                    raise BigmodelError(f"cannot load ({exc})", file, info.name) from None
                _keep(acc, spill, info, dev, cast(tensor, info.dtype, target), began)
                progress.advance(info.nbytes)
        _finish_file(acc, spill, used)


def _load_pickle(
    c: Component, place: dict[str, str], target: DType | None, acc: Loaded, progress: Progress
) -> None:
    from bigmodel_cli.formats.pickle import load_state_dict

    spill = _Spill()
    for file, infos in _by_file(c.tensors):
        state = load_state_dict(file)  # memory-mapped: disk entries stay as they are
        for info in infos:
            dev = place[info.name]
            began = time.perf_counter()
            tensor = state[info.name]
            if dev == "disk":
                tensor = cast(tensor, info.dtype, target)
            else:
                to = cast_dtype(info.dtype, target)
                tensor = tensor.to(device=torch_device(dev), dtype=to, copy=True)
            _keep(acc, spill, info, dev, tensor, began)
            progress.advance(info.nbytes)
        _finish_file(acc, spill, {place[t.name] for t in infos})
        del state


def load(
    ckpt: Checkpoint, place: dict[str, dict[str, str]], target: DType | None, progress: Progress
) -> Loaded:
    """Every tensor of ``ckpt`` onto the device ``place`` names, cast to ``target``."""
    import torch

    acc = Loaded()
    progress.start(sum(c.nbytes for c in ckpt.components), "loading")
    for c in ckpt.components:
        loader = _load_pickle if c.layout == "pickle" else _load_safetensors
        try:
            loader(c, place[c.name], target, acc, progress)
        except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise FitError(f"out of memory while loading {c.name} ({reason})", c.folder) from None
    return acc


# ---------------------------------------------------------------- verifying (executor)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    import torch

    return tensor.contiguous().reshape(-1).view(torch.uint8)


def _raw(f: Any, info: TensorInfo) -> torch.Tensor:
    """The tensor as the file stores it, read with plain file I/O (no safetensors, no mmap)."""
    import torch

    dtype = torch_dtype(info.dtype)
    if info.numel == 0:
        return torch.empty(info.shape, dtype=dtype)
    buf = bytearray(info.nbytes)
    f.seek(info.start)
    if f.readinto(buf) != info.nbytes:
        raise BigmodelError("file is shorter than its header says", info.file, info.name)
    return torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(info.shape)


def verify(acc: Loaded, target: DType | None, progress: Progress) -> None:
    """Every loaded tensor against the file bytes, after the same cast on the same device."""
    import torch

    from bigmodel_cli.formats.pickle import load_state_dict

    progress.start(sum(info.nbytes for info, _, _ in acc.tensors), "verifying")
    current: Path | None = None
    with ExitStack() as stack:
        f: Any = None
        state: dict[str, Any] = {}
        for info, dev, loaded in acc.tensors:
            if info.file != current:
                stack.close()
                current, state = info.file, {}
                if info.start < 0:
                    state = load_state_dict(info.file)
                else:
                    f = stack.enter_context(open(info.file, "rb", buffering=0))
            expected = state[info.name] if info.start < 0 else _raw(f, info)
            expected = cast(expected.to(loaded.device), info.dtype, target)
            same = (
                expected.shape == loaded.shape
                and expected.dtype == loaded.dtype
                and torch.equal(_bits(expected), _bits(loaded))
            )
            if not same:
                raise BigmodelError(
                    f"loaded tensor on {torch_device(dev)} differs from the bytes in the file",
                    info.file,
                    info.name,
                )
            progress.advance(info.nbytes)
