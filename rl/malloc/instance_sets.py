r"""The shipped mallocGame instance sets, regenerated from the toolkit's own programs (and random instances).

``make(MakeInstancesConfig())`` (``scripts/make_malloc_instances.py``) writes the windows,
rl/malloc/instances/{train,test}/, and the whole programs, rl/malloc/instances/programs/{train,test}/.

Whole programs (``WHOLE_PROGRAMS``): every buffer of the scheduled entry computation of a real training
step of this toolkit at the sizes people train (hundreds to ~1,800 buffers): the byte-level LM's AdamW step
at width 512 and at the GPT-2-small shape (12 layers, width 768, 12 heads, MLP 3072, 4 x 1,024 tokens),
the MoE LM (8 experts, top 2), the Streaming DiLoCo outer step (4 workers' fp4 outer gradients, outer
Nesterov) and AlgoPerf workloads' NAdamW steps. Capacity rule, the same as the windows': fast memory =
``capacity_fraction`` (25 %) of the program's peak live bytes (so that it is contended while every buffer
still fits: the largest is 0.8-22 % of the peak), rounded down to a multiple of the greatest common divisor of
the buffer sizes (4 bytes or more), the JAX game's address unit (``game.address_unit``). Train and held-out
programs differ in program, not only size.

Each program (rl/malloc/extract.py builders at the sizes below) is compiled by XLA on the default backend,
its scheduled entry computation turned into buffers (roofline benefits, ``extract.CostModel`` defaults)
and cut into consecutive schedule windows of at most ``max_buffers`` buffers, each with a fast-memory
capacity of ``capacity_fraction`` x its peak live bytes. Training and held-out test PROGRAMS are disjoint
(different programs / sizes), so the test set measures generalisation to unseen programs.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from absl import logging

from rl.malloc import extract, game, instance
from training import run as run_lib

INSTANCES_DIR = pathlib.Path(extract.__file__).parent / "instances"

# (split, name, builder, kwargs): train and test programs never share a (builder, size).
PROGRAMS = (
    ("train", "lm_l1_d32", "lm_train_step", dict(num_layers=1, d_model=32, num_heads=2, mlp_dim=64, seq_len=16)),
    ("train", "mlp_100x100", "mnist1d_mlp_step", dict(hidden=(100, 100), batch=64)),
    ("train", "mlp_64", "mnist1d_mlp_step", dict(hidden=(64,), batch=32)),
    ("train", "attn_s32", "attention_fwd_bwd", dict(batch=2, heads=4, seq=32, head_dim=16)),
    ("train", "lm_l2_d32", "lm_train_step", dict(num_layers=2, d_model=32, num_heads=2, mlp_dim=96, seq_len=16)),
    ("train", "moe_l1_d32_e4", "lm_train_step", dict(num_layers=1, d_model=32, num_heads=2, mlp_dim=64, seq_len=16,
                                                     moe_experts=4)),
    ("train", "mlp_128x128x128", "mnist1d_mlp_step", dict(hidden=(128, 128, 128), batch=32)),
    ("train", "attn_s16", "attention_fwd_bwd", dict(batch=4, heads=2, seq=16, head_dim=32)),
    ("test", "lm_l2_d48", "lm_train_step", dict(num_layers=2, d_model=48, num_heads=4, mlp_dim=128, seq_len=32)),
    ("test", "mlp_256x128x64", "mnist1d_mlp_step", dict(hidden=(256, 128, 64), batch=128)),
    ("test", "attn_s64", "attention_fwd_bwd", dict(batch=1, heads=2, seq=64, head_dim=32)),
    ("test", "moe_l1_d48_e8", "lm_train_step", dict(num_layers=1, d_model=48, num_heads=4, mlp_dim=96, seq_len=32,
                                                    moe_experts=8)),
)


# (split, name, builder, kwargs) of the whole-program instances: held-out programs are other programs.
_LM512 = dict(num_layers=4, d_model=512, num_heads=8, mlp_dim=2048, seq_len=256)
_GPT2_SMALL = dict(num_layers=12, d_model=768, num_heads=12, mlp_dim=3072, seq_len=1024)
WHOLE_PROGRAMS = (
    ("train", "lm_d512_step", "lm_train_step", dict(_LM512, batch=8)),
    ("train", "diloco_d512_outer_step", "diloco_outer_step", dict(_LM512, workers=4, precision="fp4")),
    ("train", "algoperf_ctr_step", "algoperf_step", dict(workload="ctr")),
    ("train", "algoperf_mnist1d_step", "algoperf_step", dict(workload="mnist1d")),
    ("test", "gpt2_small_step", "lm_train_step", dict(_GPT2_SMALL, batch=4)),
    ("test", "moe_d512_e8_step", "lm_train_step", dict(_LM512, batch=8, moe_experts=8)),
    ("test", "diloco_gpt2_small_outer_step", "diloco_outer_step", dict(_GPT2_SMALL, workers=4, precision="fp4")),
    ("test", "algoperf_lm_step", "algoperf_step", dict(workload="lm")),
)
SETS = ("windows", "programs")


@dataclasses.dataclass(frozen=True)
class MakeInstancesConfig:
    """Where and how the instance set is written (:func:`make`).

    out_dir: Where the train/ and test/ folders (windows) and programs/{train,test}/ (whole programs) go.
    sets: Which sets to write, comma-separated: windows, programs.
    max_buffers: Buffers per instance window.
    capacity_fraction: Fast memory = this fraction of each window's peak live bytes.
    random: Also write this many random instances to random_dir.
    random_dir: Folder for the random instances.
    seed: Seed of the random instances.
    """
    out_dir: str = str(INSTANCES_DIR)
    sets: str = "windows,programs"
    max_buffers: int = 32
    capacity_fraction: float = 0.25
    random: int = 0
    random_dir: str = ""
    seed: int = 0

    def __post_init__(self):
        run_lib.require_positive(self, "random", allow_zero=("random",))
        bad = [x for x in self.set_names if x not in SETS] or ([] if self.set_names else [self.sets])
        if bad:
            raise ValueError(f"sets={self.sets!r}: {bad} unknown; allowed: a comma-separated list of {', '.join(SETS)}")
        if self.random and not self.random_dir:
            raise ValueError(f"random={self.random} needs random_dir={self.random_dir!r} set to a folder")
        _check_window(self.max_buffers, self.capacity_fraction)

    @property
    def set_names(self) -> list[str]:
        return [x.strip() for x in self.sets.split(",") if x.strip()]


def _check_window(max_buffers: int, capacity_fraction: float) -> None:
    if max_buffers < 2:
        raise ValueError(f"max_buffers={max_buffers} must be >= 2")
    if not 0 < capacity_fraction <= 1:
        raise ValueError(f"capacity_fraction={capacity_fraction} must be in (0, 1]")


def _program(name: str, builder: str, kwargs: dict, capacity_fraction: float) -> instance.Instance:
    """The whole-program instance of one builder call, its builder and arguments in ``meta``."""
    fn, args = extract.BUILDERS[builder](**kwargs)
    whole = extract.extract(fn, args, name, capacity_fraction=capacity_fraction)
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    return dataclasses.replace(whole, meta={**whole.meta, "builder": builder, "builder_kwargs": plain})


def build(out_dir: pathlib.Path, max_buffers: int = 32, capacity_fraction: float = 0.25,
          programs=PROGRAMS, min_buffers: int = 4) -> dict[str, int]:
    """Writes ``out_dir/{train,test}/<program>_w<k>.json``; returns the count per split."""
    _check_window(max_buffers, capacity_fraction)
    counts = {}
    for split, name, builder, kwargs in programs:
        whole = _program(name, builder, kwargs, capacity_fraction)
        kept = [w for w in extract.windows(whole, max_buffers, capacity_fraction) if w.num_buffers >= min_buffers]
        for w in kept:
            instance.save(w, out_dir / split / f"{w.name}.json")
        counts[split] = counts.get(split, 0) + len(kept)
        logging.info("%s: %d buffers -> %d windows (%s)", name, whole.num_buffers, len(kept), split)
    return counts


def build_programs(out_dir: pathlib.Path, capacity_fraction: float = 0.25, programs=WHOLE_PROGRAMS) -> dict[str, int]:
    """Writes ``out_dir/{train,test}/<program>.json`` (whole programs); returns the count per split."""
    counts = {}
    for split, name, builder, kwargs in programs:
        whole = _program(name, builder, kwargs, capacity_fraction)
        g = int(np.gcd.reduce(whole.sizes))  # the game's address unit once the capacity is a multiple of it
        whole = dataclasses.replace(whole, capacity=whole.capacity // g * g,
                                    meta={**whole.meta, "capacity_aligned_to": g})
        game.check_fits(whole)  # the agent must be able to play it (in address units of g bytes)
        instance.save(whole, out_dir / split / f"{name}.json")
        counts[split] = counts.get(split, 0) + 1
        logging.info("%s: %d buffers, capacity %d bytes (%s)", name, whole.num_buffers, whole.capacity, split)
    return counts


def write_random(out_dir: pathlib.Path, count: int, seed: int, num_buffers: int = 32) -> None:
    rng = np.random.default_rng(seed)
    for k in range(count):
        inst = instance.random_instance(rng, num_buffers=num_buffers, horizon=2 * num_buffers, max_size=1024,
                                        name=f"random_{k:05d}")
        instance.save(inst, out_dir / f"{inst.name}.json")


def make(cfg: MakeInstancesConfig, programs=PROGRAMS, whole_programs=WHOLE_PROGRAMS) -> dict[str, dict[str, int]]:
    """The instance windows of ``programs`` under ``cfg.out_dir``, the whole ``whole_programs`` under
    ``cfg.out_dir``/programs and ``cfg.random`` random instances under ``cfg.random_dir``, as ``cfg.sets``
    asks; prints and returns the count per set and split."""
    out = pathlib.Path(cfg.out_dir).expanduser()
    counts = {}
    if "windows" in cfg.set_names:
        counts["windows"] = build(out, cfg.max_buffers, cfg.capacity_fraction, programs)
    if "programs" in cfg.set_names:
        counts["programs"] = build_programs(out / "programs", cfg.capacity_fraction, whole_programs)
    if cfg.random:
        write_random(pathlib.Path(cfg.random_dir).expanduser(), cfg.random, cfg.seed, cfg.max_buffers)
    print(f"wrote {counts} instances under {cfg.out_dir}" + (
        f", {cfg.random} random under {cfg.random_dir}" if cfg.random else ""))
    return counts
