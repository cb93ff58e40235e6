"""XLA options that let collectives run asynchronously beside compute on GPU/TPU.

The collective matmuls and Comet chunks of parallel/collective_matmul.py and parallel/moe.py only expose
*independence* (a transfer that does not wait for the GEMM beside it); the latency-hiding scheduler is
what places them side by side in time. These are the flags MaxText sets for the same purpose
(MaxText ``docs`` / ``benchmarks`` xla flag sets). They must be in the environment before JAX initialises
its backend, so scripts call :func:`apply_async_collective_flags` first thing. XLA:CPU has no such
scheduler (collectives run in program order), so nothing is set there. XLA aborts on flags it does not
know; the lists were not exercised on an accelerator in the session that wrote them (no device was lent).
"""
from __future__ import annotations

import os

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


def apply_async_collective_flags(platform: str | None = None) -> dict[str, str]:
    """Appends the platform's flags to XLA_FLAGS (GPU) or LIBTPU_INIT_ARGS (TPU), skipping any already
    set; call before the first JAX computation. ``platform`` defaults to $JAX_PLATFORMS' first entry
    (nothing is set when it is unknown: on CPU the flags do not exist). Returns the changed variables."""
    platform = platform or os.environ.get("JAX_PLATFORMS", "").split(",")[0].strip()
    flags = async_collective_flags(platform)
    if not flags:
        return {}
    var = "LIBTPU_INIT_ARGS" if platform == "tpu" else "XLA_FLAGS"
    current = os.environ.get(var, "")
    present = {f.split("=")[0] for f in current.split()}
    added = [f for f in flags if f.split("=")[0] not in present]
    os.environ[var] = " ".join([current, *added]).strip()
    return {var: os.environ[var]}
