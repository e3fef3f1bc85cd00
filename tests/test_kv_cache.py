"""The plan's KV cache against the cache transformers really returns.

Each architecture is built from transformers' own config class, shrunk, saved with its
``save_pretrained`` in bf16, and prefilled with N tokens (below and above the sliding
window) on the CPU: the bytes of the storages its returned cache holds (each storage
once) must equal the plan's ``kv_cache`` for that context, to the byte where the layout is
exact. Nothing expected here comes from bigmodel's code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.placement import make_plan, read_plan
from tests.helpers.cli import run_cli
from tests.helpers.hub_env import serve

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WINDOW = 16
CONTEXTS = (10, 40)  # below and above the window
BATCH = 2
ENCODER = 23  # an encoder-decoder's encoder tokens, unlike its decoder's
VOCAB = 64
SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64}
SMALL |= {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
SMALL |= {"max_position_embeddings": 256}


@dataclass(frozen=True)
class Arch:
    name: str
    config: str  # transformers' config class
    model: str  # its model class
    values: dict[str, Any] = field(default_factory=dict)
    base: bool = True  # start from SMALL

    def build(self) -> Any:
        cls = getattr(transformers, self.config)
        config = cls(**({**SMALL, **self.values} if self.base else self.values))
        torch.manual_seed(0)
        return getattr(transformers, self.model)(config).eval().to(torch.bfloat16)


SLIDING = {"sliding_window": WINDOW, "head_dim": 8}
MAMBA2_KEYS = {"mamba_n_heads": 8, "mamba_d_head": 8, "mamba_n_groups": 1, "mamba_d_state": 8}
MAMBA2_KEYS |= {"mamba_d_conv": 4, "mamba_expand": 2}
ARCHS = [
    Arch("llama-mha", "LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": 4}),
    Arch("llama-gqa", "LlamaConfig", "LlamaForCausalLM"),
    Arch("qwen3-head-dim", "Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    Arch("gemma2", "Gemma2Config", "Gemma2ForCausalLM", {"num_hidden_layers": 4} | SLIDING),
    Arch("gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM", {"num_hidden_layers": 6} | SLIDING),
    Arch("mistral", "MistralConfig", "MistralForCausalLM", {"sliding_window": WINDOW}),
    Arch(
        "deepseek-v3",
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        {"num_key_value_heads": 4, "kv_lora_rank": 16, "q_lora_rank": None}
        | {"qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8, "n_routed_experts": 4}
        | {"num_experts_per_tok": 2, "moe_intermediate_size": 16, "first_k_dense_replace": 1}
        | {"n_group": 1, "topk_group": 1},
    ),
    Arch(
        "mamba",
        "MambaConfig",
        "MambaForCausalLM",
        {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "state_size": 8}
        | {"expand": 2, "conv_kernel": 4},
        base=False,
    ),
    Arch(
        "mamba2",
        "Mamba2Config",
        "Mamba2ForCausalLM",
        {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "state_size": 8}
        | {"expand": 2, "conv_kernel": 4, "num_heads": 8, "head_dim": 8, "n_groups": 2},
        base=False,
    ),
    Arch(
        "jamba",
        "JambaConfig",
        "JambaForCausalLM",
        {"num_hidden_layers": 4, "attn_layer_period": 2, "attn_layer_offset": 1}
        | {"expert_layer_period": 2, "expert_layer_offset": 1, "num_experts": 2}
        | {"mamba_d_state": 8, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_dt_rank": 4},
    ),
    Arch("bamba", "BambaConfig", "BambaForCausalLM", {"attn_layer_indices": [1]} | MAMBA2_KEYS),
    Arch("falcon-h1", "FalconH1Config", "FalconH1ForCausalLM", {"mamba_d_ssm": 64} | MAMBA2_KEYS),
    Arch(
        "granite-4-hybrid",
        "GraniteMoeHybridConfig",
        "GraniteMoeHybridForCausalLM",
        {"layer_types": ["linear_attention", "full_attention"], "num_local_experts": 2}
        | {"num_experts_per_tok": 1, "shared_intermediate_size": 16}
        | MAMBA2_KEYS,
    ),
    Arch(
        "qwen3-next",
        "Qwen3NextConfig",
        "Qwen3NextForCausalLM",
        {"num_hidden_layers": 4, "head_dim": 8, "linear_num_value_heads": 4}
        | {"linear_num_key_heads": 2, "linear_key_head_dim": 8, "linear_value_head_dim": 8}
        | {"linear_conv_kernel_dim": 4, "num_experts": 2, "num_experts_per_tok": 1}
        | {"moe_intermediate_size": 16, "shared_expert_intermediate_size": 16},
    ),
    Arch(
        "t5",
        "T5Config",
        "T5ForConditionalGeneration",
        {"vocab_size": VOCAB, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2}
        | {"num_decoder_layers": 3, "num_heads": 4},
        base=False,
    ),
    Arch(
        "bart",
        "BartConfig",
        "BartForConditionalGeneration",
        {"vocab_size": VOCAB, "d_model": 32, "encoder_layers": 2, "decoder_layers": 3}
        | {"encoder_attention_heads": 4, "decoder_attention_heads": 2, "encoder_ffn_dim": 64}
        | {"decoder_ffn_dim": 64, "max_position_embeddings": 128},
        base=False,
    ),
]


def _tensors(value: Any) -> Iterator[Any]:
    """Every tensor reachable from a cache layer's attributes (tuples, dicts, and the
    parts of tensor subclasses such as quanto's packed tensors)."""
    if isinstance(value, torch.Tensor):
        if type(value) is torch.Tensor or type(value) is torch.nn.Parameter:
            yield value
            return
        for inner in vars(value).values():
            yield from _tensors(inner)
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _layers(cache: Any) -> list[Any]:
    if isinstance(cache, transformers.EncoderDecoderCache):
        return [*cache.self_attention_cache.layers, *cache.cross_attention_cache.layers]
    return list(cache.layers)


def cache_bytes(cache: Any, layers: list[Any] | None = None) -> int:
    """The bytes of the storages ``cache`` holds (or those of ``layers``), each once."""
    seen: dict[int, int] = {}
    for layer in _layers(cache) if layers is None else layers:
        for tensor in _tensors(vars(layer)):
            storage = tensor.untyped_storage()
            if storage.nbytes():
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def prefill(model: Any, context: int, cache: Any = None) -> Any:
    """The cache a forward pass over ``context`` tokens (``BATCH`` sequences) returns."""
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (BATCH, context))
    kwargs: dict[str, Any] = {"use_cache": True}
    if cache is not None:
        kwargs["cache"] = cache
    if model.config.is_encoder_decoder:
        kwargs |= {"input_ids": torch.randint(0, VOCAB, (BATCH, ENCODER))}
        kwargs |= {"decoder_input_ids": ids}
    else:
        kwargs["input_ids"] = ids
    with torch.no_grad():
        out = model(**kwargs)
    return out.past_key_values if cache is None else cache


def plan_kv(folder: Path | str, context: int, **extra: Any) -> tuple[int, Any]:
    plan = make_plan(folder, max_memory="cpu=10GB", context=context, batch=BATCH, **extra)
    (needs,) = plan.needs.values()
    assert needs.kv_cache is not None
    return needs.kv_cache, needs


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    return {}


def _saved(arch: Arch, store: dict[str, tuple[Any, Path]], root: Path) -> tuple[Any, Path]:
    if arch.name not in store:
        model = arch.build()
        folder = root / arch.name
        model.save_pretrained(folder)
        store[arch.name] = (model, folder)
    return store[arch.name]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_plan_counts_the_cache_transformers_allocates(
    arch: Arch, saved: dict[str, tuple[Any, Path]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    model, folder = _saved(arch, saved, tmp_path_factory.mktemp("kv"))
    for context in CONTEXTS:
        real = cache_bytes(prefill(model, context))
        extra = {"encoder_length": ENCODER} if model.config.is_encoder_decoder else {}
        planned, needs = plan_kv(folder, context, **extra)
        assert planned == real, (arch.name, context, planned, real)
        assert needs.kv_dtype == "bf16"
        assert "KV cache" not in (needs.note or "")  # every layer kind known


def test_each_device_holds_the_cache_of_its_own_layers(tmp_path: Path) -> None:
    """Jamba's attention layers cache per token, its Mamba layers a fixed state: a device's
    run time is the real cache of the layers placed on it (plus activations where it runs)."""
    arch = next(a for a in ARCHS if a.name == "jamba")
    model = arch.build()
    model.save_pretrained(tmp_path / "jamba")
    cache = prefill(model, 40)
    plan = make_plan(
        tmp_path / "jamba",
        max_memory="0=700KB,1=700KB,cpu=1GB",
        strategy="auto",
        context=40,
        batch=BATCH,
    )
    layers = {k: d for k, d in plan.component_maps["jamba"].items() if ".layers." in k}
    assert len(set(layers.values())) > 1, layers
    activations = plan.needs["jamba"].activations or 0
    total = 0
    for device in plan.devices:
        mine = [cache.layers[int(k.split(".")[-1])] for k, d in layers.items() if d == device.key]
        real = cache_bytes(cache, mine)
        total += real
        runs_here = isinstance(device.key, int)
        assert device.run_bytes == real + (activations if runs_here else 0), device.key
    assert total == cache_bytes(cache) == plan.needs["jamba"].kv_cache


def _llama(tmp_path: Path, head_dim: int = 32) -> tuple[Any, Path]:
    arch = Arch("llama", "LlamaConfig", "LlamaForCausalLM", {"head_dim": head_dim})
    model = arch.build()
    model.save_pretrained(tmp_path / "llama")
    return model, tmp_path / "llama"


def test_fp8_cache_is_transformers_fp8_quantized_cache(tmp_path: Path) -> None:
    model, folder = _llama(tmp_path)
    for context in CONTEXTS:
        cache = transformers.QuantizedCache("fp8", model.config)
        real = cache_bytes(prefill(model, context, cache))
        planned, needs = plan_kv(folder, context, kv_dtype="fp8")
        assert planned == real and needs.kv_dtype == "fp8"


@pytest.mark.sweep
def test_int4_cache_is_quantos_at_its_largest_residual(tmp_path: Path) -> None:
    """quanto's int4 cache keeps up to 127 tokens unquantized: prefill, then decode one
    token at a time until its residual is full (the most it holds at that context).

    A sweep: needs ``pip install optimum-quanto``, which compiles a C++ extension into its
    own folder on first use (minutes on a small machine)."""
    pytest.importorskip("optimum.quanto")
    model, folder = _llama(tmp_path)
    context = 200
    cache = transformers.QuantizedCache("quanto", model.config, nbits=4)
    prefill(model, context - 127, cache)
    with torch.no_grad():
        for _ in range(127):
            model(input_ids=torch.randint(0, VOCAB, (BATCH, 1)), cache=cache, use_cache=True)
    assert cache.layers[0].keys.shape[-2] == 127  # the residual, full
    real = cache_bytes(cache)
    planned, _ = plan_kv(folder, context, kv_dtype="int4")
    assert abs(planned - real) <= real / 100, (planned, real)


def test_kv_dtype_is_recorded_and_sizes_the_cache(tmp_path: Path) -> None:
    _, folder = _llama(tmp_path)
    out = run_cli("plan", folder, "--max-memory", "cpu=1GB", "--context", "64", "--json")
    half = run_cli(*_args(folder), "--kv-dtype", "fp8", "--json")
    assert out.code == 0 and half.code == 0, out.stderr + half.stderr
    doc, fp8 = json.loads(out.stdout), json.loads(half.stdout)
    assert doc["runtime"]["kv_dtype"] == "auto" and fp8["runtime"]["kv_dtype"] == "fp8"
    assert doc["components"]["llama"]["kv_dtype"] == "bf16"
    assert fp8["components"]["llama"]["kv_dtype"] == "fp8"
    # bf16 to fp8: half the bytes, plus fp8's two float32 scales per layer
    half_of_bf16 = doc["components"]["llama"]["kv_cache"] // 2
    assert fp8["components"]["llama"]["kv_cache"] == half_of_bf16 + 16
    saved = make_plan(folder, max_memory="cpu=1GB", context=64, kv_dtype="FP8").save(
        tmp_path / "plan.json"
    )
    again = read_plan(tmp_path / "plan.json")
    assert again.shape.kv_dtype == saved.shape.kv_dtype == "fp8"
    assert again.needs == saved.needs and again.needs["llama"].kv_dtype == "fp8"


def _args(folder: Path) -> list[str | Path]:
    return ["plan", folder, "--max-memory", "cpu=1GB", "--context", "64"]


def test_bad_kv_dtype_and_quantized_sliding_cache_are_one_line_errors(tmp_path: Path) -> None:
    _, folder = _llama(tmp_path)
    bad = run_cli(*_args(folder), "--kv-dtype", "int3")
    assert bad.code == 2 and "--kv-dtype" in bad.stderr and "int3" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    arch = next(a for a in ARCHS if a.name == "mistral")
    arch.build().save_pretrained(tmp_path / "mistral")
    refused = run_cli(*_args(tmp_path / "mistral"), "--kv-dtype", "int4")
    assert refused.code == 2 and "sliding_attention" in refused.stderr, refused.stderr
    assert "--kv-dtype" in refused.stderr
    with pytest.raises(BigmodelError) as caught:
        make_plan(folder, max_memory="cpu=1GB", context=8, kv_dtype="int3")
    assert caught.value.argument == "kv_dtype"


def test_a_layer_kind_not_known_is_counted_as_full_attention_with_a_note(tmp_path: Path) -> None:
    _, folder = _llama(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    full, _ = plan_kv(folder, 64)
    config["layer_types"] = ["full_attention", "fancy_attention"]
    (folder / "config.json").write_text(json.dumps(config))
    counted, needs = plan_kv(folder, 64)
    assert counted == full  # the full formula: never less
    assert needs.note is not None and "fancy_attention" in needs.note
    assert "over-estimate" in needs.note


def test_hub_repo_counts_the_cache_from_its_config_without_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    arch = next(a for a in ARCHS if a.name == "jamba")
    model = arch.build()
    model.save_pretrained(tmp_path / "jamba")
    local, _ = plan_kv(tmp_path / "jamba", 40)
    with serve(monkeypatch, home, test__jamba=tmp_path / "jamba") as hub:
        remote, _ = plan_kv("test/jamba", 40)
        sent = {p: n for p, n in hub.bytes_sent.items() if p.endswith(".safetensors")}
    assert remote == local == cache_bytes(prefill(model, 40))
    assert sent and all(n <= 65536 for n in sent.values())  # headers only
    assert (tmp_path / "jamba" / "model.safetensors").stat().st_size > sum(sent.values())


def test_without_transformers_config_class_a_state_space_model_gets_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mamba's config.json does not list its layers' kinds (its config class does): read
    alone, the layers are counted as full attention and the note says why."""
    from bigmodel_cli.runtime import estimate

    arch = next(a for a in ARCHS if a.name == "mamba")
    arch.build().save_pretrained(tmp_path / "mamba")
    monkeypatch.setattr(estimate, "library_config", lambda cfg: None)
    _, needs = plan_kv(tmp_path / "mamba", 40)
    assert needs.note is not None and "not described in config.json" in needs.note
