"""``bigmodel run SOURCE`` without ``--plan``: the plan ``bigmodel plan SOURCE`` makes for
the detected devices, said in one line on stderr, then the run; ``--plan`` still wins."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.helpers.cli import FIXTURES, run_cli

PIPE = FIXTURES / "tiny-pipeline"


def _doc(*args: str | Path) -> tuple[dict[str, Any], str]:
    result = run_cli(*args, "--json")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_run_without_plan_loads_the_plan_that_plan_makes_and_says_so() -> None:
    planned, _ = _doc("plan", PIPE)
    report, stderr = _doc("run", PIPE, "--verify")
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "no --plan" in lines[0] and "detected devices" in lines[0]
    assert planned["strategy"] in lines[0]
    assert report["verified"] is True and report["strategy"] == planned["strategy"]
    placed = {name: c["device"] for name, c in report["components"].items()}
    assert placed == planned["device_map"]
    assert {key: d["planned"] for key, d in report["devices"].items()} == {
        key: d["planned"] for key, d in planned["devices"].items()
    }
    assert sum(d["loaded"] for d in report["devices"].values()) == sum(
        planned["components"][name]["bytes"] for name in planned["device_map"]
    )


def test_a_plan_given_with_plan_wins(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    made = run_cli("plan", PIPE, "--max-memory", "cpu=3MB,disk", "-o", plan)
    assert made.code == 0, made.stderr
    report, stderr = _doc("run", PIPE, "--plan", plan)
    assert "no --plan" not in stderr
    assert report["plan"] == str(plan)
    assert "disk" in report["devices"]  # the given plan's budget, not the detected one
