"""The KV cache of a text model, from its ``config.json``, as the installed transformers
allocates it: per decoder layer, by the layer's kind (:mod:`.kv_layers`), each layer's share
on the device that holds that layer.

The cache's dtype (``kv_dtype``): ``auto`` (the model's), ``fp16``, ``bf16``, or
transformers' ``QuantizedCache``: ``fp8`` (its fp8 backend: one byte a value and a float32
scale per tensor), ``int4`` (quanto) and ``int8`` (HQQ): packed values and a scale and a
zero point at the model's width per group of 64, plus up to 127 tokens at the model's width
not yet quantized (its residual). A layer kind this does not know is counted as full
attention and named in the cache's ``note``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.runtime.kv_layers import (
    RECURRENT_WIDTH,
    Described,
    Layer,
    Reader,
    counters,
    describe,
    known,
    kv_values_per_token,
    per_sequence,
    per_token,
    unknown_kinds,
)
from bigmodel_cli.sizes import parse_dtype

_CAUSAL = re.compile(r"(ForCausalLM|LMHeadModel)$")
_LAYER = re.compile(r"^(.*?)\.(\d+)\.")
KVDType = Literal["auto", "fp16", "bf16", "fp8", "int8", "int4"]
KV_DTYPES: tuple[str, ...] = get_args(KVDType)
AUTO = KV_DTYPES[0]  # the model's dtype
QUANTIZED = {"fp8": 8, "int8": 8, "int4": 4}  # transformers' QuantizedCache: bits a value
GROUP = 64  # QuantizedCache's q_group_size
RESIDUAL = 128  # QuantizedCache's residual_length: tokens kept unquantized, fewer than this
FP8_SCALES = 2 * 4  # Fp8QuantizedLayer: a float32 scale for the keys, one for the values
_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}  # torch name -> flag's


@dataclass(frozen=True)
class Tokens:
    """What the cache holds tokens of: the decoder's ``context``, ``batch`` sequences, and
    for an encoder-decoder the ``encoder``'s tokens (its cross-attention)."""

    context: int
    batch: int = 1
    encoder: int | None = None


@dataclass(frozen=True)
class KVCache:
    """A model's cache: bytes per layer block (``model.layers.3``), in layer order."""

    layers: tuple[str, ...]
    sizes: tuple[int, ...]
    dtype: str  # the cache's dtype: fp16, bf16, fp8, int4 ...
    note: str | None = None  # layer kinds counted as full attention (not known here)

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def by_layer(self) -> dict[str, int]:
        return dict(zip(self.layers, self.sizes, strict=True))


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a config (``text_config`` of multimodal models)."""
    inner = config.get("text_config")
    return inner if isinstance(inner, dict) else config


def is_causal_lm(config: Mapping[str, Any] | None) -> bool:
    archs = (config or {}).get("architectures")
    return isinstance(archs, list) and any(isinstance(a, str) and _CAUSAL.search(a) for a in archs)


def is_encoder_decoder(config: Mapping[str, Any] | None) -> bool:
    return bool(text_config(config or {}).get("is_encoder_decoder"))


def kv_bytes_per_layer(config: Mapping[str, Any], context: int, batch: int, width: int) -> int:
    """The full-attention formula: ``2 x kv heads x head dim x context x batch x width``."""
    return kv_values_per_token(text_config(config)) * context * batch * width


def layer_count(config: Mapping[str, Any]) -> int:
    cfg = text_config(config)
    return int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or 0)


def layer_blocks(names: Sequence[str], count: int, decoder: bool = False) -> tuple[str, ...]:
    """The blocks of the decoder's layer list: the numbered list with ``count`` entries
    (``model.layers.0`` ... ``model.layers.N-1``); the longest list when none has. With
    ``decoder``, only lists under a ``decoder`` (an encoder-decoder's)."""
    lists: dict[str, set[int]] = {}
    for name in names:
        match = _LAYER.match(name)
        if match and (not decoder or "decoder" in match.group(1).split(".")):
            lists.setdefault(match.group(1), set()).add(int(match.group(2)))
    if not lists:
        return ()
    exact = [p for p, idx in lists.items() if len(idx) == count]
    prefix = exact[0] if exact else max(lists, key=lambda p: len(lists[p]))
    return tuple(f"{prefix}.{i}" for i in sorted(lists[prefix]))


def cache_dtype(kv_dtype: str | None, model: str) -> str:
    """The cache's dtype name: ``kv_dtype``, or for ``auto`` the model's (``model``: its torch
    name, ``bfloat16`` -> ``bf16``); anything else is refused, naming the argument."""
    name = (kv_dtype or AUTO).lower()
    if name not in KV_DTYPES:
        raise BigmodelError(
            f"invalid kv_dtype {kv_dtype!r}: expected one of {', '.join(KV_DTYPES)}",
            argument="kv_dtype",
        )
    return _SHORT.get(model, model) if name == AUTO else name


def kv_cache(
    config: Mapping[str, Any] | None,
    names: Sequence[str],
    tokens: Tokens,
    dtype: str,
    model_width: int,
    read: Reader | None = None,
) -> KVCache | None:
    """The cache of a causal LM or encoder-decoder at ``tokens``, in ``dtype`` (a name of
    :data:`KV_DTYPES` other than auto, or the model's), ``model_width`` bytes per value of
    the model's dtype; None for other models, and for an encoder alone (``T5EncoderModel``:
    no decoder blocks). ``read``: transformers' reading of a config (its defaults, its layer
    kinds), when at hand."""
    if config is None or not (is_causal_lm(config) or is_encoder_decoder(config)):
        return None
    described = describe(config, read)
    blocks = layer_blocks(names, len(described.layers), described.encoder_decoder)
    if not blocks:
        return None
    unknown = unknown_kinds(described.layers)
    _check_quantized(dtype, described)
    sizes = tuple(
        _layer_bytes(layer, tokens, dtype, model_width, described.encoder_decoder)
        for layer, _ in zip(described.layers, blocks, strict=False)
    )
    note = None
    if unknown:
        note = (
            f"KV cache: layer kind {', '.join(unknown)} is not one bigmodel sizes; counted as "
            "full attention (2 x kv heads x head dim x context), an over-estimate"
        )
    return KVCache(blocks[: len(sizes)], sizes, dtype, note)


def _check_quantized(dtype: str, described: Described) -> None:
    """transformers' QuantizedCache takes decoder-only models of full attention only."""
    if dtype not in QUANTIZED:
        return
    kinds = sorted({layer.kind for layer in described.layers} - {"full_attention"})
    if kinds or described.encoder_decoder:
        what = "an encoder-decoder" if described.encoder_decoder else ", ".join(kinds)
        raise BigmodelError(
            f"kv_dtype {dtype}: transformers' quantized cache takes decoder-only models whose "
            f"layers are all full attention; this one has {what}",
            argument="kv_dtype",
        )


def _layer_bytes(layer: Layer, tokens: Tokens, dtype: str, model_width: int, cross: bool) -> int:
    """One layer's cache at ``tokens``: per-token values in the cache's dtype, per-sequence
    states, its counters."""
    if not known(layer):
        values = kv_values_per_token(layer.config)
        return values * tokens.context * tokens.batch * _width(dtype, model_width)
    if dtype in QUANTIZED:
        return _quantized(per_token(layer), tokens, dtype, model_width)
    cached = per_token(layer) * tokens.context
    if cross:
        cached += per_token(layer) * (tokens.encoder or tokens.context)
    conv, recurrent = per_sequence(layer)
    states = conv * model_width + recurrent * RECURRENT_WIDTH
    return (cached * _width(dtype, model_width) + states) * tokens.batch + counters(layer)


def _width(dtype: str, model_width: int) -> int:
    """Bytes a cached value takes in ``dtype`` (fp16, bf16, or the model's own name)."""
    return model_width if dtype in QUANTIZED else parse_dtype(dtype).bits // 8


def _quantized(values: int, tokens: Tokens, dtype: str, model_width: int) -> int:
    """A QuantizedCache layer at its peak over ``tokens.context`` tokens. fp8: every token
    at one byte and two float32 scales. int4/int8: the tokens not yet quantized (at most
    127, the first token always is) at the model's width, the rest packed with a scale and
    a zero point per group of 64 values."""
    if dtype == "fp8":
        return values * tokens.batch * tokens.context + FP8_SCALES
    residual = min(RESIDUAL - 1, tokens.context - 1)
    packed = values * tokens.batch * (tokens.context - residual)
    scales = math.ceil(packed / GROUP) * 2 * model_width
    return packed * QUANTIZED[dtype] // 8 + scales + values * tokens.batch * residual * model_width
