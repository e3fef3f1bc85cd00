"""The command line under torchrun: the flags of plans over ranks and the rank commands.

:mod:`bigmodel_cli.cli` registers the commands; when torchrun started the process
(:func:`~bigmodel_cli.torchrun.launched`), ``run``, ``shard`` and ``merge`` hand over to
:func:`torchrun_run` and :func:`torchrun_write` here, which call the stage's verb and let
rank 0 render the one report. No torch import at start-up.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

import typer

from bigmodel_cli.errors import UsageError
from bigmodel_cli.sizes import DType, parse_target_dtype
from bigmodel_cli.torchrun import DEFAULT_IDS, READERS, launched

Reader = Enum("Reader", {name: name for name in READERS}, type=str)  # type: ignore[misc]
DEFAULT_READER = Reader[READERS[0]]
# --reader, --input-ids, --microbatches, --forward-output
Flags = tuple[Reader, str | None, int | None, str | None]

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
    variant: str | None,
    force: bool,
    json: bool,
) -> bool:
    """Under torchrun, this rank's share of ``shard`` / ``merge`` (rank 0 prints the
    result), and True; outside torchrun, False."""
    if not launched():
        return False
    from bigmodel_cli.render.shard import render_write
    from bigmodel_cli.sharding.distributed import write_world

    result = write_world(source, output, mode, limit, dtype, variant, force)
    if result is not None:
        render_write(result, json)
    return True


def torchrun_run(
    source: str | None,
    plan_file: str,
    dtype: str | None,
    verify: bool,
    forward: bool,
    flags: Flags,
    variant: str | None,
    offline: bool,
    json: bool,
) -> bool:
    """Under torchrun, this rank's part of ``run`` (rank 0 prints the report of all ranks),
    and True; outside torchrun, False, after refusing the flags that need torchrun."""
    reader, input_ids, microbatches, forward_output = flags
    if not launched():
        if any(flag is not None for flag in flags[1:]):
            raise UsageError("--input-ids, --microbatches and --forward-output run under torchrun")
        return False
    from bigmodel_cli.render.world_run import render_world_run
    from bigmodel_cli.run.distributed import run_world
    from bigmodel_cli.run.pipeline_stage import pipeline_request

    report = run_world(
        source,
        plan=plan_file,
        dtype=None if dtype is None else parse_target_dtype(dtype),
        verify=verify,
        reader=reader.value,
        stage=pipeline_request(input_ids, microbatches, forward_output) if forward else None,
        variant=variant,
        offline=offline,
    )
    if report is not None:
        render_world_run(report, json)
    return True
