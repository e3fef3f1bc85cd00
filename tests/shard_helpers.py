"""Shared test helpers (shard, merge, faults, fuzz): the CLI, tree hashes, tensors, tiny models."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from bigmodel_cli.cli import app
from bigmodel_cli.formats.safetensors import HeaderEntry, build_header, read_header

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
BIGMODEL = str(Path(sys.executable).parent / "bigmodel")

if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))
import make_fixtures  # noqa: E402  (tiny configs of the real libraries)

tiny_unet = make_fixtures.tiny_unet
tiny_vae = make_fixtures.tiny_vae
tiny_llama = make_fixtures.tiny_llama
tiny_text_encoder = make_fixtures.tiny_text_encoder


def cli(*args: str | os.PathLike[str]) -> Any:
    """Run ``bigmodel ARGS`` in-process; the result has exit_code, stdout, output."""
    return CliRunner().invoke(app, [str(a) for a in args])


def fingerprint(path: Path) -> str:
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


def sparse_checkpoint(path: Path, gigabytes: float = 1.5) -> Path:
    """A valid safetensors file with one huge zero tensor, sparse on disk: slow enough to
    catch a run in the middle, cheap to make."""
    count = int(gigabytes * 1e9) // 4
    header = build_header(
        [HeaderEntry("small.weight", "F32", (2,)), HeaderEntry("huge.weight", "F32", (count,))],
        {"format": "pt"},
    )
    with open(path, "wb") as f:
        f.write(header + b"\1" * 8)
        f.truncate(len(header) + 8 + count * 4)
    return path


def wait_for_temp_data(folder: Path, seconds: float = 60) -> None:
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


def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a .safetensors file, or of all such files in a folder."""
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    result: dict[str, torch.Tensor] = {}
    for f in files:
        result.update(load_file(f))
    return result


def bits(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor (NaN-safe, any dtype, 0-d included)."""
    return bytes(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, t in want.items():
        g = got[name]
        assert (g.dtype, tuple(g.shape)) == (t.dtype, tuple(t.shape)), name
        assert bits(g) == bits(t), name


def write_raw(
    path: Path, tensors: Sequence[tuple[str, str, tuple[int, ...], bytes]], **meta: str
) -> None:
    """A safetensors file written byte by byte (any dtype, even those torch lacks)."""
    entries = [HeaderEntry(name, dtype, shape) for name, dtype, shape, _ in tensors]
    with open(path, "wb") as f:
        f.write(build_header(entries, dict(meta) if meta else None))
        for *_, data in tensors:
            f.write(data)


def shard_report(folder: Path) -> list[tuple[str, int, int]]:
    """(file name, tensor bytes, tensor count) of each .safetensors file in ``folder``."""
    rows = []
    for f in sorted(folder.glob("*.safetensors")):
        header = read_header(f)
        rows.append((f.name, sum(t.nbytes for t in header.tensors), len(header.tensors)))
    return rows


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
