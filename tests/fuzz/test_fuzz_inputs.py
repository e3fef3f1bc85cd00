"""The small inputs besides checkpoints, fed hostile: plan files, kept traces and Hub
listings. Every command ends with 0, 2 (one line) or 3, never a traceback or a hang, and a
Hub listing never writes outside HF_HOME.

`make test` runs a short pass; `make fuzz` sets BIGMODEL_FUZZ_EXAMPLES for a long one.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bigmodel_cli.runtime.tracing import Job, Traced
from tests.fuzz.mutations import (
    SPECIAL_FILES,
    json_file_bytes,
    listed_names,
    write_special,
)
from tests.helpers.cli import FIXTURES, CliResult, run_cli, watchdog
from tests.helpers.hub_env import hub_env
from tests.helpers.hub_server import HubServer

EXAMPLES = int(os.environ.get("BIGMODEL_FUZZ_EXAMPLES", "30"))  # `make test`: a short pass
SECONDS_PER_COMMAND = 120  # a bound on hangs on a busy, shared machine, not a timing
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SINGLE = FIXTURES / "single.safetensors"
LLAMA = FIXTURES / "tiny-llama"
PIPE = FIXTURES / "tiny-pipeline"
SEEN: dict[str, dict[int, int]] = {}  # target -> exit status -> count (printed by make fuzz)
REPORT = os.environ.get("BIGMODEL_FUZZ_REPORT")  # a file kept up to date with SEEN


def check(target: str, result: CliResult, args: Sequence[object], allowed=(0, 2, 3)) -> None:
    SEEN.setdefault(target, {}).setdefault(result.code, 0)
    SEEN[target][result.code] += 1
    if REPORT:
        Path(REPORT).write_text(json.dumps(SEEN))
    assert "Traceback" not in result.stderr, (args, result.stderr)
    assert result.code in allowed, (args, result.code, result.stderr)
    if result.code == 2:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (args, result.stderr)


def run(target: str, *args: object, allowed: tuple[int, ...] = (0, 2, 3)) -> CliResult:
    with watchdog(SECONDS_PER_COMMAND):
        result = run_cli(*map(str, args))
    check(target, result, args, allowed)
    return result


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    for target, codes in sorted(SEEN.items()):
        print(f"\nfuzz {target}: exit statuses {dict(sorted(codes.items()))}")


# -- plan files ----------------------------------------------------------------------------


@functools.cache
def valid_plans() -> dict[str, tuple[Path, Any]]:
    """A few real plans to mutate: one file on cpu, a model split over cpu and disk, a
    plan over two torchrun ranks."""
    folder = Path(tempfile.mkdtemp(prefix="bigmodel-fuzz-plans-"))
    made = {
        "single": (SINGLE, ["--max-memory", "cpu=1GB"]),
        "split": (LLAMA, ["--max-memory", "cpu=300KB,disk=1GB", "--strategy", "auto"]),
        "ranks": (LLAMA, ["--nodes", "1", "--procs-per-node", "2", "--max-memory", "cpu=1GB"]),
    }
    plans = {}
    for name, (source, args) in made.items():
        out = folder / f"{name}.json"
        result = run_cli("plan", source, *args, "-o", out)
        assert result.code == 0, (name, result.stderr)
        plans[name] = (source, json.loads(out.read_text()))
    return plans


@st.composite
def plan_cases(draw: st.DrawFn) -> tuple[Path, bytes]:
    source, doc = valid_plans()[draw(st.sampled_from(["single", "split", "ranks"]))]
    return source, draw(json_file_bytes(doc))


@pytest.fixture(scope="module")
def plans() -> dict[str, tuple[Path, Any]]:
    return valid_plans()  # made before any example is drawn


@FUZZ
@given(case=plan_cases())
def test_hostile_plan_files(plans: object, case: tuple[Path, bytes]) -> None:
    source, raw = case
    with tempfile.TemporaryDirectory() as tmp:
        plan = Path(tmp) / "plan.json"
        plan.write_bytes(raw)
        run("plan JSON", "run", source, "--plan", plan, "--json")
        if source == SINGLE:  # overwriting it: only an earlier plan is replaced
            run("plan JSON", "plan", source, "--max-memory", "cpu=1GB", "-o", plan)


@pytest.mark.parametrize(("key", "value"), [("skipped", 2**64), ("offloaded", 5), ("skipped", [1])])
def test_what_the_fuzz_found_in_plans(plans: Any, tmp_path: Path, key: str, value: object) -> None:
    """``"skipped": 18446744073709551616`` ended in a TypeError (exit 1)."""
    source, doc = plans["single"]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(doc | {key: value}))
    result = run("plan JSON", "run", source, "--plan", plan, allowed=(2,))
    assert f"plan {key!r} is not a list of component names" in result.stderr


@pytest.mark.parametrize("kind", SPECIAL_FILES)
def test_plan_files_that_are_not_small_regular_files(kind: str, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    write_special(plan, kind)
    run("plan JSON", "run", SINGLE, "--plan", plan, allowed=(2,))
    run("plan JSON", "plan", SINGLE, "--max-memory", "cpu=1GB", "-o", plan, allowed=(2,))


# -- kept traces ---------------------------------------------------------------------------


def canned(jobs: Sequence[Job]) -> list[Traced]:
    """What tracing would find, without building anything (the fuzz is of the cache)."""
    return [Traced(activations=4096, inputs=job.shapes) for job in jobs]


@contextmanager
def trace_cache(folder: Path) -> Iterator[None]:
    """Traces kept in ``folder``, and the tracer replaced by :func:`canned`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIGMODEL_TRACES", str(folder))
        mp.setattr(importlib.import_module("bigmodel_cli.runtime.estimate"), "trace_all", canned)
        yield


TRACED = ("plan", PIPE, "--max-memory", "cpu=1GB", "--height", "64", "--json")


@st.composite
def trace_cases(draw: st.DrawFn) -> tuple[str, bytes]:
    doc = {
        "schema": 1,
        "linears": ["a.weight", "b.weight"],
        "keep": ["lm_head.weight"],
        "order": ["a", "b"],
        "activations": 4096,
        "inputs": {"sample": [1, 4, 8, 8]},
        "note": None,
    }
    special = draw(st.sampled_from([None] * 8 + SPECIAL_FILES))
    return special or "", draw(json_file_bytes(doc))


@functools.cache
def kept_traces() -> dict[str, bytes]:
    """The trace files a plan with the run's shape keeps (one per component), made once."""
    with tempfile.TemporaryDirectory() as tmp, trace_cache(Path(tmp)):
        assert run_cli(*TRACED).code == 0
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).glob("*.json"))}


@FUZZ
@given(cases=st.lists(trace_cases(), min_size=3, max_size=3))
def test_hostile_kept_traces(cases: list[tuple[str, bytes]]) -> None:
    kept = kept_traces()
    assert len(kept) == 3
    with tempfile.TemporaryDirectory() as tmp, trace_cache(Path(tmp)):
        for name, (special, raw) in zip(kept, cases, strict=True):
            if special:
                write_special(Path(tmp) / name, special)
            else:
                (Path(tmp) / name).write_bytes(raw)
        result = run("kept traces", *TRACED, allowed=(0,))  # a damaged trace is traced again
    doc = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"{c} in a plan"))
    for name, component in doc["components"].items():
        value = component["activations"]
        assert value is None or (type(value) is int and value >= 0), (name, value)


# -- Hub listings --------------------------------------------------------------------------


@st.composite
def listing_cases(draw: st.DrawFn) -> dict[str, bytes]:
    """Extra files a Hub lists beside the real ones (a known name replaces its file)."""
    outside = "{outside}"  # made absolute in the test
    index = {"_class_name": "X", "unet": ["diffusers", "UNet2DModel"], "vae": ["x", "y"]}
    weights = {"metadata": {}, "weight_map": {"a": "diffusion_pytorch_model.safetensors"}}
    files = {}
    for _ in range(draw(st.integers(1, 3))):
        name = draw(listed_names(outside))
        files[name] = draw(json_file_bytes(draw(st.sampled_from([index, weights, {}]))))
    return files


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """One stand-in Hub for every example, serving a small pipeline (its text encoder and
    VAE: two headers, four JSON files), and whatever extra files an example lists."""
    repo = tmp_path_factory.mktemp("repo") / "pipe"
    repo.mkdir()
    shutil.copy(PIPE / "model_index.json", repo)
    for part in ("scheduler", "text_encoder", "vae"):
        shutil.copytree(PIPE / part, repo / part)
    with HubServer({"test/pipe": repo}) as server:
        yield server


@FUZZ
@given(files=listing_cases())
def test_hostile_hub_listings(hub: HubServer, files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        root = Path(tmp)
        outside = root / "outside"
        extra = {name.replace("{outside}", str(outside)): body for name, body in files.items()}
        hub.extra = {"test/pipe": extra}
        hub_env(mp, hub, root / "hf")
        mp.setattr("huggingface_hub.constants.HF_HUB_DOWNLOAD_TIMEOUT", 2)
        run("Hub listings", "inspect", "test/pipe", "--json", allowed=(0, 2))
        stray = [p for p in root.rglob("*") if p != root / "hf" and root / "hf" not in p.parents]
        assert stray == [], stray
