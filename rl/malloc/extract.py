"""mallocGame instances from real XLA programs: scheduled HLO -> buffers, live intervals, roofline benefits.

``jax.jit(f).lower(*args).compile().as_text()`` is the optimised HLO module with ``is_scheduled=true``: the
ENTRY computation's instruction order is XLA's schedule. Each entry instruction that materialises an array
(parameters, constants, fusions, dots, copies, ...) defines one buffer:

- size: bytes of its output shape (element count x dtype width; a tuple-shaped output counts its leaves);
- live interval: [position of the definition, position of the last use]; parameters are live from 0,
  the ROOT's buffers to the end of the schedule. Aliasing instructions (``bitcast``, ``get-tuple-element``,
  ``tuple``, ``opt-barrier``) define no buffer: a use of them is a use of the buffers they alias.
- benefit (mallocMuZero paper, Sec. 2: time saved by mapping the buffer to fast memory), from a roofline
  model of every instruction ``op`` that defines or reads the buffer::

      t(op | F) = max(flops(op) / flop_rate,  sum_{b slow} bytes_b / slow_bw + sum_{b in F} bytes_b / fast_bw)
      benefit(b) = sum_{op touching b} t(op | {}) - t(op | {b})          (seconds, stored in ns)

  so an op that stays compute-bound with all operands slow contributes nothing. ``flops`` counts
  2*M*N*K for dots (including those inside fusions), one per output element for element-wise work and one
  per input element for reductions.

Capacity: ``capacity_fraction`` x the peak live bytes of the instance (fast memory is contended).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rl.malloc.instance import Instance

_DTYPE_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")   # names with or without XLA's "%"
_COMP = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_NAME = re.compile(r"%?([\w.\-]+)$")
_LITERAL_OPS = {"parameter", "constant"}  # their parentheses hold a number or a literal, not operands
_ALIAS_OPS = {"bitcast", "get-tuple-element", "tuple", "opt-barrier"}
_NO_FLOP_OPS = {"parameter", "constant", "bitcast", "get-tuple-element", "tuple", "broadcast", "reshape",
                "transpose", "copy", "slice", "dynamic-slice", "dynamic-update-slice", "concatenate", "iota",
                "pad", "opt-barrier", "copy-start", "copy-done", "after-all", "partition-id", "replica-id",
                "gather", "scatter", "reverse"}


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Roofline constants (defaults: an accelerator with HBM as slow memory and on-chip SRAM as fast memory,
    the TPU/GPU setting of the paper): bytes/s of slow and fast memory, FLOP/s of the compute units."""
    slow_bw: float = 1.0e12    # HBM-class, bytes/s
    fast_bw: float = 1.0e13    # on-chip SRAM-class, bytes/s (10x)
    flop_rate: float = 1.0e14  # FLOP/s

    def __post_init__(self):
        for f in ("slow_bw", "fast_bw", "flop_rate"):
            if not getattr(self, f) > 0:
                raise ValueError(f"CostModel.{f}={getattr(self, f)!r} must be > 0")


@dataclasses.dataclass(frozen=True)
class HloInstr:
    name: str
    shape: str
    opcode: str
    operands: tuple[str, ...]
    attrs: str
    is_root: bool


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string (arrays or tuples of arrays; token[] and unknown types count 0)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape.split("{")[0] if not shape.startswith("(") else shape):
        width = _DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else 0)
        total += width * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _elements(shape: str) -> int:
    return sum(math.prod(int(d) for d in dims.split(",") if d) for _, dims in _ARRAY.findall(shape))


def _dims(shape: str) -> list[int]:
    m = _ARRAY.search(shape)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


class HloParseError(ValueError):
    """A line of HLO text that is not what a scheduled module holds; ``line`` is 1-based (0: the whole text)."""

    def __init__(self, message: str, line: int = 0):
        super().__init__(message)
        self.line = line


def _balanced(text: str, i: int) -> int:
    """Index just past the parenthesis group opening at text[i]."""
    depth = 0
    for j in range(i, len(text)):
        depth += {"(": 1, ")": -1}.get(text[j], 0)
        if depth == 0:
            return j + 1
    raise HloParseError(f"unbalanced parentheses in {text[:80]!r}")


def _top_level_items(text: str) -> list[str]:
    """``text`` split at the commas outside any (), {} or [] group."""
    items, depth, start = [], 0, 0
    for j, ch in enumerate(text):
        depth += (ch in "({[") - (ch in ")}]")
        if ch == "," and depth == 0:
            items.append(text[start:j])
            start = j + 1
    return items + [text[start:]]


def _operand_names(opcode: str, inner: str) -> tuple[str, ...]:
    """The instruction names among an operand list: ``%a, %b`` (XLA's default), ``f32[4]{0} %a`` (typed) or
    ``a, b`` (printed without "%"); none for parameter / constant."""
    if opcode in _LITERAL_OPS:
        return ()
    if "%" in inner:
        return tuple(re.findall(r"%([\w.\-]+)", inner))
    names = (item.split()[-1] for item in _top_level_items(inner) if item.strip())
    return tuple(m.group(1) for m in map(_NAME.match, names) if m)


def parse_instruction(line: str) -> HloInstr | None:
    """The instruction on one line of a computation, or None if the line is none (HloParseError for
    unbalanced parentheses)."""
    m = _INSTR.match(line)
    if not m:
        return None
    is_root, name, rest = bool(m.group(1)), m.group(2), m.group(3).strip()
    if rest.startswith("("):
        k = _balanced(rest, 0)
        shape, rest = rest[:k], rest[k:].strip()
    else:
        shape, _, rest = rest.partition(" ")
    op = re.match(r"([\w\-]+)\(", rest)
    if not op:
        return None
    k = _balanced(rest, len(op.group(1)))
    operands = _operand_names(op.group(1), rest[len(op.group(1)) + 1:k - 1])
    return HloInstr(name, shape, op.group(1), operands, rest[k:], is_root)


def parse_module(hlo_text: str) -> tuple[str, dict[str, list[HloInstr]]]:
    """(entry computation name, {computation name: instructions in order}). Raises HloParseError (with the
    line) for a line inside a computation that is no instruction, a computation never closed, an ENTRY
    instruction using a name not defined before it (in a scheduled module every operand comes first) or no
    ENTRY computation. Text outside computations (XLA's FileNames / StackFrames tables) is skipped."""
    comps, entry, current, opened = {}, None, None, 0
    defined: set[str] = set()
    for number, line in enumerate(hlo_text.splitlines(), 1):
        if current is None:
            m = _COMP.match(line)
            if m and "->" in line:
                current, opened = m.group(2), number
                comps[current] = []
                if m.group(1):
                    entry = current
        elif line.strip() == "}":
            current = None
        elif line.strip():
            try:
                instr = parse_instruction(line)
            except HloParseError as e:
                raise HloParseError(str(e), number) from None
            if instr is None:
                raise HloParseError(f"not an HLO instruction ('%name = shape opcode(operands), ...'): "
                                    f"{line.strip()[:80]!r}", number)
            if current == entry:
                missing = [o for o in instr.operands if o not in defined]
                if missing:
                    raise HloParseError(f"%{instr.name} uses %{missing[0]}, which no earlier instruction of "
                                        f"the ENTRY computation defines", number)
                defined.add(instr.name)
            comps[current].append(instr)
    if current is not None:
        raise HloParseError(f"computation %{current} (line {opened}) is never closed with '}}'",
                            len(hlo_text.splitlines()))
    if entry is None:
        raise HloParseError("no ENTRY computation found in the HLO text")
    if not comps[entry]:
        raise HloParseError(f"the ENTRY computation %{entry} has no instructions")
    return entry, comps


def instr_flops(instr: HloInstr, comps: dict, shapes: dict[str, str], _depth: int = 0) -> float:
    """Approximate FLOPs of one instruction (recursing into fusions / calls)."""
    if instr.opcode == "dot":
        lhs = _dims(shapes.get(instr.operands[0], "")) if instr.operands else []
        m = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", instr.attrs)
        k = math.prod(lhs[int(d)] for d in m.group(1).split(",") if d) if m and lhs else 1
        return 2.0 * _elements(instr.shape) * k
    if instr.opcode == "convolution" and len(instr.operands) > 1:
        rhs = _dims(shapes.get(instr.operands[1], ""))
        return 2.0 * _elements(instr.shape) * (math.prod(rhs) / max(rhs[-1], 1) if rhs else 1)
    called = re.search(r"calls=%?([\w.\-]+)", instr.attrs)
    if called and called.group(1) in comps and _depth < 8:
        body = comps[called.group(1)]
        inner = {i.name: i.shape for i in body}
        return sum(instr_flops(i, comps, inner, _depth + 1) for i in body)
    if instr.opcode == "reduce" and instr.operands:
        return float(_elements(shapes.get(instr.operands[0], "")))
    if instr.opcode in _NO_FLOP_OPS:
        return 0.0
    return float(_elements(instr.shape))


def buffers_from_hlo(hlo_text: str, cost: CostModel = CostModel()) -> dict:
    """Scheduled HLO text -> dict(names, sizes, starts, ends, benefits) of the entry computation's buffers."""
    entry, comps = parse_module(hlo_text)
    body = comps[entry]
    shapes = {i.name: i.shape for i in body}
    alias: dict[str, tuple[str, ...]] = {}
    defined: dict[str, int] = {}   # buffer name -> schedule position
    for pos, ins in enumerate(body):
        if ins.opcode in _ALIAS_OPS:
            alias[ins.name] = tuple(b for o in ins.operands for b in alias.get(o, (o,)))
        elif shape_bytes(ins.shape) > 0:
            defined[ins.name] = pos
    last = dict(defined)
    for b, pos in defined.items():
        if body[pos].opcode == "parameter":
            defined[b] = 0
    benefit = {b: 0.0 for b in defined}
    for pos, ins in enumerate(body):
        if ins.opcode in _ALIAS_OPS:
            continue
        touched = []
        for o in ins.operands:
            touched.extend(b for b in alias.get(o, (o,)) if b in defined)
        for b in touched:
            last[b] = max(last[b], pos)
        if ins.name in defined and ins.opcode not in ("parameter", "constant"):
            touched.append(ins.name)
        touched = list(dict.fromkeys(touched))
        if not touched:
            continue
        nbytes = {b: shape_bytes(shapes[b]) for b in touched}
        total = sum(nbytes.values())
        compute = instr_flops(ins, comps, shapes) / cost.flop_rate
        t_slow = max(compute, total / cost.slow_bw)
        for b in touched:
            t_fast = max(compute, (total - nbytes[b]) / cost.slow_bw + nbytes[b] / cost.fast_bw)
            benefit[b] += t_slow - t_fast
    end = len(body) - 1
    for ins in body:
        if ins.is_root:
            for b in alias.get(ins.name, (ins.name,)):
                if b in last:
                    last[b] = end
    names = list(defined)
    return dict(names=names, sizes=[shape_bytes(shapes[b]) for b in names], starts=[defined[b] for b in names],
                ends=[last[b] for b in names], benefits=[round(benefit[b] * 1e9, 6) for b in names])


def instance_from_hlo(hlo_text: str, name: str, capacity: int | None = None, capacity_fraction: float = 0.25,
                      cost: CostModel = CostModel(), meta: dict | None = None) -> Instance:
    """Instance of all entry buffers; capacity defaults to ``capacity_fraction`` x peak live bytes."""
    if capacity is None and not 0 < capacity_fraction <= 1:
        raise ValueError(f"capacity_fraction={capacity_fraction!r} must be in (0, 1]")
    d = buffers_from_hlo(hlo_text, cost)
    inst = Instance(name=name, sizes=np.array(d["sizes"], np.int64), starts=np.array(d["starts"], np.int64),
                    ends=np.array(d["ends"], np.int64), benefits=np.array(d["benefits"]), capacity=1,
                    buffer_names=tuple(d["names"]))
    if capacity is None:
        capacity = max(1, int(capacity_fraction * inst.peak_live_bytes()))
    info = {"source": "xla", "cost_model": dataclasses.asdict(cost), "capacity_fraction": capacity_fraction,
            **(meta or {})}
    return dataclasses.replace(inst, capacity=int(capacity), meta=info)


def compiled_hlo(fn: Callable, *args) -> str:
    """XLA's optimised, scheduled HLO text of ``jax.jit(fn)(*args)`` on the default backend."""
    return jax.jit(fn).lower(*args).compile().as_text()


def extract(fn: Callable, args: tuple, name: str, **kwargs) -> Instance:
    return instance_from_hlo(compiled_hlo(fn, *args), name, meta={"backend": jax.default_backend()},
                             **kwargs)


def windows(instance: Instance, max_buffers: int, capacity_fraction: float = 0.25) -> list[Instance]:
    """Split a large instance into consecutive schedule windows of at most ``max_buffers`` buffers (in
    schedule order, times shifted to start at 0, capacity re-derived per window): game-sized instances."""
    order = instance.schedule_order()
    out = []
    for w, lo in enumerate(range(0, len(order), max_buffers)):
        idx = order[lo:lo + max_buffers]
        t0 = int(instance.starts[idx].min())
        sub = Instance(name=f"{instance.name}_w{w}", sizes=instance.sizes[idx], starts=instance.starts[idx] - t0,
                       ends=instance.ends[idx] - t0, benefits=instance.benefits[idx], capacity=1,
                       buffer_names=tuple(instance.buffer_names[i] for i in idx))
        if sub.total_benefit <= 0:
            continue
        cap = max(1, int(capacity_fraction * sub.peak_live_bytes()))
        out.append(dataclasses.replace(sub, capacity=cap, meta={**instance.meta, "window": w,
                                                                 "capacity_fraction": capacity_fraction}))
    return out


# ---------------------------------------------------------------- the toolkit's own programs (builders)
# Each returns (fn, args) ready for ``extract``; sizes are small so that compiling takes ~1 s on CPU.

def lm_train_step(num_layers: int = 1, d_model: int = 32, num_heads: int = 2, mlp_dim: int = 64,
                  seq_len: int = 16, batch: int = 4, moe_experts: int = 0):
    """One AdamW step of the byte-level DecoderLM (the loss and update of scripts/train_lm.py); with
    ``moe_experts > 0`` every FFN is parallel.moe's dropless top-2 MoE (expert width mlp_dim / 2)."""
    import optax
    from models.transformer import DecoderLM
    from parallel import moe as moe_lib
    cfg = _lm_config(num_layers, d_model, num_heads, mlp_dim, seq_len)
    if moe_experts:
        factory = moe_lib.moe_ffn_factory(moe_lib.MoEConfig(num_experts=moe_experts, top_k=2), None,
                                          hidden=max(1, mlp_dim // 2))
        model = DecoderLM(cfg, ffn_factory=factory)
    else:
        model = DecoderLM(cfg)
    tokens = jnp.zeros((batch, seq_len), jnp.int32)
    params = model.init(jax.random.key(0), tokens)["params"]
    opt = optax.adamw(1e-3, b2=0.99, weight_decay=0.1)
    opt_state = opt.init(params)

    def step(params, opt_state, inputs, targets):
        def loss(p):
            logits = model.apply({"params": p}, inputs)
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value
    return step, (params, opt_state, tokens, tokens)


def mnist1d_mlp_step(hidden: tuple[int, ...] = (100, 100), batch: int = 64, inputs: int = 40, classes: int = 10):
    """One SGD step of an MLP classifier on MNIST-1D-shaped inputs [batch, 40]."""
    dims = (inputs, *hidden, classes)
    keys = jax.random.split(jax.random.key(0), len(dims) - 1)
    params = [(jax.random.normal(k, (a, b)) / math.sqrt(a), jnp.zeros(b)) for k, a, b in zip(keys, dims, dims[1:])]
    x = jnp.zeros((batch, inputs))
    y = jnp.zeros((batch,), jnp.int32)

    def step(params, x, y):
        def loss(ps):
            h = x
            for w, b in ps[:-1]:
                h = jax.nn.relu(h @ w + b)
            logits = h @ ps[-1][0] + ps[-1][1]
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))
        value, grads = jax.value_and_grad(loss)(params)
        return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), value
    return step, (params, x, y)


def attention_fwd_bwd(batch: int = 2, heads: int = 4, seq: int = 64, head_dim: int = 32):
    """Causal softmax attention forward and its gradient w.r.t. q, k, v."""
    q = jnp.ones((batch, heads, seq, head_dim))

    def attn(q, k, v):
        s = jnp.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(head_dim)
        s = jnp.where(jnp.tril(jnp.ones((seq, seq), bool)), s, -1e9)
        return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, axis=-1), v)

    def step(q, k, v):
        out, vjp = jax.vjp(attn, q, k, v)
        return out, vjp(jnp.ones_like(out))
    return step, (q, q + 1, q + 2)


def _lm_config(num_layers: int, d_model: int, num_heads: int, mlp_dim: int, seq_len: int):
    """The DecoderLM of the extracted programs: float32, XLA attention, the v1 initialisation."""
    from models.transformer import TransformerConfig
    return TransformerConfig(num_layers=num_layers, d_model=d_model, num_heads=num_heads, mlp_dim=mlp_dim,
                             max_seq_len=seq_len, dtype="float32", attention="xla", init="v1")


def _lm_params(num_layers: int, d_model: int, num_heads: int, mlp_dim: int, seq_len: int):
    from models.transformer import DecoderLM
    cfg = _lm_config(num_layers, d_model, num_heads, mlp_dim, seq_len)
    return DecoderLM(cfg).init(jax.random.key(0), jnp.zeros((1, seq_len), jnp.int32))["params"]


def diloco_outer_step(num_layers: int = 1, d_model: int = 32, num_heads: int = 2, mlp_dim: int = 64,
                      seq_len: int = 16, workers: int = 4, precision: str = "fp4"):
    """Streaming DiLoCo's outer step on the DecoderLM's parameters (parallel/diloco.py): every worker's outer
    gradient Δ_m = θ - θ_m through the ``precision`` codec (parallel/quantize.py), their mean, and the outer
    Nesterov update; the workers are a stacked leading axis (one host's view of the all-gather)."""
    import optax
    from parallel import diloco, quantize
    params = _lm_params(num_layers, d_model, num_heads, mlp_dim, seq_len)
    local = jax.tree.map(lambda x: jnp.stack([x] * workers), params)
    outer = diloco.outer_optimizer()
    codec = quantize.Codec(precision=precision)

    def step(global_params, local_params, outer_state):
        delta = jax.vmap(lambda lp: diloco.outer_gradient(global_params, lp))(local_params)
        avg = jax.tree.map(lambda d: jnp.mean(jax.vmap(lambda x: quantize.roundtrip(x, codec))(d), axis=0), delta)
        updates, outer_state = outer.update(avg, outer_state, global_params)
        return optax.apply_updates(global_params, updates), outer_state
    return step, (params, local, outer.init(params))


def algoperf_step(workload: str = "ctr", batch: int = 0):
    """One NAdamW training step (the AlgoPerf baseline's optimiser family) of an AlgoPerf-suite workload
    (algoperf/workloads): the workload's own model_fn and loss_fn on a batch of its input shape (``batch``
    0: the workload's default batch size)."""
    import importlib
    import optax
    from algoperf import spec
    from algoperf.workloads import WORKLOADS
    module, cls = WORKLOADS[workload].split(":")
    wl = getattr(importlib.import_module(module), cls)()
    params, model_state = wl.init_model_fn(jax.random.key(0))
    example = np.asarray(wl.example_inputs())
    batch = batch or wl.default_batch_size
    inputs = jnp.zeros((batch,) + example.shape[1:], example.dtype)
    targets = jnp.zeros((batch,) + ((example.shape[1],) if example.dtype == np.int32 else ()),
                        jnp.int32 if example.dtype == np.int32 or workload.startswith("mnist") else jnp.float32)
    opt = optax.nadamw(1e-3, b2=0.99, weight_decay=1e-4)

    def step(params, opt_state, inputs, targets):
        def loss(p):
            logits, _ = wl.model_fn(p, {"inputs": inputs}, model_state, spec.ForwardPassMode.TRAIN,
                                    jax.random.key(1), update_batch_norm=True)
            out = wl.loss_fn(targets, logits)
            return out["summed"] / out["n_valid_examples"]
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value
    return step, (params, opt.init(params), inputs, targets)


BUILDERS = {"lm_train_step": lm_train_step, "mnist1d_mlp_step": mnist1d_mlp_step,
            "attention_fwd_bwd": attention_fwd_bwd, "diloco_outer_step": diloco_outer_step,
            "algoperf_step": algoperf_step}
