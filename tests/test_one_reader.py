"""Small files are read in one place (``formats/files.py``) and limited in one place: a
second reader, a second JSON parser of files or a second size limit fails here."""

from __future__ import annotations

import re

from tests.helpers import ROOT

PACKAGE = ROOT / "bigmodel_cli"
READS = re.compile(r"\.read_text\(|\.read_bytes\(|json\.loads?\(")
LIMIT = re.compile(r"^MAX_\w*_BYTES\s*=", re.MULTILINE)
ALLOWED_READS = {
    "formats/json.py",  # the one parser of small files (their bytes from files.py)
    "devices.py",  # /proc/meminfo, the kernel's
    "runtime/tracing.py",  # the worker protocol on a pipe
    "checkpoint/hub.py",  # an index body fetched from the Hub, before it is a file
}


def _modules() -> dict[str, str]:
    return {p.relative_to(PACKAGE).as_posix(): p.read_text() for p in PACKAGE.rglob("*.py")}


def test_small_files_are_read_through_the_one_reader() -> None:
    found = sorted(name for name, text in _modules().items() if READS.search(text))
    assert set(found) <= ALLOWED_READS, sorted(set(found) - ALLOWED_READS)


def test_size_limits_live_in_one_module() -> None:
    found = sorted(name for name, text in _modules().items() if LIMIT.search(text))
    assert found == ["formats/files.py"], found
