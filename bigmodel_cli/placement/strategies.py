"""The registry of placement strategies: one :class:`Strategy` record per name.

The CLI's ``--strategy`` choice and help, the plan file reader's allowed names and the
renderer's wording are all derived from :data:`STRATEGIES`. Adding a strategy is one
pure function from parts and bins to a :class:`~bigmodel_cli.placement.items.Layout` and one
entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bigmodel_cli.devices import is_gpu
from bigmodel_cli.placement.auto import auto
from bigmodel_cli.placement.balanced import balanced
from bigmodel_cli.placement.items import Bin, Layout, Part, Placement, room_of, to_host
from bigmodel_cli.placement.stages import pipeline


def sequential(parts: Sequence[Part], bins: Sequence[Bin]) -> Layout:
    """diffusers' model CPU offload: all on ``cpu``, each moved to the first GPU in turn."""
    room = room_of(bins)
    hosts = [b.key for b in bins if not b.is_gpu]
    by_size = sorted(parts, key=lambda p: p.nbytes, reverse=True)
    devices = {p.name: to_host(room, hosts, p.nbytes) for p in by_size}
    runner = next((b.key for b in bins if is_gpu(b.key)), None)
    largest = max((p.nbytes + p.activations for p in parts), default=0)
    peak = largest if runner is not None else None
    return Layout(tuple(Placement(p.name, devices[p.name]) for p in parts), runner, peak)


@dataclass(frozen=True)
class Strategy:
    """A placement strategy and what the rest of the program needs to know of it."""

    name: str
    place: Callable[[Sequence[Part], Sequence[Bin]], Layout]
    help: str
    splits_blocks: bool  # needs the components' blocks (units) to place them
    reports_peak: bool  # components move to the execution GPU in turn: a peak, not a sum
    over_ranks: bool = False  # places on torchrun ranks (--nodes/--procs-per-node), not devices


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "balanced",
            balanced,
            "whole components, as diffusers' device_map='balanced' (the default)",
            splits_blocks=False,
            reports_peak=False,
        ),
        Strategy(
            "auto",
            auto,
            "whole components where they fit; split at block level what fits no GPU",
            splits_blocks=True,
            reports_peak=False,
        ),
        Strategy(
            "sequential",
            sequential,
            "model CPU offload: all on cpu, each component moved to GPU 0 in turn",
            splits_blocks=False,
            reports_peak=True,
        ),
        Strategy(
            "pipeline",
            pipeline,
            "contiguous stages of blocks over torchrun ranks (the default with --nodes or "
            "--procs-per-node)",
            splits_blocks=True,
            reports_peak=False,
            over_ranks=True,
        ),
    )
}
DEFAULT_STRATEGY = next(iter(STRATEGIES))
RANKS_STRATEGY = next(s.name for s in STRATEGIES.values() if s.over_ranks)
