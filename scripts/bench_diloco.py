r"""Benchmarks DiLoCo's inner step against data-parallel on the same mesh, the outer step separately,
and prints the utilisation simulator's Table 4 (Streaming DiLoCo, Douillard et al. 2025) beside the paper's.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m scripts.bench_diloco --out=results/bench_diloco.json

Inner-step throughput: DP (gradients all-reduced over all devices every step) vs DiLoCo (gradients
averaged over `data` inside each worker only), interleaved repeats of --steps steps each, warm-up
excluded, medians; the ratio is measured side by side in this process. Outer step: one fragment's sync
(outer gradient, encode, all-gather / all-reduce, FP32 mean, Nesterov update) plus its merge, per precision.
"""
from __future__ import annotations

import statistics
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags

from algoperf.data import text
from models.transformer import DecoderLM
from parallel import comm_sim, diloco
from parallel import mesh as mesh_lib
from scripts import common, train_diloco, train_lm

flags.DEFINE_integer("workers", 2, "M workers.")
flags.DEFINE_integer("num_layers", 2, "Transformer blocks.")
flags.DEFINE_integer("d_model", 128, "Model width.")
flags.DEFINE_integer("mlp_dim", 352, "SwiGLU width.")
flags.DEFINE_integer("batch_size", 16, "Global batch.")
flags.DEFINE_integer("seq_len", 64, "Context length.")
flags.DEFINE_integer("steps", 10, "Inner steps per timed repeat.")
flags.DEFINE_integer("repeats", 5, "Timed repeats (median reported).")
flags.DEFINE_float("sim_step_time", 0.1125, "Simulated 1B step time (s), fitted so DP needs the paper's "
                   "86.8 Gbit/s at 50% utilisation.")
flags.DEFINE_integer("sim_fragments", 8, "Simulated P (24 layers: 3 layers per fragment, as in the paper).")
flags.DEFINE_integer("sim_tau", 1, "Simulated overlap τ.")
flags.DEFINE_bool("table4", True, "Also run the utilisation simulator.")
flags.DEFINE_string("out", "", "Write every figure to this JSON file.")
FLAGS = flags.FLAGS


def _time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def bench_inner(cfg: train_diloco.TrainDiLoCoConfig, steps: int, repeats: int) -> dict:
    lm_cfg = cfg.lm_config()
    model = DecoderLM(lm_cfg.model_config())
    loss_fn = lambda p, b: train_lm.next_token_loss(model, p, b)  # noqa: E731
    mesh = diloco.make_worker_mesh(cfg.workers)
    params = jax.jit(lambda k: nn.unbox(model.init(k, np.zeros((1, cfg.seq_len), np.int32))["params"]))(
        jax.random.PRNGKey(0))
    corpus = text.load_corpus(None, min_split_len=cfg.seq_len + 1)
    batches = [mesh_lib.shard_batch(text.train_batch(corpus.train, 0, i, cfg.batch_size, cfg.seq_len), mesh,
                                    ("workers", "data")) for i in range(steps)]
    trainers, states = {}, {}
    for algo in ("dp", "diloco"):
        dcfg = diloco.DiLoCoConfig(algo=algo, workers=cfg.workers, inner_steps=10 ** 9)
        trainers[algo] = diloco.DiLoCo(dcfg, loss_fn, train_lm.make_optimizer(lm_cfg), mesh, params.keys())
        states[algo] = trainers[algo].init(params)

    def run(algo):
        state = states[algo]
        for b in batches:
            state, losses = trainers[algo].inner_step(state, b)
        states[algo] = state
        return losses

    for algo in trainers:  # warm-up: compile and settle
        jax.block_until_ready(run(algo))
    per_step = {a: [] for a in trainers}
    for _ in range(repeats):  # interleaved, so drifts of a shared machine hit both alike
        for algo in trainers:
            per_step[algo] += [t / steps for t in _time(lambda: run(algo), 1)]
    med = {a: statistics.median(v) for a, v in per_step.items()}
    result = {"inner_step_s": med, "inner_step_all_s": per_step,
              "diloco_over_dp_time_ratio": med["diloco"] / med["dp"],
              "diloco_inner_throughput_vs_dp": med["dp"] / med["diloco"]}

    outer = {}
    for precision in ("fp32", "bf16", "fp8", "fp4"):
        dcfg = diloco.DiLoCoConfig(algo="diloco", workers=cfg.workers, inner_steps=10, outer_precision=precision)
        tr = diloco.DiLoCo(dcfg, loss_fn, train_lm.make_optimizer(lm_cfg), mesh, params.keys())
        st = tr.init(params)
        fn = lambda: tr.merge_fns[0](tr.sync_fns[0](st))  # noqa: E731
        jax.block_until_ready(fn())
        times = _time(fn, repeats * 2)
        payload, _ = tr.step_bytes(10, tr.fragment_shapes(params))
        outer[precision] = {"outer_step_s": statistics.median(times), "payload_bytes": payload,
                            "outer_over_inner_step": statistics.median(times) / med["diloco"]}
    result["outer_step"] = outer
    result["num_params"] = int(sum(x.size for x in jax.tree.leaves(params)))
    return result


def run_table4(step_time: float, fragments: int, tau: int) -> dict:
    model = comm_sim.SimModel(comm_sim.transformer_layer_params(1e9, 24), step_time, workers=2)
    methods = comm_sim.table4_methods(100, fragments, tau)
    ours = comm_sim.table4(model, methods)
    return {"assumptions": {"params": 1e9, "layers": 24, "workers": 2, "step_time_s": step_time,
                            "inner_steps": 100, "fragments": fragments, "tau": tau,
                            "bits": {m.name: m.bits for m in methods}},
            "targets": list(comm_sim.TABLE4_TARGETS), "ours_gbps": ours,
            "paper_gbps": {k: list(v) for k, v in comm_sim.PAPER_TABLE4_1B.items()}}


def main(argv):
    del argv
    common.quiet_library_logs()
    cfg = train_diloco.TrainDiLoCoConfig(workers=FLAGS.workers, num_layers=FLAGS.num_layers, d_model=FLAGS.d_model,
                                         mlp_dim=FLAGS.mlp_dim, batch_size=FLAGS.batch_size, seq_len=FLAGS.seq_len,
                                         algo="diloco")
    inner = bench_inner(cfg, FLAGS.steps, FLAGS.repeats)
    print(f"\nInner step ({inner['num_params']} params, M={FLAGS.workers}, {len(jax.devices())} devices, "
          f"median of {FLAGS.repeats} x {FLAGS.steps} steps)")
    print(f"  data-parallel   {inner['inner_step_s']['dp'] * 1e3:8.2f} ms/step")
    print(f"  DiLoCo inner    {inner['inner_step_s']['diloco'] * 1e3:8.2f} ms/step   "
          f"throughput vs DP: {inner['diloco_inner_throughput_vs_dp']:.3f}x")
    print("Outer step (sync + merge of all parameters), by outer-gradient precision")
    for p, o in inner["outer_step"].items():
        print(f"  {p:5s} {o['outer_step_s'] * 1e3:8.2f} ms  = {o['outer_over_inner_step']:.2f} inner steps, "
              f"payload {o['payload_bytes']} B")
    record = {"config": {k: FLAGS[k].value for k in ("workers", "num_layers", "d_model", "mlp_dim", "batch_size",
                                                      "seq_len", "steps", "repeats")},
              "machine": common.machine_info(),
              "inner": inner}
    if FLAGS.table4:
        t4 = run_table4(FLAGS.sim_step_time, FLAGS.sim_fragments, FLAGS.sim_tau)
        record["table4"] = t4
        print("\nTable 4 (1B, Gbit/s for " + "/".join(f"{int(u * 100)}%" for u in t4["targets"]) + " utilisation)")
        for name, values in t4["ours_gbps"].items():
            paper = t4["paper_gbps"].get(name)
            print(f"  {name:34s} ours  " + " ".join(f"{v:7.2f}" for v in values))
            if paper:
                print(f"  {'':34s} paper " + " ".join(f"{v:7.2f}" for v in paper))
    if FLAGS.out:
        common.write_json_atomic(__import__("pathlib").Path(FLAGS.out), record)


if __name__ == "__main__":
    app.run(main)
