"""The command line under torchrun: the flags of plans over ranks and the rank commands.

:mod:`bigmodel_cli.cli` registers the commands; when torchrun started the process
(:func:`~bigmodel_cli.torchrun.launched`), ``run``, ``shard`` and ``merge`` hand over to
:func:`torchrun_run` and :func:`torchrun_write` here (``shard`` and ``merge`` go through
:func:`shard_or_merge` either way), which call the stage's verb and let
rank 0 render the one report. No torch import at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from bigmodel_cli.errors import UsageError
from bigmodel_cli.sizes import DType, parse_target_dtype
from bigmodel_cli.torchrun import DEFAULT_IDS, READERS, launched

if TYPE_CHECKING:
    from collections.abc import Callable

    from bigmodel_cli.sharding import WriteResult
    from bigmodel_cli.sharding.reading import SourceReading

Reader = Enum("Reader", {name: name for name in READERS}, type=str)  # type: ignore[misc]
DEFAULT_READER = Reader[READERS[0]]


@dataclass(frozen=True)
class RunRequest:
    """``bigmodel run``'s flags that a torchrun rank needs (``--reader`` and the three of
    ``--forward`` under torchrun only outside it: they are refused there)."""

    source: str | None
    plan: str | None  # None: plan.json (outside torchrun, run plans for the detected devices)
    dtype: str | None
    verify: bool
    forward: bool
    variant: str | None
    offline: bool
    json: bool
    reader: str = READERS[0]
    input_ids: str | None = None
    microbatches: int | None = None
    forward_output: str | None = None


NodesOpt = Annotated[
    int | None,
    typer.Option("--nodes", help="Plan over torchrun ranks: this many nodes (default 1)."),
]
ProcsOpt = Annotated[
    int | None,
    typer.Option(
        "--procs-per-node",
        help="Plan over torchrun ranks: processes per node (default 1); --max-memory is then "
        "one rank's budget (0=80GB: its own GPU; cpu=64GB).",
    ),
]
ReaderOpt = Annotated[
    Reader,
    typer.Option(
        "--reader",
        help="Under torchrun: how each rank reads its byte ranges (pread: its own reads, peak "
        "memory its bytes; dcp: torch.distributed.checkpoint's safetensors reader).",
    ),
]
InputIdsOpt = Annotated[
    str | None,
    typer.Option(
        "--input-ids",
        help=f"--forward under torchrun: the prompt's token ids, rows separated by ';' "
        f"(default: {DEFAULT_IDS}).",
    ),
]
MicrobatchesOpt = Annotated[
    int | None,
    typer.Option(
        "--microbatches", help="--forward under torchrun: microbatches (default: one per row)."
    ),
]
ForwardOutputOpt = Annotated[
    str | None,
    typer.Option(
        "--forward-output",
        help="--forward under torchrun: the last stage writes the logits (key output) and the "
        "ids (key input_ids) to this safetensors file.",
    ),
]


def torchrun_write(
    source: str | None,
    output: str | None,
    mode: Literal["shard", "merge"],
    limit: int | None,
    dtype: DType | None,
    reading: SourceReading,
    force: bool,
    json: bool,
) -> bool:
    """Under torchrun, this rank's share of ``shard`` / ``merge`` (rank 0 prints the
    result), and True; outside torchrun, False."""
    if not launched():
        return False
    from bigmodel_cli.render.shard import render_write
    from bigmodel_cli.sharding.distributed import write_world

    result = write_world(source, output, mode, limit, dtype, reading, force)
    if result is not None:
        render_write(result, json)
    return True


def shard_or_merge(
    verb: Callable[..., WriteResult], source: str | None, output: str | None, limit: int | None,
    dtype: str | None, reading: SourceReading, force: bool, json: bool,
) -> None:  # fmt: skip
    """``bigmodel shard`` (a ``limit``) / ``merge`` (none) with the API's ``verb``, SOURCE
    read as ``reading`` says: under torchrun this rank's share, else the whole write;
    rendered (by rank 0)."""
    from bigmodel_cli.render.shard import render_write

    target = None if dtype is None else parse_target_dtype(dtype)
    mode: Literal["shard", "merge"] = "merge" if limit is None else "shard"
    if torchrun_write(source, output, mode, limit, target, reading, force, json):
        return
    same: dict[str, Any] = {"dtype": target, "variant": reading.variant, "force": force}
    same |= {"include_optimizer": reading.include_optimizer, "config": reading.config}
    result = verb(source, output, **same, **({} if limit is None else {"max_shard_size": limit}))
    render_write(result, json)


def torchrun_run(request: RunRequest) -> bool:
    """Under torchrun, this rank's part of ``run`` (rank 0 prints the report of all ranks),
    and True; outside torchrun, False, after refusing the flags that need torchrun."""
    r = request
    if not launched():
        if (r.input_ids, r.microbatches, r.forward_output) != (None, None, None):
            raise UsageError("--input-ids, --microbatches and --forward-output run under torchrun")
        return False
    from bigmodel_cli.render import print_warnings
    from bigmodel_cli.render.world_run import render_world_run
    from bigmodel_cli.run.distributed import run_world
    from bigmodel_cli.run.pipeline_stage import pipeline_request

    stage = pipeline_request(r.input_ids, r.microbatches, r.forward_output) if r.forward else None
    report = run_world(
        r.source,
        plan=r.plan or "plan.json",
        dtype=None if r.dtype is None else parse_target_dtype(r.dtype),
        verify=r.verify,
        reader=r.reader,
        stage=stage,
        variant=r.variant,
        offline=r.offline,
    )
    if report is not None:
        print_warnings(report.warnings)
        render_world_run(report, r.json)
    return True
