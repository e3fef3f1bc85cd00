"""API arguments in the forms the ecosystem writes them (issue 22): sizes as bytes or
strings, dtypes as our names, torch dtypes or safetensors codes, ``max_memory`` as the CLI's
string or accelerate's dict, a plan as a path, a dict or a ``Plan``; anything else refused
with a message naming the argument and what it accepts. And the default strategy: a
pipeline's library's (``balanced``), a single model's (``auto``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import bigmodel_cli as bm
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.safetensors import read_header
from bigmodel_cli.sizes import DTYPES
from tests.helpers import FIXTURES
from tests.helpers.cli import run_cli

PIPELINE = FIXTURES / "tiny-pipeline"
LLAMA = FIXTURES / "tiny-llama"
SINGLE = FIXTURES / "single.safetensors"
FP16_FORMS = ["fp16", "float16", "F16", "torch.float16", torch.float16, DTYPES["F16"]]
WRONG_DTYPES = [(3, "dtype must be a name"), ("int8", "not a floating type"), ("x", "unknown")]


def _cli(*args: str | Path) -> tuple[int, str, str]:
    found = run_cli(*args)
    return found.code, found.stdout, found.stderr


# ---------------------------------------------------------------- sizes


def _shards(out: Path) -> dict[str, Any]:
    """The shards' names and the index's weight map: how the tensors were cut."""
    (index,) = out.glob("*.index.json")
    names = sorted(p.name for p in out.glob("*.safetensors"))
    return {"files": names, "map": json.loads(index.read_text())["weight_map"]}


@pytest.mark.parametrize("size", ["300KB", "0.3MB", "300000", "300 kb"])
def test_shard_takes_a_size_as_bytes_or_as_a_string(tmp_path: Path, size: str) -> None:
    bm.shard(LLAMA, tmp_path / "out", max_shard_size=size)
    bm.shard(LLAMA, tmp_path / "ref", max_shard_size=300_000)
    assert _shards(tmp_path / "out") == _shards(tmp_path / "ref")
    assert len(_shards(tmp_path / "ref")["files"]) > 1  # it did cut: the size mattered


def test_shard_takes_mebibytes(tmp_path: Path) -> None:
    bm.shard(LLAMA, tmp_path / "out", max_shard_size="0.5MiB")
    bm.shard(LLAMA, tmp_path / "ref", max_shard_size=2**19)
    assert _shards(tmp_path / "out") == _shards(tmp_path / "ref")


@pytest.mark.parametrize(
    ("size", "needle"),
    [
        ([5], "max_shard_size must be bytes (int) or a size such as '5GB' or '500MiB'"),
        (1.5, "max_shard_size must be bytes"),
        (True, "max_shard_size must be bytes"),
        ("5XB", "invalid max_shard_size '5XB'"),
        (0, "max_shard_size must be positive"),
    ],
)
def test_shard_refuses_any_other_size_naming_the_argument(
    tmp_path: Path, size: Any, needle: str
) -> None:
    with pytest.raises(BigmodelError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        bm.shard(LLAMA, tmp_path / "out", max_shard_size=size)
    assert not (tmp_path / "out").exists()


def test_shard_and_merge_take_the_reading_keywords(tmp_path: Path) -> None:
    """``variant``, ``include_optimizer`` and ``config`` reach the write; a misspelt one is
    a TypeError, as for any keyword, and nothing is written."""
    config = tmp_path / "given.json"
    config.write_text('{"model_type": "llama", "given": true}')
    keywords: dict[str, Any] = {"variant": None, "include_optimizer": False, "config": config}
    bm.shard(LLAMA, tmp_path / "sharded", max_shard_size="5GB", **keywords)
    bm.merge(LLAMA, tmp_path / "merged", **keywords)
    for out in ("sharded", "merged"):
        assert (tmp_path / out / "config.json").read_bytes() == config.read_bytes()
    with pytest.raises(BigmodelError, match="config"):
        bm.merge(LLAMA, tmp_path / "bad", config=tmp_path / "missing.json")
    with pytest.raises(TypeError, match="include_optimiser"):
        bm.merge(LLAMA, tmp_path / "typo", include_optimiser=True)  # type: ignore[call-arg]
    assert not (tmp_path / "bad").exists() and not (tmp_path / "typo").exists()


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", FP16_FORMS, ids=str)
def test_inspect_and_plan_take_every_dtype_form(dtype: Any) -> None:
    assert bm.plan(PIPELINE, max_memory="cpu=1GB", dtype=dtype).dtype == "float16"
    summary = bm.inspect(PIPELINE, dtype=dtype)
    assert summary == bm.inspect(PIPELINE, dtype="fp16")


@pytest.mark.parametrize("dtype", FP16_FORMS, ids=str)
def test_shard_and_merge_take_every_dtype_form(tmp_path: Path, dtype: Any) -> None:
    bm.shard(SINGLE, tmp_path / "sharded", max_shard_size="5GB", dtype=dtype)
    bm.merge(SINGLE, tmp_path / "merged", dtype=dtype)
    for out in ("sharded", "merged"):
        (file,) = (tmp_path / out).glob("*.safetensors")
        found = {t.dtype for t in read_header(file).tensors}
        assert "F16" in found and "F32" not in found, found  # floating tensors cast


@pytest.mark.parametrize("dtype", [torch.bfloat16, "BF16"], ids=str)
def test_run_plan_takes_a_torch_dtype_and_a_code(tmp_path: Path, dtype: Any) -> None:
    plan = bm.plan(SINGLE, max_memory="cpu=1GB", dtype="bf16")
    report = bm.run_plan(SINGLE, plan=plan, dtype=dtype)
    assert report.dtype == "bfloat16"


@pytest.mark.parametrize(("dtype", "needle"), WRONG_DTYPES)
def test_every_verb_refuses_another_dtype_naming_it(
    tmp_path: Path, dtype: Any, needle: str
) -> None:
    calls = [
        lambda: bm.inspect(SINGLE, dtype=dtype),
        lambda: bm.plan(SINGLE, max_memory="cpu=1GB", dtype=dtype),
        lambda: bm.shard(SINGLE, tmp_path / "s", dtype=dtype),
        lambda: bm.merge(SINGLE, tmp_path / "m", dtype=dtype),
        lambda: bm.run_plan(SINGLE, plan=bm.plan(SINGLE, max_memory="cpu=1GB"), dtype=dtype),
    ]
    for call in calls:
        with pytest.raises(BigmodelError, match=needle):
            call()


# ---------------------------------------------------------------- max_memory


def test_max_memory_as_accelerates_dict_plans_as_the_cli_string() -> None:
    text = bm.plan(LLAMA, max_memory="0=100KB,1=100KB,cpu=1GB,disk", strategy="auto")
    forms: list[Any] = [
        {0: "100KB", 1: "100KB", "cpu": "1GB", "disk": None},
        {"cuda:0": 100_000, "cuda:1": "100KB", "cpu": 10**9, "disk": None},
        {"0": "0.1MB", 1: 100_000, "cpu": "1GB", "disk": None},
    ]
    for given in forms:
        assert bm.plan(LLAMA, max_memory=given, strategy="auto").to_json() == text.to_json()


def test_reserve_takes_bytes_or_a_string() -> None:
    as_int = bm.plan(LLAMA, max_memory={0: "1MB", "cpu": "1GB"}, reserve=200_000)
    assert as_int.to_json() == bm.plan(LLAMA, max_memory="0=1MB,cpu=1GB", reserve="200KB").to_json()


@pytest.mark.parametrize(
    ("max_memory", "needle"),
    [
        (8, "max_memory must be a string such as '0=8GB,1=8GB,cpu=32GB,disk' or a dict"),
        (["0=8GB"], "max_memory must be a string"),
        ({"gpu0": "8GB"}, "invalid max_memory device 'gpu0'"),
        ({"mps": "8GB"}, "invalid max_memory device 'mps'"),
        ({0: None}, "invalid max_memory budget None for 0"),
        ({0: 1.5}, "invalid max_memory budget 1.5"),
        ({0: "8XB"}, "invalid max_memory size for 0 '8XB'"),
        ({0: "1GB", "cuda:0": "2GB"}, "listed twice"),
    ],
)
def test_plan_refuses_another_max_memory_naming_it(max_memory: Any, needle: str) -> None:
    with pytest.raises(BigmodelError, match=needle.replace("(", r"\(")) as info:
        bm.plan(SINGLE, max_memory=max_memory)
    assert info.value.argument == "max_memory"


def test_the_cli_names_its_flag_for_the_same_mistakes() -> None:
    code, _, err = _cli("plan", SINGLE, "--max-memory", "0=8XB")
    assert code == 2 and "invalid --max-memory size for 0 '8XB'" in err
    code, _, err = _cli("shard", SINGLE, "--max-shard-size", "5XB")
    assert code == 2 and "invalid --max-shard-size '5XB'" in err
    code, _, err = _cli("plan", SINGLE, "--dtype", "int8")
    assert code == 2 and "--dtype 'int8' is not a floating type" in err


# ---------------------------------------------------------------- plans


@pytest.mark.parametrize("form", ["path", "str", "dict", "Plan"])
def test_run_plan_takes_a_plan_as_a_path_a_dict_or_a_plan(tmp_path: Path, form: str) -> None:
    plan = bm.plan(SINGLE, max_memory="cpu=1GB").save(tmp_path / "plan.json")
    given: Any = {
        "path": tmp_path / "plan.json",
        "str": str(tmp_path / "plan.json"),
        "dict": json.loads((tmp_path / "plan.json").read_text()),
        "Plan": plan,
    }[form]
    report = bm.run_plan(SINGLE, plan=given)
    assert sum(c.tensors for c in report.components) == len(read_header(SINGLE).tensors)


@pytest.mark.parametrize("plan", [None, 5, ["plan.json"]])
def test_load_and_run_plan_refuse_anything_else_as_a_plan(plan: Any) -> None:
    needle = r"plan must be the path of a plan file \(plan.json\), its JSON document"
    with pytest.raises(BigmodelError, match=needle):
        bm.load(SINGLE, plan)
    with pytest.raises(BigmodelError, match=needle):
        bm.run_plan(SINGLE, plan=plan)


# ---------------------------------------------------------------- the default strategy


def test_a_single_model_is_planned_as_transformers_auto_and_split_where_it_must() -> None:
    budget = "0=100KB,1=100KB,cpu=1GB"
    plan = bm.plan(LLAMA, max_memory=budget)
    assert plan.strategy == "auto" and "transformers' device_map='auto'" in (
        plan.strategy_reason or ""
    )
    assert plan.device_map == {"": "split"} or set(plan.device_map.values()) == {"split"}
    (module_map,) = plan.component_maps.values()
    assert {0, 1} <= set(module_map.values())  # over both GPUs, not offloaded whole
    whole = bm.plan(LLAMA, max_memory=budget, strategy="balanced")
    assert whole.offloaded and whole.strategy_reason is None  # what the old default did
    assert (
        plan.to_json() | {"strategy_reason": None}
        == bm.plan(LLAMA, max_memory=budget, strategy="auto").to_json()
    )


def test_a_pipeline_keeps_diffusers_balanced_and_says_why() -> None:
    plan = bm.plan(PIPELINE, max_memory="0=3.5MB,1=1MB")
    assert plan.strategy == "balanced" and "diffusers" in (plan.strategy_reason or "")
    asked = bm.plan(PIPELINE, max_memory="0=3.5MB,1=1MB", strategy="balanced")
    assert plan.device_map == asked.device_map


def test_the_plan_and_help_say_which_default_was_chosen_and_why(tmp_path: Path) -> None:
    code, out, _ = _cli("plan", LLAMA, "--max-memory", "0=100KB,1=100KB,cpu=1GB")
    assert code == 0 and "strategy auto: the default for a single model" in out
    code, out, _ = _cli("plan", LLAMA, "--max-memory", "cpu=1GB", "--json")
    assert json.loads(out)["strategy_reason"].startswith("the default for a single model")
    code, out, _ = _cli("plan", "--help")
    text = " ".join(out.replace("│", " ").split())
    assert "Default: balanced (the default for a diffusers pipeline" in text
    assert "auto (the default for a single model" in text


def test_plan_takes_one_request_record_or_its_keywords_not_both() -> None:
    request = bm.PlanRequest(max_memory={0: "100KB", 1: "100KB", "cpu": "1GB"}, dtype="bf16")
    by_record = bm.plan(LLAMA, request)
    by_keywords = bm.plan(LLAMA, max_memory="0=100KB,1=100KB,cpu=1GB", dtype=torch.bfloat16)
    assert by_record.to_json() == by_keywords.to_json()
    with pytest.raises(TypeError, match="not both"):
        bm.plan(LLAMA, request, dtype="fp16")


def test_run_plan_takes_one_request_record_or_its_keywords_not_both() -> None:
    plan = bm.plan(LLAMA, max_memory="cpu=1GB")
    request = bm.RunPlanRequest(dtype="bf16", verify=True)
    by_record = bm.run_plan(LLAMA, plan=plan, request=request)
    by_keywords = bm.run_plan(LLAMA, plan=plan, dtype=torch.bfloat16, verify=True)
    assert by_record.verified and by_keywords.verified
    assert by_record.dtype == by_keywords.dtype == "bfloat16"
    assert [d.loaded for d in by_record.devices] == [d.loaded for d in by_keywords.devices]
    with pytest.raises(TypeError, match="not both"):
        bm.run_plan(LLAMA, plan=plan, request=request, verify=True)
