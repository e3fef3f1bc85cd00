#!/usr/bin/env bash
# GPU check of `bigmodel` on a machine with a CUDA GPU (never part of `make test`).
#
# One run, each step independent (a failing step prints FAIL with its reason and the next
# one runs), a summary table of PASS / FAIL / SKIP per step at the end, within a time budget
# (GPU_CHECK_BUDGET_S, default 285 s); benchmarks/gpu_check.py runs the steps of
# gpu_steps_load.py and gpu_steps_run.py:
#   1  the machine: python, torch, CUDA, GPUs and free memory, library versions
#   2  `bigmodel plan` of a GB-scale two-shard checkpoint with no --max-memory (detected)
#   3  `bigmodel run --verify` of it onto cuda:0 beside safetensors' load_file(device=
#      "cuda:0") and fastsafetensors (where importable), best of 2, warm page cache
#   4  the tiny diffusers pipeline split by --strategy auto between GPU 0 and cpu, with
#      activations counted: `run --forward` and `run --generate` (image to $OUT if set)
#   5  a plan for two GPUs given to `bigmodel run`: refused with one line, exit status 2
#   6  benchmarks/gpu_distributed_check.py 1 (torchrun, world size 1) if time is left
# Exit status 0 when no step failed.
#
# Runs the package from the source tree (PYTHONPATH=<repo>:$PYTHONPATH python -m
# bigmodel_cli); needs torch, safetensors, typer, rich, huggingface_hub, accelerate;
# diffusers + transformers for step 4, fastsafetensors optional. Python: $PYTHON, else the
# repo's .venv, else python3.
#   bash benchmarks/gpu_check.sh [GB]          (default 3, or $GPU_CHECK_GB)
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh 0.2   (no GPU: the same steps on cpu)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
else
    PY="$(command -v python3 || command -v python)"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -u "$ROOT/benchmarks/gpu_check.py" "$@"
