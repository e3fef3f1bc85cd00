"""Plans in the names the libraries build: a zoo of architectures, each built from the
library's own default config (shrunk), saved by its own ``save_pretrained`` in shards, split
over cpu + disk by the planner and loaded with ``bm.load``: the logits are the unsplit
model's, bit for bit; ``auto`` over two pretend GPUs keeps no more bytes off them than
accelerate's ``infer_auto_device_map``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

import bigmodel_cli as bm
from bigmodel_cli.checkpoint import load_checkpoint
from bigmodel_cli.checkpoint.built_names import BuiltNames, translate_map
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.placement import make_plan
from bigmodel_cli.placement.built import joined_pairs
from tests.helpers.cli import run_cli
from tests.helpers.plans import accelerate_map, off_gpu
from tests.helpers.zoo import Built, build_and_save, expected_logits, max_difference, split_plan

IMAGE_TEXT = ("llava", "qwen2_vl", "gemma3", "mistral3", "internvl")
MOE = ("mixtral", "qwen2_moe", "deepseek_v3")
CAUSAL = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "phi3",
    "gpt2",
    "opt",
    "bloom",
    "falcon",
    "gpt_neox",
    "starcoder2",
    "olmo",
    "stablelm",
    "cohere",
    "mamba",  # state-space
    *MOE,
)
ZOO = [
    *((t, "causal") for t in CAUSAL),
    *((t, "image-text") for t in IMAGE_TEXT),
    ("t5", "seq2seq"),
    ("bart", "seq2seq"),
    ("bert", "masked"),
    ("roberta", "masked"),
]


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return tmp_path_factory.mktemp("zoo")


_BUILT: dict[str, tuple[Built, Any]] = {}


def _built(root: Path, model_type: str, kind: str) -> tuple[Built, Any]:
    """The architecture saved once per module, with its unsplit logits."""
    if model_type not in _BUILT:
        built = build_and_save(model_type, kind, root)
        _BUILT[model_type] = (built, expected_logits(built))
    return _BUILT[model_type]


def test_the_zoo_is_what_the_issue_asks() -> None:
    assert len(ZOO) >= 25 and len(IMAGE_TEXT) >= 4 and len(MOE) >= 3
    assert {"seq2seq", "masked"} <= {kind for _, kind in ZOO} and "mamba" in CAUSAL


@pytest.mark.parametrize(("model_type", "kind"), ZOO)
def test_split_over_cpu_and_disk_gives_the_unsplit_logits(
    zoo_root: Path, model_type: str, kind: str
) -> None:
    built, expected = _built(zoo_root, model_type, kind)
    assert len(list(built.folder.glob("*.safetensors"))) > 1  # saved in shards
    plan = split_plan(built)
    assert plan.device_map == {model_type: "split"}
    assert set(plan.component_maps[model_type].values()) == {"cpu", "disk"}
    assert plan.names[model_type]["library"].startswith("transformers ")
    assert max_difference(built, plan, expected) == 0


def _meta_model(built: Built) -> Any:
    import transformers
    from accelerate import init_empty_weights

    from tests.helpers.zoo import KINDS

    config = transformers.AutoConfig.from_pretrained(built.folder)
    with init_empty_weights():
        model = getattr(transformers, KINDS[built.kind]).from_config(config)
    model.tie_weights()
    return model


def _unique_sizes(model: Any) -> dict[str, int]:
    """Bytes of each tensor of the state dict, a tied tensor counted once."""
    from accelerate.utils import find_tied_parameters

    state = model.state_dict()
    duplicates = {n for group in find_tied_parameters(model) for n in sorted(group)[1:]}
    return {n: t.numel() * t.element_size() for n, t in state.items() if n not in duplicates}


@pytest.mark.parametrize(("model_type", "kind"), ZOO)
def test_auto_over_two_gpus_keeps_no_more_off_them_than_accelerate(
    zoo_root: Path, model_type: str, kind: str
) -> None:
    built, _ = _built(zoo_root, model_type, kind)
    gpu = built.nbytes // 2
    plan = make_plan(
        built.folder, max_memory=f"0={gpu},1={gpu},cpu={built.nbytes * 10}", strategy="auto"
    )
    ours = sum(d.planned for d in plan.devices if not isinstance(d.key, int))
    model = _meta_model(built)
    theirs = accelerate_map(model, {0: gpu, 1: gpu, "cpu": built.nbytes * 10}, None)
    assert ours <= off_gpu(_unique_sizes(model), theirs)


# ---------------------------------------------------------------- fused experts


@pytest.fixture(scope="module")
def mixtral(zoo_root: Path) -> tuple[Built, Any]:
    return _built(zoo_root, "mixtral", "causal")


def test_mixtral_stored_per_expert_is_built_fused_and_split_below_a_layer(
    mixtral: tuple[Built, Any],
) -> None:
    built, expected = mixtral
    stored = [t.name for t in load_checkpoint(built.folder).components[0].tensors]
    assert any(".experts.0.w1.weight" in n for n in stored)  # saved one tensor per expert
    model = _meta_model(built)
    assert "model.layers.0.mlp.experts.gate_up_proj" in model.state_dict()  # built fused
    layer = sum(
        t.nbytes
        for t in load_checkpoint(built.folder).components[0].tensors
        if t.name.startswith("model.layers.0.")
    )
    plan = make_plan(built.folder, max_memory=f"cpu={layer // 2},disk", strategy="auto")
    stored_map = plan.stored_map("mixtral")
    devices = {
        n: next(d for k, d in stored_map.items() if n == k or n.startswith(k + "."))
        for n in stored
        if "model.layers.0.block_sparse_moe.experts." in n
    }
    assert len(set(devices.values())) == 1  # the pieces of one fused tensor stay together
    assert plan.names["mixtral"]["fused"] > 0
    assert max_difference(built, plan, expected) == 0


def test_a_gpu_smaller_than_a_layer_never_cuts_the_fused_experts(
    mixtral: tuple[Built, Any],
) -> None:
    built, _ = mixtral
    tensors = load_checkpoint(built.folder).components[0].tensors
    expert = sum(t.nbytes for t in tensors if ".layers.0.block_sparse_moe.experts.0." in t.name)
    plan = make_plan(
        built.folder, max_memory=f"0={expert * 3},cpu={expert * 3},disk", strategy="auto"
    )
    built_map = plan.component_maps["mixtral"]
    assert not any(".experts." in k for k in built_map)
    translate_map(plan.stored_map("mixtral"), _names(built))  # agrees: raises otherwise


def _names(built: Built) -> BuiltNames:
    from bigmodel_cli.runtime.library import library_names

    c = load_checkpoint(built.folder).components[0]
    return library_names(c.folder, [t.name for t in c.tensors])


# ---------------------------------------------------------------- the translation


def test_pieces_of_one_fused_tensor_on_two_devices_are_refused() -> None:
    names = BuiltNames(
        library="transformers x",
        built={"e.0.w": "experts.w", "e.1.w": "experts.w"},
        params=("experts.w",),
    )
    assert translate_map({"e.0": "cpu", "e.1": "cpu"}, names) == {"": "cpu"}
    with pytest.raises(BigmodelError, match="builds as one tensor"):
        translate_map({"e.0": "cpu", "e.1": "disk"}, names)
    assert joined_pairs(names) == [("e.0.w", "e.1.w")]


def test_a_tied_tensor_the_checkpoint_lacks_goes_with_its_partner() -> None:
    names = BuiltNames(
        library="transformers x",
        built={"a.embed.weight": "model.embed.weight", "a.norm.weight": "model.norm.weight"},
        params=("model.embed.weight", "model.norm.weight", "lm_head.weight"),
        tied=(("lm_head.weight", "model.embed.weight"),),
    )
    found = translate_map({"a.embed": "disk", "a.norm": "cpu"}, names)
    assert found == {"model.embed": "disk", "model.norm": "cpu", "lm_head": "disk"}


@pytest.fixture(scope="module")
def llava(zoo_root: Path) -> tuple[Built, Any]:
    return _built(zoo_root, "llava", "image-text")


def test_the_plan_carries_both_names(llava: tuple[Built, Any]) -> None:
    built, _ = llava
    doc = split_plan(built).to_json()
    assert any(k.startswith("model.language_model.") for k in doc["component_maps"]["llava"])
    assert any(k.startswith("language_model.") for k in doc["stored_maps"]["llava"])
    assert doc["names"]["llava"]["key_mapping"]["^vision_tower"] == "model.vision_tower"


def test_without_transformers_the_plan_says_so_and_load_translates(
    llava: tuple[Built, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    built, expected = llava
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "transformers", None)
        plan = split_plan(built)
    assert "not importable" in plan.names["llava"]["note"]
    assert any("translates them" in n for n in plan.notes)
    assert any(k.startswith("language_model.") for k in plan.component_maps["llava"])
    assert max_difference(built, plan, expected) == 0


def test_a_checkpoint_in_the_new_names_loads_from_its_plan(
    llava: tuple[Built, Any], tmp_path: Path
) -> None:
    import shutil

    import transformers
    from safetensors.torch import save_file

    built, expected = llava
    model = transformers.AutoModelForImageTextToText.from_pretrained(built.folder)
    folder = tmp_path / "llava-new"
    folder.mkdir()
    shutil.copy(built.folder / "config.json", folder / "config.json")
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    state["lm_head.weight"] = model.lm_head.weight.clone()
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    new = Built("llava", "image-text", folder, built.nbytes)
    plan = split_plan(new)
    assert plan.names["llava-new"]["renamed"] == 0 and not plan.stored_maps
    assert max_difference(new, plan, expected) == 0


def test_run_forward_and_generate_use_the_built_names(
    llava: tuple[Built, Any], zoo_root: Path, tmp_path: Path
) -> None:
    built, _ = llava
    path = split_plan(built).save(tmp_path / "plan.json").path
    result = run_cli("run", built.folder, "--plan", path, "--forward", "--json")
    assert result.code == 0, result.stderr
    forward = json.loads(result.stdout)["forward"]["llava"]
    assert forward["class"] == "LlavaForConditionalGeneration" and forward["skipped"] is None
    assert forward["output_shape"][-1] == 256  # logits over the vocabulary
    neox, _ = _built(zoo_root, "gpt_neox", "causal")
    plan = split_plan(neox)
    assert "lm_head" in plan.component_maps["gpt_neox"]
    import transformers

    whole = transformers.GPTNeoXForCausalLM.from_pretrained(neox.folder)
    ids = [5, 6, 7, 8]
    expected = bm.generate(whole, input_ids=ids, max_new_tokens=6)
    assert bm.generate(bm.load(neox.folder, plan), input_ids=ids, max_new_tokens=6) == expected


def test_inspect_tensors_shows_both_names(zoo_root: Path) -> None:
    neox, _ = _built(zoo_root, "gpt_neox", "causal")
    result = run_cli("inspect", neox.folder, "--tensors", "--json")
    assert result.code == 0, result.stderr
    listed = json.loads(result.stdout)["components"]["gpt_neox"]["tensor_list"]
    by_name = {t["name"]: t for t in listed}
    assert by_name["embed_out.weight"]["built"] == "lm_head.weight"
    assert "built" not in by_name["gpt_neox.embed_in.weight"]
    table = run_cli("inspect", neox.folder, "--tensors")
    assert "built as" in table.stdout and "lm_head.weight" in table.stdout


def test_a_plan_that_counts_the_run_is_in_the_built_names_too(
    llava: tuple[Built, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BIGMODEL_TRACE_WORKERS", "0")
    monkeypatch.setenv("BIGMODEL_TRACES", str(tmp_path / "traces"))
    built, expected = llava
    plan = make_plan(
        built.folder, max_memory=f"cpu={built.nbytes // 2},disk", strategy="auto", context=8
    )
    assert plan.shape.counted and plan.device_map == {"llava": "split"}
    assert any(k.startswith("model.language_model.") for k in plan.component_maps["llava"])
    assert max_difference(built, plan, expected) == 0
