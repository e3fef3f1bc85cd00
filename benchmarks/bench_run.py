"""`bigmodel run` of a ~3.4 GB fp32 checkpoint planned to cpu vs safetensors' load_file, same run.

Two ways to hold tensors on cpu, each against its safetensors twin:

- mapped (the default): `bigmodel run FILE --plan plan.json` maps the file copy-on-write
  and reads every page in; the baseline is `load_file(FILE)` (safetensors 0.8 maps the
  file) followed by touching every page of every tensor;
- copied (`--copy`): the bytes read into private memory; the baseline is
  `load_file(FILE, backend="pread")`.

Targets: each at most 1.2x its baseline (goal 1.0x), and peak RSS at most 1.2x the file
size + 300 MB (the process holds the tensors and nothing more). The plan is made by
`bigmodel plan FILE --max-memory cpu=64GB`. Size: env BIGMODEL_BENCH_GB (default 3.4).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BIGMODEL,
    Measured,
    measure,
    row,
    table_header,
    temp_dir,
    unet_like_entries,
    warm_cache,
    write_safetensors,
)

TIME_TARGET = 1.2
RSS_FACTOR = 1.2
RSS_SLACK = 300_000_000
REPEATS = int(os.environ.get("BIGMODEL_BENCH_REPEATS", "3"))
LOAD = "import sys; from safetensors.torch import load_file; load_file(sys.argv[1]{extra})"
TOUCH = (
    "import sys, torch; from safetensors.torch import load_file; sd = load_file(sys.argv[1]); "
    "[int(t.reshape(-1).view(torch.uint8)[::4096].max()) for t in sd.values() if t.numel()]"
)


def write_plan(source: Path, plan: Path) -> None:
    """The plan `bigmodel plan` makes for the file on a 64 GB cpu."""
    cmd = [BIGMODEL, "plan", str(source), "--max-memory", "cpu=64GB", "-o", str(plan), "--json"]
    subprocess.run(cmd, check=True, capture_output=True)


def has_pread_backend() -> bool:
    probe = (
        "import inspect; from safetensors.torch import load_file; "
        "print('backend' in inspect.signature(load_file).parameters)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return out.stdout.strip() == "True"


def best_in_turns(*cmds: list[str]) -> list[Measured]:
    """Each command's fastest of REPEATS runs, the commands run in turns, so that a
    baseline and its twin see the same machine (reclaiming the page cache for 3.4 GB of
    private memory can triple one run's system time)."""
    runs: list[list[Measured]] = [[] for _ in cmds]
    for _ in range(REPEATS):
        for found, cmd in zip(runs, cmds, strict=True):
            found.append(measure(cmd))
    return [
        Measured(min(m.seconds for m in found), max(m.peak_rss for m in found), 0) for found in runs
    ]


def main() -> int:
    gb = float(os.environ.get("BIGMODEL_BENCH_GB", "3.4"))
    if not has_pread_backend():
        print("safetensors has no pread backend (before 0.8): nothing to compare --copy with")
        return 1
    with temp_dir() as tmp:
        path = tmp / "model.safetensors"
        size = write_safetensors(path, unet_like_entries(int(gb * 1e9)))
        plan = tmp / "plan.json"
        write_plan(path, plan)
        warm_cache(path)
        run = [BIGMODEL, "run", str(path), "--plan", str(plan), "--json"]
        touched, mapped = best_in_turns([sys.executable, "-c", TOUCH, str(path)], run)
        pread, copied = best_in_turns(
            [sys.executable, "-c", LOAD.format(extra=", backend='pread'"), str(path)],
            [*run, "--copy"],
        )
    print(table_header(f"run to cpu ({size / 1e9:.2f} GB fp32 file, best of {REPEATS} in turns)"))
    print(row("load_file(FILE) + touch every page  [baseline]", touched))
    print(row("bigmodel run FILE --plan plan.json (mapped)", mapped, touched))
    print(row("load_file(FILE, backend='pread')  [baseline]", pread))
    print(row("bigmodel run ... --copy", copied, pread))
    rss_limit = RSS_FACTOR * size + RSS_SLACK
    checks = {
        f"mapped <= {TIME_TARGET}x": mapped.seconds <= TIME_TARGET * touched.seconds,
        f"--copy <= {TIME_TARGET}x": copied.seconds <= TIME_TARGET * pread.seconds,
        f"peak RSS <= {rss_limit / 1e6:.0f} MB": max(mapped.peak_rss, copied.peak_rss) <= rss_limit,
    }
    print("\n" + "; ".join(f"{k}: {'PASS' if ok else 'FAIL'}" for k, ok in checks.items()))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
