"""How work is spread over devices and time. Submodules (import the one you need; none is imported here,
so that e.g. ``import parallel.mesh`` does not pull in Orbax):

  * mesh              -- device meshes from named axis sizes; placing a global batch along ``data``.
  * sharding          -- logical-axis sharding rules (MaxText style) from parameter names to mesh axes.
  * moe               -- sharded Mixture-of-Experts FFN (routing, grouped GEMMs, capacity, Comet overlap, layer).
  * collective_matmul -- all-gather -> GEMM and GEMM -> reduce-scatter as ``ppermute`` rings (Wang et al. 2023).
  * diloco            -- data-parallel, DiLoCo and Streaming DiLoCo as one outer-optimiser family.
  * quantize          -- low-precision codecs (e.g. 4-bit E3M0) for DiLoCo's outer gradients.
  * comm_sim          -- communication byte accounting and a compute-utilisation simulator for DP/DiLoCo.
  * checkpoint        -- asynchronous, preemption-safe Orbax checkpointing of a whole training state.
  * checkpoint_logs   -- quiets Orbax/TensorStore's repeats of a failure the checkpointer raises once.
  * xla_flags         -- XLA options that let collectives run asynchronously beside compute (GPU/TPU).
"""
