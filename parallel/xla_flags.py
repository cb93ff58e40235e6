"""XLA options that let collectives run asynchronously beside compute on GPU/TPU.

The collective matmuls and Comet chunks of parallel/collective_matmul.py and parallel/moe/ only expose
*independence* (a transfer that does not wait for the GEMM beside it); the latency-hiding scheduler is
what places them side by side in time. These are the flags MaxText sets for the same purpose
(MaxText ``docs`` / ``benchmarks`` xla flag sets). They must be in the environment before JAX initialises
its backend, so ``train_lm``, ``train_diloco`` and ``bench_moe`` call :func:`apply_async_collective_flags`
first thing in ``main``. XLA:CPU has no such scheduler (collectives run in program order), so nothing is
set there. XLA aborts on flags it does not know: ``tools/device_check_moe.sh`` runs a MoE training step
with the GPU list on an H100 (jax 0.11.2) to check that they are accepted.
"""
from __future__ import annotations

import importlib.util
import os
import pkgutil

GPU_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",      # schedule async collectives beside compute
    "--xla_gpu_enable_highest_priority_async_stream=true",  # collectives on a high-priority stream
    "--xla_gpu_enable_pipelined_all_gather=true",          # overlap across loop iterations
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_enable_while_loop_double_buffering=true",
)
TPU_FLAGS = (  # go into LIBTPU_INIT_ARGS
    "--xla_tpu_enable_latency_hiding_scheduler=true",
    "--xla_tpu_enable_async_collective_fusion=true",
    "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
    "--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
    "--xla_tpu_overlap_compute_collective_tc=true",
    "--xla_enable_async_all_gather=true",
    "--xla_enable_async_collective_permute=true",
)


def async_collective_flags(platform: str) -> tuple[str, ...]:
    """The flags for ``platform`` (``gpu``/``cuda``/``rocm``, ``tpu``; anything else: none)."""
    if platform in ("gpu", "cuda", "rocm"):
        return GPU_FLAGS
    if platform == "tpu":
        return TPU_FLAGS
    return ()


def detect_platform() -> str:
    """The platform JAX will pick, found without initialising a backend (which would read XLA_FLAGS too
    early): $JAX_PLATFORMS' first entry, else ``cuda``/``rocm`` when such a PJRT plugin is installed
    (``jax_plugins.xla_cuda12`` ...), ``tpu`` when ``libtpu`` is, and ``cpu`` otherwise."""
    requested = os.environ.get("JAX_PLATFORMS", "").split(",")[0].strip().lower()
    if requested:
        return requested
    spec = importlib.util.find_spec("jax_plugins")
    plugins = [m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)] if spec else []
    for name in ("cuda", "rocm"):
        if any(name in plugin for plugin in plugins):
            return name
    return "tpu" if importlib.util.find_spec("libtpu") else "cpu"


def apply_async_collective_flags(platform: str | None = None) -> dict[str, str]:
    """Appends the platform's flags to XLA_FLAGS (GPU) or LIBTPU_INIT_ARGS (TPU), skipping any already
    set; call before the first JAX computation. ``platform`` defaults to :func:`detect_platform` (nothing
    is set on CPU). $JAXSYS_NO_ASYNC_FLAGS=1 turns it off (for an XLA build that rejects one of the flags).
    Returns the changed variables."""
    if os.environ.get("JAXSYS_NO_ASYNC_FLAGS", "") not in ("", "0"):
        return {}
    platform = platform or detect_platform()
    flags = async_collective_flags(platform)
    if not flags:
        return {}
    var = "LIBTPU_INIT_ARGS" if platform == "tpu" else "XLA_FLAGS"
    current = os.environ.get(var, "")
    present = {f.split("=")[0] for f in current.split()}
    added = [f for f in flags if f.split("=")[0] not in present]
    os.environ[var] = " ".join([current, *added]).strip()
    return {var: os.environ[var]}
