"""Write a torch.distributed.checkpoint folder the way training does, under torchrun.

``torchrun --nproc-per-node N tests/helpers/dcp_writer.py OUT {fsdp|plain}``: every rank
builds the same tiny Llama (seeded), wraps it with FSDP2's ``fully_shard`` (DTensor shards)
or leaves it whole (plain tensors, each rank holding all of them: DCP saves one copy), takes
one AdamW step so that the optimizer has state (FSDP2: ``lm_head.weight`` re-split by columns,
as tensor parallelism splits), and saves ``{"model": ..., "optim": ...}``
with ``torch.distributed.checkpoint.save`` into ``OUT/checkpoint``. Rank 0 also writes what
was saved as a Hugging Face model (``OUT/reference``, the full state dict gathered by torch's
own ``get_model_state_dict``) and the model's config beside the checkpoint.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def tiny_config():  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig

    # vocab 250 over 4 ranks: uneven FSDP2 shards (63, 63, 63, 61 rows)
    return LlamaConfig(
        vocab_size=250,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )


def main(out: Path, kind: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )
    from transformers import LlamaForCausalLM

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config())
    if kind == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.arange(16).reshape(2, 8) % 250
    model(input_ids=ids, labels=ids).loss.backward()
    optim.step()
    optim.zero_grad()
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    if kind == "fsdp":
        from torch.distributed.tensor import Shard, distribute_tensor

        state = {
            "model": get_model_state_dict(model),
            "optim": get_optimizer_state_dict(model, optim),
        }
        # one tensor split by columns, as tensor parallelism splits: its chunks are no
        # stretches of the row-major tensor
        state["model"]["lm_head.weight"] = distribute_tensor(
            full["lm_head.weight"].detach().clone(), mesh, [Shard(1)]
        )
    else:
        state = {"model": model.state_dict(), "optim": optim.state_dict()}
    dcp.save(state, checkpoint_id=str(out / "checkpoint"))
    if dist.get_rank() == 0:
        reference = LlamaForCausalLM(tiny_config())
        reference.load_state_dict({k: v.detach().clone() for k, v in full.items()})
        reference.save_pretrained(out / "reference")
        tiny_config().save_pretrained(out / "checkpoint")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
    sys.stdout.flush()
    os._exit(0)  # torch's threads can abort() a finished rank at interpreter teardown
