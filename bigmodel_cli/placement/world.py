"""Plans over many processes: the world (nodes x processes per node) and each rank's share.

A plan made with ``--nodes`` / ``--procs-per-node`` carries a :class:`WorldPlan`: the
world torchrun will start, and per rank what it holds (``modules``) and every byte range
it reads (``reads``: file -> ``[[offset, length], ...]``, absolute offsets, tensor data
only). A tensor read by more than one rank (a tied head that reads its embedding again on
the last span) is listed in ``duplicates``. Plain data and its JSON, both ways; nothing
here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.files import is_count

BACKENDS = ("nccl", "gloo")
Ranges = tuple[tuple[int, int], ...]  # (offset, length) in a file


@dataclass(frozen=True)
class World:
    """What torchrun starts: ``nodes`` x ``procs_per_node`` processes, one rank each."""

    nodes: int
    procs_per_node: int
    backend: str  # "nccl" (a GPU per rank) or "gloo" (cpu ranks)

    @property
    def size(self) -> int:
        return self.nodes * self.procs_per_node


@dataclass(frozen=True)
class RankPlan:
    """One rank: where it runs, what it holds, and the byte ranges it reads."""

    rank: int
    node: int
    local_rank: int
    device: str  # "cuda" (the rank's own GPU, cuda:LOCAL_RANK) or "cpu"
    bytes: int  # bytes read: the sum of ``reads``
    modules: tuple[str, ...]  # module prefixes (``unet.down_blocks.0`` in a pipeline)
    reads: Mapping[str, Ranges]  # file (relative to the checkpoint) -> ranges
    weights: int = 0  # bytes held at the plan's dtype
    tied: Mapping[str, str] = field(default_factory=dict)  # tensor -> the saved one it reads


@dataclass(frozen=True)
class Duplicate:
    """A tensor whose bytes more than one rank reads."""

    tensor: str
    file: str
    bytes: int
    ranks: tuple[int, ...]


@dataclass(frozen=True)
class WorldPlan:
    world: World
    ranks: tuple[RankPlan, ...]
    duplicates: tuple[Duplicate, ...] = ()

    def to_json(self) -> dict[str, Any]:
        w = self.world
        return {
            "world": {"nodes": w.nodes, "procs_per_node": w.procs_per_node, "backend": w.backend},
            "ranks": [
                {
                    "rank": r.rank,
                    "node": r.node,
                    "local_rank": r.local_rank,
                    "device": r.device,
                    "bytes": r.bytes,
                    "weights": r.weights,
                    "modules": list(r.modules),
                    "reads": {f: [list(x) for x in ranges] for f, ranges in r.reads.items()},
                    "tied": dict(r.tied),
                }
                for r in self.ranks
            ],
            "duplicates": [
                {"tensor": d.tensor, "file": d.file, "bytes": d.bytes, "ranks": list(d.ranks)}
                for d in self.duplicates
            ],
        }


def ranges_bytes(reads: Mapping[str, Ranges]) -> int:
    return sum(length for ranges in reads.values() for _, length in ranges)


# ---------------------------------------------------------------- reading


def world_from_json(doc: Mapping[str, Any], path: Path | None) -> WorldPlan | None:
    """The ``world`` / ``ranks`` / ``duplicates`` keys of a plan document, checked; None
    for a plan of one machine."""
    raw = doc.get("world")
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(
        is_count(raw.get(k), positive=True) for k in ("nodes", "procs_per_node")
    ):
        raise BigmodelError(
            "plan 'world' needs positive integer 'nodes' and 'procs_per_node'", path
        )
    if raw.get("backend") not in BACKENDS:
        raise BigmodelError(f"plan world backend must be one of {', '.join(BACKENDS)}", path)
    world = World(raw["nodes"], raw["procs_per_node"], raw["backend"])
    entries = doc.get("ranks")
    if not isinstance(entries, list) or len(entries) != world.size:
        raise BigmodelError(
            f"plan 'ranks' must list {world.size} ranks ({world.nodes} x {world.procs_per_node})",
            path,
        )
    ranks = tuple(_rank(entry, r, world, path) for r, entry in enumerate(entries))
    found = WorldPlan(world, ranks, _duplicates(doc.get("duplicates"), path))
    problem = read_twice(found)
    if problem is not None:
        raise BigmodelError(f"plan ranks: {problem}", path)
    return found


def read_twice(plan: WorldPlan) -> str | None:
    """Bytes that two ranks (or one rank twice) read, other than a listed duplicate (a tied
    tensor re-read on another rank): what is wrong, or None."""
    by_file: dict[str, list[tuple[int, int, int]]] = {}
    for rank in plan.ranks:
        for file, ranges in rank.reads.items():
            by_file.setdefault(file, []).extend((a, a + n, rank.rank) for a, n in ranges if n)
    for file, spans in by_file.items():
        spans.sort()
        end, r = spans[0][1], spans[0][2]  # the span reaching furthest so far
        for b, b_end, s in spans[1:]:
            overlap = min(end, b_end) - b
            if overlap > 0 and not _listed(plan.duplicates, file, {r, s}, overlap):
                return f"ranks {r} and {s} both read bytes {b}-{b + overlap} of {file}"
            if b_end > end:
                end, r = b_end, s
    return None


def _listed(duplicates: tuple[Duplicate, ...], file: str, ranks: set[int], n: int) -> bool:
    return any(
        d.file == file and ranks <= set(d.ranks) and len(ranks) > 1 and n <= d.bytes
        for d in duplicates
    )


def coverage_gap(plan: WorldPlan, spans: Mapping[str, list[tuple[int, int]]]) -> str | None:
    """The ranks' reads against the checkpoint's tensors (``file -> [(start, end)]``):
    together they must read every tensor byte and nothing else; what is wrong, or None."""
    wanted = {f: _union(s) for f, s in spans.items()}
    read: dict[str, list[tuple[int, int]]] = {}
    for r in plan.ranks:
        for file, ranges in r.reads.items():
            read.setdefault(file, []).extend((a, a + n) for a, n in ranges)
    got = {f: _union(s) for f, s in read.items()}
    for file in sorted(set(wanted) | set(got)):
        if wanted.get(file, []) != got.get(file, []):
            return f"the ranks' reads of {file} do not cover its tensors exactly once"
    return None


def _union(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _rank(entry: Any, r: int, world: World, path: Path | None) -> RankPlan:
    if not isinstance(entry, dict):
        raise BigmodelError(f"plan rank {r} is not an object", path)
    where = (entry.get("rank"), entry.get("node"), entry.get("local_rank"))
    expected = (r, r // world.procs_per_node, r % world.procs_per_node)
    if where != expected:
        raise BigmodelError(
            f"plan rank {r} must have rank, node, local_rank = {expected}, not {where}", path
        )
    if entry.get("device") not in ("cuda", "cpu"):
        raise BigmodelError(f"plan rank {r}: device must be 'cuda' or 'cpu'", path)
    reads = _reads(entry.get("reads"), r, path)
    if entry.get("bytes") != ranges_bytes(reads):
        raise BigmodelError(f"plan rank {r}: 'bytes' is not the sum of its reads", path)
    modules, tied = entry.get("modules"), entry.get("tied") or {}
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise BigmodelError(f"plan rank {r}: 'modules' is not a list of prefixes", path)
    if not isinstance(tied, dict) or not all(isinstance(v, str) for v in tied.values()):
        raise BigmodelError(f"plan rank {r}: 'tied' is not an object of tensor names", path)
    return RankPlan(
        rank=r,
        node=expected[1],
        local_rank=expected[2],
        device=entry["device"],
        bytes=entry["bytes"],
        modules=tuple(modules),
        reads=reads,
        weights=entry["weights"] if is_count(entry.get("weights")) else 0,
        tied=dict(tied),
    )


def _reads(raw: Any, r: int, path: Path | None) -> dict[str, Ranges]:
    if not isinstance(raw, dict):
        raise BigmodelError(f"plan rank {r}: 'reads' is not an object of file -> ranges", path)
    reads: dict[str, Ranges] = {}
    for name, ranges in raw.items():
        ok = isinstance(ranges, list) and all(
            isinstance(x, list) and len(x) == 2 and is_count(x[0]) and is_count(x[1])
            for x in ranges
        )
        if not ok or Path(name).is_absolute() or ".." in Path(name).parts:
            raise BigmodelError(
                f"plan rank {r}: reads of {name!r} must be [[offset, length], ...] in a file "
                "inside the checkpoint",
                path,
            )
        reads[name] = tuple((a, n) for a, n in ranges)
    return reads


def _duplicates(raw: Any, path: Path | None) -> tuple[Duplicate, ...]:
    if raw is None:
        return ()
    ok = isinstance(raw, list) and all(
        isinstance(d, dict)
        and isinstance(d.get("tensor"), str)
        and isinstance(d.get("file"), str)
        and is_count(d.get("bytes"))
        and isinstance(d.get("ranks"), list)
        for d in raw
    )
    if not ok:
        raise BigmodelError("plan 'duplicates' is not a list of {tensor, file, bytes, ranks}", path)
    return tuple(Duplicate(d["tensor"], d["file"], d["bytes"], tuple(d["ranks"])) for d in raw)
