"""The ``bigmodel`` command line: parse flags, call the library, render. No logic here."""

from __future__ import annotations

import signal
import sys
import traceback
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer

from bigmodel_cli import __version__
from bigmodel_cli.errors import EXIT_BUG, EXIT_INTERRUPTED, BigmodelError
from bigmodel_cli.sizes import DType, parse_size, parse_target_dtype

app = typer.Typer(
    name="bigmodel",
    help="Inspect, shard, merge, plan and load checkpoints too big to handle casually.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    add_completion=True,
)
_state = {"debug": False}


class Strategy(str, Enum):
    """``--strategy`` values (an Enum, so that shell completion offers them)."""

    balanced = "balanced"
    auto = "auto"
    sequential = "sequential"


T = TypeVar("T")

SourceArg = Annotated[
    str | None,
    typer.Argument(
        help="A .safetensors/.bin file, a model or pipeline folder, or a cached Hugging Face "
        "repo id (org/name). Default: the current folder.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
DTypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype", help="Target dtype (fp32, fp16, bf16, fp8 ...); floating tensors only."
    ),
]
VariantOpt = Annotated[
    str | None, typer.Option("--variant", help="Diffusers weight variant, e.g. fp16.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing OUT.")]


def _fail(error: BaseException, code: int) -> NoReturn:
    sys.stderr.write(f"bigmodel: error: {error}\n")
    raise typer.Exit(code)


def guarded(action: Callable[[], T]) -> T:
    """Run a command body: project errors become one line and their exit status."""
    try:
        return action()
    except BigmodelError as error:
        _fail(error, error.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("bigmodel: interrupted\n")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        raise typer.Exit(EXIT_BUG) from None
    except typer.Exit:
        raise
    except Exception as error:  # a bug: one line, the traceback only with --debug
        if _state["debug"]:
            traceback.print_exc()
        reason = (
            f"unexpected {type(error).__name__}: {error} (re-run with --debug for the traceback)"
        )
        _fail(BigmodelError(reason), EXIT_BUG)


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
    json: JsonOpt = False,
) -> None:
    """What is in a checkpoint: components, tensors, parameters, bytes, dtypes, blocks.

    Reads headers only. Example: `bigmodel inspect sdxl/ --dtype fp16`
    """

    def body() -> None:
        from bigmodel_cli.checkpoint import load_checkpoint
        from bigmodel_cli.render.inspect import render_inspect
        from bigmodel_cli.summary import summarize

        target = _dtype(dtype)
        ckpt = load_checkpoint(source, variant)
        render_inspect(summarize(ckpt, target), ckpt, json, tensors)

    guarded(body)


@app.command()
def shard(
    source: SourceArg = None,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Output folder. Default: SOURCE-sharded.")
    ] = None,
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
    json: JsonOpt = False,
) -> None:
    """Cut a checkpoint into shards of at most --max-shard-size, streaming the bytes.

    Output loads unchanged in diffusers / transformers from_pretrained. A pipeline is
    sharded component by component; other files are copied. A tensor larger than the
    limit gets a shard of its own, as in Hugging Face.

    Example: `bigmodel shard unet/ --max-shard-size 5GB` writes unet-sharded/
    """

    def body() -> None:
        from bigmodel_cli import sharding
        from bigmodel_cli.progress import progress_for_terminal
        from bigmodel_cli.render.shard import render_write

        limit = parse_size(max_shard_size, "--max-shard-size")
        with progress_for_terminal() as progress:
            result = sharding.shard(source, output, limit, _dtype(dtype), variant, force, progress)
        render_write(result, json)

    guarded(body)


@app.command()
def merge(
    source: SourceArg = None,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Output folder. Default: SOURCE-merged.")
    ] = None,
    dtype: DTypeOpt = None,
    variant: VariantOpt = None,
    force: ForceOpt = False,
    json: JsonOpt = False,
) -> None:
    """Put shards back together: one .safetensors file per component, indexes dropped.

    Example: `bigmodel merge unet-sharded/ -o unet-merged/`
    """

    def body() -> None:
        from bigmodel_cli import sharding
        from bigmodel_cli.progress import progress_for_terminal
        from bigmodel_cli.render.shard import render_write

        with progress_for_terminal() as progress:
            result = sharding.merge(source, output, _dtype(dtype), variant, force, progress)
        render_write(result, json)

    guarded(body)


@app.command()
def plan(
    source: SourceArg = None,
    max_memory: Annotated[
        str | None,
        typer.Option(
            "--max-memory",
            help="Devices and budgets, e.g. 0=8GB,1=8GB,cpu=32GB,disk. Default: detected.",
        ),
    ] = None,
    strategy: Annotated[
        Strategy,
        typer.Option(
            "--strategy",
            help="balanced: whole components, as diffusers; auto: split what fits no GPU; "
            "sequential: model CPU offload.",
        ),
    ] = Strategy.balanced,
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
    json: JsonOpt = False,
) -> None:
    """Decide which device holds what, from headers alone.

    Example: `bigmodel plan sdxl/ --max-memory 0=8GB,1=8GB --dtype fp16 -o plan.json`
    """

    def body() -> None:
        from bigmodel_cli.plan_file import save_plan
        from bigmodel_cli.planning import make_plan, plan_to_json
        from bigmodel_cli.render.plan import render_plan

        result = make_plan(
            source, max_memory, strategy.value, _dtype(dtype), reserve, no_split or [], variant
        )
        if output is not None:
            save_plan(plan_to_json(result), Path(output))
        render_plan(result, json, output, require_fit)

    guarded(body)


@app.command()
def run(
    source: SourceArg = None,
    plan_file: Annotated[
        str, typer.Option("--plan", help="A plan written by bigmodel plan -o.")
    ] = "plan.json",
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
    variant: VariantOpt = None,
    json: JsonOpt = False,
) -> None:
    """Load a checkpoint onto the devices of a plan and report what it really cost.

    Example: `bigmodel run sdxl/ --plan plan.json --verify`
    """

    def body() -> None:
        from bigmodel_cli.progress import progress_for_terminal
        from bigmodel_cli.render.run import render_run
        from bigmodel_cli.runner import run_plan

        with progress_for_terminal() as progress:
            report = run_plan(
                source, plan_file, _dtype(dtype), verify, forward, require_fit, variant, progress
            )
        render_run(report, json)

    guarded(body)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _names(error: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


def run_main(args: list[str] | None = None) -> int:
    """Run the command line on ``args`` (default: ``sys.argv``) and return the exit status.

    Click's own usage errors become one ``bigmodel: error:`` line too (standalone, click
    would draw a box around them)."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="bigmodel", standalone_mode=False)
    except KeyboardInterrupt:
        sys.stderr.write("bigmodel: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as error:  # click's exceptions (typer may vendor its own click)
        names = _names(error)
        if "NoArgsIsHelpError" in names:
            sys.stdout.write(command.get_help(typer.Context(command)) + "\n")
            return 0
        if "Abort" in names:
            sys.stderr.write("bigmodel: interrupted\n")
            return EXIT_INTERRUPTED
        if "ClickException" not in names:
            raise
        message = " ".join(error.format_message().split())  # type: ignore[attr-defined]
        hint = " (see bigmodel --help)" if "UsageError" in names else ""
        sys.stderr.write(f"bigmodel: error: {message}{hint}\n")
        return int(getattr(error, "exit_code", 2))
    return code if isinstance(code, int) else 0


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.exit(run_main())
