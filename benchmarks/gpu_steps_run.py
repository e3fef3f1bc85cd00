"""gpu_check steps 4-6: the tiny pipeline split by auto (`--forward`, `--generate`), a
plan for two GPUs refused, torchrun with world size 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cells, last_line, mb  # noqa: E402
from gpu_harness import (  # noqa: E402
    ROOT,
    TINY,
    Ctx,
    StepFailed,
    StepSkipped,
    bigmodel,
    call,
    must_succeed,
)

SPLIT_BUDGETS = ["9MB", "8MB", "10MB", "7MB", "11MB", "6MB", "12MB", "5MB", "14MB"]


def split_plan(ctx: Ctx) -> tuple[Path, dict[str, Any]]:
    """A plan of the tiny pipeline with its UNet split (GPU 0 and cpu; dry run: cpu and disk)."""
    shape = ["--strategy", "auto", "--height", "64", "--width", "64"]
    budgets = ["cpu=3MB,disk"] if ctx.dry else [f"0={b},cpu=8GB" for b in SPLIT_BUDGETS]
    want = {"cpu", "disk"} if ctx.dry else {"0", "cpu"}
    tried = []
    for i, budget in enumerate(budgets):
        out = ctx.work / f"plan-tiny-{i}.json"
        p = bigmodel(ctx, "plan", str(TINY), *shape, "--max-memory", budget, "-o", str(out))
        must_succeed(p)
        plan = json.loads(out.read_text())
        unet_on = set(plan.get("split_bytes", {}).get("unet", {}))
        tried.append(f"{budget}: unet on {sorted(unet_on) or plan['device_map'].get('unet')}")
        if unet_on == want:
            print(f"$ bigmodel plan {TINY} {' '.join(shape)} --max-memory {budget}")
            print(p.stdout.rstrip())
            return out, plan
    raise StepFailed(
        "no budget split the UNet between " + " and ".join(sorted(want)) + ": " + "; ".join(tried)
    )


def step_forward(ctx: Ctx) -> str:
    """4a. The tiny pipeline split by auto, one forward pass per component."""
    libs = ctx.info.get("libraries", {})
    for lib in ("diffusers", "transformers"):  # the tiny pipeline has components of both
        state = libs.get(lib, {}).get("import", "ok")  # unknown (step 1 failed): try anyway
        if state != "ok":
            raise StepSkipped(f"{lib} does not import: {state}")
    plan_file, plan = split_plan(ctx)
    ctx.info["tiny_plan"] = str(plan_file)
    print(f"\nplan JSON: device_map={plan['device_map']}, split_bytes={plan['split_bytes']}")
    print(
        "devices: "
        + ", ".join(
            f"{k}: planned {d['planned']} (weights {d.get('weights')}, run time "
            f"{d.get('runtime')}, held {d.get('held')})"
            for k, d in plan["devices"].items()
        )
    )
    p = must_succeed(
        bigmodel(ctx, "run", str(TINY), "--plan", str(plan_file), "--forward", "--json", limit=180)
    )
    doc = json.loads(p.stdout)
    print("\n| device | planned | loaded | allocated | peak |")
    print("|---|---:|---:|---:|---:|")
    for key, d in doc["devices"].items():
        print(cells(key, mb(d["planned"]), mb(d["loaded"]), mb(d["allocated"]), mb(d["peak"])))
    print()
    print(cells("component", "placed", "output shape", "seconds", "measured peak", "plan estimate"))
    print("|---|---|---|---:|---:|---:|")
    bad = []
    for name, f in doc.get("forward", {}).items():
        comp = doc["components"].get(name, {})
        placed = comp.get("bytes_by_device") or comp.get("device")
        shape = (
            "x".join(map(str, f["output_shape"]))
            if f.get("output_shape")
            else f"skipped: {f.get('skipped')}"
        )
        seconds = f"{f['seconds']:.3f}" if f.get("seconds") is not None else "-"
        estimate = mb(f.get("estimate"))
        if f.get("peak") and f.get("estimate"):
            estimate += f" (peak {f['peak'] / f['estimate']:.2f}x)"
        print(cells(name, placed, shape, seconds, mb(f.get("peak")), estimate))
        if not f.get("output_shape") or f.get("skipped"):
            bad.append(name)
    for w in doc.get("warnings", []):
        print(f"warning: {w}")
    if not doc.get("forward"):
        raise StepFailed("run --forward reported no forward pass")
    if bad:
        raise StepFailed("no forward pass for " + ", ".join(bad))
    return (
        "forward ran for "
        + ", ".join(doc["forward"])
        + f" (unet split {plan['split_bytes']['unet']})"
    )


def step_generate(ctx: Ctx) -> str:
    """4b. The same plan, end to end with diffusers: an image."""
    plan_file = ctx.info.get("tiny_plan")
    if not plan_file:
        raise StepSkipped("step 4a made no split plan")
    folder = ctx.out if ctx.out is not None else ctx.work
    image = folder / "cat.png"
    args = ["run", str(TINY), "--plan", plan_file, "--generate", "a cat", "--steps", "2"]
    args += ["--height", "64", "--width", "64", "-o", str(image), "--json"]
    p = must_succeed(bigmodel(ctx, *args, limit=180))
    doc = json.loads(p.stdout)
    print(
        f"load {doc.get('load_seconds', 0):.2f} s, generate {doc.get('generate_seconds', 0):.2f} s"
    )
    print("\n| device | planned | measured peak |")
    print("|---|---:|---:|")
    for key, d in doc["devices"].items():
        print(f"| {key} | {mb(d.get('planned'))} | {mb(d.get('peak'))} |")
    if not image.is_file() or image.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise StepFailed(f"no PNG at {image}")
    kept = "" if ctx.out is not None else " (OUT not set: removed at exit)"
    print(f"image: {image} ({image.stat().st_size} bytes){kept}")
    return f"{image.name} {image.stat().st_size} bytes" + kept


def step_refused(ctx: Ctx) -> str:
    """5. A plan for two GPUs, given to `bigmodel run` on this machine: refused, exit 2."""
    out = ctx.work / "plan-two-gpus.json"
    must_succeed(bigmodel(ctx, "plan", str(TINY), "--max-memory", "0=1GB,1=1GB", "-o", str(out)))
    p = bigmodel(ctx, "run", str(TINY), "--plan", str(out))
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    print(f"$ bigmodel run {TINY} --plan {out}")
    print("stderr:\n" + "\n".join(f"  {line}" for line in lines))
    print(f"exit status: {p.returncode}")
    if p.returncode != 2:
        raise StepFailed(f"exit status {p.returncode}, expected 2")
    if len(lines) != 1 or not lines[0].startswith("bigmodel: error:"):
        raise StepFailed(f"expected one 'bigmodel: error:' line on stderr, got {len(lines)} lines")
    return "exit 2: " + lines[0]


def step_distributed(ctx: Ctx) -> str:
    """6. benchmarks/gpu_distributed_check.py 1 (torchrun, world size 1), when time is left."""
    if ctx.left() < 100:
        raise StepSkipped(f"only {ctx.left():.0f} s of the time budget left (needs 100 s)")
    libs = ctx.info.get("libraries", {})
    if libs.get("transformers", {}).get("import") != "ok":
        raise StepSkipped(
            "transformers does not import: " + libs.get("transformers", {}).get("import", "?")
        )
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.is_file():
        raise StepSkipped(f"no {torchrun}")
    limit = ctx.left() - 5
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_distributed_check.py"), "1"]
    try:
        p = call(ctx, cmd, limit)
    except StepFailed as exc:
        raise StepSkipped(f"did not finish within {limit:.0f} s ({exc})") from None
    print(p.stdout.rstrip())
    if p.returncode != 0:
        print("stderr (last lines):\n" + "\n".join(p.stderr.strip().splitlines()[-20:]))
        raise StepFailed(f"exit {p.returncode}: {last_line(p.stdout + p.stderr)}")
    return f"PASS in {p.seconds:.0f} s"
