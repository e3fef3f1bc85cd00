"""Bytes of weights under ``--quantize``: what bitsandbytes and torchao allocate.

Only the weights of linear layers are quantized, as both libraries do: 2-D ``*.weight``
tensors that are not embeddings, not the output head (``lm_head``, which transformers
keeps, as it keeps the tensors tied to it), and not under ``--no-quantize PREFIX``.
Which 2-D weights are linear layers is read from the model's class when it was built
(:mod:`.trace`), else from the names. Everything else stays at ``--dtype``.

Per quantized weight of ``n`` values in ``rows`` rows:

- ``int8`` (bitsandbytes ``Linear8bitLt``): ``n`` bytes plus a float32 scale per row
  (torchao's int8 weight-only adds a one-byte zero point per row);
- ``fp8`` (torchao float8 weight-only): ``n`` bytes plus a float32 scale per row;
- ``nf4`` / ``fp4`` (bitsandbytes ``Linear4bit``): ``n / 2`` bytes packed, a float32
  absmax per block of 64 values and the 16-value float32 code of the layer; with
  ``--double-quant`` the absmax values are themselves quantized to one byte each, with a
  float32 absmax per 256 of them, a float32 offset and a 256-value float32 code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from bigmodel_cli.sizes import DTYPES, DType, bytes_at

BLOCK = 64  # values per absmax (bitsandbytes' 4-bit blocksize)
NESTED_BLOCK = 256  # absmax values per second-level absmax (double quantization)
CODE_4BIT = 16 * 4  # the nf4 / fp4 code of a layer: 16 float32 values
CODE_NESTED = 256 * 4  # the dynamic 8-bit code of the nested absmax: 256 float32 values
ROW_SCALE = 4  # float32

HEADS = frozenset({"lm_head", "embed_out"})
_EMBEDDING = re.compile(
    r"(^|[._])(embed|embedding|embeddings|embed_tokens|embedding_table|word_embeddings|"
    r"tok_embeddings|wte|wpe|shared|relative_attention_bias)$"
)


@dataclass(frozen=True)
class Tensor:
    """What quantization needs of a tensor: its name, safetensors dtype code and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]


def is_embedding(module: str) -> bool:
    """``model.embed_tokens`` / ``text_model.embeddings.token_embedding`` -> True;
    ``time_embedding.linear_1`` or ``x_embedder`` -> False (linear layers)."""
    return bool(_EMBEDDING.search(module))


def quantizable(
    t: Tensor,
    linears: Collection[str] | None,
    skip: Collection[str] = HEADS,
    no_quantize: Sequence[str] = (),
) -> bool:
    """Whether ``t`` is the weight of a linear layer that the quantizers replace.

    ``linears``: the names of the linear layers' weights when the class is known; None
    to judge from the names. ``skip``: modules kept as they are (the output head)."""
    if not t.name.endswith(".weight") or len(t.shape) != 2 or not DTYPES[t.dtype].floating:
        return False
    module = t.name.removesuffix(".weight")
    if module in skip or any(module == p or module.startswith(p + ".") for p in no_quantize):
        return False
    if linears is not None:
        return t.name in linears
    return not is_embedding(module)


def quantized_bytes(method: str, shape: tuple[int, ...], double_quant: bool = False) -> int:
    """Bytes one linear weight of ``shape`` (rows, columns) takes quantized by ``method``."""
    n = math.prod(shape)
    rows = shape[0]
    if method in ("int8", "fp8"):
        return n + rows * ROW_SCALE
    blocks = math.ceil(n / BLOCK)
    packed = (n + 1) // 2 + CODE_4BIT
    if not double_quant:
        return packed + blocks * 4
    nested = math.ceil(blocks / NESTED_BLOCK)
    return packed + blocks + 4 + nested * 4 + CODE_NESTED


def weight_sizes(
    tensors: Iterable[Tensor],
    target: DType | None,
    method: str | None,
    *,
    linears: Collection[str] | None = None,
    skip: Collection[str] = HEADS,
    no_quantize: Sequence[str] = (),
    double_quant: bool = False,
) -> list[tuple[str, int]]:
    """``(name, bytes)`` of every tensor at ``target`` dtype, linear weights quantized."""
    sizes = []
    for t in tensors:
        if method is not None and quantizable(t, linears, skip, no_quantize):
            sizes.append((t.name, quantized_bytes(method, t.shape, double_quant)))
        else:
            sizes.append((t.name, bytes_at(DTYPES[t.dtype], math.prod(t.shape), target)))
    return sizes
