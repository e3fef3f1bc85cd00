"""Plans in the names the libraries build (:mod:`bigmodel_cli.checkpoint.built_names`).

Blocks, sizes and splits come from the stored names (the headers). A component the
strategy splits is then asked of its library: which stored tensors it fuses into one
(Mixtral's per-expert tensors), which modules it refuses to split (``_no_split_modules``)
and which parameters it ties; those become units that are never cut, the component is
placed again, and its map is written in the built names (``component_maps``) beside the
stored ones (``stored_maps``) and the key mapping applied (``names``). A weights-only plan
imports transformers only for a component it splits; where transformers is not importable
the record says so and :func:`library_map` translates when the model is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from bigmodel_cli.checkpoint import Checkpoint, Component
from bigmodel_cli.checkpoint.built_names import (
    NOT_IMPORTABLE,
    BuiltNames,
    module_device,
    translate_map,
)
from bigmodel_cli.devices import DeviceKey
from bigmodel_cli.placement.items import SPLIT, Assignment, Bin, Part
from bigmodel_cli.placement.plan import Plan
from bigmodel_cli.placement.units import find_leader, join_leaders
from bigmodel_cli.runtime.library import library_names, library_version

Pairs = Sequence[tuple[str, str]]
PartOf = Callable[[Component, Pairs], Part]
Place = Callable[[Sequence[Part], Sequence[Bin]], Assignment]


def names_of(c: Component) -> BuiltNames:
    """What ``c``'s library builds from its stored names."""
    return library_names(c.folder, [t.name for t in c.tensors], c.library)


def joined_pairs(names: BuiltNames) -> list[tuple[str, str]]:
    """Pairs of stored tensors that must share a device: the pieces of one fused tensor,
    the tensors of one built module (accelerate places modules, not tensors) or of a module
    the library does not split, and tied tensors, one absent from the checkpoint included
    (BERT's tied decoder joins its bias to the embedding)."""
    if not names.translated:
        return []
    leader: dict[str, str] = {}
    outermost = set(names.no_split)
    for param in names.params:
        owner = param.rpartition(".")[0]
        join_leaders(leader, param, "module:" + (_outermost(param, outermost) or owner))
    for group in names.tied:
        for other in group[1:]:
            join_leaders(leader, group[0], other)
    classes: dict[str, list[str]] = {}
    for stored, built in names.built.items():
        if built is not None:
            classes.setdefault(find_leader(leader, built), []).append(stored)
    return [(members[0], other) for members in classes.values() for other in members[1:]]


def _outermost(name: str, modules: set[str]) -> str | None:
    parts = name.split(".")
    return next((p for i in range(1, len(parts)) if (p := ".".join(parts[:i])) in modules), None)


def place_in_built_names(
    ckpt: Checkpoint, part_of: PartOf, place: Place, bins: Sequence[Bin]
) -> tuple[list[Part], Assignment, dict[str, BuiltNames]]:
    """Place the parts; a component that ends up split is placed again with its library's
    units, until every split component has them."""
    names: dict[str, BuiltNames] = {}
    while True:
        parts = [
            part_of(c, joined_pairs(names[c.name]) if c.name in names else [])
            for c in ckpt.components
        ]
        assignment = place(parts, bins)
        split = [
            c
            for c, p in zip(ckpt.components, assignment.placements, strict=True)
            if p.device == SPLIT and c.name not in names
        ]
        if not split:
            return parts, assignment, names
        for c in split:
            names[c.name] = names_of(c)


def with_built_names(plan: Plan, names: dict[str, BuiltNames]) -> Plan:
    """``plan`` with the maps of its split components in built names, the stored maps
    beside them where they differ, and per component the key mapping (or the note)."""
    built_maps = dict(plan.component_maps)
    stored_maps: dict[str, dict[str, DeviceKey]] = {}
    for name, found in names.items():
        if name not in plan.component_maps:
            continue  # whole: {"": device} in any names
        stored = dict(plan.component_maps[name])
        built_maps[name] = translate_map(stored, found)  # tied and missing tensors too
        if found.renamed():
            stored_maps[name] = stored
    notes = tuple(
        f"{name}: {n.note}; bigmodel translates them when it builds the model"
        for name, n in names.items()
        if n.note == NOT_IMPORTABLE
    )
    return replace(
        plan,
        component_maps=built_maps,
        stored_maps=stored_maps,
        names={name: n.record() for name, n in names.items()},
        notes=plan.notes + notes,
    )


def library_map(plan: Plan, c: Component) -> dict[str, DeviceKey]:
    """``c``'s device map for its library's ``from_pretrained``: the plan's own when it was
    translated by the library version installed here, else translated now."""
    if plan.device_map[c.name] != SPLIT:
        return plan.module_map(c.name)
    record = plan.names.get(c.name)
    made_by = (record or {}).get("library")
    if isinstance(made_by, str) and made_by == library_version(made_by.split(" ")[0]):
        return plan.module_map(c.name)
    stored = plan.stored_map(c.name)
    if record is None and not all(module_device(t.name, stored) is not None for t in c.tensors):
        return stored  # a map written by hand in the built names
    names = names_of(c)
    if record is None and not names.renamed():
        return stored  # an older plan, in names the library builds as they are
    return translate_map(stored, names)
