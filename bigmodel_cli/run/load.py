"""Load a checkpoint's tensors onto their devices, and check them against the files.

The executor half of ``bigmodel run`` (:mod:`.place` decides, :mod:`bigmodel_cli.run`
reports).
Every tensor is read one at a time, in file order:

- a GPU: the file's tensors for it through two pinned staging buffers (:mod:`.gpu_reader`:
  reads overlap the copies; 2.4x ``safe_open(file, device="cuda:N")`` on an H200);
- ``cpu``: a copy-on-write mapping of the file (as ``safe_open``'s mmap backend gives
  tensors), its pages read in now, shared with the page cache: nothing is copied. A
  tensor whose dtype changes is cast into its own memory. With ``--copy``,
  ``safe_open(file, device="cpu", backend="pread")`` reads the bytes into private memory;
- ``disk``: a copy-on-write ``mmap`` of the file viewed as a tensor (``torch.frombuffer``):
  nothing is read until the tensor is used, and the file is never written. A disk tensor
  that ``--dtype`` changes is cast on its own and written to an unnamed temporary file
  (accelerate's offload folder, without the folder), which is then mapped the same way.

Components of formats without raw byte ranges (pickle) are opened with their format's
reader (weights only, memory-mapped) and each tensor is copied to its device; disk ones
stay mapped.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from bigmodel_cli.checkpoint import Checkpoint, Component
from bigmodel_cli.devices import DeviceKey, is_gpu, torch_device
from bigmodel_cli.errors import BigmodelError, FitError
from bigmodel_cli.formats import TensorInfo, format_of
from bigmodel_cli.progress import Progress
from bigmodel_cli.run.gpu_reader import FileSource, StagedReader
from bigmodel_cli.sizes import DTYPES, DType, cast_to, torch_dtype

if TYPE_CHECKING:
    import torch

MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14; 22 in its headers


@dataclass
class Loaded:
    """Accumulated while loading (internal, mutable): tensors in file order, per-device tallies."""

    tensors: list[tuple[TensorInfo, DeviceKey, torch.Tensor]] = field(default_factory=list)
    nbytes: dict[DeviceKey, int] = field(default_factory=dict)
    seconds: dict[DeviceKey, float] = field(default_factory=dict)

    def add(self, info: TensorInfo, dev: DeviceKey, tensor: torch.Tensor, seconds: float) -> None:
        self.tensors.append((info, dev, tensor))
        self.nbytes[dev] = self.nbytes.get(dev, 0) + tensor.numel() * tensor.element_size()
        self.time(dev, seconds)

    def time(self, dev: DeviceKey, seconds: float) -> None:
        self.seconds[dev] = self.seconds.get(dev, 0.0) + seconds


@dataclass(frozen=True)
class _Job:
    """What every tensor of one load shares."""

    target: DType | None  # the dtype floating tensors are loaded at
    acc: Loaded
    progress: Progress
    copy: bool  # cpu tensors into private memory, not mapped
    reader: StagedReader | None = None  # where any tensor goes to a GPU

    def to_gpu(self, dev: DeviceKey, file: Path, infos: list[TensorInfo]) -> list[torch.Tensor]:
        """``infos`` of ``file`` onto GPU ``dev`` through the :class:`~.gpu_reader.StagedReader`."""
        assert self.reader is not None, "a GPU tensor in a load made without a GPU reader"
        began = time.perf_counter()
        try:
            with FileSource(file) as source:
                tensors = self.reader.load(source, infos, torch_device(dev), self.progress.advance)
        except OSError as exc:
            raise BigmodelError(f"cannot load ({exc.strerror or exc})", file) from None
        self.acc.time(dev, time.perf_counter() - began)
        return tensors


def cast_dtype(code: str, target: DType | None) -> torch.dtype:
    """The dtype a ``code`` tensor is loaded at: ``target`` for floating tensors only."""
    return torch_dtype(cast_to(DTYPES[code], target).code)


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


def _mapped(
    file: Path, resident: Sequence[TensorInfo] = ()
) -> Callable[[TensorInfo], torch.Tensor]:
    """Tensors viewed on a mapping of ``file``: nothing is read until they are used, except
    the ``resident`` ones, whose pages are read in now (a cpu load, not a promise)."""
    with open(file, "rb") as f:
        mm = _mapping(f)
    if resident:
        _populate(mm, min(t.start for t in resident), max(t.end for t in resident))
    return lambda info: _view(mm, info.start, info.nbytes, torch_dtype(info.dtype), info.shape)


def _populate(mm: mmap.mmap, start: int, end: int) -> None:
    """Fault in the pages of ``start..end`` for reading (shared with the page cache, no
    copy): ``MADV_POPULATE_READ`` where the kernel has it (5.14+), else a read per page."""
    first = start - start % mmap.PAGESIZE
    if end <= first:
        return
    try:
        mm.madvise(MADV_POPULATE_READ, first, end - first)
    except (OSError, ValueError):
        import numpy as np

        int(np.frombuffer(mm, np.uint8, end - first, first)[:: mmap.PAGESIZE].max())


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
    acc: Loaded, spill: _Spill, info: TensorInfo, dev: DeviceKey, tensor: torch.Tensor, began: float
) -> None:
    """Record one loaded (already cast) tensor; a disk tensor that changed dtype is spilled."""
    if dev == "disk" and tensor.dtype != torch_dtype(info.dtype):
        spill.put(info, tensor)
        acc.time(dev, time.perf_counter() - began)
    else:
        acc.add(info, dev, tensor, time.perf_counter() - began)


def _opened(
    file: Path, dev: DeviceKey, stack: ExitStack, on_dev: Sequence[TensorInfo], copy: bool
) -> Callable[[TensorInfo], torch.Tensor]:
    """A reader of ``file``'s tensors (``on_dev`` of them) onto ``dev``."""
    from safetensors import safe_open

    if dev == "disk":
        return _mapped(file)
    if dev == "cpu" and not copy:
        return _mapped(file, on_dev)
    try:
        cpu = stack.enter_context(safe_open(file, framework="pt", device="cpu", backend="pread"))
    except TypeError:  # safetensors before 0.8 has no backend; its cpu tensors are mapped
        old = stack.enter_context(safe_open(file, framework="pt", device="cpu"))
        return lambda info: old.get_tensor(info.name).clone()
    return lambda info: cpu.get_tensor(info.name)


def _finish_file(acc: Loaded, spill: _Spill, used: set[DeviceKey]) -> None:
    """Wait for the GPUs (their time counts) and map back what was spilled."""
    import torch

    for dev in filter(is_gpu, used):
        began = time.perf_counter()
        torch.cuda.synchronize(dev)
        acc.time(dev, time.perf_counter() - began)
    for info, tensor in spill.take():
        acc.add(info, "disk", tensor, 0.0)


def _load_raw(c: Component, place: dict[str, DeviceKey], job: _Job) -> None:
    """Formats of raw byte ranges (safetensors): each tensor read straight to its device."""
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
        on = {dev: [t for t in infos if place[t.name] == dev] for dev in sorted(used, key=str)}
        staged: dict[str, torch.Tensor] = {}  # GPU tensors: the whole file's at once
        for gpu in filter(is_gpu, on):
            loaded = job.to_gpu(gpu, file, on[gpu])
            staged.update(zip((t.name for t in on[gpu]), loaded, strict=True))
        with ExitStack() as stack:
            readers = {
                dev: _opened(file, dev, stack, on[dev], job.copy) for dev in on if not is_gpu(dev)
            }
            for info in infos:
                dev = place[info.name]
                began = time.perf_counter()
                if info.name in staged:
                    tensor = staged.pop(info.name)
                else:
                    try:
                        tensor = readers[dev](info)
                    except (SafetensorError, OSError, ValueError) as exc:
                        raise BigmodelError(f"cannot load ({exc})", file, info.name) from None
                    job.progress.advance(info.nbytes)
                _keep(job.acc, spill, info, dev, cast(tensor, info.dtype, job.target), began)
        _finish_file(job.acc, spill, used)


def _load_opened(c: Component, place: dict[str, DeviceKey], job: _Job) -> None:
    """Other formats (pickle): opened by their reader, each tensor copied to its device."""
    spill = _Spill()
    for file, infos in _by_file(c.tensors):
        state = _open(file)  # memory-mapped: disk entries stay as they are
        for info in infos:
            dev = place[info.name]
            began = time.perf_counter()
            tensor = state[info.name]
            if dev == "disk":
                tensor = cast(tensor, info.dtype, job.target)
            else:
                to = cast_dtype(info.dtype, job.target)
                tensor = tensor.to(device=torch_device(dev), dtype=to, copy=True)
            _keep(job.acc, spill, info, dev, tensor, began)
            job.progress.advance(info.nbytes)
        _finish_file(job.acc, spill, {place[t.name] for t in infos})
        del state


def _open(file: Path) -> Mapping[str, Any]:
    fmt = format_of(file)
    if fmt is None:
        raise BigmodelError("not a weights file", file)
    return fmt.open(file)


def _is_raw(c: Component) -> bool:
    fmt = format_of(c.files[0]) if c.files else None
    return fmt is not None and fmt.raw


def load_tensors(
    ckpt: Checkpoint,
    place: Mapping[str, dict[str, DeviceKey]],
    target: DType | None,
    progress: Progress,
    copy: bool = False,
) -> Loaded:
    """Every tensor of ``ckpt`` onto the device ``place`` names, cast to ``target``.

    ``cpu`` tensors that keep their dtype are mapped from the file (copy-on-write, read in
    now) unless ``copy`` asks for private memory (read with ``pread``)."""
    import torch

    gpus = any(is_gpu(dev) for devices in place.values() for dev in devices.values())
    job = _Job(target, Loaded(), progress, copy, StagedReader() if gpus else None)
    progress.start(sum(c.nbytes for c in ckpt.components), "loading")
    try:
        for c in ckpt.components:
            loader = _load_raw if _is_raw(c) else _load_opened
            try:
                loader(c, place[c.name], job)
            except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
                reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                what = f"out of memory while loading {c.name} ({reason})"
                raise FitError(what, c.folder) from None
    finally:
        if job.reader is not None:
            job.reader.close()
    return job.acc


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


def verify_tensors(acc: Loaded, target: DType | None, progress: Progress) -> None:
    """Every loaded tensor against the file bytes, after the same cast on the same device."""
    import torch

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
                    state = dict(_open(info.file))
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
