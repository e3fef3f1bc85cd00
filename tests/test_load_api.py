"""``load(folder, plan)`` and ``generate()``: a user's script runs what a plan placed.

A tiny Stable Diffusion pipeline (real tokenizer, saved by diffusers) loaded from a
balanced, an auto (UNet split over cpu and disk) and a sequential plan must give the
image ``StableDiffusionPipeline.from_pretrained`` gives; a tiny Llama split over cpu and
disk must generate the tokens of the unsplit model.
"""

from __future__ import annotations

import gc
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigmodel_cli import generate, load
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.placement.plan import plan_from_json
from tests.helpers import FIXTURES
from tests.helpers.plans import hand_plan

pytestmark = pytest.mark.filterwarnings("ignore")

PROMPT = "a photo of a cat"
RUN = {"steps": 2, "seed": 0, "height": 32, "width": 32}
WHOLE = {"unet": "cpu", "vae": "cpu", "text_encoder": "cpu"}
UNET_MAP = {  # block level: the down path on cpu, the middle and up path on disk
    "conv_in": "cpu",
    "time_proj": "cpu",
    "time_embedding": "cpu",
    "down_blocks.0": "cpu",
    "down_blocks.1": "cpu",
    "mid_block": "disk",
    "up_blocks.0": "disk",
    "up_blocks.1": "disk",
    "conv_norm_out": "cpu",
    "conv_act": "cpu",
    "conv_out": "cpu",
}
LLAMA_MAP = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "disk",
    "model.layers.3": "cpu",
    "model.norm": "cpu",
    "lm_head": "disk",
}


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Stable Diffusion pipeline saved by diffusers, with a usable CLIP tokenizer."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from make_fixtures import tiny_text_encoder, tiny_unet, tiny_vae
    from transformers import CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(
        FIXTURES / "tiny-pipeline" / "tokenizer", model_max_length=77
    )
    pipe = StableDiffusionPipeline(
        unet=tiny_unet(),
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(),
        tokenizer=tokenizer,
        scheduler=DDPMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    path = tmp_path_factory.mktemp("load") / "sd"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(sd_folder: Path) -> np.ndarray:
    """The image of diffusers' own unplaced pipeline, called with the same arguments."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_folder)
    out = pipe(
        PROMPT,
        num_inference_steps=RUN["steps"],
        generator=torch.Generator("cpu").manual_seed(RUN["seed"]),
        height=RUN["height"],
        width=RUN["width"],
        output_type="np",
    )
    return np.asarray(out.images[0])


def _plan(
    folder: Path,
    device_map: dict[str, Any],
    maps: dict[str, dict[str, Any]] | None = None,
    *,
    strategy: str = "balanced",
    dtype: str | None = None,
    execution: Any = None,
) -> dict[str, Any]:
    """A plan document for ``folder`` placing its components by hand."""
    doc = hand_plan(folder, device_map, maps, dtype=dtype, strategy=strategy)
    return doc | {"execution_device": execution}


def _image(pipe: Any) -> np.ndarray:
    return np.asarray(generate(pipe, PROMPT, output_type="np", **RUN))


def _assert_same(image: np.ndarray, reference: np.ndarray) -> None:
    assert image.shape == reference.shape == (RUN["height"], RUN["width"], 3)
    assert float(np.abs(image - reference).max()) <= 1e-5


def test_balanced_plan_on_cpu_gives_diffusers_image(sd_folder: Path, reference: Any) -> None:
    pipe = load(sd_folder, _plan(sd_folder, WHOLE))
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.hf_device_map == WHOLE
    assert pipe.tokenizer is not None and pipe.scheduler is not None
    for name in WHOLE:  # dispatched as diffusers does: inputs moved to it, outputs back
        hook = getattr(pipe, name)._hf_hook
        assert hook.io_same_device and hook.execution_device == "cpu"
    _assert_same(_image(pipe), reference)


def test_auto_plan_splits_unet_over_cpu_and_disk(sd_folder: Path, reference: Any) -> None:
    plan = _plan(sd_folder, {**WHOLE, "unet": "split"}, {"unet": UNET_MAP}, strategy="auto")
    pipe = load(sd_folder, plan)
    assert pipe.hf_device_map == {**WHOLE, "unet": "split"}
    assert pipe.unet.hf_device_map == UNET_MAP
    assert pipe.unet.up_blocks[0].resnets[0].conv1.weight.device.type == "meta"  # on disk
    assert pipe.unet.down_blocks[0].resnets[0].conv1.weight.device.type == "cpu"
    offload = Path(pipe._bigmodel_offload_folder)
    assert any(offload.rglob("*.dat"))
    _assert_same(_image(pipe), reference)
    del pipe
    gc.collect()
    assert not offload.exists()  # the offload folder lives as long as the pipeline


def test_sequential_plan_is_model_cpu_offload(sd_folder: Path, reference: Any) -> None:
    plan = _plan(sd_folder, WHOLE, strategy="sequential", execution="cpu")
    pipe = load(sd_folder, plan)
    assert pipe.hf_device_map is None  # diffusers refuses offload on a device-mapped pipeline
    assert len(pipe._all_hooks) == 3 and pipe._offload_device.type == "cpu"
    _assert_same(_image(pipe), reference)
    _assert_same(_image(pipe), reference)  # the hooks are set again after each call


def test_auto_plan_from_the_planner_splits_the_unet_over_cpu_and_disk(
    sd_folder: Path, reference: Any
) -> None:
    """``bigmodel plan --strategy auto`` with little RAM and no GPU: what fits RAM whole
    stays whole, the UNet's blocks go to cpu while they fit and the rest to disk."""
    import bigmodel_cli as bm

    plan = bm.plan(sd_folder, max_memory="cpu=1200KB,disk", strategy="auto")
    assert plan.device_map["unet"] == "split"
    assert set(plan.component_maps["unet"].values()) == {"cpu", "disk"}
    pipe = bm.load(sd_folder, plan)
    assert pipe.hf_device_map == plan.device_map
    assert pipe.unet.hf_device_map == plan.component_maps["unet"]
    _assert_same(_image(pipe), reference)


def test_plan_devices_are_read_in_one_spelling(sd_folder: Path) -> None:
    doc = _plan(sd_folder, WHOLE)
    doc["devices"] |= {"0": {"capacity": 10, "planned": 0}, "1": {"capacity": 10, "planned": 0}}
    doc["device_map"] = {"unet": "split", "vae": "cuda:1", "text_encoder": "0"}
    doc["component_maps"] = {"unet": {"conv_in": 0, "up_blocks.0": "disk"}}
    doc["devices"]["disk"] = {"capacity": None, "planned": 0}
    plan = plan_from_json(doc)
    assert plan.device_map == {"unet": "split", "vae": 1, "text_encoder": 0}
    assert plan.module_map("unet") == {"conv_in": 0, "up_blocks.0": "disk"}
    assert plan.module_map("vae") == {"": 1}


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama saved by transformers (sharded), with a small tokenizer beside it."""
    import torch
    from make_fixtures import tiny_llama

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("load") / "llama"
    tiny_llama().save_pretrained(path, max_shard_size="100KB")
    for f in (FIXTURES / "tiny-pipeline" / "tokenizer").iterdir():
        shutil.copy(f, path / f.name)
    return path


def test_llama_split_over_cpu_and_disk_generates_the_same(llama_folder: Path) -> None:
    from transformers import LlamaForCausalLM

    whole = LlamaForCausalLM.from_pretrained(llama_folder)
    split = load(
        llama_folder, _plan(llama_folder, {"llama": "split"}, {"llama": LLAMA_MAP}, strategy="auto")
    )
    assert type(split).__name__ == "LlamaForCausalLM"
    assert split.hf_device_map == LLAMA_MAP
    assert split.lm_head.weight.device.type == "meta"  # offloaded to disk
    ids = [1, 5, 7, 9, 11]
    expected = generate(whole, input_ids=ids, max_new_tokens=8)
    assert len(expected) == 8 and generate(split, input_ids=ids, max_new_tokens=8) == expected
    text = generate(whole, "abc", max_new_tokens=6)
    assert isinstance(text, str) and generate(split, "abc", max_new_tokens=6) == text


def test_llama_auto_plan_over_cpu_and_disk_generates_the_unsplit_tokens(
    llama_folder: Path,
) -> None:
    """The planner's own auto plan (no GPU, RAM for about half the model) splits the
    layers between cpu and disk; greedy generation is token for token the unsplit one."""
    from transformers import LlamaForCausalLM

    import bigmodel_cli as bm

    total = sum(p.stat().st_size for p in llama_folder.glob("*.safetensors"))
    plan = bm.plan(llama_folder, max_memory=f"cpu={total // 2},disk", strategy="auto")
    assert plan.device_map == {"llama": "split"}
    assert set(plan.component_maps["llama"].values()) == {"cpu", "disk"}
    whole = LlamaForCausalLM.from_pretrained(llama_folder)
    split = bm.load(llama_folder, plan)
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    expected = bm.generate(whole, input_ids=ids, max_new_tokens=10)
    assert bm.generate(split, input_ids=ids, max_new_tokens=10) == expected


def test_llama_sequential_runs_with_hooks_at_the_plan_dtype(llama_folder: Path) -> None:
    import torch

    plan = _plan(
        llama_folder, {"llama": "cpu"}, strategy="sequential", dtype="bf16", execution="cpu"
    )
    model = load(llama_folder, plan)
    assert hasattr(model, "_hf_hook") and model.dtype == torch.bfloat16
    assert len(generate(model, input_ids=[1, 2, 3], max_new_tokens=4)) == 4


def test_missing_library_names_the_extra(
    sd_folder: Path, llama_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(BigmodelError, match=r"pip install 'bigmodel-cli\[diffusers\]'"):
        load(sd_folder, _plan(sd_folder, WHOLE))
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(BigmodelError, match=r"pip install 'bigmodel-cli\[transformers\]'"):
        load(llama_folder, _plan(llama_folder, {"llama": "cpu"}))


def test_plan_naming_an_unknown_component_is_refused(sd_folder: Path) -> None:
    with pytest.raises(BigmodelError, match="'prior'"):
        load(sd_folder, _plan(sd_folder, {**WHOLE, "prior": "cpu"}))
