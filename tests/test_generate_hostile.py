"""``run --generate`` against a hostile user: interrupts at the worst moment, bad numbers,
damaged pipelines, a ``model_index.json`` naming a library to import (issue 21)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.cli import BIGMODEL, FIXTURES, assert_one_line_error, run_cli

PIPE = FIXTURES / "tiny-pipeline"
QUICK = ("--steps", "2", "--height", "64", "--width", "64")


def _disk_plan(tmp_path: Path) -> Path:
    """An auto plan over cpu and disk for the tiny pipeline: most of the UNet on disk."""
    plan = tmp_path / "plan.json"
    made = run_cli("plan", PIPE, "--max-memory", "cpu=300KB,disk", "--strategy", "auto", "-o", plan)
    assert made.code == 0, made.stderr
    assert '"disk"' in plan.read_text()
    return plan


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no image in time"
        time.sleep(0.001)


def test_sigint_right_after_the_image_exits_130_and_leaves_no_offload_folder(
    tmp_path: Path,
) -> None:
    """SIGINT a moment after the image appears: exit 130, no traceback, no offload folder,
    no temporary name. A run that ends before the signal lands (exit 0, on a busy machine)
    must leave nothing either; then it is tried again, up to three times, and one must be
    caught."""
    plan = _disk_plan(tmp_path)
    temp = tmp_path / "tmp"
    temp.mkdir()
    image = tmp_path / "out" / "cat.png"
    image.parent.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1"}
    cmd = [*map(str, BIGMODEL), "run", str(PIPE), "--plan", str(plan), "--generate", "a cat"]
    for _ in range(3):
        image.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [*cmd, *QUICK, "-o", str(image)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_for(image, proc)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert "Exception ignored" not in err and "Traceback" not in err, err
        assert list(temp.glob("bigmodel-offload-*")) == []
        assert [p.name for p in image.parent.iterdir()] == ["cat.png"]  # no temporary name
        if proc.returncode != 0:
            assert proc.returncode == 130, err
            return
    pytest.fail("the run ended before the signal three times")


def test_a_failed_image_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    plan = _disk_plan(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    image = out / "cat.notanimageformat"
    image.write_text("kept")
    result = run_cli("run", PIPE, "--plan", plan, "--generate", "a cat", *QUICK, "-o", image)
    assert_one_line_error(result, 2, "cannot write the image")
    assert image.read_text() == "kept" and [p.name for p in out.iterdir()] == [image.name]


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--steps", "0"), "--steps"),
        (("--steps", "-3"), "--steps"),
        (("--height", "7"), "--height"),
        (("--width", "0"), "--width"),
    ],
)
def test_bad_generation_numbers_exit_2_naming_the_flag(
    tmp_path: Path, args: tuple[str, str], flag: str
) -> None:
    plan = tmp_path / "plan.json"
    assert run_cli("plan", PIPE, "--max-memory", "cpu=1GB", "-o", plan).code == 0
    out = tmp_path / "x.png"
    result = run_cli("run", PIPE, "--plan", plan, "--generate", "a cat", *QUICK, *args, "-o", out)
    assert_one_line_error(result, 2, flag)
    assert not out.exists()


def test_a_component_without_config_json_exits_2_naming_it(tmp_path: Path) -> None:
    import shutil

    pipe = tmp_path / "pipe"
    shutil.copytree(PIPE, pipe)
    plan = tmp_path / "plan.json"
    assert run_cli("plan", pipe, "--max-memory", "cpu=1GB", "-o", plan).code == 0
    (pipe / "vae" / "config.json").unlink()
    result = run_cli("run", pipe, "--plan", plan, "--generate", "a cat", *QUICK)
    assert_one_line_error(result, 2, "config.json")


@pytest.mark.parametrize("library", ["os", "no_such_package_xyz"])
def test_model_index_naming_another_library_is_refused_before_any_import(
    tmp_path: Path, library: str
) -> None:
    import json
    import shutil

    pipe = tmp_path / "pipe"
    shutil.copytree(PIPE, pipe)
    plan = tmp_path / "plan.json"
    assert run_cli("plan", pipe, "--max-memory", "cpu=1GB", "-o", plan).code == 0
    index = json.loads((pipe / "model_index.json").read_text())
    index["vae"] = [library, "system"]
    (pipe / "model_index.json").write_text(json.dumps(index))
    seen = f"print('IMPORTED' if {library!r} in sys.modules else 'CLEAN', file=sys.stderr)"
    code = (
        "import sys, runpy; sys.argv = ['bigmodel', *sys.argv[1:]]\n"
        f"try:\n    runpy.run_module('bigmodel_cli', run_name='__main__')\nfinally:\n    {seen}\n"
    )
    proc = subprocess.run(
        [
            BIGMODEL[0],
            "-c",
            code,
            "run",
            str(pipe),
            "--plan",
            str(plan),
            "--generate",
            "a cat",
            *QUICK,
            "-o",
            str(tmp_path / "x.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("bigmodel: error")]
    assert len(lines) == 1 and "model_index.json" in lines[0] and library in lines[0], proc.stderr
    if library != "os":  # os is imported by Python itself
        assert "CLEAN" in proc.stderr, proc.stderr


def _tracing_workers(parent: int) -> list[int]:
    """The tracing workers started by process ``parent`` (from /proc: Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes()
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        mine = f"BIGMODEL_TRACE_PARENT={parent}\0".encode()
        if b"bigmodel_cli.runtime.tracing" in cmd and mine in env + b"\0":
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc (Linux)")
def test_tracing_workers_die_with_a_sigkilled_plan(tmp_path: Path) -> None:
    env = {**os.environ, "BIGMODEL_TRACES": str(tmp_path / "traces"), "OMP_NUM_THREADS": "1"}
    cmd = [*map(str, BIGMODEL), "plan", str(PIPE), "--max-memory", "cpu=1GB", "--height", "64"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 120
        while not _tracing_workers(proc.pid):
            assert proc.poll() is None, "plan ended before any tracing worker was seen"
            assert time.monotonic() < end, "no tracing worker in time"
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    end = time.monotonic() + 5  # generous: they are killed with their parent
    while _tracing_workers(proc.pid) and time.monotonic() < end:
        time.sleep(0.05)
    left = _tracing_workers(proc.pid)
    for pid in left:  # leave nothing behind, even when failing
        os.kill(pid, signal.SIGKILL)
    assert left == []
