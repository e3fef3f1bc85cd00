"""``bigmodel run`` output: per device planned against loaded, and what each step cost."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.table import Table

from bigmodel_cli.devices import key_text, torch_device
from bigmodel_cli.placement.items import SPLIT
from bigmodel_cli.render import print_json, stdout
from bigmodel_cli.run import RunReport
from bigmodel_cli.run.generate import GenerateReport
from bigmodel_cli.sizes import format_size


def run_doc(r: RunReport) -> dict[str, Any]:
    """The ``--json`` document (devices by plan id: ``"0"``, ``"cpu"``, ``"disk"``)."""
    return {
        "source": r.source,
        "plan": r.plan_file,
        "strategy": r.strategy,
        "dtype": r.dtype,
        "devices": {
            key_text(d.key): {
                "device": d.label,
                "planned": d.planned,
                "loaded": d.loaded,
                "allocated": d.allocated,
                "peak": d.peak,
                "seconds": round(d.seconds, 6),
                "gb_per_s": round(d.gb_per_s, 3),
            }
            for d in r.devices
        },
        "components": {
            c.name: {
                "device": c.device,
                "tensors": c.tensors,
                "bytes": c.bytes,
                "bytes_by_device": {key_text(k): n for k, n in c.bytes_by_device.items()},
            }
            for c in r.components
        },
        "cpu_load": r.cpu_load,
        "verified": r.verified,
        "load_seconds": round(r.load_seconds, 6),
        "verify_seconds": None if r.verify_seconds is None else round(r.verify_seconds, 6),
        "total_seconds": round(r.total_seconds, 6),
        "forward": {
            f.component: {
                "library": f.library,
                "class": f.class_name,
                "output_shape": None if f.output_shape is None else list(f.output_shape),
                "seconds": round(f.seconds, 6),
                "skipped": f.skipped,
                "peak": f.peak,
                "estimate": f.estimate,
            }
            for f in r.forward
        },
        "warnings": list(r.warnings),
    }


def _opt(n: int | None) -> str:
    return "-" if n is None else format_size(n)


def render_run(report: RunReport, as_json: bool) -> None:
    if as_json:
        print_json(run_doc(report))
        return
    console = stdout()
    dtype = f" at {report.dtype}" if report.dtype else ""
    table = Table(title=f"{report.source}: {report.strategy} plan{dtype}", title_justify="left")
    for col in ("device", "planned", "loaded", "allocated", "peak", "time", "speed"):
        table.add_column(col, justify="left" if col == "device" else "right")
    for d in report.devices:
        table.add_row(
            d.label,
            format_size(d.planned),
            format_size(d.loaded),
            _opt(d.allocated),
            _opt(d.peak),
            f"{d.seconds:.2f} s",
            f"{d.gb_per_s:.2f} GB/s" if d.seconds > 0 else "-",
        )
    console.print(table)

    parts = Table(title="components", title_justify="left")
    for col in ("component", "device", "tensors", "bytes"):
        parts.add_column(col, justify="left" if col in ("component", "device") else "right")
    for c in report.components:
        where = str(c.device)
        if c.device == SPLIT:
            where += (
                " ("
                + ", ".join(f"{dev}: {format_size(n)}" for dev, n in c.bytes_by_device.items())
                + ")"
            )
        parts.add_row(c.name, where, str(c.tensors), format_size(c.bytes))
    console.print(parts)

    if report.forward:
        fwd = Table(title="forward pass", title_justify="left")
        for col in ("component", "class", "output shape", "peak", "plan's estimate", "time"):
            fwd.add_column(col, justify="left" if col in ("component", "class") else "right")
        for f in report.forward:
            shape = f"({', '.join(map(str, f.output_shape))})" if f.output_shape else "-"
            time = f"{f.seconds:.3f} s" if f.skipped is None else f"skipped: {f.skipped}"
            fwd.add_row(
                f.component, f.class_name or "-", shape, _opt(f.peak), _opt(f.estimate), time
            )
        console.print(fwd)

    tensors = sum(c.tensors for c in report.components)
    if report.verified:
        check = f"all {tensors} tensors match the file bytes ({report.verify_seconds or 0:.2f} s)"
    else:
        check = "not verified (add --verify to compare every tensor with the file)"
    how = (
        ""
        if "cpu" not in {str(d.key) for d in report.devices}
        else (
            " (cpu tensors mapped from the file, copy-on-write)"
            if report.cpu_load == "mapped"
            else " (cpu tensors copied into private memory)"
        )
    )
    console.print(
        f"Loaded {tensors} tensors in {report.load_seconds:.2f} s{how}; {check}. "
        f"Total {report.total_seconds:.2f} s."
    )


def generate_doc(r: GenerateReport) -> dict[str, Any]:
    """The ``--json`` document of ``run --generate`` (devices by plan id)."""
    doc = asdict(r)
    del doc["library_output"]  # shown on stderr with --verbose, never in the document
    doc["devices"] = {
        key_text(d.key): {"planned": d.planned, "peak": d.peak}
        | ({} if d.baseline is None else {"baseline": d.baseline, "added": d.added})
        for d in r.devices
    }
    return doc


def render_generate(report: GenerateReport, as_json: bool) -> None:
    if as_json:
        print_json(generate_doc(report))
        return
    console = stdout()
    table = Table(title=f"{report.source}: {report.strategy} plan", title_justify="left")
    for col in ("device", "planned", "peak", "before loading", "added"):
        table.add_column(col, justify="left" if col == "device" else "right")
    for d in report.devices:
        label = "cpu (peak RSS)" if d.key == "cpu" else torch_device(d.key)
        table.add_row(label, format_size(d.planned), _opt(d.peak), _opt(d.baseline), _opt(d.added))
    console.print(table)
    made = f"image written to {report.image}" if report.image else f"text: {report.text!r}"
    console.print(
        f"Loaded in {report.load_seconds:.2f} s, generated in {report.generate_seconds:.2f} s; "
        f"{made}",
        markup=False,
    )
