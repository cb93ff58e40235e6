"""mallocMuZero networks: representation, dynamics and prediction with attention over buffers (Flax linen).

After "Optimizing Memory Mapping Using Deep Reinforcement Learning" (Wang et al., DeepMind 2023, Sec. 4):
MuZero (Schrittwieser et al. 2020, "Mastering Atari, Go, Chess and Shogi by Planning with a Learned
Model", Eq. 1 and Appendix B) with three functions

    s^0      = h(o_t)                       representation
    r^k, s^k = g(s^{k-1}, a^k)              dynamics
    p^k, v^k = f(s^k)                       prediction

where here the latent state ``s`` is a *set* of tokens: one global token plus one token per buffer slot
(``Latent.tokens`` [..., N + 1, D], ``Latent.mask`` [..., N + 1] marks the real slots). Every function is
a pre-norm transformer over that set, so one set of parameters serves every padded size N.

Action ``a`` of the mallocGame (``rl/malloc/game.py``, ``2 N + 3`` moves): 0 = slow memory, 1 = offset 0,
2 = ending at the capacity, ``3 + j`` = on top of buffer slot ``j``, ``3 + N + j`` = ending at the bottom of
slot ``j``. The prediction scores the three fixed moves from the global token and the slot moves
pointer-style (Vinyals et al. 2015, "Pointer Networks"), one query per face: ``logit_{3+j} = <W_top g,
W_k s_j> / sqrt(D)`` and ``logit_{3+N+j} = <W_under g, W_k s_j> / sqrt(D)``. The dynamics embeds the action
by adding a learned move-type vector to the global token and a learned "chosen" vector to the token of
slot ``j``, then runs its blocks. The prediction also
emits a legality logit per move (an auxiliary head, trained on the true legal masks) that the search
uses inside the tree to push down the prior of moves the model believes illegal.

This file knows nothing about training (see ``rl/malloc/muzero/`` and ``rl/malloc/train.py``).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.attention import NEG, Block



@dataclasses.dataclass(frozen=True)
class MuZeroNetConfig:
    """The network's architecture: three pre-norm transformers over the buffer tokens.

    width: Transformer width (token dimension; a multiple of num_heads).
    num_heads: Attention heads.
    mlp_dim: Feed-forward width.
    repr_layers: Representation transformer blocks.
    dyn_layers: Dynamics transformer blocks.
    pred_layers: Prediction transformer blocks (0: heads only).
    slow_bias_init: Initial prior logit of the slow-memory move (negative: start preferring placements).
    """
    width: int = 64
    num_heads: int = 4
    mlp_dim: int = 128
    repr_layers: int = 2
    dyn_layers: int = 1
    pred_layers: int = 0
    slow_bias_init: float = -2.0  # start preferring placements: an all-slow policy learns nothing

    def __post_init__(self):
        for name in ("width", "num_heads", "mlp_dim", "repr_layers", "dyn_layers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"MuZeroNetConfig.{name}={v!r} must be a positive integer")
        if not isinstance(self.pred_layers, int) or self.pred_layers < 0:
            raise ValueError(f"MuZeroNetConfig.pred_layers={self.pred_layers!r} must be an integer >= 0")
        if self.width % self.num_heads:
            raise ValueError(f"MuZeroNetConfig.width={self.width} must be divisible by num_heads={self.num_heads}")


def _fixed_bias(slow: float):
    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.zeros(shape, dtype).at[0].set(slow)
    return init


class Latent(NamedTuple):
    tokens: jax.Array  # float32 [..., N + 1, D]: global token first, then one per buffer slot
    mask: jax.Array    # bool [..., N + 1]: True for the global token and the real slots


class Prediction(NamedTuple):
    logits: jax.Array        # float32 [..., 2 N + 3]; padding slots at NEG
    value: jax.Array         # float32 [...]
    legal_logits: jax.Array  # float32 [..., 2 N + 3]: auxiliary legality head


class Stack(nn.Module):
    cfg: MuZeroNetConfig
    layers: int

    @nn.compact
    def __call__(self, x, mask):
        for _ in range(self.layers):
            x = Block(self.cfg.width, self.cfg.num_heads, self.cfg.mlp_dim)(x, key_mask=mask)
        return nn.LayerNorm()(x)  # a normalised latent (MuZero scales hidden states; Appendix G)


class MallocMuZeroNet(nn.Module):
    """``represent(slots, glob) -> Latent``, ``dynamics(latent, action) -> (Latent, reward)``,
    ``predict(latent) -> Prediction``; ``__call__`` runs all three once (for ``init``)."""
    cfg: MuZeroNetConfig

    def setup(self):
        c = self.cfg
        self.slot_in = nn.Dense(c.width)
        self.glob_in = nn.Dense(c.width)
        self.repr_stack = Stack(c, c.repr_layers)
        self.move_type = nn.Embed(5, c.width)  # slow, floor, ceiling, on top of a slot, under a slot
        self.chosen = self.param("chosen", nn.initializers.normal(1.0), (c.width,))
        self.dyn_stack = Stack(c, c.dyn_layers)
        self.reward_head = nn.Sequential([nn.Dense(c.mlp_dim), nn.gelu, nn.Dense(1)])
        self.pred_stack = Stack(c, c.pred_layers) if c.pred_layers else None
        self.value_head = nn.Sequential([nn.Dense(c.mlp_dim), nn.gelu, nn.Dense(1)])
        # 3 logits (slow, floor, ceiling) + 3 legality logits; the slow logit starts at slow_bias_init
        self.fixed_head = nn.Sequential([nn.Dense(c.mlp_dim), nn.gelu, nn.Dense(6, bias_init=_fixed_bias(
            c.slow_bias_init))])
        self.query = nn.Dense(4 * c.width)  # policy and legality queries, for the top and the under face
        self.key = nn.Dense(2 * c.width)
        self.slot_legal_bias = nn.Dense(2)

    def represent(self, slots, glob, slot_valid) -> Latent:
        """slots [..., N, F_s], glob [..., F_g], slot_valid bool [..., N]."""
        tokens = jnp.concatenate([self.glob_in(glob)[..., None, :], self.slot_in(slots)], axis=-2)
        mask = jnp.concatenate([jnp.ones(slot_valid.shape[:-1] + (1,), bool), slot_valid], axis=-1)
        return Latent(self.repr_stack(tokens, mask), mask)

    def dynamics(self, latent: Latent, action) -> tuple[Latent, jax.Array]:
        """action int [...] in [0, 2 N + 3)."""
        n = latent.tokens.shape[-2] - 1
        slot_move = action - 3  # 0..2N-1 for the slot moves: on top of slot j (j), under slot j (N + j)
        kind = jnp.where(slot_move < 0, action, 3 + (slot_move >= n))
        onehot = jax.nn.one_hot(slot_move % n, n, dtype=latent.tokens.dtype) * (slot_move >= 0)[..., None]
        add = jnp.concatenate([self.move_type(kind)[..., None, :], onehot[..., None] * self.chosen], axis=-2)
        tokens = self.dyn_stack(latent.tokens + add, latent.mask)
        reward = self.reward_head(tokens[..., 0, :])[..., 0]
        return Latent(tokens, latent.mask), reward

    def predict(self, latent: Latent) -> Prediction:
        c = self.cfg
        x = latent.tokens if self.pred_stack is None else self.pred_stack(latent.tokens, latent.mask)
        g, s = x[..., 0, :], x[..., 1:, :]
        fixed = self.fixed_head(g)
        q = self.query(g).reshape(g.shape[:-1] + (2, 2, c.width))  # [..., policy/legality, top/under, D]
        kk = self.key(s)
        k_pol, k_leg = kk[..., :c.width], kk[..., c.width:]
        scale = jnp.sqrt(jnp.float32(c.width))
        slot_logits = jnp.einsum("...fd,...nd->...fn", q[..., 0, :, :], k_pol) / scale  # [..., 2, N]
        slot_legal = (jnp.einsum("...fd,...nd->...fn", q[..., 1, :, :], k_leg) / scale
                      + jnp.swapaxes(self.slot_legal_bias(s), -1, -2))
        valid = latent.mask[..., None, 1:]
        flat = lambda x: x.reshape(x.shape[:-2] + (-1,))  # top block then under block
        logits = jnp.concatenate([fixed[..., :3], flat(jnp.where(valid, slot_logits, NEG))], axis=-1)
        legal = jnp.concatenate([fixed[..., 3:], flat(jnp.where(valid, slot_legal, NEG))], axis=-1)
        value = self.value_head(g)[..., 0]
        return Prediction(logits, value, legal)

    def __call__(self, slots, glob, slot_valid, action):
        latent = self.represent(slots, glob, slot_valid)
        nxt, reward = self.dynamics(latent, action)
        return self.predict(latent), self.predict(nxt), reward
