"""The forward order of a component's blocks, for counting device changes (``auto``).

From the class when it was built (:mod:`bigmodel_cli.runtime.trace`): the order in which
its modules were registered, which is the order of its forward pass for the models of
diffusers and transformers. Otherwise from the names: inputs first (embeddings,
``conv_in``, ``x_embedder``), then the numbered block lists (``down_blocks`` before
``mid_block`` before ``up_blocks``, ``transformer_blocks`` before
``single_transformer_blocks``, encoder before decoder), each in numeric order (inside a
block, ``resnets`` and ``attentions`` alternate and the samplers come last), then the
outputs (``norm_out``, ``conv_out``, ``proj_out``, ``lm_head``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from bigmodel_cli.checkpoint.blocks import natural_key
from bigmodel_cli.placement.items import Unit

_INPUT = re.compile(
    r"(^|[._])(embed\w*|embeddings?|\w*_embedder|\w*_embedding|conv_in|proj_in|patch\w*|"
    r"pos_\w+|time\w*|context\w*|wte|wpe|shared|quant_conv|input\w*)$"
)
_OUTPUT = re.compile(
    r"(^|[._])(norm_out|conv_norm_out|conv_out|proj_out|lm_head|embed_out|final\w*|head|"
    r"ln_f|norm|post_quant_conv|output\w*)$"
)
# the phase of a block list by its name, for lists that run one after another
_PHASES = (("down", 0), ("encoder", 0), ("mid", 1), ("up", 2), ("decoder", 2), ("single", 3))
# inside a block: resnets and attentions alternate by index; the samplers come last
_INNER = (("resnets", 0), ("attentions", 1), ("downsamplers", 9), ("upsamplers", 9))


def _list_phase(name: str) -> int:
    last = name.rsplit(".", 1)[-1]
    found = [phase for word, phase in _PHASES if last.startswith(word) or f".{word}" in name]
    return found[0] if found else 1


def _inner_rank(name: str) -> int:
    return next((rank for word, rank in _INNER if name == word), 2)


def _key(parts: list[str], top: bool) -> tuple[tuple[object, ...], ...]:
    numbered = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    if numbered is None:
        text = ".".join(parts)
        if _OUTPUT.search(text):
            return ((2, 0, natural_key(text)),)
        return ((0 if _INPUT.search(text) else 1, 1, natural_key(text)),)
    owner, index = ".".join(parts[:numbered]), int(parts[numbered])
    if top:  # lists run one after another: down_blocks, mid_block, up_blocks
        head: tuple[object, ...] = (1, _list_phase(owner), natural_key(owner), index)
    else:  # inside a block: resnets.0, attentions.0, resnets.1, ..., downsamplers.0
        rank = _inner_rank(owner)
        head = (1, rank // 9, index, rank, natural_key(owner))
    rest = parts[numbered + 1 :]
    return (head, *(_key(rest, False) if rest else ()))


def name_key(block: str) -> tuple[tuple[object, ...], ...]:
    """Sort key of a block (a dotted prefix) in the forward order guessed from names."""
    return _key(block.split("."), True)


def forward_order(units: Sequence[Unit], modules: Sequence[str] | None = None) -> tuple[Unit, ...]:
    """``units`` in forward order: by ``modules`` (the class's modules, in order) when
    given, else by their names. A unit sits where its first block runs."""
    if modules:
        index = {name: i for i, name in enumerate(modules)}
        last = len(index)

        def place(prefix: str) -> tuple[int, tuple[tuple[object, ...], ...]]:
            return (index.get(prefix, last), name_key(prefix))

        return tuple(sorted(units, key=lambda u: min(place(p) for p in u.prefixes)))
    return tuple(sorted(units, key=lambda u: min(name_key(p) for p in u.prefixes)))
