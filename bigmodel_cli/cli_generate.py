"""``bigmodel run --generate``: its options, and the command that loads with the
libraries, generates and renders (:mod:`bigmodel_cli.cli` registers ``run``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # the run stage is imported when the command runs, not at start-up
    from bigmodel_cli.run.generate import Generation

Generate = Annotated[
    str | None,
    typer.Option(
        "--generate",
        help="Load with diffusers/transformers as the plan says and generate from this "
        "prompt: an image (-o) or text.",
    ),
]
Steps = Annotated[int, typer.Option("--steps", help="--generate: denoising steps.")]
Seed = Annotated[int, typer.Option("--seed", help="--generate: random seed.")]
Height = Annotated[int | None, typer.Option("--height", help="--generate: pixels.")]
Width = Annotated[int | None, typer.Option("--width", help="--generate: pixels.")]
MaxNewTokens = Annotated[
    int, typer.Option("--max-new-tokens", help="--generate: tokens for a causal LM.")
]
ImageOut = Annotated[
    str | None, typer.Option("-o", "--output", help="--generate: the image file (PNG).")
]
Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose",
        help="--generate: also show the libraries' own warnings and log lines (held back "
        "otherwise; shown anyway when the command fails).",
    ),
]


def run_generate(
    source: str | None,
    plan: str,
    prompt: str,
    how: Generation,
    output: str | None,
    json: bool,
    verbose: bool,
) -> None:
    """Load, generate, render; the libraries' own lines only with ``verbose``."""
    from bigmodel_cli.render import print_library_lines
    from bigmodel_cli.render.run import render_generate
    from bigmodel_cli.run.generate import generate_run

    made = generate_run(source, plan=plan, prompt=prompt, how=how, output=output, quiet=True)
    if verbose:
        print_library_lines(made.library_output)
    render_generate(made, json)
