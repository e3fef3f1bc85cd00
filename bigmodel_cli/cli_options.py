"""The options several commands share (SOURCE, --json, --dtype, --variant, --revision,
--offline, -o, --force), typed once for :mod:`bigmodel_cli.cli`."""

from __future__ import annotations

from typing import Annotated

import typer

SourceArg = Annotated[
    str | None,
    typer.Argument(
        help="A .safetensors/.bin file, a model or pipeline folder, or a Hugging Face repo id "
        "(org/name: the cache, else the Hub's headers). Default: the current folder.",
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
