"""Shared tools for the plan tests: the real libraries' answers, and device-map checks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bigmodel_cli.blocks import build_units
from bigmodel_cli.planner import Bin, DeviceKey, Layout, Part
from tests.conftest import FIXTURES

GB = 10**9


def diffusers_balanced(sizes: Mapping[str, int], gpus: Mapping[int, int]) -> dict[str, DeviceKey]:
    """diffusers' own ``_assign_components_to_devices``, fed as ``_get_final_device_map``
    feeds it: components by size descending, GPUs by free memory descending (stable)."""
    from diffusers.pipelines.pipeline_loading_utils import _assign_components_to_devices

    module_sizes = dict(sorted(sizes.items(), key=lambda item: item[1], reverse=True))
    max_memory: dict[Any, float] = dict(sorted(gpus.items(), key=lambda i: i[1], reverse=True))
    mapping = _assign_components_to_devices(dict(module_sizes), max_memory, "balanced")
    return {c: device for device, components in mapping.items() for c in components}


def bins(gpus: Mapping[int, int], cpu: int | None = None) -> list[Bin]:
    return [*(Bin(k, v) for k, v in sorted(gpus.items())), Bin("cpu", cpu)]


def parts(sizes: Mapping[str, int]) -> list[Part]:
    return [Part(name, n) for name, n in sizes.items()]


def on_gpus(layout: Layout) -> dict[str, DeviceKey]:
    return {p.name: p.device for p in layout.placements if isinstance(p.device, int)}


# ---------------------------------------------------------------- real models on meta


def meta_unet() -> Any:
    """The tiny-pipeline UNet2DConditionModel, built on the meta device from its config."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    config = json.loads((FIXTURES / "tiny-pipeline" / "unet" / "config.json").read_text())
    with init_empty_weights():
        return UNet2DConditionModel.from_config(config)


def meta_llama(tie: bool = False, layers: int = 6) -> Any:
    from accelerate import init_empty_weights
    from transformers import LlamaForCausalLM

    with init_empty_weights():
        model = LlamaForCausalLM(llama_config(tie, layers))
    model.tie_weights()
    return model


def llama_config(tie: bool, layers: int = 6) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )


def saved_sizes(model: Any, dtype: Any = None) -> dict[str, int]:
    """Bytes of each tensor ``save_pretrained`` would write (tied copies written once)."""
    sizes = {}
    for name, tensor in model.state_dict().items():
        width = tensor.element_size()
        if dtype is not None and tensor.is_floating_point():
            width = dtype.itemsize
        sizes[name] = tensor.numel() * width
    tied = getattr(model, "_tied_weights_keys", None) or {}
    if getattr(model.config, "tie_word_embeddings", False):
        for name in list(tied):
            sizes.pop(name, None)
    return sizes


def auto_part(name: str, sizes: Mapping[str, int], config: Mapping[str, Any] | None) -> Part:
    units = build_units(list(sizes.items()), config)
    return Part(name, sum(sizes.values()), units)


def accelerate_map(model: Any, max_memory: Mapping[DeviceKey, int], dtype: Any) -> dict[str, Any]:
    """accelerate's ``infer_auto_device_map`` with the model's own no-split classes, as
    ``from_pretrained(device_map="auto")`` calls it."""
    from accelerate import infer_auto_device_map

    return dict(
        infer_auto_device_map(
            model,
            max_memory=dict(max_memory),
            no_split_module_classes=list(getattr(model, "_no_split_modules", None) or []),
            dtype=dtype,
        )
    )


def keys_for(name: str, device_map: Mapping[str, Any]) -> list[str]:
    """Every key of ``device_map`` that covers tensor ``name`` (a dotted prefix or itself)."""
    return [k for k in device_map if k == "" or name == k or name.startswith(k + ".")]


def device_of(name: str, device_map: Mapping[str, Any]) -> Any:
    return device_map[max(keys_for(name, device_map), key=len)]


def bytes_by_device(sizes: Mapping[str, int], device_map: Mapping[str, Any]) -> dict[Any, int]:
    found: dict[Any, int] = {}
    for name, n in sizes.items():
        where = device_of(name, device_map)
        found[where] = found.get(where, 0) + n
    return found


def off_gpu(sizes: Mapping[str, int], device_map: Mapping[str, Any]) -> int:
    by_device = bytes_by_device(sizes, device_map)
    return sum(n for d, n in by_device.items() if not isinstance(d, int))


def plan_json(path: Path | str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
