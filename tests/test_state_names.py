"""Which entries of a training state are the model's, and their names (pure)."""

from __future__ import annotations

import pytest

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.state_names import Stored, select


def _names(paths: list[tuple[str, ...]], include_optimizer: bool = False) -> list[str]:
    found = select([Stored(p, True) for p in paths], include_optimizer, "x")
    return [name for _, name in found.chosen]


def test_the_entries_under_model_lose_that_key_only() -> None:
    paths = [
        ("model", "model.embed.weight"),
        ("model", "lm_head.weight"),
        ("optim", "state.0.exp_avg"),
    ]
    assert _names(paths) == ["model.embed.weight", "lm_head.weight"]
    assert _names(paths, include_optimizer=True)[-1] == "optim.state.0.exp_avg"


def test_a_flat_state_keeps_its_names_and_drops_optimizer_keys() -> None:
    paths = [("embed.weight",), ("state", "embed.weight", "exp_avg"), ("param_groups", "0", "lr")]
    assert _names(paths) == ["embed.weight"]


def test_wrappers_are_stripped_and_said() -> None:
    paths = [
        ("model", "module._orig_mod.layers.0._fsdp_wrapped_module.weight"),
        ("model", "module._orig_mod.head.weight"),
    ]
    found = select([Stored(p, True) for p in paths], False, "x")
    assert [n for _, n in found.chosen] == ["layers.0.weight", "head.weight"]
    assert any("'_orig_mod' from 2" in note for note in found.notes)
    assert any("'module' from 2" in note for note in found.notes)


def test_a_leading_module_is_kept_unless_every_name_has_it() -> None:
    assert _names([("module.a",), ("b",)]) == ["module.a", "b"]


def test_other_entries_and_objects_are_left_out_and_counted() -> None:
    stored = [Stored(("model", "w"), True), Stored(("rng",), True), Stored(("model", "x"), False)]
    found = select(stored, True, "x")
    assert [n for _, n in found.chosen] == ["w"]
    assert any("left out 2 other entries" in note for note in found.notes)


def test_two_entries_becoming_one_name_are_refused() -> None:
    with pytest.raises(BigmodelError, match="both become 'w'"):
        _names([("_orig_mod.w",), ("w",)])
