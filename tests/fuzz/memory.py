"""Peak resident memory of this process during a block, from the kernel's own figure.

``/proc/self/clear_refs`` (``5``) resets the peak (``VmHWM``) to the current resident size;
after the block the peak minus that baseline is what the block added, whatever allocated
it (Python objects, torch, a ``bytearray`` of a length read from a file, ``mmap`` reads).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        found = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    assert found, key
    return int(found.group(1)) * 1024


@dataclass
class Peak:
    added: int = 0  # bytes of resident memory above the start, at the block's peak


@contextmanager
def peak_rss() -> Iterator[Peak]:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = _status("VmRSS")
    peak = Peak()
    try:
        yield peak
    finally:
        peak.added = max(_status("VmHWM") - start, 0)
