"""bigmodel: inspect, shard, merge, plan and load checkpoints too big to handle casually.

The Python API is the one the ``bigmodel`` command calls::

    import bigmodel_cli as bm

    summary = bm.inspect("sdxl/", dtype="fp16")
    bm.shard("unet/", "unet-sharded/", max_shard_size="5GB")
    plan = bm.plan("sdxl/", max_memory="0=8GB,1=8GB", dtype="fp16")
    plan.save("plan.json")
    report = bm.run_plan("sdxl/", plan="plan.json", verify=True)

Names are imported on first use, so ``import bigmodel_cli`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "inspect": ("bigmodel_cli.checkpoint", "inspect"),
    "shard": ("bigmodel_cli.sharding", "shard"),
    "merge": ("bigmodel_cli.sharding", "merge"),
    "plan": ("bigmodel_cli.placement", "make_plan"),
    "Plan": ("bigmodel_cli.placement.plan", "Plan"),
    "PlanRequest": ("bigmodel_cli.placement.request", "PlanRequest"),
    "read_plan": ("bigmodel_cli.placement.plan", "read_plan"),
    "run_plan": ("bigmodel_cli.run", "run_plan"),
    "RunPlanRequest": ("bigmodel_cli.run.request", "RunPlanRequest"),
    "GenerateRequest": ("bigmodel_cli.run.request", "GenerateRequest"),
    "load": ("bigmodel_cli.run.pipeline", "load"),
    "generate": ("bigmodel_cli.run.pipeline", "generate"),
    "BigmodelError": ("bigmodel_cli.errors", "BigmodelError"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'bigmodel_cli' has no attribute {name!r}")
    module, attribute = _API[name]
    return getattr(importlib.import_module(module), attribute)
