"""Execute a :class:`~bigmodel_cli.sharding.plan.WritePlan`: stream bytes into new files.

Each output file gets its header first, then its tensors in order. A tensor whose dtype
stays is copied range by range in the kernel (``os.copy_file_range``, else ``sendfile``,
else a fixed buffer); one whose dtype changes is read and cast in bounded chunks with
torch. Memory stays flat whatever the model size. :func:`verify` re-reads what was
written before the output folder is renamed into place.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats import format_of
from bigmodel_cli.formats.dcp import DcpTensors, Span
from bigmodel_cli.formats.index import read_index
from bigmodel_cli.formats.safetensors import ALIGNMENT, build_header, read_header
from bigmodel_cli.progress import Progress
from bigmodel_cli.sharding.plan import ComponentPlan, FileCopy, OutputFile, TensorSlot, WritePlan
from bigmodel_cli.sizes import DTYPES, format_size, torch_dtype

if TYPE_CHECKING:
    import torch

PAGE = 4096
COPY_CHUNK = 64 << 20  # bytes per copy_file_range / sendfile call: progress and Ctrl-C stay live
BUFFER = 8 << 20  # the buffered fallback's read size
CONVERT_CHUNK = 4 << 20  # source bytes cast per step when --dtype changes a tensor
# Errors meaning "this way of copying does not work here": try the next one.
_UNSUPPORTED = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOTSOCK}
)


def aligned_header(f: OutputFile, metadata: dict[str, str]) -> bytes:
    """The file's header, padded with spaces (as safetensors pads) so that the data starts at
    the same offset within a page as the first tensor does in its source: the kernel then
    copies whole pages, as fast as ``cp``. Without an 8-aligned source offset: no padding."""
    header = build_header((t.entry for t in f.tensors), metadata)
    source = f.tensors[0].start if f.tensors else -1
    pad = (source - len(header)) % PAGE
    if source < 0 or source % ALIGNMENT or f.tensors[0].converts or not pad:
        return header
    raw = header[8:] + b" " * pad
    return struct.pack("<Q", len(raw)) + raw


def write_all(fd: int, data: Any) -> None:
    """Write all of a buffer (bytes, memoryview, numpy array) at the fd's position."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


class RangeCopier:
    """Copies byte ranges between files, with the fastest call the system allows."""

    def __init__(self) -> None:
        self.method = "copy_file_range" if hasattr(os, "copy_file_range") else "sendfile"
        self._buffer: bytearray | None = None

    def copy(self, src: int, offset: int, length: int, dst: int, progress: Progress) -> None:
        """Append ``length`` bytes of ``src`` from ``offset`` at ``dst``'s position."""
        while length > 0:
            done = self._copy_some(src, offset, min(length, COPY_CHUNK), dst)
            if done <= 0:
                raise OSError(errno.EIO, "source file ended early (changed while copying?)")
            offset += done
            length -= done
            progress.advance(done)

    def _copy_some(self, src: int, offset: int, count: int, dst: int) -> int:
        if self.method == "copy_file_range":
            try:
                return os.copy_file_range(src, dst, count, offset)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                self.method = "sendfile"
        if self.method == "sendfile":
            try:
                return os.sendfile(dst, src, offset, count)
            except (OSError, AttributeError) as exc:
                if isinstance(exc, OSError) and exc.errno not in _UNSUPPORTED:
                    raise
                self.method = "read"
        if self._buffer is None:
            self._buffer = bytearray(BUFFER)
        view = memoryview(self._buffer)[: min(count, BUFFER)]
        done = os.preadv(src, [view], offset)
        write_all(dst, view[:done])
        return done


class Sources:
    """Source files opened read-only (never written), and the tensors of one file at a time
    for formats without raw byte ranges (pickle), opened through the format's reader."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._opened: tuple[Path, Mapping[str, Any]] | None = None

    def fd(self, path: Path) -> int:
        if path not in self._fds:
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as exc:
                raise BigmodelError(f"cannot open ({exc.strerror})", path) from None
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            self._fds[path] = fd
        return self._fds[path]

    def _open(self, file: Path) -> Mapping[str, Any]:
        if self._opened is None or self._opened[0] != file:
            self._close_opened()
            fmt = format_of(file)
            if fmt is None:
                raise BigmodelError("not a weights file", file)
            self._opened = (file, fmt.open(file))
        return self._opened[1]

    def tensor(self, slot: TensorSlot) -> torch.Tensor:
        tensor = self._open(slot.file).get(slot.name)
        if tensor is None:
            raise BigmodelError("tensor disappeared from the checkpoint", slot.file, slot.name)
        return tensor

    def spans(self, slot: TensorSlot) -> tuple[Span, ...] | None:
        """The byte ranges of a tensor stored in pieces (DCP's chunks), in order; or None."""
        opened = self._open(slot.file)
        return opened.spans(slot.name) if isinstance(opened, DcpTensors) else None

    def _close_opened(self) -> None:
        if self._opened is not None and isinstance(self._opened[1], DcpTensors):
            self._opened[1].close()
        self._opened = None

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._close_opened()


def check_conversions(plan: WritePlan) -> None:
    """Refuse, before writing, a ``--dtype`` cast that torch cannot do (sub-byte floats)."""
    pairs = {
        (t.source_dtype, t.dtype): t
        for c in plan.components
        for f in c.files
        for t in f.tensors
        if t.converts
    }
    if not pairs:
        return
    import torch

    for (src, dst), slot in pairs.items():
        try:
            if DTYPES[src].bits % 8 or DTYPES[dst].bits % 8:
                raise TypeError("sub-byte dtype")
            torch.zeros(2, dtype=torch_dtype(src)).to(torch_dtype(dst))
        except (BigmodelError, RuntimeError, TypeError):
            raise BigmodelError(
                f"cannot convert {src} to {dst} (no such cast in torch {torch.__version__})",
                slot.file,
                slot.name,
            ) from None


def check_space(plan: WritePlan, folder: Path) -> None:
    """Refuse early when the output's disk clearly cannot hold what will be written."""
    try:
        need = sum(c.nbytes for c in plan.components)
        need += sum(os.stat(copy.source).st_size for copy in plan.copies)
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise BigmodelError(f"cannot check free space ({exc.strerror})", plan.output) from None
    if need > free:
        raise BigmodelError(
            f"needs {format_size(need)} but only {format_size(free)} is free on its disk",
            plan.output,
        )


def execute(
    plan: WritePlan, root: Path, progress: Progress, only: Collection[str] | None = None
) -> int:
    """Write every file of ``plan`` under ``root`` (``only``: just these paths relative to
    OUT, as one rank of a distributed ``shard`` does); returns the bytes written."""
    check_conversions(plan)
    sources = Sources()
    try:
        return _execute(plan, root, sources, progress, only)
    except OSError as exc:  # a folder that cannot be made, a mode that cannot be set
        raise BigmodelError(f"cannot write ({exc.strerror or exc})", plan.output) from None
    finally:
        sources.close()


def _execute(
    plan: WritePlan, root: Path, sources: Sources, progress: Progress, only: Collection[str] | None
) -> int:
    def mine(rel: str) -> bool:
        return only is None or rel in only

    for rel in plan.folders:
        (root / rel).mkdir(parents=True, exist_ok=True)
    copier = RangeCopier()
    written = 0
    verb = "sharding" if plan.mode == "shard" else "merging"
    for c in plan.components:
        progress.start(sum(f.nbytes for f in c.files if mine(c.path(f.name))), f"{verb} {c.name}")
        (root / c.folder).mkdir(parents=True, exist_ok=True)
        for f in (f for f in c.files if mine(c.path(f.name))):
            written += _write_file(plan, c, f, root, sources, copier, progress)
        text = c.index_text()
        if text is not None and c.index_name is not None and mine(c.path(c.index_name)):
            data = text.encode("utf-8")
            _new_file(root / c.path(c.index_name), plan.output / c.path(c.index_name), data)
            written += len(data)
    copies = [copy for copy in plan.copies if mine(copy.target)]
    if copies:
        progress.start(sum(os.stat(c.source).st_size for c in copies), "copying files")
    for copy in copies:
        written += _copy_file(plan, copy, root, copier, progress)
    return written


@contextmanager
def _creating(path: Path, shown: Path) -> Iterator[int]:
    """A new file open for writing; OS errors become one line naming the file in OUT."""
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644
        )
    except OSError as exc:
        raise BigmodelError(f"cannot create file ({exc.strerror})", shown) from None
    try:
        yield fd
    except OSError as exc:
        raise BigmodelError(f"cannot write ({exc.strerror or exc})", shown) from None
    finally:
        os.close(fd)


def _new_file(path: Path, shown: Path, data: bytes) -> None:
    with _creating(path, shown) as fd:
        write_all(fd, data)


def _write_file(
    plan: WritePlan,
    c: ComponentPlan,
    f: OutputFile,
    root: Path,
    sources: Sources,
    copier: RangeCopier,
    progress: Progress,
) -> int:
    header = aligned_header(f, c.metadata)
    with _creating(root / c.path(f.name), plan.output / c.path(f.name)) as fd:
        write_all(fd, header)
        for piece in pieces(f.tensors, sources.spans):
            if isinstance(piece, ByteRange):
                copier.copy(sources.fd(piece.file), piece.start, piece.length, fd, progress)
            elif piece.start < 0:
                _write_tensor(sources.tensor(piece), piece, fd, progress)
            else:
                _convert_range(sources.fd(piece.file), piece, fd, progress)
    return len(header) + f.nbytes


@dataclass(frozen=True)
class ByteRange:
    """Bytes copied as they are: neighbouring tensors of one source file, merged."""

    file: Path
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def pieces(
    tensors: Iterable[TensorSlot],
    spans: Callable[[TensorSlot], tuple[Span, ...] | None] = lambda t: None,
) -> list[ByteRange | TensorSlot]:
    """The write schedule of a file: raw byte ranges (one kernel copy for a run of adjacent
    tensors, which is as fast as ``cp``), and the tensors that torch must read or cast. A
    tensor stored in pieces (``spans``) is its pieces in order, each copied or cast."""
    result: list[ByteRange | TensorSlot] = []
    for slot in tensors:
        found = spans(slot) if slot.start < 0 else None
        for t in [slot] if found is None else [split_slot(slot, s) for s in found]:
            last = result[-1] if result else None
            if t.start < 0 or t.converts:
                result.append(t)
            elif isinstance(last, ByteRange) and last.file == t.file and last.end == t.start:
                result[-1] = ByteRange(t.file, last.start, t.end)
            else:
                result.append(ByteRange(t.file, t.start, t.end))
    return result


def split_slot(slot: TensorSlot, span: Span) -> TensorSlot:
    """The stretch ``span`` of ``slot``'s tensor, as a slot of its own (raw bytes)."""
    count = (span.end - span.start) * 8 // DTYPES[slot.source_dtype].bits
    return replace(slot, shape=(count,), file=span.file, start=span.start, end=span.end)


def _convert_range(src: int, slot: TensorSlot, dst: int, progress: Progress) -> None:
    """Cast a tensor's bytes from the file in chunks of about CONVERT_CHUNK bytes."""
    import torch

    width = DTYPES[slot.source_dtype].bits // 8
    step = max(width, CONVERT_CHUNK // width * width)
    buffer = bytearray(min(step, slot.end - slot.start))
    target = torch_dtype(slot.dtype)
    source = torch_dtype(slot.source_dtype)
    pos = slot.start
    while pos < slot.end:
        view = memoryview(buffer)[: min(step, slot.end - pos)]
        got = os.preadv(src, [view], pos)
        if got != len(view):
            raise BigmodelError("file ended early (changed while reading?)", slot.file, slot.name)
        values = torch.frombuffer(view, dtype=source).to(target)
        write_all(dst, values.view(torch.uint8).numpy())
        progress.advance(values.numel() * values.element_size())
        pos += got


def _write_tensor(tensor: torch.Tensor, slot: TensorSlot, dst: int, progress: Progress) -> None:
    """Write a tensor loaded by torch (pickle sources), cast if asked, in bounded chunks."""
    import torch

    flat = tensor.detach().reshape(-1)
    target = torch_dtype(slot.dtype) if slot.converts else None
    width = max(flat.element_size(), DTYPES[slot.dtype].bits // 8, 1)
    step = max(1, CONVERT_CHUNK // width)
    for i in range(0, flat.numel(), step):
        piece = flat[i : i + step]
        if target is not None:
            piece = piece.to(target)
        data = piece.contiguous().view(torch.uint8)
        write_all(dst, data.numpy())
        progress.advance(data.numel())


def _copy_file(
    plan: WritePlan, copy: FileCopy, root: Path, copier: RangeCopier, progress: Progress
) -> int:
    try:
        src = os.open(copy.source, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise BigmodelError(f"cannot open ({exc.strerror})", copy.source) from None
    try:
        size = os.fstat(src).st_size
        with _creating(root / copy.target, plan.output / copy.target) as dst:
            copier.copy(src, 0, size, dst, progress)
        shutil.copymode(copy.source, root / copy.target)
    finally:
        os.close(src)
    return size


def verify(plan: WritePlan, root: Path) -> None:
    """Re-read every written header and index and compare them with the plan."""
    for c in plan.components:
        for f in c.files:
            header = read_header(root / c.path(f.name))
            got = [(t.name, t.dtype, t.shape, t.nbytes) for t in header.tensors]
            want = [(t.name, t.dtype, t.shape, t.nbytes) for t in f.tensors]
            if got != want or header.metadata != c.metadata:
                raise BigmodelError(
                    "written file does not match the plan (tensors or metadata differ)",
                    plan.output / c.path(f.name),
                )
        if c.index_name is not None:
            index = read_index(root / c.path(c.index_name))
            if index.weight_map != c.weight_map() or index.total_size != c.nbytes:
                raise BigmodelError(
                    "written index does not match the plan", plan.output / c.path(c.index_name)
                )
    for copy in plan.copies:
        if os.stat(root / copy.target).st_size != os.stat(copy.source).st_size:
            raise BigmodelError("copy differs in size from its source", plan.output / copy.target)
