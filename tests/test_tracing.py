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


def _job(size: int, library: str | None = "diffusers") -> tracing.Job:
    return tracing.Job(Model("m", library, "C", {}), DTYPES["F32"], None, size)


def test_a_library_s_jobs_go_together_and_are_shared_out_largest_first() -> None:
    d, t = "diffusers", "transformers"
    jobs = [_job(5, t), _job(40, d), _job(30, d), _job(20, t), _job(10, d)]
    assert tracing.deal(jobs, 2) == [[1, 2, 4], [3, 0]]  # one worker per library
    assert tracing.deal(jobs, 3) == [[1], [2, 4], [3, 0]]  # the larger library shared
    assert tracing.deal(jobs, 8) == [[1], [2], [4], [3], [0]]  # never an idle worker
    assert tracing.deal(jobs, 1) == [[1, 2, 3, 4, 0]]
    assert tracing.deal([_job(5, d), _job(9, d)], 1) == [[1, 0]]


def test_a_worker_hides_the_library_its_jobs_do_not_use() -> None:
    jobs = [_job(1, "diffusers"), _job(1, "transformers")]
    assert tracing._hidden(jobs, [0]) == ["bitsandbytes", "torchao", "transformers"]
    assert tracing._hidden(jobs, [1]) == ["bitsandbytes", "torchao", "diffusers"]
    assert tracing._hidden(jobs, [0, 1]) == ["bitsandbytes", "torchao"]


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
    monkeypatch.setattr(tracing, "_cpus", lambda: 64)
    assert tracing.workers(jobs) == tracing.MOST_WORKERS  # each holds a few hundred MB
    monkeypatch.setattr(tracing, "_cpus", lambda: 3)
    monkeypatch.setitem(sys.modules, "diffusers", sys)
    assert tracing.workers(jobs) == 3  # the text encoder still needs transformers
    monkeypatch.setitem(sys.modules, "transformers", sys)
    assert tracing.workers(jobs) == 0
    monkeypatch.setenv("BIGMODEL_TRACE_WORKERS", "1")
    assert tracing.workers(jobs) == 1


def _worker_imports(hide: list[str], job: tracing.Job) -> tuple[dict[str, object], set[str]]:
    request = json.dumps({"hide": hide, "jobs": [tracing._job_doc(job)]})
    # the worker, then the modules it holds (a hidden one is None there: its import failed)
    code = (
        "import runpy, sys; runpy.run_module('bigmodel_cli.runtime.tracing', run_name='__main__');"
        "print(*sorted(k for k, v in sys.modules.items() if v is not None), file=sys.stderr)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=request,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(tracing.__file__).parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {name.split(".")[0] for name in proc.stderr.split()}
    return json.loads(proc.stdout)[0], imported


def test_a_unet_worker_imports_neither_the_quantizers_nor_transformers() -> None:
    unet = next(j for j in _jobs() if j.model.name == "unet")
    doc, imported = _worker_imports(tracing._hidden([unet], [0]), unet)
    assert doc["activations"] > 0 and doc["note"] is None
    assert "torch" in imported and "diffusers" in imported
    assert not imported & {"bitsandbytes", "torchao", "transformers"}
    here = tracing.to_doc(tracing.build_and_trace(unet))
    assert doc == here  # hiding changed nothing the trace found


def test_a_job_that_fails_where_a_library_was_hidden_is_traced_again_without(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requests: list[list[str]] = []
    real = tracing._talk

    def talk(proc: object, jobs: object, group: list[int], hide: list[str], found: dict) -> None:
        requests.append(hide)
        if "transformers" in hide:  # as if building the UNet needed transformers
            for i in group:
                note = "UNet2DConditionModel could not be traced (No module named 'x')"
                found[i] = tracing.Traced(note=note)
            proc.communicate(b"")  # type: ignore[attr-defined]
            return
        real(proc, jobs, group, hide, found)  # type: ignore[arg-type]

    monkeypatch.setattr(tracing, "_talk", talk)
    monkeypatch.setenv("BIGMODEL_TRACE_WORKERS", "2")
    found = tracing.trace_all(_jobs())
    assert all(t.activations for t in found), [t.note for t in found]
    assert list(tracing.HIDDEN) in requests  # the retry hid only the quantizers


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
