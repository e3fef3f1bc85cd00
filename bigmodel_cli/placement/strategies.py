"""The registry of placement strategies: one :class:`Strategy` record per name.

The CLI's ``--strategy`` choice and help, the plan file reader's allowed names and the
renderer's wording are all derived from :data:`STRATEGIES`. Adding a strategy is one
pure function from parts and bins to an :class:`~bigmodel_cli.placement.items.Assignment`
in a module of ``placement/`` and one entry here. The registry names that function; it is
imported when a plan is made, so that reading a plan imports no strategy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bigmodel_cli.placement.items import Assignment, Bin, Part

Place = Callable[[Sequence["Part"], Sequence["Bin"]], "Assignment"]


@dataclass(frozen=True)
class Strategy:
    """A placement strategy and what the rest of the program needs to know of it."""

    name: str
    function: str  # "module:function" in bigmodel_cli.placement: the pure placement
    help: str
    splits_blocks: bool  # needs the components' blocks (units) to place them
    reports_peak: bool  # components move to the execution GPU in turn: a peak, not a sum
    over_ranks: bool = False  # places on torchrun ranks (nodes/procs_per_node), not devices
    # the default for a single model (True), for a pipeline (False), or never (None)
    default_for_model: bool | None = None
    default_reason: str | None = None  # why, for people (the plan and --help say it)

    @property
    def place(self) -> Place:
        module, name = self.function.split(":")
        found: Place = getattr(importlib.import_module(f"bigmodel_cli.placement.{module}"), name)
        return found


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "balanced",
            "balanced:balanced",
            "whole components, as diffusers' device_map='balanced'",
            splits_blocks=False,
            reports_peak=False,
            default_for_model=False,
            default_reason="the default for a diffusers pipeline, as diffusers' own "
            "device_map='balanced'",
        ),
        Strategy(
            "auto",
            "auto:auto",
            "whole components where they fit; split at block level what fits no GPU, as "
            "transformers' device_map='auto'",
            splits_blocks=True,
            reports_peak=False,
            default_for_model=True,
            default_reason="the default for a single model, as transformers' device_map='auto'",
        ),
        Strategy(
            "sequential",
            "sequential:sequential",
            "model CPU offload: all on cpu, each component moved to GPU 0 in turn",
            splits_blocks=False,
            reports_peak=True,
        ),
        Strategy(
            "pipeline",
            "spans:span_ranks",
            "contiguous spans of blocks over torchrun ranks",
            splits_blocks=True,
            reports_peak=False,
            over_ranks=True,
            default_reason="the default over torchrun ranks",
        ),
    )
}
DEFAULT_STRATEGY = next(iter(STRATEGIES))  # of a plan file that names none (an early plan)
RANKS_STRATEGY = next(s.name for s in STRATEGIES.values() if s.over_ranks)


SINGLE_MODEL_KINDS = ("model", "file")  # a checkpoint's kinds other than a pipeline


def default_strategy(kind: str) -> Strategy:
    """The strategy a checkpoint of ``kind`` (a pipeline, a model or a file) is planned
    with when none is asked for: its library's convention."""
    single = kind in SINGLE_MODEL_KINDS
    return next(s for s in STRATEGIES.values() if s.default_for_model is single)


def defaults_help() -> str:
    """For --help: which strategy is the default, and when."""
    found = [f"{s.name} ({s.default_reason})" for s in STRATEGIES.values() if s.default_reason]
    return "; ".join(found)
