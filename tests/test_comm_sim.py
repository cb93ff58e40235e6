"""Byte accounting (parallel/comm_sim.py, DiLoCo.step_bytes) against the collectives of the compiled HLO,
and the utilisation simulator against closed forms on one-layer models."""
import math
import re
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models.transformer import DecoderLM, TransformerConfig
from parallel import comm_sim, diloco

_COLLECTIVE = re.compile(r"=\s*(.*?)\s(all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all)"
                         r"(?:-start)?\(")
_SHAPE = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|bf16|f16|f32|f64|f8e4m3fn)\[([\d,]*)\]")
_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2,
             "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


def hlo_collectives(hlo: str) -> list[dict]:
    """Every collective of an optimised HLO module: kind, operand bytes per device, replica groups."""
    found = []
    for line in hlo.splitlines():
        m = _COLLECTIVE.search(line)
        if not m:
            continue
        result_bytes = sum(_ITEMSIZE[d] * math.prod(int(x) for x in dims.split(",") if x)
                           for d, dims in _SHAPE.findall(m.group(1)))
        groups = re.search(r"replica_groups=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)\}", line)
        groups = [tuple(int(x) for x in g.split(",")) for g in re.findall(r"\{([\d,]*)\}", groups.group(1))]
        kind = m.group(2)
        operand = result_bytes // len(groups[0]) if kind == "all-gather" else result_bytes
        found.append({"kind": kind, "bytes": operand, "groups": groups})
    return found


def tiny_lm_params():
    cfg = TransformerConfig(num_layers=4, num_heads=2, d_model=16, mlp_dim=24, max_seq_len=8)
    init = lambda k: nn.unbox(DecoderLM(cfg).init(k, jnp.zeros((1, 8), jnp.int32))["params"])  # noqa: E731
    return jax.jit(init)(jax.random.PRNGKey(0))


def make_trainer(params, **kwargs):
    cfg = diloco.DiLoCoConfig(**{"workers": 2, "inner_steps": 4, **kwargs})
    mesh = diloco.make_worker_mesh(cfg.workers)
    loss = lambda p, b: sum(jnp.sum((x - 1.0) ** 2) for x in jax.tree.leaves(p)) * jnp.mean(b["x"])  # noqa: E731
    return diloco.DiLoCo(cfg, loss, optax.adam(1e-3), mesh, params.keys())


def worker_of(mesh):
    return {d.id: w for w in range(mesh.shape["workers"]) for d in mesh.devices[w]}


def crosses_workers(groups, mesh) -> bool:
    owner = worker_of(mesh)
    return any(len({owner[i] for i in g}) > 1 for g in groups)


@pytest.fixture(scope="module")
def lm_params():
    return tiny_lm_params()


_slow = lambda *case: pytest.param(*case, marks=pytest.mark.slow)  # noqa: E731
SYNC_CASES = [
    # precision, fp4 format, scale, topk_fraction, error_feedback, workers
    ("fp32", "e3m0", "tensor", 1.0, False, 2), ("bf16", "e3m0", "tensor", 1.0, False, 2),
    ("fp8", "e3m0", "row", 1.0, False, 2), ("fp4", "e3m0", "tensor", 1.0, False, 2),
    ("fp4", "e2m1", "row", 1.0, False, 2),
    ("int2", "e3m0", "row", 0.1, True, 2), ("sign1", "e3m0", "tensor", 0.3, True, 8),
    _slow("int2", "e3m0", "tensor", 1.0, True, 2), _slow("sign1", "e3m0", "row", 1.0, True, 2),
    _slow("fp32", "e3m0", "tensor", 0.25, True, 2), _slow("fp4", "e3m0", "tensor", 0.5, False, 4),
    _slow("int2", "e3m0", "tensor", 1.0, True, 4), _slow("fp4", "e3m0", "tensor", 1.0, False, 8),
]


@pytest.mark.parametrize("precision,fmt,scale,topk,ef,workers", SYNC_CASES)
def test_sync_payload_equals_hlo_collective_operands(devices, lm_params, precision, fmt, scale, topk, ef, workers):
    """The bytes the accounting says a sync sends are the operands of the sync's compiled collectives, all of
    them between workers (packed codes, scales, top-k indices at their width); error feedback adds none."""
    trainer = make_trainer(lm_params, algo="streaming", fragments=2, outer_precision=precision, fp4_format=fmt,
                           quant_scale=scale, topk_fraction=topk, error_feedback=ef, workers=workers)
    state = trainer.init(lm_params)
    shapes = trainer.fragment_shapes(lm_params)
    per_worker = 8 // workers
    for p, t in ((0, 4), (1, 2)):
        assert trainer.events(t)[0] == [p]
        compiled = trainer.sync_cores[p].lower(*trainer.sync_inputs(state, p)).compile()
        collectives = hlo_collectives(compiled.as_text())
        assert len(collectives) == 1, "one collective per fragment: its tensors packed into one message"
        assert all(c["kind"] == comm_sim.collective_kind(trainer.cfg.codec) for c in collectives)
        assert all(crosses_workers(c["groups"], trainer.mesh) for c in collectives)
        assert all(len(g) == workers for c in collectives for g in c["groups"])
        payload, wire, mesh_wire = trainer.step_bytes(t, shapes)
        assert sum(c["bytes"] for c in collectives) == payload
        assert payload == sum(q_bytes(s, trainer.cfg) for s in shapes[p])
        assert wire == comm_sim.wire_bytes(payload, comm_sim.collective_kind(trainer.cfg.codec), workers)
        grads = 4 * sum(x.size for x in jax.tree.leaves(lm_params))  # plus the inner all-reduce inside a worker
        assert mesh_wire == wire + 2 * (per_worker - 1) / per_worker * grads
    # fragments partition the parameters
    n = sum(x.size for x in jax.tree.leaves(lm_params))
    assert sum(math.prod(s) for f in shapes for s in f) == n


def q_bytes(shape, cfg) -> int:
    """The payload of one tensor written out from the formulas (quantize.payload_nbytes's docstring)."""
    rows, cols = (math.prod(shape[:-1]), shape[-1]) if len(shape) > 1 else (1, shape[0])
    if cfg.topk_fraction < 1:
        k = min(cols, max(1, math.floor(cfg.topk_fraction * cols + 0.5)))
        index = 1 if cols <= 256 else 2 if cols <= 65536 else 4
        dense = types.SimpleNamespace(outer_precision=cfg.outer_precision, quant_scale=cfg.quant_scale, topk_fraction=1)
        return rows * k * index + q_bytes((rows, k), dense)
    n = rows * cols
    scales = 4 * (rows if cfg.quant_scale == "row" else 1)
    return {"fp32": 4 * n, "bf16": 2 * n, "fp8": n + scales, "fp4": -(-n // 2) + scales,
            "int2": -(-n // 4) + scales, "sign1": -(-n // 8) + scales}[cfg.outer_precision]


def test_inner_step_communicates_only_inside_a_worker_and_dp_everywhere(devices, lm_params):
    batch = {"x": jnp.ones((8, 1))}
    n_bytes = 4 * sum(x.size for x in jax.tree.leaves(lm_params))
    for algo in ("diloco", "dp"):
        trainer = make_trainer(lm_params, algo=algo)
        state = trainer.init(lm_params)
        b = jax.device_put(batch, trainer.batch_sharding)
        collectives = hlo_collectives(trainer._inner[1].lower(state, b).compile().as_text())
        assert sum(c["bytes"] for c in collectives) == n_bytes  # one FP32 gradient all-reduce
        cross = sum(c["bytes"] for c in collectives if crosses_workers(c["groups"], trainer.mesh))
        payload, wire, mesh_wire = trainer.step_bytes(1, trainer.fragment_shapes(lm_params))
        assert cross == payload == (n_bytes if algo == "dp" else 0)
        # between the 2 workers DP's all-reduce moves 2 (M-1)/M = 1 x its gradient bytes; over the 8-device
        # ring 2 * 7/8; a DiLoCo inner step moves nothing between workers, 2 * 3/4 inside each 4-device worker
        assert wire == (n_bytes if algo == "dp" else 0)
        assert mesh_wire == (2 * 7 / 8 if algo == "dp" else 2 * 3 / 4) * n_bytes


def test_byte_counter_cumulative_and_peak():
    counter = comm_sim.ByteCounter()
    for payload in (0, 10, 0, 30, 5):
        counter.add_step(comm_sim.StepBytes(payload, 2 * payload, 3 * payload + 1), syncs=int(payload > 0))
    assert (counter.cumulative_payload, counter.peak_payload, counter.peak_wire, counter.syncs) == (45, 30, 60, 3)
    assert (counter.cumulative_mesh_wire, counter.peak_mesh_wire) == (140, 91)
    assert comm_sim.ByteCounter.from_dict(counter.as_dict()) == counter


def test_wire_bytes_ring_formulas():
    assert comm_sim.wire_bytes(100, "all-reduce", 4) == 150.0
    assert comm_sim.wire_bytes(100, "all-gather", 4) == 300.0
    assert comm_sim.wire_bytes(100, "all-reduce", 1) == 0.0


# ----------------------------------------------------------------------------- simulator
ONE_LAYER = comm_sim.SimModel(layer_params=(1e9,), step_time_s=0.3, workers=2)


def comm_time(bits, bandwidth_gbps, params=1e9, workers=2):
    return 2 * (workers - 1) / workers * params * bits / (bandwidth_gbps * 1e9)


def test_dp_one_layer_matches_closed_form():
    """One layer: nothing to overlap with, so a DP step lasts compute + all-reduce."""
    method = comm_sim.SimMethod("dp", "dp", 16)
    for bw in (10.0, 100.0, 1000.0):
        expected = 0.3 / (0.3 + comm_time(16, bw))
        assert comm_sim.simulate_utilisation(ONE_LAYER, method, bw) == pytest.approx(expected, rel=1e-9)


def test_diloco_one_layer_matches_closed_form():
    method = comm_sim.SimMethod("diloco", "diloco", 16, inner_steps=10)
    bw = 5.0
    expected = 10 * 0.3 / (10 * 0.3 + comm_time(16, bw))
    assert comm_sim.simulate_utilisation(ONE_LAYER, method, bw) == pytest.approx(expected, rel=1e-9)


def test_overlap_hides_a_transfer_shorter_than_tau_steps():
    model = comm_sim.SimModel(layer_params=(1e8,) * 4, step_time_s=0.3, workers=2)
    no_overlap = comm_sim.SimMethod("s", "streaming", 4, inner_steps=20, fragments=4, overlap_tau=0)
    overlap = comm_sim.SimMethod("s", "streaming", 4, inner_steps=20, fragments=4, overlap_tau=2)
    bw = 2.0  # one fragment (1e8 params, 4 bits) takes 0.2 s < 2 steps of 0.3 s
    assert comm_sim.simulate_utilisation(model, overlap, bw) == pytest.approx(1.0, abs=1e-9)
    assert comm_sim.simulate_utilisation(model, no_overlap, bw) < 0.99


def test_bandwidth_for_utilisation_inverts_the_simulator():
    method = comm_sim.SimMethod("dp", "dp", 16)
    bw = comm_sim.bandwidth_for_utilisation(ONE_LAYER, method, 0.9)
    assert comm_sim.simulate_utilisation(ONE_LAYER, method, bw) >= 0.9
    assert comm_sim.simulate_utilisation(ONE_LAYER, method, bw * 0.99) < 0.9
    # closed form: 0.3 / (0.3 + c) = 0.9  ->  c = 0.3/9
    assert bw == pytest.approx(16 / (0.3 / 9), rel=1e-6)


def test_utilisation_is_monotone_in_bandwidth_and_methods_are_ordered():
    model = comm_sim.SimModel(layer_params=comm_sim.transformer_layer_params(1e9, 24), step_time_s=0.3)
    bws = np.geomspace(0.1, 1000, 12)
    rows = {m.name: [comm_sim.simulate_utilisation(model, m, b) for b in bws] for m in comm_sim.table4_methods()}
    for values in rows.values():
        assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    dp, fp4 = rows["Data-Parallel"], rows["Streaming DiLoCo + overlap + FP4"]
    assert all(b >= a for a, b in zip(dp, fp4))
