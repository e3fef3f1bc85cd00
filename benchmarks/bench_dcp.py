"""``bigmodel merge`` of a torch.distributed.checkpoint folder against ``cp`` and torch's own way.

Run: ``.venv/bin/python benchmarks/bench_dcp.py`` (``BIGMODEL_BENCH_DCP_GB=1`` for a quick
run; default 3.7 GB of fp32 weights in Llama-7B shapes). The folder is written by the real
writer from 4 gloo ranks under torchrun (:mod:`dcp_bench_writer`: FSDP2-style row shards as
DTensors, AdamW's two moments beside them, one ``__R_0.distcp`` per rank). Then, page cache
warm, in turns and repeated: ``cp`` of the model's bytes (the merged file) and ``bigmodel
merge``; then once torch's way (the loader of ``dcp_to_torch_save``, limited to the model's
keys, then safetensors' ``save_file``). Targets: merge at most 1.25x ``cp``, its peak RSS at most
300 MB plus the largest tensor. Exits 1 when a target is missed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_shard import _remove, interleaved  # noqa: E402
from common import BIGMODEL, Measured, row, table_header, temp_dir  # noqa: E402

HERE = Path(__file__).resolve().parent
MAX_RATIO = 1.25
BASE_RSS = 300_000_000
REPEAT = int(os.environ.get("BIGMODEL_BENCH_REPEAT", "3"))
RANKS = 4

# torch's way to safetensors: dcp_to_torch_save's loader (every tensor in memory; only the
# model's keys, which spares it the optimizer state), then save_file.
TORCH_SCRIPT = """
import os, sys
from safetensors.torch import save_file
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

state = {}
_load_state_dict(state, storage_reader=FileSystemReader(sys.argv[1]),
                 planner=_EmptyStateDictLoadPlanner(keys={"model"}), no_dist=True)
os.makedirs(sys.argv[2], exist_ok=True)
save_file(state["model"], os.path.join(sys.argv[2], "model.safetensors"))
"""


def write_checkpoint(folder: Path, gb: float) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536")
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--standalone", f"--nproc-per-node={RANKS}",
           str(HERE / "dcp_bench_writer.py"), str(folder), str(gb)]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    from bigmodel_cli.formats.safetensors import read_header

    gb = float(os.environ.get("BIGMODEL_BENCH_DCP_GB", "3.7"))
    with temp_dir() as tmp:
        source = tmp / "step-1000"
        write_checkpoint(source, gb)
        disk = sum(f.stat().st_size for f in source.iterdir())
        merged, theirs, copy = tmp / "merged", tmp / "torch", tmp / "copy.safetensors"
        merge_cmd = [BIGMODEL, "merge", str(source), "-o", str(merged)]
        subprocess.run(merge_cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        model = merged / "model.safetensors"
        kept = tmp / "model.safetensors"
        os.rename(model, kept)  # the model's bytes, for cp; and to check torch's against
        _remove(merged)
        largest = max(t.nbytes for t in read_header(kept).tensors)
        size = kept.stat().st_size
        # cp and merge in turns, each reading bytes the page cache holds (the merge above
        # read the model's chunks in; the optimizer's are never read); torch's way after,
        # once: its 4 GB of tensors would push them out
        timed = interleaved(
            {"cp": (["cp", str(kept), str(copy)], copy), "merge": (merge_cmd, merged)}, REPEAT
        )
        torch_cmd = [sys.executable, "-c", TORCH_SCRIPT, str(source), str(theirs)]
        torch_way = interleaved({"torch": (torch_cmd, theirs)}, repeat=1)["torch"]
        _check_same(kept, merge_cmd, merged, theirs, source)
    cp, merge = timed["cp"], timed["merge"]
    print(
        table_header(
            f"DCP folder from {RANKS} ranks: {size / 1e9:.2f} GB of fp32 weights "
            f"({disk / 1e9:.2f} GB on disk with AdamW's moments), warm page cache"
        )
    )
    print(row("cp of the model's bytes (baseline)", cp))
    print(row("bigmodel merge", merge, cp))
    print(row("torch: dcp_to_torch_save's loader (model keys) + save_file", torch_way, cp))
    return _check(merge, cp, largest)


def _check_same(kept: Path, merge_cmd: list[str], merged: Path, theirs: Path, source: Path) -> None:
    """The merged file is the same bytes run after run, and holds torch's tensors."""
    import torch
    from safetensors.torch import load_file

    subprocess.run(merge_cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if (merged / "model.safetensors").read_bytes() != kept.read_bytes():
        raise SystemExit("merge wrote different bytes on a second run")
    _remove(merged)
    subprocess.run([sys.executable, "-c", TORCH_SCRIPT, str(source), str(theirs)], check=True)
    ours, reference = load_file(kept), load_file(theirs / "model.safetensors")
    if sorted(ours) != sorted(reference) or not all(
        torch.equal(ours[k], reference[k]) for k in reference
    ):
        raise SystemExit("merge's tensors differ from torch's")
    _remove(theirs)


def _check(merge: Measured, cp: Measured, largest: int) -> int:
    missed = []
    ratio = merge.seconds / cp.seconds
    if ratio > MAX_RATIO:
        missed.append(f"merge took {ratio:.2f}x cp (target <= {MAX_RATIO}x)")
    limit = BASE_RSS + largest
    if merge.peak_rss > limit:
        missed.append(
            f"merge peak RSS {merge.peak_rss / 1e6:.0f} MB (target <= {limit / 1e6:.0f} MB: "
            f"300 MB + the largest tensor, {largest / 1e6:.0f} MB)"
        )
    print()
    for line in missed:
        print(f"MISSED: {line}")
    if not missed:
        print(f"targets met: merge <= {MAX_RATIO}x cp, peak RSS <= {limit / 1e6:.0f} MB")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
