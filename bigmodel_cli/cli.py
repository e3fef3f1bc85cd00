"""The ``bigmodel`` command line: parse flags, call the library, render. No logic here.

Each command calls the stage's public verb (the same function the Python API exports)
and a renderer. Errors are formatted once, in :func:`run_main`: a
:class:`~bigmodel_cli.errors.BigmodelError` becomes one ``bigmodel: error:`` line and its
exit status; anything else is a bug (exit 1, the traceback only with ``--debug``).
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from enum import Enum
from typing import Annotated, Any

import typer

from bigmodel_cli import __version__, torchrun
from bigmodel_cli import cli_generate as gen
from bigmodel_cli import cli_ranks as ranks
from bigmodel_cli import cli_shape as po
from bigmodel_cli.checkpoint.resolve import mirror_ahead
from bigmodel_cli.cli_options import (
    ConfigOpt,
    DTypeOpt,
    ForceOpt,
    IncludeOptimizerOpt,
    JsonOpt,
    MaxMemoryOpt,
    OfflineOpt,
    OutputOpt,
    RevisionOpt,
    SourceArg,
    VariantOpt,
    as_flags,
)
from bigmodel_cli.errors import EXIT_BUG, EXIT_INTERRUPTED, BigmodelError, FitError
from bigmodel_cli.placement.strategies import STRATEGIES, defaults_help
from bigmodel_cli.render import print_warnings
from bigmodel_cli.sizes import DType, as_size, parse_target_dtype
from bigmodel_cli.torchrun import launched

app = typer.Typer(
    name="bigmodel",
    help="Inspect, shard, merge, plan and load checkpoints too big to handle casually.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    add_completion=True,
)
_state = {"debug": False}


# ``--strategy`` values from the registry (an Enum, so that shell completion offers them)
Strategy = Enum("Strategy", {name: name for name in STRATEGIES}, type=str)  # type: ignore[misc]
STRATEGY_HELP = "; ".join(f"{s.name}: {s.help}" for s in STRATEGIES.values())
STRATEGY_HELP += f". Default: {defaults_help()}."


def _dtype(text: str | None) -> DType | None:
    return None if text is None else parse_target_dtype(text)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bigmodel {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Inspect, shard, merge, plan and load checkpoints too big to handle casually."""
    _state["debug"] = debug


@app.command()
def inspect(
    source: SourceArg = None,
    dtype: DTypeOpt = None,
    tensors: Annotated[bool, typer.Option("--tensors", help="List every tensor.")] = False,
    variant: VariantOpt = None,
    revision: RevisionOpt = None,
    offline: OfflineOpt = False,
    optim: IncludeOptimizerOpt = False,
    json: JsonOpt = False,
) -> None:
    """What is in a checkpoint: components, tensors, parameters, bytes, dtypes, blocks.

    Reads headers only. Example: `bigmodel inspect sdxl/ --dtype fp16`
    """
    from bigmodel_cli.checkpoint import inspect as inspect_checkpoint
    from bigmodel_cli.render.inspect import render_inspect
    from bigmodel_cli.runtime.library import with_built_names  # --tensors: the built names

    where: dict[str, Any] = {"variant": variant, "revision": revision, "offline": offline}
    summary = inspect_checkpoint(source, dtype=_dtype(dtype), **where, include_optimizer=optim)
    render_inspect(with_built_names(summary) if tensors else summary, as_json=json, tensors=tensors)


@app.command()
def shard(
    source: SourceArg = None,
    output: OutputOpt = None,
    max_shard_size: Annotated[
        str,
        typer.Option(
            "--max-shard-size",
            help="Most tensor bytes per shard (5GB = 5*10^9, 5GiB = 5*2^30). A tensor larger "
            "than this gets a shard of its own, as in Hugging Face.",
        ),
    ] = "5GB",
    dtype: DTypeOpt = None,
    variant: VariantOpt = None,
    force: ForceOpt = False,
    optim: IncludeOptimizerOpt = False,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Cut a checkpoint into shards of at most --max-shard-size, streaming the bytes.

    Output loads unchanged in diffusers / transformers from_pretrained. A pipeline is
    sharded component by component; other files are copied. A tensor larger than the
    limit gets a shard of its own, as in Hugging Face.

    Example: `bigmodel shard unet/ --max-shard-size 5GB` writes unet-sharded/
    """
    limit = as_size(max_shard_size, "max_shard_size")
    from bigmodel_cli.sharding import shard as verb  # the API's shard, here or on each rank
    from bigmodel_cli.sharding.reading import source_reading

    reading = source_reading({"variant": variant, "include_optimizer": optim, "config": config})
    ranks.shard_or_merge(verb, source, output, limit, dtype, reading, force, json)


@app.command()
def merge(
    source: SourceArg = None,
    output: OutputOpt = None,
    dtype: DTypeOpt = None,
    variant: VariantOpt = None,
    force: ForceOpt = False,
    config: ConfigOpt = None,
    optim: IncludeOptimizerOpt = False,
    json: JsonOpt = False,
) -> None:
    """Put shards back together: one .safetensors file per component, indexes dropped.

    Example: `bigmodel merge unet-sharded/ -o unet-merged/`; `bigmodel merge step-1000/` (DCP)
    """
    from bigmodel_cli.sharding import merge as verb  # the API's merge, here or on each rank
    from bigmodel_cli.sharding.reading import source_reading

    reading = source_reading({"variant": variant, "include_optimizer": optim, "config": config})
    ranks.shard_or_merge(verb, source, output, None, dtype, reading, force, json)


@app.command()
def plan(
    source: SourceArg = None,
    max_memory: MaxMemoryOpt = None,
    strategy: Annotated[
        Strategy | None,
        typer.Option("--strategy", help=STRATEGY_HELP, show_default=False),
    ] = None,
    dtype: DTypeOpt = None,
    reserve: Annotated[
        str | None,
        typer.Option("--reserve", help="Held back on every GPU for activations: a size or 10%."),
    ] = None,
    no_split: Annotated[
        list[str] | None,
        typer.Option("--no-split", help="A block prefix never to split (auto); repeatable."),
    ] = None,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Write the plan JSON here.")
    ] = None,
    require_fit: Annotated[
        bool, typer.Option("--require-fit", help="Exit 3 when anything is offloaded.")
    ] = False,
    variant: VariantOpt = None,
    revision: RevisionOpt = None,
    offline: OfflineOpt = False,
    nodes: ranks.NodesOpt = None,
    procs_per_node: ranks.ProcsOpt = None,
    json: JsonOpt = False,
    batch: po.Batch = None,
    height: po.Height = None,
    width: po.Width = None,
    frames: po.Frames = None,
    context: po.Context = None,
    counted: po.Counted = False,
    quantize: po.Quantize = None,
    no_quantize: po.NoQuantize = None,
    double_quant: po.DoubleQuant = False,
    kv_dtype: po.KVDType = None,
    encoder_length: po.EncoderLength = None,
) -> None:
    """Decide which device holds what, from headers alone (a Hub repo's too: no download).

    Example: `bigmodel plan sdxl/ --max-memory 0=8GB,1=8GB --dtype fp16 -o plan.json`;
    with activations at the run's shape: `... --batch 2 --height 1024 --width 1024`
    """
    from bigmodel_cli.placement import PlanRequest, make_plan
    from bigmodel_cli.render.plan import render_plan, summary

    request = PlanRequest(
        max_memory=max_memory,
        strategy=None if strategy is None else strategy.value,
        dtype=_dtype(dtype),
        reserve=reserve,
        no_split=tuple(no_split or ()),
        variant=variant,
        revision=revision,
        offline=offline,
        nodes=nodes,
        procs_per_node=procs_per_node,
        **po.run_shape(locals()),  # --batch ... --double-quant
    )
    with mirror_ahead(source, revision, variant, offline, when=max_memory is None):
        result = make_plan(source, request)
    if output is not None:
        result = result.save(output)
    render_plan(result, as_json=json, output=output)
    if require_fit and not result.fits:  # policy: the command's, after the plan is shown
        raise FitError(f"the plan does not fit (--require-fit): {summary(result)}")


@app.command()
def run(
    source: SourceArg = None,
    plan_file: Annotated[
        str | None, typer.Option("--plan", help=po.PLAN_HELP, show_default=False)
    ] = None,
    dtype: DTypeOpt = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Compare every loaded tensor with the file bytes.")
    ] = False,
    forward: Annotated[
        bool,
        typer.Option(
            "--forward",
            help="Build the components with diffusers/transformers and run one forward pass.",
        ),
    ] = False,
    require_fit: Annotated[
        bool,
        typer.Option("--require-fit", help="Exit 3 when a device lacks the planned memory now."),
    ] = False,
    copy: Annotated[
        bool,
        typer.Option(
            "--copy", help="Read cpu tensors into private memory instead of mapping the file."
        ),
    ] = False,
    variant: VariantOpt = None,
    offline: OfflineOpt = False,
    generate: gen.Generate = None,
    steps: gen.Steps = 20,
    seed: gen.Seed = 0,
    height: gen.Height = None,
    width: gen.Width = None,
    max_new_tokens: gen.MaxNewTokens = 32,
    output: gen.ImageOut = None,
    reader: ranks.ReaderOpt = ranks.DEFAULT_READER,
    input_ids: ranks.InputIdsOpt = None,
    microbatches: ranks.MicrobatchesOpt = None,
    forward_output: ranks.ForwardOutputOpt = None,
    verbose: gen.Verbose = False,
    json: JsonOpt = False,
) -> None:
    """Load a checkpoint onto the devices of a plan and report what it really cost.

    A Hub repo id that is not fully cached gets the files its plan uses downloaded first.
    With --generate, the pipeline or model is built by its library where the plan says and
    run end to end.

    Example: `bigmodel run sdxl/ --plan plan.json --verify`;
    `bigmodel run sd15/ --plan plan.json --generate "a cat" -o cat.png`
    """
    request = ranks.RunRequest(
        source, plan_file, dtype, verify, forward, variant, offline, json, reader.value,
        input_ids=input_ids, microbatches=microbatches, forward_output=forward_output,
    )  # fmt: skip
    if ranks.torchrun_run(request):  # under torchrun: cli_ranks.py
        return
    from bigmodel_cli.render.run import render_run
    from bigmodel_cli.run import run_plan

    the_plan = plan_file or po.detected_plan(source, _dtype(dtype), variant, offline)
    if generate is not None:
        from bigmodel_cli.run.generate import Generation

        how = Generation(steps, seed, height, width, max_new_tokens)
        gen.run_generate(source, the_plan, generate, how, output, json, verbose)
        return

    report = run_plan(
        source,
        plan=the_plan,
        dtype=_dtype(dtype),
        variant=variant,
        verify=verify,
        forward=forward,
        require_fit=require_fit,
        offline=offline,
        copy=copy,
    )
    print_warnings(report.warnings)
    render_run(report, json)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _names(error: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


def run_main(args: list[str] | None = None) -> int:
    """Run the command line on ``args`` (default: ``sys.argv``) and return the exit status.

    The one place errors become output: project errors and click's usage errors are one
    ``bigmodel: error:`` line (standalone, click would draw a box around usage errors)."""
    command = typer.main.get_command(app)
    torchrun.error_text = as_flags  # errors agreed across torchrun ranks: spelled as here,
    torchrun.show_error = _show_error  # and shown by rank 0 for all
    try:
        code = command.main(args=args, prog_name="bigmodel", standalone_mode=False)
    except BigmodelError as error:
        if not error.shown:
            return error.exit_code
        print_warnings(error.warnings)
        return _error(as_flags(error), error.exit_code)
    except KeyboardInterrupt:
        return _error("interrupted", EXIT_INTERRUPTED, prefix="bigmodel: ")
    except Exception as error:  # click's exceptions (typer may vendor its own click), bugs
        return _other(command, error)
    if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C (and our SIGTERM) into Exit(130)
        return _error("interrupted", EXIT_INTERRUPTED, prefix="bigmodel: ")
    return code if isinstance(code, int) else 0


def _error(message: str, code: int, prefix: str = "bigmodel: error: ") -> int:
    sys.stderr.write(f"{prefix}{message}\n")
    return code


def _show_error(message: str) -> None:
    _error(message, 0)
    sys.stderr.flush()


def _other(command: Any, error: Exception) -> int:
    names = _names(error)
    if "NoArgsIsHelpError" in names:
        sys.stdout.write(command.get_help(typer.Context(command)) + "\n")
        return 0
    if "Abort" in names:
        return _error("interrupted", EXIT_INTERRUPTED, prefix="bigmodel: ")
    if "ClickException" in names:
        message = " ".join(error.format_message().split())  # type: ignore[attr-defined]
        hint = " (see bigmodel --help)" if "UsageError" in names else ""
        return _error(f"{message}{hint}", int(getattr(error, "exit_code", 2)))
    if isinstance(error, BrokenPipeError):
        return EXIT_BUG
    if _state["debug"]:
        traceback.print_exc()
    reason = f"unexpected {type(error).__name__}: {error} (re-run with --debug for the traceback)"
    return _error(reason, EXIT_BUG)


def _on_late_signal(signum: int, frame: object) -> None:
    """A signal in the interpreter's teardown (where KeyboardInterrupt is ignored): 130."""
    sys.stdout.flush(), sys.stderr.flush(), os._exit(EXIT_INTERRUPTED)


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = run_main()
    except KeyboardInterrupt:  # after the command's end
        code = _error("interrupted", EXIT_INTERRUPTED, prefix="bigmodel: ")
    finally:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, _on_late_signal)
    if launched():  # a torchrun rank: its process group is already destroyed, its output
        sys.stdout.flush()  # written; torch's C++ threads can abort() a finished rank in
        sys.stderr.flush()  # the interpreter's teardown (SIGABRT, "terminate called
        os._exit(code)  # without an active exception"), so it is skipped
    sys.exit(code)
