"""``bigmodel inspect`` output."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bigmodel_cli.checkpoint import Checkpoint
from bigmodel_cli.checkpoint.summary import CheckpointSummary, ComponentSummary
from bigmodel_cli.render import print_json, stdout
from bigmodel_cli.sizes import DTYPES, format_size

TOP_BLOCKS = 12


def _component_doc(c: ComponentSummary) -> dict[str, Any]:
    return {
        "layout": c.layout,
        "library": list(c.library) if c.library else None,
        "files": list(c.files),
        "file_bytes": c.file_bytes,
        "tensors": c.tensors,
        "parameters": c.parameters,
        "bytes": c.bytes,
        "bytes_at_dtype": c.bytes_at_dtype,
        "dtypes": c.dtypes,
        "largest_tensor": {"name": c.largest_tensor[0], "bytes": c.largest_tensor[1]},
        "blocks": c.blocks,
    }


def inspect_doc(s: CheckpointSummary, tensors: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "source": s.source,
        "kind": s.kind,
        "dtype": s.dtype,
        "components": {c.name: _component_doc(c) for c in s.components},
        "skipped": list(s.skipped),
        "total": {
            "tensors": s.total("tensors"),
            "parameters": s.total("parameters"),
            "bytes": s.total("bytes"),
            "bytes_at_dtype": s.total("bytes_at_dtype"),
        },
    }
    if s.checkpoint is not None and s.checkpoint.notes:  # a training checkpoint's reader
        doc["notes"] = list(s.checkpoint.notes)
    if tensors and s.checkpoint is not None:
        for comp in s.checkpoint.components:
            built = s.built.get(comp.name, {})
            doc["components"][comp.name]["tensor_list"] = [
                {
                    "name": t.name,
                    **({"built": built[t.name]} if t.name in built else {}),
                    "dtype": DTYPES[t.dtype].name,
                    "shape": list(t.shape),
                    "bytes": t.nbytes,
                    "file": t.file.name,
                }
                for t in comp.tensors
            ]
    return doc


def render_inspect(s: CheckpointSummary, *, as_json: bool, tensors: bool) -> None:
    if as_json:
        print_json(inspect_doc(s, tensors))
        return
    from rich.table import Table  # only for people: `--json` never loads rich

    console = stdout()
    at = f"at {s.dtype}" if s.dtype else None
    table = Table(title=f"{s.source} ({s.kind})", title_justify="left")
    table.add_column("component", no_wrap=True)
    table.add_column("layout")
    for col in ("files", "tensors", "parameters", "bytes", *([at] if at else [])):
        table.add_column(col, justify="right")
    for c in s.components:
        at_cell = [format_size(c.bytes_at_dtype)] if at else []
        table.add_row(
            c.name,
            c.layout,
            str(len(c.files)),
            f"{c.tensors:,}",
            f"{c.parameters:,}",
            format_size(c.bytes),
            *at_cell,
        )
    if len(s.components) > 1:
        at_cell = [format_size(s.total("bytes_at_dtype"))] if at else []
        table.add_row(
            "total",
            "",
            str(sum(len(c.files) for c in s.components)),
            f"{s.total('tensors'):,}",
            f"{s.total('parameters'):,}",
            format_size(s.total("bytes")),
            *at_cell,
            style="bold",
        )
    console.print(table)
    for c in s.components:
        mix = ", ".join(f"{k} {v / max(c.parameters, 1):.0%}" for k, v in c.dtypes.items())
        blocks = sorted(c.blocks.items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{name} {format_size(size)}" for name, size in blocks[:TOP_BLOCKS])
        more = f" (+{len(blocks) - TOP_BLOCKS} more)" if len(blocks) > TOP_BLOCKS else ""
        console.print(
            f"[bold]{c.name}[/]: {mix}; largest tensor {c.largest_tensor[0]} "
            f"({format_size(c.largest_tensor[1])})",
            markup=True,
        )
        console.print(f"  blocks: {shown}{more}", markup=False)
    if s.skipped:
        console.print(f"skipped (no weights): {', '.join(s.skipped)}", markup=False)
    if s.checkpoint is not None and s.checkpoint.repo is not None:
        console.print(s.checkpoint.repo.note, markup=False)
    for note in s.checkpoint.notes if s.checkpoint is not None else ():
        console.print(f"note: {note}", markup=False)
    if tensors and s.checkpoint is not None:
        _render_tensors(s.checkpoint, s.built)


def _render_tensors(ckpt: Checkpoint, built_names: Mapping[str, Mapping[str, str]]) -> None:
    from rich.table import Table

    console = stdout()
    for comp in ckpt.components:
        built = built_names.get(comp.name, {})
        table = Table(title=f"{comp.name} tensors", title_justify="left")
        table.add_column("name", overflow="fold")
        if built:
            table.add_column("built as", overflow="fold")
        table.add_column("dtype")
        table.add_column("shape", overflow="fold")
        table.add_column("bytes", justify="right")
        table.add_column("file", overflow="fold")
        for t in comp.tensors:
            also = [built.get(t.name, "")] if built else []
            table.add_row(
                t.name,
                *also,
                DTYPES[t.dtype].name,
                str(list(t.shape)),
                format_size(t.nbytes),
                t.file.name,
            )
        console.print(table)
