r"""Data-parallel, DiLoCo and Streaming DiLoCo timed over a real, rate-limited link.

Each row is one ``train_diloco`` run of M worker processes (``jax.distributed`` with gloo on CPU, one DiLoCo
worker per process) inside a network namespace made for it, its loopback shaped with htb to the row's
rate (:mod:`training.link.netns`; "unshaped": the namespace's loopback as it is). The namespace is one
shared link: each of the M workers gets rate/M when all send at once, which is the bandwidth per worker
the utilisation simulator (:func:`parallel.comm_sim.simulate_utilisation`) is run with.

Per row: wall-clock (the harness's, start to exit, and the trainer's loop), the bytes that crossed the
link (the loopback's counters, tx == rx on lo) beside the trainer's own accounting (``mesh_bytes_sent``
per device x N devices: every device is a gloo rank, and gloo connects even two devices of one process
over TCP), the final losses, the link's measured rate (:mod:`training.link.probe`), the compute
utilisation from the run's timelines when the trainer writes them (:mod:`training.link.timeline`), and
the simulator's prediction for the same model, measured step time and rate. Per M, a **baseline** run
with no sync at all (``algo=diloco``, H > steps) measures what is not the method's traffic (coordination
service start-up, heartbeats and barriers, the cross-process gathers of losses and evaluations, headers);
it is subtracted from the other rows' counters.

The results JSON is written after every row; a rerun skips rows that finished (status ok, same flags) and
redoes the rest. A row whose predicted time on the link exceeds ``max_link_s`` is skipped, not run.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import threading
from typing import Any

from absl import logging

from parallel import comm_sim, quantize
from parallel import diloco as diloco_lib
from training import config as config_lib
from training import run as run_lib
from training.benchmarks import parse_list
from training.link import netns, probe, timeline, workers

REPO = pathlib.Path(__file__).resolve().parents[2]
PORT = 23456  # the coordinator's, on 127.0.0.1 inside the run's own namespace (nothing else listens there)
UNSHAPED = "unshaped"
BASELINE = "nosync"
# The methods compared, as train_diloco settings (H, P and τ from the config).
METHODS = ("dp", "diloco_fp32", "streaming_fp4", "streaming_fp4_overlap")
# Settings the harness sets itself for every run (not allowed in train_flags).
HARNESS_SETTINGS = ("workdir", "overwrite", "multihost", "coordinator_address", "num_processes", "process_id",
                    "workers", "algo", "inner_steps", "fragments", "overlap_tau", "outer_precision", "steps",
                    "stop_after", "timeline")
SKIP_STEPS = 1  # the whole-run timeline figures leave out the first step (its compilation) only


@dataclasses.dataclass(frozen=True)
class BenchDiLoCoLinkConfig:
    """Settings of the link comparison.

    workdir: Directory of the sweep: runs/<row>/ (each run's workdir and process logs), the compilation
      cache, and by default link.json and link.png.
    out: Results JSON, written after every row (a rerun skips finished rows); empty: WORKDIR/link.json.
      The figure goes beside it (.png).
    rates: Comma-separated link rates in tc units (bit, kbit, mbit, gbit) and/or 'unshaped' (the
      namespace's loopback as it is).
    processes: Comma-separated M: worker processes of a run, one DiLoCo worker each (>= 2).
    devices: CPU devices over all processes, devices/M each (0: one per process). With more than one per
      process the gradient all-reduce inside a worker crosses the shaped loopback too (gloo connects
      every device over TCP, even two of one process).
    methods: Comma-separated from dp, diloco_fp32, streaming_fp4, streaming_fp4_overlap.
    inner_steps: H of the DiLoCo methods.
    fragments: P of the Streaming DiLoCo methods.
    tau: Overlap τ (>= 1) of streaming_fp4_overlap.
    steps: Inner steps of every run.
    steady_after_steps: Inner steps left out of the steady-state figures; -1: 2 x inner_steps (the first two
      outer rounds, in which the step, each fragment's sync and each merge compile: on this project's CPU
      runs a fragment's first syncs took 3-9 s, a later one 0.1-0.5 s), at most half of steps.
    train_flags: Further train_diloco flags for every run (model, batch, evaluation, ...), e.g.
      '--d_model=64 --eval_every=50'; checkpoint_every defaults to 0 (a save at the end only).
    baseline: Also run, per M and unshaped, a run with no sync (the coordination baseline subtracted
      from the other rows' bytes).
    probe: Measure each link's rate (large and small messages) before its run.
    timeout_s: Seconds a run may take before all its processes are killed (status timeout).
    max_link_s: Skip rows whose predicted time on the link (the trainer's bytes / rate) exceeds this
      (0: run every row).
    netns: Name of the namespace made for each run and removed after it (empty: jaxsys-<pid>).
    plan_only: Print the rows with their predicted bytes and link seconds; run nothing.
    """
    workdir: str = ""
    out: str = ""
    rates: str = "unshaped,1gbit,100mbit,10mbit"
    processes: str = "2,4"
    devices: int = 0
    methods: str = ",".join(METHODS)
    inner_steps: int = 20
    fragments: int = 2
    tau: int = 1
    steps: int = 100
    steady_after_steps: int = -1
    train_flags: str = ""
    baseline: bool = True
    probe: bool = True
    timeout_s: int = 1800
    max_link_s: float = 900.0
    netns: str = ""
    plan_only: bool = False

    def __post_init__(self):
        run_lib.require_positive(self, "devices", "inner_steps", "fragments", "tau", "steps", "timeout_s",
                                 allow_zero=("devices",))
        if self.steady_after_steps != -1 and not (isinstance(self.steady_after_steps, int)
                                                  and 1 <= self.steady_after_steps):
            raise ValueError(f"steady_after_steps={self.steady_after_steps!r} must be an integer >= 1, or -1 "
                             "(2 x inner_steps, at most half of steps)")
        if self.steady_after >= self.steps:
            raise ValueError(f"steady_after_steps={self.steady_after} leaves no step of steps={self.steps} for the "
                             "steady-state figures; give more steps or fewer steady_after_steps")
        if not (isinstance(self.max_link_s, (int, float)) and math.isfinite(self.max_link_s)
                and self.max_link_s >= 0):
            raise ValueError(f"max_link_s={self.max_link_s} must be a finite number >= 0")
        self.rate_list  # noqa: B018 (validates)
        for m in self.process_list:
            if m < 2:
                raise ValueError(f"processes={self.processes!r}: M={m}; a link needs at least 2 processes")
            if self.devices and self.devices % m:
                raise ValueError(f"devices={self.devices} must be a multiple of every M in processes="
                                 f"{self.processes!r} (each process gets devices/M); {m} does not divide it")
        if "streaming_fp4_overlap" in self.method_list and self.tau >= self.inner_steps // self.fragments:
            raise ValueError(f"tau={self.tau} must be < inner_steps/fragments = {self.inner_steps}/{self.fragments}"
                             f" = {self.inner_steps // self.fragments} (a fragment is merged before its next sync)")
        if self.netns:
            netns.validate_name(self.netns)
        if self.out:
            run_lib.require_output_file("out", self.out)
        flat = self.train_flat  # validates train_flags
        for row in self.plan():  # every run's settings are valid train_diloco settings
            self.train_config(row, flat)

    # -- lists
    @property
    def rate_list(self) -> list[int | None]:
        """Rates in bits/s (None: unshaped), unshaped first, then fastest first."""
        entries = [r.strip() for r in str(self.rates).split(",") if r.strip()]
        if not entries:
            raise ValueError(f"rates={self.rates!r} is empty; give rates like 100mbit, or unshaped")
        rates = {None if e.lower() == UNSHAPED else netns.parse_rate(e, "rates") for e in entries}
        return ([None] if None in rates else []) + sorted((r for r in rates if r is not None), reverse=True)

    @property
    def process_list(self) -> list[int]:
        return sorted(set(parse_list("processes", self.processes, int)))

    @property
    def method_list(self) -> list[str]:
        return list(dict.fromkeys(parse_list("methods", self.methods, str, METHODS)))

    def devices_for(self, m: int) -> int:
        return self.devices or m

    @property
    def steady_after(self) -> int:
        """The last warm-up step: the steady-state figures count the steps after it (the default fits any
        steps: a default never rejects the user's settings)."""
        if self.steady_after_steps == -1:
            return min(2 * self.inner_steps, self.steps // 2)
        return self.steady_after_steps

    # -- train_diloco settings
    @property
    def train_flat(self) -> dict[str, Any]:
        return parse_train_flags(self.train_flags)

    def method_settings(self, method: str) -> dict[str, Any]:
        h, p = self.inner_steps, self.fragments
        return {
            BASELINE: {"algo": "diloco", "inner_steps": self.steps + 1, "outer_precision": "fp32"},
            "dp": {"algo": "dp"},
            "diloco_fp32": {"algo": "diloco", "inner_steps": h, "outer_precision": "fp32"},
            "streaming_fp4": {"algo": "streaming", "inner_steps": h, "fragments": p, "overlap_tau": 0,
                              "outer_precision": "fp4"},
            "streaming_fp4_overlap": {"algo": "streaming", "inner_steps": h, "fragments": p,
                                      "overlap_tau": self.tau, "outer_precision": "fp4"},
        }[method]

    def row_settings(self, row: "RowSpec", flat: dict | None = None) -> dict[str, Any]:
        """The flat train_diloco settings of a row's run (without workdir and the multihost ones)."""
        flat = self.train_flat if flat is None else flat
        return {"checkpoint_every": 0, **flat, "steps": self.steps, "workers": row.processes,
                **self.method_settings(row.method)}

    def train_config(self, row: "RowSpec", flat: dict | None = None):
        """The row's TrainDiLoCoConfig (ValueError naming train_flags or the setting that is wrong)."""
        from training import diloco as diloco_exp

        settings = self.row_settings(row, flat)
        try:
            cfg = config_lib.from_flat(diloco_exp.TrainDiLoCoConfig, settings)
        except ValueError as e:
            raise ValueError(f"the {row.method} run with M={row.processes} is not a valid train_diloco run: {e} "
                             f"(from train_flags={self.train_flags!r}, steps, inner_steps, fragments, tau)") from None
        n = self.devices_for(row.processes)
        if cfg.batch_size % n:
            raise ValueError(f"batch_size={cfg.batch_size} (train_flags) must be a multiple of the {n} devices of "
                             f"the M={row.processes} runs (devices={self.devices})")
        return cfg

    # -- rows
    def plan(self) -> list["RowSpec"]:
        rows = []
        for m in self.process_list:
            if self.baseline:
                rows.append(RowSpec(BASELINE, m, None))
            rows += [RowSpec(method, m, rate) for method in self.method_list for rate in self.rate_list]
        return rows

    @property
    def out_path(self) -> pathlib.Path:
        return pathlib.Path(self.out or pathlib.Path(self.workdir) / "link.json").expanduser()


@dataclasses.dataclass(frozen=True)
class RowSpec:
    method: str
    processes: int
    rate_bps: int | None

    @property
    def key(self) -> str:
        return f"{self.method}-M{self.processes}-{netns.rate_label(self.rate_bps)}"


# ----------------------------------------------------------------------------- train_flags
def parse_train_flags(text: str, owned=HARNESS_SETTINGS,
                      owned_hint: str = ("see processes, methods, inner_steps, fragments, "
                                         "tau and steps")) -> dict[str, Any]:
    """``"--d_model=64 --nesterov --nonesterov"`` -> flat train_diloco settings with their types.
    ValueError naming train_flags for a malformed, unknown or harness-owned (``owned``) flag, or a value of
    the wrong type."""
    from training import diloco as diloco_exp

    fields = {f.name: f for f in config_lib.flat_fields(diloco_exp.TrainDiLoCoConfig)}
    fields.update({old: fields[new] for old, new in config_lib.renamed(diloco_exp.TrainDiLoCoConfig).items()})
    try:
        tokens = shlex.split(text or "")
    except ValueError as e:
        raise ValueError(f"train_flags={text!r} cannot be split into flags: {e}") from None
    out: dict[str, Any] = {}
    for token in tokens:
        if not token.startswith("--") or len(token) < 3:
            raise ValueError(f"train_flags={text!r}: {token!r} is not a --flag or --flag=value")
        name, eq, value = token[2:].partition("=")
        if not eq and name not in fields and name.startswith("no") and name[2:] in fields:
            name, value, eq = name[2:], "false", "="
        field = fields.get(name)
        if field is None:
            raise ValueError(f"train_flags={text!r}: --{name} is not a train_diloco flag")
        if field.name in owned or name in owned:
            raise ValueError(f"train_flags={text!r}: --{name} is set by the harness ({owned_hint})")
        if not eq:
            if field.type is not bool:
                raise ValueError(f"train_flags={text!r}: --{name} needs a value (--{name}=...)")
            value = "true"
        out[field.name] = _typed(field, value, text)
    return out


def _typed(field, value: str, text: str):
    try:
        if field.type is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        return field.type(value)
    except ValueError:
        raise ValueError(f"train_flags={text!r}: --{field.name}={value!r} is not a {field.type.__name__}") from None


def flag_list(settings: dict[str, Any]) -> list[str]:
    """``{name: value}`` -> ``["--name=value", ...]`` (bools as true/false)."""
    def spell(v):
        return ("true" if v else "false") if isinstance(v, bool) else str(v)
    return [f"--{k}={spell(v)}" for k, v in settings.items()]


# ----------------------------------------------------------------------------- bytes without a mesh
def param_layout(train_cfg) -> dict[str, list[tuple[int, ...]]]:
    """``{top-level parameter name: leaf shapes}`` of the run's model (no device needed)."""
    import jax

    from models.transformer import DecoderLM
    from training import diloco as diloco_exp

    shapes = jax.eval_shape(lambda: diloco_exp.init_params(DecoderLM(train_cfg.model), train_cfg.seq_len,
                                                           train_cfg.seed))
    return {k: [tuple(x.shape) for x in jax.tree.leaves(v)] for k, v in shapes.items()}


def predicted_bytes(train_cfg, devices: int, layout: dict | None = None) -> dict:
    """The trainer's byte accounting (``DiLoCo.step_bytes``) for ``devices`` devices, without building
    the mesh: ``mesh_bytes_sent`` and ``bytes_sent`` per device, ``link_bytes`` = devices x mesh bytes
    (what the ring collectives put on a shared link), ``syncs``."""
    d = train_cfg.diloco
    layout = param_layout(train_cfg) if layout is None else layout
    fragments = diloco_lib.assign_fragments(list(layout), d.num_fragments, d.fragment_pattern)
    frag_shapes = [[s for k in keys for s in layout[k]] for keys in fragments]
    grads = comm_sim.shapes_payload([s for f in frag_shapes for s in f], quantize.Codec("fp32"))
    m, inside = d.workers, devices // d.workers
    mesh = wire = 0.0
    syncs = 0
    for t in range(1, train_cfg.steps + 1):
        if d.algo == "dp":
            wire += comm_sim.wire_bytes(grads, "all-reduce", m)
            mesh += comm_sim.wire_bytes(grads, "all-reduce", devices)
            continue
        synced = diloco_lib.syncs_at(t, d.inner_steps, d.num_fragments)
        payload = sum(comm_sim.shapes_payload(frag_shapes[p], d.codec) for p in synced)
        w = comm_sim.wire_bytes(payload, comm_sim.collective_kind(d.codec), m)
        wire += w
        mesh += w + comm_sim.wire_bytes(grads, "all-reduce", inside)
        syncs += len(synced)
    return {"bytes_sent": wire, "mesh_bytes_sent": mesh, "link_bytes": devices * mesh, "syncs": syncs}


def layer_params(layout: dict) -> tuple[float, ...]:
    """Parameters per transformer block for the simulator, the embeddings, final norm and head added to
    block 0 (they travel with fragment 0, :func:`parallel.diloco.assign_fragments`)."""
    blocks = sorted((diloco_lib.block_index(k), k) for k in layout if diloco_lib.block_index(k) is not None)
    count = lambda k: float(sum(math.prod(s) for s in layout[k]))  # noqa: E731
    per = [count(k) for _, k in blocks] or [0.0]
    per[0] += sum(count(k) for k in layout if diloco_lib.block_index(k) is None)
    return tuple(per)


def sim_method(method: str, train_cfg, layout: dict) -> comm_sim.SimMethod:
    """The simulator's method for a row. Bits per parameter are chosen so the simulated transfer moves the
    trainer's wire bytes: the simulator models an all-reduce (2 (M-1)/M of the payload); an encoded outer
    gradient is all-gathered ((M-1) payloads), i.e. 8 x payload/params x M/2 bits."""
    d = train_cfg.diloco
    if d.algo == "dp" or d.outer_precision == "fp32":
        bits = 32.0
    else:
        shapes = [s for v in layout.values() for s in v]
        payload = comm_sim.shapes_payload(shapes, d.codec)
        bits = 8.0 * payload / sum(math.prod(s) for s in shapes) * d.workers / 2.0
    return comm_sim.SimMethod(method, d.algo, bits, d.inner_steps, d.num_fragments, d.tau)


# ----------------------------------------------------------------------------- one row
def _env(per_process_devices: int, cache_dir: pathlib.Path) -> dict:
    env = dict(os.environ)
    kept = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(kept + [f"--xla_force_host_platform_device_count={per_process_devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_dir))
    return env


def worker_commands(link: netns.Link, run_dir: pathlib.Path, settings: dict, m: int) -> list[list[str]]:
    base = [sys.executable, "-m", "scripts.train_diloco", f"--workdir={run_dir}", *flag_list(settings),
            "--multihost", f"--coordinator_address=127.0.0.1:{PORT}", f"--num_processes={m}"]
    return [link.exec_prefix() + base + [f"--process_id={i}"] for i in range(m)]


def run_row(cfg: BenchDiLoCoLinkConfig, row: RowSpec, name: str) -> dict:
    """Runs one row in a namespace made for it (removed on every exit path); its raw measurements."""
    train_cfg = cfg.train_config(row)
    settings = run_settings(cfg, row)
    run_dir = pathlib.Path(cfg.workdir).expanduser().resolve() / "runs" / row.key
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished earlier try: start the row afresh
    run_dir.mkdir(parents=True)
    n = cfg.devices_for(row.processes)
    env = _env(n // row.processes, pathlib.Path(cfg.workdir).expanduser().resolve() / "jit_cache")
    out: dict[str, Any] = {"key": row.key, "method": row.method, "M": row.processes,
                           "rate": netns.rate_label(row.rate_bps), "rate_bps": row.rate_bps, "devices": n,
                           "flags": flag_list(settings),
                           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "load_before": os.getloadavg()[0]}
    with netns.Link(name, row.rate_bps, control_ports=(PORT,)) as link:
        if cfg.probe:
            out["probe"] = _probe(link, row.rate_bps, env)
        before = link.counters()
        result = workers.run_workers(worker_commands(link, run_dir, settings, row.processes), [env] * row.processes,
                                     [run_dir / f"process.{i}.log" for i in range(row.processes)],
                                     timeout_s=cfg.timeout_s, cwd=REPO)
        delta = netns.counter_delta(before, link.counters())
        out["tc"] = link.qdisc_stats() if row.rate_bps else ""
    out.update(status=result.status, message=result.message, returncodes=list(result.returncodes),
               harness_wall_s=result.wall_s, wire={"bytes": delta.tx_bytes, "packets": delta.tx_packets,
                                                   "rx_bytes": delta.rx_bytes})
    if result.status != "ok":
        i = result.first_failure or 0
        out["log_tail"] = workers.tail(run_dir / f"process.{i}.log")
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        s = json.loads(summary_path.read_text())
        metrics = run_lib.MetricsWriter.read(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
        losses = [r["loss"] for r in metrics if isinstance(r.get("loss"), (int, float))]
        out.update(trainer_wall_s=s.get("wall_time_s"), steps=s.get("step"), val_loss=s.get("val_loss"),
                   loss=losses[-1] if losses else None,
                   trainer={k: s.get(k) for k in ("bytes_sent", "mesh_bytes_sent", "payload_bytes", "peak_bytes",
                                                  "syncs", "num_params")})
        out["predicted_link_bytes"] = n * s["mesh_bytes_sent"]
    else:
        out["predicted_link_bytes"] = predicted_bytes(train_cfg, n)["link_bytes"]
    out.update(timeline_figures(cfg, run_dir, row.key))
    return out


def timeline_figures(cfg: BenchDiLoCoLinkConfig, run_dir: pathlib.Path, title: str) -> dict:
    """From a run's timelines: ``timeline`` (every step but the first) and ``steady`` (the steps after
    ``cfg.steady_after``), each with its median step, and the run's timeline.png; {} without timelines."""
    files = timeline.timeline_files(run_dir)
    if not files:
        return {}
    try:
        intervals = timeline.read_timeline(files)
        figures = {}
        for key, skip in (("timeline", SKIP_STEPS), ("steady", cfg.steady_after)):
            figures[key] = timeline.summarise(timeline.utilisation(intervals, skip))
            figures[key].update(step_s=timeline.step_seconds(intervals, skip), after_step=skip)
        timeline.plot_timeline(intervals, run_dir / "timeline.png", title=title)
        return figures
    except ValueError as e:
        return {"timeline_error": str(e)}


def _probe(link: netns.Link, rate_bps: int | None, env: dict) -> dict:
    large, small, count = probe.sizes_for(rate_bps)
    budget = 60.0 + (0 if rate_bps is None else 16 * (large + small * count) / rate_bps)
    try:
        out = subprocess.run(link.exec_prefix() + probe.command(sys.executable, large, small, count), env=env,
                             cwd=REPO, capture_output=True, text=True, timeout=budget, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {budget:.0f} s"}
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["(no message)"])[-1][:300]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _trainer_has_timeline() -> bool:
    from training import diloco as diloco_exp

    return any(f.name == "timeline" and f.type is bool for f in config_lib.flat_fields(diloco_exp.TrainDiLoCoConfig))


# ----------------------------------------------------------------------------- derived figures
def derive(cfg: BenchDiLoCoLinkConfig, rows: list[dict], layout: dict) -> None:
    """Adds to each row what needs other rows: bytes net of its M's baseline, throughput relative to its
    unshaped run, the measured utilisation and the simulator's prediction.

    Measured utilisation is the row's inner steps per second over its steady-state window divided by the
    no-sync baseline's over the same steps (:func:`steps_per_second`): the time the method adds to
    training without communication, which is what the simulator's utilisation, compute / (compute + exposed
    communication), predicts. The simulator is run with the baseline's steady-state time per step."""
    by_key = {r["key"]: r for r in rows}
    planned = {row.key for row in cfg.plan()}
    for r in rows:
        base = by_key.get(RowSpec(BASELINE, r["M"], None).key)
        ok = lambda x: x is not None and x.get("status") == "ok"  # noqa: E731
        if r.get("status") != "ok" or r["method"] == BASELINE:
            continue
        if ok(base):
            r["wire_bytes_net"] = r["wire"]["bytes"] - base["wire"]["bytes"]
            r["wire_over_predicted"] = (r["wire_bytes_net"] / r["predicted_link_bytes"]
                                        if r["predicted_link_bytes"] else None)
        unshaped = by_key.get(RowSpec(r["method"], r["M"], None).key)
        if ok(unshaped) and r.get("trainer_wall_s"):
            r["relative_throughput"] = unshaped["trainer_wall_s"] / r["trainer_wall_s"]
        for key, window in (("utilisation_steady", "steady"), ("utilisation_whole_run", "timeline")):
            mine, theirs = steps_per_second(r.get(window)), steps_per_second((base or {}).get(window))
            r[key] = mine / theirs if mine and theirs else None
        step_s, source = _reference_step(base)
        link_bps = r["rate_bps"] or (r.get("probe") or {}).get("large_bps")
        if step_s and link_bps and r["key"] in planned:  # (a row of an earlier plan keeps its old figures)
            train_cfg = cfg.train_config(RowSpec(r["method"], r["M"], r["rate_bps"]))
            model = comm_sim.SimModel(layer_params(layout), step_s, workers=r["M"])
            method = sim_method(r["method"], train_cfg, layout)
            gbps = link_bps / r["M"] / 1e9
            r["sim"] = {"utilisation": comm_sim.simulate_utilisation(model, method, gbps), "step_time_s": step_s,
                        "step_time_source": source, "bandwidth_gbps_per_worker": gbps, "bits": method.bits}
        r["utilisation"], r["utilisation_source"] = _measured(r)


def steps_per_second(figures: dict | None) -> float | None:
    """Inner steps per second of a timeline window (steps counted per process over its wall time, eval and
    save taken out; mean over processes), None without one."""
    if not figures or not figures.get("processes"):
        return None
    rates = [p["steps"] / p["wall_s"] for p in figures["processes"] if p["wall_s"] > 0]
    return sum(rates) / len(rates) if rates else None


def _reference_step(base: dict | None) -> tuple[float | None, str]:
    """The time of one inner step without communication: the baseline's steady-state seconds per step, else
    its trainer wall time per step (compilation included: an upper bound)."""
    if not base or base.get("status") != "ok":
        return None, "none"
    rate = steps_per_second(base.get("steady"))
    if rate:
        return 1 / rate, "baseline steady state (wall / steps)"
    if base.get("trainer_wall_s") and base.get("steps"):
        return base["trainer_wall_s"] / base["steps"], "baseline wall / steps (compilation included)"
    return None, "none"


def _measured(r: dict) -> tuple[float | None, str]:
    if r.get("utilisation_steady") is not None:
        return r["utilisation_steady"], "steady-state steps/s vs the no-sync baseline's"
    if r.get("relative_throughput") is not None:
        return r["relative_throughput"], "trainer wall unshaped / shaped"
    return None, "none"


# ----------------------------------------------------------------------------- the sweep
def provenance(cfg: BenchDiLoCoLinkConfig) -> dict:
    return run_lib.provenance(run_lib.command_line("scripts.bench_diloco_link", cfg, skip=()))


def load_record(path: pathlib.Path) -> dict:
    if not path.exists():
        return {"rows": []}
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"out={str(path)!r} exists but is not JSON ({e}); move it away or choose another --out")
    if not isinstance(record, dict) or not isinstance(record.get("rows"), list):
        raise ValueError(f"out={str(path)!r} exists but is not a bench_diloco_link results file")
    return record


def finished(record: dict, cfg: BenchDiLoCoLinkConfig, row: RowSpec) -> bool:
    """True if ``record`` holds this row, finished (status ok), run with the same flags and devices
    (:func:`run_settings`)."""
    for r in record["rows"]:
        if r.get("key") == row.key and r.get("status") == "ok" and r.get("devices") == cfg.devices_for(row.processes):
            return r.get("flags") == flag_list(run_settings(cfg, row))
    return False


def run_settings(cfg: BenchDiLoCoLinkConfig, row: RowSpec) -> dict[str, Any]:
    """The row's settings as run: with ``timeline`` once train_diloco has that setting (so rows run before
    it existed are run again, with timelines)."""
    settings = cfg.row_settings(row)
    if _trainer_has_timeline():
        settings["timeline"] = True
    return settings


def plan_table(cfg: BenchDiLoCoLinkConfig) -> list[dict]:
    """Each row with its predicted bytes on the link and seconds at its rate (no run)."""
    layouts: dict = {}
    out = []
    for row in cfg.plan():
        train_cfg = cfg.train_config(row)
        layout = layouts.setdefault(row.processes, param_layout(train_cfg))
        b = predicted_bytes(train_cfg, cfg.devices_for(row.processes), layout)
        seconds = None if row.rate_bps is None else 8 * b["link_bytes"] / row.rate_bps
        skip = bool(cfg.max_link_s and seconds is not None and seconds > cfg.max_link_s)
        out.append({"key": row.key, "link_bytes": b["link_bytes"], "syncs": b["syncs"], "link_s": seconds,
                    "skip": skip})
    return out


def run(cfg: BenchDiLoCoLinkConfig) -> dict:
    """The sweep (or, with ``plan_only``, its plan). Every row in a namespace of its own, made and removed
    around it; SIGTERM/SIGINT end the sweep after removing the current row's namespace (exit 128+signal),
    the rows finished so far kept in the results file."""
    plan = plan_table(cfg)
    if cfg.plan_only:
        print(format_plan(plan))
        return {"plan": plan}
    name = cfg.netns or netns.default_name()
    netns.check_link(name)
    out_path = cfg.out_path
    record = load_record(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    record.update(provenance=provenance(cfg), config=dataclasses.asdict(cfg))
    layout = param_layout(cfg.train_config(cfg.plan()[0]))
    planned = {p["key"]: p for p in plan}
    main_thread = threading.current_thread() is threading.main_thread()
    try:
        with workers.signals_as_exceptions() if main_thread else _nothing():
            for i, row in enumerate(cfg.plan()):
                if finished(record, cfg, row):
                    logging.info("row %d/%d %s: finished before, skipped (its timeline figures recomputed)", i + 1,
                                 len(planned), row.key)
                    done = next(r for r in record["rows"] if r.get("key") == row.key)
                    run_dir = pathlib.Path(cfg.workdir).expanduser().resolve() / "runs" / row.key
                    done.update(timeline_figures(cfg, run_dir, row.key) if run_dir.is_dir() else {})
                    continue
                if planned[row.key]["skip"]:
                    result = {"key": row.key, "method": row.method, "M": row.processes,
                              "rate": netns.rate_label(row.rate_bps), "rate_bps": row.rate_bps, "status": "skipped",
                              "message": f"predicted {planned[row.key]['link_s']:.0f} s on the link > max_link_s="
                                         f"{cfg.max_link_s:g}", "predicted_link_bytes": planned[row.key]["link_bytes"]}
                else:
                    logging.info("row %d/%d %s: running (predicted %.3g MB on the link)", i + 1, len(planned), row.key,
                                 planned[row.key]["link_bytes"] / 1e6)
                    result = run_row(cfg, row, name)
                    logging.info("row %s: %s", row.key, result["message"])
                record["rows"] = [r for r in record["rows"] if r.get("key") != row.key] + [result]
                _write(cfg, record, layout, out_path)
    except workers.Terminated as e:
        logging.warning("%s: stopped; the namespace is removed, %d finished rows are in %s (a rerun continues)", e,
                        sum(r.get("status") == "ok" for r in record["rows"]), out_path)
        raise SystemExit(128 + e.signum) from None
    _write(cfg, record, layout, out_path)
    return record


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _write(cfg, record, layout, out_path: pathlib.Path) -> None:
    order = {row.key: i for i, row in enumerate(cfg.plan())}
    record["rows"].sort(key=lambda r: order.get(r.get("key"), len(order)))
    derive(cfg, record["rows"], layout)
    run_lib.write_json_atomic(out_path, record)
    plot_utilisation(record["rows"], out_path.with_suffix(".png"))


# ----------------------------------------------------------------------------- report
def format_plan(plan: list[dict]) -> str:
    lines = [f"{'row':38s} {'link MB':>10s} {'syncs':>6s} {'link s':>9s}"]
    for p in plan:
        secs = "-" if p["link_s"] is None else f"{p['link_s']:.1f}"
        lines.append(f"{p['key']:38s} {p['link_bytes'] / 1e6:10.3f} {p['syncs']:6d} {secs:>9s}"
                     + ("  (skipped: > max_link_s)" if p["skip"] else ""))
    return "\n".join(lines)


def format_table(record: dict) -> str:
    head = (f"{'row':38s} {'status':8s} {'wall s':>7s} {'link MB':>9s} {'net MB':>8s} {'pred MB':>8s} "
            f"{'val loss':>8s} {'util':>6s} {'sim':>6s}")
    lines = [head]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in record.get("rows", []):
        wire = (r.get("wire") or {}).get("bytes")
        lines.append(
            f"{r['key']:38s} {r.get('status', ''):8s} {fmt(r.get('trainer_wall_s'), '7.1f')} "
            f"{fmt(None if wire is None else wire / 1e6, '9.3f')} "
            f"{fmt(None if r.get('wire_bytes_net') is None else r['wire_bytes_net'] / 1e6, '8.3f')} "
            f"{fmt(None if r.get('predicted_link_bytes') is None else r['predicted_link_bytes'] / 1e6, '8.3f')} "
            f"{fmt(r.get('val_loss'), '8.4f')} {fmt(r.get('utilisation'), '6.3f')} "
            f"{fmt((r.get('sim') or {}).get('utilisation'), '6.3f')}")
    return "\n".join(lines)


def plot_utilisation(rows: list[dict], path: pathlib.Path) -> None:
    """Utilisation against the link rate, one panel per M: measured (solid) and simulated (dashed) per
    method; the unshaped link is placed at its probed rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.get("status") == "ok" and r["method"] != BASELINE]
    ms = sorted({r["M"] for r in done})
    if not ms:
        return
    fig, axes = plt.subplots(1, len(ms), figsize=(5.5 * len(ms), 4), squeeze=False)
    colours = dict(zip(METHODS, ("tab:red", "tab:blue", "tab:green", "tab:purple")))
    for ax, m in zip(axes[0], ms):
        for method in METHODS:
            pts = []
            for r in done:
                link = r["rate_bps"] or (r.get("probe") or {}).get("large_bps")
                if r["M"] == m and r["method"] == method and link:
                    pts.append((link / 1e6, r.get("utilisation"), (r.get("sim") or {}).get("utilisation")))
            pts.sort()
            measured = [(x, u) for x, u, _ in pts if u is not None]
            simulated = [(x, s) for x, _, s in pts if s is not None]
            if measured:
                ax.plot(*zip(*measured), "o-", color=colours[method], label=f"{method} measured")
            if simulated:
                ax.plot(*zip(*simulated), "x--", color=colours[method], alpha=0.7, label=f"{method} simulated")
        ax.set_xscale("log")
        ax.set_xlabel("link rate (Mbit/s, shared by the M workers)")
        ax.set_ylabel("utilisation (steps/s ÷ the no-sync run's)")
        top = max([1.0] + [r["utilisation"] for r in done if r["M"] == m and r.get("utilisation")])
        ax.set_ylim(0, top + 0.05)  # noise can put a measured point above 1: show it, don't clip it
        ax.set_title(f"M = {m}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
