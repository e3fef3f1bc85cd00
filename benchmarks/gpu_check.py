"""GPU check of `bigmodel` on one CUDA machine (never part of `make test`); see gpu_check.sh.

One invocation runs every step below; each is independent (a failing step prints FAIL with
its reason and the next one runs), every child process has a timeout, the whole run keeps
within a time budget (GPU_CHECK_BUDGET_S, default 285 s; GPU_CHECK_SKIP=6,3c skips steps,
GPU_CHECK_ROUNDS sets step 3's rounds, default 2), and a summary table of
PASS / FAIL / SKIP per step ends the output. Exit status 0 when no step failed.

1. the machine: python, torch, CUDA, GPUs with their free memory, library versions;
2. `bigmodel plan` of a GB-scale two-shard checkpoint with no --max-memory: the detected
   GPU, its free memory and the plan's budget for it;
3. `bigmodel run --verify` of that checkpoint onto cuda:0, beside
   `safetensors.torch.load_file(device="cuda:0")` and (where importable) fastsafetensors
   on the same files, best of 2, warm page cache;
4. the checked-in tiny diffusers pipeline split by `--strategy auto` between the GPU and
   cpu, with activations counted: `run --forward` (peak vs estimate per component) and
   `run --generate` (an image, to $OUT when set);
5. a plan for two GPUs given to `bigmodel run` here: refused, one line, exit status 2;
6. `benchmarks/gpu_distributed_check.py 1` (torchrun, world size 1) when time is left.

The parent process never imports torch (a CUDA context of its own would change the free
memory that `plan` detects); everything that does runs in a child, this file again with
``--child KIND``. With GPU_CHECK_DRY_RUN=1 the same steps run on cpu (step 4 splits the
UNet between cpu and disk instead).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_children import run_child  # noqa: E402
from gpu_harness import Ctx, Result, StepFailed, StepSkipped  # noqa: E402
from gpu_steps_load import (  # noqa: E402
    step_environment,
    step_fastsafetensors,
    step_plan_detected,
    step_run_verify,
    step_speed,
)
from gpu_steps_run import step_distributed, step_forward, step_generate, step_refused  # noqa: E402

STEPS: list[tuple[str, str, Callable[[Ctx], str]]] = [
    ("1", "environment", step_environment),
    ("2", "plan, detected devices", step_plan_detected),
    ("3", "run --verify onto the GPU", step_run_verify),
    ("3b", "speed: bigmodel >= load_file", step_speed),
    ("3c", "fastsafetensors beside it", step_fastsafetensors),
    ("4a", "pipeline split by auto: --forward", step_forward),
    ("4b", "pipeline split by auto: --generate", step_generate),
    ("5", "two-GPU plan refused (exit 2)", step_refused),
    ("6", "torchrun world size 1", step_distributed),
]


def main(argv: list[str]) -> int:
    dry = os.environ.get("GPU_CHECK_DRY_RUN") == "1"
    size = float(argv[0]) if argv else float(os.environ.get("GPU_CHECK_GB", "3"))
    budget = float(os.environ.get("GPU_CHECK_BUDGET_S", "285"))
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bigmodel-gpu-check-"))
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "NO_COLOR": "1",
            "COLUMNS": "160",
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "BIGMODEL_TRACES": str(work / "traces"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    ctx = Ctx(work=work, gb=size, dry=dry, deadline=began + budget, out=out, env=env)
    mode = "DRY RUN on cpu" if dry else "cuda:0"
    print(f"gpu_check: {mode}, checkpoint {size} GB, time budget {budget:.0f} s, work {work}")
    try:
        skip = set(filter(None, os.environ.get("GPU_CHECK_SKIP", "").split(",")))
        for number, title, fn in STEPS:
            print(f"\n=== [{number}] {title} ===", flush=True)
            start = time.monotonic()
            try:
                if str(number) in skip:
                    raise StepSkipped("GPU_CHECK_SKIP names it")
                note = fn(ctx)
                status = "PASS"
            except StepSkipped as exc:
                status, note = "SKIP", str(exc)
            except StepFailed as exc:
                status, note = "FAIL", str(exc)
            except Exception as exc:  # a bug in this script or an unexpected document
                where = traceback.extract_tb(exc.__traceback__)[-1]
                status = "FAIL"
                note = f"{type(exc).__name__}: {exc} (gpu_check.py line {where.lineno})"
            took = time.monotonic() - start
            note = " ".join(note.split())
            print(f"--- [{number}] {status} ({took:.1f} s): {note}", flush=True)
            ctx.results.append(Result(f"{number} {title}", status, took, note))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = time.monotonic() - began
    gpu = ", ".join(g["name"] for g in ctx.info.get("gpus", [])) or "no GPU"
    print(f"\n=== summary ({mode}; {gpu}; {total:.0f} s) ===\n")
    print("| step | result | seconds | note |")
    print("|---|---|---:|---|")
    for r in ctx.results:
        note = r.note if len(r.note) <= 300 else r.note[:297] + "..."
        print(f"| {r.step} | {r.status} | {r.seconds:.1f} | {note.replace('|', '/')} |")
    failed = [r.step for r in ctx.results if r.status == "FAIL"]
    print(f"\ngpu_check: {'FAIL (' + ', '.join(failed) + ')' if failed else 'PASS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(run_child(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
