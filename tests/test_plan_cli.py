"""``bigmodel plan`` end to end: the JSON document, -o, exit statuses, and the maps it writes
loading in transformers / diffusers ``from_pretrained(device_map=...)``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from bigmodel_cli import devices
from bigmodel_cli.checkpoint import fingerprint, load_checkpoint
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.placement import make_plan
from bigmodel_cli.placement.plan import read_plan
from tests.helpers.checkpoints import llama_config
from tests.helpers.cli import FIXTURES, ROOT, assert_one_line_error, run_cli, run_subprocess
from tests.helpers.plans import diffusers_balanced, keys_for

PIPELINE = FIXTURES / "tiny-pipeline"
SPLIT_BUDGET = "0=2MB,1=2MB,cpu=1GB"  # the 3.17 MB unet fits neither GPU: it is split


def _plan(*args: str) -> dict[str, Any]:
    result = run_cli("plan", *args, "--json")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def test_json_document_shape() -> None:
    doc = _plan(str(PIPELINE), "--max-memory", SPLIT_BUDGET, "--strategy", "auto")
    ckpt = load_checkpoint(PIPELINE)
    assert doc["version"] == 1
    assert doc["source"] == str(PIPELINE.resolve())
    assert doc["fingerprint"] == fingerprint(ckpt)
    assert doc["strategy"] == "auto" and doc["dtype"] is None and doc["variant"] is None
    assert list(doc["devices"]) == ["0", "1", "cpu"]
    for entry in doc["devices"].values():
        assert isinstance(entry["capacity"], int) and isinstance(entry["planned"], int)
    assert doc["device_map"] == {"text_encoder": 1, "unet": "split", "vae": 0}
    assert list(doc["component_maps"]) == ["unet"]
    assert doc["offloaded"] == ["unet"] and doc["fits"] is False
    weights_only = {"activations": None, "kv_cache": None, "inputs": None}
    assert doc["components"] == {
        c.name: {"bytes": c.nbytes, **weights_only} for c in ckpt.components
    }
    assert doc["runtime"] == {
        "counted": False,
        "batch": 1,
        **dict.fromkeys(("height", "width", "frames", "context")),
        "quantize": {},
        "kv_dtype": "auto",
        "encoder_length": None,
    }
    assert doc["execution_device"] == 0 and doc["peak_gpu"] is None
    assert doc["held_for_offload"] == doc["devices"]["0"]["held"] > 0
    planned = sum(d["planned"] for d in doc["devices"].values())
    assert planned == sum(c.nbytes for c in ckpt.components)
    for key, entry in doc["devices"].items():
        assert key == "cpu" or entry["planned"] + entry["held"] <= entry["capacity"]
        assert entry["weights"] == entry["planned"] and entry["runtime"] == 0


def test_split_map_covers_every_tensor_once_with_module_prefixes() -> None:
    doc = _plan(str(PIPELINE), "--max-memory", SPLIT_BUDGET, "--strategy", "auto")
    unet_map = doc["component_maps"]["unet"]
    (unet,) = (c for c in load_checkpoint(PIPELINE).components if c.name == "unet")
    for tensor in unet.tensors:
        assert len(keys_for(tensor.name, unet_map)) == 1, tensor.name
    assert {"down_blocks.0", "down_blocks.1", "up_blocks.0", "up_blocks.1"} <= set(unet_map)
    assert not any(k.startswith(("down_blocks.0.", "up_blocks.1.")) for k in unet_map)


def test_balanced_plan_is_diffusers_map_and_fits() -> None:
    doc = _plan(str(PIPELINE), "--max-memory", "0=3.5MB,1=1MB")
    sizes = {name: c["bytes"] for name, c in doc["components"].items()}
    assert doc["device_map"] == diffusers_balanced(sizes, {0: 3_500_000, 1: 1_000_000})
    assert doc["fits"] is True and doc["offloaded"] == [] and doc["component_maps"] == {}


def test_dtype_changes_floating_sizes_only() -> None:
    full = _plan(str(FIXTURES / "single.safetensors"), "--max-memory", "0=1GB")
    half = _plan(str(FIXTURES / "single.safetensors"), "--max-memory", "0=1GB", "--dtype", "fp16")
    assert half["dtype"] == "float16"
    # embed f32 4096 -> 2048; bf16/f16 stay 512 each; bool 16 and int64 128 stay
    assert full["components"]["model"]["bytes"] == 4096 + 512 + 512 + 16 + 128
    assert half["components"]["model"]["bytes"] == 2048 + 512 + 512 + 16 + 128


def test_sequential_reports_peak_and_execution_gpu() -> None:
    doc = _plan(str(PIPELINE), "--max-memory", "0=4MB", "--strategy", "sequential")
    assert set(doc["device_map"].values()) == {"cpu"}
    assert doc["execution_device"] == 0
    assert doc["peak_gpu"] == max(c["bytes"] for c in doc["components"].values())
    assert doc["fits"] is False  # the spec: fits means nothing on cpu or disk
    assert doc["peak_fits"] is True
    assert set(doc["offloaded"]) == set(doc["components"])
    too_small = _plan(str(PIPELINE), "--max-memory", "0=1MB", "--strategy", "sequential")
    assert too_small["peak_fits"] is False


def test_output_file_is_written_whole_and_reads_back(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    result = run_cli("plan", PIPELINE, "--max-memory", "0=1GB", "-o", out, "--json")
    assert result.code == 0, result.stderr
    assert json.loads(out.read_text()) == json.loads(result.stdout)
    assert read_plan(out).fingerprint.startswith("sha256:")
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temporary left


def test_human_output_has_a_table_per_device_and_a_sentence() -> None:
    result = run_cli("plan", PIPELINE, "--max-memory", SPLIT_BUDGET, "--strategy", "auto")
    assert result.code == 0, result.stderr
    for line in ("GPU 0  [", "GPU 1  [", "cpu  ["):
        assert line in result.stdout
    text = " ".join(result.stdout.split())  # rich wraps long lines
    assert "unet (3.17 MB) is larger than any GPU (2.00 MB), so it is split" in text
    assert "they run on GPU 0, which keeps" in text


def test_require_fit_exits_3_after_writing_the_plan(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    result = run_cli(
        "plan", PIPELINE, "--max-memory", "0=1MB", "--require-fit", "--json", "-o", out
    )
    assert_one_line_error(result, 3, "does not fit", "unet")
    assert json.loads(result.stdout)["fits"] is False
    assert json.loads(out.read_text())["fits"] is False
    assert run_cli("plan", PIPELINE, "--max-memory", "0=1GB", "--require-fit").code == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-memory", "gpu0=8GB"], "--max-memory"),
        (["--max-memory", "0=8 parsecs"], "--max-memory"),
        (["--max-memory", "0=1GB", "--reserve", "200%"], "--reserve"),
        (["--max-memory", "0=1GB", "--strategy", "greedy"], "--strategy"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args: list[str], needle: str) -> None:
    assert_one_line_error(run_cli("plan", PIPELINE, *args), 2, needle)


def test_no_split_keeps_a_component_or_a_prefix_whole() -> None:
    args = [str(PIPELINE), "--max-memory", SPLIT_BUDGET, "--strategy", "auto"]
    assert _plan(*args, "--no-split", "unet")["device_map"]["unet"] == "cpu"
    unet_map = _plan(*args, "--no-split", "mid_block")["component_maps"]["unet"]
    assert "mid_block" in unet_map and not any(k.startswith("mid_block.") for k in unet_map)


def test_missing_source_exits_2(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("plan", tmp_path / "nope", "--max-memory", "0=1GB"), 2, "nope")


def test_no_gpu_and_no_max_memory_plans_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "detect_gpus", lambda: [])
    result = run_cli("plan", PIPELINE)
    assert result.code == 0, result.stderr
    assert "No GPU found and no --max-memory given: everything is planned on cpu" in result.stdout
    doc = _plan(str(PIPELINE))
    assert list(doc["devices"]) == ["cpu"] and doc["detected"] is True
    assert set(doc["device_map"].values()) == {"cpu"}


def test_source_defaults_to_the_current_folder_without_importing_torch() -> None:
    code = (
        "import sys\n"
        "from bigmodel_cli.cli import run_main\n"
        "try:\n"
        "    code = run_main(['plan', '--max-memory', '0=1MB,1=1MB', '--json'])\n"
        "finally:\n"
        "    sys.stderr.write('torch imported: %s' % ('torch' in sys.modules))\n"
        "sys.exit(code)\n"
    )
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=PIPELINE, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["source"] == str(PIPELINE.resolve())
    assert "torch imported: False" in proc.stderr


def test_cli_subprocess_plans_the_current_folder() -> None:
    result = run_subprocess("plan", "--max-memory", "0=1MB,1=1MB", cwd=PIPELINE)
    assert result.code == 0, result.stderr
    assert "unet" in result.stdout and str(ROOT) in result.stdout


# ---------------------------------------------------------------- plan files


def _write(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"version": 2}, "version 2"),
        ({"version": None}, "version"),
        ({"devices": []}, "'devices'"),
        ({"device_map": {"unet": "cuda:7"}}, "not one of its devices"),
        ({"device_map": {"unet": "split"}}, "component_maps"),
        ({"devices": {"0": {"capacity": -1, "planned": 0}}}, "byte counts"),
        ({"fingerprint": 7}, "'fingerprint'"),
        ({"strategy": "magic"}, "strategy"),
    ],
)
def test_read_plan_refuses_bad_files(tmp_path: Path, change: dict[str, Any], needle: str) -> None:
    good = _plan(str(PIPELINE), "--max-memory", "0=1GB")
    with pytest.raises(BigmodelError) as info:
        read_plan(_write(tmp_path, {**good, **change}))
    assert needle in str(info.value) and info.value.exit_code == 2


def test_read_plan_refuses_non_json(tmp_path: Path) -> None:
    with pytest.raises(BigmodelError, match="plan"):
        read_plan(_write(tmp_path, "{not json"))


# ---------------------------------------------------------------- maps load for real


@pytest.mark.parametrize("tie", [False, True])
def test_split_llama_map_loads_with_transformers_and_logits_match(
    tmp_path: Path, tie: bool
) -> None:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(tie))
    model.save_pretrained(tmp_path / "llama", max_shard_size="300KB")
    total = sum(p.numel() * 4 for p in model.parameters())
    budget = f"0={int(total * 0.4)},1={int(total * 0.3)},cpu=1GB"
    plan = make_plan(
        str(tmp_path / "llama"),
        max_memory=budget,
        strategy="auto",
        dtype=None,
        reserve=None,
        no_split=[],
        variant=None,
    )
    assert plan.device_map == {"llama": "split"}
    module_map = plan.component_maps["llama"]
    assert {0, 1, "cpu"} <= set(module_map.values())
    if tie:
        assert module_map["lm_head"] == module_map["model.embed_tokens"]

    ids = torch.tensor([[1, 5, 9, 100, 200, 7]])
    reference = LlamaForCausalLM.from_pretrained(tmp_path / "llama")(ids).logits
    on_cpu = {prefix: "cpu" for prefix in module_map}
    loaded = LlamaForCausalLM.from_pretrained(tmp_path / "llama", device_map=on_cpu)
    assert torch.equal(loaded(ids).logits, reference)
    # GPUs -> cpu and cpu -> disk: accelerate's offload hooks run on our prefixes
    hooked_map = {k: "cpu" if isinstance(v, int) else "disk" for k, v in module_map.items()}
    hooked = LlamaForCausalLM.from_pretrained(
        tmp_path / "llama", device_map=hooked_map, offload_folder=tmp_path / "offload"
    )
    assert torch.equal(hooked(ids).logits, reference)


def test_split_unet_map_loads_with_diffusers_and_runs(tmp_path: Path) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    source = PIPELINE / "unet"
    plan = make_plan(
        str(source),
        max_memory="0=1000000,1=1200000,cpu=1GB",
        strategy="auto",
        dtype=None,
        reserve=None,
        no_split=[],
        variant=None,
    )
    module_map = plan.component_maps["unet"]
    assert {0, 1, "cpu"} <= set(module_map.values())
    torch.manual_seed(0)
    args = (torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 3, 32))
    reference = UNet2DConditionModel.from_pretrained(source)(*args).sample
    hooked_map = {k: "cpu" if isinstance(v, int) else "disk" for k, v in module_map.items()}
    hooked = UNet2DConditionModel.from_pretrained(
        source, device_map=hooked_map, offload_folder=tmp_path / "offload"
    )
    assert torch.allclose(hooked(*args).sample, reference, atol=1e-5)


def test_output_never_overwrites_a_file_that_is_not_a_plan(tmp_path: Path) -> None:
    import shutil

    pipe = tmp_path / "pipe"
    shutil.copytree(FIXTURES / "tiny-pipeline", pipe)
    shard = pipe / "unet" / "diffusion_pytorch_model-00001-of-00004.safetensors"
    before = shard.read_bytes()
    result = run_cli("plan", pipe, "--max-memory", "cpu=1GB", "-o", shard)
    assert_one_line_error(result, 2, str(shard), "not a bigmodel plan")
    assert shard.read_bytes() == before
    plan = pipe / "plan.json"  # a plan beside the weights, rewritten on the next run
    for _ in range(2):
        assert run_cli("plan", pipe, "--max-memory", "cpu=1GB", "-o", plan).code == 0


def test_auto_without_gpus_keeps_what_fits_ram_whole_and_splits_the_rest_over_disk() -> None:
    """As accelerate fills cpu block by block, then disk: the UNet does not fit the RAM
    left once the small components are in, so its blocks are split between cpu and disk."""
    doc = _plan(str(PIPELINE), "--max-memory", "cpu=2MB,disk", "--strategy", "auto")
    assert doc["device_map"] == {"unet": "split", "vae": "cpu", "text_encoder": "cpu"}
    unet = doc["split_bytes"]["unet"]
    whole = doc["components"]["vae"]["bytes"] + doc["components"]["text_encoder"]["bytes"]
    assert unet["disk"] > 0 and 0 < unet["cpu"] <= 2_000_000 - whole
    assert doc["devices"]["cpu"]["planned"] <= 2_000_000
    assert set(doc["component_maps"]["unet"].values()) == {"cpu", "disk"}
