"""The sweep (``make sweep``; marker ``sweep``, left out of ``make test``): every
architecture of transformers' own causal-LM and image-text-to-text Auto mappings that
builds from its shrunk default config and saves is planned split over cpu + disk, loaded
with ``bm.load`` and compared with the unsplit model's logits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.zoo import (
    Built,
    build_and_save,
    expected_logits,
    library_offload_difference,
    max_difference,
    split_plan,
)

pytestmark = pytest.mark.sweep


def _mappings() -> dict[str, list[str]]:
    from transformers.models.auto import modeling_auto

    return {
        "causal": list(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
        "image-text": list(modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES),
    }


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def _library_fails(built: Built, root: Path) -> str | None:
    """Why the library's own disk offload of ``built`` fails too, or None when it works."""
    offload = root / f"offload-{built.model_type}"
    try:
        diff = library_offload_difference(built, offload)
    except Exception as exc:
        return _one_line(exc)
    finally:
        shutil.rmtree(offload, ignore_errors=True)
    return None if diff == 0 else f"logits differ by {diff}"


def test_every_architecture_that_builds_loads_through_a_split_plan(tmp_path: Path) -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    covered: list[str] = []
    not_built: dict[str, str] = {}
    not_run: dict[str, str] = {}  # the library's own unsplit load or forward on token ids
    failed: dict[str, str] = {}
    library_fails: dict[str, str] = {}  # the library's own offload fails the same way
    for kind, model_types in _mappings().items():
        for model_type in model_types:
            try:
                built = build_and_save(model_type, kind, tmp_path)
            except Exception as exc:
                not_built[model_type] = _one_line(exc)
                continue
            try:
                expected = expected_logits(built)
            except Exception as exc:
                not_run[model_type] = _one_line(exc)
                shutil.rmtree(built.folder, ignore_errors=True)
                continue
            try:
                plan = split_plan(built)
                if plan.device_map != {model_type: "split"}:
                    failed[model_type] = f"not split: {plan.device_map}"
                elif (diff := max_difference(built, plan, expected)) != 0:
                    failed[model_type] = f"logits differ by {diff}"
                else:
                    covered.append(model_type)
            except Exception as exc:
                failed[model_type] = _one_line(exc)
            if model_type in failed and (why := _library_fails(built, tmp_path)) is not None:
                library_fails[model_type] = f"{failed.pop(model_type)}; the library's: {why}"
            shutil.rmtree(built.folder, ignore_errors=True)
    total = sum(len(v) for v in _mappings().values())
    print(
        f"\nsweep: {len(covered)} of {total} architectures load through a split plan with "
        f"the unsplit logits; {len(not_built)} do not build from a shrunk default config, "
        f"{len(not_run)} do not run unsplit on token ids, {len(library_fails)} fail the "
        f"same way offloaded by the library itself, {len(failed)} fail"
    )
    for name, why in sorted(library_fails.items()):
        print(f"  library's own offload fails too: {name}: {why}")
    for name, why in sorted(failed.items()):
        print(f"  FAILED {name}: {why}")
    assert not failed, failed
