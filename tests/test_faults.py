"""Fault injection at every write point of shard, merge and plan -o.

A clean run is traced once to count its calls to the functions that change the disk; then
the run is repeated once per call site with that call failing: ENOSPC, EIO, or an
interrupt (SIGINT and SIGTERM both arrive as KeyboardInterrupt, see cli.main). After
each: no OUT (or the previous OUT intact), no temporary file or folder, the source's
bytes unchanged, one line on stderr and the documented exit status.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.checkpoints import sparse_checkpoint
from tests.helpers.cli import BIGMODEL, FIXTURES, CliResult, run_cli
from tests.helpers.trees import tree_hash, wait_for_temp_data

OLD_CHECKPOINT = FIXTURES / "single.safetensors"  # what an earlier run left in OUT
POINTS = ("open", "write", "copy_file_range", "sendfile", "rename", "replace", "mkdir", "ftruncate")


class Injector:
    """Wraps the ``os`` functions that change the disk; fails call number ``fail_at``."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, fault: BaseException | None, fail_at: int
    ) -> None:
        self.calls = 0
        self.fault = fault
        self.fail_at = fail_at
        for name in POINTS:
            real = getattr(os, name, None)
            if real is not None:
                monkeypatch.setattr(os, name, self._wrap(name, real))

    def _wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if name == "open" and not (args[1] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                return real(*args, **kwargs)  # reads change nothing
            self.calls += 1
            if self.fault is not None and self.calls == self.fail_at:
                raise self.fault
            return real(*args, **kwargs)

        return call


def count_points(
    monkeypatch: pytest.MonkeyPatch,
    run: Callable[[], CliResult],
    out: Path,
    cleanup: Callable[[], None],
) -> tuple[int, str]:
    """Calls a clean run makes, and the digest of what it writes."""
    with monkeypatch.context() as m:
        injector = Injector(m, None, 0)
        result = run()
    assert result.code == 0, result.stderr
    written = tree_hash(out)
    cleanup()
    return injector.calls, written


def sample(n: int, most: int = 25) -> list[int]:
    """Every call site when there are few; else an even spread including first and last."""
    if n <= most:
        return list(range(1, n + 1))
    return sorted({1 + round(i * (n - 1) / (most - 1)) for i in range(most)})


FAULTS = {
    "ENOSPC": OSError(errno.ENOSPC, "No space left on device"),
    "EIO": OSError(errno.EIO, "Input/output error"),
    "SIGINT/SIGTERM": KeyboardInterrupt(),
}


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize(
    ("command", "source", "extra"),
    [
        ("shard", FIXTURES / "tiny-pipeline", ["--max-shard-size", "500KB"]),
        ("shard", FIXTURES / "tiny-llama", ["--max-shard-size", "300KB", "--dtype", "bf16"]),
        ("merge", FIXTURES / "tiny-llama", []),
    ],
    ids=["shard-pipeline", "shard-llama-bf16", "merge-llama"],
)
@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "force-over-old"])
def test_a_fault_at_any_write_loses_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
    command: str,
    source: Path,
    extra: list[str],
    existing: bool,
) -> None:
    src = tmp_path / "src" / source.name
    shutil.copytree(source, src)
    before = tree_hash(src)
    out = tmp_path / "work" / "out"
    out.parent.mkdir()
    args = [command, src, "-o", out, *extra, *(["--force"] if existing else [])]
    old: str = {}
    if existing:
        out.mkdir()
        (out / "previous.txt").write_text("the OUT of an earlier run")
        shutil.copy(OLD_CHECKPOINT, out / "model.safetensors")  # --force may replace it
        old = tree_hash(out)

    def cleanup() -> None:
        shutil.rmtree(out, ignore_errors=True)
        if existing:
            out.mkdir()
            (out / "previous.txt").write_text("the OUT of an earlier run")
            shutil.copy(OLD_CHECKPOINT, out / "model.safetensors")

    total, complete = count_points(monkeypatch, lambda: run_cli(*args), out, cleanup)
    assert total > 3
    for k in sample(total):
        with monkeypatch.context() as m:
            Injector(m, FAULTS[fault], k)
            result = run_cli(*args)
        assert tree_hash(src) == before
        if result.code == 0:  # the failed call changed nothing (mkdir of an existing folder)
            assert tree_hash(out) == complete, f"OUT differs after a fault at call {k}/{total}"
            assert leftovers(out.parent, {"out"}) == []
            cleanup()
            continue
        expected = 130 if fault == "SIGINT/SIGTERM" else 2
        assert result.code == expected, (k, total, result.code, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in result.stderr, (k, result.stderr)
        if existing:
            assert tree_hash(out) == old, f"previous OUT changed by a fault at call {k}/{total}"
        else:
            assert not out.exists(), f"partial OUT after a fault at call {k}/{total}"
        assert leftovers(out.parent, {"out"}) == [], f"temporary files after call {k}/{total}"
        assert tree_hash(src) == before


@pytest.mark.parametrize("fault", list(FAULTS))
def test_plan_output_file_is_whole_or_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    out = tmp_path / "plan.json"
    args = ["plan", FIXTURES / "tiny-pipeline", "--max-memory", "cpu=1GB", "-o", out]
    total, _ = count_points(monkeypatch, lambda: run_cli(*args), out, out.unlink)
    assert total >= 2
    for k in range(1, total + 1):
        with monkeypatch.context() as m:
            Injector(m, FAULTS[fault], k)
            result = run_cli(*args)
        assert result.code in (1, 2, 130), result.stderr
        assert not out.exists() and list(tmp_path.iterdir()) == [], (k, list(tmp_path.iterdir()))


# ---- real processes: SIGKILL, and two runs racing for one OUT ----


@pytest.mark.slow
def test_sigkill_leaves_only_a_recognisable_temp_folder_that_the_next_run_removes(
    tmp_path: Path,
) -> None:
    import signal
    import subprocess

    src = sparse_checkpoint(tmp_path / "big.safetensors")
    out = tmp_path / "out"
    proc = subprocess.Popen([*BIGMODEL, "shard", src, "-o", out, "--max-shard-size", "100MB"])
    wait_for_temp_data(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists(), "a partial OUT after SIGKILL"
    left = leftovers(tmp_path, {"big.safetensors"})
    assert left and all(".out.bigmodel-" in name for name in left), left
    result = run_cli("shard", src, "-o", out, "--max-shard-size", "1TB")
    assert result.code == 0, result.stderr
    assert leftovers(tmp_path, {"big.safetensors", "out"}) == []


@pytest.mark.slow
def test_a_run_started_while_another_writes_the_same_output_loses_and_the_first_wins(
    tmp_path: Path,
) -> None:
    """Two runs that overlap for sure: the first is stopped (SIGSTOP) once it writes into its
    temporary folder, the second runs from start to end meanwhile, and only then does the
    first go on. The second exits 2 with one line naming the other run (not 'already
    exists': the first had not finished); the first writes a complete, valid checkpoint."""
    import signal
    import subprocess

    from bigmodel_cli.checkpoint import load_checkpoint

    src = sparse_checkpoint(tmp_path / "big.safetensors", 0.8)
    out = tmp_path / "out"
    cmd = [*map(str, BIGMODEL), "shard", str(src), "-o", str(out), "--max-shard-size", "300MB"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_temp_data(tmp_path)
        os.kill(first.pid, signal.SIGSTOP)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        # the overlap, observed: the first had started (its temporary folder holds data)
        # and had not finished (still running, no OUT) while the second ran to its end
        assert first.poll() is None and not out.exists()
        assert any(".out.bigmodel-tmp-" in name for name in leftovers(tmp_path, set()))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    code = first.wait(timeout=120)
    err = first.stderr.read() if first.stderr else ""
    assert code == 0, err
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1
    assert "another bigmodel run" in second.stderr, second.stderr
    (component,) = load_checkpoint(out).components
    assert {t.name for t in component.tensors} == {"small.weight", "huge.weight"}
    assert leftovers(tmp_path, {"big.safetensors", "out"}) == []
