"""parallel/checkpoint.py: round trips, re-sharding, damage, config checks, background errors."""
import logging
import pathlib
import resource
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from parallel import checkpoint as ckpt_lib
from parallel import mesh as mesh_lib
from training import config as config_lib


def sharded_state(mesh):
    rng = np.random.default_rng(0)
    w = jax.device_put(rng.normal(size=(16, 8)).astype(np.float32), NamedSharding(mesh, P("data", None)))
    b = jax.device_put(rng.normal(size=(8,)).astype(np.float32), NamedSharding(mesh, P()))
    m = jax.device_put(np.arange(32, dtype=np.int32).reshape(8, 4), NamedSharding(mesh, P("data")))
    return {"params": {"w": w, "b": b}, "opt": {"count": m}, "step": jnp.int32(7),
            "rng": jax.random.PRNGKey(3)}


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("mode", ckpt_lib.MODES)
def test_round_trip_sharded_8_devices_then_restore_on_4_and_1(tmp_path, devices, mode):
    mesh8 = mesh_lib.make_mesh("data:8", devices)
    state = sharded_state(mesh8)
    ck = ckpt_lib.Checkpointer(tmp_path, keep=2, mode=mode)
    ck.save(5, state, {"config": {"a": 1}, "data": {"position": 5}})
    ck.close()

    for n in (8, 4, 1):
        mesh = mesh_lib.make_mesh(f"data:{n}", devices[:n])
        shardings = jax.tree.map(lambda x: NamedSharding(mesh, x.sharding.spec if hasattr(x.sharding, "spec")
                                                         else P()), state)
        reader = ckpt_lib.Checkpointer(tmp_path, keep=2, mode=mode)
        restored = reader.restore(ckpt_lib.abstract_like(state, shardings))
        reader.close()
        assert restored.step == 5 and restored.meta == {"config": {"a": 1}, "data": {"position": 5}}
        assert_trees_equal(restored.state, state)
        w = restored.state["params"]["w"]
        assert w.sharding.mesh.devices.size == n and len(w.addressable_shards) == n
        assert w.addressable_shards[0].data.shape == (16 // n, 8)


def test_keep_last_k_and_latest(tmp_path, devices):
    mesh = mesh_lib.make_mesh("data:8", devices)
    ck = ckpt_lib.Checkpointer(tmp_path, keep=2, mode="lazy")
    state = sharded_state(mesh)
    for step in (10, 20, 30):
        state = jax.tree.map(lambda x: x + 1, state)
        ck.save(step, state, {})
    ck.wait()
    assert ck.all_steps() == [20, 30]
    restored = ck.restore(ckpt_lib.abstract_like(state))
    assert restored.step == 30
    assert_trees_equal(restored.state, state)
    ck.close()


def test_lazy_save_sets_a_one_step_donation_barrier(tmp_path, devices):
    ck = ckpt_lib.Checkpointer(tmp_path, keep=1, mode="lazy")
    assert not ck.take_donation_barrier()
    ck.save(1, {"x": jnp.ones(3)}, {})
    assert ck.take_donation_barrier() and not ck.take_donation_barrier()
    ck.close()
    sync = ckpt_lib.Checkpointer(tmp_path / "s", keep=1, mode="sync")
    sync.save(1, {"x": jnp.ones(3)}, {})
    assert not sync.take_donation_barrier()
    sync.close()


def _data_file(step_dir: pathlib.Path) -> pathlib.Path:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncate_data", "delete_data", "truncate_metadata"])
def test_damaged_latest_step_is_reported_and_previous_restored(tmp_path, devices, caplog, damage):
    mesh = mesh_lib.make_mesh("data:8", devices)
    s1 = sharded_state(mesh)
    s1["big"] = jnp.asarray(np.random.default_rng(5).normal(size=(256, 64)), jnp.float32)
    s2 = jax.tree.map(lambda x: x + 1, s1)
    ck = ckpt_lib.Checkpointer(tmp_path, keep=3, mode="sync")
    ck.save(1, s1, {"k": 1})
    ck.save(2, s2, {"k": 2})
    ck.close()
    victim = (tmp_path / "2" / "state" / "_METADATA") if damage == "truncate_metadata" else _data_file(tmp_path / "2")
    assert victim.stat().st_size > 200
    if damage.startswith("truncate"):
        with open(victim, "r+b") as f:
            f.truncate(victim.stat().st_size // 2)
    else:
        victim.unlink()
    reader = ckpt_lib.Checkpointer(tmp_path, keep=3, mode="sync")
    with caplog.at_level(logging.ERROR):
        restored = reader.restore(ckpt_lib.abstract_like(s1))
    assert restored.step == 1 and restored.meta == {"k": 1}
    assert_trees_equal(restored.state, s1)
    assert str(tmp_path / "2") in caplog.text
    # the damaged step is set aside (kept for inspection), so the resumed run can save step 2 again
    # instead of failing on it at every rerun (a crash loop)
    assert reader.all_steps() == [1] and len(list(tmp_path.glob("2.damaged-*"))) == 1
    reader.save(2, s2, {"k": 2})
    reader.close()
    again = ckpt_lib.Checkpointer(tmp_path, keep=3, mode="sync")
    assert again.restore(ckpt_lib.abstract_like(s1)).step == 2
    again.close()


def test_all_steps_damaged_is_an_error_not_a_fresh_start(tmp_path, devices):
    ck = ckpt_lib.Checkpointer(tmp_path, keep=1, mode="sync")
    state = {"x": jnp.arange(1000.0)}
    ck.save(1, state, {})
    ck.close()
    for f in (tmp_path / "1" / "state").rglob("*"):
        if f.is_file():
            f.unlink()
    with pytest.raises(ckpt_lib.CheckpointError, match="no checkpoint .* could be restored"):
        ckpt_lib.Checkpointer(tmp_path, keep=1, mode="sync").restore(ckpt_lib.abstract_like(state))


def test_temporary_dirs_are_removed_and_never_taken_for_a_step(tmp_path):
    ck = ckpt_lib.Checkpointer(tmp_path, keep=2, mode="sync")
    ck.save(3, {"x": jnp.ones(4)}, {})
    ck.close()
    fake = tmp_path / "9.orbax-checkpoint-tmp-1234"
    (fake / "state").mkdir(parents=True)
    (fake / "state" / "junk").write_bytes(b"partial")
    reopened = ckpt_lib.Checkpointer(tmp_path, keep=2, mode="sync")
    assert not fake.exists()
    assert reopened.all_steps() == [3]
    reopened.close()


@pytest.mark.parametrize("mode", ["lazy", "async", "sync"])
def test_background_save_errors_are_raised_not_swallowed(tmp_path, mode):
    ck = ckpt_lib.Checkpointer(tmp_path / "ck", keep=2, mode=mode)
    ck.save(1, {"x": jnp.ones(4)}, {})
    ck.wait()

    def broken_save(*args, **kwargs):
        raise OSError(28, "No space left on device")

    ck._manager.save = broken_save
    with pytest.raises(ckpt_lib.CheckpointError, match="step 2 .*No space left on device"):
        ck.save(2, {"x": jnp.ones(4)}, {})
        ck.wait()  # lazy mode: the error arrives from the background thread
    ck._executor and ck._executor.shutdown()
    assert ckpt_lib.Checkpointer(tmp_path / "ck", keep=2, mode="sync").all_steps() == [1]


@pytest.mark.parametrize("mode", ["lazy", "async"])
def test_a_failed_background_write_names_its_own_step_and_keeps_the_last_good_one(tmp_path, mode):
    """A real write failure inside Orbax's background thread (files capped with RLIMIT_FSIZE: the kernel
    refuses the write as a full disk would) surfaces only at the next call; it must name the step whose
    write failed, not the step being saved then, and leave the last good step restorable."""
    state = {"w": jnp.arange(512 * 512, dtype=jnp.float32).reshape(512, 512)}  # 1 MiB in one file
    ck = ckpt_lib.Checkpointer(tmp_path / "ck", keep=3, mode=mode)
    ck.save(1, state, {})
    ck.wait()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))
        ck.save(2, {"w": state["w"] + 1}, {})
        with pytest.raises(ckpt_lib.CheckpointError,
                           match=r"step 2 under .* failed \(File too large\); the last good step 1 is intact"):
            ck.save(3, {"w": state["w"] + 2}, {})
            ck.wait()
        with pytest.raises(ckpt_lib.CheckpointError, match="step 2 "):  # and it stays failed
            ck.save(4, state, {})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
        ck.abort()
    reopened = ckpt_lib.Checkpointer(tmp_path / "ck", keep=3, mode="sync")
    restored = reopened.restore(ckpt_lib.abstract_like(state))
    assert restored.step == 1
    assert_trees_equal(restored.state, state)
    reopened.close()


def test_a_dtype_or_shape_change_is_refused_not_cast(tmp_path):
    """Orbax casts a saved leaf to the target's dtype without a word (an int32 step restored as float32);
    the restore must refuse it, naming the leaf, and leave the step where it is (not damage)."""
    state = {"step": jnp.int32(7), "w": jnp.ones((4, 3))}
    ck = ckpt_lib.Checkpointer(tmp_path / "ck", keep=2, mode="sync")
    ck.save(7, state, {})
    ck.close()
    for target, leaf in (({"step": jnp.float32(0), "w": jnp.ones((4, 3))}, r"step: saved int32\[\], expected float32"),
                         ({"step": jnp.int32(0), "w": jnp.ones((3, 4))}, r"w: saved float32\[4, 3\], expected float32\[3, 4\]"),
                         ({"step": jnp.int32(0)}, r"w: saved but not expected")):
        reopened = ckpt_lib.Checkpointer(tmp_path / "ck", keep=2, mode="sync")
        with pytest.raises(ckpt_lib.IncompatibleCheckpoint, match=leaf):
            reopened.restore(ckpt_lib.abstract_like(target))
        reopened.close()
    assert ckpt_lib.Checkpointer(tmp_path / "ck", keep=2, mode="sync").all_steps() == [7]


def test_config_mismatch_is_refused_naming_fields_unless_overwrite(tmp_path):
    state = {"x": jnp.ones(4)}
    abstract = ckpt_lib.abstract_like(state)
    ck, restored = ckpt_lib.open_for_run(tmp_path, {"lr": 0.1, "layers": 2, "workdir": "a"}, abstract,
                                         keep=1, mode="sync", overwrite=False, resume_ignore=("workdir",))
    assert restored is None
    ck.save(4, state, {"config": {"lr": 0.1, "layers": 2, "workdir": "a"}})
    ck.close()
    with pytest.raises(ValueError) as info:
        ckpt_lib.open_for_run(tmp_path, {"lr": 0.2, "layers": 2, "workdir": "b", "new": 1}, abstract,
                              keep=1, mode="sync", overwrite=False, resume_ignore=("workdir",))
    message = str(info.value)  # the library names the settings; the command line adds their "--"
    assert "`lr`: checkpoint has 0.1, flags give 0.2" in message and "`new`" in message
    assert "`workdir`: checkpoint" not in message and "`overwrite`" in message
    cli = config_lib.flag_message(message, ["lr", "layers", "workdir", "new", "overwrite"])
    assert "(--lr: checkpoint has 0.1, flags give 0.2; --new: checkpoint has None, flags give 1)" in cli
    assert cli.endswith("use the same flags to resume, another --workdir, or --overwrite to start afresh")
    same, restored = ckpt_lib.open_for_run(tmp_path, {"lr": 0.1, "layers": 2, "workdir": "b"}, abstract,
                                           keep=1, mode="sync", overwrite=False, resume_ignore=("workdir",))
    assert restored.step == 4
    same.close()
    fresh, restored = ckpt_lib.open_for_run(tmp_path, {"lr": 0.2}, abstract, keep=1, mode="sync",
                                            overwrite=True)
    assert restored is None and fresh.all_steps() == []
    fresh.close()


def test_bad_options_and_paths_fail_before_work(tmp_path):
    with pytest.raises(ValueError, match="keep_checkpoints=0 must be an integer >= 1"):
        ckpt_lib.Checkpointer(tmp_path, keep=0)
    with pytest.raises(ValueError, match="checkpoint_mode='fast'"):
        ckpt_lib.Checkpointer(tmp_path, mode="fast")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is not writable"):
        ckpt_lib.Checkpointer(blocker / "sub")
    with pytest.raises(ValueError, match="MiB free"):
        ckpt_lib.check_disk_space(tmp_path, 2**62, keep=2)


def test_save_time_leaves_out_the_steps_still_computing_the_state(tmp_path, mode="async"):
    """A state whose computation was just dispatched (asynchronous dispatch): the save waits for it before its
    clock starts, so the blocked time it reports is the save's own, not the computation's (sync mode takes
    the same path)."""
    slow = jax.jit(lambda x: jax.lax.fori_loop(0, 100, lambda i, y: jnp.tanh(y @ y) / 8, x))
    x = jnp.ones((512, 512), jnp.float32) / 512
    jax.block_until_ready(slow(x))  # compiled
    start = time.perf_counter()
    jax.block_until_ready(slow(x))
    compute_s = time.perf_counter() - start
    ck = ckpt_lib.Checkpointer(tmp_path / "c", keep=1, mode=mode)
    ck.save(0, {"w": jnp.zeros((512, 512))})  # Orbax's first save sets itself up: not part of the comparison
    ck.wait()
    state = {"w": slow(x)}  # dispatched, still running
    blocked = ck.save(1, state, {})
    ck.close()
    assert blocked < compute_s / 2, (blocked, compute_s)  # without the wait: at least compute_s
