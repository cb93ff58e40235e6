"""A plain-Python mallocGame with the same rules as ``rl/malloc/game.py`` (one instance, no padding, no JAX).

It is the obviously-correct reference the JAX game is tested against (``tests/test_malloc_muzero.py``) and
the baseline of ``scripts/bench_malloc.py``. Rules (see ``game.py``'s docstring): buffers are decided in
schedule order; with ``n`` buffers there are ``2 n + 3`` moves: 0 slow, 1 offset 0, 2 offset capacity - size,
``3 + j`` on top of slot ``j``, ``3 + n + j`` ending at the bottom of slot ``j`` (a slot already in fast memory
whose live interval overlaps the current one). A candidate is legal iff the buffer lies inside [0, capacity)
and overlaps no time-overlapping placed buffer; a candidate whose offset equals a lower-numbered legal
candidate's is masked; slow is always legal; an illegal move plays slow.
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

    def candidates(self) -> dict[int, int]:
        """{move: offset} of the current buffer's candidate moves (legal or not)."""
        cur, n = self.t, self.n
        size = self.size[cur]
        cands = {1: 0, 2: self.capacity - size}
        for j in self._live_placed():
            cands[3 + j] = self.offset[j] + self.size[j]
            cands[3 + n + j] = self.offset[j] - size
        return cands

    def _live_placed(self) -> list[int]:
        cur = self.t
        return [j for j in range(self.n) if j != cur and self.offset[j] >= 0
                and self.start[j] <= self.end[cur] and self.start[cur] <= self.end[j]]

    def legal_actions(self) -> list[bool]:
        """[2 n + 3] legal moves for the current buffer."""
        legal = [False] * (2 * self.n + 3)
        legal[0] = True
        if self.done:
            return legal
        size = self.size[self.t]
        over = self._live_placed()
        seen = set()
        for a, off in sorted(self.candidates().items()):
            if off < 0 or off + size > self.capacity or off in seen:
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
            self.offset[cur] = self.candidates()[action]
            reward = self.benefit[cur] / self.total
        self.t += 1
        self.ret += reward
        return reward, self.done

    def offsets_in_instance_order(self) -> list[int]:
        out = [-1] * self.n
        for k, i in enumerate(self.order):
            out[i] = self.offset[k]
        return out
