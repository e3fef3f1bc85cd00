"""The one GPU reader's staging (two buffers, stretches of the file, parts of tensors
copied across stretches), checked on cpu where it runs the same code, for a load's files,
a torchrun rank's byte ranges and Hub ranges; and the peak counters reset only once CUDA
is initialised (a failure only a GPU showed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bigmodel_cli.checkpoint import load_checkpoint
from bigmodel_cli.devices import reset_gpu_peaks
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats import format_of
from bigmodel_cli.formats.base import TensorInfo
from bigmodel_cli.placement import make_plan
from bigmodel_cli.progress import NullProgress
from bigmodel_cli.run.gpu_reader import FileSource, StagedReader, stretches
from bigmodel_cli.run.hub_ranges import read_hub
from bigmodel_cli.run.ranges import Share, file_source, rank_share, read_ranges
from tests.helpers.cli import FIXTURES


def _info(name: str, start: int, end: int) -> TensorInfo:
    return TensorInfo(name, "U8", (end - start,), Path("f"), start, end)


def test_stretches_cover_the_tensors_read_and_never_a_gap() -> None:
    infos = [_info("a", 0, 10), _info("b", 10, 30), _info("d", 40, 45), _info("e", 45, 100)]
    assert list(stretches(infos, 25)) == [(0, 25), (25, 30), (40, 65), (65, 90), (90, 100)]
    assert list(stretches(infos, 1000)) == [(0, 30), (40, 100)]
    assert list(stretches([_info("z", 7, 7)], 10)) == []  # nothing to read for empty tensors


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    tensors = {
        "big": torch.randn(300, 7),  # spans several 1 KiB stretches
        "half": torch.randn(33).half(),
        "bf": torch.randn(5, 5).bfloat16(),
        "ints": torch.arange(17, dtype=torch.int64),
        "flags": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 4),
        "f8": torch.randn(9).to(torch.float8_e4m3fn),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, path)
    return path


@pytest.mark.parametrize("subset", ["all", "some"])
def test_staged_tensors_equal_safe_open_s(checkpoint: Path, subset: str) -> None:
    fmt = format_of(checkpoint)
    assert fmt is not None
    infos = list(fmt.read(checkpoint).tensors)
    if subset == "some":  # gaps between the tensors read, as when a file is split
        infos = [t for t in infos if t.name in ("big", "ints", "f8", "empty")]
    done: list[int] = []
    with StagedReader(pinned=False, threads=2, size=1024) as reader, FileSource(checkpoint) as f:
        got = reader.load(f, infos, "cpu", done.append)
    assert reader.bytes_read == sum(done)
    assert sum(done) == sum(t.nbytes for t in infos)
    assert max(done) <= 1024
    with safe_open(checkpoint, framework="pt") as f:
        for info, tensor in zip(infos, got, strict=True):
            want = f.get_tensor(info.name)
            assert tensor.dtype == want.dtype and tensor.shape == want.shape, info.name
            same = tensor.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)
            assert torch.equal(*same), info.name


def test_a_short_file_is_one_error_naming_it(checkpoint: Path) -> None:
    fmt = format_of(checkpoint)
    assert fmt is not None
    infos = list(fmt.read(checkpoint).tensors)
    with checkpoint.open("r+b") as f:
        f.truncate(checkpoint.stat().st_size - 100)
    short = pytest.raises(BigmodelError, match="shorter than its header")
    reader = StagedReader(pinned=False, threads=1, size=1024)
    with reader, FileSource(checkpoint) as f, short as err:
        reader.load(f, infos, "cpu", lambda n: None)
    assert err.value.path == str(checkpoint)


def _equal_to_the_files(tensors: list[tuple[TensorInfo, torch.Tensor]]) -> None:
    for info, tensor in tensors:
        with safe_open(info.file, framework="pt") as f:
            want = f.get_tensor(info.name)
        assert tensor.dtype == want.dtype and tensor.shape == want.shape, info.name
        assert torch.equal(tensor.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8))


def _shares(source: str | Path) -> list[Share]:
    plan = make_plan(source, max_memory="cpu=1GB", procs_per_node=2)
    assert plan.world is not None
    ckpt = load_checkpoint(source)
    return [rank_share(ckpt, rank, None) for rank in plan.world.ranks]


@pytest.mark.parametrize("staged", [False, True], ids=["direct", "staged"])
def test_a_ranks_ranges_read_directly_or_through_the_gpu_reader_are_the_files(
    staged: bool,
) -> None:
    """The ranks' reader: on cpu into one buffer per range; on a GPU through the one
    StagedReader, run here on cpu with small buffers (so stretches cross tensors)."""
    shares = _shares(FIXTURES / "tiny-llama")
    for share in shares:
        reader = StagedReader(pinned=False, threads=2, size=4096) if staged else None
        read = read_ranges(share, file_source, "cpu", None, NullProgress(), reader)
        assert read.bytes_read == share.nbytes > 0
        assert [i for i, _ in read.tensors] == list(share.tensors)
        _equal_to_the_files(read.tensors)
    assert sum(s.nbytes for s in shares) >= sum(
        c.nbytes for c in load_checkpoint(FIXTURES / "tiny-llama").components
    )


def test_hub_ranges_go_through_the_gpu_reader_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers.hub_env import serve

    local = {(i.name, i.start): i for s in _shares(FIXTURES / "tiny-llama") for i in s.tensors}
    with serve(monkeypatch, tmp_path / "hf", test__llama=FIXTURES / "tiny-llama") as hub:
        ckpt = load_checkpoint("test/llama")
        shares = _shares("test/llama")
        hub.reset_counts()
        for share in shares:
            reader = StagedReader(pinned=False, threads=2, size=4096)
            read = read_hub(ckpt, share, "cpu", None, NullProgress(), reader)
            assert read.bytes_read == reader.bytes_read == share.nbytes  # all through it
            for info, tensor in read.tensors:  # the same bytes as the local files'
                _equal_to_the_files([(local[(info.name, info.start)], tensor)])
        sent = sum(n for p, n in hub.bytes_sent.items() if p.endswith(".safetensors"))
    assert sent == sum(s.nbytes for s in shares)


def test_gpu_peaks_are_reset_only_after_cuda_is_initialised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[object] = []
    monkeypatch.setattr(torch.cuda, "init", lambda: calls.append("init"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", calls.append)
    reset_gpu_peaks({"cpu", 0, 1, "disk"})
    assert calls[0] == "init" and sorted(c for c in calls[1:] if isinstance(c, int)) == [0, 1]
    calls.clear()
    reset_gpu_peaks({"cpu", "disk"})
    assert calls == []
