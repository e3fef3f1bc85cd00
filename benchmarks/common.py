"""Shared benchmark tools: GB-scale checkpoints made at run time, and timed child processes.

Peak RSS is read from the child's own rusage (``os.wait4``), so no external tool is needed.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bigmodel_cli.formats.safetensors import HeaderEntry, build_header
from bigmodel_cli.sizes import DTYPES

VENV_BIN = Path(sys.executable).parent
BIGMODEL = str(VENV_BIN / "bigmodel")

# Realistic SD-1.5 UNet shapes (fp32), repeated until the target size is reached.
UNET_SHAPES: list[tuple[str, tuple[int, ...]]] = [
    ("conv_in.weight", (320, 4, 3, 3)),
    ("time_embedding.linear_1.weight", (1280, 320)),
    ("time_embedding.linear_2.weight", (1280, 1280)),
    ("down_blocks.{i}.resnets.0.conv1.weight", (640, 640, 3, 3)),
    ("down_blocks.{i}.resnets.0.conv2.weight", (640, 640, 3, 3)),
    ("down_blocks.{i}.resnets.0.time_emb_proj.weight", (640, 1280)),
    ("down_blocks.{i}.attentions.0.proj_in.weight", (640, 640)),
    ("down_blocks.{i}.attentions.0.transformer_blocks.0.attn1.to_q.weight", (640, 640)),
    ("down_blocks.{i}.attentions.0.transformer_blocks.0.attn2.to_k.weight", (640, 768)),
    ("down_blocks.{i}.attentions.0.transformer_blocks.0.ff.net.0.proj.weight", (5120, 640)),
    ("down_blocks.{i}.attentions.0.transformer_blocks.0.ff.net.2.weight", (640, 2560)),
    ("down_blocks.{i}.attentions.0.norm.bias", (640,)),
    ("mid_block.resnets.{i}.conv1.weight", (1280, 1280, 3, 3)),
    ("up_blocks.{i}.resnets.0.conv1.weight", (1280, 2560, 3, 3)),
    ("up_blocks.{i}.resnets.0.conv2.weight", (1280, 1280, 3, 3)),
    ("up_blocks.{i}.attentions.0.transformer_blocks.0.ff.net.0.proj.weight", (10240, 1280)),
]


def unet_like_entries(total_bytes: int) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes (fp32) whose bytes add up to about ``total_bytes``."""
    entries: list[tuple[str, tuple[int, ...]]] = []
    size = 0
    i = 0
    while size < total_bytes:
        for pattern, shape in UNET_SHAPES:
            name = pattern.format(i=i)
            if name in dict(entries):
                continue
            entries.append((name, shape))
            size += DTYPES["F32"].nbytes(math.prod(shape))
            if size >= total_bytes:
                break
        i += 1
    return entries


def write_safetensors(
    path: Path, entries: list[tuple[str, tuple[int, ...]]], dtype: str = "F32"
) -> int:
    """A valid safetensors file of random bytes in ``entries``' shapes; returns its size.
    The header is the package's own (``build_header``), widths from its one dtype table."""
    tensors = [HeaderEntry(name, dtype, shape) for name, shape in entries]
    header = build_header(tensors, {"format": "pt"})
    total = sum(t.nbytes for t in tensors)
    chunk = os.urandom(16 << 20)
    with open(path, "wb") as f:
        f.write(header)
        left = total
        while left:
            step = min(left, len(chunk))
            f.write(chunk[:step])
            left -= step
    return len(header) + total


@contextmanager
def temp_dir(prefix: str = "bigmodel-bench-") -> Iterator[Path]:
    """A scratch folder on the same disk as the repo's temp space, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss: int  # bytes
    returncode: int


GNU_TIME = "/usr/bin/time"


def bench_env() -> dict[str, str]:
    """This environment, except that Python may cache bytecode: an installed package has
    its .pyc files, and a sandbox's PYTHONDONTWRITEBYTECODE=1 would make every child
    recompile our modules, timing the compiler instead of the command."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def measure(cmd: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run ``cmd``: wall time and its peak RSS.

    The RSS comes from GNU time's ``%M`` where it exists (a small C parent, so the figure
    is the command's own); otherwise from ``os.wait4``'s rusage, which can include the
    pre-exec copy of this Python process, so it is then an upper bound.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        wrapped = [GNU_TIME, "-f", "%M", "-o", rss.name, *cmd] if os.path.exists(GNU_TIME) else cmd
        start = time.perf_counter()
        proc = subprocess.Popen(
            wrapped, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env or bench_env()
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise SystemExit(f"benchmark command failed ({code}): {' '.join(cmd)}\n{err}")
        text = rss.read().strip().splitlines()
        kib = int(text[-1]) if text and text[-1].isdigit() else usage.ru_maxrss
    return Measured(seconds, kib * 1024, code)


def warm_cache(path: Path) -> None:
    """Read a file (or every file under a folder) once so the page cache holds it."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass


def row(label: str, m: Measured, baseline: Measured | None = None) -> str:
    ratio = f"{m.seconds / baseline.seconds:5.2f}x" if baseline else "    -"
    return f"| {label:<44} | {m.seconds:8.2f} s | {ratio} | {m.peak_rss / 1e6:9.1f} MB |"


def table_header(title: str) -> str:
    return f"\n### {title}\n\n| command | time | vs baseline | peak RSS |\n|---|---:|---:|---:|"


def median_of(cmd: list[str], repeats: int) -> Measured:
    """Median wall time of ``repeats`` runs (peak RSS: the largest seen)."""
    runs = [measure(cmd) for _ in range(repeats)]
    return Measured(statistics.median(m.seconds for m in runs), max(m.peak_rss for m in runs), 0)


def imports_torch(args: list[str]) -> bool:
    """Whether ``bigmodel ARGS`` imports torch (``python -X importtime`` lists it)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bigmodel_cli", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return any(line.split("|")[-1].strip() == "torch" for line in proc.stderr.splitlines())


# ---------------------------------------------------------------- step reports (gpu_check)


def short(cmd: list[str]) -> str:
    text = " ".join(str(c) for c in cmd).replace(sys.executable, "python")
    return text if len(text) < 200 else text[:197] + "..."


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def meminfo() -> str:
    try:
        rows = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return f"RAM total {rows['MemTotal'].strip()}, available {rows['MemAvailable'].strip()}"
    except (OSError, KeyError, ValueError):
        return "RAM: unknown"


def cells(*values: object) -> str:
    """A markdown table row."""
    return "| " + " | ".join(str(v).replace("|", "/") for v in values) + " |"


def gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.3f} GB"


def mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB"
