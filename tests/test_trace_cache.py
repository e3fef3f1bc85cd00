"""A plan with the run's shape keeps its traces: the same model at the same shape is
planned again without building or tracing anything (nor importing the libraries)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import FIXTURES
from tests.helpers.cli import run_cli, run_subprocess

PIPELINE = FIXTURES / "tiny-pipeline"
ARGS = ("plan", PIPELINE, "--max-memory", "0=2MB,1=2MB,cpu=1GB", "--height", "64", "--json")


def _plan() -> dict[str, object]:
    result = run_cli(*ARGS)
    assert result.code == 0, result.stderr
    doc: dict[str, object] = json.loads(result.stdout)
    return doc


def test_second_plan_reads_the_kept_traces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _plan()
    kept = sorted((tmp_path / "traces").glob("*.json"))  # BIGMODEL_TRACES, from conftest
    assert len(kept) == 3  # unet, vae, text_encoder

    def no_trace(jobs: list[object], *args: object) -> list[object]:
        assert not jobs, "traced again"  # here or in a worker
        return []

    monkeypatch.setattr("bigmodel_cli.runtime.estimate.trace_all", no_trace)
    assert _plan() == first


def test_a_changed_shape_is_traced_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _plan()
    result = run_cli(*ARGS[:-1], "--batch", "2", "--json")
    assert result.code == 0, result.stderr
    assert len(list((tmp_path / "traces").glob("*.json"))) > 3


def test_without_bigmodel_traces_they_are_kept_in_hf_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BIGMODEL_TRACES")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    _plan()
    assert len(list((tmp_path / "hf" / "bigmodel" / "traces").glob("*.json"))) == 3


def test_kept_traces_spare_the_library_import(tmp_path: Path) -> None:
    env = dict(os.environ)  # BIGMODEL_TRACES: this test's own folder
    assert run_subprocess(*ARGS, env=env).code == 0
    probe = run_subprocess("--version", env=env)  # warm the interpreter's caches alike
    assert probe.code == 0
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bigmodel_cli", *map(str, ARGS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()}
    assert "torch" not in imported and "diffusers" not in imported
