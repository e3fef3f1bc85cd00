"""The options several commands share (SOURCE, --json, --dtype, --variant, --revision,
--offline, -o, --force, --include-optimizer, --config), typed once for
:mod:`bigmodel_cli.cli`; and how an error that names an API argument is spelled with these
flags (:func:`as_flags`)."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from bigmodel_cli.errors import BigmodelError, Warned

SourceArg = Annotated[
    str | None,
    typer.Argument(
        help="A .safetensors/.bin file, a model or pipeline folder, or a Hugging Face repo id "
        "(org/name: the cache, else the Hub's headers). Default: the current folder.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
MaxMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        help="Devices and budgets, e.g. 0=8GB,1=8GB,cpu=32GB,disk. Default: detected.",
    ),
]
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
RevisionOpt = Annotated[
    str | None,
    typer.Option("--revision", help="Hub repo ids: a branch, tag or commit (default: main)."),
]
OfflineOpt = Annotated[
    bool,
    typer.Option(
        "--offline", help="Never ask the Hub (as HF_HUB_OFFLINE=1): use what is cached here."
    ),
]
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "-o", "--output", help="Output folder. Default: beside SOURCE, SOURCE-sharded / -merged."
    ),
]


# API argument names whose flag is not ``--`` + the name with dashes
FLAG_NAMES = {"output": "-o", "plan_path": "--plan", "counted": "--runtime"}


def as_flags(error: BigmodelError | Warned | str) -> str:
    """The error's (or warning's) line with the API argument it names spelled as the CLI's
    flag: the library says ``max_shard_size must be positive``, the CLI ``--max-shard-size``."""
    text = error.reason if isinstance(error, BigmodelError) else str(error)
    for argument in getattr(error, "arguments", ()):
        flag = FLAG_NAMES.get(argument, "--" + argument.replace("_", "-"))
        text = re.sub(rf"(?<![\w/.-]){re.escape(argument)}(?![\w/-])", flag, text)
    if isinstance(error, BigmodelError):  # the path and the tensor as they are
        return str(BigmodelError(text, error.path, error.tensor))
    return text


IncludeOptimizerOpt = Annotated[
    bool,
    typer.Option(
        "--include-optimizer",
        help="Training checkpoints (DCP folders): the optimizer's state too, not only the model.",
    ),
]
ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        help="A config.json to put in OUT (a training checkpoint's folder often has none).",
    ),
]
