"""Contiguous spans of blocks over torchrun ranks, pipeline parallelism (the ``pipeline``
strategy's function, :func:`span_ranks`; pure, the planner's ``Bin`` is a rank).

A component's blocks are put in the order a forward pass meets them (:func:`forward_units`):
the input side first (embeddings, ``conv_in``), then the numbered blocks in natural order
(``model.layers.0`` ... ``model.layers.31``), then the rest (final norm, head). The input
side travels with the first span and the rest with the last. A head tied to the input
embedding and saved once (transformers' ``tie_word_embeddings``) is a block of the last
span that holds the embedding's bytes again: the plan lists that read as a duplicate.

:func:`cut` splits units into exactly ``k`` contiguous spans with the largest span as
small as it can be (a bottleneck search over greedy fills). :func:`span_ranks` places
components: whole components to ranks first (largest first, to the rank with the most
room), and the largest components that fit no rank are split into spans on ranks of
their own; one component alone is always cut into one span per rank.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from bigmodel_cli.checkpoint.blocks import group_blocks, natural_key
from bigmodel_cli.devices import DeviceKey
from bigmodel_cli.placement.items import SPLIT, Assignment, Bin, Part, Placement, Unit
from bigmodel_cli.placement.units import coarsen, tied_names

_NUMBERED = re.compile(r"\.\d+$")
# a block on the input side of a forward pass: embeddings and input convolutions
_INPUT_SIDE = re.compile(r"(embed|^wte$|^wpe$|^conv_in$|^shared$|^time_proj$|^patchify)")


def absent_ties(names: Sequence[str], config: Mapping[str, object] | None) -> dict[str, str]:
    """Tensors a model ties to another one that the checkpoint saves only once:
    ``{"lm_head.weight": "model.embed_tokens.weight"}`` (absent name -> saved source)."""
    present = set(names)
    return {t: s for t, s in tied_names(names, config) if t not in present and s in present}


def _is_input_side(block: str) -> bool:
    return any(_INPUT_SIDE.search(part) for part in block.split("."))


def forward_units(
    tensors: Sequence[tuple[str, int]],
    config: Mapping[str, object] | None = None,
    no_split: Sequence[str] = (),
) -> tuple[Unit, ...]:
    """``(tensor name, bytes)`` as units in forward order: the input-side blocks as one unit,
    each numbered block (``--no-split`` prefixes kept whole), then the other blocks as one
    unit. A tied tensor saved once counts again in the block that uses it."""
    sizes = dict(tensors)
    ties = absent_ties(list(sizes), config)
    for tied, source in ties.items():
        sizes[tied] = sizes[source]
    blocks: dict[str, int] = {}
    for name, block in group_blocks(list(sizes)).items():
        key = coarsen(block, no_split)
        blocks[key] = blocks.get(key, 0) + sizes[name]
    ordered = sorted(blocks, key=natural_key)
    trunk = [b for b in ordered if _NUMBERED.search(b)]
    if not trunk:
        return tuple(Unit((b,), blocks[b]) for b in ordered)
    first = [b for b in ordered if b not in trunk and _is_input_side(b)]
    last = [b for b in ordered if b not in trunk and b not in first]
    groups = ([first] if first else []) + [[b] for b in trunk] + ([last] if last else [])
    return tuple(Unit(tuple(g), sum(blocks[b] for b in g)) for g in groups)


# ---------------------------------------------------------------- cutting into spans


def _greedy(sizes: Sequence[int], limit: int) -> list[int]:
    """Start indexes of spans filled left to right with at most ``limit`` bytes each."""
    starts, filled = [0], 0
    for i, size in enumerate(sizes):
        if filled + size > limit and i > starts[-1]:
            starts.append(i)
            filled = 0
        filled += size
    return starts


def cut(sizes: Sequence[int], k: int) -> list[range]:
    """``sizes`` in ``k`` contiguous non-empty runs whose largest sum is the smallest
    possible (``k`` at most ``len(sizes)``)."""
    if not 1 <= k <= len(sizes):
        raise ValueError(f"cannot cut {len(sizes)} units into {k} spans")
    low, high = max(sizes), sum(sizes)
    while low < high:  # the least bottleneck that k greedy spans reach
        middle = (low + high) // 2
        if len(_greedy(sizes, middle)) <= k:
            high = middle
        else:
            low = middle + 1
    starts = _greedy(sizes, low)
    while len(starts) < k:  # more spans than needed: split the fullest (never raises the max)
        bounds = list(zip(starts, [*starts[1:], len(sizes)], strict=True))
        wide = [(sum(sizes[a:b]), a, b) for a, b in bounds if b - a > 1]
        _, a, b = max(wide)
        starts.append(_balanced_point(sizes, a, b))
        starts.sort()
    ends = [*starts[1:], len(sizes)]
    return [range(a, b) for a, b in zip(starts, ends, strict=True)]


def _balanced_point(sizes: Sequence[int], a: int, b: int) -> int:
    """Where to split ``sizes[a:b]`` in two so that the larger half is smallest."""
    return min(range(a + 1, b), key=lambda i: max(sum(sizes[a:i]), sum(sizes[i:b])))


def spans_needed(sizes: Sequence[int], capacity: int | None) -> int | None:
    """The fewest contiguous spans of at most ``capacity`` bytes; None when a unit alone
    is larger."""
    if capacity is None:
        return 1
    if any(s > capacity for s in sizes):
        return None
    return len(_greedy(sizes, capacity))


# ---------------------------------------------------------------- the strategy


def span_ranks(parts: Sequence[Part], bins: Sequence[Bin]) -> Assignment:
    """Components over ranks (``bins``, in rank order, all with the same capacity)."""
    if len(parts) == 1:
        return Assignment((_split(parts[0], [b.key for b in bins]),))
    order = sorted(parts, key=lambda p: p.nbytes, reverse=True)
    capacity = bins[0].capacity if bins else None
    for n_split in range(len(order) + 1):
        found = _try(order[n_split:], order[:n_split], bins, capacity, parts)
        if found is not None:
            return found
    return _chained(parts, bins)


def _try(
    whole: Sequence[Part],
    split: Sequence[Part],
    bins: Sequence[Bin],
    capacity: int | None,
    parts: Sequence[Part],
) -> Assignment | None:
    """``whole`` packed onto ranks (all of them when nothing is split, else the fewest that
    hold them), ``split`` cut into spans on the ranks left; None when that does not fit."""
    keys = [b.key for b in bins]
    tries = [len(keys)] if not split else range(1 if whole else 0, len(keys) + 1)
    for used in tries:
        packed = _pack(whole, keys[:used], capacity)
        if packed is not None:
            break
    else:
        return None
    spans = _share(split, len(keys) - used, capacity)
    if spans is None:
        return None
    placed = {name: Placement(name, key) for name, key in packed.items()}
    free = keys[used:]
    for part in split:
        count = spans[part.name]
        placed[part.name] = _split(part, free[:count])
        free = free[count:]
    return Assignment(tuple(placed[p.name] for p in parts))


def _pack(
    parts: Sequence[Part], keys: Sequence[DeviceKey], capacity: int | None
) -> dict[str, DeviceKey] | None:
    """Largest first, each to the rank with the most room (the lowest of equals); None
    when one does not fit."""
    filled = dict.fromkeys(keys, 0)
    placed: dict[str, DeviceKey] = {}
    for part in parts:
        if not keys:
            return None
        key = min(keys, key=lambda k: filled[k])
        if capacity is not None and filled[key] + part.nbytes > capacity:
            return None
        filled[key] += part.nbytes
        placed[part.name] = key
    return placed


def _share(split: Sequence[Part], ranks: int, capacity: int | None) -> dict[str, int] | None:
    """Ranks per split component: at least the spans each needs, the rest to whichever has
    the most bytes per span; None when there are too few ranks."""
    counts: dict[str, int] = {}
    for part in split:
        need = spans_needed([u.nbytes for u in part.units], capacity)
        if need is None:
            return None
        counts[part.name] = need
    if sum(counts.values()) > ranks:
        return None
    units = {p.name: len(p.units) for p in split}
    sizes = {p.name: p.nbytes for p in split}
    for _ in range(ranks - sum(counts.values())):
        open_ = [n for n in counts if counts[n] < units[n]]
        if not open_:
            break
        widest = max(open_, key=lambda n: sizes[n] / counts[n])
        counts[widest] += 1
    return counts


def _split(part: Part, keys: Sequence[DeviceKey]) -> Placement:
    """``part`` cut into one span per key (fewer when it has fewer units)."""
    units = part.units or (Unit((), part.nbytes),)
    runs = cut([u.nbytes for u in units], min(len(keys), len(units)))
    placed = tuple((units[i], keys[s]) for s, run in enumerate(runs) for i in run)
    if len(runs) == 1 and not part.units:
        return Placement(part.name, keys[0])
    return Placement(part.name, SPLIT, placed)


def _chained(parts: Sequence[Part], bins: Sequence[Bin]) -> Assignment:
    """Nothing fits: every unit of every component in one chain, cut over all ranks with
    the smallest largest span (a plan that does not fit, but the best balanced one)."""
    chain = [(p, u) for p in parts for u in (p.units or (Unit((), p.nbytes),))]
    keys = [b.key for b in bins]
    runs = cut([u.nbytes for _, u in chain], min(len(keys), len(chain)))
    where = {i: keys[s] for s, run in enumerate(runs) for i in run}
    placements = []
    for p in parts:
        mine = [(u, where[i]) for i, (q, u) in enumerate(chain) if q is p]
        placements.append(Placement(p.name, SPLIT, tuple(mine)))
    return Assignment(tuple(placements))
