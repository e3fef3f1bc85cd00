"""``auto`` on real-size architectures (built on the meta device, written as sparse
safetensors files) against accelerate's ``infer_auto_device_map``: no more bytes off the
GPUs, and no more device changes along the real forward pass than accelerate plus one, but
in the one case the README names (SDXL over 3 x 2 GB), which has a test of its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bigmodel_cli.placement import make_plan
from tests.helpers.plans import accelerate_map
from tests.helpers.runtime import (
    SDXL_UNET,
    flux_config,
    forward_changes,
    offloaded,
    ran_order,
    write_sparse,
)

GB = 10**9
FLUX_GPUS = [(16, 16), (12, 12), (10,) * 3, (8,) * 4, (16, 8), (20, 6), (6,) * 4, (9,) * 3]
SDXL_GPUS = [(3, 3), (2.5, 2.5), (1.5,) * 4, (4, 2), (1.2,) * 4, (2, 1, 1), (1,) * 4]
# the README's one exception to "accelerate's device changes plus one" (its own test below)
SDXL_EXCEPTION = ("unet", (2, 2, 2))
TRACE_SHAPES = {
    "flux": {
        "hidden_states": (1, 16, 64),
        "encoder_hidden_states": (1, 8, 4096),
        "pooled_projections": (1, 768),
        "timestep": (1,),
        "img_ids": (16, 3),
        "txt_ids": (8, 3),
        "guidance": (1,),
    },
    "unet": {
        "sample": (1, 4, 16, 16),
        "timestep": (1,),
        "encoder_hidden_states": (1, 8, 2048),
        "text_embeds": (1, 1280),
        "time_ids": (1, 6),
    },
}


class RealSize:
    """A real-size model on meta, its sparse checkpoint, and its true forward order."""

    def __init__(self, root: Path, name: str, build: Callable[[], Any], kind: str) -> None:
        import torch
        from accelerate import init_empty_weights

        with init_empty_weights():
            self.model = build().to(torch.bfloat16)
        self.folder = root / name
        self.name = name
        write_sparse(self.folder, self.model, "BF16", "diffusion_pytorch_model")
        self.sizes = {k: v.numel() * 2 for k, v in self.model.state_dict().items()}
        with torch.device("meta"):
            fresh = build()
        self.order = ran_order(fresh, kind, TRACE_SHAPES[kind])


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> RealSize:
    from diffusers import FluxTransformer2DModel

    config = {k: v for k, v in flux_config().items() if not k.startswith("_")}
    root = tmp_path_factory.mktemp("real")
    return RealSize(root, "transformer", lambda: FluxTransformer2DModel(**config), "flux")


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory: pytest.TempPathFactory) -> RealSize:
    from diffusers import UNet2DConditionModel

    root = tmp_path_factory.mktemp("real")
    return RealSize(root, "unet", lambda: UNet2DConditionModel.from_config(SDXL_UNET), "unet")


def _ours(m: RealSize, gpus: tuple[float, ...]) -> dict[str, Any]:
    budget = ",".join(f"{i}={int(g * GB)}" for i, g in enumerate(gpus))
    plan = make_plan(m.folder, max_memory=f"{budget},cpu=200GB", strategy="auto")
    return plan.module_map(m.name)


def _runnable(m: RealSize, theirs: dict[str, Any], gpus: tuple[float, ...]) -> bool:
    """accelerate's plan can run: its main GPU has room for the largest module (own
    tensors) of the blocks it offloads, which its hooks bring over one at a time."""
    from tests.helpers.plans import device_of

    main = min((d for d in theirs.values() if isinstance(d, int)), default=None)
    if main is None:
        return True
    used = sum(n for t, n in m.sizes.items() if device_of(t, theirs) == main)
    modules: dict[str, int] = {}
    for t, n in m.sizes.items():
        if not isinstance(device_of(t, theirs), int):
            modules[t.rpartition(".")[0]] = modules.get(t.rpartition(".")[0], 0) + n
    return used + max(modules.values(), default=0) <= gpus[main] * GB


def _compare(m: RealSize, gpus: tuple[float, ...]) -> tuple[int, int, int, int]:
    import torch

    ours = _ours(m, gpus)
    budget: dict[Any, int] = {i: int(g * GB) for i, g in enumerate(gpus)} | {"cpu": 200 * GB}
    theirs = accelerate_map(m.model, budget, torch.bfloat16)
    our_off, their_off = offloaded(m.sizes, ours), offloaded(m.sizes, theirs)
    our_hops, their_hops = forward_changes(ours, m.order), forward_changes(theirs, m.order)
    if _runnable(m, theirs, gpus):
        assert our_off <= their_off, (gpus, our_off, their_off)
    if (m.name, gpus) != SDXL_EXCEPTION:
        assert our_hops <= their_hops + 1, (gpus, our_hops, their_hops)
    return our_off, their_off, our_hops, their_hops


@pytest.mark.parametrize("gpus", FLUX_GPUS)
def test_flux_offloads_no_more_and_hops_no_more_than_accelerate_plus_one(
    flux: RealSize, gpus: tuple[float, ...]
) -> None:
    _compare(flux, gpus)


@pytest.mark.parametrize("gpus", SDXL_GPUS)
def test_sdxl_unet_offloads_no_more_and_hops_no_more_than_accelerate_plus_one(
    sdxl: RealSize, gpus: tuple[float, ...]
) -> None:
    _compare(sdxl, gpus)


def test_sdxl_unet_over_3_x_2_gb_changes_device_twice_to_keep_what_accelerate_offloads(
    sdxl: RealSize,
) -> None:
    """The README's exception: accelerate puts 1.67 GB on GPU 0 and 3.47 GB on cpu (no
    change between GPUs, 3.47 GB over PCIe at every step); ``auto`` puts all of it on the
    three GPUs, which takes 2 changes, one more than accelerate's count plus one."""
    our_off, their_off, our_hops, their_hops = _compare(sdxl, SDXL_EXCEPTION[1])
    assert our_off == 0 and their_off > 3 * GB
    assert (our_hops, their_hops) == (2, 0)


def test_flux_over_two_gpus_changes_device_once_or_twice(flux: RealSize) -> None:
    """The cases of the issue: everything fits 2 x 16 GB with one change (it made 4), and
    2 x 12 GB with two (it made 6)."""
    assert sum(flux.sizes.values()) > 23 * GB
    for gpus, most in (((16, 16), 1), ((12, 12), 2)):
        ours = _ours(flux, gpus)
        assert offloaded(flux.sizes, ours) == 0
        assert forward_changes(ours, flux.order) <= most
