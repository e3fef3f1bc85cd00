"""A plan with the run's shape keeps its traces: the same model at the same shape is
planned again without building or tracing anything (nor importing the libraries)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FIXTURES
from tests.helpers.cli import run_cli, run_counting_imports, run_subprocess

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


def test_kept_traces_spare_the_library_import() -> None:
    assert run_subprocess(*ARGS).code == 0  # BIGMODEL_TRACES: this test's own folder
    result, imported = run_counting_imports(*ARGS)
    assert result.code == 0, result.stderr[-2000:]
    assert "bigmodel_cli.runtime.kept" in imported  # the list saw this run's imports
    assert "torch" not in imported and "diffusers" not in imported


# -- kept traces are checked on read ---------------------------------------------------------

POISONS = {
    "nan": '"activations": NaN',
    "negative": '"activations": -1',
    "huge": '"activations": 1e400',
    "past a float": '"activations": 1' + "0" * 309,
    "past int64": f'"activations": {2**63}',
    "schema true": '"schema": true',
    "string": '"activations": "lots"',
    "float": '"activations": 1.5',
    "keep": '"keep": 5',
    "inputs": '"inputs": {"sample": [1, -2]}',
    "note": '"note": ["x"]',
}


def _poison(path: Path, poison: str) -> None:
    """Replace the first field the poison names, in the file's own text."""
    doc = json.loads(path.read_text())
    key = poison.split(":")[0].strip('"')
    doc[key] = "POISON"
    path.write_text(json.dumps(doc).replace(f'"{key}": "POISON"', poison))


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_a_poisoned_trace_is_passed_over(tmp_path: Path, poison: str) -> None:
    from bigmodel_cli.runtime.kept import load_trace, save_trace

    save_trace("k", {"activations": 10, "keep": [], "inputs": {"sample": [1, 4]}, "note": None})
    assert load_trace("k") == (
        {"schema": 1, "activations": 10, "keep": [], "inputs": {"sample": [1, 4]}, "note": None},
        None,
    )
    _poison(tmp_path / "traces" / "k.json", POISONS[poison])
    found, why = load_trace("k")
    assert found is None and why is not None and "traced again" in why, why


def _activations(doc: Any) -> dict[str, Any]:
    return {k: v["activations"] for k, v in doc["components"].items()}


def test_poisoned_kept_traces_are_traced_again_and_said_so(tmp_path: Path) -> None:
    first = _plan()
    kept = sorted((tmp_path / "traces").glob("*.json"))
    assert len(kept) == 3
    want = _activations(first)
    for rounds in (("nan", "negative", "huge"), ("string", "keep", "inputs")):
        for path, poison in zip(kept, rounds, strict=True):
            _poison(path, POISONS[poison])
        again: Any = _plan()
        assert _activations(again) == want
        notes = [c.get("note") or "" for c in again["components"].values()]
        assert all("passed over" in n and "traced again" in n for n in notes), notes
        assert all(json.loads(p.read_text())["activations"] is not None for p in kept)
