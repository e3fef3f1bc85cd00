"""Write a DeepSpeed ZeRO checkpoint with the real engine on cpu, under torchrun (gloo).

``torchrun --nproc-per-node N tests/helpers/zero_writer.py OUT STAGE``: every rank builds the
same tiny Llama (seeded; its config from :mod:`tests.helpers.dcp_writer`), DeepSpeed wraps it
with ``zero_optimization.stage`` STAGE and torch's AdamW, takes one step and
``save_checkpoint(OUT/checkpoint)``; rank 0 writes the model's config there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(out: Path, stage: int) -> None:
    import deepspeed
    import torch
    from dcp_writer import tiny_config
    from transformers import LlamaForCausalLM

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config())
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage}}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optim, config=config)
    ids = torch.arange(16).reshape(2, 8) % 250
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    engine.step()
    engine.save_checkpoint(str(out / "checkpoint"))
    if torch.distributed.get_rank() == 0:
        tiny_config().save_pretrained(out / "checkpoint")
    torch.distributed.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
    sys.stdout.flush()
    os._exit(0)
