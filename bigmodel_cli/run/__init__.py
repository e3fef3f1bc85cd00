"""The run stage: a plan carried out.

- :func:`run_plan` (``bigmodel run SOURCE --plan plan.json``): check the plan against the
  checkpoint and this machine, load every tensor onto its device, report what it cost
  (:mod:`.execute`; the checks in :mod:`.checks`, loading in :mod:`.load` through the one
  GPU reader :mod:`.gpu_reader`, the report in :mod:`.report`);
- :func:`load` / :func:`generate`: the ready pipeline or model, built with its library
  where the plan says (:mod:`.pipeline`), and ``run --generate`` (:mod:`.generate`);
- :func:`run_world`: a torchrun rank's share of a plan over ranks (:mod:`.distributed`).
"""

from __future__ import annotations

from bigmodel_cli.run.execute import run_plan
from bigmodel_cli.run.report import ComponentRun, DeviceRun, RunReport

__all__ = ["ComponentRun", "DeviceRun", "RunReport", "run_plan"]
