"""Which pages of a file the kernel holds in its page cache (``mincore``), and dropping
them (``posix_fadvise(DONTNEED)``): what a process read by page faults through a mapping,
which no I/O counter of the process sees.

Reading one page makes the kernel read around it (readahead: 128 KiB on many disks,
8 MiB on some virtual ones): :func:`read_around` measures it here, so that a test can
leave room for it instead of guessing.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def evict(path: Path) -> None:
    """Write back and drop ``path``'s pages from the page cache (clean, unmapped ones go)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident(path: Path) -> bytes:
    """One byte per page of ``path``: 1 where the page is in the page cache. Mapping the
    file to ask reads nothing (``mincore`` only looks)."""
    size = os.path.getsize(path)
    if size == 0:
        return b""
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed", str(path))
        try:
            vec = ctypes.create_string_buffer((size + PAGE - 1) // PAGE)
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed", str(path))
            return bytes(b & 1 for b in vec.raw)
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def resident_bytes(path: Path, start: int, end: int) -> int:
    """Bytes of the pages of ``[start, end)`` in the page cache (whole pages)."""
    pages = resident(path)
    return sum(pages[start // PAGE : (end + PAGE - 1) // PAGE]) * PAGE


def read_around(folder: Path, size: int = 256 << 20) -> int:
    """How far the kernel reads beyond one page read through a mapping, on ``folder``'s
    file system: the bytes made resident by touching one page in the middle of a sparse
    file, after dropping its pages (``size`` when eviction does not work here: tmpfs)."""
    path = folder / "read-around.probe"
    with open(path, "wb") as f:
        f.truncate(size)
    try:
        evict(path)
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            m[size // 2]
        return sum(resident(path)) * PAGE
    finally:
        path.unlink()
