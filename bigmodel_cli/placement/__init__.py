"""The plan stage: ``bigmodel plan``. Read the headers, build the planner's items
(:mod:`.items`, :mod:`.units`), run a strategy from the registry (:mod:`.strategies`) on
this machine's devices (:mod:`.local`) or over torchrun ranks (:mod:`.ranks`), and
describe the result as a :class:`~.plan.Plan` (:mod:`.describe`; :mod:`.plan` writes and
reads it).

Weights-only plans build no model class and import neither diffusers nor transformers;
torch is imported only to detect GPUs when ``max_memory`` is not given. With the run's
shape (``batch``, ``height`` ... or ``counted=True``), activations and KV caches are
estimated (:mod:`bigmodel_cli.runtime`) and counted (:mod:`.counted`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from bigmodel_cli import arguments as a
from bigmodel_cli.placement.plan import DevicePlan, Plan, plan_from_json, read_plan
from bigmodel_cli.placement.request import PlanOptions, PlanRequest, as_request
from bigmodel_cli.placement.strategies import STRATEGIES

if TYPE_CHECKING:
    from typing import Unpack

__all__ = [
    "STRATEGIES",
    "DevicePlan",
    "Plan",
    "PlanRequest",
    "make_plan",
    "plan_from_json",
    "read_plan",
]


def make_plan(
    source: str | os.PathLike[str] | None = None,
    request: PlanRequest | None = None,
    **options: Unpack[PlanOptions],
) -> Plan:
    """Plan SOURCE (default: the current folder) as ``request`` asks, or as the keywords
    of a :class:`PlanRequest` do: the devices of ``max_memory`` (``"0=8GB,1=8GB,cpu=32GB"``;
    default: the GPUs and RAM found here), or ``nodes`` x ``procs_per_node`` torchrun ranks.

    >>> plan = make_plan("sdxl/", max_memory="0=8GB,1=8GB", dtype="fp16")  # doctest: +SKIP
    >>> plan.save("plan.json")  # doctest: +SKIP
    """
    a.path(source, "source")
    asked = as_request(request, options)
    if asked.over_ranks:
        from bigmodel_cli.placement.ranks import plan_ranks

        return plan_ranks(source, asked)
    from bigmodel_cli.placement.local import plan_devices

    return plan_devices(source, asked)
