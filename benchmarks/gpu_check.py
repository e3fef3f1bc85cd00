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

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import unet_like_entries, write_safetensors  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "fixtures" / "tiny-pipeline"
LIBRARIES = [  # (distribution, module)
    ("safetensors", "safetensors"),
    ("accelerate", "accelerate"),
    ("transformers", "transformers"),
    ("diffusers", "diffusers"),
    ("huggingface_hub", "huggingface_hub"),
    ("fastsafetensors", "fastsafetensors"),
    ("tokenizers", "tokenizers"),
    ("numpy", "numpy"),
    ("pillow", "PIL"),
    ("regex", "regex"),
    ("requests", "requests"),
    ("psutil", "psutil"),
    ("typer", "typer"),
    ("rich", "rich"),
]
# GPU budgets tried for step 4 until the UNet is split between GPU 0 and cpu
SPLIT_BUDGETS = ["9MB", "8MB", "10MB", "7MB", "11MB", "6MB", "12MB", "5MB", "14MB"]


class StepFailed(Exception):
    """A step's failure, one line."""


class StepSkipped(Exception):
    """A step that could not run here, one line."""


@dataclass
class Result:
    step: str
    status: str
    seconds: float
    note: str


@dataclass
class Ctx:
    work: Path
    gb: float
    dry: bool
    deadline: float
    out: Path | None
    env: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    _checkpoint: Path | None = None
    _checkpoint_error: str | None = None

    @property
    def dev(self) -> str:
        """The plan's device id of the load: "0", or "cpu" in a dry run."""
        return "cpu" if self.dry else "0"

    @property
    def torch_dev(self) -> str:
        return "cpu" if self.dry else "cuda:0"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self, limit: float) -> float:
        left = self.left()
        if left < 5:
            raise StepSkipped("the time budget is used up (GPU_CHECK_BUDGET_S)")
        return min(limit, left)


# ---------------------------------------------------------------- child processes


@dataclass
class Proc:
    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def call(ctx: Ctx, cmd: list[str], limit: float, env: dict[str, str] | None = None) -> Proc:
    """Run ``cmd`` in its own process group; on timeout the whole group is killed."""
    timeout = ctx.timeout(limit)
    began = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or ctx.env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        tail = " | ".join(err.strip().splitlines()[-3:])
        raise StepFailed(
            f"timed out after {timeout:.0f} s: {short(cmd)}"
            + (f" (stderr: {tail})" if tail else "")
        ) from None
    return Proc(cmd, proc.returncode, out, err, time.monotonic() - began)


def bigmodel(ctx: Ctx, *args: str, limit: float = 120) -> Proc:
    return call(ctx, [sys.executable, "-m", "bigmodel_cli", *args], limit)


def child(ctx: Ctx, kind: str, *args: str, limit: float = 120, env: dict[str, str] | None = None):
    """This file as a child (``--child KIND``); its last stdout line is a JSON document."""
    p = call(
        ctx, [sys.executable, str(Path(__file__).resolve()), "--child", kind, *args], limit, env
    )
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        raise StepFailed(f"{kind} child failed (exit {p.returncode}): {last_line(p.stderr)}")
    return json.loads(lines[-1])


def short(cmd: list[str]) -> str:
    text = " ".join(str(c) for c in cmd).replace(sys.executable, "python")
    return text if len(text) < 200 else text[:197] + "..."


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def must_succeed(p: Proc) -> Proc:
    if p.returncode != 0:
        tail = "\n".join(p.stderr.strip().splitlines()[-15:])
        if tail:
            print(f"stderr of `{short(p.cmd)}` (last lines):\n{tail}")
        raise StepFailed(f"`{short(p.cmd)}` exit {p.returncode}: {last_line(p.stderr)}")
    return p


def meminfo() -> str:
    try:
        rows = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return f"RAM total {rows['MemTotal'].strip()}, available {rows['MemAvailable'].strip()}"
    except (OSError, KeyError, ValueError):
        return "RAM: unknown"


def cells(*values: object) -> str:
    """A markdown table row."""
    return "| " + " | ".join(str(v).replace("|", "/") for v in values) + " |"


def gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.3f} GB"


def mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB"


# ---------------------------------------------------------------- the steps


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


# ---------------------------------------------------------------- children (import torch)


def child_probe() -> dict[str, Any]:
    import ctypes
    import importlib
    import platform
    from importlib import metadata

    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
        "cudart": None,
        "libraries": {},
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            cap = torch.cuda.get_device_capability(i)
            info["gpus"].append(
                {
                    "index": i,
                    "name": torch.cuda.get_device_name(i),
                    "capability": f"{cap[0]}.{cap[1]}",
                    "free": free,
                    "total": total,
                }
            )
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    path = line.split()[-1] if len(line.split()) >= 6 else ""
                    if "libcudart.so" in os.path.basename(path):
                        info["cudart"] = path
                        break
        except OSError:
            pass
        if info["cudart"] is None:  # not mapped by name: the nvidia wheels beside torch
            import glob

            for folder in sys.path:
                found = sorted(
                    glob.glob(os.path.join(folder, "nvidia", "*", "lib", "libcudart.so*"))
                )
                if found:
                    info["cudart"] = found[-1]
                    break
        try:
            ctypes.CDLL("libcudart.so")
            info["cudart_plain"] = "loadable"
        except OSError as exc:
            info["cudart_plain"] = f"not loadable ({exc})"
    for dist, module in LIBRARIES:
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = None
        try:
            mod = importlib.import_module(module)
            where = os.path.dirname(os.path.dirname(getattr(mod, "__file__", "") or ""))
            state = "ok"
            version = version or getattr(mod, "__version__", None)
        except Exception as exc:  # ImportError, or a library's own version check
            state = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            where = ""
        info["libraries"][dist] = {"version": version, "where": where, "import": state}
    return info


def child_load_file(device: str, files: list[str]) -> dict[str, Any]:
    import inspect

    import torch
    from safetensors.torch import load_file

    if device != "cpu":
        torch.empty(1, device=device)  # the CUDA context is made before the clock starts
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    # on cpu (dry run) read the bytes, as bigmodel run does, rather than map them lazily
    params = inspect.signature(load_file).parameters
    kwargs = {"backend": "pread"} if device == "cpu" and "backend" in params else {}
    start = time.perf_counter()
    loaded = [load_file(f, device=device, **kwargs) for f in files]
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    nbytes = sum(t.numel() * t.element_size() for d in loaded for t in d.values())
    got: dict[str, Any] = {"seconds": seconds, "bytes": nbytes}
    if device != "cpu":
        got["allocated"] = torch.cuda.memory_allocated()
        got["peak"] = torch.cuda.max_memory_allocated()
    return got


def child_fastsafetensors(device: str, files: list[str]) -> dict[str, Any]:
    import torch

    try:
        import fastsafetensors
        from fastsafetensors import SafeTensorsFileLoader, SingleGroup
    except Exception as exc:
        return {"skip": f"not importable: {type(exc).__name__}: {exc}".splitlines()[0]}
    if device != "cpu":
        torch.empty(1, device=device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        start = time.perf_counter()
        loader = SafeTensorsFileLoader(SingleGroup(), device, nogds=True)
        loader.add_filenames({0: list(files)})
        buffer = loader.copy_files_to_device()
        tensors = [buffer.get_tensor(name) for name in loader.get_keys()]
        if device != "cpu":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    except Exception as exc:
        return {
            "error": f"fastsafetensors {fastsafetensors.__version__}: {type(exc).__name__}: {exc}"
        }
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    got: dict[str, Any] = {
        "seconds": seconds,
        "bytes": nbytes,
        "version": fastsafetensors.__version__,
    }
    if device != "cpu":
        got["allocated"] = torch.cuda.memory_allocated()
        got["peak"] = torch.cuda.max_memory_allocated()
    buffer.close()
    loader.close()
    return got


def run_child(argv: list[str]) -> int:
    kind, rest = argv[0], argv[1:]
    if kind == "probe":
        got = child_probe()
    elif kind == "load_file":
        got = child_load_file(rest[0], rest[1:])
    elif kind == "fastsafetensors":
        got = child_fastsafetensors(rest[0], rest[1:])
    else:
        raise SystemExit(f"gpu_check: unknown child {kind!r}")
    print(json.dumps(got), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(run_child(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
