"""`bigmodel run`: carry out a plan on this machine, check it, report what it cost."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from bigmodel_cli.checkpoint import load_checkpoint
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.placement.plan import read_plan
from bigmodel_cli.run import run_plan
from bigmodel_cli.run.load import load_tensors
from bigmodel_cli.run.place import missing_devices, module_device, placements, shortfalls
from tests.helpers.checkpoints import write_raw
from tests.helpers.cli import FIXTURES, assert_one_line_error, run_cli, run_subprocess
from tests.helpers.plans import hand_plan, write_plan
from tests.helpers.trees import copy_tree, flip_byte

PIPELINE = FIXTURES / "tiny-pipeline"
LLAMA = FIXTURES / "tiny-llama"
CHANGED = "checkpoint changed since the plan was made; re-run bigmodel plan"
HAS_GPU = torch.cuda.is_available()
ALL_CPU = {"unet": "cpu", "vae": "cpu", "text_encoder": "cpu"}
UNET_SPLIT = {
    "conv_in": "cpu",
    "time_embedding": "cpu",
    "down_blocks": "disk",
    "mid_block": "cpu",
    "up_blocks.0": "cpu",
    "up_blocks.1": "disk",
    "conv_norm_out": "cpu",
    "conv_out": "cpu",
}


def _run_json(*args: str | Path) -> dict[str, Any]:
    result = run_cli("run", *args, "--json")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _planned_equals_loaded(doc: dict[str, Any]) -> None:
    for dev, entry in doc["devices"].items():
        assert entry["loaded"] == entry["planned"], dev


# ---------------------------------------------------------------- pure decisions


def test_module_device_takes_the_longest_matching_dotted_prefix() -> None:
    module_map = {"": "cpu", "down_blocks": "disk", "down_blocks.1": 0}
    assert module_device("down_blocks.1.resnets.0.weight", module_map) == 0
    assert module_device("down_blocks.10.weight", module_map) == "disk"
    assert module_device("down_blocks_extra.weight", module_map) == "cpu"
    assert module_device("conv_in.weight", {"conv": 0}) is None


def test_missing_devices_and_shortfalls_name_the_devices() -> None:
    assert missing_devices({"cpu", "disk", 1, 0, 10}, 1) == [1, 10]
    assert missing_devices({"cpu", 0}, 2) == []
    short = shortfalls({"cpu": 2_000, 0: 10, "disk": 10**15}, {"cpu": 1_000, 0: 10, "disk": None})
    assert short == ["cpu: 2.00 KB to load but 1.00 KB free now"]


def test_split_component_tensors_follow_component_maps(tmp_path: Path) -> None:
    plan = hand_plan(PIPELINE, {**ALL_CPU, "unet": "split"}, {"unet": UNET_SPLIT})
    place = placements(load_checkpoint(PIPELINE), read_plan(write_plan(tmp_path / "p.json", plan)))
    unet = place["unet"]
    assert unet["down_blocks.0.resnets.0.conv1.weight"] == "disk"
    assert unet["up_blocks.1.resnets.0.conv1.weight"] == "disk"
    assert unet["up_blocks.0.resnets.0.conv1.weight"] == "cpu"
    assert unet["conv_in.weight"] == "cpu"
    assert set(place["vae"].values()) == {"cpu"}


# ---------------------------------------------------------------- loading and verifying


def test_run_to_cpu_with_verify_loads_the_planned_bytes(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.json", hand_plan(PIPELINE, ALL_CPU))
    doc = _run_json(PIPELINE, "--plan", plan, "--verify")
    assert set(doc["devices"]) == {"cpu"}
    _planned_equals_loaded(doc)
    cpu = doc["devices"]["cpu"]
    assert cpu["allocated"] == cpu["peak"] == cpu["loaded"]
    assert doc["verified"] is True
    ckpt = load_checkpoint(PIPELINE)
    for c in ckpt.components:
        assert doc["components"][c.name] == {
            "device": "cpu",
            "tensors": len(c.tensors),
            "bytes": c.nbytes,
            "bytes_by_device": {"cpu": c.nbytes},
        }
    assert doc["total_seconds"] >= doc["load_seconds"] > 0


def test_split_plan_with_disk_entries_memory_mapped_and_verified(tmp_path: Path) -> None:
    plan = hand_plan(
        PIPELINE, {**ALL_CPU, "unet": "split", "text_encoder": "disk"}, {"unet": UNET_SPLIT}
    )
    doc = _run_json(PIPELINE, "--plan", write_plan(tmp_path / "plan.json", plan), "--verify")
    _planned_equals_loaded(doc)
    assert doc["devices"]["disk"]["allocated"] is None
    assert doc["components"]["unet"]["device"] == "split"
    assert set(doc["components"]["unet"]["bytes_by_device"]) == {"cpu", "disk"}
    assert doc["verified"] is True


def test_disk_tensors_are_views_of_the_file_mapping(tmp_path: Path) -> None:
    plan = read_plan(
        write_plan(tmp_path / "p.json", hand_plan(PIPELINE, {**ALL_CPU, "vae": "disk"}))
    )
    ckpt = load_checkpoint(PIPELINE)
    acc = load_tensors(ckpt, placements(ckpt, plan), None, _NoProgress())
    disk = [(info, t) for info, dev, t in acc.tensors if dev == "disk"]
    assert disk and any(dev == "cpu" for _, dev, _ in acc.tensors)
    expected = load_file(PIPELINE / "vae" / "diffusion_pytorch_model.safetensors")
    assert {info.name for info, _ in disk} == set(expected)
    for info, tensor in disk:
        assert torch.equal(tensor, expected[info.name])
    # one mapping of the file: addresses differ exactly by the file offsets, nothing copied
    (first, t0), *rest = disk
    for info, tensor in rest:
        assert tensor.data_ptr() - t0.data_ptr() == info.start - first.start


def test_plan_dtype_casts_floating_tensors_only(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan.json",
        hand_plan(FIXTURES / "single.safetensors", {"model": "cpu"}, dtype="fp16"),
    )
    doc = _run_json(FIXTURES / "single.safetensors", "--plan", plan, "--verify")
    _planned_equals_loaded(doc)
    assert doc["dtype"] == "float16"
    # embed 64x16 + two 16x16 floats at 2 bytes, the bool mask and int64 bias unchanged
    assert doc["devices"]["cpu"]["loaded"] == (64 * 16 + 2 * 16 * 16) * 2 + 16 + 16 * 8


def test_dtype_cast_disk_tensors_are_spilled_and_mapped_at_the_target_dtype(tmp_path: Path) -> None:
    plan = hand_plan(PIPELINE, {**ALL_CPU, "unet": "split"}, {"unet": UNET_SPLIT}, dtype="bf16")
    doc = _run_json(PIPELINE, "--plan", write_plan(tmp_path / "plan.json", plan), "--verify")
    _planned_equals_loaded(doc)
    ckpt = load_checkpoint(PIPELINE)
    assert sum(d["loaded"] for d in doc["devices"].values()) * 2 == sum(
        c.nbytes for c in ckpt.components
    )


def test_pickle_component_loads_to_cpu_and_disk(tmp_path: Path) -> None:
    legacy = FIXTURES / "legacy"
    for where in ("cpu", "disk"):
        for dtype in (None, "fp16"):
            plan = hand_plan(legacy, {"legacy": where}, dtype=dtype)
            doc = _run_json(legacy, "--plan", write_plan(tmp_path / "p.json", plan), "--verify")
            _planned_equals_loaded(doc)
            assert doc["components"]["legacy"]["tensors"] == 3


def test_verify_names_a_tensor_whose_bytes_differ_from_the_file(tmp_path: Path) -> None:
    source = copy_tree(PIPELINE, tmp_path / "pipe")
    plan = write_plan(tmp_path / "plan.json", hand_plan(source, ALL_CPU))
    vae = load_checkpoint(source).components[2]
    target = vae.tensors[3]

    class FlipWhenVerifying(_NoProgress):
        """Corrupt the file between load and verify: the loaded copy keeps the old byte."""

        def start(self, total: int, description: str) -> None:
            if description == "verifying":
                flip_byte(target.file, target.start + 1)

    with pytest.raises(BigmodelError) as caught:
        # copied: mapped tensors would see the flipped byte too
        run_plan(source, plan=plan, verify=True, copy=True, progress=FlipWhenVerifying())
    assert caught.value.tensor == target.name
    assert caught.value.exit_code == 2
    assert "differs from the bytes in the file" in str(caught.value)


def test_flipped_data_byte_after_planning_keeps_the_fingerprint(tmp_path: Path) -> None:
    """The fingerprint covers headers only: data edits are for --verify, not for the plan."""
    source = copy_tree(PIPELINE, tmp_path / "pipe")
    plan = write_plan(tmp_path / "plan.json", hand_plan(source, ALL_CPU))
    vae = source / "vae" / "diffusion_pytorch_model.safetensors"
    flip_byte(vae, vae.stat().st_size - 1)
    doc = _run_json(source, "--plan", plan, "--verify")
    assert doc["verified"] is True


# ---------------------------------------------------------------- refusals


def test_edited_shard_after_planning_is_refused(tmp_path: Path) -> None:
    source = copy_tree(PIPELINE, tmp_path / "pipe")
    plan = write_plan(tmp_path / "plan.json", hand_plan(source, ALL_CPU))
    vae = source / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(vae)
    tensors["extra.weight"] = torch.zeros(4)
    save_file(tensors, vae, metadata={"format": "pt"})
    assert_one_line_error(run_cli("run", source, "--plan", plan), 2, CHANGED)


@pytest.mark.skipif(HAS_GPU, reason="checks the refusal on a machine without a GPU")
def test_plan_naming_a_gpu_this_machine_lacks_is_refused(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.json", hand_plan(PIPELINE, {**ALL_CPU, "unet": 0}))
    result = run_cli("run", PIPELINE, "--plan", plan)
    assert_one_line_error(result, 2, "plan.json", "cuda:0", "lacks", "no CUDA GPU")


def _bad_plans() -> list[tuple[str, Any, str]]:
    good = hand_plan(PIPELINE, ALL_CPU)
    return [
        ("not-json", "{not json", "not valid JSON"),
        ("array", [], "not a JSON object"),
        ("version", {**good, "version": 2}, "version 2 is not supported"),
        ("missing", {k: v for k, v in good.items() if k != "device_map"}, "'device_map'"),
        ("device", {**good, "device_map": {**ALL_CPU, "unet": "tpu"}}, "unknown device 'tpu'"),
        ("split", {**good, "device_map": {**ALL_CPU, "unet": "split"}}, "no component_maps"),
        ("planned", {**good, "devices": {"cpu": {"planned": "x"}}}, "integer 'planned'"),
        ("component", {**good, "device_map": {"unet": "cpu"}}, "no device for component"),
    ]


@pytest.mark.parametrize(("label", "content", "needle"), _bad_plans(), ids=lambda v: str(v)[:12])
def test_malformed_plan_is_exit_2_naming_the_file(
    tmp_path: Path, label: str, content: Any, needle: str
) -> None:
    path = tmp_path / f"{label}.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert_one_line_error(run_cli("run", PIPELINE, "--plan", path), 2, str(path), needle)


def test_missing_plan_file_is_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    assert_one_line_error(
        run_cli("run", PIPELINE, "--plan", missing), 2, str(missing), "cannot read"
    )


def test_not_enough_free_memory_warns_or_exits_3_with_require_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bigmodel_cli.run.checks.available_ram", lambda: 1000)
    plan = write_plan(tmp_path / "plan.json", hand_plan(PIPELINE, ALL_CPU))
    warned = run_cli("run", PIPELINE, "--plan", plan, "--json")
    assert warned.code == 0
    assert "warning: cpu:" in warned.stderr and "1.00 KB free now" in warned.stderr
    assert json.loads(warned.stdout)["warnings"]
    refused = run_cli("run", PIPELINE, "--plan", plan, "--require-fit")
    assert_one_line_error(refused, 3, "not enough free memory", "cpu:")


# ---------------------------------------------------------------- --forward


def test_forward_builds_the_pipeline_components_and_reports_shapes(tmp_path: Path) -> None:
    plan = hand_plan(PIPELINE, {**ALL_CPU, "unet": "split"}, {"unet": UNET_SPLIT})
    doc = _run_json(PIPELINE, "--plan", write_plan(tmp_path / "plan.json", plan), "--forward")
    forward = doc["forward"]
    assert forward["unet"]["output_shape"] == [1, 4, 8, 8]
    assert forward["unet"]["class"] == "UNet2DConditionModel"
    assert forward["vae"]["output_shape"] == [1, 3, 16, 16]
    assert forward["text_encoder"]["output_shape"] == [1, 8, 32]
    assert all(f["skipped"] is None for f in forward.values())


def test_forward_runs_a_llama_split_over_cpu_and_disk(tmp_path: Path) -> None:
    layers = {f"model.layers.{i}": "disk" if i % 2 else "cpu" for i in range(4)}
    module_map = {"model.embed_tokens": "cpu", **layers, "model.norm": "cpu", "lm_head": "cpu"}
    plan = hand_plan(LLAMA, {"tiny-llama": "split"}, {"tiny-llama": module_map}, dtype="bf16")
    doc = _run_json(
        LLAMA, "--plan", write_plan(tmp_path / "plan.json", plan), "--forward", "--verify"
    )
    _planned_equals_loaded(doc)
    assert doc["forward"]["tiny-llama"]["output_shape"] == [1, 8, 256]
    assert doc["forward"]["tiny-llama"]["class"] == "LlamaForCausalLM"


def test_forward_without_the_library_is_a_clear_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    real = importlib.import_module

    def no_diffusers(name: str, package: str | None = None) -> Any:
        if name == "diffusers":
            raise ImportError("No module named 'diffusers'")
        return real(name, package)

    monkeypatch.setattr("bigmodel_cli.runtime.library.importlib.import_module", no_diffusers)
    plan = write_plan(tmp_path / "plan.json", hand_plan(PIPELINE, ALL_CPU))
    result = run_cli("run", PIPELINE, "--plan", plan, "--forward")
    assert_one_line_error(result, 2, "needs the diffusers library", "bigmodel-cli[diffusers]")


def test_forward_skips_a_file_without_a_config(tmp_path: Path) -> None:
    single = FIXTURES / "single.safetensors"
    plan = write_plan(tmp_path / "plan.json", hand_plan(single, {"model": "cpu"}))
    doc = _run_json(single, "--plan", plan, "--forward")
    assert doc["forward"]["model"]["skipped"]


def _saved(model: Any, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def test_forward_feeds_an_encoder_decoder_its_decoder_ids(tmp_path: Path) -> None:
    """A T5 saved by transformers: the one dummy-input path gives its decoder ids too."""
    import transformers

    config = transformers.T5Config(
        vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2
    )
    folder = _saved(transformers.T5ForConditionalGeneration(config), tmp_path / "t5")
    plan = write_plan(tmp_path / "plan.json", hand_plan(folder, {"t5": "cpu"}))
    doc = _run_json(folder, "--plan", plan, "--forward")
    assert doc["forward"]["t5"]["class"] == "T5ForConditionalGeneration"
    assert doc["forward"]["t5"]["output_shape"] == [1, 8, 64]  # the decoder's logits


def test_forward_runs_a_video_unet(tmp_path: Path) -> None:
    """UNet3DConditionModel (saved by diffusers) gets a latent of a few frames."""
    import diffusers

    unet = diffusers.UNet3DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        sample_size=16,
    )
    folder = _saved(unet, tmp_path / "unet3d")
    plan = write_plan(tmp_path / "plan.json", hand_plan(folder, {"unet3d": "cpu"}))
    doc = _run_json(folder, "--plan", plan, "--forward")
    assert doc["forward"]["unet3d"]["skipped"] is None
    assert doc["forward"]["unet3d"]["output_shape"] == [1, 4, 2, 16, 16]


def test_human_output_is_a_table_per_device(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.json", hand_plan(PIPELINE, {**ALL_CPU, "vae": "disk"}))
    result = run_cli("run", PIPELINE, "--plan", plan, "--verify")
    assert result.code == 0, result.stderr
    for needle in ("planned", "loaded", "cpu", "disk", "text_encoder", "match the file bytes"):
        assert needle in result.stdout


# ---------------------------------------------------------------- with the real planner


def _plan_cli(tmp_path: Path, source: Path, *args: str) -> Path:
    out = tmp_path / "plan.json"
    result = run_cli("plan", source, *args, "-o", out)
    assert result.code == 0, result.stderr
    return out


@pytest.mark.parametrize(
    "args",
    [
        ("--max-memory", "cpu=1GB"),
        ("--max-memory", "cpu=1GB", "--strategy", "sequential"),
        ("--max-memory", "cpu=2MB,disk=1GB", "--strategy", "auto"),
        ("--max-memory", "cpu=1GB", "--dtype", "fp16"),
    ],
    ids=["cpu", "sequential", "auto-disk", "fp16"],
)
def test_real_plan_then_run_verify_loads_the_planned_bytes(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    plan = _plan_cli(tmp_path, PIPELINE, *args)
    doc = _run_json(PIPELINE, "--plan", plan, "--verify")
    _planned_equals_loaded(doc)
    assert doc["verified"] is True
    assert sum(d["loaded"] for d in doc["devices"].values()) == sum(
        c["bytes"] for c in doc["components"].values()
    )


def test_real_plan_then_edit_a_shard_is_refused(tmp_path: Path) -> None:
    source = copy_tree(PIPELINE, tmp_path / "pipe")
    plan = _plan_cli(tmp_path, source, "--max-memory", "cpu=1GB")
    shard = sorted((source / "unet").glob("*.safetensors"))[0]
    tensors = load_file(shard)  # re-saved with one tensor reshaped: same bytes, new header
    name = next(k for k, v in tensors.items() if v.dim() > 1)
    tensors[name] = tensors[name].reshape(-1).clone()
    save_file(tensors, shard, metadata={"format": "pt"})
    assert_one_line_error(run_cli("run", source, "--plan", plan), 2, CHANGED)


def test_real_auto_plan_split_llama_runs_forward(tmp_path: Path) -> None:
    plan = _plan_cli(tmp_path, LLAMA, "--max-memory", "cpu=300KB,disk=1GB", "--strategy", "auto")
    doc = _run_json(LLAMA, "--plan", plan, "--forward", "--verify")
    _planned_equals_loaded(doc)
    assert doc["forward"]["tiny-llama"]["output_shape"] == [1, 8, 256]


class _NoProgress:
    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass


def test_progress_covers_every_byte(tmp_path: Path) -> None:
    class Count(_NoProgress):
        def __init__(self) -> None:
            self.totals: dict[str, int] = {}
            self.done: dict[str, int] = {}
            self.current = ""

        def start(self, total: int, description: str) -> None:
            self.current = description
            self.totals[description] = total
            self.done[description] = 0

        def advance(self, nbytes: int) -> None:
            self.done[self.current] += nbytes

    plan = write_plan(tmp_path / "plan.json", hand_plan(PIPELINE, ALL_CPU))
    count = Count()
    run_plan(PIPELINE, plan=plan, verify=True, progress=count)
    total = sum(c.nbytes for c in load_checkpoint(PIPELINE).components)
    assert count.totals == count.done == {"loading": total, "verifying": total}


def test_copy_of_the_checkpoint_elsewhere_runs_with_the_same_plan(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.json", hand_plan(PIPELINE, ALL_CPU))
    moved = tmp_path / "moved"
    shutil.copytree(PIPELINE, moved)
    doc = _run_json(moved, "--plan", plan)
    assert doc["source"] == str(moved)


def test_dtype_other_than_the_plans_is_loaded_with_a_warning(tmp_path: Path) -> None:
    single = FIXTURES / "single.safetensors"
    plan = write_plan(tmp_path / "plan.json", hand_plan(single, {"model": "cpu"}))
    result = run_cli("run", single, "--plan", plan, "--dtype", "bf16", "--verify", "--json")
    assert result.code == 0, result.stderr
    assert "warning: --dtype bfloat16 differs from the plan's checkpoint dtypes" in result.stderr
    cpu = json.loads(result.stdout)["devices"]["cpu"]
    assert cpu["loaded"] < cpu["planned"]
    (note,) = run_plan(single, plan=plan, dtype="bf16").warnings  # the API says "dtype"
    assert note.startswith("dtype bfloat16 differs") and note.arguments == ("dtype",)
    assert pickle.loads(pickle.dumps(note)).arguments == ("dtype",)  # crosses torchrun ranks


def test_source_defaults_to_the_current_folder(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    assert run_cli("plan", PIPELINE, "--max-memory", "cpu=1GB", "-o", plan).code == 0
    here = run_subprocess("run", "--plan", plan, "--json", cwd=PIPELINE)
    assert here.code == 0, here.stderr
    assert json.loads(here.stdout)["source"] == str(PIPELINE)
    elsewhere = run_subprocess("run", "--plan", plan, cwd=tmp_path)
    assert elsewhere.code == 2 and "Traceback" not in elsewhere.stderr


def test_plan_of_another_checkpoint_says_so(tmp_path: Path) -> None:
    plan = tmp_path / "llama-plan.json"
    assert run_cli("plan", FIXTURES / "tiny-llama", "--max-memory", "cpu=1GB", "-o", plan).code == 0
    result = run_cli("run", PIPELINE, "--plan", plan)
    assert_one_line_error(result, 2, "tiny-llama", "different checkpoint")


def test_sub_byte_dtypes_are_refused_with_exit_2(tmp_path: Path) -> None:
    src = tmp_path / "packed.safetensors"
    write_raw(src, [("packed", "F4", (4,), b"\x12\x34"), ("w", "F32", (1,), b"\0" * 4)])
    plan = tmp_path / "plan.json"
    assert run_cli("plan", src, "--max-memory", "cpu=1GB", "-o", plan).code == 0
    for extra in ([], ["--verify"]):
        result = run_cli("run", src, "--plan", plan, *extra)
        assert_one_line_error(result, 2, "'packed'", "F4")
