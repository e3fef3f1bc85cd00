"""gpu_check steps 1-3: the machine, `plan` with detected devices, `run --verify` onto
the GPU beside load_file and fastsafetensors."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cells, gb, meminfo, unet_like_entries, write_safetensors  # noqa: E402
from gpu_harness import (  # noqa: E402
    Ctx,
    StepFailed,
    StepSkipped,
    bigmodel,
    call,
    child,
    must_succeed,
)


def step_environment(ctx: Ctx) -> str:
    """1. The machine."""
    info = child(ctx, "probe", limit=90)
    ctx.info = info
    print(f"python {info['python']} ({info['executable']}), torch {info['torch']}")
    print(f"CUDA (torch built with): {info['cuda']}; available: {info['cuda_available']}")
    print(f"GPUs: {len(info['gpus'])}")
    for g in info["gpus"]:
        print(
            f"  cuda:{g['index']}  {g['name']}  capability {g['capability']}  "
            f"free {gb(g['free'])} of {gb(g['total'])}"
        )
    print(f"libcudart loaded by torch: {info['cudart'] or '-'}", end="")
    print(f"; plain libcudart.so {info.get('cudart_plain', '-')}")
    print(f"PYTHONPATH: {os.environ.get('PYTHONPATH', '')}")
    print(f"cpus: {os.cpu_count()}; {meminfo()}")
    if shutil.which("nvidia-smi"):
        try:
            smi = call(
                ctx,
                [
                    "nvidia-smi",
                    "--query-gpu=name,driver_version,memory.used,memory.free,memory.total",
                    "--format=csv",
                ],
                30,
            )
            print("nvidia-smi:\n  " + "\n  ".join(smi.stdout.strip().splitlines()))
        except StepFailed as exc:
            print(f"nvidia-smi: {exc}")
    print("\n| library | version | import | from |")
    print("|---|---|---|---|")
    for name, lib in info["libraries"].items():
        version = lib["version"] or "missing"
        print(f"| {name} | {version} | {lib['import']} | {lib['where'] or '-'} |")
    if not ctx.dry and not info["cuda_available"]:
        raise StepFailed("torch sees no CUDA GPU (GPU_CHECK_DRY_RUN=1 runs the steps on cpu)")
    gpus = ", ".join(f"{g['name']} ({gb(g['free'])} free)" for g in info["gpus"])
    libs = info["libraries"]
    versions = ", ".join(
        f"{n} {libs[n]['version'] or 'missing'}"
        for n in ("transformers", "diffusers", "huggingface_hub", "fastsafetensors")
    )
    return f"torch {info['torch']}, CUDA {info['cuda']}, {gpus or 'no GPU'}; {versions}"


def checkpoint(ctx: Ctx) -> Path:
    """The GB-scale two-shard checkpoint with an index (made once, for steps 2 and 3)."""
    if ctx._checkpoint is not None:
        return ctx._checkpoint
    if ctx._checkpoint_error is not None:
        raise StepFailed(ctx._checkpoint_error)
    try:
        began = time.monotonic()
        entries = unet_like_entries(int(ctx.gb * 1e9))
        half = len(entries) // 2
        model = ctx.work / "model"
        model.mkdir()
        weight_map: dict[str, str] = {}
        total = 0
        for i, part in enumerate((entries[:half], entries[half:]), start=1):
            name = f"model-{i:05d}-of-00002.safetensors"
            write_safetensors(model / name, part)
            weight_map.update({n: name for n, _ in part})
            for _, shape in part:
                n = 4
                for d in shape:
                    n *= d
                total += n
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (model / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        os.sync()  # no write-back during the timed loads
        for f in sorted(model.glob("*.safetensors")):  # a warm page cache for every loader
            with open(f, "rb") as fh:
                while fh.read(64 << 20):
                    pass
        print(
            f"checkpoint: {total / 1e9:.2f} GB fp32 in 2 shards + index at {model} "
            f"(written in {time.monotonic() - began:.1f} s)"
        )
        ctx._checkpoint = model
        return model
    except Exception as exc:
        ctx._checkpoint_error = f"cannot write the checkpoint: {type(exc).__name__}: {exc}"
        raise StepFailed(ctx._checkpoint_error) from None


def step_plan_detected(ctx: Ctx) -> str:
    """2. `bigmodel plan` with no --max-memory: the detected devices and their budgets."""
    model = checkpoint(ctx)
    out = ctx.work / "plan-detected.json"
    p = must_succeed(bigmodel(ctx, "plan", str(model), "-o", str(out), limit=90))
    print(p.stdout.rstrip())
    plan = json.loads(out.read_text())
    print(f"\nplan JSON: detected={plan.get('detected')}, fits={plan.get('fits')}, ", end="")
    print(f"device_map={plan['device_map']}")
    print("\n| device | budget | reserve | capacity | planned | free at step 1 |")
    print("|---|---:|---:|---:|---:|---:|")
    free = {str(g["index"]): g["free"] for g in ctx.info.get("gpus", [])}
    for key, d in plan["devices"].items():
        print(
            f"| {key} | {gb(d.get('budget'))} | {gb(d.get('reserve'))} | "
            f"{gb(d.get('capacity'))} | {gb(d.get('planned'))} | {gb(free.get(key))} |"
        )
    if not plan.get("detected"):
        raise StepFailed("the plan does not say its devices were detected")
    if ctx.dev not in plan["devices"]:
        raise StepFailed(f"no device {ctx.dev} among the detected: {list(plan['devices'])}")
    where = {str(v) for v in plan["device_map"].values()}
    if where != {ctx.dev}:
        raise StepFailed(f"the plan does not put the model on {ctx.dev}: {plan['device_map']}")
    budget = plan["devices"][ctx.dev].get("budget")
    if ctx.dry:
        return f"cpu budget {gb(budget)} (no GPU: dry run)"
    return f"GPU 0 budget {gb(budget)}, torch free at step 1 {gb(free.get('0'))}"


def plan_for_load(ctx: Ctx, model: Path) -> Path:
    """Step 2's plan when it put everything on the load device, else an explicit one."""
    detected = ctx.work / "plan-detected.json"
    if detected.is_file():
        plan = json.loads(detected.read_text())
        if {str(v) for v in plan["device_map"].values()} == {ctx.dev}:
            print(f"plan: {detected} (step 2's, detected devices)")
            return detected
    out = ctx.work / "plan-load.json"
    if ctx.dry:
        budget = "cpu=64GB"
    else:
        free = {g["index"]: g["free"] for g in ctx.info.get("gpus", [])}
        budget = f"0={free.get(0, 70 * 10**9)}"
    must_succeed(bigmodel(ctx, "plan", str(model), "--max-memory", budget, "-o", str(out)))
    print(f"plan: {out} (--max-memory {budget}; step 2's plan was not usable)")
    return out


def cudart_env(ctx: Ctx) -> dict[str, str]:
    """fastsafetensors dlopens plain "libcudart.so": point it at torch's own libcudart."""
    env = dict(ctx.env)
    found = ctx.info.get("cudart")
    if found and Path(found).is_file():
        folder = ctx.work / "cudart"
        folder.mkdir(exist_ok=True)
        link = folder / "libcudart.so"
        if not link.exists():
            link.symlink_to(found)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(folder), env.get("LD_LIBRARY_PATH", "")) if p
        )
    return env


def step_run_verify(ctx: Ctx) -> str:
    """3. `bigmodel run --verify` onto the device, beside load_file and fastsafetensors."""
    model = checkpoint(ctx)
    plan_file = plan_for_load(ctx, model)
    plan = json.loads(plan_file.read_text())
    files = [str(f) for f in sorted(model.glob("*.safetensors"))]
    file_bytes = sum(Path(f).stat().st_size for f in files)
    runs: dict[str, list[dict[str, Any]]] = {"load_file": [], "bigmodel": [], "fastsafetensors": []}
    docs = []
    errors: dict[str, str] = {}
    fst_env = cudart_env(ctx)
    for round_ in range(1, int(os.environ.get("GPU_CHECK_ROUNDS", "2")) + 1):
        if "load_file" not in errors:
            try:
                got = child(ctx, "load_file", ctx.torch_dev, *files, limit=120)
                runs["load_file"].append(got)
            except StepFailed as exc:
                errors["load_file"] = str(exc)
        args = ["run", str(model), "--plan", str(plan_file), "--json"]
        if ctx.dry:  # read into private memory, as load_file(backend="pread") does
            args.append("--copy")
        if round_ == 1:
            args.append("--verify")
        if "bigmodel" not in errors:
            try:
                doc = json.loads(must_succeed(bigmodel(ctx, *args, limit=180)).stdout)
                docs.append(doc)
                d = doc["devices"][ctx.dev]
                runs["bigmodel"].append(
                    {
                        "seconds": doc["load_seconds"],
                        "device_seconds": d["seconds"],
                        "bytes": d["loaded"],
                        "allocated": d["allocated"],
                        "peak": d["peak"],
                    }
                )
            except StepFailed as exc:
                errors["bigmodel"] = str(exc)
        if "fastsafetensors" not in errors:
            try:
                got = child(ctx, "fastsafetensors", ctx.torch_dev, *files, limit=120, env=fst_env)
            except StepFailed as exc:
                got = {"error": str(exc)}
            if "skip" in got or "error" in got:
                errors["fastsafetensors"] = got.get("skip") or got["error"]
            else:
                runs["fastsafetensors"].append(got)
    fst_note = errors.get("fastsafetensors", "")
    print(
        f"\n### load onto {ctx.torch_dev}: {file_bytes / 1e9:.2f} GB in 2 files, warm page cache\n"
    )
    print("| loader | best s | GB/s | runs (s) | allocated | peak |")
    print("|---|---:|---:|---|---:|---:|")
    speed: dict[str, float] = {}
    labels = {
        "load_file": f"safetensors load_file(device={ctx.torch_dev!r})",
        "bigmodel": "bigmodel run --plan (load_seconds)",
        "fastsafetensors": "fastsafetensors SafeTensorsFileLoader(nogds=True)",
    }
    for name, got_runs in runs.items():
        if not got_runs:
            print(cells(labels[name], "-", "-", errors.get(name, "not run"), "-", "-"))
            continue
        best = min(got_runs, key=lambda r: r["seconds"])
        speed[name] = best["bytes"] / best["seconds"] / 1e9
        times = ", ".join(f"{r['seconds']:.3f}" for r in got_runs)
        if name in errors:
            times += f" (then: {errors[name]})"
        print(
            cells(
                labels[name],
                f"{best['seconds']:.3f}",
                f"{speed[name]:.2f}",
                times,
                gb(best.get("allocated")),
                gb(best.get("peak")),
            )
        )
    ratio = None
    if "bigmodel" in speed and "load_file" in speed:
        ratio = speed["bigmodel"] / speed["load_file"]
        print(f"\nbigmodel / load_file speed: {ratio:.2f}x (target >= 1.00x)")
    if "bigmodel" in speed and "fastsafetensors" in speed:
        fst_ratio = speed["bigmodel"] / speed["fastsafetensors"]
        print(f"bigmodel / fastsafetensors speed: {fst_ratio:.2f}x")
    ctx.info["speed"] = {"ratio": ratio, "speed": speed, "fst_note": fst_note}
    if not docs:
        raise StepFailed(errors.get("bigmodel", "bigmodel run did not run"))
    verified = docs[0]
    d = verified["devices"][ctx.dev]
    planned = plan["devices"][ctx.dev]["planned"]
    device_s = ", ".join(f"{r['device_seconds']:.3f}" for r in runs["bigmodel"])
    print(f"bigmodel's own per-device load seconds: {device_s}")
    print(
        f"plan: planned {planned} bytes on {ctx.dev}; run: planned {d['planned']}, loaded "
        f"{d['loaded']}, allocated {d['allocated']}, peak {d['peak']} bytes"
    )
    print(
        f"verify: {'passed' if verified['verified'] else 'NOT RUN'} "
        f"({verified['verify_seconds'] or 0:.1f} s); cpu_load {verified.get('cpu_load')}"
    )
    tensor_bytes = runs["load_file"][0]["bytes"] if runs["load_file"] else d["loaded"]
    if not verified["verified"]:
        raise StepFailed("--verify did not run")
    if not d["loaded"] == d["planned"] == planned == tensor_bytes:
        raise StepFailed(
            f"bytes differ: plan {planned}, run planned {d['planned']}, loaded {d['loaded']}, "
            f"load_file {tensor_bytes}"
        )
    if not ctx.dry and (d["allocated"] or 0) < d["loaded"]:
        raise StepFailed(f"torch allocated {d['allocated']} < loaded {d['loaded']} on cuda:0")
    return (
        f"verified; {gb(d['loaded'])} loaded = planned; allocated {gb(d['allocated'])}, "
        f"peak {gb(d['peak'])}"
    )


def step_speed(ctx: Ctx) -> str:
    """3b. The speed target: bigmodel run at least as fast as load_file."""
    got = ctx.info.get("speed")
    if not got or got["ratio"] is None:
        raise StepSkipped("step 3 did not time both loaders")
    s = got["speed"]
    text = f"bigmodel {s['bigmodel']:.2f} GB/s, load_file {s['load_file']:.2f} GB/s"
    text += f": {got['ratio']:.2f}x"
    if ctx.dry:
        raise StepSkipped(f"dry run, cpu timings only ({text})")
    if got["ratio"] < 1.0:
        raise StepFailed(text + " (target >= 1.00x)")
    return text


def step_fastsafetensors(ctx: Ctx) -> str:
    """3c. fastsafetensors on the same files (where importable)."""
    got = ctx.info.get("speed")
    if not got:
        raise StepSkipped("step 3 did not run")
    if "fastsafetensors" in got["speed"]:
        s = got["speed"]
        return (
            f"fastsafetensors {s['fastsafetensors']:.2f} GB/s; bigmodel/fastsafetensors "
            f"{s['bigmodel'] / s['fastsafetensors']:.2f}x"
        )
    note = got["fst_note"]
    if note.startswith("not importable"):
        raise StepSkipped(note)
    raise StepFailed(note)
