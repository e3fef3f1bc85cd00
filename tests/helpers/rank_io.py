"""What a torchrun rank read, as the kernel counts it, not as bigmodel does.

``python -m tests.helpers.rank_io DIR ARGS...`` runs ``bigmodel ARGS`` as one rank, and
around the rank's load (:data:`LOAD`, the one call that reads its share, whatever the
reader) reads the process's own I/O counters from ``/proc/self/io``: ``rchar`` (the bytes
every ``read``/``pread``/``preadv`` of any thread returned) and ``syscr`` (their number).
It writes them to ``DIR/rank-RANK.json``. bigmodel's own ``bytes_read`` is counted at its
read calls; a read it does not count (a stray ``os.pread`` of the whole file) shows here.

A mapped reader (``--reader dcp`` copies out of ``mmap``) reads by page faults, which no
counter of the process sees: :mod:`tests.helpers.page_cache` checks those from the page
cache instead.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

# module, function: the rank's load. If a refactor renames it, this fails loudly (below),
# never silently measuring nothing.
LOAD = ("bigmodel_cli.run.distributed", "_read")
# env: files (os.pathsep) whose page-cache residency each rank records after its load; the
# ranks then load one after another (rank r waits for r - 1), so each rank's pages show
PAGES = "RANK_IO_PAGES"


def io_counters() -> dict[str, int]:
    """This process's ``/proc/self/io``, all its threads together (exited ones included)."""
    text = Path("/proc/self/io").read_text()
    return {k: int(v) for k, v in (line.split(": ") for line in text.splitlines())}


def probe(out: Path) -> None:
    """Wrap :data:`LOAD` so that each call records the counters before and after it."""
    module = importlib.import_module(LOAD[0])
    real = getattr(module, LOAD[1], None)
    if real is None:
        raise SystemExit(f"rank_io: {LOAD[0]}.{LOAD[1]} is gone; point LOAD at the rank's load")

    def measured(*args: Any, **kwargs: Any) -> Any:
        rank = int(os.environ.get("RANK", "0"))
        files = [Path(f) for f in os.environ.get(PAGES, "").split(os.pathsep) if f]
        if files:  # one load at a time, so that each rank's pages show apart
            _wait_for(out / f"loaded-{rank - 1}", rank > 0)
        before = io_counters()
        try:
            return real(*args, **kwargs)
        finally:
            after = io_counters()
            found = {k: after[k] - before[k] for k in ("rchar", "syscr", "read_bytes")}
            (out / f"rank-{rank}.json").write_text(json.dumps(found))
            if files:
                from tests.helpers.page_cache import resident

                pages = {str(f): resident(f).hex() for f in files}
                (out / f"pages-{rank}.json").write_text(json.dumps(pages))
                (out / f"loaded-{rank}").touch()

    setattr(module, LOAD[1], measured)


def _wait_for(path: Path, needed: bool, seconds: float = 120) -> None:
    import time

    deadline = time.monotonic() + seconds
    while needed and not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"rank_io: {path} never appeared")
        time.sleep(0.01)


def pages_after(folder: Path, rank: int) -> dict[str, bytes]:
    """File -> its page-cache residency (one byte a page) once ``rank`` had loaded (the
    ranks load in turn under :data:`PAGES`)."""
    found = json.loads((folder / f"pages-{rank}.json").read_text())
    return {f: bytes.fromhex(h) for f, h in found.items()}


def read_counts(folder: Path) -> dict[int, dict[str, int]]:
    """RANK -> the counters its load moved, as the probe wrote them."""
    found = {}
    for path in folder.glob("rank-*.json"):
        found[int(path.stem.removeprefix("rank-"))] = json.loads(path.read_text())
    return found


def main() -> None:
    out = Path(sys.argv[1])
    if "--reader" in sys.argv and "dcp" in sys.argv:
        # what dcp imports on first use (python files read, counted by rchar): before
        import torch.distributed.checkpoint  # noqa: F401
    probe(out)
    from bigmodel_cli.cli import main as bigmodel

    sys.argv = [sys.argv[0], *sys.argv[2:]]
    bigmodel()  # as ``-m bigmodel_cli`` (a rank skips the interpreter's teardown)


if __name__ == "__main__":
    main()
