"""The one way bytes reach a GPU: two pinned staging buffers, reads overlapping copies.

``safe_open(device="cuda:N")`` pins a fresh host buffer for every tensor and copies it
synchronously. Here the bytes are read in stretches of at most :data:`STAGE` bytes (the
tensors read lie back to back) over a few threads into one of two pinned buffers, while
the GPU copies the other one's bytes into their tensors (``non_blocking``, on a stream of
its own); an event says when a buffer may be refilled. Each tensor is its own allocation,
as with ``safe_open``.

The bytes come from a :class:`Source`: a local file (:class:`FileSource`, ``preadv``) for
``bigmodel run`` and the torchrun ranks' byte ranges, or the Hub's Range requests
(:mod:`.hub_ranges`). The same code runs with ``device="cpu"`` (plain buffers, copies that
finish at once), so the tests check its bookkeeping without a GPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats import TensorInfo
from bigmodel_cli.sizes import torch_dtype

if TYPE_CHECKING:
    import torch

STAGE = 64 << 20  # bytes per staging buffer
PIECE = 16 << 20  # bytes per read call of a file (the threads share a stretch)


class Source(Protocol):
    """Where bytes are read from: ``read_into`` fills all of ``view`` from ``offset``, in
    calls of at most ``piece`` bytes (which may run on several threads at once)."""

    piece: int

    def read_into(self, view: memoryview, offset: int) -> int: ...


class FileSource:
    """A local file, read with ``preadv`` (a context manager: the descriptor is closed)."""

    piece = PIECE

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = open_for_reading(path)

    def read_into(self, view: memoryview, offset: int) -> int:
        return pread_fully(self.fd, view, offset, self.path)

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def stretches(infos: Sequence[TensorInfo], limit: int) -> Iterator[tuple[int, int]]:
    """Byte ranges ``[start, end)`` of the file covering ``infos`` (in file order), each at
    most ``limit`` long, never spanning a gap between tensors that are not read."""
    ordered = sorted((t for t in infos if t.nbytes), key=lambda t: t.start)
    i = 0
    while i < len(ordered):
        start = end = ordered[i].start
        while i < len(ordered) and ordered[i].start == end and end - start < limit:
            end = ordered[i].end
            i += 1
        while start < end:  # a tensor larger than ``limit``: several stretches
            yield start, min(end, start + limit)
            start += limit


class StagedReader:
    """Two staging buffers (pinned when ``pinned``), a copy stream per GPU and the read
    threads, for a whole load (one pair of buffers serves every GPU: sources are read one
    after another)."""

    def __init__(self, pinned: bool = True, threads: int = 4, size: int = STAGE) -> None:
        import torch

        self.size = size
        self.buffers = [torch.empty(size, dtype=torch.uint8, pin_memory=pinned) for _ in range(2)]
        self.streams: dict[str, Any] = {}
        self.stream: Any = None  # the current load's
        self.events: list[Any] = [None, None]
        self.pool = ThreadPoolExecutor(threads)
        self.bytes_read = 0  # counted at the read calls

    def close(self) -> None:
        self.pool.shutdown()

    def __enter__(self) -> StagedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(
        self,
        source: Source,
        infos: Sequence[TensorInfo],
        device: str,
        advance: Callable[[int], None],
    ) -> list[torch.Tensor]:
        """``infos`` of ``source`` as tensors on ``device``, in the order given."""
        import torch

        out = {
            t.name: torch.empty(t.shape, dtype=torch_dtype(t.dtype), device=device) for t in infos
        }
        flat = {name: _bytes(t) for name, t in out.items()}
        self.stream = None
        if device.startswith("cuda"):
            if device not in self.streams:
                self.streams[device] = torch.cuda.Stream(device)
            self.stream = self.streams[device]
            # the tensors' memory may still be in use by work queued on the default stream
            self.stream.wait_stream(torch.cuda.current_stream(device))
        ordered = sorted((t for t in infos if t.nbytes), key=lambda t: t.start)
        k = 0
        for n, (start, end) in enumerate(stretches(ordered, self.size)):
            slot = n % 2
            self._wait(slot)
            buf = host_bytes(self.buffers[slot])
            self.bytes_read += read_pieces(self.pool, source, buf, start, end, advance)
            while k < len(ordered) and ordered[k].end <= start:
                k += 1
            parts = [(t, flat[t.name]) for t in _within(ordered, k, start, end)]
            self._copy(slot, parts, start)
        for slot in range(2):
            self._wait(slot)
        return [out[t.name] for t in infos]

    def _copy(self, slot: int, parts: list[tuple[TensorInfo, torch.Tensor]], start: int) -> None:
        """Each tensor's bytes within the stretch from the buffer into the tensor."""
        import torch

        buf = self.buffers[slot]
        end = start + self.size
        on_stream = self.stream is not None
        with torch.cuda.stream(self.stream) if on_stream else contextlib.nullcontext():
            for info, dst in parts:
                lo, hi = max(info.start, start), min(info.end, end)
                src = buf[lo - start : hi - start]
                dst[lo - info.start : hi - info.start].copy_(src, non_blocking=True)
            if self.stream is not None:
                event = torch.cuda.Event()
                event.record(self.stream)
                self.events[slot] = event

    def _wait(self, slot: int) -> None:
        event = self.events[slot]
        if event is not None:
            event.synchronize()
            self.events[slot] = None


def read_pieces(
    pool: ThreadPoolExecutor,
    source: Source,
    buf: memoryview,
    start: int,
    end: int,
    advance: Callable[[int], None],
) -> int:
    """Bytes ``start..end`` of ``source`` into the front of ``buf``, ``source.piece`` bytes
    per task of ``pool`` (``advance`` told each); the bytes read."""
    view = buf[: end - start]
    step = source.piece

    def piece(at: int) -> int:
        got = source.read_into(view[at : at + step], start + at)
        advance(got)
        return got

    return sum(pool.map(piece, range(0, end - start, step)))


def _within(ordered: Sequence[TensorInfo], k: int, start: int, end: int) -> Iterator[TensorInfo]:
    while k < len(ordered) and ordered[k].start < end:
        if ordered[k].end > start:
            yield ordered[k]
        k += 1


def host_bytes(tensor: torch.Tensor) -> memoryview:
    """The writable bytes of a contiguous cpu uint8 tensor."""
    array: Any = tensor.numpy()
    return memoryview(array)


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a contiguous tensor's bytes."""
    import torch

    return tensor.reshape(-1).view(torch.uint8)


def pread_fully(fd: int, view: memoryview, offset: int, file: Path) -> int:
    """``len(view)`` bytes of ``fd`` from ``offset`` into ``view``; a file that ends first
    is one error naming it."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done : done + STAGE]], offset + done)  # bounded calls
        if got <= 0:
            raise BigmodelError("file is shorter than its header says", file)
        done += got
    return done


def open_for_reading(path: Path) -> int:
    """A read-only descriptor of ``path``; failing, the one-line error naming it."""
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise BigmodelError(f"cannot open ({exc.strerror})", path) from None
