"""Tools for the run-time tests: what the real quantizers allocate, checkpoints of
real-size architectures written sparse from the meta device, a tiny Flux-style
transformer, and the order in which a model's modules really run."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bigmodel_cli.devices import DeviceKey
from bigmodel_cli.formats.safetensors import HeaderEntry, build_header
from bigmodel_cli.placement.hops import changes
from tests.helpers.plans import device_of

# ---------------------------------------------------------------- real quantizers


def _leaves(t: Any) -> Iterator[Any]:
    """The plain tensors inside a tensor subclass (torchao keeps qdata, scale, ...)."""
    inner = getattr(t, "__tensor_flatten__", None)
    if inner is not None and type(t).__name__ not in ("Params4bit", "Int8Params", "Parameter"):
        names, _ = t.__tensor_flatten__()
        for name in names:
            yield from _leaves(getattr(t, name))
    else:
        yield t


def _quant_state(state: Any) -> Iterator[Any]:
    """bitsandbytes' 4-bit state: absmax, code, offset, and the nested state."""
    if state is None:
        return
    for key in ("absmax", "code", "offset"):
        value = getattr(state, key, None)
        if value is not None and hasattr(value, "untyped_storage"):
            yield value
    yield from _quant_state(getattr(state, "state2", None))


def allocated_bytes(model: Any) -> int:
    """Bytes of every tensor a quantized model holds: parameters, buffers and their
    quantization state (absmax, code, row scales), each storage once. (``
    get_memory_footprint`` leaves the absmax and row scales out.)"""
    import torch

    storages: dict[tuple[int, int], int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        base = t.data if type(t) is torch.nn.Parameter else t
        found = [*_leaves(base), *_quant_state(getattr(t, "quant_state", None))]
        scb = getattr(t, "SCB", None)
        if scb is not None:
            found.append(scb)
        for x in found:
            st = x.untyped_storage()
            storages[(st.data_ptr(), st.nbytes())] = st.nbytes()
    return sum(storages.values())


# ---------------------------------------------------------------- real-size, sparse


def write_sparse(folder: Path, model: Any, dtype_code: str, weights_name: str) -> int:
    """``model`` (on meta) as its config and a sparse safetensors file of ``dtype_code``
    tensors (no data written); returns the bytes of tensor data."""
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_config"):
        model.save_config(folder)
    else:  # as save_pretrained writes it, with the class in architectures
        model.config.architectures = [type(model).__name__]
        model.config.to_json_file(folder / "config.json")
    state = model.state_dict()
    entries = [HeaderEntry(k, dtype_code, tuple(v.shape)) for k, v in state.items()]
    width = {"F32": 4, "F16": 2, "BF16": 2}[dtype_code]
    total = sum(v.numel() for v in state.values()) * width
    header = build_header(entries, {"format": "pt"})
    with open(folder / f"{weights_name}.safetensors", "wb") as f:
        f.write(header)
        f.truncate(len(header) + total)
    return total


def flux_config(**small: Any) -> dict[str, Any]:
    """FLUX.1's transformer config (diffusers' defaults), or a tiny one with ``small``."""
    config: dict[str, Any] = {"_class_name": "FluxTransformer2DModel", "guidance_embeds": True}
    return config | small


TINY_FLUX = flux_config(
    patch_size=1,
    in_channels=16,
    num_layers=1,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    axes_dims_rope=(4, 6, 6),
)

SDXL_UNET = {
    "_class_name": "UNet2DConditionModel",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}


def save_config_json(folder: Path, config: Mapping[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dict(config)))


# ---------------------------------------------------------------- forward order


def ran_order(model: Any, kind: str, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Every module of ``model`` (built on meta) in the order it first runs, traced on fake
    tensors; modules that never ran follow in registration order."""
    import torch

    from bigmodel_cli.runtime.trace import activations

    _, ran = activations(model, kind, shapes, torch.float32)
    return list(ran) + [n for n, _ in model.named_modules() if n and n not in set(ran)]


def forward_changes(device_map: Mapping[str, DeviceKey], order: Sequence[str]) -> int:
    """Device changes along ``order`` for an accelerate-style map; a block on cpu or disk
    runs on the map's main device (its lowest GPU)."""
    index = {name: i for i, name in enumerate(order)}
    gpus = [d for d in device_map.values() if isinstance(d, int)]
    main: DeviceKey = min(gpus) if gpus else "cpu"
    keys = sorted(device_map, key=lambda k: index.get(k, -1))
    return changes([device_map[k] if isinstance(device_map[k], int) else main for k in keys])


def offloaded(sizes: Mapping[str, int], device_map: Mapping[str, Any]) -> int:
    return sum(n for name, n in sizes.items() if not isinstance(device_of(name, device_map), int))
