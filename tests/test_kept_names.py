"""A split plan keeps the names its library builds: planning the same model again neither
builds it on the meta device nor imports transformers, and gives the same plan. A kept file
is checked on read: a damaged one is passed over, transformers is asked again, and the plan
says so."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bigmodel_cli.runtime.kept_names import names_key
from tests.helpers.cli import run_cli, run_counting_imports, run_subprocess
from tests.helpers.zoo import Built, build_and_save, split_plan


@pytest.fixture(scope="module")
def neox(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """GPT-NeoX stores ``embed_out`` and transformers builds ``lm_head``: a kept answer
    that were wrong would show in the map."""
    return build_and_save("gpt_neox", "causal", tmp_path_factory.mktemp("zoo"))


def _kept(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "names").glob("*.json"))  # BIGMODEL_NAMES, from conftest


def test_a_second_split_plan_reads_the_kept_names(
    neox: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = split_plan(neox).to_json()
    assert "lm_head" in json.dumps(first["component_maps"])  # translated
    assert len(_kept(tmp_path)) == 1

    def not_again(*args: object) -> Any:
        raise AssertionError("transformers asked again")

    monkeypatch.setattr("bigmodel_cli.runtime.library._asked", not_again)
    assert split_plan(neox).to_json() == first


def test_kept_names_spare_the_transformers_import(neox: Built) -> None:
    args = ["plan", str(neox.folder), "--max-memory", f"cpu={neox.nbytes // 2},disk"]
    args += ["--strategy", "auto", "--json"]
    first = run_subprocess(*args)  # BIGMODEL_NAMES and BIGMODEL_TRACES: this test's own
    assert first.code == 0, first.stderr[-2000:]
    again, imported = run_counting_imports(*args)
    assert again.code == 0, again.stderr[-2000:]
    assert "bigmodel_cli.runtime.kept_names" in imported  # the list saw this run's imports
    assert "torch" not in imported and "transformers" not in imported
    assert json.loads(again.stdout) == json.loads(first.stdout)


POISONS: dict[str, Any] = {
    "schema": lambda d: d | {"schema": 2},
    "library": lambda d: d | {"library": 5},
    "params": lambda d: d | {"params": "lm_head.weight"},
    "tied": lambda d: d | {"tied": [[1, 2]]},
    "key_mapping": lambda d: d | {"key_mapping": {"a": None}},
    "built of other names": lambda d: d | {"built": {"x.weight": None}},
    "built outside the model": lambda d: d | {"built": dict.fromkeys(d["built"], "not.a.param")},
    "no_split": lambda d: d | {"no_split": None},
    "schema true": lambda d: d | {"schema": True},
    "a param twice": lambda d: d | {"params": d["params"] + d["params"][:1]},
    "built takes nothing": lambda d: d | {"built": dict.fromkeys(d["built"])},
    "tied outside the model": lambda d: d | {"tied": [["nope", d["params"][0]]]},
    "no_split outside the model": lambda d: d | {"no_split": ["nope"]},
    "a name 30,000 parts deep": lambda d: d | {"params": [*d["params"], "a." * 30_000 + "w"]},
}


@pytest.mark.parametrize("poison", [*POISONS, "not json", "fifo", "link to /dev/zero"])
def test_a_damaged_kept_names_file_is_asked_again_and_said_so(
    neox: Built, tmp_path: Path, poison: str
) -> None:
    first = split_plan(neox).to_json()
    [kept] = _kept(tmp_path)
    if poison in POISONS:
        kept.write_text(json.dumps(POISONS[poison](json.loads(kept.read_text()))))
    elif poison == "not json":
        kept.write_text('{"schema": 1, "built": ')
    else:
        kept.unlink()
        os.mkfifo(kept) if poison == "fifo" else kept.symlink_to("/dev/zero")
    again = split_plan(neox).to_json()
    assert again["component_maps"] == first["component_maps"]
    [record] = again["names"].values()
    assert "passed over" in record["repaired"] and "asked again" in record["repaired"], record
    if poison in ("fifo", "link to /dev/zero"):  # not ours to replace: left as it is
        assert kept.is_symlink() or not kept.is_file()
    else:  # kept again, whole: the next plan takes it
        assert "repaired" not in next(iter(split_plan(neox).to_json()["names"].values()))


def test_the_key_follows_the_config_the_class_and_the_stored_names() -> None:
    key = names_key("GPTNeoXForCausalLM", {"hidden_size": 8}, ["a", "b"])
    assert key == names_key("GPTNeoXForCausalLM", {"hidden_size": 8}, ["a", "b"])
    assert key != names_key("GPTNeoXForCausalLM", {"hidden_size": 16}, ["a", "b"])
    assert key != names_key("LlamaForCausalLM", {"hidden_size": 8}, ["a", "b"])
    assert key != names_key("GPTNeoXForCausalLM", {"hidden_size": 8}, ["a", "c"])


def test_the_cli_plan_says_a_kept_file_was_passed_over(neox: Built, tmp_path: Path) -> None:
    args = ("plan", neox.folder, "--max-memory", f"cpu={neox.nbytes // 2},disk")
    assert run_cli(*args, "--strategy", "auto", "--json").code == 0
    [kept] = _kept(tmp_path)
    kept.write_text("[]")
    result = run_cli(*args, "--strategy", "auto", "--json")
    assert result.code == 0, result.stderr
    [record] = json.loads(result.stdout)["names"].values()
    assert "passed over" in record["repaired"]
