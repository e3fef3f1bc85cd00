"""The inputs of one forward pass of each component at the run's shape, from configs alone.

A component is fed as its pipeline feeds it: a UNet gets the latent of ``--height`` x
``--width`` (divided by the VAE's scale factor), a timestep and the text encoder's hidden
states, with the batch doubled for classifier-free guidance; a Flux-style transformer
gets its packed latent, the T5 and CLIP embeddings and the position ids (guidance is
distilled: no doubling); the VAE decodes the final latent; a text encoder reads its
tokens; a causal LM prefills ``--context`` tokens. Pure: no torch, no model built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bigmodel_cli.runtime.kv import is_causal_lm, text_config
from bigmodel_cli.runtime.shape import RunShape

Shape = tuple[int, ...]
LIBRARIES = ("diffusers", "transformers")  # what components are built, traced and run with
LONG = frozenset({"input_ids", "decoder_input_ids"})  # token ids; every other input is floating
FLOAT32 = frozenset({"timestep", "guidance"})  # floating inputs kept at float32
# the latent side of a denoiser whose config has no sample_size, as its pipeline defaults
DEFAULT_SAMPLE = {"unet": 64, "unet3d": 64, "flux": 128}
DEFAULT_FRAMES = 16
MAX_DEFAULT_CONTEXT = 4096  # a causal LM's default context: its positions, at most this
T5_TOKENS = 512  # Flux's max_sequence_length
DUMMY_TOKENS = 8  # run --forward without the plan's inputs: tokens of text
DUMMY_SIDE = 32  # ... and the largest latent side, so that the pass stays cheap
DUMMY_FRAMES = 2  # ... and a video UNet's frames
CLIP_TOKENS = 77  # a UNet's text length when no text encoder says otherwise


@dataclass(frozen=True)
class Model:
    """A component as the shapes need it: its class and config."""

    name: str
    library: str | None
    class_name: str | None
    config: Mapping[str, Any]


@dataclass(frozen=True)
class Resolved:
    """The run's shape with the defaults filled in from the configs."""

    batch: int
    height: int | None
    width: int | None
    frames: int | None
    context: int | None
    scale: int  # the VAE's scale factor (pixels per latent value)
    guidance: bool  # the denoiser runs twice per step's batch (classifier-free guidance)


def kind_of(m: Model) -> str | None:
    """``unet`` / ``unet3d`` / ``flux`` / ``vae`` / ``text`` / ``lm``, or None (not fed)."""
    cfg, name = m.config, m.class_name or ""
    if m.library == "transformers" or "architectures" in cfg:
        return "lm" if is_causal_lm(cfg) or name.endswith("ForCausalLM") else "text"
    if "latent_channels" in cfg and name.startswith("Autoencoder"):
        return "vae"
    if "cross_attention_dim" in cfg and "in_channels" in cfg:
        return "unet3d" if name == "UNet3DConditionModel" else "unet"
    if "joint_attention_dim" in cfg and "pooled_projection_dim" in cfg and name.startswith("Flux"):
        return "flux"
    return None


def _side(value: Any) -> int | None:
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return int(value) if isinstance(value, int | float) and value > 0 else None


def _vae_scale(models: Mapping[str, Model]) -> int:
    for m in models.values():
        if kind_of(m) == "vae":
            blocks = m.config.get("block_out_channels") or [0]
            return 2 ** max(len(blocks) - 1, 0)
    return 8


def resolve(shape: RunShape, models: Mapping[str, Model], pipeline: str | None) -> Resolved:
    """Fill the shape's blanks: the side from the denoiser's ``sample_size`` times the VAE's
    scale factor (a lone VAE: its own ``sample_size``), frames for video UNets, the context
    of a causal LM from its positions."""
    kinds = {name: kind_of(m) for name, m in models.items()}
    scale = _vae_scale(models)
    side = None
    for name, kind in kinds.items():
        if kind in ("unet", "unet3d", "flux"):
            latent = _side(models[name].config.get("sample_size")) or DEFAULT_SAMPLE[kind]
            side = latent * scale
            break
    else:
        vae = next((models[n] for n, k in kinds.items() if k == "vae"), None)
        side = _side(vae.config.get("sample_size")) if vae is not None else None
    frames = shape.frames
    if frames is None and "unet3d" in kinds.values():
        frames = DEFAULT_FRAMES
    denoisers = [k for k in kinds.values() if k in ("unet", "unet3d")]
    return Resolved(
        batch=shape.batch,
        height=shape.height or side,
        width=shape.width or side,
        frames=frames,
        context=_context(shape, models, kinds),
        scale=scale,
        guidance=bool(denoisers) and pipeline is not None and not pipeline.startswith("Flux"),
    )


def _context(shape: RunShape, models: Mapping[str, Model], kinds: Mapping[str, Any]) -> int | None:
    texts = [models[n] for n, k in kinds.items() if k in ("text", "lm")]
    if not texts:
        return shape.context
    lengths = [text_length(m, shape.context) for m in texts]
    return max(lengths)


def text_length(m: Model, context: int | None) -> int:
    """Tokens a text model reads: ``--context`` (at most its positions), else its
    positions (CLIP: 77; a causal LM: at most 4096), T5 without positions: 512."""
    cfg = text_config(m.config)
    positions = _side(cfg.get("max_position_embeddings") or cfg.get("n_positions"))
    if context is not None:
        return min(context, positions) if positions else context
    if kind_of(m) == "lm":
        return min(positions or MAX_DEFAULT_CONTEXT, MAX_DEFAULT_CONTEXT)
    return positions or T5_TOKENS


def input_shapes(
    m: Model, run: Resolved, models: Mapping[str, Model], context: int | None
) -> dict[str, Shape] | None:
    """The shapes of one forward pass of ``m`` (None: a class this does not know how to feed)."""
    kind = kind_of(m)
    cfg = m.config
    batch = run.batch
    if kind in ("text", "lm"):
        return _text(m, batch, text_length(m, context))
    if run.height is None or run.width is None:
        return None
    h, w = run.height // run.scale, run.width // run.scale
    if kind == "vae":
        frames = run.frames or 1
        return {"latent": (batch * frames, int(cfg["latent_channels"]), h, w)}
    tokens = _encoder_tokens(models, context)
    if kind in ("unet", "unet3d"):
        return _unet(cfg, batch * (2 if run.guidance else 1), h, w, run.frames, tokens)
    if kind == "flux":
        return _flux(cfg, batch, h, w, tokens)
    return None


def _text(m: Model, batch: int, tokens: int) -> dict[str, Shape]:
    """A text model's token ids; an encoder-decoder's (T5, BART: ``is_encoder_decoder``)
    decoder reads as many, teacher-forced (T5's encoder alone is not one)."""
    shapes: dict[str, Shape] = {"input_ids": (batch, tokens)}
    if m.config.get("is_encoder_decoder") is True:
        shapes["decoder_input_ids"] = (batch, tokens)
    return shapes


def _encoder_tokens(models: Mapping[str, Model], context: int | None) -> int:
    """The denoiser's text length: the longest text encoder's (T5 in Flux), CLIP's 77 alone."""
    lengths = [text_length(m, context) for m in models.values() if kind_of(m) == "text"]
    return max(lengths, default=context or CLIP_TOKENS)


def _unet(
    cfg: Mapping[str, Any], batch: int, h: int, w: int, frames: int | None, tokens: int
) -> dict[str, Shape]:
    cross = cfg.get("cross_attention_dim")
    cross = cross[0] if isinstance(cross, list | tuple) else cross
    channels = int(cfg.get("in_channels", 4))
    sample: Shape = (batch, channels, frames or 1, h, w) if frames else (batch, channels, h, w)
    shapes = {"sample": sample, "timestep": (batch,)}
    shapes["encoder_hidden_states"] = (batch, tokens, int(cross or 768))  # 768: SD-1.5's
    if cfg.get("addition_embed_type") == "text_time":  # SDXL: pooled text and six time ids
        pooled = int(cfg["projection_class_embeddings_input_dim"])
        pooled -= 6 * int(cfg["addition_time_embed_dim"])
        shapes |= {"text_embeds": (batch, pooled), "time_ids": (batch, 6)}
    return shapes


def _flux(cfg: Mapping[str, Any], batch: int, h: int, w: int, tokens: int) -> dict[str, Shape]:
    patches = (h // 2) * (w // 2)  # the latent packed 2 x 2
    shapes = {
        "hidden_states": (batch, patches, int(cfg.get("in_channels", 64))),
        "encoder_hidden_states": (batch, tokens, int(cfg["joint_attention_dim"])),
        "pooled_projections": (batch, int(cfg["pooled_projection_dim"])),
        "timestep": (batch,),
        "img_ids": (patches, 3),
        "txt_ids": (tokens, 3),
    }
    if cfg.get("guidance_embeds"):
        shapes["guidance"] = (batch,)
    return shapes


def dummy_inputs(m: Model) -> tuple[str, dict[str, Shape]] | None:
    """``run --forward``'s inputs when the plan counted none: one sample, a few tokens, a
    latent of at most :data:`DUMMY_SIDE` a side; (how to feed it, shapes), or None for a
    class this does not feed. A causal LM is fed as a text model: its logits for every
    token, not a prefill's last. A diffusers class of no known kind whose config has
    ``latent_channels`` is fed as a VAE (its ``decode``), as ``run --forward`` always did."""
    kind, cfg = kind_of(m), m.config
    if kind in ("text", "lm"):
        return "text", _text(m, 1, DUMMY_TOKENS)
    factor = 2 ** max(len(cfg.get("block_out_channels") or [0]) - 1, 0)
    size = _side(cfg.get("sample_size")) or DUMMY_SIDE
    if kind == "vae" or (kind is None and "latent_channels" in cfg):
        side = max(1, min(size // factor, DUMMY_SIDE))
        return "vae", {"latent": (1, int(cfg["latent_channels"]), side, side)}
    if kind in ("unet", "unet3d"):
        side = max(factor, min(size, DUMMY_SIDE) // factor * factor)
        frames = DUMMY_FRAMES if kind == "unet3d" else None
        return kind, _unet(cfg, 1, side, side, frames, DUMMY_TOKENS)
    return None
