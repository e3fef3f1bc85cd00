"""benchmarks/gpu_check.py (cut into steps over benchmarks/common.py) still runs without a
GPU: GPU_CHECK_DRY_RUN=1, the machine's step and the refused two-GPU plan, the others
skipped (they take minutes; the GPU check runs them on a GPU)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import ROOT


def test_gpu_check_dry_run_runs_its_steps_on_cpu() -> None:
    skip = "2,3,3b,3c,4a,4b,6"
    env = dict(os.environ, GPU_CHECK_DRY_RUN="1", GPU_CHECK_SKIP=skip, GPU_CHECK_BUDGET_S="280")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    script = ROOT / "benchmarks" / "gpu_check.py"
    done = subprocess.run(
        [sys.executable, str(script), "0.01"], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = done.stdout.split("=== summary")[1]
    assert "| 1 environment | PASS |" in summary
    assert "| 5 two-GPU plan refused (exit 2) | PASS |" in summary
    assert summary.count("| SKIP |") == len(skip.split(","))
    assert done.stdout.rstrip().endswith("gpu_check: PASS")
