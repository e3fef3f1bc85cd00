"""The Python API (``import bigmodel_cli as bm``) is the one the CLI calls."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
from pathlib import Path

import pytest

import bigmodel_cli as bm
from tests.helpers import FIXTURES, ROOT
from tests.helpers.cli import BIGMODEL, run_cli

PIPELINE = FIXTURES / "tiny-pipeline"
VERBS = ("inspect", "shard", "merge", "plan", "read_plan", "run_plan", "load", "generate")


@pytest.mark.parametrize("name", VERBS)
def test_each_verb_stays_a_function_after_every_stage_is_imported(name: str) -> None:
    for stage in ("placement", "sharding", "run", "checkpoint", "run.pipeline"):
        importlib.import_module(f"bigmodel_cli.{stage}")
    verb = getattr(bm, name)
    assert callable(verb) and not isinstance(verb, type(bm)), verb
    assert verb.__doc__ and ">>>" in verb.__doc__  # a docstring with an example


def _called_by_cli() -> set[str]:
    """Names the CLI modules (cli.py, cli_*.py) import from the package (its calls go
    through them)."""
    names = set()
    for path in (ROOT / "bigmodel_cli").glob("cli*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bigmodel_cli"):
                names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("name", VERBS)
def test_the_cli_calls_the_api_not_a_second_code_path(name: str) -> None:
    """Each verb is the function the CLI reaches (directly, or through a verb that calls it)."""
    verb = getattr(bm, name)
    reached = {
        "inspect": "inspect",
        "shard": "shard",
        "merge": "merge",
        "plan": "make_plan",
        "run_plan": "run_plan",
        "read_plan": "run_plan",  # run_plan reads its plan file with read_plan
        "load": "generate_run",  # run --generate loads with load() and runs generate()
        "generate": "generate_run",
    }[name]
    assert reached in _called_by_cli()
    if name in ("read_plan", "load", "generate"):
        caller = {
            "read_plan": "bigmodel_cli.placement.plan",
            "load": "bigmodel_cli.run.generate",
            "generate": "bigmodel_cli.run.generate",
        }[name]
        source = Path(importlib.import_module(caller).__file__ or "").read_text()
        assert f"{verb.__name__}(" in source


def test_readme_shows_every_verb() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in VERBS:
        assert f"bm.{name}(" in readme, name


def test_plan_save_and_read_plan_round_trip(tmp_path: Path) -> None:
    plan = bm.plan(PIPELINE, max_memory="0=2MB,1=2MB,cpu=1GB", dtype="fp16")
    saved = plan.save(tmp_path / "plan.json")
    again = bm.read_plan(tmp_path / "plan.json")
    assert saved.path == tmp_path / "plan.json"
    assert again.to_json() == plan.to_json()
    assert again.device_map == plan.device_map and 0 in plan.device_map.values()


def test_run_generate_writes_a_png_and_reports_the_peak(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    assert run_cli("plan", PIPELINE, "--max-memory", "cpu=1GB", "-o", plan).code == 0
    image = tmp_path / "cat.png"
    args = ("--steps", "2", "--height", "32", "--width", "32", "-o", image, "--json")
    result = run_cli("run", PIPELINE, "--plan", plan, "--generate", "a cat", *args)
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["image"] == str(image) and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["devices"]["cpu"]["planned"] > 0 and doc["devices"]["cpu"]["peak"] > 0
    cpu = doc["devices"]["cpu"]  # the process before loading, and what the run added
    assert 0 < cpu["baseline"] <= cpu["peak"] and cpu["added"] == cpu["peak"] - cpu["baseline"]
    from PIL import Image

    assert Image.open(image).size == (32, 32)


def test_run_generate_writes_only_our_lines_and_verbose_adds_the_libraries(
    tmp_path: Path,
) -> None:
    """The demo's ``run --generate``: in a fresh process (the libraries imported, and
    talking, inside the run), stderr holds no line this project did not write; with
    --verbose it holds the libraries' own (held back, not lost), never in the JSON."""
    plan = tmp_path / "plan.json"
    assert run_cli("plan", PIPELINE, "--max-memory", "cpu=1GB", "-o", plan).code == 0
    args = ("--steps", "1", "--height", "32", "--width", "32", "-o", tmp_path / "cat.png")
    command = [*BIGMODEL, "run", PIPELINE, "--plan", plan, "--generate", "a cat", *args]
    runs = [
        subprocess.run([*map(str, command), *extra], capture_output=True, text=True, timeout=600)
        for extra in ((), ("--verbose", "--json"))
    ]
    quiet, verbose = runs
    assert quiet.returncode == 0 and verbose.returncode == 0, verbose.stderr
    assert "image written to" in quiet.stdout
    assert [line for line in quiet.stderr.splitlines() if not line.startswith("bigmodel:")] == []
    assert "warning" in verbose.stderr  # accelerate's offload notice at least
    assert "library_output" not in json.loads(verbose.stdout)


def test_run_generate_refuses_a_plan_for_another_checkpoint(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    assert run_cli("plan", FIXTURES / "single.safetensors", "-o", plan).code == 0
    result = run_cli("run", PIPELINE, "--plan", plan, "--generate", "a cat")
    assert result.code == 2 and "re-run bigmodel plan" in result.stderr


def test_load_refuses_a_plan_over_ranks(tmp_path: Path) -> None:
    plan = bm.plan(PIPELINE, nodes=1, procs_per_node=2, max_memory="cpu=1GB")
    with pytest.raises(bm.BigmodelError, match="torchrun ranks"):
        bm.load(PIPELINE, plan)
