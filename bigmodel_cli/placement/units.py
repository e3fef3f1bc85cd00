"""The blocks of a component for block-level placement, and which of them must share a device.

A block is a dotted prefix whose forward can run on a device of its own: the top-level
numbered blocks (``down_blocks.1``, ``model.layers.12``, ``transformer_blocks.7``) and
the modules around them (``conv_in``, ``model.embed_tokens``, ``lm_head``), as
:func:`bigmodel_cli.checkpoint.blocks.group_blocks` finds them. On top of that:

- ``--no-split PREFIX`` merges every block under PREFIX into one (``--no-split mid_block``
  keeps a diffusers mid block's resnets and attentions together; by default they are
  separate blocks, as accelerate treats them);
- tied tensors share a device: transformers checkpoints saved with
  ``tie_word_embeddings`` hold no ``lm_head.weight``, yet ``from_pretrained(device_map=...)``
  needs ``lm_head`` on the device of the embedding it shares; T5's ``encoder.embed_tokens``
  is ``shared``. Such blocks form one :class:`Unit`;
- a block larger than ``limit`` (the widest GPU) fits no GPU whole, so it is split into
  the blocks inside it (``down_blocks.2`` into ``down_blocks.2.attentions.0``, ...), as
  accelerate descends into a module that does not fit, until each fits or is one module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from bigmodel_cli.checkpoint.blocks import group_blocks, natural_key
from bigmodel_cli.placement.items import Unit

_HEAD_ARCHITECTURE = re.compile(r"(ForCausalLM|LMHeadModel|ForConditionalGeneration)$")
# transformers' `_tied_weights_keys` targets for the output embedding, most common first
_INPUT_EMBEDDINGS = (
    "model.embed_tokens.weight",
    "model.language_model.embed_tokens.weight",
    "transformer.wte.weight",
    "model.decoder.embed_tokens.weight",
    "model.text_model.embed_tokens.weight",
    "backbone.embeddings.weight",
    "transformer.word_embeddings.weight",
    "model.shared.weight",
    "shared.weight",
)


def coarsen(block: str, no_split: Sequence[str]) -> str:
    """A block under a --no-split PREFIX -> PREFIX (``mid_block.resnets.0`` -> ``mid_block``)."""
    covering = [p for p in no_split if block == p or block.startswith(p + ".")]
    return min(covering, key=len) if covering else block


def tied_names(names: Sequence[str], config: Mapping[str, object] | None) -> list[tuple[str, str]]:
    """``(tensor, tensor it shares storage with)`` pairs; the first may be absent from the
    checkpoint (saved once, as transformers does for tied weights)."""
    present = set(names)
    pairs: list[tuple[str, str]] = []
    embedding = next((n for n in _INPUT_EMBEDDINGS if n in present), None)
    if embedding is not None and _ties_word_embeddings(config, "lm_head.weight" in present):
        pairs.append(("lm_head.weight", embedding))
    if "shared.weight" in present:  # T5-style encoders/decoders embed with `shared`
        for side in ("encoder", "decoder"):
            if any(n.startswith(side + ".") for n in present):
                pairs.append((f"{side}.embed_tokens.weight", "shared.weight"))
    return pairs


def _ties_word_embeddings(config: Mapping[str, object] | None, head_saved: bool) -> bool:
    if config is None or not config.get("tie_word_embeddings", True):
        return False
    if head_saved:
        return True
    architectures = config.get("architectures")
    names = architectures if isinstance(architectures, list) else []
    return any(isinstance(a, str) and _HEAD_ARCHITECTURE.search(a) for a in names)


def build_units(
    tensors: Sequence[tuple[str, int]],
    config: Mapping[str, object] | None = None,
    no_split: Sequence[str] = (),
    limit: int | None = None,
    joined: Sequence[tuple[str, str]] = (),
) -> tuple[Unit, ...]:
    """Group ``(tensor name, bytes)`` into units in natural block order; blocks larger than
    ``limit`` are split into the blocks inside them. ``joined``: pairs of tensors the
    loading library needs on one device (:mod:`.built`: fused, tied, not to be split)."""
    ties = tied_names([n for n, _ in tensors], config) + list(joined)
    sizes = dict(tensors)
    names = list(sizes) + [tied for tied, _ in ties if tied not in sizes]
    blocks = {n: coarsen(b, no_split) for n, b in group_blocks(names).items()}
    if limit is not None:
        blocks = refine(blocks, sizes, limit, no_split)
    leader = {b: b for b in blocks.values()}
    for tied, source in ties:
        join_leaders(leader, blocks[tied], blocks[source])
    members: dict[str, list[str]] = {}
    totals: dict[str, int] = {}
    modules: dict[str, dict[str, int]] = {}  # root -> module -> bytes of its own tensors
    for name, block in blocks.items():
        root = find_leader(leader, block)
        if block not in members.setdefault(root, []):
            members[root].append(block)
        totals[root] = totals.get(root, 0) + sizes.get(name, 0)
        module = modules.setdefault(root, {})
        owner = name.rpartition(".")[0]
        module[owner] = module.get(owner, 0) + sizes.get(name, 0)
    units = [
        Unit(
            tuple(sorted(group, key=natural_key)),
            totals[root],
            largest_module=max(modules[root].values(), default=0),
        )
        for root, group in members.items()
    ]
    return tuple(sorted(units, key=lambda u: natural_key(u.prefixes[0])))


def refine(
    blocks: Mapping[str, str], sizes: Mapping[str, int], limit: int, no_split: Sequence[str]
) -> dict[str, str]:
    """Tensor -> block, with every block over ``limit`` split into the blocks inside it
    (repeatedly), unless --no-split names it or it holds tensors of its own."""
    found = dict(blocks)
    while True:
        totals: dict[str, int] = {}
        members: dict[str, list[str]] = {}
        for name, block in found.items():
            totals[block] = totals.get(block, 0) + sizes.get(name, 0)
            members.setdefault(block, []).append(name)
        changed = False
        for block, total in totals.items():
            inner = [n[len(block) + 1 :] for n in members[block]]
            if total <= limit or any(block == p or block.startswith(p + ".") for p in no_split):
                continue
            if any("." not in rest for rest in inner):
                continue  # a module with tensors of its own: not split further
            for name, sub in zip(members[block], group_blocks(inner).values(), strict=True):
                found[name] = f"{block}.{sub}"
            changed = True
        if not changed:
            return found


def find_leader(leader: dict[str, str], key: str) -> str:
    """The representative of ``key``'s group (union-find; a new key is its own)."""
    leader.setdefault(key, key)
    while leader[key] != key:
        key = leader[key]
    return key


def join_leaders(leader: dict[str, str], a: str, b: str) -> None:
    """Put ``a``'s and ``b``'s groups together (the smaller name leads)."""
    ra, rb = find_leader(leader, a), find_leader(leader, b)
    if ra != rb:
        leader[max(ra, rb)] = min(ra, rb)
