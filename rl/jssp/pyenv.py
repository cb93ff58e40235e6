"""A plain-Python event-driven job-shop environment with exactly the rules of ``rl.jssp.env``.

The baseline for ``scripts/bench_jssp.py`` (steps/s) and a second implementation the tests compare the
JAX environment against, action by action. Lists and ints only; one instance at a time.
"""
from __future__ import annotations


class PyJobShopEnv:
    def __init__(self, machines, durations):
        self.machines = [list(map(int, row)) for row in machines]
        self.durations = [list(map(int, row)) for row in durations]
        self.J, self.M = len(self.machines), len(self.machines[0])
        self.reset()

    def reset(self):
        self.t = 0
        self.next_op = [0] * self.J
        self.job_ready = [0] * self.J
        self.mach_ready = [0] * self.M
        self.start = [[-1] * self.M for _ in range(self.J)]
        return self

    def done(self) -> bool:
        return all(o >= self.M for o in self.next_op)

    def est(self, j: int):
        o = self.next_op[j]
        if o >= self.M:
            return None
        return max(self.job_ready[j], self.mach_ready[self.machines[j][o]])

    def legal(self) -> list[bool]:
        ests = [self.est(j) for j in range(self.J)]
        jobs = [e is not None and e <= self.t for e in ests]
        noop = any(e is not None and e > self.t for e in ests)
        return jobs + [noop]

    def step(self, action: int) -> None:
        if action >= self.J:  # No-Op: the next event
            later = [e for e in (self.est(j) for j in range(self.J)) if e is not None and e > self.t]
            if later:
                self.t = min(later)
        else:
            j, o = action, self.next_op[action]
            m, d = self.machines[j][o], self.durations[j][o]
            s = max(self.t, self.est(j))
            self.start[j][o] = s
            self.job_ready[j] = self.mach_ready[m] = s + d
            self.next_op[j] += 1
        ests = [e for e in (self.est(j) for j in range(self.J)) if e is not None]
        if ests and not any(e <= self.t for e in ests):
            self.t = min(ests)

    def makespan(self) -> int:
        return max(self.job_ready)

    def spt_action(self) -> int:
        legal = self.legal()
        best, best_d = None, None
        for j in range(self.J):
            if legal[j]:
                d = self.durations[j][self.next_op[j]]
                if best is None or d < best_d:
                    best, best_d = j, d
        return best


def run_spt(machines, durations) -> tuple[int, list[list[int]], int]:
    """(makespan, start times, steps) of SPT in the plain-Python environment."""
    e = PyJobShopEnv(machines, durations)
    steps = 0
    while not e.done():
        e.step(e.spt_action())
        steps += 1
    return e.makespan(), e.start, steps
