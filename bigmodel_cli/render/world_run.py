"""``torchrun ... -m bigmodel_cli run`` output, printed by rank 0: a row per rank (bytes
read, tensors, time, peak memory) and one sentence on the total read and the forward pass."""

from __future__ import annotations

from typing import Any

from bigmodel_cli.render import print_json, stdout
from bigmodel_cli.run.distributed import WorldRunReport
from bigmodel_cli.sizes import format_size


def world_run_doc(r: WorldRunReport) -> dict[str, Any]:
    """The ``--json`` document of a run over ranks (printed by rank 0)."""
    f = r.forward
    return {
        "source": r.source,
        "plan": r.plan_file,
        "strategy": r.strategy,
        "dtype": r.dtype,
        "world": {
            "nodes": r.world.nodes,
            "procs_per_node": r.world.procs_per_node,
            "backend": r.world.backend,
        },
        "reader": r.reader,
        "ranks": [
            {
                "rank": x.rank,
                "node": x.node,
                "local_rank": x.local_rank,
                "host": x.host,
                "device": x.device,
                "planned": x.planned,
                "bytes_read": x.bytes_read,
                "tensors": x.tensors,
                "seconds": round(x.seconds, 6),
                "verify_seconds": None if x.verify_seconds is None else round(x.verify_seconds, 6),
                "peak_rss": x.peak_rss,
                "peak_gpu": x.peak_gpu,
            }
            for x in r.ranks
        ],
        "checkpoint_bytes": r.checkpoint_bytes,
        "duplicate_bytes": r.duplicate_bytes,
        "bytes_read": r.bytes_read,
        "verified": r.verified,
        "total_seconds": round(r.total_seconds, 6),
        "forward": None
        if f is None
        else {
            "stages": f.stages,
            "microbatches": f.microbatches,
            "input_shape": list(f.input_shape),
            "output_shape": list(f.output_shape),
            "output_file": f.output_file,
            "seconds": round(f.seconds, 6),
        },
        "warnings": list(r.warnings),
    }


def render_world_run(report: WorldRunReport, as_json: bool) -> None:
    if as_json:
        print_json(world_run_doc(report))
        return
    from rich.table import Table

    console = stdout()
    w = report.world
    title = (
        f"{report.source}: {report.strategy} plan over {w.nodes} x {w.procs_per_node} ranks "
        f"({w.backend}), read with {report.reader}"
    )
    table = Table(title=title, title_justify="left")
    columns = ("rank", "node", "host", "device", "planned", "read", "tensors", "time", "peak RSS")
    for col in (*columns, "peak GPU"):
        table.add_column(col, justify="left" if col in ("host", "device") else "right")
    for x in report.ranks:
        table.add_row(
            str(x.rank),
            str(x.node),
            x.host,
            x.device,
            format_size(x.planned),
            format_size(x.bytes_read),
            str(x.tensors),
            f"{x.seconds:.2f} s",
            format_size(x.peak_rss),
            "-" if x.peak_gpu is None else format_size(x.peak_gpu),
        )
    console.print(table)
    console.print(run_sentence(report), markup=False)


def run_sentence(r: WorldRunReport) -> str:
    ratio = r.bytes_read / r.checkpoint_bytes if r.checkpoint_bytes else 0.0
    twice = f" ({format_size(r.duplicate_bytes)} read twice, as the plan lists)"
    parts = [
        f"Read {format_size(r.bytes_read)} in all, {ratio:.2f}x the checkpoint's "
        f"{format_size(r.checkpoint_bytes)}" + (twice if r.duplicate_bytes else "")
    ]
    tensors = sum(x.tensors for x in r.ranks)
    parts.append(
        f"all {tensors} tensors match the file bytes"
        if r.verified
        else "not verified (add --verify to compare every tensor with the file)"
    )
    f = r.forward
    if f is not None:
        where = f"; logits written to {f.output_file}" if f.output_file else ""
        parts.append(
            f"forward over {f.stages} stages in {f.microbatches} microbatch(es): "
            f"input {tuple(f.input_shape)} -> logits {tuple(f.output_shape)} "
            f"in {f.seconds:.2f} s{where}"
        )
    return "; ".join(parts) + f". Total {r.total_seconds:.2f} s."
