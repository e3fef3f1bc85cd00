"""Plans over torchrun ranks, for people: a row per rank and one sentence on the spans."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bigmodel_cli.placement.plan import Plan
from bigmodel_cli.render import bar
from bigmodel_cli.sizes import format_size

if TYPE_CHECKING:
    from rich.console import Console

SHOWN_MODULES = 3


def modules_text(modules: tuple[str, ...]) -> str:
    """``model.embed_tokens, model.layers.0 ... model.layers.7 (9 modules)``."""
    if not modules:
        return "-"
    if len(modules) <= SHOWN_MODULES:
        return ", ".join(modules)
    return f"{modules[0]}, {modules[1]} ... {modules[-1]} ({len(modules)} modules)"


def print_world_plan(console: Console, plan: Plan) -> None:
    from rich.table import Table

    assert plan.world is not None
    w = plan.world.world
    (device,) = plan.devices
    capacity = device.capacity or 0
    table = Table(title=f"{w.nodes} node(s) x {w.procs_per_node} process(es), backend {w.backend}")
    for col in ("rank", "node", "local", "device", "use", "weights", "reads", "modules"):
        table.add_column(col, justify="left" if col in ("device", "use", "modules") else "right")
    for r in plan.world.ranks:
        table.add_row(
            str(r.rank),
            str(r.node),
            str(r.local_rank),
            "cuda:LOCAL_RANK" if r.device == "cuda" else r.device,
            bar(r.weights, capacity),
            format_size(r.weights),
            format_size(r.bytes),
            modules_text(r.modules),
        )
    console.print(table)
    console.print(world_summary(plan), markup=False)


def world_summary(plan: Plan) -> str:
    """One sentence: the spans' balance, what is read twice, and whether it fits."""
    assert plan.world is not None
    ranks = plan.world.ranks
    (device,) = plan.devices
    largest = max(ranks, key=lambda r: r.weights)
    idle = [r.rank for r in ranks if not r.modules]
    verdict = (
        "every rank fits its budget"
        if plan.fits
        else f"rank {largest.rank} needs {format_size(largest.weights)}, more than the "
        f"{format_size(device.capacity or 0)} a rank has"
    )
    parts = [
        f"{plan.strategy} plan over {len(ranks)} ranks: the largest holds "
        f"{format_size(largest.weights)} (rank {largest.rank}); {verdict}"
    ]
    for d in plan.world.duplicates:
        parts.append(
            f"ranks {', '.join(map(str, d.ranks))} each read {d.tensor} "
            f"({format_size(d.bytes)}: a tied weight)"
        )
    if idle:
        parts.append(f"ranks {', '.join(map(str, idle))} hold nothing")
    return "; ".join(parts) + "."
