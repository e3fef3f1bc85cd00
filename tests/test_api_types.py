"""Every API verb refuses an argument of the wrong type with one error naming it (issue 22):
a :class:`BigmodelError` carrying ``argument`` (the CLI writes it as the flag) or a
``TypeError``, never an AttributeError from deep inside, and never a wrong type accepted
silently into a plan that the reader later refuses. The CLI's values pass the same checks
(one check, in the request records), so the CLI and the API share the bounds."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import bigmodel_cli as bm
from bigmodel_cli.arguments import MAX_RUN_COUNT
from bigmodel_cli.errors import BigmodelError
from tests.helpers import FIXTURES
from tests.helpers.cli import run_cli

SINGLE = FIXTURES / "single.safetensors"
LLAMA = FIXTURES / "tiny-llama"
BUDGET = "cpu=1GB"
FLAG = "must be True or False"
COUNT = f"must be at least 1 and at most {MAX_RUN_COUNT}, a whole number"
TEXT = "must be a str"
PATH = r"must be a path \(str or pathlib.Path\)"
NAMES = r"must be a list of names \(str\)"

# (argument, wrong value, what the message says it accepts), for bm.plan's keywords
PLAN_WRONG: list[tuple[str, Any, str]] = [
    ("quantize", 4, TEXT),
    ("kv_dtype", 5, TEXT),
    ("strategy", 5, TEXT),
    ("variant", 5, TEXT),
    ("revision", 5, TEXT),
    ("context", 1.5, COUNT),
    ("context", True, COUNT),
    ("context", 0, COUNT),
    ("batch", 1.5, COUNT),
    ("height", 10**30, COUNT),
    ("width", MAX_RUN_COUNT + 1, COUNT),
    ("frames", "8", COUNT),
    ("encoder_length", -1, COUNT),
    ("offline", "yes", FLAG),
    ("counted", "x", FLAG),
    ("double_quant", "y", FLAG),
    ("no_split", "model", NAMES),
    ("no_split", [5], NAMES),
    ("no_quantize", [None], NAMES),
    ("no_quantize", "lm_head", NAMES),
]


@pytest.mark.parametrize(("argument", "value", "accepts"), PLAN_WRONG)
def test_plan_refuses_a_wrong_type_naming_the_argument(
    argument: str, value: Any, accepts: str
) -> None:
    with pytest.raises(BigmodelError, match=f"^{argument} {accepts}") as info:
        bm.plan(SINGLE, max_memory=BUDGET, **{argument: value})
    assert info.value.argument == argument


def test_nodes_and_procs_per_node_are_counts_too() -> None:
    for argument in ("nodes", "procs_per_node"):
        with pytest.raises(BigmodelError, match=f"^{argument} {COUNT}") as info:
            bm.plan(SINGLE, max_memory=BUDGET, **{argument: 2.0})
        assert info.value.argument == argument


@pytest.mark.parametrize("request_", [{"max_memory": {"cpu": "1GB"}}, 5, "x"])
def test_plan_refuses_anything_but_a_plan_request_as_its_second_argument(request_: Any) -> None:
    with pytest.raises(TypeError, match="^request must be a PlanRequest"):
        bm.plan(SINGLE, request_)


def test_a_plan_request_made_by_hand_is_checked_as_the_keywords_are() -> None:
    with pytest.raises(BigmodelError, match=f"^no_split {NAMES}"):
        bm.plan(SINGLE, bm.PlanRequest(max_memory=BUDGET, no_split="ab"))


def test_a_float_context_never_reaches_a_saved_plan(tmp_path: Path) -> None:
    """The hostile case: context=1.5 used to plan 'planned' as a float, written by save()
    and refused by read_plan. Now refused at once; a whole context round-trips."""
    with pytest.raises(BigmodelError, match=f"^context {COUNT}"):
        bm.plan(LLAMA, max_memory=BUDGET, context=1.5, counted=True)
    saved = bm.plan(LLAMA, max_memory=BUDGET, context=64, counted=True).save(tmp_path / "p.json")
    back = bm.read_plan(tmp_path / "p.json")
    assert back.shape.context == 64 and back.to_json() == saved.to_json()
    assert all(type(d.planned) is int for d in back.devices)


def test_the_accepted_forms_of_names_and_counts_still_plan() -> None:
    by_list = bm.plan(LLAMA, max_memory=BUDGET, no_split=["model.layers.0"], context=MAX_RUN_COUNT)
    by_tuple = bm.plan(
        LLAMA, max_memory=BUDGET, no_split=("model.layers.0",), context=MAX_RUN_COUNT
    )
    assert by_list.to_json() == by_tuple.to_json()


def test_the_cli_refuses_an_absurd_shape_with_the_same_check_naming_its_flag() -> None:
    found = run_cli("plan", SINGLE, "--max-memory", BUDGET, "--height", str(10**30))
    assert found.code == 2
    assert f"--height {COUNT}" in found.stderr
    found = run_cli("plan", SINGLE, "--max-memory", BUDGET, "--nodes", "0")
    assert found.code == 2 and f"--nodes {COUNT}" in found.stderr


# ---------------------------------------------------------------- every verb's arguments


# (argument, what the message says it accepts, a call giving it a wrong type) for every
# verb; ``out``: a folder that must not be written, ``plan``: a good plan
Call = Callable[[Path, Any], Any]
VERB_WRONG: list[tuple[str, str, Call]] = [
    ("source", PATH, lambda out, plan: bm.inspect(5)),
    ("offline", FLAG, lambda out, plan: bm.inspect(SINGLE, offline=1)),
    ("include_optimizer", FLAG, lambda out, plan: bm.inspect(SINGLE, include_optimizer="x")),
    ("revision", TEXT, lambda out, plan: bm.inspect(SINGLE, revision=5)),
    ("source", PATH, lambda out, plan: bm.plan(5)),
    ("source", PATH, lambda out, plan: bm.shard(5, out)),
    ("output", PATH, lambda out, plan: bm.shard(SINGLE, 5)),
    ("config", PATH, lambda out, plan: bm.shard(SINGLE, out, config=5)),
    ("force", FLAG, lambda out, plan: bm.shard(SINGLE, out, force="x")),
    ("variant", TEXT, lambda out, plan: bm.shard(SINGLE, out, variant=5)),
    ("include_optimizer", FLAG, lambda out, plan: bm.merge(SINGLE, out, include_optimizer=1)),
    ("source", PATH, lambda out, plan: bm.merge(5, out)),
    ("output", PATH, lambda out, plan: bm.merge(SINGLE, 5)),
    ("config", PATH, lambda out, plan: bm.merge(SINGLE, out, config=[5])),
    ("path", PATH, lambda out, plan: bm.read_plan(5)),
    ("path", PATH, lambda out, plan: bm.read_plan(None)),
    ("path", PATH, lambda out, plan: plan.save(5)),
    ("source", PATH, lambda out, plan: bm.load(5, plan)),
    ("plan", "must be the path of a plan file", lambda out, plan: bm.load(SINGLE, 5)),
    ("source", PATH, lambda out, plan: bm.run_plan(5, plan=plan)),
    ("plan", "must be the path of a plan file", lambda out, plan: bm.run_plan(SINGLE, plan=5)),
    ("verify", FLAG, lambda out, plan: bm.run_plan(SINGLE, plan=plan, verify="x")),
    ("copy", FLAG, lambda out, plan: bm.run_plan(SINGLE, plan=plan, copy=1)),
    ("variant", TEXT, lambda out, plan: bm.run_plan(SINGLE, plan=plan, variant=5)),
    ("steps", COUNT, lambda out, plan: bm.generate(object(), "a cat", steps=1.5)),
    ("max_new_tokens", COUNT, lambda out, plan: bm.generate(object(), "x", max_new_tokens=None)),
    (
        "seed",
        "must be a whole number from 0",
        lambda out, plan: bm.generate(object(), "x", seed=-1),
    ),
    ("prompt", TEXT, lambda out, plan: bm.generate(object(), ["a cat"])),
    ("output_type", TEXT, lambda out, plan: bm.generate(object(), "x", output_type=5)),
]


@pytest.fixture(scope="module")
def plan() -> Any:
    return bm.plan(SINGLE, max_memory=BUDGET)


@pytest.mark.parametrize(("argument", "accepts", "call"), VERB_WRONG)
def test_every_verb_refuses_a_wrong_type_naming_the_argument(
    tmp_path: Path, plan: Any, argument: str, accepts: str, call: Call
) -> None:
    with pytest.raises(BigmodelError) as info:
        call(tmp_path / "out", plan)
    assert info.value.argument == argument, str(info.value)
    assert re.match(f"{argument} {accepts}", str(info.value)), str(info.value)
    assert not (tmp_path / "out").exists()  # nothing written by a refused shard or merge


@pytest.mark.parametrize(
    ("verb", "record"),
    [("run_plan", "RunPlanRequest"), ("generate", "GenerateRequest")],
)
def test_run_verbs_refuse_anything_but_their_record_as_request(verb: str, record: str) -> None:
    call: dict[str, Callable[[], Any]] = {
        "run_plan": lambda: bm.run_plan(SINGLE, plan="p.json", request={"verify": True}),
        "generate": lambda: bm.generate(object(), "x", {"steps": 1}),
    }
    with pytest.raises(TypeError, match=f"^request must be a {record}"):
        call[verb]()
