"""``--forward`` under torchrun: a pipeline-parallel forward pass of a causal LM.

Each rank builds the model on the meta device from its ``config.json`` (no weights are
allocated), keeps only its stage (the embedding on the first, its decoder layers, the
final norm and head on the last), assigns the tensors it read (a tied head takes the
embedding it read again), and ``torch.distributed.pipelining`` (``PipelineStage``,
``ScheduleGPipe``) runs the batch through the ranks in microbatches. The last stage
writes the logits (``output``) and the ids (``input_ids``) to one safetensors file.

Supported: Llama-family decoders (:data:`FAMILIES`), whose model is
``model.embed_tokens`` -> ``model.layers.N`` -> ``model.norm`` -> ``lm_head``.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigmodel_cli.checkpoint import Checkpoint
from bigmodel_cli.errors import BigmodelError, UsageError
from bigmodel_cli.formats.json import read_config
from bigmodel_cli.placement.plan import Plan
from bigmodel_cli.placement.world import RankPlan
from bigmodel_cli.run.ranges import Read, Share, by_name
from bigmodel_cli.runtime.estimate import model_of
from bigmodel_cli.runtime.library import attribute, build_on_meta
from bigmodel_cli.torchrun import DEFAULT_IDS, Group

if TYPE_CHECKING:
    import torch

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
EMBED, NORM, HEAD, LAYER = "model.embed_tokens", "model.norm", "lm_head", "model.layers."


@dataclass(frozen=True)
class PipelineRequest:
    """``--forward``: the batch (rows of token ids), microbatches, and the output file."""

    rows: tuple[tuple[int, ...], ...]
    microbatches: int
    output: Path | None


def pipeline_request(
    input_ids: str | None, microbatches: int | None, output: str | None
) -> PipelineRequest:
    """``--input-ids 1,2,3`` (rows separated by ``;``), ``--microbatches M`` (default: one
    per row; it must divide the rows), ``--forward-output FILE``."""
    text = input_ids or DEFAULT_IDS
    try:
        rows = tuple(tuple(int(x) for x in row.split(",")) for row in text.split(";"))
    except ValueError:
        raise UsageError(
            f"invalid input_ids {text!r}: integers separated by commas", argument="input_ids"
        ) from None
    if len({len(r) for r in rows}) != 1 or any(i < 0 for r in rows for i in r):
        raise UsageError(
            f"invalid input_ids {text!r}: rows of equal length, ids >= 0", argument="input_ids"
        )
    count = microbatches if microbatches is not None else len(rows)
    if count < 1 or len(rows) % count:
        raise UsageError(
            f"microbatches {count} must divide the {len(rows)} row(s) of token ids "
            "(rows are separated by ';')",
            argument="microbatches",
        )
    return PipelineRequest(rows, count, Path(output) if output is not None else None)


def _layers(modules: Sequence[str]) -> list[int]:
    return [int(m[len(LAYER) :]) for m in modules if m.startswith(LAYER)]


def check_pipeline(ckpt: Checkpoint, plan: Plan, request: PipelineRequest) -> None:
    """Refuse, before loading, what this forward cannot run."""
    assert plan.world is not None
    c = ckpt.components[0]
    config = read_config(c.folder) or {}
    if len(ckpt.components) != 1 or config.get("model_type") not in FAMILIES:
        raise BigmodelError(
            "forward under torchrun runs Llama-family causal LMs "
            f"({', '.join(FAMILIES)}); this checkpoint is not one",
            ckpt.source,
            argument="forward",
        )
    vocab = _int(config.get("vocab_size"))
    if any(i >= vocab for r in request.rows for i in r):
        raise UsageError(
            f"input_ids must be below the vocabulary size {vocab} of {c.folder}",
            argument="input_ids",
        )
    ranks = plan.world.ranks
    order = [i for r in ranks for i in _layers(r.modules)]
    in_order = (
        order == list(range(_int(config.get("num_hidden_layers"))))
        and EMBED in ranks[0].modules
        and {NORM, HEAD} <= set(ranks[-1].modules)
        and all(_layers(r.modules) or r in (ranks[0], ranks[-1]) for r in ranks)
    )
    if not in_order:
        raise BigmodelError(
            "forward needs every rank to hold one stage, in the order the model runs (the "
            "embedding on rank 0, the head on the last); plan it with strategy pipeline",
            plan.path,
            argument="forward",
        )


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _causal_mask(config: Any, hidden: torch.Tensor, positions: torch.Tensor) -> Any:
    """transformers' own causal mask (None where sdpa's is_causal does it), across versions."""
    create_causal_mask = attribute("transformers.masking_utils", "create_causal_mask")
    params = inspect.signature(create_causal_mask).parameters
    given = {
        "config": config,
        "inputs_embeds": hidden,
        "input_embeds": hidden,
        "attention_mask": None,
        "cache": None,
        "past_key_values": None,
        "cache_position": positions[0],
        "position_ids": positions,
    }
    return create_causal_mask(**{k: v for k, v in given.items() if k in params})


def _stage_module(model: Any, modules: Sequence[str], device: str) -> Any:
    import torch
    from torch import nn

    base = model.model

    class Stage(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = model.config
            self.embed_tokens = base.embed_tokens if EMBED in modules else None
            self.layers = nn.ModuleDict({str(i): base.layers[i] for i in _layers(modules)})
            with torch.device(device):  # its buffers were left on the meta device
                self.rotary_emb = type(base.rotary_emb)(config=model.config)
            self.norm = base.norm if NORM in modules else None
            self.lm_head = model.lm_head if HEAD in modules else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = self.embed_tokens(x) if self.embed_tokens is not None else x
            positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
            mask = _causal_mask(self.config, hidden, positions)
            rotary = self.rotary_emb(hidden, position_ids=positions)
            for layer in self.layers.values():
                hidden = layer(
                    hidden, attention_mask=mask, position_ids=positions, position_embeddings=rotary
                )
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            if self.lm_head is not None and self.norm is not None:
                hidden = self.lm_head(self.norm(hidden))
            return hidden

    return Stage().eval()


def build_pipeline_stage(
    ckpt: Checkpoint, me: RankPlan, tensors: Mapping[str, torch.Tensor], device: str
) -> Any:
    """This rank's stage: the model on the meta device, its own modules given the weights."""
    c = ckpt.components[0]
    folder = c.folder
    model = build_on_meta(model_of(ckpt, c))
    state = dict(tensors)
    for tied, source in me.tied.items():
        state[tied] = state[source]
    model.load_state_dict(state, strict=False, assign=True)
    stage = _stage_module(model, me.modules, device)
    lacking = [n for n, p in stage.named_parameters() if p.is_meta]
    if lacking:
        raise BigmodelError(
            f"rank {me.rank} read no weights for {lacking[0]}; re-run bigmodel plan", folder
        )
    return stage


@dataclass(frozen=True)
class PipelineResult:
    """The forward pass, as the last stage saw it."""

    stages: int
    microbatches: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    output_file: str | None
    seconds: float


def _write(path: Path, logits: torch.Tensor, ids: torch.Tensor) -> None:
    """One safetensors file, written under a temporary name and renamed into place."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.bigmodel-tmp-{os.getpid()}")
    try:
        save_file({"output": logits.detach().cpu().contiguous(), "input_ids": ids.cpu()}, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BigmodelError(f"cannot write the forward output ({exc.strerror})", path) from None


def run_pipeline(
    group: Group,
    ckpt: Checkpoint,
    plan: Plan,
    me: RankPlan,
    read: Read,
    share: Share,
    device: str,
    request: PipelineRequest,
) -> PipelineResult | None:
    """Every rank runs its stage; rank 0 returns what the last stage saw."""
    import torch
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    tensors = {name: t for (_, name), t in by_name(read, share).items()}
    stage = group.agree(
        lambda: build_pipeline_stage(ckpt, me, tensors, device), "building the stages"
    )
    last = group.size - 1
    ids = torch.tensor(request.rows, dtype=torch.long)
    began = time.perf_counter()
    with group.contact("running the pipeline"), torch.no_grad():
        pipe = PipelineStage(stage, group.rank, group.size, torch.device(device))
        schedule = ScheduleGPipe(pipe, n_microbatches=request.microbatches)
        logits = schedule.eval(ids.to(device)) if group.rank == 0 else schedule.eval()
    seconds = time.perf_counter() - began
    result = None
    if group.rank == last:
        result = PipelineResult(
            group.size,
            request.microbatches,
            tuple(ids.shape),
            tuple(logits.shape),
            str(request.output) if request.output is not None else None,
            seconds,
        )
    out = request.output
    if out is not None:
        write = (lambda: _write(out, logits, ids)) if group.rank == last else (lambda: None)
        group.agree(write, "writing the output")
    found = group.gather(result, "gathering the forward pass")
    return found[last] if group.rank == 0 else None
