r"""Benchmarks DiLoCo's inner step against data-parallel on the same mesh, the outer step separately,
and the utilisation simulator's Table 4 (Streaming DiLoCo, Douillard et al. 2025) beside the paper's.

Inner-step throughput: DP (gradients all-reduced over all devices every step) vs DiLoCo (gradients
averaged over `data` inside each worker only), interleaved repeats of ``steps`` steps each, warm-up
excluded, medians; the ratio is measured side by side in this process. Outer step: one fragment's sync
(outer gradient, encode, all-gather / all-reduce, FP32 mean, Nesterov update) plus its merge, per precision.
The model, data and inner optimiser are the DiLoCo experiment's (:mod:`training.diloco`, :mod:`training.lm`).
"""
from __future__ import annotations

import dataclasses
import statistics

import jax

from models.transformer import DecoderLM
from parallel import comm_sim
from parallel import diloco as diloco_lib
from parallel import mesh as mesh_lib
from parallel import quantize
from training import diloco as diloco_exp
from training import run as run_lib
from training.benchmarks import parse_list
from training.benchmarks.timing import time_variants
from training.config import from_flat
from training.data import text


@dataclasses.dataclass(frozen=True)
class BenchDiLoCoConfig:
    """DiLoCo benchmark settings.

    workers: M workers.
    num_layers: Transformer blocks.
    d_model: Model width.
    mlp_dim: SwiGLU width.
    batch_size: Global batch.
    seq_len: Context length.
    steps: Inner steps per timed repeat.
    repeats: Timed repeats (median reported).
    outer_precisions: Outer-gradient precisions of the outer-step timing (comma-separated from fp32, bf16, fp8,
      fp4).
    sim_step_time: Simulated 1B step time (s), fitted so DP needs the paper's 86.8 Gbit/s at 50% utilisation.
    sim_fragments: Simulated P (24 layers: 3 layers per fragment, as in the paper).
    sim_tau: Simulated overlap τ.
    table4: Also run the utilisation simulator.
    """
    workers: int = 2
    num_layers: int = 2
    d_model: int = 128
    mlp_dim: int = 352
    batch_size: int = 16
    seq_len: int = 64
    steps: int = 10
    repeats: int = 5
    outer_precisions: str = ",".join(quantize.PRECISIONS)
    # the utilisation simulator (Table 4)
    sim_step_time: float = 0.1125
    sim_fragments: int = 8
    sim_tau: int = 1
    table4: bool = True

    def __post_init__(self):
        run_lib.require_positive(self, "steps", "repeats", "sim_fragments", "sim_tau", allow_zero=("sim_tau",))
        if not self.sim_step_time > 0:
            raise ValueError(f"sim_step_time={self.sim_step_time} must be > 0")
        self.train_config()  # validates the model, batch and worker settings
        parse_list("outer_precisions", self.outer_precisions, str, quantize.PRECISIONS)

    @property
    def outer_precisions_list(self) -> list[str]:
        return parse_list("outer_precisions", self.outer_precisions, str, quantize.PRECISIONS)

    def train_config(self) -> diloco_exp.TrainDiLoCoConfig:
        """The DiLoCo experiment's config with this benchmark's model, batch and workers."""
        return from_flat(diloco_exp.TrainDiLoCoConfig, {
            "workers": self.workers, "num_layers": self.num_layers, "d_model": self.d_model,
            "mlp_dim": self.mlp_dim, "batch_size": self.batch_size, "seq_len": self.seq_len, "algo": "diloco"})


def bench_inner(cfg: diloco_exp.TrainDiLoCoConfig, steps: int, repeats: int,
                precisions=quantize.PRECISIONS) -> dict:
    model = DecoderLM(cfg.model)
    mesh = diloco_lib.make_worker_mesh(cfg.diloco.workers)
    params = diloco_exp.init_params(model, cfg.seq_len, 0)
    corpus = text.load_corpus(None, min_split_len=cfg.seq_len + 1)
    batches = [mesh_lib.shard_batch(text.train_batch(corpus.train, 0, i, cfg.batch_size, cfg.seq_len), mesh,
                                    ("workers", "data")) for i in range(steps)]

    def make_trainer(**outer) -> diloco_lib.DiLoCo:  # the experiment's trainer with these outer settings
        dcfg = diloco_lib.DiLoCoConfig(workers=cfg.diloco.workers, **outer)
        return diloco_exp.make_trainer(dataclasses.replace(cfg, diloco=dcfg), model, mesh, params)

    trainers = {algo: make_trainer(algo=algo, inner_steps=10 ** 9) for algo in ("dp", "diloco")}
    states = {algo: trainer.init(params) for algo, trainer in trainers.items()}

    def run(algo):
        state = states[algo]
        for b in batches:
            state, losses = trainers[algo].inner_step(state, b)
        states[algo] = state
        return losses

    # warm-up (compile and settle) excluded; interleaved, so drifts of a shared machine hit both alike
    _, times = time_variants({algo: (run, (algo,)) for algo in trainers}, repeats)
    per_step = {a: [t / steps for t in ts] for a, ts in times.items()}
    med = {a: statistics.median(v) for a, v in per_step.items()}
    result = {"inner_step_s": med, "inner_step_all_s": per_step,
              "diloco_over_dp_time_ratio": med["diloco"] / med["dp"],
              "diloco_inner_throughput_vs_dp": med["dp"] / med["diloco"]}

    outer = {}
    for precision in precisions:
        tr = make_trainer(algo="diloco", inner_steps=10, outer_precision=precision)
        st = tr.init(params)
        # sync returns (state, each worker's outer gradient finite): the merge takes the state
        fn = lambda: tr.merge_fns[0](tr.sync_fns[0](st)[0])  # noqa: E731
        outer_s, _ = time_variants({"outer": (fn, ())}, repeats * 2)
        payload = tr.step_bytes(10, tr.fragment_shapes(params)).payload
        outer[precision] = {"outer_step_s": outer_s["outer"], "payload_bytes": payload,
                            "outer_over_inner_step": outer_s["outer"] / med["diloco"]}
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


def run(cfg: BenchDiLoCoConfig) -> dict:
    """The record: config, device count, ``inner`` (inner and outer step figures) and ``table4`` if asked."""
    record = {"benchmark": "diloco", "config": dataclasses.asdict(cfg), "devices": jax.device_count(),
              "inner": bench_inner(cfg.train_config(), cfg.steps, cfg.repeats, cfg.outer_precisions_list)}
    if cfg.table4:
        record["table4"] = run_table4(cfg.sim_step_time, cfg.sim_fragments, cfg.sim_tau)
    return record


def format_table(record: dict) -> str:
    cfg, inner = record["config"], record["inner"]
    lines = [f"\nInner step ({inner['num_params']} params, M={cfg['workers']}, {record['devices']} devices, "
             f"median of {cfg['repeats']} x {cfg['steps']} steps)",
             f"  data-parallel   {inner['inner_step_s']['dp'] * 1e3:8.2f} ms/step",
             f"  DiLoCo inner    {inner['inner_step_s']['diloco'] * 1e3:8.2f} ms/step   "
             f"throughput vs DP: {inner['diloco_inner_throughput_vs_dp']:.3f}x",
             "Outer step (sync + merge of all parameters), by outer-gradient precision"]
    for p, o in inner["outer_step"].items():
        lines.append(f"  {p:5s} {o['outer_step_s'] * 1e3:8.2f} ms  = {o['outer_over_inner_step']:.2f} inner steps, "
                     f"payload {o['payload_bytes']} B")
    t4 = record.get("table4")
    if t4:
        lines.append("\nTable 4 (1B, Gbit/s for " + "/".join(f"{int(u * 100)}%" for u in t4["targets"])
                     + " utilisation)")
        for name, values in t4["ours_gbps"].items():
            paper = t4["paper_gbps"].get(name)
            lines.append(f"  {name:34s} ours  " + " ".join(f"{v:7.2f}" for v in values))
            if paper:
                lines.append(f"  {'':34s} paper " + " ".join(f"{v:7.2f}" for v in paper))
    return "\n".join(lines)
