"""training/watchdog.py and the stall path of parallel.checkpoint.PreemptionGuard: a lost peer, a stalled
loop and a signal the main thread cannot serve each end the process with one line, within a bound."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from training import watchdog as wd


class FakeStore:
    """A key-value store shared by the fake processes of one test (the coordination service's role)."""

    def __init__(self):
        self.data, self.down = {}, False

    def set(self, key, value):
        if self.down:
            raise RuntimeError("UNAVAILABLE: failed to connect to all addresses")
        self.data[key] = value

    def get(self, key):
        if self.down:
            raise RuntimeError("UNAVAILABLE: failed to connect to all addresses")
        return self.data.get(key)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


CFG = wd.WatchdogConfig(beat_s=1.0, lost_after_s=5.0, stall_after_s=30.0, first_stall_after_s=90.0)


def pair(store, clock):
    return [wd.Watchdog(store, i, 2, CFG, clock=clock, resume_hint=lambda: "Rerun to resume.") for i in range(2)]


def beat(dogs, clock, seconds, alive=(0, 1)):
    """Advances the clock second by second; the processes in ``alive`` beat. Returns the first message."""
    for _ in range(seconds):
        clock.now += 1.0
        for i in alive:
            message = dogs[i].check_once()
            if message:
                return message
    return None


def test_live_peers_are_never_lost_and_a_silent_one_is_named_within_the_bound():
    store, clock = FakeStore(), Clock()
    dogs = pair(store, clock)
    for d in dogs:
        d.progress(1)
    assert beat(dogs, clock, 20) is None
    message = beat(dogs, clock, 20, alive=(0,))          # process 1 killed: its counter stops
    assert message.startswith("process 0 of 2: lost process 1 of 2: no heartbeat for 6 s, after step 1; exiting")
    assert message.endswith("Rerun to resume.")
    assert clock.now <= 20 + CFG.lost_after_s + 2 * CFG.beat_s


def test_a_peer_that_never_beats_is_lost_counting_from_the_start():
    store, clock = FakeStore(), Clock()
    message = beat(pair(store, clock), clock, 10, alive=(0,))
    assert "lost process 1 of 2" in message and "before the first step" in message


def test_a_peer_that_finished_normally_is_not_lost():
    store, clock = FakeStore(), Clock()
    dogs = pair(store, clock)
    beat(dogs, clock, 3)
    dogs[1].stop(done=True)                               # its loop ended: it says so
    assert beat(dogs, clock, 30, alive=(0,)) is None


def test_losing_the_key_value_store_is_losing_the_coordinator():
    store, clock = FakeStore(), Clock()
    dogs = pair(store, clock)
    beat(dogs, clock, 3)
    store.down = True
    assert beat(dogs, clock, 3) is None                   # a short outage is tolerated
    message = beat(dogs, clock, 10)
    assert "lost the coordinator (process 0 of 2)" in message and "UNAVAILABLE" in message


def test_a_loop_without_progress_is_a_stall_with_a_longer_first_step():
    store, clock = FakeStore(), Clock()
    dogs = pair(store, clock)
    assert beat(dogs, clock, 80) is None                  # compiling: first_stall_after_s = 90
    assert "no training step finished for 91 s (limit 90 s)" in beat(dogs, clock, 20)
    store, clock = FakeStore(), Clock()
    dogs = pair(store, clock)
    for d in dogs:
        d.progress(7)
    message = beat(dogs, clock, 40)
    assert "no training step finished for 31 s (limit 30 s): a collective is stalled, after step 7" in message


def test_the_thread_calls_on_failure_and_await_verdict_waits_for_it():
    store = FakeStore()
    seen = []
    dog = wd.Watchdog(store, 0, 2, wd.WatchdogConfig(beat_s=0.01, lost_after_s=0.05), on_failure=seen.append)
    with pytest.raises(ValueError):
        with dog:
            raise ValueError("a broken connection inside a collective")   # the peer never beats
    assert seen and "lost process 1 of 2" in seen[0]


def test_distributed_store_refuses_without_jax_distributed():
    with pytest.raises(ValueError, match="needs jax.distributed"):
        wd.DistributedStore(client=None)


STALLED_MAIN = textwrap.dedent("""
    import ctypes, sys
    from parallel.checkpoint import PreemptionGuard
    from training.watchdog import exit_with_line
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)               # a default pthread mutex, locked twice: the main
    libc.pthread_mutex_init(mutex, None)                  # thread blocks in C for good, as in a stalled
    libc.pthread_mutex_lock(mutex)                        # collective, where Python runs no signal handler
    with PreemptionGuard(on_stalled=exit_with_line, stall_grace_s=float(sys.argv[1])):
        print("ready", flush=True)
        libc.pthread_mutex_lock(mutex)
""")


def _stalled_child(grace):
    proc = subprocess.Popen([sys.executable, "-c", STALLED_MAIN, str(grace)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    return proc


def test_sigterm_ends_a_main_thread_stalled_in_c_with_one_line_after_the_grace():
    proc = _stalled_child(grace=1.5)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1 and 1.4 < time.monotonic() - start < 20
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: received signal {int(signal.SIGTERM)} but the training "
                                                   "loop did not answer within 2 s")


def test_a_guard_without_on_stalled_leaves_the_signal_to_the_loop():
    """No watcher thread: the flag is set when the main thread next runs Python (the pre-existing contract)."""
    from parallel.checkpoint import PreemptionGuard

    with PreemptionGuard() as guard:
        signal.raise_signal(signal.SIGTERM)
        assert guard.requested and guard._watcher is None


@pytest.mark.parametrize("flags, count", [("", 1), ("--xla_force_host_platform_device_count=4", 4),
                                          ("--xla_cpu_foo=1 --xla_force_host_platform_device_count=2", 2)])
def test_multi_process_cpu_runs_get_threads_for_every_device(monkeypatch, flags, count):
    """training.run.maybe_initialize_distributed sets PJRT_NPROC from these (4 CPU devices per process on
    2 cores stalled in the step's all-reduce without threads for every device)."""
    from training import run as run_lib

    monkeypatch.setenv("XLA_FLAGS", flags)
    assert run_lib.host_device_count() == count
    assert run_lib.cpu_threads_for(count) >= max(2 * count, os.cpu_count() or 1)
