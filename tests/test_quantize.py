"""``--quantize``: the bytes a plan counts against what the real quantizers allocate for
the same tiny checkpoints, quantized for real on the CPU (bitsandbytes through
transformers, torchao through transformers and diffusers): parameters, buffers and
their quantization state, each storage once."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from bigmodel_cli.placement import make_plan
from bigmodel_cli.runtime.quantize import Tensor, is_embedding, quantizable, quantized_bytes
from tests.helpers.cli import FIXTURES
from tests.helpers.runtime import allocated_bytes

LLAMA = FIXTURES / "tiny-llama"
UNET = FIXTURES / "tiny-pipeline" / "unet"
WITHIN = 0.01


def _planned(folder: Path, method: str, **flags: Any) -> int:
    plan = make_plan(folder, max_memory="cpu=1GB", quantize=method, **flags)
    (bytes_,) = plan.components.values()
    return bytes_


def _close(planned: int, real: int) -> None:
    assert abs(planned - real) <= WITHIN * real, (planned, real, planned / real - 1)


def _bnb(**config: Any) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**config)


def _torchao(name: str) -> Any:
    from torchao import quantization

    return getattr(quantization, name)()


def _llama(quantization_config: Any, **kwargs: Any) -> Any:
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(
        LLAMA, quantization_config=quantization_config, device_map="cpu", **kwargs
    )


# ---------------------------------------------------------------- the formulas


def test_quantized_bytes_per_method() -> None:
    shape = (128, 256)  # 32768 values, 512 blocks of 64
    assert quantized_bytes("int8", shape) == 32768 + 128 * 4
    assert quantized_bytes("fp8", shape) == 32768 + 128 * 4
    assert quantized_bytes("nf4", shape) == 16384 + 512 * 4 + 64
    assert quantized_bytes("fp4", shape) == quantized_bytes("nf4", shape)
    nested = 16384 + 512 + 4 + math.ceil(512 / 256) * 4 + 1024 + 64
    assert quantized_bytes("nf4", shape, double_quant=True) == nested
    big = (4096, 4096)  # double quantization pays off at real sizes
    assert quantized_bytes("nf4", big, double_quant=True) < quantized_bytes("nf4", big)


def test_only_linear_weights_are_quantized() -> None:
    def q(name: str, shape: tuple[int, ...], dtype: str = "F16", **kw: Any) -> bool:
        return quantizable(Tensor(name, dtype, shape), None, **kw)

    assert q("model.layers.0.mlp.up_proj.weight", (8, 4))
    assert q("time_embedding.linear_1.weight", (8, 4)) and q("x_embedder.weight", (8, 4))
    assert not q("model.embed_tokens.weight", (8, 4))
    assert not q("text_model.embeddings.token_embedding.weight", (8, 4))
    assert not q("lm_head.weight", (8, 4))  # the output head stays
    assert not q("conv_in.weight", (8, 4, 3, 3)) and not q("norm.weight", (8,))
    assert not q("layers.0.proj.bias", (8, 4)) and not q("idx.weight", (8, 4), "I64")
    assert not q("down_blocks.0.proj.weight", (8, 4), no_quantize=["down_blocks.0"])
    assert is_embedding("shared") and not is_embedding("context_embedder")


def test_quantize_of_one_component_leaves_the_others() -> None:
    pipe = FIXTURES / "tiny-pipeline"
    full = make_plan(pipe, max_memory="cpu=1GB")
    some = make_plan(pipe, max_memory="cpu=1GB", quantize="unet=int8")
    assert some.components["vae"] == full.components["vae"]
    assert some.components["unet"] < full.components["unet"]
    assert some.shape.quantize == {"unet": "int8"}


# ---------------------------------------------------------------- against the quantizers


@pytest.mark.parametrize(
    ("method", "config", "flags"),
    [
        ("int8", {"load_in_8bit": True}, {}),
        ("nf4", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, {}),
        ("fp4", {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"}, {}),
        (
            "nf4",
            {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True},
            {"double_quant": True},
        ),
    ],
)
def test_llama_under_bitsandbytes_is_within_1_percent(
    method: str, config: dict[str, Any], flags: dict[str, Any]
) -> None:
    _close(_planned(LLAMA, method, **flags), allocated_bytes(_llama(_bnb(**config))))


def test_bitsandbytes_int8_at_bf16_is_within_1_percent() -> None:
    import torch

    real = allocated_bytes(_llama(_bnb(load_in_8bit=True), dtype=torch.bfloat16))
    _close(_planned(LLAMA, "int8", dtype="bf16"), real)


def test_nf4_with_the_class_built_is_within_1_percent() -> None:
    real = allocated_bytes(_llama(_bnb(load_in_4bit=True, bnb_4bit_quant_type="nf4")))
    _close(_planned(LLAMA, "nf4", counted=True), real)


@pytest.mark.parametrize(
    ("method", "config"), [("int8", "Int8WeightOnlyConfig"), ("fp8", "Float8WeightOnlyConfig")]
)
def test_llama_under_torchao_is_within_1_percent(method: str, config: str) -> None:
    from transformers import TorchAoConfig

    _close(_planned(LLAMA, method), allocated_bytes(_llama(TorchAoConfig(_torchao(config)))))


@pytest.mark.parametrize(
    ("method", "config"), [("int8", "Int8WeightOnlyConfig"), ("fp8", "Float8WeightOnlyConfig")]
)
@pytest.mark.parametrize("counted", [False, True])
def test_diffusers_unet_under_torchao_is_within_1_percent(
    method: str, config: str, counted: bool
) -> None:
    import torch
    from diffusers import TorchAoConfig, UNet2DConditionModel

    model = UNet2DConditionModel.from_pretrained(  # diffusers' torchao path defaults to bf16
        UNET,
        quantization_config=TorchAoConfig(_torchao(config)),
        device_map="cpu",
        torch_dtype=torch.bfloat16,
    )
    _close(_planned(UNET, method, counted=counted, dtype="bf16"), allocated_bytes(model))


def test_get_memory_footprint_misses_the_quantization_state() -> None:
    """Why the tests count tensors: transformers' own figure leaves nf4's absmax out."""
    model = _llama(_bnb(load_in_4bit=True, bnb_4bit_quant_type="nf4"))
    assert model.get_memory_footprint() < 0.95 * allocated_bytes(model)
