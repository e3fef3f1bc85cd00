"""`bigmodel plan` of a Hub repo before any download, over a slow link.

A local stand-in of the Hub (tests/helpers/hub_server.py, on 127.0.0.1) serves a
transformers-style model of 20 sparse safetensors shards (about 20 GB as listed) and
adds 100 ms of latency to every response. Measured, in child processes with HF_ENDPOINT
pointed at it and an empty HF_HOME:

- baseline: huggingface_hub's own `get_safetensors_metadata(repo)`;
- `bigmodel plan REPO --max-memory 0=80GB,1=80GB --json` (first time: resolve, list, JSON
  files, 20 headers by range requests, in parallel): the model goes whole to one GPU, so
  the plan needs the headers and nothing else;
- the same again (the headers are cached by commit: one request).

Target: that first plan in under 1.5 s, and fetching under 1% of the weight bytes.

Also shown, without a target: `--max-memory 0=8GB,1=8GB,cpu=64GB`, where the model is
split. A split map is written in the names transformers builds, so that plan builds the
model on the meta device with transformers (as accelerate's `infer_auto_device_map` needs
the model built), seconds of importing torch and transformers; the second time the names
are kept (``$HF_HOME/bigmodel/names``) and it costs what a whole plan costs.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import BIGMODEL, Measured, bench_env, measure, row, table_header, temp_dir  # noqa: E402

from tests.helpers.hub_server import HubServer  # noqa: E402

SHARDS = 20
LAYERS_PER_SHARD = 4
HIDDEN = 8192  # bf16 8192 x 32768 MLP weights: about 540 MB each
CONFIG = {  # Llama-3-70B's config.json, with the MLP width of the tensors above
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": HIDDEN,
    "intermediate_size": 4 * HIDDEN,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "num_hidden_layers": SHARDS * LAYERS_PER_SHARD,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
WHOLE = ["--max-memory", "0=80GB,1=80GB"]  # fits one GPU: a plan from the headers alone
SPLIT = ["--max-memory", "0=8GB,1=8GB,cpu=64GB"]  # split: the built names are asked
LATENCY = 0.1
TARGET_SECONDS = 1.5
METADATA = (
    "import sys; from huggingface_hub import HfApi; "
    "m = HfApi().get_safetensors_metadata(sys.argv[1]); assert len(m.files_metadata) == {n}"
)


def sparse_shard(path: Path, names: list[str]) -> int:
    """A safetensors file whose data is a hole: valid header, real size, no bytes on disk."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        n = 2 * HIDDEN * 4 * HIDDEN
        header[name] = {
            "dtype": "BF16",
            "shape": [4 * HIDDEN, HIDDEN],
            "data_offsets": [offset, offset + n],
        }
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return offset


def make_repo(root: Path) -> int:
    root.mkdir(parents=True)
    weight_map: dict[str, str] = {}
    total = 0
    for s in range(1, SHARDS + 1):
        name = f"model-{s:05d}-of-{SHARDS:05d}.safetensors"
        layer = [
            f"model.layers.{(s - 1) * LAYERS_PER_SHARD + i}.mlp.up_proj.weight"
            for i in range(LAYERS_PER_SHARD)
        ]
        total += sparse_shard(root / name, layer)
        weight_map |= dict.fromkeys(layer, name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    (root / "config.json").write_text(json.dumps(CONFIG))
    return total


def main() -> int:
    with temp_dir() as tmp:
        weights = make_repo(tmp / "big")
        with HubServer({"bench/big": tmp / "big"}, latency=LATENCY) as hub:
            env = bench_env() | {
                "HF_ENDPOINT": hub.endpoint,
                "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DOWNLOAD_TIMEOUT": "10",
            }
            plan = [BIGMODEL, "plan", "bench/big", "--json"]
            metadata = [sys.executable, "-c", METADATA.format(n=SHARDS), "bench/big"]

            def timed(cmd: list[str], home: str) -> Measured:
                return measure(cmd, env | {"HF_HOME": str(tmp / home)})

            base = timed(metadata, "home-a")
            hub.reset_counts()
            first = timed([*plan, *WHOLE], "home-b")
            fetched = hub.total_bytes
            hub.reset_counts()
            again = timed([*plan, *WHOLE], "home-b")
            requests_again = len(hub.requests)
            split_first = timed([*plan, *SPLIT], "home-c")
            split_again = timed([*plan, *SPLIT], "home-c")
    print(table_header(f"plan of a {SHARDS}-file Hub repo, {LATENCY * 1000:.0f} ms per response"))
    print(row("get_safetensors_metadata (huggingface_hub)", base))
    print(row("bigmodel plan, whole (first time)", first, base))
    print(row("bigmodel plan, whole (again: headers kept)", again, base))
    print(row("bigmodel plan, split (first: transformers asked)", split_first, base))
    print(row("bigmodel plan, split (again: names kept)", split_again, base))
    share = fetched / weights
    print(f"\nbytes fetched by the first plan: {fetched:,} of {weights:,} ({share:.4%})")
    print(f"requests made by the second plan: {requests_again}")
    ok = first.seconds < TARGET_SECONDS and share < 0.01 and requests_again <= 1
    print(
        f"target first whole plan < {TARGET_SECONDS} s, < 1% of weights fetched, one request "
        f"again: {'PASS' if ok else 'FAIL'} (split rows: no target)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
