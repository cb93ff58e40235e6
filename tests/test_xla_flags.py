"""parallel/xla_flags.py: which platform is detected and what lands in the environment (no backend is
initialised here; that the GPU list is accepted by XLA is checked on an H100 by
tools/device_check_moe.sh, and XLA:CPU's flag parser knows the same names, checked below)."""
import subprocess
import sys

from parallel import xla_flags


def test_detect_platform_follows_jax_platforms(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert xla_flags.detect_platform() == "cuda"
    monkeypatch.setenv("JAX_PLATFORMS", "")
    assert xla_flags.detect_platform() == "cpu"  # this machine has no CUDA/ROCm plugin and no libtpu


def test_apply_appends_gpu_flags_once_and_keeps_user_values(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_latency_hiding_scheduler=false")
    monkeypatch.delenv("JAXSYS_NO_ASYNC_FLAGS", raising=False)
    changed = xla_flags.apply_async_collective_flags("gpu")
    flags = changed["XLA_FLAGS"].split()
    assert flags[0] == "--xla_gpu_enable_latency_hiding_scheduler=false"  # the user's choice wins
    assert len(flags) == len(xla_flags.GPU_FLAGS)
    assert xla_flags.apply_async_collective_flags("gpu")["XLA_FLAGS"].split() == flags  # idempotent
    assert xla_flags.apply_async_collective_flags("cpu") == {}


def test_tpu_flags_go_to_libtpu_args_and_the_switch_turns_it_off(monkeypatch):
    monkeypatch.delenv("LIBTPU_INIT_ARGS", raising=False)
    monkeypatch.setenv("JAXSYS_NO_ASYNC_FLAGS", "1")
    assert xla_flags.apply_async_collective_flags("tpu") == {}
    monkeypatch.setenv("JAXSYS_NO_ASYNC_FLAGS", "0")
    assert xla_flags.apply_async_collective_flags("tpu")["LIBTPU_INIT_ARGS"].split() == list(xla_flags.TPU_FLAGS)


def test_xla_knows_every_gpu_flag_name():
    """XLA aborts on an unknown flag; the GPU options are parsed by every XLA build, CPU included."""
    env = {"XLA_FLAGS": " ".join(xla_flags.GPU_FLAGS), "JAX_PLATFORMS": "cpu", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", "import jax.numpy as j; print(float(j.ones(2).sum()))"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "2.0", out.stderr[-2000:]
