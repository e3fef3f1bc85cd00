"""Peak resident memory of this process over a block, as the kernel counts it: every page
the block touched, whoever allocated it (Python, torch, numpy, Rust), unlike
``tracemalloc``, which sees Python's allocations only.

Linux keeps the process's high-water mark (``VmHWM``); writing ``5`` to
``/proc/self/clear_refs`` resets it to the current resident size, so the peak over a block
is ``VmHWM`` after it less ``VmRSS`` before it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def _status(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert found is not None, f"no {field} in /proc/self/status"
    return int(found.group(1)) * 1024


@dataclass
class Peak:
    grew: int = 0  # bytes: the peak resident size over the block, less the size before it


@contextmanager
def peak_rss_growth() -> Iterator[Peak]:
    """How far this process's resident memory rose above its size at the start."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    peak = Peak()
    try:
        yield peak
    finally:
        peak.grew = max(0, _status("VmHWM") - before)
