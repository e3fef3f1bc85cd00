"""Stored names and built names: the one mapping from a checkpoint's tensor names to the
names of the model its library builds.

transformers 5 renames checkpoints as it loads them: GPT-NeoX stores ``embed_out.weight``
and builds ``lm_head``; Llava stores ``language_model.model.layers.0...`` and builds
``model.language_model.layers.0...``; Mixtral stores one tensor per expert and builds one
fused tensor per layer (``mlp.experts.gate_up_proj``). A plan's blocks and sizes come from
the stored names (the headers); the device map a library is given must be in its built
names. The installed library itself is asked, in the one module that builds models
(:func:`bigmodel_cli.runtime.library.library_names`: its conversion mapping, the class's
``base_model_prefix``, ``_no_split_modules`` and tied weights, read from the model built on
the meta device): there is no table of architectures here. :func:`translate_map`
turns a device map over stored prefixes into one over built prefixes.

diffusers builds the stored names of a sharded checkpoint; its one renaming (deprecated
attention blocks of single-file checkpoints, ``query`` -> ``to_q``) stays inside a
module, so a map over blocks is the same in both names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bigmodel_cli.checkpoint.blocks import natural_key
from bigmodel_cli.devices import DeviceKey
from bigmodel_cli.errors import BigmodelError

NOT_IMPORTABLE = "transformers was not importable when planning: the map is in stored names"


@dataclass(frozen=True)
class BuiltNames:
    """What a library builds from a checkpoint: each stored tensor's built name (None:
    the model takes no such tensor), every name of the built model's state dict, the groups
    of tied parameters, the modules the library refuses to split, and the rules it applied
    (``key_mapping``: source pattern -> target). ``note`` says why there is no translation
    (the names are then taken as they are stored)."""

    library: str | None = None  # "transformers 5.25.0"
    class_name: str | None = None
    built: Mapping[str, str | None] = field(default_factory=dict)
    params: tuple[str, ...] = ()
    tied: tuple[tuple[str, ...], ...] = ()
    no_split: tuple[str, ...] = ()
    key_mapping: Mapping[str, str] = field(default_factory=dict)
    note: str | None = None
    repaired: str | None = None  # why a kept answer was passed over and the library asked

    @property
    def translated(self) -> bool:
        return self.library is not None and self.note is None

    def name(self, stored: str) -> str | None:
        """The built name of ``stored`` (itself when nothing was translated)."""
        return self.built.get(stored, stored) if self.translated else stored

    def renamed(self) -> dict[str, str]:
        """Stored -> built, for the names that differ."""
        return {s: b for s, b in self.built.items() if b is not None and b != s}

    def record(self) -> dict[str, Any]:
        """What a plan file says about a component's names."""
        if not self.translated:
            return {"note": self.note}
        fused = len([b for b in self.built.values() if b]) - len(
            {b for b in self.built.values() if b}
        )
        found = {
            "library": self.library,
            "class": self.class_name,
            "key_mapping": dict(self.key_mapping),
            "renamed": len(self.renamed()),
            "fused": fused,
        }
        return found if self.repaired is None else found | {"repaired": self.repaired}


# ---------------------------------------------------------------- maps


def renamed_by_patterns(
    mapping: Mapping[str, str], prefix: str, stored: Sequence[str], meta: Mapping[str, Any]
) -> dict[str, str | None]:
    """Each stored name as transformers 4 renames it: the class's key mapping (regex ->
    target, the first that matches) and its ``base_model_prefix`` added or dropped; None
    where the built model (``meta``: its state dict's names) has no such tensor."""
    built: dict[str, str | None] = {}
    for name in stored:
        new = name
        for pattern, target in mapping.items():
            new, count = re.subn(pattern, target, name)
            if count:
                break
        if new not in meta and f"{prefix}.{new}" in meta:
            new = f"{prefix}.{new}"
        elif new.startswith(prefix + ".") and new[len(prefix) + 1 :] in meta:
            new = new[len(prefix) + 1 :]
        built[name] = new if new in meta else None
    return built


def module_device(name: str, module_map: Mapping[str, DeviceKey]) -> DeviceKey | None:
    """accelerate's rule: the device of the longest dotted prefix of ``name`` in the map."""
    parts = name.split(".")
    for i in range(len(parts), -1, -1):
        prefix = ".".join(parts[:i])
        if prefix in module_map:
            return module_map[prefix]
    return None


def translate_map(stored_map: Mapping[str, DeviceKey], names: BuiltNames) -> dict[str, DeviceKey]:
    """A device map over stored prefixes as one over built prefixes: every built tensor
    goes where its stored tensors go (a fused tensor's pieces must agree), a tied or
    missing one beside its partner or neighbour; then the fewest prefixes that say it."""
    if not names.translated:
        return dict(stored_map)
    where: dict[str, DeviceKey | None] = dict.fromkeys(names.params)
    for stored, built in names.built.items():
        if built is None:
            continue
        device = module_device(stored, stored_map)
        if device is None:
            continue
        if where.get(built) not in (None, device):
            raise BigmodelError(
                f"the plan puts parts of {built} (which {names.library} builds as one tensor) "
                "on different devices; re-run bigmodel plan with the library installed",
                None,
                stored,
            )
        where[built] = device
    for group in names.tied:
        known = next((where[n] for n in group if where.get(n) is not None), None)
        for name in group:
            where[name] = where[name] if where.get(name) is not None else known
    return _fewest_prefixes(_filled(where, stored_map))


def _filled(
    where: Mapping[str, DeviceKey | None], stored_map: Mapping[str, DeviceKey]
) -> dict[str, DeviceKey]:
    """Names without a device take their previous neighbour's (the next one's at the start)."""
    names = list(where)
    first = next((d for d in where.values() if d is not None), None)
    fallback = first if first is not None else next(iter(stored_map.values()), "cpu")
    found: dict[str, DeviceKey] = {}
    last: DeviceKey = fallback
    for name in names:
        device = where[name]
        last = device if device is not None else last
        found[name] = last
    return found


def _fewest_prefixes(where: Mapping[str, DeviceKey]) -> dict[str, DeviceKey]:
    """The shortest dotted prefixes under which every name has one device."""
    result: dict[str, DeviceKey] = {}

    def visit(prefix: str, names: list[str]) -> None:
        devices = {where[n] for n in names}
        if len(devices) == 1:
            result[prefix] = devices.pop()
            return
        children: dict[str, list[str]] = {}
        for name in names:
            rest = name[len(prefix) + 1 :] if prefix else name
            head = rest.split(".", 1)[0]
            children.setdefault(f"{prefix}.{head}" if prefix else head, []).append(name)
        for child, inner in children.items():
            visit(child, inner)

    visit("", sorted(where, key=natural_key))
    return result
