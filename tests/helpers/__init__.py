"""Shared test helpers, one module per kind:

- :mod:`.cli`: the one way to call ``bigmodel`` (in process through ``run_main``, or as a
  real process), and the one-line-error check;
- :mod:`.trees`: hashing, copying and inspecting folders on disk;
- :mod:`.checkpoints`: checkpoints written by hand (raw, sparse) or by the real libraries
  from tiny configs, and the Hugging Face cache layout;
- :mod:`.plans`: plan files written by hand, and the real libraries' placement answers.

Importing any of them puts ``fixtures/`` on ``sys.path`` (for ``make_fixtures``).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"

if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))
