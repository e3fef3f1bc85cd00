"""Blocks: the top-level parts of a model, grouped from dotted tensor names.

``down_blocks.1.resnets.0.conv1.weight`` belongs to ``down_blocks.1``; ``conv_in.weight``
to ``conv_in``; ``model.layers.12.mlp.up_proj.weight`` to ``model.layers.12``. ``inspect``
reports sizes per block and ``plan --strategy auto`` never splits inside one.
"""

from __future__ import annotations

import re

_NUMERIC = re.compile(r"^\d+$")


def block_of(name: str, containers: frozenset[str]) -> str:
    """The block a tensor belongs to: the dotted prefix through its first numeric part
    (``down_blocks.1``, ``model.layers.12``); otherwise the shortest prefix that is not a
    wrapper of numbered blocks (``model.embed_tokens``, ``conv_in``, ``lm_head``)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if _NUMERIC.match(part):
            return ".".join(parts[: i + 1])
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if prefix not in containers:
            return prefix
    return name


def wrappers(names: list[str]) -> frozenset[str]:
    """Prefixes that hold numbered blocks below them (``model`` for ``model.layers.0.x``)."""
    found: set[str] = set()
    for name in names:
        parts = name.split(".")
        for i, part in enumerate(parts[:-1]):
            if _NUMERIC.match(part):
                found.update(".".join(parts[:j]) for j in range(1, i))
                break
    return frozenset(found)


def group_blocks(names: list[str]) -> dict[str, str]:
    """Tensor name -> block name, for every name."""
    containers = wrappers(names)
    return {n: block_of(n, containers) for n in names}


_NUMBER = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key comparing numbers as numbers: ``layers.2`` before ``layers.10``."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in _NUMBER.split(name)
        if part
    )
