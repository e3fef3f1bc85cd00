"""Tracing several components at once, where it is cheapest.

Most of a cold trace is importing torch and the component's library. So:

- in this process, when its library is imported here already (a notebook that holds
  diffusers, the tests): nothing more to pay;
- else in worker processes (``python -m bigmodel_cli.runtime.tracing``), one per CPU at
  most, each given the components of one library where it can be (largest first when a
  library's are shared out). They import in parallel, and hide what their components do
  not build with: the quantization backends (``bitsandbytes``, ``torchao``: a second of
  import that builds nothing on the meta device; the quantized bytes come from
  :mod:`.quantize`) and the other library (diffusers imports transformers when it can: a
  second more). A user's own process keeps all of them. A component that fails to trace
  in a worker that hid a library is traced again in one that hid none.

What a trace found travels as the JSON document the trace cache keeps (:func:`to_doc`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigmodel_cli.runtime.inputs import LIBRARIES, Model, Shape
from bigmodel_cli.runtime.quantize import HEADS
from bigmodel_cli.sizes import DTYPES, DType, torch_dtype

HIDDEN = ("bitsandbytes", "torchao")  # never imported by a worker
MOST_WORKERS = 4


@dataclass(frozen=True)
class Traced:
    """What building (and tracing) a component told."""

    linears: frozenset[str] | None = None  # None: judge linear layers from the names
    keep: frozenset[str] = HEADS
    order: tuple[str, ...] | None = None
    activations: int | None = None
    inputs: Mapping[str, Shape] | None = None
    note: str | None = None


@dataclass(frozen=True)
class Job:
    """One component to trace: its model, compute dtype, input shapes and weight bytes
    (how the jobs are dealt out)."""

    model: Model
    dtype: DType
    shapes: Mapping[str, Shape] | None
    size: int = 0


def to_doc(t: Traced) -> dict[str, Any]:
    return {
        "linears": None if t.linears is None else sorted(t.linears),
        "keep": sorted(t.keep),
        "order": None if t.order is None else list(t.order),
        "activations": t.activations,
        "inputs": None if t.inputs is None else {k: list(v) for k, v in t.inputs.items()},
        "note": t.note,
    }


def from_doc(doc: Mapping[str, Any]) -> Traced:
    inputs = doc.get("inputs")
    return Traced(
        None if doc.get("linears") is None else frozenset(doc["linears"]),
        HEADS if doc.get("keep") is None else frozenset(doc["keep"]),
        None if doc.get("order") is None else tuple(doc["order"]),
        doc.get("activations"),
        None if inputs is None else {k: tuple(v) for k, v in inputs.items()},
        doc.get("note"),
    )


def build_and_trace(job: Job) -> Traced:
    """Trace ``job`` in this process; a missing library or a refusal becomes a note."""
    from bigmodel_cli.runtime.library import LibraryMissing
    from bigmodel_cli.runtime.trace import trace

    m, shapes = job.model, job.shapes
    try:
        built, activations = trace(m, torch_dtype(job.dtype.code), shapes)
    except LibraryMissing:
        how = f"pip install 'bigmodel-cli[{m.library}]'"
        note = f"{m.library} is not installed: no activation estimate ({how} for one)"
        return Traced(inputs=shapes, note=note)
    except Exception as exc:  # a library's refusal, as one line
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        note = f"{m.class_name} could not be traced ({reason}): no activation estimate"
        return Traced(inputs=shapes, note=note)
    if shapes is None:
        note = f"no input shapes known for {m.class_name}: no activation estimate"
        return Traced(built.linears, built.keep, built.order, note=note)
    return Traced(built.linears, built.keep, built.order, activations, shapes)


def trace_all(jobs: Sequence[Job]) -> list[Traced]:
    """Every job traced, in order: here when their libraries are imported already, else
    dealt out to worker processes (:func:`workers`)."""
    count = workers(jobs)
    if not jobs or count == 0:
        return [build_and_trace(job) for job in jobs]
    groups = [(group, _hidden(jobs, group)) for group in deal(jobs, count)]
    found = _in_workers(jobs, groups)
    hid_a_library = [i for group, hide in groups if len(hide) > len(HIDDEN) for i in group]
    again = [i for i in hid_a_library if "could not be traced" in (found[i].note or "")]
    if again:  # perhaps it needed what was hidden: once more, hiding only the quantizers
        found |= _in_workers(jobs, [(again, list(HIDDEN))])
    return [found[i] for i in range(len(jobs))]


def _in_workers(
    jobs: Sequence[Job], groups: list[tuple[list[int], list[str]]]
) -> dict[int, Traced]:
    """Each group of jobs traced by a worker of its own, all at once."""
    found: dict[int, Traced] = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        threads = []
        for group, hide in groups:
            proc = _start_worker()
            procs.append(proc)
            thread = threading.Thread(target=_talk, args=(proc, jobs, group, hide, found))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
    finally:
        for proc in procs:  # interrupted: no worker outlives the plan
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return found


def _hidden(jobs: Sequence[Job], group: list[int]) -> list[str]:
    used = {jobs[i].model.library for i in group}
    return [*HIDDEN, *(lib for lib in LIBRARIES if lib not in used)]


def workers(jobs: Sequence[Job]) -> int:
    """How many worker processes trace ``jobs``: ``$BIGMODEL_TRACE_WORKERS`` where set (0:
    none, trace here), else none when every job's library is imported here already, else
    one per CPU this process may use, at most :data:`MOST_WORKERS` (each holds a few
    hundred MB while it imports and traces)."""
    wanted = os.environ.get("BIGMODEL_TRACE_WORKERS", "").strip()
    if wanted.isdigit():
        return int(wanted)
    if all(job.model.library in sys.modules for job in jobs):
        return 0
    return min(_cpus(), MOST_WORKERS)


def deal(jobs: Sequence[Job], workers: int) -> list[list[int]]:
    """Job indexes per worker: the jobs of each library together (what a worker imports is
    most of its time), a library's jobs shared out largest first to the least loaded when
    workers are left over, the smallest groups merged when they are too few."""
    by_library: dict[str | None, list[int]] = {}
    for i, job in enumerate(jobs):
        by_library.setdefault(job.model.library, []).append(i)
    groups = list(by_library.values())
    workers = max(1, workers)
    while len(groups) > workers:
        groups.sort(key=lambda g: _size(jobs, g))
        groups = [groups[0] + groups[1], *groups[2:]]
    spare = workers - len(groups)
    split: list[list[int]] = []
    for group in sorted(groups, key=lambda g: -_size(jobs, g)):
        ways = min(len(group), 1 + spare)
        spare -= ways - 1
        split.extend(_share(jobs, group, ways))
    return split


def _share(jobs: Sequence[Job], group: list[int], ways: int) -> list[list[int]]:
    """``group`` in ``ways`` parts: largest first, each to the least loaded."""
    parts: list[list[int]] = [[] for _ in range(ways)]
    loads = [0] * ways
    for i in sorted(group, key=lambda i: -jobs[i].size):
        least = loads.index(min(loads))
        parts[least].append(i)
        loads[least] += jobs[i].size
    return parts


def _size(jobs: Sequence[Job], group: list[int]) -> int:
    return sum(jobs[i].size for i in group)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _start_worker() -> subprocess.Popen[bytes]:
    root = str(Path(__file__).resolve().parents[2])  # the folder holding bigmodel_cli
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=root + (os.pathsep + path if path else ""))
    env[PARENT_VARIABLE] = str(os.getpid())
    cmd = [sys.executable, "-m", "bigmodel_cli.runtime.tracing"]
    pipe = subprocess.PIPE
    return subprocess.Popen(cmd, stdin=pipe, stdout=pipe, stderr=pipe, env=env)


def _talk(
    proc: subprocess.Popen[bytes],
    jobs: Sequence[Job],
    group: list[int],
    hide: list[str],
    found: dict[int, Traced],
) -> None:
    """Send a worker its jobs and what to hide, and read what it found; a worker that
    fails leaves a note on each of its jobs."""
    request = {"hide": hide, "jobs": [_job_doc(jobs[i]) for i in group]}
    try:
        out, err = proc.communicate(json.dumps(request).encode())
        docs = json.loads(out) if proc.returncode == 0 else None
    except (OSError, ValueError) as exc:  # a pipe that broke, a document cut short
        docs, err = None, str(exc).encode()
    if not isinstance(docs, list) or len(docs) != len(group):
        lines = err.decode(errors="replace").strip().splitlines()
        why = f"worker exited with {proc.returncode}" + (f": {lines[-1][:200]}" if lines else "")
        docs = [_failed(jobs[i], why) for i in group]
    for i, doc in zip(group, docs, strict=True):
        found[i] = from_doc(doc)


def _failed(job: Job, why: str) -> dict[str, Any]:
    note = f"{job.model.class_name} could not be traced ({why}): no activation estimate"
    return to_doc(Traced(inputs=job.shapes, note=note))


def _job_doc(job: Job) -> dict[str, Any]:
    m = job.model
    shapes = None if job.shapes is None else {k: list(v) for k, v in job.shapes.items()}
    model = {"name": m.name, "library": m.library, "class": m.class_name, "config": m.config}
    return {"model": model, "dtype": job.dtype.code, "shapes": shapes}


def _job_of(doc: Mapping[str, Any]) -> Job:
    m = doc["model"]
    shapes = doc["shapes"]
    return Job(
        Model(m["name"], m["library"], m["class"], m["config"]),
        DTYPES[doc["dtype"]],
        None if shapes is None else {k: tuple(v) for k, v in shapes.items()},
    )


PARENT_VARIABLE = "BIGMODEL_TRACE_PARENT"  # the planning process's id, given to a worker


def _die_with_parent() -> None:
    """The worker is killed when the planning process dies, even by SIGKILL (Linux:
    ``PR_SET_PDEATHSIG``); a parent already gone ends it at once."""
    import ctypes
    import signal

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    parent = os.environ.get(PARENT_VARIABLE)
    if parent is not None and str(os.getppid()) != parent:
        os._exit(1)


def main() -> None:
    """The worker: ``{"hide": [MODULE...], "jobs": [...]}`` as JSON on stdin, what each
    trace found as JSON on stdout. A hidden module is not importable here (nor found by
    ``importlib.util.find_spec``, which the libraries ask)."""
    _die_with_parent()
    request = json.load(sys.stdin)
    for name in request["hide"]:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # import -> ImportError
    jobs = [_job_of(doc) for doc in request["jobs"]]
    docs = [to_doc(build_and_trace(job)) for job in jobs]
    sys.stdout.write(json.dumps(docs))


if __name__ == "__main__":
    main()
