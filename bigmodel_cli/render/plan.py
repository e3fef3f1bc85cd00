"""``bigmodel plan`` output: the JSON document (``--json``), or a table per device with a
capacity bar and one sentence on what was offloaded and why."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from bigmodel_cli.devices import device_label, is_gpu
from bigmodel_cli.placement.items import SPLIT
from bigmodel_cli.placement.plan import DevicePlan, Plan
from bigmodel_cli.placement.strategies import STRATEGIES
from bigmodel_cli.render import bar, print_json, stdout
from bigmodel_cli.render.world import print_world_plan, world_summary
from bigmodel_cli.sizes import format_size

SHOWN_BLOCKS = 4


def render_plan(plan: Plan, as_json: bool, output: str | None) -> None:
    """Print the plan (``output``: where ``-o`` wrote it)."""
    if as_json:
        print_json(plan.to_json())
    else:
        _print_human(plan, output)


def _print_human(plan: Plan, output: str | None) -> None:
    console = stdout()
    dtype = plan.dtype or "checkpoint dtypes"
    console.print(f"[bold]{escape(plan.source)}[/]: {plan.strategy} plan at {dtype}")
    if plan.strategy_reason is not None:
        console.print(f"strategy {plan.strategy}: {plan.strategy_reason}", markup=False)
    if plan.world is not None:  # a plan over torchrun ranks: a row per rank
        print_world_plan(console, plan)
    for device in () if plan.world is not None else plan.devices:
        console.print()
        console.print(_device_line(plan, device), markup=False)
        console.print(_device_table(plan, device))
    if plan.world is None:
        console.print(summary(plan))
    for line in runtime_lines(plan):
        console.print(line, markup=False)
    for note in plan.notes:
        console.print(note, markup=False)
    if output is not None:
        console.print(f"plan written to {output}")


def _device_line(plan: Plan, device: DevicePlan) -> str:
    """``GPU 0  [#########-----------]  45%  3.60 GB of 7.00 GB (reserve 1.00 GB held back)``."""
    used = device.planned + device.held + _peak_here(plan, device)
    capacity = device.capacity
    room = "unlimited" if capacity is None else format_size(capacity)
    reserve = f" (reserve {format_size(device.reserve)} held back)" if device.reserve else ""
    fill = f"{bar(used, capacity)}  " if capacity is not None else ""
    split = ""
    if plan.shape.counted:
        weights = device.planned - device.run_bytes
        split = f" (weights {format_size(weights)}, run time {format_size(device.run_bytes)})"
    return f"{device.label}  {fill}{format_size(used)} of {room}{split}{reserve}"


def _peak_here(plan: Plan, device: DevicePlan) -> int:
    """Sequential offload: the largest component, while it runs on the execution GPU."""
    if not STRATEGIES[plan.strategy].reports_peak or device.key != plan.execution_device:
        return 0
    if plan.peak_gpu is not None:  # the largest component with its run time, if counted
        return max(plan.peak_gpu - device.reserve, 0)
    return max(plan.components.values(), default=0)


def _device_table(plan: Plan, device: DevicePlan) -> Table:
    table = Table(show_edge=False)
    table.add_column("component")
    table.add_column("what")
    table.add_column("bytes", justify="right")
    for name, what, nbytes in _rows(plan, device):
        table.add_row(name, what, format_size(nbytes))
    if _peak_here(plan, device):
        largest = max(plan.components, key=lambda n: plan.components[n] + _run_time(plan, n))
        table.add_row(
            largest, "largest, while it runs (peak)", format_size(_peak_here(plan, device))
        )
    if device.held:
        table.add_row("", "held for offloaded blocks", format_size(device.held))
    if device.run_bytes:
        table.add_row("", "run time: KV cache, largest activations", format_size(device.run_bytes))
    if not table.row_count:
        table.add_row("-", "nothing planned here", "")
    return table


def _rows(plan: Plan, device: DevicePlan) -> list[tuple[str, str, int]]:
    rows = []
    for name, where in plan.device_map.items():
        if where == device.key:
            rows.append((name, "whole", plan.components[name]))
        elif where == SPLIT:
            blocks = [b for b, d in plan.component_maps[name].items() if d == device.key]
            if blocks:
                rows.append((name, _blocks_text(blocks), _split_bytes(plan, name, device)))
    return rows


def _blocks_text(blocks: list[str]) -> str:
    shown = ", ".join(blocks[:SHOWN_BLOCKS])
    more = f" +{len(blocks) - SHOWN_BLOCKS} more" if len(blocks) > SHOWN_BLOCKS else ""
    return f"{len(blocks)} block{'s' if len(blocks) != 1 else ''}: {shown}{more}"


def _split_bytes(plan: Plan, name: str, device: DevicePlan) -> int:
    return plan.block_bytes.get(name, {}).get(device.key, 0)


def summary(plan: Plan) -> str:
    """One sentence: what was offloaded, and why."""
    if plan.world is not None:
        return world_summary(plan)
    if not plan.gpus:
        hosts = " and ".join(d.label for d in plan.devices if d.planned) or "cpu"
        why = (
            "No GPU found and no --max-memory given" if plan.detected else "No GPU in --max-memory"
        )
        return f"{why}: everything is planned on {hosts}."
    if STRATEGIES[plan.strategy].reports_peak:
        return _sequential_sentence(plan)
    if not plan.offloaded:
        split = [n for n, d in plan.device_map.items() if d == SPLIT]
        tail = f" ({', '.join(split)} split over several GPUs)" if split else ""
        return f"Nothing offloaded: every component is on a GPU{tail}."
    return "; ".join(_offload_reason(plan, name) for name in plan.offloaded) + "."


def runtime_lines(plan: Plan) -> list[str]:
    """What the run's shape added, and which components have no estimate and why."""
    run = plan.shape
    if not run.counted:
        return []
    side = f", {run.height}x{run.width} px" if run.height and run.width else ""
    frames = f", {run.frames} frames" if run.frames else ""
    context = f", {run.context} tokens" if run.context else ""
    lines = [f"Counted run time: batch {run.batch}{side}{frames}{context}."]
    for name, needs in plan.needs.items():
        parts = []
        if needs.activations is not None:
            parts.append(f"activations {format_size(needs.activations)}")
        if needs.kv_cache is not None:
            parts.append(f"KV cache {format_size(needs.kv_cache)}")
        lines.append(f"  {name}: " + (", ".join(parts) or "-") + _note(needs.note))
    return lines


def _note(note: str | None) -> str:
    return f" ({note})" if note else ""


def _run_time(plan: Plan, name: str) -> int:
    needs = plan.needs.get(name)
    return (needs.activations or 0) + (needs.kv_cache or 0) if needs is not None else 0


def _sequential_sentence(plan: Plan) -> str:
    largest = max(plan.components, key=lambda n: plan.components[n] + _run_time(plan, n))
    gpu = device_label(plan.execution_device) if plan.execution_device is not None else "GPU"
    verdict = "fits" if plan.peak_fits else "does not fit"
    what = f"{largest} with its run time" if plan.shape.counted else largest
    return (
        f"Sequential offload: every component stays on cpu and moves to {gpu} in turn; "
        f"the peak, {format_size(plan.peak_gpu or 0)} ({what} plus the reserve), "
        f"{verdict} there."
    )


def _runner_clause(plan: Plan) -> str:
    if plan.execution_device is None or not plan.held_for_offload:
        return ""
    return (
        f"; they run on {device_label(plan.execution_device)}, which keeps "
        f"{format_size(plan.held_for_offload)} free for their largest module"
    )


def _offload_reason(plan: Plan, name: str) -> str:
    size = format_size(plan.components[name])
    widest = max((d.capacity or 0 for d in plan.gpus), default=0)
    if plan.device_map[name] == SPLIT:
        hosts = {k: n for k, n in plan.block_bytes[name].items() if not is_gpu(k)}
        why = (
            f"is larger than any GPU ({format_size(widest)})"
            if plan.components[name] > widest
            else "does not fit the room left on any GPU"
        )
        return (
            f"{name} ({size}) {why}, so it is split at block level: "
            f"{format_size(sum(hosts.values()))} of its blocks do not fit the GPUs "
            f"and go to {' and '.join(map(str, hosts))}" + _runner_clause(plan)
        )
    where = plan.device_map[name]
    run = _run_time(plan, name)
    if plan.components[name] > widest:
        why = f"it is larger than any GPU ({format_size(widest)})"
    elif plan.components[name] + run > widest:
        why = f"with its run time ({format_size(run)}) it is larger than any GPU"
    else:
        free = max(((d.capacity or 0) - d.planned - d.held for d in plan.gpus), default=0)
        why = f"the GPUs have {format_size(max(free, 0))} left at most once larger parts are placed"
    return f"{name} ({size}) is offloaded to {where}: {why}"
