"""Communication accounting and a compute-utilisation simulator for DP, DiLoCo and Streaming DiLoCo.

Two parts:

* **Exact byte accounting** of what a worker puts on the wire. ``payload`` bytes are the operand of the
  cross-worker collective (an all-reduce of FP32 gradients or outer gradients, or an all-gather of encoded
  low-precision ones, see parallel/quantize.py); ``wire`` bytes are what a bandwidth-optimal ring moves
  per participant: ``2 (M-1)/M · payload`` for an all-reduce, ``(M-1) · payload`` for an all-gather
  (Patarasuk & Yuan 2009). Payloads are exact (:func:`parallel.quantize.payload_nbytes`: packed codes, their
  scales, top-k indices at their integer width); tests/test_comm_sim.py checks them against the operands of
  the collectives in the compiled HLO. Every method is counted over the same link, **between the M workers**
  (the slow link DiLoCo is about: data-parallel all-reduces its gradients across the M worker groups every
  step, 2 (M-1)/M of their bytes), and separately over the **whole mesh** (every device's ring traffic,
  including the gradient all-reduce inside a worker).

* **Utilisation simulator** in the spirit of Streaming DiLoCo (Douillard et al. 2025, Sec. 3.1, Fig. 4
  and Table 4): a per-layer schedule of one worker's steps, forward layers 1..L then backward L..1,
  with one serial network link. A layer's (outer) gradient is reduced as soon as its backward ends
  (overlapped with the backward of the layers below, "for all methods the reduction is overlapped
  over the backward pass") and the next forward of that layer waits for it. Data-parallel reduces
  every step; DiLoCo reduces all layers every H steps; Streaming DiLoCo reduces fragment p at steps
  t ≡ t_p (mod H), and with overlap the next forward of the fragment's layers waits only until
  τ steps later. Compute utilisation = compute time / wall time; :func:`bandwidth_for_utilisation`
  bisects the bandwidth that reaches a target utilisation (Table 4's columns).
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Sequence

from parallel import quantize

BITS_PER_BYTE = 8


# ----------------------------------------------------------------------------- byte accounting
def collective_kind(codec: quantize.Codec) -> str:
    """Dense FP32 outer gradients are all-reduced; encoded or top-k sparsified ones (each worker keeps other
    entries) are all-gathered and summed in FP32."""
    return "all-reduce" if codec.lossless else "all-gather"


def wire_bytes(payload: int, kind: str, workers: int) -> float:
    """Bytes one participant sends in a ring all-reduce / all-gather of ``payload`` bytes each."""
    if workers <= 1:
        return 0.0
    if kind == "all-reduce":
        return 2.0 * (workers - 1) / workers * payload
    if kind == "all-gather":
        return float((workers - 1) * payload)
    raise ValueError(f"kind={kind!r}; allowed: 'all-reduce', 'all-gather'")


def shapes_payload(shapes: Sequence[tuple[int, ...]], codec: quantize.Codec) -> int:
    """Exact payload bytes of a list of tensors encoded with ``codec``."""
    return int(sum(quantize.payload_nbytes(s, codec) for s in shapes))


class StepBytes(NamedTuple):
    """Bytes one participant sends at one step: ``payload`` (the cross-worker collective's operand),
    ``wire`` (its ring traffic between the M workers) and ``mesh_wire`` (ring traffic over every link of
    the mesh, the gradient all-reduce inside a worker included)."""
    payload: int
    wire: float
    mesh_wire: float


@dataclasses.dataclass
class ByteCounter:
    """Cumulative and peak bytes sent by one participant, updated step by step: collective payload, ring
    wire bytes between workers, and ring wire bytes over the whole mesh."""
    cumulative_payload: int = 0
    cumulative_wire: float = 0.0
    peak_payload: int = 0
    peak_wire: float = 0.0
    syncs: int = 0
    cumulative_mesh_wire: float = 0.0
    peak_mesh_wire: float = 0.0

    def add_step(self, step: StepBytes, syncs: int = 0) -> None:
        self.cumulative_payload += int(step.payload)
        self.cumulative_wire += float(step.wire)
        self.cumulative_mesh_wire += float(step.mesh_wire)
        self.peak_payload = max(self.peak_payload, int(step.payload))
        self.peak_wire = max(self.peak_wire, float(step.wire))
        self.peak_mesh_wire = max(self.peak_mesh_wire, float(step.mesh_wire))
        self.syncs += syncs

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ByteCounter":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


# ----------------------------------------------------------------------------- utilisation simulator
@dataclasses.dataclass(frozen=True)
class SimMethod:
    """One row of Table 4. ``algo`` in {dp, diloco, streaming}; ``bits`` per communicated parameter."""
    name: str
    algo: str
    bits: float
    inner_steps: int = 1
    fragments: int = 1
    overlap_tau: int = 0


@dataclasses.dataclass(frozen=True)
class SimModel:
    """Per-layer parameter counts and the compute time of one step (forward + backward = 3 forwards)."""
    layer_params: tuple[float, ...]
    step_time_s: float
    workers: int = 2

    @property
    def num_params(self) -> float:
        return float(sum(self.layer_params))


def transformer_layer_params(num_params: float, num_layers: int) -> tuple[float, ...]:
    """Equal parameter shares per layer (the FLOPs of a step are proportional to them)."""
    return tuple([num_params / num_layers] * num_layers)


def fragment_layers(num_layers: int, fragments: int, pattern: str = "strided") -> list[list[int]]:
    """Layer indices of each fragment: strided, layer l in fragment l mod P (the paper's default);
    sequential, contiguous chunks [p·L/P, (p+1)·L/P) (rounded down, so fragment 0, which also carries
    the embeddings, gets the smaller chunk)."""
    if pattern == "strided":
        return [list(range(p, num_layers, fragments)) for p in range(fragments)]
    return [list(range(p * num_layers // fragments, (p + 1) * num_layers // fragments)) for p in range(fragments)]


def simulate_utilisation(model: SimModel, method: SimMethod, bandwidth_gbps: float,
                         outer_steps: int = 3) -> float:
    """Compute utilisation of ``method`` at ``bandwidth_gbps`` (Gbit/s per worker) by event simulation.

    One worker, layers of compute time ∝ parameters (forward 1/3, backward 2/3 of a step); a link that
    carries one transfer at a time, FIFO by readiness. A transfer of b bytes takes the ring all-reduce
    time 2 (M-1)/M · b / bandwidth. Simulates ``outer_steps · H`` steps after one warm-up period.
    """
    layers = model.layer_params
    L = len(layers)
    total = sum(layers)
    fwd = [model.step_time_s / 3 * p / total for p in layers]
    bwd = [2 * f for f in fwd]
    bytes_per_param = method.bits / BITS_PER_BYTE
    bandwidth = bandwidth_gbps * 1e9 / BITS_PER_BYTE  # bytes/s
    ring = 2.0 * (model.workers - 1) / model.workers
    xfer = [ring * p * bytes_per_param / bandwidth for p in layers]

    H = method.inner_steps if method.algo != "dp" else 1
    P = method.fragments if method.algo == "streaming" else 1
    tau = method.overlap_tau if method.algo == "streaming" else 0
    frag_of = [0] * L
    for p, members in enumerate(fragment_layers(L, P)):
        for layer in members:
            frag_of[layer] = p
    offsets = [p * H // P for p in range(P)]

    steps = H * (outer_steps + 1)
    clock = 0.0  # compute stream
    link_free = 0.0
    ready_at = [0.0] * L  # earliest start of layer l's next forward (its reduced update arrived)
    pending: dict[int, list[tuple[int, float]]] = {}  # step -> [(layer, arrival)]
    first_forward = {}  # step -> when its first forward began
    for t in range(1, steps + 2):
        for layer, arrival in pending.pop(t, []):
            ready_at[layer] = max(ready_at[layer], arrival)
        for layer in range(L):
            clock = max(clock, ready_at[layer])
            if layer == 0:
                first_forward[t] = clock
            clock += fwd[layer]
        synced = [layer for layer in range(L) if (t - offsets[frag_of[layer]]) % H == 0]
        for layer in reversed(range(L)):
            clock += bwd[layer]
            if layer in synced:
                start = max(link_free, clock)
                link_free = start + xfer[layer]
                pending.setdefault(t + 1 + tau, []).append((layer, link_free))
    # the periodic regime: steps H+1 .. steps (a whole number of periods H), first period as warm-up
    measured_steps = steps - H
    return measured_steps * model.step_time_s / (first_forward[steps + 1] - first_forward[H + 1])


def bandwidth_for_utilisation(model: SimModel, method: SimMethod, target: float,
                              low: float = 1e-4, high: float = 1e6, iters: int = 60) -> float:
    """Smallest bandwidth (Gbit/s) whose simulated utilisation reaches ``target`` (bisection in log space)."""
    if simulate_utilisation(model, method, high) < target:
        return math.inf
    for _ in range(iters):
        mid = math.sqrt(low * high)
        if simulate_utilisation(model, method, mid) >= target:
            high = mid
        else:
            low = mid
    return high


# The paper's Table 4 (Douillard et al. 2025), 1B model, Gbit/s for 50/80/90/95/99% utilisation.
PAPER_TABLE4_1B = {
    "Data-Parallel": (86.8, 152.6, 184.2, 222.3, 569.0),
    "Streaming DiLoCo + overlap + FP4": (0.4, 0.9, 1.7, 2.0, 3.0),
}
TABLE4_TARGETS = (0.5, 0.8, 0.9, 0.95, 0.99)


def table4_methods(inner_steps: int = 100, fragments: int = 4, tau: int = 1) -> list[SimMethod]:
    """The method rows of the paper's Table 4 (DP in bf16, as the paper's baseline; FP4 = 4 bits)."""
    return [
        SimMethod("Data-Parallel", "dp", 16),
        SimMethod("DiLoCo H=100", "diloco", 16, inner_steps),
        SimMethod("Streaming DiLoCo", "streaming", 16, inner_steps, fragments, 0),
        SimMethod("Streaming DiLoCo + overlap", "streaming", 16, inner_steps, fragments, tau),
        SimMethod("Streaming DiLoCo + overlap + FP4", "streaming", 4, inner_steps, fragments, tau),
    ]


def table4(model: SimModel, methods: Sequence[SimMethod] | None = None,
           targets: Sequence[float] = TABLE4_TARGETS) -> dict[str, list[float]]:
    """Bandwidth (Gbit/s) needed by each method for each utilisation target."""
    methods = table4_methods() if methods is None else methods
    return {m.name: [bandwidth_for_utilisation(model, m, u) for u in targets] for m in methods}
