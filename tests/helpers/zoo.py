"""A zoo of tiny transformers models: each architecture's own default config (from the
library) shrunk to a few hundred KB, built with its Auto class, saved by its own
``save_pretrained`` in small shards, and run on token ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = {  # the Auto class each kind of model is built with
    "causal": "AutoModelForCausalLM",
    "image-text": "AutoModelForImageTextToText",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "masked": "AutoModelForMaskedLM",
}
VOCAB = 256
SHARD = "40KB"
SIZES = {  # config keys shrunk wherever they appear (sub-configs included)
    32: (
        "hidden_size",
        "d_model",
        "n_embd",
        "embed_dim",
        "projection_dim",
        "text_hidden_size",
        "vision_hidden_size",
        "out_hidden_size",
    ),
    64: ("intermediate_size", "ffn_dim", "d_ff", "n_inner", "encoder_ffn_dim", "decoder_ffn_dim"),
    2: (
        "num_hidden_layers",
        "num_layers",
        "n_layer",
        "n_layers",
        "depth",
        "encoder_layers",
        "decoder_layers",
        "num_decoder_layers",
        "num_attention_heads",
        "n_head",
        "n_heads",
        "num_heads",
        "encoder_attention_heads",
        "decoder_attention_heads",
        "num_key_value_heads",
        "num_experts_per_tok",
        "num_experts_per_token",
        "top_k",
    ),
    4: ("num_local_experts", "num_experts", "n_routed_experts", "state_size", "d_state"),
    16: (
        "head_dim",
        "moe_intermediate_size",
        "shared_expert_intermediate_size",
        "v_head_dim",
        "qk_rope_head_dim",
    ),
    8: ("qk_nope_head_dim", "kv_lora_rank", "q_lora_rank", "time_step_rank"),
    1: ("n_shared_experts", "first_k_dense_replace", "n_group", "topk_group"),
}
SHRINK = {key: value for value, keys in SIZES.items() for key in keys}
DERIVED = ("layer_types", "mlp_layer_types", "attn_layer_indices", "layers_block_type")


def _shrink(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key in DERIVED or key in ("architectures", "transformers_version", "_name_or_path"):
            continue
        if isinstance(value, dict) and ("model_type" in value or key.endswith("_config")):
            out[key] = _shrink(value)
        elif key in SHRINK and isinstance(value, int) and not isinstance(value, bool):
            out[key] = min(value, SHRINK[key]) if value else value
        elif key == "vocab_size" and isinstance(value, int):
            out[key] = VOCAB
        elif _token_id(key):
            out[key] = _small_ids(value)
        else:
            out[key] = value
    rope = out.get("rope_parameters") or out.get("rope_scaling")
    if isinstance(rope, dict) and isinstance(rope.get("mrope_section"), list):
        rope["mrope_section"] = _sections(rope["mrope_section"], out)
    return out


def _token_id(key: str) -> bool:
    return key.endswith(("_token_id", "_token_index", "_token_ids", "token_id"))


def _small_ids(value: Any) -> Any:
    if isinstance(value, list):
        return [_small_ids(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and value >= VOCAB - 8:
        return VOCAB - 1 - (value % 7)
    return value


def _sections(sections: list[int], doc: dict[str, Any]) -> list[int]:
    """Rotary sections that add up to half the shrunk head width."""
    heads = doc.get("num_attention_heads") or 2
    half = (doc.get("head_dim") or doc.get("hidden_size", 32) // heads) // 2
    total = sum(sections)
    found = [max(1, s * half // total) for s in sections]
    found[0] += half - sum(found)
    return found


MROPE = {"rope_type": "default", "mrope_section": [2, 3, 3]}  # half a 16-wide head
# what the shrinking cannot guess: rotary sections that the model's code defaults to
OVERRIDES: dict[str, dict[str, Any]] = {
    "qwen2_vl": {"text_config": {"rope_parameters": MROPE}},
    "qwen2_5_vl": {"text_config": {"rope_parameters": MROPE}},
}


def shrunk_config(model_type: str) -> Any:
    """The library's default config for ``model_type``, shrunk."""
    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type)
    doc = _shrink(default.to_dict())
    doc.pop("model_type", None)
    for key, value in OVERRIDES.get(model_type, {}).items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    return AutoConfig.for_model(model_type, **doc)


@dataclass
class Built:
    """A tiny model of one architecture, saved."""

    model_type: str
    kind: str
    folder: Path
    nbytes: int


def build_and_save(model_type: str, kind: str, root: Path, shard: str = SHARD) -> Built:
    """Build ``model_type`` with the Auto class of ``kind`` and save it in shards."""
    import torch
    import transformers

    config = shrunk_config(model_type)
    torch.manual_seed(0)
    model = getattr(transformers, KINDS[kind]).from_config(config).eval()
    folder = root / model_type
    model.save_pretrained(folder, max_shard_size=shard)
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return Built(model_type, kind, folder, nbytes)


def reference(built: Built) -> Any:
    """The model loaded unsplit by its own library, from the saved folder."""
    import transformers

    return getattr(transformers, KINDS[built.kind]).from_pretrained(built.folder).eval()


def logits(model: Any, kind: str, vocab: int = VOCAB) -> Any:
    """Logits of one forward pass on fixed token ids."""
    import torch

    ids = torch.arange(3, 3 + 6).reshape(1, 6) % (vocab - 10) + 2
    extra = {"decoder_input_ids": ids} if kind == "seq2seq" else {}
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra)
    return out.logits if hasattr(out, "logits") else out[0]


def split_plan(built: Built, strategy: str = "auto") -> Any:
    """A plan over cpu (half the model) and disk."""
    from bigmodel_cli.placement import make_plan

    budget = f"cpu={built.nbytes // 2},disk"
    return make_plan(built.folder, max_memory=budget, strategy=strategy)


def expected_logits(built: Built) -> Any:
    """The logits of the model loaded unsplit by its own library."""
    return logits(reference(built), built.kind)


def max_difference(built: Built, plan: Any, expected: Any) -> float:
    """Largest absolute logit difference between ``bm.load(folder, plan)`` and
    ``expected`` (the unsplit model's)."""
    import bigmodel_cli as bm

    placed = bm.load(built.folder, plan)
    return float((logits(placed, built.kind) - expected).abs().max())


def library_offload_difference(built: Built, offload: Path) -> float:
    """The same comparison with the library's own offload (``device_map="auto"`` with half
    the model in RAM, the rest on disk): a failure here is the library's, not the plan's."""
    import transformers

    model = getattr(transformers, KINDS[built.kind]).from_pretrained(
        built.folder,
        device_map="auto",
        max_memory={"cpu": built.nbytes // 2},
        offload_folder=str(offload),
    )
    return float((logits(model.eval(), built.kind) - expected_logits(built)).abs().max())
