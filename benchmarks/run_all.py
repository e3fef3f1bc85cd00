"""`make bench`: every benchmark in turn; exits non-zero if any target is missed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    "bench_inspect.py",
    "bench_shard.py",
    "bench_plan.py",
    "bench_activations.py",
    "bench_run.py",
    "bench_hub.py",
    "bench_hub_cold.py",
    "bench_distributed.py",
    "bench_dcp.py",
]


def main() -> int:
    failed = []
    for name in BENCHES:
        print(f"\n== {name} ==", flush=True)
        if subprocess.run([sys.executable, str(HERE / name)]).returncode != 0:
            failed.append(name)
    print(f"\nmissed targets: {', '.join(failed)}" if failed else "\nall benchmark targets met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
