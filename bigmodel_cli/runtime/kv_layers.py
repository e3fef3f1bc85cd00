"""What one decoder layer's cache holds, as the installed transformers allocates it.

A config describes its layers (``layer_types``: ``full_attention``, ``sliding_attention``,
``linear_attention`` (a state-space or linear-attention mixer), ``hybrid`` (both),
``dummy`` (none)); transformers' own config class fills in what a ``config.json`` leaves
to defaults (Jamba's attention period, Mamba's all-state-space layers) when it is
installed. The bytes of each kind are read off transformers' cache classes and modeling
files:

- attention (``DynamicLayer``): keys and values, ``2 x kv heads x head dim`` per token;
  latent attention (DeepSeek-V2/V3, MiniCPM3 ...: ``kv_lora_rank``) caches the compressed
  latent instead, ``kv_lora_rank + qk_rope_head_dim`` per token;
- sliding attention (``DynamicSlidingWindowLayer``): the same per token over the whole
  prefill (the kept window is a view of the prefill's storage until the next decoding
  step), and its window as an int64;
- state space (``LinearAttentionLayer``): a convolution state and a recurrent state per
  sequence, independent of the context, and an int64 token count;
- cross-attention of an encoder-decoder (``EncoderDecoderCache``): keys and values of the
  encoder's tokens in every decoder layer.

Pure functions of a layer's config values (:class:`Layer`); transformers' config class is
read by ``runtime.library.library_config``, handed to :func:`describe`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

COUNTER = 8  # an int64 the layer keeps (sliding window, tokens seen by a state-space layer)
ATTENTION = frozenset({"full_attention", "sliding_attention", "chunked_attention"})
SLIDING = frozenset({"sliding_attention", "chunked_attention", "hybrid_sliding"})
LINEAR = frozenset({"linear_attention", "hybrid", "hybrid_sliding"})
_LEGACY = {"attention": "full_attention", "mamba": "linear_attention", "moe": "dummy"}
_LEGACY |= {"mlp": "dummy"}
# what may differ from layer to layer (``per_layer_config``), read through the config's aliases
PER_LAYER: tuple[str, ...] = ("num_attention_heads", "num_key_value_heads", "head_dim")
PER_LAYER += ("hidden_size", "kv_lora_rank", "qk_rope_head_dim")

Values = Mapping[str, Any]
States = tuple[int, int]  # values of a convolution state, of a recurrent state
RECURRENT_WIDTH = 4  # float32
UNDESCRIBED = "not described in config.json (transformers' config class not at hand)"


@dataclass(frozen=True)
class Layer:
    """One decoder layer: its kind (transformers' layer type) and its config values."""

    kind: str
    config: Values


@dataclass(frozen=True)
class Described:
    """A model's decoder layers as its cache sees them (``encoder_decoder``: each also
    caches the encoder's keys and values)."""

    layers: tuple[Layer, ...]
    encoder_decoder: bool = False


def _int(c: Values, *keys: str) -> int:
    """The first of ``keys`` the config sets, as an int (0: none)."""
    for key in keys:
        value = c.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value:
            return int(value)
    return 0


def kv_values_per_token(c: Values) -> int:
    """Keys plus values per token of one attention layer: ``2 x kv heads x head dim``."""
    heads = _int(c, "num_attention_heads", "n_head") or 1
    kv_heads = _int(c, "num_key_value_heads") or heads
    head_dim = _int(c, "head_dim") or _int(c, "hidden_size", "n_embd") // heads
    return 2 * kv_heads * head_dim


def attention_values_per_token(c: Values) -> int:
    """What an attention layer caches per token: the latent (``kv_lora_rank`` and the
    shared rotary key) under latent attention, else keys and values."""
    if _int(c, "kv_lora_rank"):
        return _int(c, "kv_lora_rank") + _int(c, "qk_rope_head_dim")
    return kv_values_per_token(c)


def _mamba(inner: int, state: int, conv: int) -> States:
    """Mamba-1: a convolution state ``inner x kernel``, a recurrent state ``inner x state``."""
    return inner * conv, inner * state


def _mamba2(inner: int, groups: int, heads: int, head_dim: int, state: int, conv: int) -> States:
    """Mamba-2: the convolution runs over ``inner + 2 x groups x state`` channels, the
    recurrent state is ``heads x head dim x state``."""
    return (inner + 2 * groups * state) * conv, heads * head_dim * state


def _gated_delta(c: Values) -> States:
    """Qwen3-Next's gated delta net: the convolution over its keys (twice: queries too) and
    values, a recurrent state ``value heads x key head dim x value head dim``."""
    keys = _int(c, "linear_num_key_heads") * _int(c, "linear_key_head_dim")
    values = _int(c, "linear_num_value_heads") * _int(c, "linear_value_head_dim")
    conv = (2 * keys + values) * _int(c, "linear_conv_kernel_dim")
    return conv, values * _int(c, "linear_key_head_dim")


def _expand(c: Values, key: str) -> int:
    return int(float(c.get(key) or 0) * _int(c, "hidden_size"))


# model_type -> the values a state-space layer keeps per sequence (its mixer's __init__):
# (convolution state, recurrent state)
STATE_SPACE: dict[str, Callable[[Values], States]] = {
    "mamba": lambda c: _mamba(
        _int(c, "intermediate_size"), _int(c, "state_size"), _int(c, "conv_kernel")
    ),
    "jamba": lambda c: _mamba(
        _expand(c, "mamba_expand"), _int(c, "mamba_d_state"), _int(c, "mamba_d_conv")
    ),
    "mamba2": lambda c: _mamba2(
        _expand(c, "expand"),
        _int(c, "n_groups"),
        _int(c, "num_heads"),
        _int(c, "head_dim"),
        _int(c, "state_size"),
        _int(c, "conv_kernel"),
    ),
    "bamba": lambda c: _mamba2(
        _expand(c, "mamba_expand"),
        _int(c, "mamba_n_groups"),
        _int(c, "mamba_n_heads"),
        _int(c, "mamba_d_head"),
        _int(c, "mamba_d_state"),
        _int(c, "mamba_d_conv"),
    ),
    "falcon_h1": lambda c: _mamba2(
        _int(c, "mamba_d_ssm") or _expand(c, "mamba_expand"),
        _int(c, "mamba_n_groups"),
        _int(c, "mamba_n_heads"),
        _int(c, "mamba_d_head"),
        _int(c, "mamba_d_state"),
        _int(c, "mamba_d_conv"),
    ),
    "qwen3_next": _gated_delta,
}
STATE_SPACE["falcon_mamba"] = STATE_SPACE["mamba"]
STATE_SPACE["granitemoehybrid"] = STATE_SPACE["bamba"]


def known(layer: Layer) -> bool:
    """Whether :func:`per_token` and :func:`per_sequence` size this layer's kind."""
    if layer.kind == "dummy" or layer.kind in ATTENTION:
        return True
    return layer.kind in LINEAR and str(layer.config.get("model_type")) in STATE_SPACE


def per_token(layer: Layer) -> int:
    """Values the layer caches per token (of the decoder's context)."""
    if layer.kind in ("linear_attention", "dummy"):
        return 0
    return attention_values_per_token(layer.config)


def per_sequence(layer: Layer) -> States:
    """What a state-space mixer keeps per sequence whatever the context: its convolution
    state (at the model's width) and its recurrent state (float32: transformers' scans and
    the kernels it calls return it so)."""
    if layer.kind not in LINEAR:
        return 0, 0
    return STATE_SPACE[str(layer.config.get("model_type"))](layer.config)


def counters(layer: Layer) -> int:
    """The bytes of the int64s a sliding layer (its window) or a state-space layer (the
    tokens it has seen) keeps."""
    return ((layer.kind in SLIDING) + (layer.kind in LINEAR)) * COUNTER


# ---------------------------------------------------------------- the config's layers


@dataclass(frozen=True)
class ConfigRead:
    """A config as transformers' own config class reads it (``runtime.library``)."""

    values: Values  # the whole config, the class's defaults filled in
    kinds: tuple[str, ...]  # the decoder's layer types, as DynamicCache dispatches them
    layers: tuple[Values, ...]  # the decoder's config values, per layer


Reader = Callable[[Values], ConfigRead | None]


def describe(config: Values, read: Reader | None = None) -> Described:
    """The decoder layers of ``config`` (a causal LM's or an encoder-decoder's), as
    ``read`` (transformers' config class, when installed) gives them, else from the JSON."""
    text = config.get("text_config")
    cfg: Values = text if isinstance(text, dict) else config
    found = read(cfg) if read is not None else None
    if cfg.get("is_encoder_decoder"):
        return _encoder_decoder({**found.values, **cfg} if found is not None else cfg)
    if found is None or len(found.kinds) != len(found.layers):
        return _from_json(cfg)
    return Described(tuple(Layer(k, c) for k, c in zip(found.kinds, found.layers, strict=True)))


def _from_json(cfg: Values) -> Described:
    """The layers from ``config.json`` alone (transformers' rule: ``layer_types`` when
    given, else sliding when there is a window, else full attention)."""
    count = _int(cfg, "num_hidden_layers", "n_layer")
    kinds = cfg.get("layer_types") or cfg.get("layers_block_type")
    if isinstance(kinds, list) and len(kinds) == count:
        pass
    elif cfg.get("model_type") in STATE_SPACE:  # its layers' kinds are its config class's
        kinds = [UNDESCRIBED] * count
    else:
        window = cfg.get("sliding_window") is not None and cfg.get("use_sliding_window", True)
        kinds = ["sliding_attention" if window else "full_attention"] * count
    return Described(tuple(Layer(_LEGACY.get(str(k), str(k)), cfg) for k in kinds))


def _encoder_decoder(cfg: Values) -> Described:
    """T5 / BART-style decoders: every layer caches its own keys and values (self
    attention) and the encoder's (cross-attention), with the decoder's heads."""
    count = _int(cfg, "num_decoder_layers", "decoder_layers", "num_layers", "num_hidden_layers")
    heads = _int(cfg, "decoder_attention_heads", "num_heads", "num_attention_heads") or 1
    head_dim = _int(cfg, "d_kv") or _int(cfg, "d_model", "hidden_size") // heads
    values = {"num_attention_heads": heads, "num_key_value_heads": heads, "head_dim": head_dim}
    return Described(tuple(Layer("full_attention", values) for _ in range(count)), True)


def unknown_kinds(layers: Sequence[Layer]) -> list[str]:
    """The kinds among ``layers`` this module does not size, in order of appearance."""
    found: list[str] = []
    for layer in layers:
        if not known(layer):
            name = layer.kind if layer.kind not in LINEAR else f"{layer.kind} ({_type(layer)})"
            if name not in found:
                found.append(name)
    return found


def _type(layer: Layer) -> str:
    return str(layer.config.get("model_type"))
