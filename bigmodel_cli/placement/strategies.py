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
    over_ranks: bool = False  # places on torchrun ranks (--nodes/--procs-per-node), not devices

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
            "whole components, as diffusers' device_map='balanced' (the default)",
            splits_blocks=False,
            reports_peak=False,
        ),
        Strategy(
            "auto",
            "auto:auto",
            "whole components where they fit; split at block level what fits no GPU",
            splits_blocks=True,
            reports_peak=False,
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
            "contiguous spans of blocks over torchrun ranks (the default with --nodes or "
            "--procs-per-node)",
            splits_blocks=True,
            reports_peak=False,
            over_ranks=True,
        ),
    )
}
DEFAULT_STRATEGY = next(iter(STRATEGIES))
RANKS_STRATEGY = next(s.name for s in STRATEGIES.values() if s.over_ranks)
