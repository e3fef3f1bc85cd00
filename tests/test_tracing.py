"""Components traced together: in worker processes (in parallel, quantization backends
hidden) when this process has not imported their library, else here; both find the same."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bigmodel_cli.checkpoint import load_checkpoint
from bigmodel_cli.runtime import tracing
from bigmodel_cli.runtime.estimate import compute_dtype, model_of
from bigmodel_cli.runtime.inputs import Model, input_shapes, resolve
from bigmodel_cli.runtime.shape import RunShape
from bigmodel_cli.sizes import DTYPES
from tests.helpers import FIXTURES

PIPELINE = FIXTURES / "tiny-pipeline"


def _jobs() -> list[tracing.Job]:
    ckpt = load_checkpoint(PIPELINE)
    models = {c.name: model_of(ckpt, c) for c in ckpt.components}
    run = resolve(RunShape(counted=True, height=64, width=64), models, "StableDiffusionPipeline")
    return [
        tracing.Job(
            models[c.name],
            compute_dtype(c, None),
            input_shapes(models[c.name], run, models, run.context),
            sum(t.nbytes for t in c.tensors),
        )
        for c in ckpt.components
    ]


def _job(size: int) -> tracing.Job:
    return tracing.Job(Model("m", None, None, {}), DTYPES["F32"], None, size)


def test_jobs_are_dealt_largest_first_to_the_least_loaded_worker() -> None:
    jobs = [_job(s) for s in (5, 40, 30, 20, 10)]
    assert tracing.deal(jobs, 2) == [[1, 4, 0], [2, 3]]  # 40+10+5 and 30+20
    assert tracing.deal(jobs, 8) == [[1], [2], [3], [4], [0]]  # never an idle worker
    assert tracing.deal(jobs, 1) == [[1, 2, 3, 4, 0]]


def test_workers_find_what_this_process_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = _jobs()
    monkeypatch.setenv("BIGMODEL_TRACE_WORKERS", "0")
    here = tracing.trace_all(jobs)
    monkeypatch.setenv("BIGMODEL_TRACE_WORKERS", "2")
    there = tracing.trace_all(jobs)
    assert [t.activations for t in here] == [t.activations for t in there]
    assert all(t.activations and t.note is None for t in there)
    assert [tracing.to_doc(t) for t in here] == [tracing.to_doc(t) for t in there]


def test_workers_are_used_only_where_the_libraries_are_not_imported_yet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BIGMODEL_TRACE_WORKERS", raising=False)
    monkeypatch.setattr(tracing, "_cpus", lambda: 3)
    jobs = _jobs()
    for name in ("diffusers", "transformers"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert tracing.workers(jobs) == 3
    monkeypatch.setitem(sys.modules, "diffusers", sys)
    assert tracing.workers(jobs) == 3  # the text encoder still needs transformers
    monkeypatch.setitem(sys.modules, "transformers", sys)
    assert tracing.workers(jobs) == 0
    monkeypatch.setenv("BIGMODEL_TRACE_WORKERS", "1")
    assert tracing.workers(jobs) == 1


def test_a_worker_never_imports_the_quantization_backends() -> None:
    request = json.dumps([tracing._job_doc(_jobs()[0])])
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bigmodel_cli.runtime.tracing"],
        input=request,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(tracing.__file__).parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)[0]["activations"] > 0
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()}
    assert "torch" in imported
    assert not {name for name in imported if name.split(".")[0] in tracing.HIDDEN}


def test_a_failed_worker_leaves_a_note_on_each_of_its_jobs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def dying() -> subprocess.Popen[bytes]:
        code = "import sys; sys.stdin.read(); sys.exit('worker: out of memory')"
        pipe = subprocess.PIPE
        return subprocess.Popen([sys.executable, "-c", code], stdin=pipe, stdout=pipe, stderr=pipe)

    monkeypatch.setattr(tracing, "_start_worker", dying)
    monkeypatch.setenv("BIGMODEL_TRACE_WORKERS", "2")
    found = tracing.trace_all(_jobs())
    assert all(t.activations is None for t in found)
    assert all(t.note and "worker exited with 1: worker: out of memory" in t.note for t in found), [
        t.note for t in found
    ]
    assert all(t.inputs for t in found)  # the shapes it would have assumed, still said
