"""Plans that hold at run time: the run's shape, KV caches, activations traced on fake
tensors against the peak measured by running the same forward pass, and placement that
counts them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bigmodel_cli.errors import UsageError
from bigmodel_cli.placement import make_plan
from bigmodel_cli.placement.balanced import balanced
from bigmodel_cli.placement.items import Bin, Part, charge
from bigmodel_cli.placement.plan import plan_from_json, read_plan
from bigmodel_cli.placement.sequential import sequential
from bigmodel_cli.runtime.inputs import Model, Resolved, dummy_inputs, input_shapes
from bigmodel_cli.runtime.kv import kv_bytes_per_layer
from bigmodel_cli.runtime.shape import RunShape, parse_quantize
from tests.helpers.checkpoints import llama_config
from tests.helpers.cli import FIXTURES, assert_one_line_error, run_cli
from tests.helpers.plans import hand_plan
from tests.helpers.runtime import TINY_FLUX, save_config_json

PIPELINE = FIXTURES / "tiny-pipeline"
LLAMA = FIXTURES / "tiny-llama"
GB = 10**9


def _plan(*args: str | Path) -> dict[str, Any]:
    result = run_cli("plan", *args, "--json")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


# ---------------------------------------------------------------- the run's shape


def test_quantize_takes_one_method_or_one_per_component() -> None:
    names = ["unet", "vae", "text_encoder"]
    assert parse_quantize("NF4", names) == dict.fromkeys(names, "nf4")
    assert parse_quantize("unet=int8, text_encoder=fp8", names) == {
        "unet": "int8",
        "text_encoder": "fp8",
    }
    for bad, needle in [("int3", "int3"), ("unet=int8,nope=nf4", "nope"), ("unet", "unet")]:
        with pytest.raises(UsageError, match=needle):
            parse_quantize(bad, names if bad != "unet" else ["vae", "other"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--quantize", "int3"], "int3"),
        (["--quantize", "unet=nf4,transformer=int8"], "transformer"),
        (["--batch", "0"], "--batch"),
        (["--height", "-8"], "--height"),
    ],
)
def test_bad_run_shape_flags_exit_2_with_one_line(args: list[str], needle: str) -> None:
    assert_one_line_error(run_cli("plan", PIPELINE, "--max-memory", "0=1GB", *args), 2, needle)


def test_weights_only_plan_says_nothing_was_counted() -> None:
    doc = _plan(PIPELINE, "--max-memory", "0=1GB")
    assert doc["runtime"]["counted"] is False
    assert all(d["runtime"] == 0 and d["weights"] == d["planned"] for d in doc["devices"].values())


def test_defaults_come_from_the_configs_and_the_denoiser_batch_is_doubled() -> None:
    doc = _plan(PIPELINE, "--max-memory", "0=1GB", "--runtime")
    # tiny UNet sample_size 8 x the tiny VAE's scale factor 2 (two blocks)
    run = doc["runtime"]
    assert run["counted"] and (run["height"], run["width"], run["batch"]) == (16, 16, 1)
    inputs = {name: c["inputs"] for name, c in doc["components"].items()}
    assert inputs["unet"]["sample"] == [2, 4, 8, 8]  # classifier-free guidance: 2 x batch
    assert inputs["unet"]["encoder_hidden_states"] == [2, 77, 32]
    assert inputs["vae"] == {"latent": [1, 4, 8, 8]}  # the final latent, decoded once
    assert inputs["text_encoder"] == {"input_ids": [1, 77]}  # CLIP's 77 positions


def test_flux_style_inputs_are_packed_and_not_doubled() -> None:
    models = {"transformer": Model("transformer", "diffusers", TINY_FLUX["_class_name"], TINY_FLUX)}
    run = Resolved(batch=2, height=64, width=32, frames=None, context=None, scale=8, guidance=False)
    shapes = input_shapes(models["transformer"], run, models, 24)
    assert shapes is not None
    assert shapes["hidden_states"] == (2, 4 * 2, 16)  # latent 8x4, packed 2x2
    assert shapes["encoder_hidden_states"] == (2, 24, 32)
    assert shapes["img_ids"] == (8, 3) and shapes["guidance"] == (2,)


def test_frames_feed_a_video_unet_and_its_vae_decodes_each_frame() -> None:
    unet_cfg = {"in_channels": 4, "cross_attention_dim": 64, "sample_size": 32}
    vae_cfg = {"latent_channels": 4, "block_out_channels": [8, 8, 8, 8]}
    models = {
        "unet": Model("unet", "diffusers", "UNet3DConditionModel", unet_cfg),
        "vae": Model("vae", "diffusers", "AutoencoderKL", vae_cfg),
    }
    from bigmodel_cli.runtime.inputs import resolve

    run = resolve(RunShape(True, batch=1, frames=8), models, "TextToVideoSDPipeline")
    assert (run.height, run.frames, run.guidance) == (256, 8, True)
    assert input_shapes(models["unet"], run, models, None) == {
        "sample": (2, 4, 8, 32, 32),
        "timestep": (2,),
        "encoder_hidden_states": (2, 77, 64),
    }
    assert input_shapes(models["vae"], run, models, None) == {"latent": (8, 4, 32, 32)}


# ---------------------------------------------------------------- KV cache


def _llama(tmp_path: Path, layers: int, **extra: Any) -> tuple[Path, dict[str, Any]]:
    """A Llama-style checkpoint (config and sparse weights) with grouped-query attention."""
    from accelerate import init_empty_weights
    from transformers import LlamaForCausalLM

    from tests.helpers.runtime import write_sparse

    config = llama_config(False, layers)
    for key, value in extra.items():
        setattr(config, key, value)
    with init_empty_weights():
        model = LlamaForCausalLM(config)
    folder = tmp_path / "llama"
    write_sparse(folder, model, "BF16", "model")
    return folder, json.loads((folder / "config.json").read_text())


def test_kv_cache_is_the_formula_with_grouped_query_heads_and_explicit_head_dim(
    tmp_path: Path,
) -> None:
    folder, config = _llama(tmp_path, 6, head_dim=32, num_key_value_heads=2)
    assert config["head_dim"] == 32 and config["num_attention_heads"] == 4
    doc = _plan(folder, "--max-memory", "0=1GB", "--context", "100", "--batch", "3")
    per_layer = 2 * 2 * 32 * 100 * 3 * 2  # K and V, kv heads, head dim, context, batch, bf16
    assert kv_bytes_per_layer(config, 100, 3, 2) == per_layer
    assert doc["components"]["llama"]["kv_cache"] == 6 * per_layer
    assert doc["devices"]["0"]["runtime"] >= 6 * per_layer


def test_kv_cache_is_split_across_devices_by_layer(tmp_path: Path) -> None:
    folder, config = _llama(tmp_path, 8, head_dim=16)
    per_layer = kv_bytes_per_layer(config, 100, 1, 2)
    plan = make_plan(folder, max_memory="0=450KB,1=450KB,cpu=1GB", strategy="auto", context=100)
    assert plan.needs["llama"].kv_cache == 8 * per_layer
    layers = {k: d for k, d in plan.component_maps["llama"].items() if ".layers." in k}
    assert len(layers) == 8 and len(set(layers.values())) > 1
    activations = plan.needs["llama"].activations or 0
    for device in plan.devices:  # a device's run time: its layers' KV, and activations
        count = sum(1 for d in layers.values() if d == device.key)
        runs_here = isinstance(device.key, int)  # the GPUs run it; cpu only holds layers
        assert device.run_bytes == count * per_layer + (activations if runs_here else 0)


# ---------------------------------------------------------------- placement counting run time


def test_balanced_counts_the_largest_activations_per_gpu_not_their_sum() -> None:
    parts = [Part("a", 4, activations=3), Part("b", 2, activations=2)]
    placed = {p.name: p.device for p in balanced(parts, [Bin(0, 9), Bin("cpu", None)]).placements}
    assert placed == {"a": 0, "b": 0}  # 4 + 2 + max(3, 2) = 9: they run in turn
    placed = {p.name: p.device for p in balanced(parts, [Bin(0, 8), Bin("cpu", None)]).placements}
    assert placed["a"] == 0 and placed["b"] == "cpu"


def test_the_exact_search_also_counts_the_largest_activations_not_their_sum() -> None:
    """diffusers' snake leaves a part off here; the search finds the one assignment that
    fits, which exists only because activations do not add up."""
    parts = [Part("a", 6, activations=2), Part("b", 2, activations=1)]
    parts += [Part("c", 1, activations=2), Part("d", 1, activations=0)]
    layout = balanced(parts, [Bin(0, 10), Bin(1, 4), Bin("cpu", None)])
    assert all(isinstance(p.device, int) for p in layout.placements)


def test_a_device_is_charged_for_the_largest_activations_it_runs() -> None:
    room: dict[Any, int | None] = {0: 9}
    peaks: dict[Any, int] = {}
    charge(room, peaks, 0, Part("a", 4, activations=3))
    charge(room, peaks, 0, Part("b", 2, activations=2))
    assert room == {0: 0} and peaks == {0: 3}  # 4 + 2 weights, max(3, 2) activations


def test_sequential_peak_counts_the_activations_of_the_component_moved() -> None:
    parts = [Part("a", 5, activations=1), Part("b", 2, activations=6)]
    layout = sequential(parts, [Bin(0, 9), Bin("cpu", None)])
    assert layout.peak_gpu == 8


def test_require_fit_fails_with_activations_and_passes_at_a_smaller_shape() -> None:
    budget = ["--max-memory", "0=4.5MB", "--require-fit"]  # 4.05 MB of weights fit
    assert run_cli("plan", PIPELINE, *budget).code == 0
    big = run_cli("plan", PIPELINE, *budget, "--height", "256", "--width", "256")
    assert_one_line_error(big, 3, "does not fit", "unet", "with its run time")
    assert run_cli("plan", PIPELINE, *budget, "--height", "16", "--width", "16").code == 0


def test_table_shows_weights_and_run_time_apart() -> None:
    result = run_cli("plan", PIPELINE, "--max-memory", "0=1GB", "--batch", "2")
    assert result.code == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "(weights 4.05 MB, run time" in text
    assert "run time: KV cache, largest activations" in text
    assert "Counted run time: batch 2, 16x16 px" in text


def test_counted_plan_reads_back_and_older_plans_read_as_weights_only(tmp_path: Path) -> None:
    doc = _plan(PIPELINE, "--max-memory", "0=1GB", "--runtime", "--quantize", "unet=int8")
    plan = plan_from_json(doc)
    assert plan.shape.counted and plan.shape.quantize == {"unet": "int8"}
    assert plan.needs["unet"].inputs == {
        k: tuple(v) for k, v in doc["components"]["unet"]["inputs"].items()
    }
    assert plan.to_json() == doc
    old = hand_plan(PIPELINE, {"unet": 0, "vae": 0, "text_encoder": 0})
    (tmp_path / "old.json").write_text(json.dumps(old))
    again = read_plan(tmp_path / "old.json")
    assert not again.shape.counted and again.needs == {}
    assert again.devices[0].weights is None  # an older plan: planned is all weights


def test_plan_without_run_shape_flags_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from bigmodel_cli.cli import run_main\n"
        "args = ['plan', sys.argv[1], '--max-memory', '0=1MB,1=1MB', '--strategy', sys.argv[2],\n"
        "        '--quantize', 'nf4', '--json']\n"
        "code = run_main(args)\n"
        "sys.stderr.write('torch imported: %s' % ('torch' in sys.modules))\n"
        "sys.exit(code)\n"
    )
    for strategy in ("auto", "balanced"):
        proc = subprocess.run(
            [sys.executable, "-c", code, str(PIPELINE), strategy],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert "torch imported: False" in proc.stderr


@pytest.mark.parametrize("where", ["here", "worker"])
def test_without_the_library_there_is_no_estimate_and_the_output_says_how_to_get_one(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if where == "here":
        import importlib

        from bigmodel_cli.runtime import library

        real = importlib.import_module

        def no_diffusers(name: str, *args: Any) -> Any:
            if name.split(".")[0] == "diffusers":
                raise ImportError(name)
            return real(name, *args)

        monkeypatch.setenv("BIGMODEL_TRACE_WORKERS", "0")
        monkeypatch.setattr(library.importlib, "import_module", no_diffusers)
    else:  # a worker process finds a diffusers that will not import
        shadow = tmp_path / "shadow" / "diffusers"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text("raise ImportError('no diffusers here')\n")
        path = os.environ.get("PYTHONPATH")
        monkeypatch.setenv("PYTHONPATH", str(shadow.parent) + (os.pathsep + path if path else ""))
        monkeypatch.setenv("BIGMODEL_TRACE_WORKERS", "2")
    result = run_cli("plan", PIPELINE, "--max-memory", "0=1GB", "--runtime")
    assert result.code == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "unet: - (diffusers is not installed: no activation estimate" in text
    assert "pip install 'bigmodel-cli[diffusers]'" in text
    doc = _plan(PIPELINE, "--max-memory", "0=1GB", "--runtime")
    assert doc["components"]["unet"]["activations"] is None
    assert "diffusers is not installed" in doc["components"]["unet"]["note"]
    assert doc["components"]["text_encoder"]["activations"] > 0  # transformers still there


def test_a_class_that_cannot_be_fed_has_no_estimate_and_says_so(tmp_path: Path) -> None:
    save_config_json(tmp_path / "m", {"_class_name": "NoSuchModel2000"})
    from bigmodel_cli.formats.safetensors import HeaderEntry, build_header

    (tmp_path / "m" / "diffusion_pytorch_model.safetensors").write_bytes(
        build_header([HeaderEntry("w.weight", "F32", (2, 2))], {"format": "pt"}) + bytes(16)
    )
    doc = _plan(tmp_path / "m", "--max-memory", "0=1GB", "--runtime")
    entry = doc["components"]["m"]
    assert entry["activations"] is None and "no activation estimate" in entry["note"]


def test_dummy_inputs_feed_a_vae_of_a_class_of_no_known_kind_through_decode() -> None:
    """As run --forward did before one input path: a diffusers config with latent_channels
    is decoded (AsymmetricAutoencoderKL's name does not start with Autoencoder)."""
    cfg = {"latent_channels": 4, "block_out_channels": [32, 64], "sample_size": 32}
    m = Model("vae", "diffusers", "AsymmetricAutoencoderKL", cfg)
    assert dummy_inputs(m) == ("vae", {"latent": (1, 4, 16, 16)})
    assert dummy_inputs(Model("x", "diffusers", "SomethingNew", {"in_channels": 4})) is None
