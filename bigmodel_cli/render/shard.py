"""``bigmodel shard`` / ``bigmodel merge`` output."""

from __future__ import annotations

from typing import Any

from bigmodel_cli.render import print_json, print_warnings, stdout
from bigmodel_cli.sharding.result import WriteResult
from bigmodel_cli.sizes import format_size


def write_doc(result: WriteResult) -> dict[str, Any]:
    """The ``--json`` document."""
    return {
        "source": result.plan.source,
        "output": result.output,
        "components": {
            c.name: {
                "files": [c.path(f.name) for f in c.files],
                "bytes": c.nbytes,
                "tensors": c.tensor_count,
            }
            for c in result.plan.components
        },
        "bytes_written": result.bytes_written,
        "seconds": round(result.seconds, 3),
    }


def render_write(result: WriteResult, as_json: bool) -> None:
    print_warnings(result.plan.warnings)  # one line each, never wrapped: scripts grep them
    if as_json:
        print_json(write_doc(result))
        return
    from rich.table import Table

    console = stdout()
    table = Table(title=f"{result.plan.source} -> {result.output}", title_justify="left")
    for col in ("component", "files", "tensors", "bytes"):
        table.add_column(col, justify="left" if col == "component" else "right")
    for c in result.plan.components:
        table.add_row(c.name, str(len(c.files)), f"{c.tensor_count:,}", format_size(c.nbytes))
    console.print(table)
    speed = result.bytes_written / result.seconds if result.seconds > 0 else 0.0
    verb = "sharded" if result.plan.mode == "shard" else "merged"
    console.print(
        f"{verb} into {result.output}: {format_size(result.bytes_written)} written "
        f"in {result.seconds:.2f} s ({format_size(speed)}/s)",
        markup=False,
    )
