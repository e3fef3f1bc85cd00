"""Which entries of a training checkpoint are the model's weights, and under what names (pure).

Training code saves more than the model: ``{"model": ..., "optim": ..., "lr_scheduler": ...,
"rng": ...}``, and the model's names carry the wrappers it ran under (``_orig_mod.`` from
``torch.compile``, ``_fsdp_wrapped_module.`` from FSDP1, ``_checkpoint_wrapped_module.`` from
activation checkpointing, a leading ``module.`` from DDP). :func:`select` keeps the model's
tensors (and the optimizer's with ``include_optimizer``), names them as the model names them,
and says in notes what it left out and what it stripped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bigmodel_cli.errors import BigmodelError

MODEL_KEYS = frozenset(
    {"model", "models", "module", "model_state", "model_state_dict", "state_dict"}
)
OPTIMIZER_KEYS = frozenset(
    {"optim", "optimizer", "optimizers", "optim_state", "optimizer_state",
     "optim_state_dict", "optimizer_state_dict", "opt", "state", "param_groups"}
)  # fmt: skip
WRAPPERS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_forward_module")
LEADING_WRAPPER = "module"  # DDP's: only when every model name starts with it


@dataclass(frozen=True)
class Stored:
    """A state-dict entry as the reader found it: its nested keys, and whether it holds a
    tensor (pickled objects never become weights)."""

    path: tuple[str, ...]
    is_tensor: bool


@dataclass(frozen=True)
class Selection:
    """The chosen entries (indexes into the input) with their output names, and notes."""

    chosen: tuple[tuple[int, str], ...]
    notes: tuple[str, ...]


def kind_of(path: Sequence[str], nested_model: bool) -> str:
    """``model``, ``optimizer`` or ``other`` for an entry with nested keys ``path``;
    ``nested_model``: the checkpoint holds the model under one of :data:`MODEL_KEYS`."""
    top = path[0]
    if top in MODEL_KEYS and len(path) > 1:
        return "model"
    if top in OPTIMIZER_KEYS:
        return "optimizer"
    return "other" if nested_model else "model"


def _strip(name: str) -> tuple[str, list[str]]:
    parts = name.split(".")
    kept = [p for p in parts if p not in WRAPPERS]
    return ".".join(kept), [p for p in parts if p in WRAPPERS]


def select(entries: Sequence[Stored], include_optimizer: bool, where: str) -> Selection:
    """The model's tensors (and with ``include_optimizer`` the optimizer's), named."""
    nested = any(e.path[0] in MODEL_KEYS and len(e.path) > 1 for e in entries)
    kinds = [kind_of(e.path, nested) if e.is_tensor else "other" for e in entries]
    wanted = {"model", "optimizer"} if include_optimizer else {"model"}
    stripped: Counter[str] = Counter()
    names: list[tuple[int, str, str]] = []
    for i, (e, kind) in enumerate(zip(entries, kinds, strict=True)):
        if kind not in wanted:
            continue
        full = ".".join(e.path[1:] if kind == "model" and nested else e.path)
        name, gone = _strip(full)
        stripped.update(gone)
        names.append((i, name, kind))
    model = [n for _, n, k in names if k == "model"]
    lead = LEADING_WRAPPER + "."
    if model and all(n.startswith(lead) for n in model):
        names = [(i, n.removeprefix(lead) if k == "model" else n, k) for i, n, k in names]
        stripped[LEADING_WRAPPER] += len(model)
    seen: dict[str, int] = {}
    for i, name, _ in names:
        if name in seen:
            raise BigmodelError(
                f"entries {entries[seen[name]].path} and {entries[i].path} both become {name!r}",
                where,
            )
        seen[name] = i
    notes = _notes(kinds, nested, stripped, include_optimizer, entries)
    return Selection(tuple((i, n) for i, n, _ in names), notes)


def _notes(
    kinds: list[str], nested: bool, stripped: Counter[str], include_optimizer: bool,
    entries: Sequence[Stored],
) -> tuple[str, ...]:  # fmt: skip
    notes = []
    if nested:
        tops = sorted({e.path[0] for e, k in zip(entries, kinds, strict=True) if k == "model"})
        notes.append(f"the model's entries are those under {', '.join(tops)}")
    for wrapper, count in sorted(stripped.items()):
        notes.append(f"stripped the wrapper {wrapper!r} from {count} names")
    counts = Counter(kinds)
    if counts["optimizer"] and not include_optimizer:
        notes.append(
            f"left out {counts['optimizer']} optimizer entries (--include-optimizer keeps them)"
        )
    if counts["other"]:
        notes.append(f"left out {counts['other']} other entries (objects, RNG and loop state)")
    return tuple(notes)
