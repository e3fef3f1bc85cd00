"""The KV cache of a causal language model, from its ``config.json``.

``2 (keys and values) x key/value heads x head dim x context x batch x bytes`` per layer,
each layer's share on the device that holds that layer. Grouped-query attention
(``num_key_value_heads``) and an explicit ``head_dim`` are read when the config has them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_CAUSAL = re.compile(r"(ForCausalLM|LMHeadModel)$")
_LAYER = re.compile(r"^(.*?)\.(\d+)\.")


@dataclass(frozen=True)
class KVCache:
    """A causal LM's KV cache: bytes per layer block (``model.layers.3``), in layer order."""

    per_layer: int
    layers: tuple[str, ...]

    @property
    def total(self) -> int:
        return self.per_layer * len(self.layers)


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a config (``text_config`` of multimodal models)."""
    inner = config.get("text_config")
    return inner if isinstance(inner, dict) else config


def is_causal_lm(config: Mapping[str, Any] | None) -> bool:
    archs = (config or {}).get("architectures")
    return isinstance(archs, list) and any(isinstance(a, str) and _CAUSAL.search(a) for a in archs)


def kv_bytes_per_layer(config: Mapping[str, Any], context: int, batch: int, width: int) -> int:
    """``2 x kv heads x head dim x context x batch x width`` (``width``: bytes per value)."""
    cfg = text_config(config)
    heads = int(cfg.get("num_attention_heads") or cfg.get("n_head") or 1)
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    hidden = int(cfg.get("hidden_size") or cfg.get("n_embd") or 0)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    return 2 * kv_heads * head_dim * context * batch * width


def layer_count(config: Mapping[str, Any]) -> int:
    cfg = text_config(config)
    return int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or 0)


def layer_blocks(names: Sequence[str], count: int) -> tuple[str, ...]:
    """The blocks of the decoder's layer list: the numbered list with ``count`` entries
    (``model.layers.0`` ... ``model.layers.N-1``); the longest list when none has."""
    lists: dict[str, set[int]] = {}
    for name in names:
        match = _LAYER.match(name)
        if match:
            lists.setdefault(match.group(1), set()).add(int(match.group(2)))
    if not lists:
        return ()
    exact = [p for p, idx in lists.items() if len(idx) == count]
    prefix = exact[0] if exact else max(lists, key=lambda p: len(lists[p]))
    return tuple(f"{prefix}.{i}" for i in sorted(lists[prefix]))


def kv_cache(
    config: Mapping[str, Any] | None, names: Sequence[str], context: int, batch: int, width: int
) -> KVCache | None:
    """The KV cache of a causal LM at ``context`` tokens and ``batch``; None for others."""
    if config is None or not is_causal_lm(config):
        return None
    layers = layer_blocks(names, layer_count(config))
    if not layers:
        return None
    return KVCache(kv_bytes_per_layer(config, context, batch, width), layers)
