"""torchrun for tests: agents on 127.0.0.1 with free ports, bounded waits, and every process
(the agents and their workers, each agent in a session of its own) killed at teardown.

:func:`launch` starts one torchrun agent running ``-m bigmodel_cli ARGS``: standalone
(``--standalone``) or one node of several (``--nnodes N --node-rank K --rdzv-endpoint
127.0.0.1:PORT``). :class:`Agents` holds the agents of one test and kills their process
groups when the test ends, whatever happened.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import ROOT

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
WAIT = 120  # seconds an agent may take before the test fails (never a timing assertion)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_env(**extra: str) -> dict[str, str]:
    """This environment with bigmodel importable from this checkout, one thread per rank."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    env["OMP_NUM_THREADS"] = "1"
    env["BIGMODEL_DIST_TIMEOUT"] = "60"
    return env | extra


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str

    def bigmodel_lines(self) -> list[str]:
        """Our own lines on stderr (torchrun's agent adds its failure summary after them)."""
        return [line for line in self.stderr.splitlines() if line.startswith("bigmodel:")]


@dataclass
class Agents:
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def launch(
        self,
        args: Sequence[str | os.PathLike[str]],
        nproc: int,
        cwd: Path,
        nodes: int = 1,
        node_rank: int = 0,
        port: int | None = None,
        probe: Path | None = None,
    ) -> subprocess.Popen[str]:
        where = (
            ["--standalone"]
            if nodes == 1
            else [
                f"--nnodes={nodes}",
                f"--node-rank={node_rank}",
                f"--rdzv-endpoint=127.0.0.1:{port}",
            ]
        )
        # with ``probe``, each rank records what its load read as the kernel counts it
        main = ["tests.helpers.rank_io", str(probe)] if probe else ["bigmodel_cli"]
        cmd = [TORCHRUN, *where, f"--nproc-per-node={nproc}", "-m", *main]
        proc = subprocess.Popen(
            [*cmd, *map(str, args)],
            cwd=cwd,
            env=rank_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: killed whole at teardown
        )
        self.procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen[str], seconds: float = WAIT) -> Finished:
        out, err = proc.communicate(timeout=seconds)
        return Finished(proc.returncode, out, err)

    def kill_all(self) -> None:
        """SIGKILL every agent and every worker left (torchrun starts each worker in a
        session of its own, so each process group is killed by its leader's id)."""
        import psutil

        leaders: list[psutil.Process] = []
        for proc in self.procs:
            if proc.poll() is not None:  # reaped: its id may be someone else's by now
                continue
            with suppress(psutil.Error):
                agent = psutil.Process(proc.pid)
                leaders += [agent, *agent.children(recursive=True)]
        for leader in leaders:
            with suppress(psutil.Error, ProcessLookupError, PermissionError):
                if leader.is_running():  # the same process (its start time), not a reused id
                    os.killpg(leader.pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait(timeout=30)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


@contextmanager
def agents() -> Iterator[Agents]:
    group = Agents()
    try:
        yield group
    finally:
        group.kill_all()


def run_world(
    args: Sequence[str | os.PathLike[str]],
    nproc: int,
    cwd: Path,
    nodes: int = 1,
    probe: Path | None = None,
) -> list[Finished]:
    """``bigmodel ARGS`` under torchrun: ``nodes`` agents of ``nproc`` processes each, all
    on 127.0.0.1; the agents' results in node order. With ``probe`` (a folder), each rank
    writes there what its load read, as the kernel counts it (:mod:`.rank_io`)."""
    with agents() as group:
        port = free_port() if nodes > 1 else None
        procs = [group.launch(args, nproc, cwd, nodes, k, port, probe) for k in range(nodes)]
        return [group.finish(p) for p in procs]


def worker_of(agent: subprocess.Popen[str], rank: int, seconds: float = 60) -> int:
    """The pid of the worker with RANK ``rank`` among ``agent``'s children."""
    import psutil

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for child in psutil.Process(agent.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank):
                    return int(child.pid)
            except psutil.Error:
                continue
        time.sleep(0.01)
    raise AssertionError(f"no worker with RANK={rank} under torchrun pid {agent.pid}")
