"""Bad input on every command line: one line on stderr naming what was wrong, exit status 1, no traceback,
nothing created or changed on disk.

The table runs each user-facing script of scripts/ (and each command line of tools/) on its bad cases (bad
flag values, missing or malformed files, settings that contradict each other or the 8 host devices). Each row
runs in a directory of its own (its working directory, its input files, and the workdirs/outputs it names,
which do not exist yet); the directory's tree is compared before and after, and the checkout's default
output folders must not change.
The rows run as subprocesses, three at a time (each costs about 3 s of CPU, mostly importing JAX): the
default run takes a representative third (30 rows, about 75 s of CPU: about 40 s wall on 2 idle cores),
the rest is marked ``slow``. The loaders' own checks (job-shop text files and mallocGame JSON,
rl/jssp/instances.py and rl/malloc/instance.py) are tested directly at the end.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import resource
import subprocess
import sys
import time
from typing import NamedTuple

import numpy as np
import pytest

from rl.jssp import instances as jssp_instances
from rl.malloc import instance as malloc_instance

REPO = pathlib.Path(__file__).resolve().parents[1]
# Where a script would write if it ignored the paths it was given: must be untouched by the whole table.
REPO_OUTPUTS = ("rl/malloc/instances", "rl/malloc/trained", "rl/jssp/trained", "rl/jssp/trained_ppo", "runs")
TIMEOUT_S = 120  # per row; a bad input fails in seconds


class Case(NamedTuple):
    script: str             # a module of scripts/ ("train_lm") or a dotted one ("tools.mutation_check")
    name: str
    args: tuple[str, ...]   # "{row}" is the row's directory, "{repo}" the checkout
    says: str               # the line must contain this (the flag and value, or the file)
    files: dict = {}        # files created in the row's directory first: relative path -> str or bytes
    slow: bool = False

    @property
    def id(self) -> str:
        return f"{self.script}-{self.name}"


def _malloc_json(**patch) -> str:
    d = {"name": "t", "capacity": 16, "buffers": [{"name": "a", "size": 4, "start": 0, "end": 1, "benefit": 1.0}]}
    buffer_patch = patch.pop("buffer", {})
    d.update(patch)
    d["buffers"][0].update(buffer_patch)
    return json.dumps(d)


JSSP_OK = "2 2\n0 1 1 2\n1 3 0 4\n"
HLO_OK = """HloModule m, is_scheduled=true

ENTRY %main (p0: f32[4,8]) -> f32[4,8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %e = f32[4,8]{1,0} exponential(%p0)
  ROOT %n = f32[4,8]{1,0} negate(%e)
}
"""
SEARCH_SPACE = f"{REPO}/algoperf/baselines/nadamw_search_space.json"
SUBMISSION = f"{REPO}/algoperf/baselines/nadamw.py"
AP = ("--workload=mnist1d", f"--submission_path={SUBMISSION}", "--experiment_dir={row}/exp")

CASES = [
    # ---------------------------------------------------------------- train_lm
    Case("train_lm", "lr_inf", ("--workdir={row}/w", "--lr=inf"), "--lr=inf must be a finite number > 0"),
    Case("train_lm", "grad_clip_negative", ("--workdir={row}/w", "--grad_clip=-1"), "--grad_clip=-1.0", slow=True),
    Case("train_lm", "warmup_over_steps", ("--workdir={row}/w", "--steps=50", "--warmup_steps=100"),
         "--warmup_steps=100 must not exceed --steps=50"),
    Case("train_lm", "stray_argument", ("--workdir={row}/w", "stray"), "unexpected arguments ['stray']", slow=True),
    Case("train_lm", "not_an_integer", ("--workdir={row}/w", "--steps=abc"), "--steps=abc", slow=True),
    Case("train_lm", "unknown_flag", ("--workdir={row}/w", "--bogus=1"), "'bogus'"),
    Case("train_lm", "mesh_over_devices", ("--workdir={row}/w", "--mesh=data:3"), "mesh spec 'data:3'", slow=True),
    Case("train_lm", "mesh_larger_than_the_devices", ("--workdir={row}/w", "--moe_num_experts=8", "--batch_size=16",
                                                      "--mesh=data:4,expert:2,tensor:2"),
         "to simulate 16 devices on CPU, run with XLA_FLAGS=--xla_force_host_platform_device_count=16"),
    # (--batch_size=16: the default 12 does not split over the 8 host devices)
    Case("train_lm", "missing_data_dir", ("--workdir={row}/w", "--batch_size=16", "--data_dir={row}/nonexistent"),
         "--data_dir=", slow=True),  # found after the workdir was made (and locked): it is taken back
    Case("train_lm", "workdir_under_a_file", ("--workdir={row}/file/w", "--batch_size=16"), "is not writable",
         files={"file": "x"}, slow=True),
    Case("train_lm", "attention_not_on_cpu", ("--workdir={row}/w", "--attention=cudnn"),
         "--attention='cudnn' is not available on cpu; it has: auto, xla"),
    Case("train_lm", "dtype_float16", ("--workdir={row}/w", "--dtype=float16"),
         "--dtype='float16'; allowed: auto, float32, bfloat16", slow=True),
    Case("train_lm", "dropout_one", ("--workdir={row}/w", "--dropout=1"), "--dropout=1.0 must be in [0, 1)",
         slow=True),
    Case("train_lm", "remat_bogus", ("--workdir={row}/w", "--remat=all"), "--remat='all'; allowed: none, block, dots",
         slow=True),
    Case("tools.device_check_lm", "unknown_part", ("--parts=ours_gpt3", "--peer_dir={row}"),
         "--parts=ours_gpt3: unknown part(s) ours_gpt3; allowed: ours_gpt2", slow=True),
    Case("tools.device_check_lm", "no_peer", ("--peer_dir={row}/nowhere",), "holds no train.py"),
    # ---------------------------------------------------------------- train_diloco
    Case("train_diloco", "dropout", ("--workdir={row}/w", "--dropout=0.1"),
         "train_diloco's inner steps take no random key", slow=True),
    Case("train_diloco", "workers_over_the_devices", ("--workdir={row}/w", "--workers=16", "--batch_size=32"),
         "XLA_FLAGS=--xla_force_host_platform_device_count=16", slow=True),
    Case("train_diloco", "workers_3_on_8_devices", ("--workdir={row}/w", "--workers=3", "--batch_size=24"),
         "--workers=3 must divide the number of devices 8"),
    Case("train_diloco", "workers_3_batch_16", ("--workdir={row}/w", "--workers=3"),
         "--batch_size=16 must be a multiple of --workers=3", slow=True),
    Case("train_diloco", "compare_nonexistent", ("--workdir={row}/w", "--compare={row}/nonexistent"),
         "nonexistent"),
    Case("train_diloco", "bad_algo", ("--workdir={row}/w", "--algo=bogus"), "--algo='bogus'", slow=True),
    Case("train_diloco", "bad_outer_precision", ("--workdir={row}/w", "--outer_precision=fp3"),
         "--outer_precision='fp3'", slow=True),
    Case("train_diloco", "topk_fraction_zero", ("--workdir={row}/w", "--topk_fraction=0"),
         "--topk_fraction=0.0 must be in (0, 1]", slow=True),
    Case("train_diloco", "error_feedback_fp32", ("--workdir={row}/w", "--error_feedback"),
         "--error_feedback=True with --outer_precision=fp32 and --topk_fraction=1.0 sends every outer gradient "
         "exactly: nothing to feed back"),
    Case("train_diloco", "error_feedback_dp", ("--workdir={row}/w", "--algo=dp", "--outer_precision=int2",
                                               "--error_feedback"),
         "--error_feedback=True needs --algo=diloco or streaming", slow=True),
    # ---------------------------------------------------------------- train_jssp
    Case("train_jssp", "bad_curriculum", ("--workdir={row}/w", "--curriculum=10x:0"), "10x", slow=True),
    Case("train_jssp", "steps_zero", ("--workdir={row}/w", "--steps=0"), "--steps=0", slow=True),
    Case("train_jssp", "cpsat_time_limit_zero", ("--workdir={row}/w", "--cpsat_time_limit=0"),
         "--cpsat_time_limit=0", slow=True),
    Case("train_jssp", "bad_algorithm", ("--workdir={row}/w", "--algorithm=a2c"), "--algorithm='a2c'", slow=True),
    Case("train_jssp", "init_from_other_network", ("--workdir={row}/w", "--init_from={row}/p"),
         "its network differs: --d_model=8 (this run: 32)",
         files={"p/policy.json": '{"policy_config": {"window": 4, "d_model": 8, "num_heads": 4, "op_layers": 1, '
                                 '"job_layers": 2, "mlp_dim": 64, "noop_bias_init": -3.0}}', "p/policy.msgpack": b""}),
    Case("train_jssp", "bad_distributions", ("--workdir={row}/w", "--distributions=taillard,dmu"),
         "--distributions='taillard,dmu': need distinct names from taillard", slow=True),
    # ---------------------------------------------------------------- make_jssp_instances
    Case("make_jssp_instances", "out_dir_missing", ("--count=2",), "--out_dir='' is required"),
    Case("make_jssp_instances", "bad_families", ("--out_dir={row}/o", "--families=ring"), "--families='ring'",
         slow=True),
    Case("make_jssp_instances", "count_zero", ("--out_dir={row}/o", "--count=0"), "--count=0", slow=True),
    # ---------------------------------------------------------------- eval_jssp (and the job-shop loader)
    Case("eval_jssp", "bad_solver", ("--solver=bogus", "--out={row}/r.json"), "--solver='bogus'", slow=True),
    Case("eval_jssp", "bounds_nonexistent", ("--sizes=15x15", "--bounds={row}/nope.csv", "--out={row}/r.json"),
         "/nope.csv' does not exist"),
    Case("eval_jssp", "bounds_malformed", ("--sizes=15x15", "--bounds={row}/b.json", "--out={row}/r.json"),
         "is not a bounds file", files={"b.json": "{oops"}, slow=True),
    Case("eval_jssp", "instances_nonexistent", ("--instances={row}/nonexistent", "--out={row}/r.json"),
         "nonexistent", slow=True),
    Case("eval_jssp", "duration_over_int32", ("--instances={row}/in", "--out={row}/r.json"),
         "big.txt:2: job 0 operation 1: duration 3000000000 out of range (allowed: 0..1073741823)",
         files={"in/big.txt": "2 2\n0 1 1 3000000000\n0 1 1 2\n"}),
    Case("eval_jssp", "header_terabytes", ("--instances={row}/in", "--out={row}/r.json"),
         "huge.txt:1: n_jobs=1 and n_machines=1000000000000 out of range",
         files={"in/huge.txt": "1 1000000000000\n0 1\n"}),
    Case("eval_jssp", "durations_sum_over_limit", ("--instances={row}/in", "--out={row}/r.json"),
         "sum.txt:3: the durations up to job 1 sum to 2000000000",
         files={"in/sum.txt": "2 1\n0 1000000000\n0 1000000000\n"}, slow=True),
    Case("eval_jssp", "not_utf8", ("--instances={row}/in", "--out={row}/r.json"), "latin.txt: not a UTF-8 text file",
         files={"in/latin.txt": b"# caf\xe9\n" + JSSP_OK.encode()}),
    Case("eval_jssp", "malformed_line", ("--instances={row}/in", "--out={row}/r.json"),
         "short.txt:3: job 1 needs 2 'machine duration' pairs", files={"in/short.txt": "2 2\n0 1 1 2\n0 1 1\n"},
         slow=True),
    Case("eval_jssp", "out_is_a_directory", ("--out={row}/outdir",), "--out=", files={"outdir/keep": ""}, slow=True),
    Case("eval_jssp", "samples_without_agent", ("--solver=spt", "--samples=4"), "--samples=4", slow=True),
    Case("eval_jssp", "agent_share_without_agent_cpsat", ("--solver=cpsat", "--agent_share=0.5"),
         "--agent_share=0.5 applies only to --solver=agent_cpsat, not --solver=cpsat", slow=True),
    Case("eval_jssp", "bad_cpsat_search", ("--solver=cpsat", "--cpsat_search=lns"),
         "--cpsat_search='lns'; allowed: default, portfolio", slow=True),
    Case("eval_jssp", "cpsat_time_limit_too_short", ("--solver=cpsat", "--time_limit=0.001", "--sizes=100x20",
                                                      "--out={row}/r.json"),
         "--time_limit=0.001: 0.001 s for ta71 (100x20) is too short", slow=True),
    Case("eval_jssp", "time_limit_from_nonexistent",
         ("--solver=cpsat", "--time_limit_from={row}/nonexistent.json", "--out={row}/r.json"), "nonexistent.json"),
    Case("eval_jssp", "policy_dir_nonexistent", ("--solver=agent", "--policy_dir={row}/nonexistent"),
         "nonexistent", slow=True),
    # ---------------------------------------------------------------- tune_jssp_sampling
    Case("tune_jssp_sampling", "policy_dir_nonexistent", ("--policy_dir={row}/nonexistent",), "nonexistent"),
    Case("tune_jssp_sampling", "bad_size", ("--policy_dir={row}/nonexistent", "--size=15"), "--size='15'",
         slow=True),
    # ---------------------------------------------------------------- train_malloc
    Case("train_malloc", "shipped_fraction_2", ("--workdir={row}/w", "--shipped_fraction=2"),
         "--shipped_fraction=2.0", slow=True),
    Case("train_malloc", "init_from_nonexistent", ("--workdir={row}/w", "--init_from={row}/nonexistent"),
         "--init_from="),
    Case("train_malloc", "pretrain_without_demos", ("--workdir={row}/w", "--pretrain_iters=5"), "--pretrain_iters=5",
         slow=True),
    # ---------------------------------------------------------------- eval_malloc (and the mallocGame loader)
    Case("eval_malloc", "weights_nonexistent", ("--weights={row}/nonexistent", "--out={row}/r.json"),
         "--weights=", slow=True),
    Case("eval_malloc", "instances_nonexistent", ("--instances={row}/nonexistent", "--out={row}/r.json"),
         "nonexistent", slow=True),
    Case("eval_malloc", "meta_not_an_object", ("--instances={row}/in", "--out={row}/r.json"),
         "m.json: meta=5 must be a JSON object", files={"in/m.json": _malloc_json(meta=5)}),
    Case("eval_malloc", "meta_null", ("--instances={row}/in", "--out={row}/r.json"),
         "m.json: meta=None must be a JSON object", files={"in/m.json": _malloc_json(meta=None)}, slow=True),
    Case("eval_malloc", "size_1e30", ("--instances={row}/in", "--out={row}/r.json"),
         "s.json: buffer #0 ('a'): size=1e+30 is too large", files={"in/s.json": _malloc_json(buffer={"size": 1e30})}),
    Case("eval_malloc", "capacity_zero", ("--instances={row}/in", "--out={row}/r.json"),
         "c.json: capacity=0 must be an integer", files={"in/c.json": _malloc_json(capacity=0)}, slow=True),
    Case("eval_malloc", "not_utf8", ("--instances={row}/in", "--out={row}/r.json"), "u.json: not a UTF-8 text file",
         files={"in/u.json": b'{"name": "caf\xe9"}'}, slow=True),
    Case("eval_malloc", "not_json", ("--instances={row}/in", "--out={row}/r.json"), "j.json: not valid JSON",
         files={"in/j.json": "{not json"}, slow=True),
    Case("eval_malloc", "too_large_for_the_jax_game",
         ("--instances={row}/in", "--solver=muzero", "--simulations=2", "--out={row}/r.json"),
         "g.json (instance 't'): capacity=16 and every size (largest 2147483649) must be < 2**30 units of 1 bytes",
         files={"in/g.json": _malloc_json(buffer={"size": 2**31 + 1})}, slow=True),
    Case("eval_malloc", "time_limit_from_nonexistent",
         ("--solver=cpsat", "--time_limit_from={row}/nonexistent.json", "--out={row}/r.json"),
         "--time_limit_from=", slow=True),
    Case("eval_malloc", "time_limit_from_without_agent", ("--solver=cpsat", "--time_limit_from={row}/h.json"),
         "needs exactly one muzero/alphazero/rollout record per instance",
         files={"h.json": json.dumps([{"instance": "t", "solver": "heuristic", "wall_time_s": 0.1}])}),
    Case("eval_malloc", "keep_best_without_rollout", ("--solver=muzero", "--keep_best", "--out={row}/r.json"),
         "--keep_best=True needs --solver=rollout; --solver='muzero'", slow=True),
    # eval_malloc on the user's own program (--hlo / --program, rl/malloc/program.py)
    Case("eval_malloc", "hlo_does_not_parse", ("--hlo={row}/m.txt", "--out={row}/r.json"),
         "m.txt':5: not an HLO instruction", files={"m.txt": HLO_OK.replace("exponential(%p0)", "exponential %p0")}),
    Case("eval_malloc", "hlo_not_scheduled", ("--hlo={row}/m.txt", "--out={row}/r.json"),
         "does not say is_scheduled=true, so the instruction order is no schedule",
         files={"m.txt": HLO_OK.replace("is_scheduled=true", "is_scheduled=false")}, slow=True),
    Case("eval_malloc", "hlo_nonexistent", ("--hlo={row}/nope.txt", "--out={row}/r.json"),
         "nope.txt': cannot be read", slow=True),
    Case("eval_malloc", "program_does_not_import", ("--program=no_such_module_zz:make", "--out={row}/r.json"),
         "--program='no_such_module_zz:make': cannot import no_such_module_zz (ModuleNotFoundError", slow=True),
    Case("eval_malloc", "program_function_raises", ("--program=user_prog:make", "--out={row}/r.json"),
         "--program='user_prog:make': make() raised RuntimeError: no data here",
         files={"user_prog.py": "def make():\n    raise RuntimeError('no data here')\n"}),
    Case("eval_malloc", "program_not_a_spec", ("--program=user_prog.make", "--out={row}/r.json"),
         "must be package.module:function", slow=True),
    Case("eval_malloc", "capacity_fraction_zero", ("--hlo={row}/m.txt", "--capacity_fraction=0", "--out={row}/r.json"),
         "--capacity_fraction=0.0 must be in (0, 1]", files={"m.txt": HLO_OK}, slow=True),
    Case("eval_malloc", "capacity_above_peak", ("--hlo={row}/m.txt", "--capacity_bytes=100000", "--out={row}/r.json"),
         "--capacity_bytes=100000 is above the peak live bytes of 'm' (256): every buffer would fit",
         files={"m.txt": HLO_OK}),
    Case("eval_malloc", "cost_flag_without_program", ("--slow_bw=5e11", "--out={row}/r.json"),
         "--slow_bw=500000000000.0 applies to --program= or --hlo= only", slow=True),
    Case("eval_malloc", "program_and_hlo", ("--program=a.b:c", "--hlo={row}/m.txt", "--out={row}/r.json"),
         "give one of --program='a.b:c' and --hlo=", slow=True),
    # ---------------------------------------------------------------- check_malloc_moves
    Case("check_malloc_moves", "count_zero", ("--count=0", "--out={row}/m.json"), "--count=0", slow=True),
    # ---------------------------------------------------------------- make_malloc_instances
    Case("make_malloc_instances", "capacity_fraction_2", ("--out_dir={row}/out", "--capacity_fraction=2"),
         "--capacity_fraction=2.0"),
    Case("make_malloc_instances", "random_without_dir", ("--out_dir={row}/out", "--random=5"), "--random=5",
         slow=True),
    Case("make_malloc_instances", "bad_set", ("--out_dir={row}/out", "--sets=windows,whole"),
         "--sets='windows,whole': ['whole'] unknown", slow=True),
    # ---------------------------------------------------------------- AlgoPerf
    Case("run_algoperf", "search_space_missing", AP, "--tuning_search_space=None"),
    Case("run_algoperf", "search_space_nonexistent", (*AP, "--tuning_search_space={row}/nonexistent.json"),
         "nonexistent.json", slow=True),
    Case("run_algoperf", "search_space_malformed", (*AP, "--tuning_search_space={row}/space.json"), "space.json",
         files={"space.json": "{not json"}),
    Case("run_algoperf", "search_space_unknown_name", (*AP, "--tuning_search_space={row}/space.json"),
         "hyperparameter 'lerning_rate' is read nowhere", files={"space.json": json.dumps(
             [{"lerning_rate": 0.001, "one_minus_beta1": 0.1, "beta2": 0.99, "warmup_factor": 0.05,
               "weight_decay": 0.1}])}),
    Case("run_algoperf", "submission_nonexistent",
         ("--workload=mnist1d", "--submission_path={row}/nope.py", f"--tuning_search_space={SEARCH_SPACE}",
          "--experiment_dir={row}/exp"), "nope.py", slow=True),
    Case("run_algoperf", "bad_workload", ("--workload=imagenet", f"--submission_path={SUBMISSION}",
                                          f"--tuning_search_space={SEARCH_SPACE}", "--experiment_dir={row}/exp"),
         "--workload='imagenet'", slow=True),
    Case("run_algoperf", "framework_pytorch", (*AP, f"--tuning_search_space={SEARCH_SPACE}", "--framework=pytorch"),
         "--framework='pytorch': this runner runs JAX submissions only"),
    Case("run_algoperf", "existing_trials_without_resume", (*AP, f"--tuning_search_space={SEARCH_SPACE}"),
         "--resume_last_run resumes them, --overwrite deletes them",
         files={"exp/mnist1d_jax/trial_1/hparams.json": "{}"}, slow=True),
    Case("run_algoperf", "overwrite_and_resume", (*AP, f"--tuning_search_space={SEARCH_SPACE}", "--overwrite",
                                                  "--resume_last_run"), "contradict", slow=True),
    Case("run_algoperf", "hparam_end_over_trials", (*AP, f"--tuning_search_space={SEARCH_SPACE}",
                                                    "--num_tuning_trials=5", "--hparam_end_index=6"),
         "--hparam_end_index=6", slow=True),
    Case("score_algoperf", "experiment_dir_nonexistent",
         ("--experiment_dir={row}/nonexistent", "--out_dir={row}/out"), "nonexistent"),
    Case("score_algoperf", "bad_study_rule", ("--experiment_dir={row}/nonexistent", "--study_rule=mean"),
         "--study_rule='mean'", slow=True),
    Case("algoperf_suite", "bad_baseline", ("--experiment_dir={row}/exp", "--baselines=adam9"), "adam9"),
    Case("algoperf_suite", "variant_under_v06", ("--experiment_dir={row}/exp", "--workloads=mnist1d,lm_gelu"),
         "--workloads='mnist1d,lm_gelu': ['lm_gelu'] are held-out variants", slow=True),
    Case("algoperf_suite", "out_dir_inside_scored_tree", ("--experiment_dir={row}/exp", "--workloads=mnist1d",
                                                          "--out_dir={row}/exp/external/scores"),
         "lies inside the scored tree", slow=True),
    Case("score_algoperf", "bad_rules", ("--experiment_dir={row}/nonexistent", "--rules=v0.7"), "--rules='v0.7'",
         slow=True),
    Case("algoperf_suite", "search_spaces_unknown", ("--experiment_dir={row}/exp", "--search_spaces=grid"),
         "--search_spaces='grid'; allowed: lists, boxes"),
    Case("choose_algoperf_search_spaces", "targets_missing", ("--targets={row}/nope.json", "--out={row}/r.json"),
         "nope.json' is not a file"),
    Case("algoperf_suite", "calibration_without_reference", ("--experiment_dir={row}/exp", "--workloads=mnist",
                                                             "--baselines=nadamw", "--noself_tuning",
                                                             "--search_spaces=boxes"),
         "'mnist': no target-setting runtime to calibrate against", slow=True),
    Case("run_algoperf", "runtime_scale_zero", (*AP, f"--tuning_search_space={SEARCH_SPACE}", "--runtime_scale=0"),
         "--runtime_scale=0"),
    Case("algoperf_suite", "experiment_dir_missing", ("--workloads=mnist1d", "--baselines=nadamw", "--num_studies=1",
                                                      "--num_tuning_trials=1"), "--experiment_dir=''", slow=True),
    Case("set_algoperf_targets", "out_missing", ("--workloads=mnist1d",), "--out=''"),
    Case("set_algoperf_targets", "reruns_zero", ("--out={row}/t.json", "--reruns=0"), "--reruns=0", slow=True),
    # ---------------------------------------------------------------- benchmarks
    Case("bench_algoperf", "steps_1", ("--steps=1", "--out={row}/b.json"), "--steps=1", slow=True),
    Case("bench_checkpoint", "bad_mode", ("--modes=fast", "--out={row}/b.json"), "--modes='fast'", slow=True),
    Case("bench_checkpoint", "out_under_a_file", ("--out={row}/file/b.json",), "is a file, not a directory",
         files={"file": "x"}),
    Case("bench_diloco", "workers_3_on_8_devices", ("--workers=3", "--batch_size=24", "--out={row}/b.json"),
         "--workers=3 must divide the number of devices 8"),
    # diloco_study
    Case("diloco_study", "unknown_row", ("--workdir={row}/w", "--rows=dp,nope"),
         "--rows='dp,nope': unknown row(s) ['nope']"),
    Case("diloco_study", "row_setting_in_train_flags", ("--workdir={row}/w", "--train_flags=--workers=4"),
         "--workers is set by the harness (see rows and seeds)", slow=True),
    Case("diloco_study", "workdir_missing", ("--plan_only",), "--workdir=''", slow=True),
    # bench_multiprocess: one row per setting (before any trial starts)
    Case("bench_multiprocess", "workdir_missing", ("--runs=1",), "workdir=''"),
    Case("bench_multiprocess", "runs_zero", ("--workdir={row}/w", "--runs=0"), "--runs=0", slow=True),
    Case("bench_multiprocess", "one_process", ("--workdir={row}/w", "--processes=1"), "--processes=1", slow=True),
    Case("bench_multiprocess", "bad_mode", ("--workdir={row}/w", "--modes=lazy,eager"), "eager", slow=True),
    Case("bench_multiprocess", "bad_script", ("--workdir={row}/w", "--script=train_moe"), "--script='train_moe'",
         slow=True),
    Case("bench_multiprocess", "stall_timeout_zero", ("--workdir={row}/w", "--stall_timeout_s=0"),
         "--stall_timeout_s=0", slow=True),
    Case("bench_multiprocess", "out_is_a_directory", ("--workdir={row}/w", "--out={row}/outdir"), "--out=",
         files={"outdir/keep": ""}, slow=True),
    # bench_diloco_link: one row per flag (not root, a namespace in use: tests/test_link.py)
    Case("bench_diloco_link", "rate_zero", ("--workdir={row}/w", "--rates=0mbit"),
         "--rates='0mbit' must be between 1bit and 1000gbit"),
    Case("bench_diloco_link", "rate_unparsable", ("--workdir={row}/w", "--rates=fast"), "--rates='fast' is not a rate",
         slow=True),
    Case("bench_diloco_link", "workdir_missing", ("--plan_only",), "--workdir=''", slow=True),
    Case("bench_diloco_link", "out_is_a_directory", ("--workdir={row}/w", "--out={row}/outdir"), "--out=",
         files={"outdir/keep": ""}, slow=True),
    Case("bench_diloco_link", "one_process", ("--workdir={row}/w", "--processes=1"),
         "--processes='1': M=1; a link needs at least 2 processes", slow=True),
    Case("bench_diloco_link", "devices_not_divided", ("--workdir={row}/w", "--processes=2,4", "--devices=6"),
         "--devices=6 must be a multiple of every M", slow=True),
    Case("bench_diloco_link", "bad_method", ("--workdir={row}/w", "--methods=ring"), "--methods='ring'", slow=True),
    Case("bench_diloco_link", "inner_steps_zero", ("--workdir={row}/w", "--inner_steps=0"), "--inner_steps=0",
         slow=True),
    Case("bench_diloco_link", "fragments_not_dividing", ("--workdir={row}/w", "--fragments=3"),
         "--inner_steps=20 must be a multiple of --fragments=3", slow=True),
    Case("bench_diloco_link", "tau_zero", ("--workdir={row}/w", "--tau=0"), "--tau=0 must be an integer >= 1",
         slow=True),
    Case("bench_diloco_link", "tau_over_h_per_p", ("--workdir={row}/w", "--tau=10"), "--tau=10 must be <", slow=True),
    Case("bench_diloco_link", "steps_zero", ("--workdir={row}/w", "--steps=0"), "--steps=0", slow=True),
    Case("bench_diloco_link", "steady_after_over_steps", ("--workdir={row}/w", "--steady_after_steps=100"),
         "--steady_after_steps=100 leaves no step of --steps=100", slow=True),
    Case("bench_diloco_link", "train_flags_harness_owned", ("--workdir={row}/w", "--train_flags=--workers=3"),
         "--workers is set by the harness"),
    Case("bench_diloco_link", "train_flags_unknown", ("--workdir={row}/w", "--train_flags=--bogus=1"),
         "--bogus is not a train_diloco flag", slow=True),
    Case("bench_diloco_link", "baseline_not_bool", ("--workdir={row}/w", "--baseline=maybe"), "--baseline=maybe",
         slow=True),
    Case("bench_diloco_link", "probe_not_bool", ("--workdir={row}/w", "--probe=maybe"), "--probe=maybe", slow=True),
    Case("bench_diloco_link", "timeout_zero", ("--workdir={row}/w", "--timeout_s=0"), "--timeout_s=0", slow=True),
    Case("bench_diloco_link", "max_link_negative", ("--workdir={row}/w", "--max_link_s=-1"), "--max_link_s=-1.0",
         slow=True),
    Case("bench_diloco_link", "netns_bad_name", ("--workdir={row}/w", "--netns=a/b"), "--netns='a/b'", slow=True),
    Case("bench_diloco_link", "plan_only_not_bool", ("--workdir={row}/w", "--plan_only=2"), "--plan_only=2",
         slow=True),
    Case("bench_jssp", "bad_sizes", ("--sizes=10x", "--out={row}/b.json"), "--sizes='10x'", slow=True),
    Case("bench_jssp", "out_is_a_directory", ("--out={row}/outdir",), "--out=", files={"outdir/keep": ""}),
    Case("bench_malloc", "repeats_zero", ("--repeats=0", "--out={row}/b.json"), "--repeats=0", slow=True),
    Case("bench_moe", "bad_model", ("--models=gpt", "--out={row}/b.json"), "--models='gpt'"),
    Case("tools.mutation_check", "timeout_zero", ("--timeout=0", "--out={row}/m.json"), "--timeout=0", slow=True),
    Case("tools.mutation_check", "out_under_a_file", ("--out={row}/file/m.json",), "is a file, not a directory",
         files={"file": "x"}, slow=True),
    # ---------------------------------------------------------------- tour
    Case("tour", "lm_steps_zero", ("--workdir={row}/t", "--lm_steps=0"), "--lm_steps=0"),
    Case("tour", "stray_argument", ("--workdir={row}/t", "stray"), "unexpected arguments ['stray']", slow=True),
    Case("tour", "workdir_under_a_file", ("--workdir={row}/file/t",), "--workdir=", files={"file": "x"},
         slow=True),
]


def _tree(root: pathlib.Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size and modification time."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = ("dir" if p.is_dir() else "file", 0 if p.is_dir() else st.st_size,
                                         st.st_mtime_ns)
    return out


class Outcome(NamedTuple):
    returncode: int | None  # None: cut short at TIMEOUT_S
    stderr: str
    before: dict
    after: dict
    wall_s: float


def _module(script: str) -> str:
    return script if "." in script else f"scripts.{script}"


def _run(case: Case, row: pathlib.Path) -> Outcome:
    row.mkdir(parents=True)
    for rel, content in case.files.items():
        path = row / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    before = _tree(row)
    args = [a.replace("{row}", str(row)).replace("{repo}", str(REPO)) for a in case.args]
    # XLA_FLAGS (8 host devices) from tests/conftest.py; JAX_PLATFORMS left unset as a user would, so that
    # JAX's backend probe runs and any line it logs on stderr fails the row
    env = {k: v for k, v in dict(os.environ, PYTHONPATH=str(REPO)).items() if k != "JAX_PLATFORMS"}
    start = time.perf_counter()
    try:  # a bad input fails in seconds: one that starts the work instead is cut short
        out = subprocess.run([sys.executable, "-m", _module(case.script), *args], cwd=row, env=env,
                             capture_output=True, text=True, timeout=TIMEOUT_S)
        code, err = out.returncode, out.stderr
    except subprocess.TimeoutExpired as e:
        partial = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or ""
        code, err = None, f"(still running after {TIMEOUT_S} s: the work started)\n{partial}"
    return Outcome(code, err, before, _tree(row), time.perf_counter() - start)


def _repo_outputs() -> dict:
    return {d: _tree(REPO / d) for d in REPO_OUTPUTS if (REPO / d).is_dir()}


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, Outcome]:
    """Runs every row of the table that this session selected, three at a time, once."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if getattr(item, "originalname", "") == "test_bad_input_fails_cleanly"}
    cases = [c for c in CASES if c.id in selected]
    root = tmp_path_factory.mktemp("bad_input")
    repo_before = _repo_outputs()
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = dict(zip([c.id for c in cases], pool.map(lambda c: _run(c, root / c.id), cases)))
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    for cid, out in results.items():  # (shown with -s)
        print(f"{cid:<50} exit {out.returncode}  {out.wall_s:5.1f} s  {out.stderr.strip()[:160]!r}")
    print(f"\n{len(cases)} bad-input rows in {time.perf_counter() - start:.1f} s wall, "
          f"{used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime:.1f} s CPU")
    assert _repo_outputs() == repo_before, "a row wrote into the checkout"
    return results


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else [])
                                  for c in CASES])
def test_bad_input_fails_cleanly(outcomes, case):
    out = outcomes[case.id]
    lines = out.stderr.splitlines()
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.returncode == 1, (out.returncode, out.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    assert case.says in lines[0], lines[0]
    assert out.after == out.before, f"files changed: {set(out.after) ^ set(out.before) or 'mtimes/sizes'}"


def test_table_covers_every_user_facing_script():
    scripts = {p.stem for p in (REPO / "scripts").glob("*.py")} - {"__init__", "common"}
    # tools/: its command lines (mutation.py and mutants.py are the harness; device_check_bucketed takes no flags)
    scripts |= {f"tools.{p.stem}" for p in (REPO / "tools").glob("*.py")} - {
        "tools.__init__", "tools.mutation", "tools.mutants", "tools.device_check_bucketed"}
    assert scripts <= {c.script for c in CASES}, scripts - {c.script for c in CASES}


# ----------------------------------------------------------------------------- the loaders themselves
@pytest.mark.parametrize("text, fragment", [
    ("2 2\n0 1 1 3000000000\n0 1 1 2\n", ":2: job 0 operation 1: duration 3000000000 out of range (allowed: 0.."),
    ("2 2\n0 1 1 2147483648\n0 1 1 2\n", ":2: job 0 operation 1: duration 2147483648 out of range"),
    ("1 1000000000000\n0 1\n", ":1: n_jobs=1 and n_machines=1000000000000 out of range: allowed n_jobs in 1..10000"),
    ("100000 2\n0 1 1 2\n", ":1: n_jobs=100000 and n_machines=2 out of range"),
    ("2 1\n0 1000000000\n0 1000000000\n", ":3: the durations up to job 1 sum to 2000000000; the sum of all"),
    ("1 2\n0 1 1 " + "9" * 40 + "\n", ":2: integer 99999999999999999999... (40 digits) is out of range"),
])
def test_jssp_reader_refuses_what_int32_cannot_hold(tmp_path, text, fragment):
    """Before the fix: an OverflowError (duration above int32), a 3.6 TiB allocation (the header)."""
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(jssp_instances.InstanceFormatError) as err:
        jssp_instances.read_instance(p)
    assert str(err.value).startswith(str(p)) and fragment in str(err.value), str(err.value)


def test_jssp_reader_limits_admit_the_largest_sums():
    total = jssp_instances.MAX_TOTAL_DURATION
    inst = jssp_instances.parse_text(f"2 1\n0 {total - 5}\n0 5\n")
    assert int(inst.durations.sum()) == total and inst.durations.dtype == np.int32


def test_jssp_reader_names_a_file_that_is_not_utf8(tmp_path):
    p = tmp_path / "latin.txt"
    p.write_bytes(b"# caf\xe9\n" + JSSP_OK.encode())
    with pytest.raises(jssp_instances.InstanceFormatError, match="latin.txt: not a UTF-8 text file"):
        jssp_instances.read_instance(p)
    with pytest.raises(ValueError, match="latin.txt: not a UTF-8"):
        jssp_instances.read_directory(tmp_path)


@pytest.mark.parametrize("patch, fragment", [
    ({"meta": 5}, "meta=5 must be a JSON object"),
    ({"meta": None}, "meta=None must be a JSON object"),
    ({"meta": [1]}, "meta=[1] must be a JSON object"),
    ({"buffer": {"size": 1e30}}, "buffer #0 ('a'): size=1e+30 is too large (allowed: 1..1099511627776 bytes"),
    ({"buffer": {"size": 10 ** 30}}, "buffer #0 ('a'): size=1000000000000000000000000000000 is too large"),
    ({"buffer": {"start": 1e30, "end": 1e30}}, "buffer #0 ('a'): start=1e+30 out of range"),
    ({"buffer": {"end": 2 ** 40}}, "buffer #0 ('a'): end=1099511627776 out of range"),
    ({"buffer": {"benefit": 1e300}}, "buffer #0 ('a'): benefit=1e+300 must be a finite number in [0, 1e+30]"),
    ({"buffer": {"benefit": 10 ** 400}}, "buffer #0 ('a'): benefit=1000"),
    ({"capacity": 0}, "capacity=0 must be an integer number of bytes in 1..1099511627776"),
    ({"capacity": 1e30}, "capacity=1e+30 must be an integer number of bytes"),
    ({"capacity": "16"}, "capacity='16' must be an integer"),
])
def test_malloc_loader_names_the_file_and_field(tmp_path, patch, fragment):
    """Before the fix: TypeError (meta), OverflowError (size 1e30, benefit 10**400), a capacity error naming
    only the instance."""
    p = tmp_path / "inst.json"
    p.write_text(_malloc_json(**patch))
    with pytest.raises(ValueError) as err:
        malloc_instance.load(p)
    assert str(err.value).startswith(f"{p}: ") and fragment in str(err.value), str(err.value)


def test_malloc_loader_names_a_file_that_is_not_utf8(tmp_path):
    p = tmp_path / "u.json"
    p.write_bytes(b'{"name": "caf\xe9", "capacity": 4, "buffers": []}')
    with pytest.raises(ValueError, match=r"u\.json: not a UTF-8 text file \(byte 0xe9 at offset 13\)"):
        malloc_instance.load(p)


def test_malloc_instance_from_a_file_is_named_by_it_in_later_errors(tmp_path):
    from rl.malloc import game

    p = tmp_path / "g.json"
    p.write_text(_malloc_json(buffer={"size": 2 ** 31 + 1}))  # odd: an address unit of 1 byte
    inst = malloc_instance.load(p)
    assert inst.source == str(p) and "source" not in inst.to_dict()
    with pytest.raises(ValueError, match=f"{p} \\(instance 't'\\): capacity=16 and every size"):
        game.pad([inst])
    # a far-apart live interval no longer allocates one counter per schedule position
    far = malloc_instance.Instance("far", sizes=np.array([3, 4]), starts=np.array([0, 2 ** 31 - 3]),
                                   ends=np.array([2 ** 31 - 2, 2 ** 31 - 2]), benefits=np.array([1.0, 1.0]),
                                   capacity=8)
    assert far.peak_live_bytes() == 7


def test_a_refused_run_takes_back_only_an_unused_workdir_it_made(tmp_path):
    """scripts.common.main: after a ValueError past the workdir's creation (a missing --data_dir, a bad
    --compare), the workdir goes if it holds nothing but directories and this process's lock."""
    from scripts import common

    assert common.new_directory(str(tmp_path)) is None and common.new_directory("") is None
    root = common.new_directory(str(tmp_path / "a" / "b"))
    assert root == tmp_path / "a"
    (root / "b" / "checkpoints").mkdir(parents=True)
    (root / "b" / ".lock.0").write_text(f"pid {os.getpid()} on here")
    common.remove_if_unused(root)
    assert not root.exists()
    for name, text in ((".lock.0", "pid 1 on elsewhere"), ("config.json", "{}")):  # not ours, or used: kept
        (root / "b").mkdir(parents=True)
        (root / "b" / name).write_text(text)
        common.remove_if_unused(root)
        assert (root / "b" / name).read_text() == text
        (root / "b" / name).unlink()
        (root / "b").rmdir()


def test_output_file_check_one_rule_missing_folders_are_made(tmp_path):
    """Every ``out`` path: folders that do not exist yet are fine (made when the file is written); a path
    under a file, or a directory, is one line naming the setting."""
    from training.run import require_output_file, write_json_atomic

    (tmp_path / "file").write_text("x")
    require_output_file("out", str(tmp_path / "new" / "deeper" / "r.json"))  # fine
    with pytest.raises(ValueError, match=r"out=.*file/sub/r.json'.*is a file, not a directory"):
        require_output_file("out", str(tmp_path / "file" / "sub" / "r.json"))
    with pytest.raises(ValueError, match="is a directory"):
        require_output_file("out", str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing made by the check
    write_json_atomic(tmp_path / "new" / "deeper" / "r.json", {"a": 1})
    assert json.loads((tmp_path / "new" / "deeper" / "r.json").read_text()) == {"a": 1}


def _out_configs():
    from algoperf import bench as algoperf_bench
    from algoperf import search_spaces, targets
    from rl.jssp import bench as jssp_bench
    from rl.jssp import evaluate as jssp_eval
    from rl.malloc import bench as malloc_bench
    from rl.malloc import evaluate as malloc_eval
    from tools import mutation

    return [jssp_eval.EvalConfig, jssp_bench.BenchJSSPConfig, malloc_eval.EvalMallocConfig,
            malloc_eval.MoveSetCheckConfig, malloc_bench.BenchMallocConfig, algoperf_bench.BenchConfig,
            targets.TargetsConfig, search_spaces.ChooseConfig, mutation.MutationCheckConfig]


@pytest.mark.parametrize("config_cls", _out_configs(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_out_setting_takes_a_new_folder_and_refuses_one_under_a_file(tmp_path, config_cls):
    (tmp_path / "file").write_text("x")
    config_cls(out=str(tmp_path / "runs" / "r.json"))  # a folder that does not exist yet: made on writing
    with pytest.raises(ValueError, match=r"^out=.*is a file, not a directory"):
        config_cls(out=str(tmp_path / "file" / "r.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_eval_jssp_out_in_a_new_folder_is_written(tmp_path):
    """The reported case: ``eval_jssp --out=runs/agent.json`` where runs/ does not exist."""
    from rl.jssp import evaluate as jssp_eval

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "tiny.txt").write_text(JSSP_OK)
    out = tmp_path / "runs" / "agent.json"
    jssp_eval.run(jssp_eval.EvalConfig(solver="spt", instances=str(tmp_path / "in"), out=str(out)))
    records = json.loads(out.read_text())
    assert len(records) == 1 and records[0]["makespan"] > 0




def test_the_pages_count_the_rows_of_this_table():
    """README.md and docs/reliability.md quote how many cases this file has, and how many run by default."""
    default = sum(not c.slow for c in CASES)
    assert f"every script refuses bad input ({len(CASES)} tested cases)" in (REPO / "README.md").read_text()
    reliability = " ".join((REPO / "docs" / "reliability.md").read_text().split())
    assert f"`tests/test_bad_input.py`: {len(CASES)} cases over every script" in reliability
    assert f"{default} cases run by default, the other {len(CASES) - default} with" in reliability
