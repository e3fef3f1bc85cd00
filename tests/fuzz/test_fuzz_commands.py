"""Every command fed hostile checkpoints: exit 0 or 2 with one line, never a traceback,
never a hang, never memory out of proportion (peak resident memory, from the kernel),
never a half-written OUT.

`make test` runs a short pass; `make fuzz` sets BIGMODEL_FUZZ_EXAMPLES for a long one.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from tests.fuzz.mutations import Case, safetensors_cases, sharded_cases
from tests.helpers.cli import FIXTURES, CliResult, run_cli, watchdog
from tests.helpers.memory import peak_rss_growth
from tests.helpers.trees import tree_hash

EXAMPLES = int(os.environ.get("BIGMODEL_FUZZ_EXAMPLES", "60"))
SLACK = 4_000_000  # resident memory a command may add besides twice its input (allocator)
SECONDS_PER_COMMAND = 5
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def input_bytes(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(os.path.getsize(p) for p in files)


def check(result: CliResult, args: list[str]) -> None:
    assert "Traceback" not in result.stderr, (args, result.stderr)
    assert result.code in (0, 2), (args, result.code, result.stderr)
    if result.code == 2:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (args, result.stderr)


@functools.cache
def warm_up() -> None:
    """Run every command once on a valid file, so that the checks below see reading and
    writing, not first-time imports (whose pages would count as the command's memory)."""
    import torch  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(FIXTURES / "single.safetensors", Path(tmp) / "single.safetensors")
        run_every_command(Path(tmp), lambda folder: Path(tmp) / "single.safetensors", False)


def run_every_command(tmp: Path, case: Case, check_memory: bool = True) -> None:
    work = tmp / "in"
    work.mkdir(exist_ok=True)
    source = case(work)
    before = tree_hash(source)
    size = input_bytes(source)
    commands = [
        ["inspect", str(source), "--json"],
        ["plan", str(source), "--max-memory", "cpu=1GB", "-o", str(tmp / "plan.json")],
        ["run", str(source), "--plan", str(tmp / "plan.json"), "--verify"],
        ["shard", str(source), "-o", str(tmp / "sharded"), "--max-shard-size", "16"],
        ["merge", str(source), "-o", str(tmp / "merged")],
    ]
    for args in commands:
        with peak_rss_growth() as peak, watchdog(SECONDS_PER_COMMAND):
            result = run_cli(*args)
        check(result, args)
        if getattr(case, "must_fail", False):
            assert result.code == 2, (args, "a hostile folder was accepted", result.stdout[:200])
        if check_memory and args[0] in ("inspect", "plan"):
            assert peak.grew <= 2 * size + SLACK, (args, peak.grew, size)
        if args[0] in ("shard", "merge"):
            out = Path(args[3])
            assert out.exists() == (result.code == 0), (args, result.stderr)
            leftovers = [p.name for p in tmp.iterdir() if "tmp" in p.name or p.name.startswith(".")]
            assert not leftovers, leftovers
    assert tree_hash(source) == before, "the source was modified"


@FUZZ
@given(case=safetensors_cases())
def test_hostile_safetensors_files(case: Case) -> None:
    warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        run_every_command(Path(tmp), case)


@FUZZ
@given(case=sharded_cases())
def test_hostile_sharded_folders(case: Case) -> None:
    warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        run_every_command(Path(tmp), case)
