"""A large torch.distributed.checkpoint folder as FSDP2 training writes it, for bench_dcp.py.

``torchrun --nproc-per-node 4 benchmarks/dcp_bench_writer.py OUT GB``: every rank holds its
row shard (``Shard(0)``, a DTensor) of Llama-7B-shaped layers (random fp32 weights, about GB
gigabytes in all) and AdamW's two moments for each, and ``torch.distributed.checkpoint.save``
writes ``{"model": ..., "optim": {"state": ...}}`` to OUT: one ``__R_0.distcp`` per rank. The
moments are never-touched memory (zeros; they take disk, not RAM).
"""

from __future__ import annotations

import os
import sys

HIDDEN, FFN, VOCAB = 4096, 11008, 32000


def shapes(total_bytes: int) -> list[tuple[str, tuple[int, ...]]]:
    found = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    size, i = VOCAB * HIDDEN * 4, 0
    while size < total_bytes:
        layer = f"model.layers.{i}"
        for name, shape in (
            ("self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
            ("self_attn.k_proj.weight", (HIDDEN, HIDDEN)),
            ("self_attn.v_proj.weight", (HIDDEN, HIDDEN)),
            ("self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
            ("mlp.gate_proj.weight", (FFN, HIDDEN)),
            ("mlp.up_proj.weight", (FFN, HIDDEN)),
            ("mlp.down_proj.weight", (HIDDEN, FFN)),
            ("input_layernorm.weight", (HIDDEN,)),
            ("post_attention_layernorm.weight", (HIDDEN,)),
        ):
            found.append((f"{layer}.{name}", shape))
            size += 4 * shape[0] * (shape[1] if len(shape) > 1 else 1)
        i += 1
    return found


def main(out: str, gb: float) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(rank)
    model, moments = {}, {}
    for name, shape in shapes(int(gb * 1e9)):
        rows = shape[0] // world
        local_shape = (rows, *shape[1:])
        local = torch.empty(local_shape).uniform_(-0.05, 0.05)
        model[name] = DTensor.from_local(
            local,
            mesh,
            [Shard(0)],
            shape=torch.Size(shape),
            stride=torch.empty(shape, device="meta").stride(),
        )
        moments[name] = {
            key: DTensor.from_local(torch.empty(local_shape), mesh, [Shard(0)],
                                    shape=torch.Size(shape),
                                    stride=torch.empty(shape, device="meta").stride())
            for key in ("exp_avg", "exp_avg_sq")
        }  # fmt: skip
    dcp.save({"model": model, "optim": {"state": moments}}, checkpoint_id=out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
    sys.stdout.flush()
    os._exit(0)
