"""DeepSpeed ZeRO 1/2/3 checkpoints in: written by the real engine on cpu (gloo, 2 ranks under
torchrun), merged into Hugging Face safetensors equal to DeepSpeed's own
``get_fp32_state_dict_from_zero_checkpoint``, loading in transformers. Skipped where DeepSpeed
is not installed (it is not a dependency of bigmodel: reading needs none of it)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.dcp import run_writer

pytest.importorskip("deepspeed")
WRITER = Path(__file__).parent / "helpers" / "zero_writer.py"


def write_zero(out: Path, stage: int) -> Path:
    return run_writer(WRITER, 2, out, str(stage)) / "checkpoint"


@pytest.fixture(scope="module")
def zero(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    return {
        stage: write_zero(tmp_path_factory.mktemp(f"zero{stage}"), stage) for stage in (1, 2, 3)
    }


def _deepspeed_state(checkpoint: Path) -> dict[str, Any]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return dict(get_fp32_state_dict_from_zero_checkpoint(str(checkpoint)))


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_merge_equals_deepspeed_and_loads_in_transformers(
    zero: dict[int, Path], tmp_path: Path, stage: int
) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, LlamaForCausalLM

    out = tmp_path / "hf"
    result = run_cli("merge", zero[stage], "-o", out)
    assert result.code == 0, result.stderr
    assert f"ZeRO stage {stage}" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    merged = load_file(out / "model.safetensors")
    reference = _deepspeed_state(zero[stage])
    assert sorted(merged) == sorted(reference)
    for name, tensor in reference.items():
        assert torch.equal(merged[name], tensor.contiguous()), name
    model = LlamaForCausalLM(AutoConfig.from_pretrained(zero[stage]))
    model.load_state_dict(reference)
    loaded = LlamaForCausalLM.from_pretrained(out)
    ids = torch.arange(12).reshape(2, 6) * 7 % 250
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_a_global_step_folder_is_a_source_too(zero: dict[int, Path], tmp_path: Path) -> None:
    tag = (zero[3] / "latest").read_text().strip()
    result = run_cli("inspect", zero[3] / tag, "--json")
    assert result.code == 0, result.stderr
    assert '"layout": "zero"' in result.stdout


def test_a_missing_rank_is_refused(zero: dict[int, Path], tmp_path: Path) -> None:
    source = tmp_path / "ckpt"
    shutil.copytree(zero[2], source)
    tag = (source / "latest").read_text().strip()
    (source / tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    result = run_cli("merge", source, "-o", tmp_path / "out")
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1, result.stderr
    assert "rank 1 of 2 is missing" in lines[0] and f"ckpt/{tag}" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_pickle_that_calls_code_is_refused(zero: dict[int, Path], tmp_path: Path) -> None:
    import os
    import pickle

    import torch

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("true",))

    source = tmp_path / "ckpt"
    shutil.copytree(zero[1], source)
    tag = (source / "latest").read_text().strip()
    states = source / tag / "mp_rank_00_model_states.pt"
    torch.save({"module": {}, "evil": Evil()}, states, pickle_module=pickle)
    result = run_cli("merge", source, "-o", tmp_path / "out")
    assert result.code == 2 and "refused to unpickle" in result.stderr, result.stderr
    assert "mp_rank_00_model_states.pt" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
