"""GPU check of plans over ranks (a machine with CUDA GPUs; never part of `make test`).

Saves a small Llama (transformers, tied embeddings), plans it with `bigmodel plan
--procs-per-node N --max-memory 0=...` (backend nccl: each rank its own GPU), and runs
`torchrun --standalone --nproc-per-node N -m bigmodel_cli run --verify --forward` with each
reader. Checks every rank's bytes read against the plan, that each rank loaded onto its
own GPU, and the pipelined logits against one process's transformers forward on cuda:0.
Exits 0 only when all of that holds.

    python benchmarks/gpu_distributed_check.py [N]        (default: every GPU here, at least 2)
    GPU_CHECK_DRY_RUN=1 python benchmarks/gpu_distributed_check.py 2   (no GPU: cpu ranks)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
IDS = "1,5,9,3,7,2,8,4;4,8,2,7,3,9,5,1"


def main() -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dry = os.environ.get("GPU_CHECK_DRY_RUN") == "1"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not gpus and not dry:
        sys.exit("gpu_distributed_check: no CUDA GPU here (GPU_CHECK_DRY_RUN=1 runs on cpu)")
    ranks = int(sys.argv[1]) if len(sys.argv) > 1 else max(2, gpus)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env["OMP_NUM_THREADS"] = "1"
    budget = "cpu=64GB" if dry else "0=20GB"
    ok = True
    with tempfile.TemporaryDirectory(prefix="bigmodel-gpu-dist-") as tmp:
        model = Path(tmp) / "llama"
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=4096,
            hidden_size=512,
            intermediate_size=1408,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=4,
            tie_word_embeddings=True,
        )
        LlamaForCausalLM(config).save_pretrained(model, max_shard_size="20MB")
        plan = Path(tmp) / "plan.json"
        cmd = [sys.executable, "-m", "bigmodel_cli", "plan", str(model)]
        cmd += ["--procs-per-node", str(ranks), "--max-memory", budget, "-o", str(plan), "--json"]
        planned = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True).stdout)
        for reader in ("pread", "dcp"):
            out = Path(tmp) / f"logits-{reader}.safetensors"
            cmd = [TORCHRUN, "--standalone", f"--nproc-per-node={ranks}", "-m", "bigmodel_cli"]
            cmd += ["run", str(model), "--plan", str(plan), "--verify", "--forward", "--json"]
            cmd += ["--reader", reader, "--input-ids", IDS, "--forward-output", str(out)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                print(f"{reader}: torchrun failed ({proc.returncode})\n{proc.stderr[-3000:]}")
                ok = False
                continue
            ok &= check(json.loads(proc.stdout), planned, out, model, reader, dry)
    print("gpu_distributed_check: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


def check(doc: dict, planned: dict, out: Path, model: Path, reader: str, dry: bool) -> bool:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    print(f"\n### {reader}: {len(doc['ranks'])} ranks, backend {doc['world']['backend']}\n")
    print("| rank | device | planned | read | seconds | peak GPU | peak RSS |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    good = True
    for r, p in zip(doc["ranks"], planned["ranks"], strict=True):
        gpu = "-" if r["peak_gpu"] is None else f"{r['peak_gpu'] / 1e6:.0f} MB"
        print(
            f"| {r['rank']} | {r['device']} | {p['bytes']} | {r['bytes_read']} | "
            f"{r['seconds']:.3f} | {gpu} | {r['peak_rss'] / 1e6:.0f} MB |"
        )
        good &= r["bytes_read"] == p["bytes"]
        good &= r["device"] == ("cpu" if dry else f"cuda:{r['local_rank']}")
    device = "cpu" if dry else "cuda:0"
    saved = load_file(out)
    reference = AutoModelForCausalLM.from_pretrained(model).to(device).eval()
    with torch.no_grad():
        want = reference(saved["input_ids"].to(device)).logits.cpu()
    diff = (saved["output"] - want).abs().max().item()
    close = torch.allclose(saved["output"], want, atol=1e-4, rtol=1e-4)
    print(f"\nbytes as planned and on its own device: {good}; logits max |diff| {diff:.2e}")
    return bool(good and close and doc["verified"])


if __name__ == "__main__":
    sys.exit(main())
