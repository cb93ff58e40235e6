"""A plain-Python mallocGame with the same rules as ``rl/malloc/game.py`` (one instance, no padding, no JAX).

It is the obviously-correct reference the JAX game is tested against (``tests/test_malloc_muzero.py``) and
the baseline of ``scripts/bench_malloc.py``. Rules (see ``game.py``'s docstring): buffers are decided in
schedule order; with ``n`` buffers there are ``n + 2`` moves: 0 slow, 1 offset 0, ``2 + j`` on top of slot
``j`` (a slot already in fast memory whose live interval overlaps the current one). A candidate is legal
iff the buffer fits under the capacity and overlaps no time-overlapping placed buffer; a candidate whose
offset equals a lower-numbered legal candidate's is masked; slow is always legal; an illegal move plays slow.
"""
from __future__ import annotations

from rl.malloc.instance import Instance


class PyMallocGame:
    def __init__(self, instance: Instance):
        order = [int(i) for i in instance.schedule_order()]
        self.order = order
        self.size = [int(instance.sizes[i]) for i in order]
        self.start = [int(instance.starts[i]) for i in order]
        self.end = [int(instance.ends[i]) for i in order]
        total = instance.total_benefit
        self.total = total if total > 0 else 1.0
        self.benefit = [float(instance.benefits[i]) for i in order]
        self.capacity = int(instance.capacity)
        self.n = len(order)
        self.reset()

    def reset(self) -> None:
        self.offset = [-1] * self.n
        self.t = 0
        self.ret = 0.0

    @property
    def done(self) -> bool:
        return self.t >= self.n

    def legal_actions(self) -> list[bool]:
        """[n + 2] legal moves for the current buffer."""
        legal = [False] * (self.n + 2)
        legal[0] = True
        if self.done:
            return legal
        cur = self.t
        size = self.size[cur]
        over = [j for j in range(self.n) if j != cur and self.offset[j] >= 0
                and self.start[j] <= self.end[cur] and self.start[cur] <= self.end[j]]
        cands = [(1, 0)] + [(2 + j, self.offset[j] + self.size[j]) for j in over]
        seen = set()
        for a, off in sorted(cands):
            if off + size > self.capacity or off in seen:
                continue
            if any(off < self.offset[j] + self.size[j] and self.offset[j] < off + size for j in over):
                continue
            legal[a] = True
            seen.add(off)
        return legal

    def step(self, action: int) -> tuple[float, bool]:
        """Decides the current buffer; returns (reward, done). Illegal moves play slow."""
        if self.done:
            return 0.0, True
        cur = self.t
        reward = 0.0
        if action != 0 and self.legal_actions()[action]:
            self.offset[cur] = 0 if action == 1 else self.offset[action - 2] + self.size[action - 2]
            reward = self.benefit[cur] / self.total
        self.t += 1
        self.ret += reward
        return reward, self.done

    def offsets_in_instance_order(self) -> list[int]:
        out = [-1] * self.n
        for k, i in enumerate(self.order):
            out[i] = self.offset[k]
        return out
