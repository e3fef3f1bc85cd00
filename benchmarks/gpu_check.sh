#!/usr/bin/env bash
# GPU check for `bigmodel run` (a machine with a CUDA GPU; never part of `make test`).
#
# Makes a ~2 GB two-shard fp32 checkpoint, plans it with the detected devices
# (`bigmodel plan`, which puts it on GPU 0), runs `bigmodel run --verify` onto cuda:0, and
# prints the load GB/s beside `safetensors.torch.load_file(device="cuda:0")` of the same
# files in the same run. Exits 0 only when the plan used GPU 0 and --verify passed.
#
# Runs the package from the source tree (PYTHONPATH=. python -m bigmodel_cli); needs torch,
# safetensors, typer, rich, huggingface_hub (psutil optional). Python: $PYTHON, else the
# repo's .venv, else python3.
#   bash benchmarks/gpu_check.sh [GB]          (default 2, or $GPU_CHECK_GB)
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
GB="${1:-${GPU_CHECK_GB:-2}}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/bigmodel-gpu-check-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export ROOT WORK GB
bigmodel() { "$PY" -m bigmodel_cli "$@"; }

# 1. The machine: torch, CUDA, libraries. DEV is the plan's device id for the load.
DEV="$("$PY" - <<'EOF'
import os, sys
import torch, safetensors
try:
    import psutil  # noqa: F401
    has_psutil = "yes"
except ImportError:
    has_psutil = "no (plan gets --max-memory from torch and /proc/meminfo)"
cuda = torch.cuda.is_available()
name = torch.cuda.get_device_name(0) if cuda else "none"
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"safetensors {safetensors.__version__}, psutil {has_psutil}", file=sys.stderr)
print(f"GPUs: {torch.cuda.device_count() if cuda else 0} ({name})", file=sys.stderr)
if not cuda and os.environ.get("GPU_CHECK_DRY_RUN") != "1":
    sys.exit("gpu_check: no CUDA GPU here (GPU_CHECK_DRY_RUN=1 runs the same steps on cpu)")
print("0" if cuda else "cpu")
EOF
)"
export DEV

# 2. A two-shard checkpoint with an index, as transformers writes one.
"$PY" - <<'EOF'
import json, os, sys
from pathlib import Path
sys.path.insert(0, os.path.join(os.environ["ROOT"], "benchmarks"))
from common import unet_like_entries, write_safetensors

entries = unet_like_entries(int(float(os.environ["GB"]) * 1e9))
half = len(entries) // 2
model = Path(os.environ["WORK"]) / "model"
model.mkdir()
weight_map, total = {}, 0
for i, part in enumerate((entries[:half], entries[half:]), start=1):
    name = f"model-{i:05d}-of-00002.safetensors"
    size = write_safetensors(model / name, part)
    weight_map.update({n: name for n, _ in part})
    total += sum(4 * __import__("math").prod(s) for _, s in part)
index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
(model / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
print(f"checkpoint: {total / 1e9:.2f} GB in 2 shards at {model}", file=sys.stderr)
EOF

# 3. Plan with the detected devices (explicit budgets only where psutil is missing, or dry run).
MAXMEM=()
if [ "$DEV" = cpu ]; then
    MAXMEM=(--max-memory "cpu=64GB")
elif ! "$PY" -c "import psutil" 2>/dev/null; then
    MAXMEM=(--max-memory "$("$PY" -c '
import torch
gpus = [f"{i}={torch.cuda.mem_get_info(i)[0]}" for i in range(torch.cuda.device_count())]
ram = next(int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemAvailable"))
print(",".join([*gpus, f"cpu={ram}"]))')")
fi
bigmodel plan "$WORK/model" ${MAXMEM[@]+"${MAXMEM[@]}"} -o "$WORK/plan.json" >&2
"$PY" - <<'EOF'
import json, os, sys
plan = json.load(open(os.path.join(os.environ["WORK"], "plan.json")))
where = {str(v) for v in plan["device_map"].values()}
print(f"plan device_map: {plan['device_map']}", file=sys.stderr)
if where != {os.environ["DEV"]}:
    sys.exit(f"gpu_check: the plan does not put the model on {os.environ['DEV']}: {where}")
EOF

# 4. Same run: load_file onto the device (best of two), then bigmodel run --verify.
cat "$WORK"/model/*.safetensors > /dev/null  # both start from a warm page cache
baseline() {
    "$PY" - <<'EOF'
import glob, inspect, os, time
import torch
from safetensors.torch import load_file
dev = os.environ["DEV"]
device = "cpu" if dev == "cpu" else f"cuda:{dev}"
files = sorted(glob.glob(os.path.join(os.environ["WORK"], "model", "*.safetensors")))
if device != "cpu":
    torch.empty(1, device=device)  # CUDA context made before the clock starts
start = time.perf_counter()
# on cpu (dry run) read the bytes, as bigmodel run does, rather than map the file lazily
kwargs = {"backend": "pread"} if device == "cpu" and "backend" in inspect.signature(load_file).parameters else {}
loaded = [load_file(f, device=device, **kwargs) for f in files]
if device != "cpu":
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
nbytes = sum(t.numel() * t.element_size() for d in loaded for t in d.values())
print(f"{seconds} {nbytes}")
EOF
}
BASE1="$(baseline)"
set +e
bigmodel run "$WORK/model" --plan "$WORK/plan.json" --verify --json > "$WORK/run.json"
RUN_RC=$?
set -e
BASE2="$(baseline)"

export BASE1 BASE2 RUN_RC
"$PY" - <<'EOF'
import json, os, sys
rc = int(os.environ["RUN_RC"])
base = min((tuple(map(float, os.environ[k].split())) for k in ("BASE1", "BASE2")))
base_s, base_bytes = base
doc = json.load(open(os.path.join(os.environ["WORK"], "run.json"))) if rc == 0 else None
dev = os.environ["DEV"]
label = "cpu" if dev == "cpu" else f"cuda:{dev}"
print(f"\n### bigmodel run onto {label} ({base_bytes / 1e9:.2f} GB, warm page cache)\n")
print("| loader | seconds | GB/s | allocated | peak |")
print("|---|---:|---:|---:|---:|")
print(f"| safetensors load_file(device={label!r}) | {base_s:.3f} | {base_bytes / base_s / 1e9:.2f} | - | - |")
if doc is None:
    sys.exit(f"gpu_check: bigmodel run failed (exit {rc})")
d = doc["devices"][dev]
fmt = lambda n: "-" if n is None else f"{n / 1e9:.2f} GB"
print(f"| bigmodel run --plan (load) | {d['seconds']:.3f} | {d['gb_per_s']:.2f} | "
      f"{fmt(d['allocated'])} | {fmt(d['peak'])} |")
print(f"\nplanned {d['planned']} bytes, loaded {d['loaded']} bytes; verify "
      f"{'passed' if doc['verified'] else 'not run'} ({doc['verify_seconds']:.1f} s); "
      f"run/load_file speed {d['gb_per_s'] / (base_bytes / base_s / 1e9):.2f}x")
ok = doc["verified"] and d["loaded"] == d["planned"] == base_bytes
sys.exit(0 if ok else "gpu_check: loaded bytes differ from planned, or verify did not run")
EOF
