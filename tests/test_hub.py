"""Plan before you download: mirror a Hub repo's JSON files and safetensors headers.

Everything runs against ``tests/helpers/hub_server.HubServer``, a local stand-in for the
Hub that huggingface_hub's own client is first shown to accept.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bigmodel_cli.checkpoint import Checkpoint, fingerprint, load_checkpoint
from bigmodel_cli.checkpoint.hub import download_plan_files, mirror
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.safetensors import HeaderEntry, build_header
from tests.helpers import FIXTURES
from tests.helpers.hub_env import serve
from tests.helpers.hub_server import COMMIT, HubServer

PIPE = FIXTURES / "tiny-pipeline"


# -- repos ---------------------------------------------------------------------------------


def sparse_safetensors(path: Path, entries: list[HeaderEntry]) -> Path:
    """A valid safetensors file whose data is a hole: header, then truncate to full size."""
    header = build_header(entries, {"format": "pt"})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + sum(e.nbytes for e in entries))
    return path


def layers(prefix: str, count: int, dim: int, dtype: str = "F16") -> list[HeaderEntry]:
    return [HeaderEntry(f"{prefix}.{i}.weight", dtype, (dim, dim)) for i in range(count)]


@pytest.fixture(scope="module")
def big_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline of 1.2 GB of sparse weights: a UNet in two shards and a text encoder."""
    root = tmp_path_factory.mktemp("big") / "big"
    index = {
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
    }
    (root / "tokenizer").mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "X", **index}))
    (root / "tokenizer" / "tokenizer_config.json").write_text("{}")
    weight_map = {}
    for shard in (1, 2):
        name = f"diffusion_pytorch_model-0000{shard}-of-00002.safetensors"
        entries = layers(f"down_blocks.{shard}", 4, 8192)  # 4 x 128 MiB
        sparse_safetensors(root / "unet" / name, entries)
        weight_map |= {e.name: name for e in entries}
    total = sum(2 * 8192 * 8192 for _ in weight_map)
    (root / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    (root / "unet" / "config.json").write_text("{}")
    sparse_safetensors(root / "text_encoder" / "model.safetensors", layers("layers", 3, 4096))
    (root / "text_encoder" / "config.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def variant_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers model folder with both fp32 and fp16 weights."""
    root = tmp_path_factory.mktemp("variant") / "unet"
    sparse_safetensors(root / "diffusion_pytorch_model.safetensors", layers("b", 3, 64, "F32"))
    sparse_safetensors(root / "diffusion_pytorch_model.fp16.safetensors", layers("b", 3, 64))
    (root / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    return root


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, home: Path) -> Iterator[HubServer]:
    with serve(monkeypatch, home, test__pipe=PIPE, test__te=PIPE / "text_encoder") as server:
        yield server


def tensors(ckpt: Checkpoint) -> list[tuple[Any, ...]]:
    return [
        (c.name, t.name, t.dtype, t.shape, t.file.name, t.file.stat().st_size, t.start, t.end)
        for c in ckpt.components
        for t in c.tensors
    ]


def assert_same(mirrored: Path, folder: Path, variant: str | None = None) -> None:
    got, want = load_checkpoint(mirrored, variant), load_checkpoint(folder, variant)
    assert fingerprint(got) == fingerprint(want)
    assert tensors(got) == tensors(want)
    assert [c.name for c in got.components] == [c.name for c in want.components]
    assert got.skipped == want.skipped


def weights_read(hub: HubServer) -> set[str]:
    return {p for p in hub.bytes_sent if p.endswith(".safetensors")}


def leftovers(home: Path, repo: str) -> list[str]:
    root = home / "bigmodel" / "hub" / repo.replace("/", "--")
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


# -- the stand-in speaks huggingface_hub ------------------------------------------------------


def test_huggingface_hub_client_accepts_the_stand_in(hub: HubServer, home: Path) -> None:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    config = hf_hub_download("test/pipe", "unet/config.json")
    assert Path(config).read_bytes() == (PIPE / "unet" / "config.json").read_bytes()
    weights = hf_hub_download("test/pipe", "vae/diffusion_pytorch_model.safetensors")
    assert (
        Path(weights).read_bytes()
        == (PIPE / "vae/diffusion_pytorch_model.safetensors").read_bytes()
    )
    info = HfApi().model_info("test/pipe", files_metadata=True)
    assert info.sha == COMMIT
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    assert sizes["vae/diffusion_pytorch_model.safetensors"] == 684684
    snap = Path(snapshot_download("test/pipe"))
    assert snap.name == COMMIT
    assert sorted(p.relative_to(snap) for p in snap.rglob("*") if p.is_file()) == sorted(
        p.relative_to(PIPE) for p in PIPE.rglob("*") if p.is_file()
    )
    # the module-level get_safetensors_metadata is bound to an HfApi made at import time,
    # with the endpoint of that moment: a fresh HfApi() reads constants.ENDPOINT now
    meta = HfApi().get_safetensors_metadata("test/te")
    assert list(meta.files_metadata) == ["model.safetensors"]
    assert any(r.range == "bytes=0-100000" for r in hub.requests)


def test_stand_in_errors_are_huggingface_hub_errors(hub: HubServer) -> None:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("test/nope")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("test/pipe", "model_index.json", revision="nope")
    hub.fault, hub.fault_suffix = "gated", ""
    with pytest.raises(GatedRepoError):
        hf_hub_download("test/pipe", "model_index.json")


def test_stand_in_answers_ranges_with_206(hub: HubServer) -> None:
    from huggingface_hub import get_session, hf_hub_url

    url = hf_hub_url("test/te", "model.safetensors")
    hub.reset_counts()
    r = get_session().get(url, headers={"Range": "bytes=0-7"}, timeout=5)
    size = (PIPE / "text_encoder" / "model.safetensors").stat().st_size
    assert (r.status_code, len(r.content)) == (206, 8)
    assert r.headers["Content-Range"] == f"bytes 0-7/{size}"
    assert hub.bytes_sent.get("test/te/model.safetensors") == 8


# -- mirrors read like the real thing ------------------------------------------------------------


def test_mirror_of_the_fixture_pipeline_reads_like_the_folder(hub: HubServer, home: Path) -> None:
    m = mirror("test/pipe")
    assert (m.commit, m.headers_fetched) == (COMMIT, 6)
    assert m.path == home / "bigmodel" / "hub" / "test--pipe" / COMMIT / "pipe"
    assert_same(m.path, PIPE)
    assert not (m.path / "tokenizer" / "vocab.json").exists()
    agents = {r.user_agent for r in hub.requests if r.path.startswith("/test/pipe/resolve")}
    assert all("bigmodel/" in (a or "") for a in agents)


def test_mirror_of_a_sharded_llama(
    llama_sharded: Path, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    with serve(monkeypatch, home, test__llama=llama_sharded):
        m = mirror("test/llama")
    assert m.headers_fetched == len(list(llama_sharded.glob("*.safetensors"))) > 1
    assert_same(m.path, llama_sharded)


def test_big_pipeline_fetches_under_one_percent(
    big_pipeline: Path, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    with serve(monkeypatch, home, test__big=big_pipeline) as hub:
        m = mirror("test/big")
        weights = sum(p.stat().st_size for p in big_pipeline.rglob("*.safetensors"))
        assert weights >= 1 << 30
        assert hub.total_bytes == m.bytes_fetched < weights / 100
        assert_same(m.path, big_pipeline)
        hub.reset_counts()
        again = mirror("test/big")
        assert (again.path, again.headers_fetched, again.bytes_fetched) == (m.path, 0, 0)
        assert [r.path for r in hub.requests] == ["/api/models/test/big/revision/main"]
        hub.reset_counts()
        assert mirror("test/big", revision=COMMIT).headers_fetched == 0
        assert hub.requests == []


def test_only_the_asked_variant_is_fetched(
    variant_repo: Path, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    with serve(monkeypatch, home, test__unet=variant_repo) as hub:
        fp16 = mirror("test/unet", variant="fp16")
        assert weights_read(hub) == {"test/unet/diffusion_pytorch_model.fp16.safetensors"}
        assert_same(fp16.path, variant_repo, "fp16")
        hub.reset_counts()
        plain = mirror("test/unet")
        assert weights_read(hub) == {"test/unet/diffusion_pytorch_model.safetensors"}
        assert_same(plain.path, variant_repo)
        assert plain.path != fp16.path


def test_bin_only_repo_says_to_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    repo = tmp_path / "old"
    repo.mkdir()
    (repo / "pytorch_model.bin").write_bytes(b"\0" * 100)
    (repo / "config.json").write_text("{}")
    with serve(monkeypatch, home, test__old=repo), pytest.raises(BigmodelError) as err:
        mirror("test/old")
    assert "download them (hf download test/old)" in str(err.value)
    assert leftovers(home, "test/old") == []


def test_offline_uses_the_mirror_and_no_network(
    hub: HubServer, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = mirror("test/pipe")
    hub.reset_counts()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = mirror("test/pipe")
    assert (again.path, again.headers_fetched) == (first.path, 0)
    with pytest.raises(
        BigmodelError, match="offline, and revision 'main' is neither in the Hugging Face cache"
    ):
        mirror("test/te")
    with pytest.raises(BigmodelError, match="offline, and no mirror of test/pipe"):
        mirror("test/pipe", variant="fp16")
    assert hub.requests == []


def test_download_plan_files_fetches_only_those(hub: HubServer) -> None:
    shard = "unet/diffusion_pytorch_model-00002-of-00004.safetensors"
    snap = download_plan_files("test/pipe", COMMIT, [shard])
    weights = sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*.safetensors"))
    assert weights == [shard]
    assert (snap / "unet" / "config.json").is_file()
    assert (snap / "tokenizer" / "vocab.json").is_file()
    assert (snap / shard).read_bytes() == (PIPE / shard).read_bytes()


# -- faults: one line, in time, nothing left behind ------------------------------------------------


def one_line_error(repo: str, home: Path, *needles: str, **kw: Any) -> float:
    start = time.monotonic()
    with pytest.raises(BigmodelError) as err:
        mirror(repo, **kw)
    elapsed = time.monotonic() - start
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    assert leftovers(home, repo) == []
    return elapsed


@pytest.mark.parametrize(
    ("fault", "needles"),
    [
        ("gated", ("gated", "hf auth login", "HF_TOKEN")),
        ("ignore_range", ("ignored the Range",)),
        ("short", ("short body",)),
        ("drop", ("dropped",)),
        ("stall", ("no answer", "within 2s")),
    ],
)
def test_fault(hub: HubServer, home: Path, fault: str, needles: tuple[str, ...]) -> None:
    hub.fault = fault
    elapsed = one_line_error("test/pipe", home, "test/pipe/", *needles)
    assert elapsed < 4.5
    if fault == "ignore_range":
        assert max(hub.bytes_sent.values()) < 1 << 20


def test_a_busy_hub_is_asked_again(hub: HubServer, home: Path) -> None:
    """A 503 first for every path (the file list, each header's resolve and CDN URLs, each
    JSON file): each asked again, the same mirror as from a Hub that is not busy."""
    import shutil

    hub.fault, hub.fault_suffix, hub.busy_times = "busy", "", 1
    found = mirror("test/pipe")
    assert found.headers_fetched == 6
    assert any(path.startswith("/api/models/") for path in hub._busy)
    assert sum(path.endswith(".safetensors") for path in hub._busy) == 12  # resolve + CDN
    assert all(sent == 1 for sent in hub._busy.values())
    busy_print = fingerprint(load_checkpoint(found.path))
    shutil.rmtree(home / "bigmodel")
    hub.fault = None
    assert fingerprint(load_checkpoint(mirror("test/pipe").path)) == busy_print


def test_a_hub_busy_for_longer_than_the_retries_is_one_line(
    hub: HubServer, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BIGMODEL_HUB_RETRIES", "2")
    hub.fault, hub.busy_times = "busy", 3
    assert one_line_error("test/pipe", home, "HTTP 503", "test/pipe/") < 4.5


def test_gated_repo_opens_with_hf_token(
    hub: HubServer, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.fault, hub.token = "gated", "hf_secret"
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert mirror("test/pipe").headers_fetched == 6
    assert any(r.authorization == "Bearer hf_secret" for r in hub.requests)


def test_missing_repo_and_revision(hub: HubServer, home: Path) -> None:
    one_line_error("test/nope", home, "repository test/nope not found", "HF_TOKEN")
    one_line_error("test/pipe", home, "revision 'v9' not found in test/pipe", revision="v9")


def test_stalled_resolve_and_unreachable_hub(
    hub: HubServer, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as c

    hub.fault, hub.fault_suffix, hub.stall_seconds = "stall", "/revision/main", 4
    assert one_line_error("test/pipe", home, "no answer") < 3.5
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(c, "ENDPOINT", dead)
    monkeypatch.setattr(
        c, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}"
    )
    one_line_error("test/pipe", home, "cannot reach", dead)


def test_header_too_big(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    repo = tmp_path / "huge"
    repo.mkdir()
    with open(repo / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", 200_000_000) + b"{")
        f.truncate(300_000_000)
    with serve(monkeypatch, home, test__huge=repo) as hub:
        one_line_error("test/huge", home, "test/huge/model.safetensors", "more than the 100000000")
        assert hub.total_bytes <= 1 << 16


def test_latency_is_paid_in_parallel(hub: HubServer, home: Path) -> None:
    hub.latency = 0.1
    start = time.monotonic()
    m = mirror("test/pipe")
    elapsed = time.monotonic() - start
    assert_same(m.path, PIPE)
    assert len(hub.requests) >= 20
    assert elapsed < 0.1 * len(hub.requests) / 2
