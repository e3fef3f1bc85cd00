"""gpu_check's harness: the run's context, its child processes (each with a timeout,
killed with its process group), steps that fail or are skipped with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import last_line, short  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


TINY = ROOT / "fixtures" / "tiny-pipeline"
CHECK = Path(__file__).resolve().with_name("gpu_check.py")  # its children: --child KIND


class StepFailed(Exception):
    """A step's failure, one line."""


class StepSkipped(Exception):
    """A step that could not run here, one line."""


@dataclass
class Result:
    step: str
    status: str
    seconds: float
    note: str


@dataclass
class Ctx:
    work: Path
    gb: float
    dry: bool
    deadline: float
    out: Path | None
    env: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    _checkpoint: Path | None = None
    _checkpoint_error: str | None = None

    @property
    def dev(self) -> str:
        """The plan's device id of the load: "0", or "cpu" in a dry run."""
        return "cpu" if self.dry else "0"

    @property
    def torch_dev(self) -> str:
        return "cpu" if self.dry else "cuda:0"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self, limit: float) -> float:
        left = self.left()
        if left < 5:
            raise StepSkipped("the time budget is used up (GPU_CHECK_BUDGET_S)")
        return min(limit, left)


@dataclass
class Proc:
    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def call(ctx: Ctx, cmd: list[str], limit: float, env: dict[str, str] | None = None) -> Proc:
    """Run ``cmd`` in its own process group; on timeout the whole group is killed."""
    timeout = ctx.timeout(limit)
    began = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or ctx.env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        tail = " | ".join(err.strip().splitlines()[-3:])
        raise StepFailed(
            f"timed out after {timeout:.0f} s: {short(cmd)}"
            + (f" (stderr: {tail})" if tail else "")
        ) from None
    return Proc(cmd, proc.returncode, out, err, time.monotonic() - began)


def bigmodel(ctx: Ctx, *args: str, limit: float = 120) -> Proc:
    return call(ctx, [sys.executable, "-m", "bigmodel_cli", *args], limit)


def child(ctx: Ctx, kind: str, *args: str, limit: float = 120, env: dict[str, str] | None = None):
    """This file as a child (``--child KIND``); its last stdout line is a JSON document."""
    p = call(ctx, [sys.executable, str(CHECK), "--child", kind, *args], limit, env)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        raise StepFailed(f"{kind} child failed (exit {p.returncode}): {last_line(p.stderr)}")
    return json.loads(lines[-1])


def must_succeed(p: Proc) -> Proc:
    if p.returncode != 0:
        tail = "\n".join(p.stderr.strip().splitlines()[-15:])
        if tail:
            print(f"stderr of `{short(p.cmd)}` (last lines):\n{tail}")
        raise StepFailed(f"`{short(p.cmd)}` exit {p.returncode}: {last_line(p.stderr)}")
    return p
