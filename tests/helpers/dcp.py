"""Training checkpoints written by the real writers under the real torchrun
(:mod:`tests.helpers.dcp_writer`, :mod:`tests.helpers.zero_writer`), with every process
killed at the end whatever happens."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers.torchrun import TORCHRUN, WAIT, agents, rank_env

WRITER = Path(__file__).with_name("dcp_writer.py")


def write_dcp(out: Path, kind: str, nproc: int) -> Path:
    """``out/checkpoint`` (DCP, written by ``nproc`` gloo ranks) and ``out/reference`` (the
    same weights saved by transformers); ``kind``: ``fsdp`` or ``plain``."""
    return run_writer(WRITER, nproc, out, kind)


def run_writer(script: Path, nproc: int, out: Path, *args: str) -> Path:
    """``torchrun --nproc-per-node NPROC SCRIPT OUT ARGS``; ``out`` once it succeeded."""
    cmd = [TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", str(script), str(out), *args]
    with agents() as group:
        proc = subprocess.Popen(
            cmd,
            env=rank_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        group.procs.append(proc)
        done = group.finish(proc, WAIT)
    assert done.code == 0, done.stderr[-3000:]
    return out
