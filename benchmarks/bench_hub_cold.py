"""A cold `bigmodel plan` of a Hub repo against hf-mem 0.5.6, on the same local Hub.

The stand-in Hub (tests/helpers/hub_server.py, on 127.0.0.1) serves bench_hub.py's
20-shard Llama-shaped repo (about 43 GB listed, sparse) at 0 ms and at 100 ms added to
every response. Both tools run as fresh processes, in turns, N times each:

- hf-mem 0.5.6 (installed by the `test` extra) through benchmarks/hf_mem_local.py, which
  sends its client's requests for huggingface.co to the stand-in;
- `bigmodel plan REPO --max-memory 0=80GB,1=80GB --json`, each time with an empty
  HF_HOME (cold: no mirror, no cache), HF_HUB_DISABLE_TELEMETRY=1. The model goes whole
  to GPU 0: like hf-mem's answer, the plan needs the headers alone.

Shown without a target: the same cold plan with `--max-memory 0=8GB,1=8GB,cpu=64GB`,
where the model is split and its map written in the names transformers builds: that plan
builds the model on the meta device with transformers (bench_hub.py's docstring), which
hf-mem never does.

Both answers are checked against the repo's bytes first. Wall time: the median of the
runs (the best is printed too); CPU time (user + system, steadier on a busy machine): the
median; peak RSS: the largest. Targets: bigmodel within 1.2x of hf-mem at 0 ms, and at
most 1.0x at 100 ms.

hf-mem asks for at most min(32, CPUs + 4) headers at a time (its MAX_WORKERS); at 100 ms
it also runs, for comparison only, with MAX_WORKERS=32: every header at once, as
bigmodel asks them (up to 64).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_hub import SHARDS, SPLIT, WHOLE, make_repo  # noqa: E402
from common import BIGMODEL, Measured, bench_env, measure, temp_dir  # noqa: E402

from tests.helpers.hub_server import HubServer  # noqa: E402

REPO = "bench/big"
RUNS = 9
TARGETS = {0.0: 1.2, 0.1: 1.0}  # latency (s) -> most bigmodel / hf-mem
PLAN = [BIGMODEL, "plan", REPO, *WHOLE, "--json"]
PLAN_SPLIT = [BIGMODEL, "plan", REPO, *SPLIT, "--json"]
HF_MEM = [sys.executable, str(HERE / "hf_mem_local.py"), "--model-id", REPO, "--json-output"]


def check_answers(env: dict[str, str], home: Path, weights: int, hub: HubServer) -> None:
    """Both tools read the whole repo from the stand-in (not the real Hub)."""
    hub.reset_counts()
    out = subprocess.run(HF_MEM, env=env, capture_output=True, text=True, check=True).stdout
    agents = {r.user_agent or "" for r in hub.requests}
    if json.loads(out)["memory"] != weights or not any(a.startswith("hf-mem/") for a in agents):
        raise SystemExit(f"hf-mem did not read {REPO} from the stand-in: {out[:200]}")
    for cmd, split in ((PLAN, False), (PLAN_SPLIT, True)):
        done = subprocess.run(
            cmd, env=env | {"HF_HOME": str(home)}, capture_output=True, text=True, check=True
        )
        doc = json.loads(done.stdout)
        if sum(c["bytes"] for c in doc["components"].values()) != weights:
            raise SystemExit(f"bigmodel plan read other bytes than {weights}: {done.stdout[:200]}")
        if (doc["device_map"]["big"] == "split") != split:
            raise SystemExit(
                f"{' '.join(cmd[1:])}: the model is not {'split' if split else 'whole'}"
            )


def alternate(env: dict[str, str], tmp: Path, tag: str) -> tuple[list[Measured], list[Measured]]:
    """hf-mem and a cold bigmodel plan, in turns, RUNS times each."""
    theirs, ours = [], []
    for i in range(RUNS):
        theirs.append(measure(HF_MEM, env))
        ours.append(measure(PLAN, env | {"HF_HOME": str(tmp / f"home-{tag}-{i}")}))
    return theirs, ours


def summary(runs: list[Measured]) -> tuple[float, float, float, int]:
    """Median and best wall time, median CPU time, largest peak RSS."""
    times = [m.seconds for m in runs]
    cpu = statistics.median(m.cpu_seconds for m in runs)
    return statistics.median(times), min(times), cpu, max(m.peak_rss for m in runs)


def row(
    latency: float, label: str, runs: list[Measured], base: float | None, target: str = ""
) -> str:
    """A table row; ``base``: the baseline's wall time (None: this row is the baseline)."""
    wall, best, cpu, rss = summary(runs)
    ratio = "baseline" if base is None else f"{wall / base:.2f}x"
    return (
        f"| {latency * 1000:.0f} ms | {label} | {wall:.2f} s ({best:.2f}) | {ratio} "
        f"| {cpu:.2f} s | {rss / 1e6:.0f} MB | {target} |"
    )


def main() -> int:
    rows, ok = [], True
    with temp_dir() as tmp:
        weights = make_repo(tmp / "big")
        with HubServer({REPO: tmp / "big"}) as hub:
            env = bench_env() | {
                "HF_ENDPOINT": hub.endpoint,
                "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DOWNLOAD_TIMEOUT": "10",
            }
            check_answers(env, tmp / "home-check", weights, hub)
            for latency, most in TARGETS.items():
                hub.latency = latency
                theirs, ours = alternate(env, tmp, f"{latency:g}")
                base, wall = summary(theirs)[0], summary(ours)[0]
                met = wall <= most * base
                ok &= met
                rows.append(row(latency, "hf-mem 0.5.6", theirs, None))
                verdict = f"<= {most}x: {'met' if met else 'MISSED'}"
                rows.append(row(latency, "bigmodel plan, cold", ours, base, verdict))
                if latency:
                    wide = [measure(HF_MEM, env | {"MAX_WORKERS": "32"}) for _ in range(RUNS)]
                    ratio = f"bigmodel: {wall / summary(wide)[0]:.2f}x of this"
                    rows.append(row(latency, "hf-mem, MAX_WORKERS=32", wide, base, ratio))
                split = [
                    measure(PLAN_SPLIT, env | {"HF_HOME": str(tmp / f"split-{latency:g}-{i}")})
                    for i in range(3)
                ]
                rows.append(row(latency, "bigmodel plan, cold, split", split, base))
    print(
        f"\n### cold plan of a {SHARDS}-file Hub repo against hf-mem, same local Hub "
        f"(median of {RUNS} in turns, best in brackets)\n"
    )
    print("| latency | command | wall time | vs hf-mem | CPU time | peak RSS | target |")
    print("|---|---|---:|---:|---:|---:|---|")
    print("\n".join(rows))
    verdict = "PASS" if ok else "FAIL"
    print(f"\ntarget <= {TARGETS[0.0]}x at 0 ms, <= {TARGETS[0.1]}x at 100 ms: {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
