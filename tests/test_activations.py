"""Activation estimates (traced on fake tensors, nothing run) against the peak measured by
running the same forward pass on the CPU with the shapes the plan wrote in ``inputs``,
counted by the profiler's allocator events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bigmodel_cli.placement import make_plan
from bigmodel_cli.run.peak import measure_peak
from bigmodel_cli.runtime.calls import forward, make_inputs
from tests.helpers.cli import FIXTURES
from tests.helpers.runtime import TINY_FLUX

PIPELINE = FIXTURES / "tiny-pipeline"
TOLERANCE = 0.20


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    config = {k: v for k, v in TINY_FLUX.items() if not k.startswith("_")}
    folder = tmp_path_factory.mktemp("flux") / "transformer"
    FluxTransformer2DModel(**config).save_pretrained(folder)
    return folder


def _measured(model: Any, kind: str, shapes: dict[str, list[int]]) -> int:
    import torch

    fed = {k: tuple(v) for k, v in shapes.items()}
    _, peak = measure_peak(lambda: forward(kind, model, make_inputs(fed, torch.float32)))
    return peak


def _check(estimate: int | None, measured: int) -> None:
    assert estimate is not None and measured > 0
    assert abs(estimate - measured) <= TOLERANCE * measured, (estimate, measured)


def _load(library: str, class_name: str, folder: Path) -> Any:
    import importlib

    cls = getattr(importlib.import_module(library), class_name)
    return cls.from_pretrained(folder).eval()


# batch, side, context; at small sides the CPU's flash-attention kernel adds per-thread
# scratch (about 0.5 MB) that no GPU kernel allocates and the fake trace does not see
PIPELINE_SHAPES = [(1, 96, 16), (2, 128, 32), (1, 192, 77)]


@pytest.mark.parametrize(("batch", "side", "context"), PIPELINE_SHAPES)
@pytest.mark.parametrize(
    ("component", "library", "class_name", "kind"),
    [
        ("unet", "diffusers", "UNet2DConditionModel", "unet"),
        ("vae", "diffusers", "AutoencoderKL", "vae"),
        ("text_encoder", "transformers", "CLIPTextModel", "text"),
    ],
)
def test_pipeline_component_estimate_is_within_20_percent_of_its_measured_peak(
    component: str, library: str, class_name: str, kind: str, batch: int, side: int, context: int
) -> None:
    plan = make_plan(
        PIPELINE, max_memory="cpu=1GB", batch=batch, height=side, width=side, context=context
    )
    needs = plan.needs[component]
    assert needs.inputs is not None
    doc = plan.to_json()["components"][component]
    measured = _measured(_load(library, class_name, PIPELINE / component), kind, doc["inputs"])
    _check(needs.activations, measured)


@pytest.mark.parametrize(("batch", "side", "context"), [(1, 64, 16), (2, 128, 32), (1, 256, 64)])
def test_flux_transformer_estimate_is_within_20_percent_of_its_measured_peak(
    tiny_flux: Path, batch: int, side: int, context: int
) -> None:
    plan = make_plan(
        tiny_flux, max_memory="cpu=1GB", batch=batch, height=side, width=side, context=context
    )
    doc = plan.to_json()["components"]["transformer"]
    assert doc["inputs"]["hidden_states"] == [batch, (side // 16) ** 2, 16]
    model = _load("diffusers", "FluxTransformer2DModel", tiny_flux)
    _check(doc["activations"], _measured(model, "flux", doc["inputs"]))


@pytest.mark.parametrize(("batch", "context"), [(1, 32), (2, 64), (4, 128)])
def test_llama_prefill_estimate_is_within_20_percent_of_its_measured_peak(
    batch: int, context: int
) -> None:
    folder = FIXTURES / "tiny-llama"
    plan = make_plan(folder, max_memory="cpu=1GB", batch=batch, context=context)
    doc = plan.to_json()["components"]["tiny-llama"]
    assert doc["inputs"] == {"input_ids": [batch, context]}
    model = _load("transformers", "LlamaForCausalLM", folder)
    _check(doc["activations"], _measured(model, "lm", doc["inputs"]))


def test_run_forward_reports_the_measured_peak_beside_the_estimate(tmp_path: Path) -> None:
    from tests.helpers.cli import run_cli

    out = tmp_path / "plan.json"
    shape = ["--height", "128", "--width", "128"]
    made = run_cli("plan", PIPELINE, "--max-memory", "cpu=1GB", *shape, "-o", out)
    assert made.code == 0, made.stderr
    result = run_cli("run", PIPELINE, "--plan", out, "--forward", "--json")
    assert result.code == 0, result.stderr
    forward_doc = json.loads(result.stdout)["forward"]
    for name in ("unet", "vae", "text_encoder"):
        entry = forward_doc[name]
        _check(entry["estimate"], entry["peak"])


@pytest.mark.parametrize("component", ["unet", "text_encoder"])
def test_the_live_byte_count_is_torch_memtrackers_to_the_byte(component: str) -> None:
    """The planner counts live tensors with a lean dispatch mode; torch's MemTracker,
    which also snapshots every module, gives the same peak."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from bigmodel_cli.runtime.estimate import model_of
    from bigmodel_cli.runtime.inputs import kind_of
    from bigmodel_cli.runtime.library import build_on_meta as build
    from bigmodel_cli.runtime.trace import activations

    plan = make_plan(PIPELINE, max_memory="cpu=1GB", batch=2, height=64, width=64)
    shapes = plan.needs[component].inputs
    assert shapes is not None
    from bigmodel_cli.checkpoint import load_checkpoint

    ckpt = load_checkpoint(PIPELINE)
    m = model_of(ckpt, next(c for c in ckpt.components if c.name == component))
    kind = kind_of(m)
    assert kind is not None
    ours, _ = activations(build(m, torch.float32), kind, shapes, torch.float32)
    model = build(m, torch.float32)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = model.to_empty(device="cpu")
        tracker = MemTracker()
        tracker.track_external(fake)
        with tracker:
            forward(kind, fake, make_inputs(shapes, torch.float32))
        (peak,) = tracker.get_tracker_snapshot("peak").values()
    weights = sum(n for key, n in peak.items() if str(key).endswith(("PARAM", "BUFFER")))
    assert ours == plan.needs[component].activations == peak["Total"] - weights


def test_the_forward_order_is_the_order_modules_run_not_their_registration() -> None:
    """A UNet registers up_blocks before mid_block; traced, mid_block runs first."""
    import torch

    from bigmodel_cli.checkpoint import load_checkpoint
    from bigmodel_cli.runtime.estimate import model_of
    from bigmodel_cli.runtime.library import build_on_meta as build
    from bigmodel_cli.runtime.trace import trace

    ckpt = load_checkpoint(PIPELINE)
    m = model_of(ckpt, next(c for c in ckpt.components if c.name == "unet"))
    registered = [name for name, _ in build(m, torch.float32).named_modules()]
    assert registered.index("up_blocks") < registered.index("mid_block")
    shapes = make_plan(PIPELINE, max_memory="cpu=1GB", counted=True).needs["unet"].inputs
    built, _ = trace(m, torch.float32, shapes)
    assert built.order.index("mid_block") < built.order.index("up_blocks")
    assert built.order.index("conv_out") > built.order.index("up_blocks.1")
