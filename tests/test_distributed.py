"""Plans over torchrun ranks (``plan --nodes/--procs-per-node``) and carrying them out under
torchrun: each rank reads only its byte ranges, the pipelined forward matches one process,
and a distributed ``shard`` writes what one process writes, or nothing.

The planner and the readers are tested in this process (a one-rank gloo group where a
process group is needed); the torchrun tests are few and small, on CPU with gloo:
``--standalone`` with 2 and 4 processes, and two agents on 127.0.0.1 (2 x 2, so RANK
differs from LOCAL_RANK). What a rank read is counted outside bigmodel as well: by its own
``/proc/self/io`` around its load (:mod:`tests.helpers.rank_io`), and by the page cache for
the reader that maps the files (:mod:`tests.helpers.page_cache`)."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest

from bigmodel_cli.checkpoint import load_checkpoint
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.placement import make_plan
from bigmodel_cli.placement.plan import plan_from_json
from bigmodel_cli.placement.spans import cut, forward_units
from bigmodel_cli.run.ranges import rank_share
from bigmodel_cli.sharding.distributed import divide
from bigmodel_cli.sharding.plan import plan_write
from bigmodel_cli.torchrun import combined
from tests.helpers.checkpoints import llama_config
from tests.helpers.cli import FIXTURES, assert_one_line_error, run_cli
from tests.helpers.page_cache import PAGE, evict, read_around
from tests.helpers.rank_io import PAGES, pages_after, read_counts
from tests.helpers.torchrun import Finished, agents, free_port, run_world, worker_of
from tests.helpers.trees import tree_hash

PIPELINE = FIXTURES / "tiny-pipeline"
# what else a rank's process reads while it loads, beyond its planned bytes: the probe's
# own read of /proc/self/io (about 100 bytes) with ``pread``; with ``dcp`` also what
# torch.distributed.checkpoint reads to list the folder and parse headers (about 29 KB)
OTHER_READS = {"pread": 4 << 10, "dcp": 64 << 10}


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LlamaForCausalLM with tied embeddings (no lm_head.weight saved), sharded."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tied") / "llama"
    LlamaForCausalLM(llama_config(tie=True, layers=6)).save_pretrained(path, max_shard_size="100KB")
    return path


def _plan_doc(source: Path, *args: str) -> dict[str, Any]:
    result = run_cli("plan", source, *args, "--json")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _tensor_bytes(source: Path) -> int:
    return sum(c.nbytes for c in load_checkpoint(source).components)


# ---------------------------------------------------------------- cutting into stages


def _best_bottleneck(sizes: list[int], k: int) -> int:
    cuts = itertools.combinations(range(1, len(sizes)), k - 1)
    return min(
        max(sum(sizes[a:b]) for a, b in zip((0, *c), (*c, len(sizes)), strict=True)) for c in cuts
    )


@pytest.mark.parametrize("seed", range(40))
def test_cut_gives_k_contiguous_non_empty_stages_with_the_smallest_largest_stage(
    seed: int,
) -> None:
    import random

    rng = random.Random(seed)
    sizes = [rng.choice([1, 5, 10, 100, 1000]) for _ in range(rng.randint(1, 9))]
    k = rng.randint(1, len(sizes))
    runs = cut(sizes, k)
    assert len(runs) == k and all(len(r) > 0 for r in runs)
    assert [i for r in runs for i in r] == list(range(len(sizes)))
    assert max(sum(sizes[i] for i in r) for r in runs) == _best_bottleneck(sizes, k)


def test_stage_units_put_the_embedding_first_and_the_norm_and_tied_head_last() -> None:
    names = ["lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"]
    names += [f"model.layers.{i}.mlp.weight" for i in (10, 2, 0, 1)]
    config = {"tie_word_embeddings": True, "architectures": ["LlamaForCausalLM"]}
    units = forward_units([(n, 100) for n in names if n != "lm_head.weight"], config)
    assert [u.prefixes for u in units] == [
        ("model.embed_tokens",),
        ("model.layers.0",),
        ("model.layers.1",),
        ("model.layers.2",),
        ("model.layers.10",),
        ("lm_head", "model.norm"),
    ]
    assert units[-1].nbytes == 200  # the tied head holds the embedding's bytes again


# ---------------------------------------------------------------- the plan


def test_plan_over_ranks_reads_every_tensor_once_plus_the_listed_tied_duplicate(
    tied_llama: Path,
) -> None:
    doc = _plan_doc(tied_llama, "--nodes", "2", "--procs-per-node", "2", "--max-memory", "cpu=1GB")
    assert doc["strategy"] == "pipeline"
    assert doc["world"] == {"nodes": 2, "procs_per_node": 2, "backend": "gloo"}
    ranks = doc["ranks"]
    assert [(r["rank"], r["node"], r["local_rank"]) for r in ranks] == [
        (0, 0, 0),
        (1, 0, 1),
        (2, 1, 0),
        (3, 1, 1),
    ]
    assert ranks[0]["modules"][0] == "model.embed_tokens"
    assert ranks[-1]["modules"][-2:] == ["lm_head", "model.norm"]
    assert ranks[-1]["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    (dup,) = doc["duplicates"]
    assert dup["tensor"] == "model.embed_tokens.weight" and dup["ranks"] == [0, 3]
    for r in ranks:
        assert r["bytes"] == sum(n for spans in r["reads"].values() for _, n in spans)
    assert sum(r["bytes"] for r in ranks) == _tensor_bytes(tied_llama) + dup["bytes"]
    ckpt = load_checkpoint(tied_llama)
    readers: dict[str, list[int]] = {}
    for r in ranks:
        rank = plan_from_json(doc).world.ranks[r["rank"]]  # type: ignore[union-attr]
        for info in rank_share(ckpt, rank, None).tensors:
            readers.setdefault(info.name, []).append(r["rank"])
    assert {n for n, rs in readers.items() if len(rs) > 1} == {"model.embed_tokens.weight"}
    assert len(readers) == len(ckpt.components[0].tensors)


def test_pipeline_of_components_puts_whole_ones_first_and_splits_the_largest() -> None:
    doc = _plan_doc(PIPELINE, "--procs-per-node", "4", "--max-memory", "cpu=2MB")
    ranks = doc["ranks"]
    assert ranks[0]["modules"] == ["text_encoder", "vae"]
    assert all(m.startswith("unet.") for r in ranks[1:] for m in r["modules"])
    assert doc["fits"] is True and doc["duplicates"] == []
    assert sum(r["bytes"] for r in ranks) == _tensor_bytes(PIPELINE)


def test_a_pipeline_that_fits_no_rank_is_planned_balanced_and_marked_not_fitting() -> None:
    result = run_cli("plan", PIPELINE, "--procs-per-node", "2", "--max-memory", "cpu=2MB")
    assert result.code == 0 and "more than the 2.00 MB a rank has" in result.stdout
    again = run_cli(
        "plan", PIPELINE, "--procs-per-node", "2", "--max-memory", "cpu=2MB", "--require-fit"
    )
    assert_one_line_error(again, 3, "--require-fit")


def test_plan_file_round_trips_the_world_and_the_ranks(tied_llama: Path) -> None:
    plan = make_plan(tied_llama, max_memory="0=10MB", procs_per_node=3, reserve="1MB")
    back = plan_from_json(json.loads(json.dumps(plan.to_json())))
    assert back.world == plan.world and back.world is not None
    assert back.world.world.backend == "nccl" and back.devices[0].reserve == 1_000_000


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--nodes", "2"], "give one rank's budget with --max-memory"),
        (["--nodes", "2", "--max-memory", "0=1GB,1=1GB"], "name one rank's device"),
        (["--nodes", "2", "--max-memory", "disk"], "name one rank's device"),
        (["--nodes", "0", "--max-memory", "cpu=1GB"], "--nodes must be at least 1"),
        (["--nodes", "2", "--max-memory", "cpu=1GB", "--strategy", "auto"], "--strategy pipeline"),
    ],
)
def test_bad_requests_for_a_plan_over_ranks_are_one_line_usage_errors(
    args: list[str], needle: str
) -> None:
    assert_one_line_error(run_cli("plan", PIPELINE, *args), 2, needle)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"world": {"nodes": 1, "procs_per_node": 2, "backend": "mpi"}}, "backend"),
        ({"ranks": []}, "must list 2 ranks"),
        ({"bytes": 1}, "not the sum of its reads"),
        ({"reads": {"../x.safetensors": [[0, 1]]}}, "inside the checkpoint"),
    ],
)
def test_read_plan_refuses_an_inconsistent_world(
    tied_llama: Path, change: dict[str, Any], needle: str
) -> None:
    doc = make_plan(tied_llama, max_memory="cpu=1GB", procs_per_node=2).to_json()
    if "world" in change or "ranks" in change:
        doc |= change
    else:
        doc["ranks"][1] |= change
        doc["ranks"][1].setdefault("bytes", doc["ranks"][1]["bytes"])
    with pytest.raises(BigmodelError, match=needle):
        plan_from_json(doc)


def test_a_plan_written_with_each_ranks_runtime_still_reads(tied_llama: Path) -> None:
    """Plans over ranks once carried ``runtime`` per rank (always 0); they read the same."""
    plan = make_plan(tied_llama, max_memory="cpu=1GB", procs_per_node=2)
    doc = plan.to_json()
    assert all("runtime" not in r for r in doc["ranks"])
    for r in doc["ranks"]:
        r["runtime"] = 0
    assert plan_from_json(doc).world == plan.world


def test_a_range_that_splits_a_tensor_is_refused(tied_llama: Path) -> None:
    plan = make_plan(tied_llama, max_memory="cpu=1GB", procs_per_node=2)
    assert plan.world is not None
    rank = plan.world.ranks[0]
    name, spans = next(iter(rank.reads.items()))
    offset, length = spans[0]
    from dataclasses import replace

    cut_short = replace(rank, reads={name: ((offset, length - 4),)})
    with pytest.raises(BigmodelError, match="not whole tensors"):
        rank_share(load_checkpoint(tied_llama), cut_short, None)


def test_plan_over_ranks_does_not_import_torch(tied_llama: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom bigmodel_cli.cli import run_main\n"
        f"code = run_main(['plan', {str(tied_llama)!r}, '--nodes', '2', '--max-memory', "
        "'0=80GB', '--json'])\nsys.stderr.write('torch: %s' % ('torch' in sys.modules))\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "torch: False" in proc.stderr


def test_run_of_a_plan_over_ranks_outside_torchrun_says_how_to_start_it(
    tied_llama: Path, tmp_path: Path
) -> None:
    plan = make_plan(tied_llama, max_memory="cpu=1GB", nodes=2, procs_per_node=2)
    path = plan.save(tmp_path / "plan.json").path
    result = run_cli("run", tied_llama, "--plan", path)
    assert_one_line_error(result, 2, "torchrun with --nnodes=2, --nproc-per-node=2")


def test_torchrun_only_flags_outside_torchrun_are_refused(tied_llama: Path) -> None:
    result = run_cli("run", tied_llama, "--plan", "plan.json", "--microbatches", "2")
    assert_one_line_error(result, 2, "under torchrun")


# ---------------------------------------------------------------- pure helpers of the ranks


def test_output_files_are_dealt_to_ranks_by_bytes_and_rank_0_writes_the_rest(
    tmp_path: Path,
) -> None:
    ckpt = load_checkpoint(PIPELINE)
    plan = plan_write(ckpt, tmp_path / "out", "shard", 300_000, None)
    shares = divide(plan, 3)
    files = {c.path(f.name): f.nbytes for c in plan.components for f in c.files}
    assert set().union(*shares) >= set(files)
    assert sum(len(s & set(files)) for s in shares) == len(files)  # each file once
    loads = [sum(files[p] for p in s if p in files) for s in shares]
    assert max(loads) - min(loads) <= max(files.values())
    extras = {c.path(c.index_name) for c in plan.components if c.index_name}
    extras |= {copy.target for copy in plan.copies}
    assert extras <= shares[0] and not extras & (shares[1] | shares[2])


def test_ranks_errors_become_one_line() -> None:
    same = ("plan.json: bad", 2)
    assert combined([None, None]) is None
    assert combined([same, same]) == same
    assert combined([None, same]) == ("rank 1: plan.json: bad", 2)
    assert combined([same, ("other", 2), ("third", 2)]) == (
        "rank 0: plan.json: bad (and 2 other errors on other ranks)",
        2,
    )


# ---------------------------------------------------------------- one rank, in this process


@pytest.fixture
def one_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun's environment for a world of one process (a gloo group in this process)."""
    from tests.helpers.torchrun import free_port

    for name, value in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "GROUP_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("reader", ["pread", "dcp"])
def test_both_readers_report_the_planned_bytes_as_read_and_verify_in_one_process(
    one_rank: None, tied_llama: Path, tmp_path: Path, reader: str
) -> None:
    plan = make_plan(tied_llama, max_memory="cpu=1GB", procs_per_node=1)
    path = plan.save(tmp_path / "plan.json").path
    result = run_cli("run", tied_llama, "--plan", path, "--verify", "--reader", reader, "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    (rank,) = doc["ranks"]
    assert rank["bytes_read"] == rank["planned"] == _tensor_bytes(tied_llama)
    assert doc["verified"] and doc["reader"] == reader
    assert rank["tensors"] == len(load_checkpoint(tied_llama).components[0].tensors)


def test_verify_names_a_loaded_tensor_that_differs_from_the_file(
    one_rank: None, tied_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bigmodel_cli.run import ranges

    real = ranges.tensor_of

    def corrupted(buf: Any, at: int, info: Any) -> Any:
        tensor = real(buf, at, info).clone()
        tensor.view(-1)[0] += 1
        return tensor

    monkeypatch.setattr(ranges, "tensor_of", corrupted)
    plan = make_plan(tied_llama, max_memory="cpu=1GB", procs_per_node=1)
    path = plan.save(tmp_path / "plan.json").path
    result = run_cli("run", tied_llama, "--plan", path, "--verify")
    assert_one_line_error(result, 2, "differs from the bytes in the file", "tensor '")


def test_a_world_size_other_than_the_plans_is_one_line(
    one_rank: None, tied_llama: Path, tmp_path: Path
) -> None:
    plan = make_plan(tied_llama, max_memory="cpu=1GB", procs_per_node=2)
    path = plan.save(tmp_path / "plan.json").path
    result = run_cli("run", tied_llama, "--plan", path)
    assert_one_line_error(result, 2, "torchrun with --nnodes=1, --nproc-per-node=2")


# ---------------------------------------------------------------- under torchrun (gloo, cpu)


def _json(finished: Finished) -> dict[str, Any]:
    assert finished.code == 0, finished.stderr[-3000:]
    return json.loads(finished.stdout)  # type: ignore[no-any-return]


def _reference_logits(source: Path, ids: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source).eval()
    with torch.no_grad():
        return model(ids).logits


def _check_kernel_counts(probe: Path, plan: dict[str, Any], reader: str = "pread") -> None:
    """What each rank's load read, as its own ``/proc/self/io`` counts it (``rchar``: every
    read call of the process, ours or not): its planned bytes with the ``pread`` reader, and
    at most :data:`OTHER_READS` more; with ``dcp``, which maps the files (page faults, not
    read calls), nothing but those."""
    counts = read_counts(probe)
    assert sorted(counts) == [r["rank"] for r in plan["ranks"]]
    for r in plan["ranks"]:
        rchar = counts[r["rank"]]["rchar"]
        least = r["bytes"] if reader == "pread" else 0
        assert least <= rchar <= least + OTHER_READS[reader], (r["rank"], rchar, r["bytes"])


def _check_run(
    doc: dict[str, Any], plan: dict[str, Any], source: Path, probe: Path | None = None
) -> None:
    """Each rank read its planned bytes (as it counts them, and as the kernel counts them
    where ``probe`` holds the ranks' counters); all of them the checkpoint plus the
    duplicates."""
    ranks = {r["rank"]: r for r in doc["ranks"]}
    assert sorted(ranks) == list(range(len(plan["ranks"])))
    if probe is not None:
        _check_kernel_counts(probe, plan)
    for r in plan["ranks"]:
        assert ranks[r["rank"]]["bytes_read"] == r["bytes"], r["rank"]
        assert (ranks[r["rank"]]["node"], ranks[r["rank"]]["local_rank"]) == (
            r["node"],
            r["local_rank"],
        )
    duplicates = sum(d["bytes"] * (len(d["ranks"]) - 1) for d in plan["duplicates"])
    assert (
        doc["bytes_read"]
        == _tensor_bytes(source) + duplicates
        == doc["checkpoint_bytes"] + doc["duplicate_bytes"]
    )
    assert doc["verified"] is True


@pytest.mark.parametrize(("nodes", "procs"), [(1, 2), (2, 2)])
def test_ranks_read_only_their_ranges_and_the_pipelined_logits_match_one_process(
    tied_llama: Path, tmp_path: Path, nodes: int, procs: int
) -> None:
    from safetensors.torch import load_file

    plan_path = tmp_path / "plan.json"
    plan = _plan_doc(
        tied_llama,
        "--nodes",
        str(nodes),
        "--procs-per-node",
        str(procs),
        "--max-memory",
        "cpu=1GB",
        "-o",
        str(plan_path),
    )
    out = tmp_path / "logits.safetensors"
    args = [
        "run",
        tied_llama,
        "--plan",
        plan_path,
        "--verify",
        "--forward",
        "--json",
        "--input-ids",
        "3,1,4,1,5,9;2,6,5,3,5,8",
        "--microbatches",
        "2",
        "--forward-output",
        out,
    ]
    found = run_world(args, procs, tmp_path, nodes, probe=tmp_path)
    doc = _json(found[0])
    assert all(f.code == 0 and not f.stdout for f in found[1:])  # rank 0 alone reports
    _check_run(doc, plan, tied_llama, tmp_path)
    assert doc["forward"]["stages"] == nodes * procs and doc["forward"]["output_shape"] == [
        2,
        6,
        512,
    ]
    saved = load_file(out)
    assert saved["input_ids"].tolist() == [[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 5, 8]]
    import torch

    want = _reference_logits(tied_llama, saved["input_ids"])
    assert torch.allclose(saved["output"], want, atol=1e-5, rtol=1e-5)


def test_four_ranks_of_the_pipeline_read_their_planned_bytes(tmp_path: Path) -> None:
    plan_path = tmp_path / "plan.json"
    plan = _plan_doc(
        PIPELINE, "--procs-per-node", "4", "--max-memory", "cpu=2MB", "-o", str(plan_path)
    )
    (finished,) = run_world(
        ["run", PIPELINE, "--plan", plan_path, "--verify", "--json"], 4, tmp_path, probe=tmp_path
    )
    _check_run(_json(finished), plan, PIPELINE, tmp_path)


def _gapped_checkpoint(folder: Path, gap: int) -> Path:
    """A sparse file of three tensors: two small ones around a ``gap`` bytes one."""
    from bigmodel_cli.formats.safetensors import HeaderEntry, build_header

    sizes = [256 << 10, gap, 256 << 10]
    entries = [HeaderEntry(f"layers.{i}.weight", "F32", (n // 4,)) for i, n in enumerate(sizes)]
    header = build_header(entries, {"format": "pt"})
    path = folder / "model.safetensors"
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + sum(sizes))
    return path


@pytest.mark.parametrize("reader", ["pread", "dcp"])
def test_each_rank_reads_only_its_ranges_as_the_kernel_counts_them(
    tmp_path: Path, reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 0 reads a small tensor, rank 1 the large one after it and a small one. Counted
    outside bigmodel: each rank's ``rchar`` around its load, and the page cache, which shows
    what a mapped reader faulted in: the file's pages dropped first, the ranks load in turn
    (:mod:`tests.helpers.rank_io`), and after rank 0 the middle of rank 1's tensor (16 x this
    file system's read-around long, no readahead reaches its middle half) is not read."""
    source = tmp_path / "gapped"
    source.mkdir()
    around = read_around(tmp_path)
    path = _gapped_checkpoint(source, 16 * around)
    first, large, last = load_checkpoint(source).components[0].tensors
    doc = make_plan(source, max_memory="cpu=1GB", procs_per_node=2).to_json()
    shares = ((first.start, first.nbytes), (large.start, large.nbytes + last.nbytes))
    for rank, (start, length) in zip(doc["ranks"], shares, strict=True):
        rank["reads"] = {path.name: [[start, length]]}
        rank["bytes"] = length
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(doc))
    probe = tmp_path / "probe"
    probe.mkdir()
    monkeypatch.setenv(PAGES, str(path))
    evict(path)
    args = ["run", source, "--plan", plan_path, "--reader", reader, "--json"]
    (finished,) = run_world(args, 2, tmp_path, probe=probe)
    report = _json(finished)
    assert [r["bytes_read"] for r in report["ranks"]] == [n for _, n in shares]
    _check_kernel_counts(probe, doc, reader)
    after_0, after_1 = (pages_after(probe, r)[str(path)] for r in (0, 1))
    middle = slice((large.start + 4 * around) // PAGE, (large.end - 4 * around) // PAGE)
    assert sum(after_0[first.start // PAGE : first.end // PAGE]) > 0
    assert sum(after_0[middle]) == 0, "rank 0 read outside its range"
    assert all(after_1[large.start // PAGE + 1 : large.end // PAGE])  # rank 1 read its own
    evict(path)


@pytest.mark.parametrize(
    ("nodes", "procs", "command"), [(1, 2, "shard"), (2, 2, "shard"), (1, 4, "merge")]
)
def test_distributed_writes_are_byte_identical_to_one_process(
    tmp_path: Path, nodes: int, procs: int, command: str
) -> None:
    source = PIPELINE
    if command == "merge":  # merge a sharded pipeline: several output files, one per component
        source = tmp_path / "sharded"
        assert run_cli("shard", PIPELINE, "-o", source, "--max-shard-size", "300KB").code == 0
    limit = ["--max-shard-size", "300KB"] if command == "shard" else []
    alone = run_cli(command, source, "-o", tmp_path / "alone", *limit)
    assert alone.code == 0, alone.stderr
    found = run_world(
        [command, source, "-o", tmp_path / "ranks", *limit, "--json"], procs, tmp_path, nodes
    )
    assert _json(found[0])["output"] == str(tmp_path / "ranks")
    assert tree_hash(tmp_path / "ranks") == tree_hash(tmp_path / "alone")
    assert [p.name for p in tmp_path.iterdir() if ".bigmodel-" in p.name] == []


def _slow_checkpoint(path: Path, tensors: int = 4, gigabytes: float = 0.4) -> Path:
    """A sparse safetensors file of several big zero tensors: each its own output shard."""
    from bigmodel_cli.formats.safetensors import HeaderEntry, build_header

    count = int(gigabytes * 1e9) // 4
    entries = [HeaderEntry(f"layers.{i}.weight", "F32", (count,)) for i in range(tensors)]
    header = build_header(entries, {"format": "pt"})
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + tensors * count * 4)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("nodes", "victim"), [(1, 1), (1, 0), (2, 1)])
def test_a_rank_killed_mid_shard_leaves_no_out_and_every_process_exits(
    tmp_path: Path, nodes: int, victim: int
) -> None:
    import signal
    import time

    from tests.helpers.trees import wait_for_temp_data

    source = _slow_checkpoint(tmp_path / "big.safetensors")
    args = ["shard", source, "-o", tmp_path / "out", "--max-shard-size", "400MB"]
    with agents() as group:
        port = free_port()
        procs = [group.launch(args, 2, tmp_path, nodes, k, port) for k in range(nodes)]
        pid = worker_of(procs[victim // 2], victim)
        wait_for_temp_data(tmp_path)
        began = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        results = [group.finish(p, seconds=60) for p in procs]
        assert time.monotonic() - began < 60
    assert all(r.code != 0 for r in results)
    for r in results:  # our own lines: one per process at most, never a traceback of ours
        assert all("Traceback" not in line for line in r.bigmodel_lines())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors"]


def test_ranks_fetch_only_their_ranges_of_a_hub_repo_not_in_the_cache(
    tied_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers.hub_env import serve

    with serve(monkeypatch, tmp_path / "hf", test__llama=tied_llama) as hub:
        plan = make_plan("test/llama", max_memory="cpu=1GB", procs_per_node=2)
        path = plan.save(tmp_path / "plan.json").path
        hub.reset_counts()
        (finished,) = run_world(["run", "test/llama", "--plan", path, "--json"], 2, tmp_path)
        doc = _json(finished)
        sent = {p: n for p, n in hub.bytes_sent.items() if p.endswith(".safetensors")}
        asked = [r.range for r in hub.requests if r.path.endswith(".safetensors")]
    assert plan.world is not None
    for r in doc["ranks"]:
        assert r["bytes_read"] == r["planned"] == plan.world.ranks[r["rank"]].bytes
    assert sum(sent.values()) == doc["bytes_read"] == _tensor_bytes(tied_llama) + 131072
    spans = {(a, a + n - 1) for r in plan.world.ranks for v in r.reads.values() for a, n in v}
    assert asked and all(
        any(a <= int(x) and int(y) <= b for a, b in spans)
        for x, y in (text.removeprefix("bytes=").split("-") for text in asked if text)
    )
    assert not (tmp_path / "hf" / "hub").exists()  # nothing downloaded into the cache


def test_bad_input_under_torchrun_is_one_line_from_rank_0(tied_llama: Path, tmp_path: Path) -> None:
    plan = make_plan(tied_llama, max_memory="cpu=1GB", procs_per_node=4)
    path = plan.save(tmp_path / "plan.json").path
    (finished,) = run_world(["run", tied_llama, "--plan", path], 2, tmp_path)
    assert finished.code != 0 and not finished.stdout
    (line,) = finished.bigmodel_lines()
    assert line.startswith("bigmodel: error: ") and "--nproc-per-node=4" in line
