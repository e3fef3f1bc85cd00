"""Files and folders on disk: a sparse-aware tree hash, copies, edits, and what bigmodel
leaves behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any


def tree_hash(path: Path) -> str:
    """sha256 of a file or of a folder tree (names and contents). Sparse-aware: holes are
    hashed as their offsets, so a multi-GB sparse file hashes in milliseconds."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        digest.update(f"{f.relative_to(path) if f != path else f.name}\n".encode())
        with open(f, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            pos = 0
            while pos < size:
                try:
                    data_at = os.lseek(fh.fileno(), pos, os.SEEK_DATA)
                except OSError:  # only a hole remains
                    break
                hole_at = os.lseek(fh.fileno(), data_at, os.SEEK_HOLE)
                digest.update(f"data {data_at}..{hole_at}\n".encode())
                fh.seek(data_at)
                left = hole_at - data_at
                while left:
                    chunk = fh.read(min(left, 1 << 20))
                    digest.update(chunk)
                    left -= len(chunk)
                pos = hole_at
            digest.update(f"size {size}\n".encode())
    return digest.hexdigest()


def wait_for_temp_data(folder: Path, seconds: float = 60) -> None:
    """Wait until a run writing into ``folder`` has put bytes in its temporary folder."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        temps = [p for p in folder.iterdir() if ".bigmodel-tmp-" in p.name]
        if temps and any(f.stat().st_size > 0 for f in temps[0].glob("*")):
            return
        time.sleep(0.005)
    raise AssertionError("the run never started writing")


def leftovers(folder: Path) -> list[str]:
    """Names of temporary folders, old copies or lock files bigmodel left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if ".bigmodel-" in p.name)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def flip_byte(path: Path, offset: int) -> None:
    """Invert every bit of one byte of ``path``, in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        (value,) = f.read(1)
        f.seek(offset)
        f.write(bytes([value ^ 0xFF]))


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())
