"""Plan files and arguments that must not be trusted as they are (issue 21): each refused
with exit 2 and one line naming the file or the argument."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import bigmodel_cli as bm
from bigmodel_cli.checkpoint import load_checkpoint
from bigmodel_cli.devices import parse_device, parse_max_memory
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.placement.plan import plan_from_json, read_plan
from bigmodel_cli.placement.ranks import check_reads
from tests.helpers import FIXTURES
from tests.helpers.cli import run_cli

PIPELINE = FIXTURES / "tiny-pipeline"
LLAMA = FIXTURES / "tiny-llama"


def _saved(tmp_path: Path, change: dict[str, Any]) -> Path:
    doc = bm.plan(PIPELINE, max_memory="0=1GB,cpu=1GB").to_json() | change
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"version": True}, "plan version True is not supported"),
        ({"offloaded": 5}, "'offloaded' is not a list of component names"),
        ({"skipped": [1]}, "'skipped' is not a list of component names"),
        ({"device_map": {"unet": "9" * 5000}}, "unknown device"),
        ({"device_map": {"unet": "٣"}}, "unknown device"),
        ({"execution_device": "cuda:" + "1" * 5000}, "unknown device"),
    ],
)
def test_a_tampered_plan_is_refused_with_one_line_naming_it(
    tmp_path: Path, change: dict[str, Any], needle: str
) -> None:
    path = _saved(tmp_path, change)
    with pytest.raises(BigmodelError, match=needle):
        read_plan(path)
    result = run_cli("run", PIPELINE, "--plan", path)
    assert result.code == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"bigmodel: error: {path}: ") and needle in line


def test_a_5000_digit_number_in_a_plan_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path, {})
    path.write_text(path.read_text().replace('"unet": 0', '"unet": ' + "7" * 5000, 1))
    result = run_cli("run", PIPELINE, "--plan", path)
    assert result.code == 2 and len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize("text", ["٣", "cuda:٣", "१", "0٣", "1" * 5000, 10**7])
def test_a_gpu_index_is_ascii_digits_of_a_sensible_size(text: object) -> None:
    assert parse_device(text) is None
    with pytest.raises(BigmodelError, match="max_memory"):
        parse_max_memory(f"{text}=8GB")
    assert parse_device("3") == 3 and parse_device("cuda:12") == 12


def test_a_component_quantized_twice_is_refused() -> None:
    with pytest.raises(BigmodelError, match="component 'unet' is named twice") as info:
        bm.plan(PIPELINE, max_memory="cpu=1GB", quantize="unet=nf4,unet=int8")
    assert info.value.argument == "quantize"
    result = run_cli(
        "plan", PIPELINE, "--max-memory", "cpu=1GB", "--quantize", "unet=nf4,unet=int8"
    )
    assert result.code == 2 and "invalid --quantize 'unet=nf4,unet=int8'" in result.stderr


# ---------------------------------------------------------------- ranks' reads


def _ranks_doc() -> dict[str, Any]:
    return bm.plan(LLAMA, max_memory="cpu=1GB", procs_per_node=2).to_json()


def test_rank_one_given_rank_zeros_reads_is_refused_on_reading_the_plan() -> None:
    doc = _ranks_doc()
    doc["ranks"][1]["reads"] = doc["ranks"][0]["reads"]
    doc["ranks"][1]["bytes"] = doc["ranks"][0]["bytes"]
    with pytest.raises(BigmodelError, match="ranks 0 and 1 both read bytes"):
        plan_from_json(doc)


def test_reads_that_leave_a_hole_are_refused_before_any_rank_reads() -> None:
    doc = _ranks_doc()
    reads = doc["ranks"][1]["reads"]
    file = next(iter(reads))
    dropped = reads[file].pop()
    if not reads[file]:
        del reads[file]
    doc["ranks"][1]["bytes"] -= dropped[1]
    plan = plan_from_json(doc)  # consistent on its own: no byte read twice
    with pytest.raises(BigmodelError, match="do not cover its tensors exactly once"):
        check_reads(load_checkpoint(LLAMA), plan)


def test_the_plans_own_reads_cover_every_tensor_once() -> None:
    check_reads(load_checkpoint(LLAMA), plan_from_json(_ranks_doc()))


@pytest.mark.parametrize(
    ("field", "code"), [("planned", 2), ("capacity", 2), ("weights", 0), ("budget", 0)]
)
def test_a_count_past_int64_in_a_plan_is_refused_or_passed_over(
    tmp_path: Path, field: str, code: int
) -> None:
    """A byte count no file or device can hold (10**309 does not even fit a float): a count
    the plan needs is refused, a figure it can do without is not taken; never exit 1."""
    doc = bm.plan(PIPELINE, max_memory="cpu=1GB").to_json()
    doc["devices"]["cpu"][field] = 10**309
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    result = run_cli("run", PIPELINE, "--plan", path)  # the table prints every figure
    assert result.code == code, result.stderr
    assert code == 0 or len(result.stderr.splitlines()) == 1, result.stderr
