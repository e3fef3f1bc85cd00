"""What each component needs at run time: weights after ``--dtype`` and ``--quantize``, one
forward pass's activations at the run's shape, and a causal LM's KV cache.

Weights and the KV cache come from headers and configs (pure); activations are traced
with the component's library (:mod:`.trace`), which is imported only when the run's shape
is counted. A component whose library is missing, or whose class this does not know how
to feed, gets no estimate and a note saying so and how to get one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from bigmodel_cli.checkpoint import Checkpoint, Component
from bigmodel_cli.checkpoint.model_index import read_model_index
from bigmodel_cli.formats.json import read_config
from bigmodel_cli.runtime.inputs import LIBRARIES, Model, Resolved, Shape, input_shapes, resolve
from bigmodel_cli.runtime.kept import load_trace, save_trace, trace_key
from bigmodel_cli.runtime.kv import KVCache, Tokens, cache_dtype, kv_cache
from bigmodel_cli.runtime.library import library_config
from bigmodel_cli.runtime.quantize import HEADS, Tensor, weight_sizes
from bigmodel_cli.runtime.shape import RunShape
from bigmodel_cli.runtime.tracing import Job, Traced, from_doc, to_doc, trace_all
from bigmodel_cli.sizes import DTYPES, DType


@dataclass(frozen=True)
class ComponentRuntime:
    """One component at run time. ``weights``: bytes per tensor as planned."""

    name: str
    weights: tuple[tuple[str, int], ...]
    activations: int | None = None
    kv: KVCache | None = None
    inputs: Mapping[str, Shape] | None = None
    order: tuple[str, ...] | None = None  # its modules in the class's order (forward order)
    method: str | None = None  # --quantize
    note: str | None = None  # why there is no activation estimate; KV layers not known

    @property
    def weight_bytes(self) -> int:
        return sum(n for _, n in self.weights)


@dataclass(frozen=True)
class Estimate:
    shape: RunShape
    resolved: Resolved | None
    components: Mapping[str, ComponentRuntime] = field(default_factory=dict)


def model_of(ckpt: Checkpoint, c: Component) -> Model:
    """The component's library, class and config (``model_index.json``, else ``config.json``)."""
    config = (read_config(c.folder) if ckpt.kind != "file" else None) or {}
    library: str | None = c.library[0] if c.library else None
    class_name: str | None = c.library[1] if c.library else None
    named = config.get("_class_name")
    if class_name is None and isinstance(named, str):
        library, class_name = "diffusers", named
    archs = config.get("architectures")
    if class_name is None and isinstance(archs, list) and archs and isinstance(archs[0], str):
        library, class_name = "transformers", archs[0]
    return Model(c.name, library, class_name, config)


def compute_dtype(c: Component, target: DType | None) -> DType:
    """What the component computes in: ``--dtype``, else its most common floating dtype."""
    if target is not None:
        return target
    widths: Counter[str] = Counter()
    for t in c.tensors:
        if DTYPES[t.dtype].floating:
            widths[t.dtype] += t.nbytes
    return DTYPES[widths.most_common(1)[0][0]] if widths else DTYPES["F32"]


def estimate(ckpt: Checkpoint, shape: RunShape, target: DType | None) -> Estimate:
    """Every component's :class:`ComponentRuntime` at ``shape``."""
    models = {c.name: model_of(ckpt, c) for c in ckpt.components}
    pipeline = _pipeline_class(ckpt)
    resolved = resolve(shape, models, pipeline) if shape.counted else None
    traced = _traced(ckpt, models, resolved, target) if resolved is not None else {}
    found = {}
    for c in ckpt.components:
        found[c.name] = _component(c, models[c.name], shape, resolved, traced.get(c.name), target)
    return Estimate(shape, resolved, found)


def _pipeline_class(ckpt: Checkpoint) -> str | None:
    if ckpt.kind != "pipeline":
        return None
    name = read_model_index(ckpt.root).get("_class_name")
    return name if isinstance(name, str) else None


def _component(
    c: Component,
    m: Model,
    shape: RunShape,
    run: Resolved | None,
    traced: Traced | None,
    target: DType | None,
) -> ComponentRuntime:
    method = shape.method(c.name)
    dtype = compute_dtype(c, target)
    tensors = [Tensor(t.name, t.dtype, t.shape) for t in c.tensors]
    traced = traced or Traced()
    weights = weight_sizes(
        tensors,
        target,
        method,
        linears=traced.linears,
        skip=traced.keep | HEADS,
        no_quantize=shape.no_quantize,
        double_quant=shape.double_quant,
    )
    kv = None
    if run is not None:
        context = run.context or 1
        tokens = Tokens(context, run.batch, shape.encoder_length or context)
        kv_dtype = cache_dtype(shape.kv_dtype, dtype.name)
        names = [t.name for t in tensors]
        kv = kv_cache(m.config, names, tokens, kv_dtype, dtype.bits // 8, library_config)
    notes = [n for n in (traced.note, kv.note if kv else None) if n]
    return ComponentRuntime(
        c.name,
        tuple(weights),
        traced.activations,
        kv,
        traced.inputs,
        traced.order,
        method,
        "; ".join(notes) or None,
    )


def _traced(
    ckpt: Checkpoint, models: Mapping[str, Model], run: Resolved, target: DType | None
) -> dict[str, Traced]:
    """Each component built (and traced), or what an earlier run found
    (:mod:`.kept`); without its library or class, a note saying so. The traces
    not kept run together (:func:`.tracing.trace_all`)."""
    found: dict[str, Traced] = {}
    todo: dict[str, tuple[str, Job]] = {}
    damaged: dict[str, str] = {}  # kept traces passed over, and why
    for c in ckpt.components:
        m = models[c.name]
        shapes = input_shapes(m, run, models, run.context)
        if m.library is None or m.class_name is None:
            found[c.name] = Traced(inputs=shapes, note="no model class named in its config")
            continue
        if m.library not in LIBRARIES:
            note = f"{m.library} is not a library bigmodel traces ({', '.join(LIBRARIES)})"
            found[c.name] = Traced(inputs=shapes, note=note)
            continue
        dtype = compute_dtype(c, target)
        key = trace_key(m.library, m.class_name, m.config, dtype.name, shapes)
        kept, why = load_trace(key)
        if kept is not None:
            found[c.name] = from_doc(kept)
        else:
            todo[c.name] = (key, Job(m, dtype, shapes, sum(t.nbytes for t in c.tensors)))
            if why is not None:
                damaged[c.name] = why
    jobs = [job for _, job in todo.values()]
    for (name, (key, _)), t in zip(todo.items(), trace_all(jobs), strict=True):
        if t.note is None or t.note.startswith("no input shapes"):  # not the machine's
            save_trace(key, to_doc(t))
        why = damaged.get(name)
        found[name] = t if why is None else replace(t, note="; ".join(filter(None, (why, t.note))))
    return found
