r"""mallocMuZero: Gumbel MuZero self-play, replay and training for the mallocGame (plus an AlphaZero ablation).

References
- Wang et al. (DeepMind 2023), "Optimizing Memory Mapping Using Deep Reinforcement Learning": the
  mallocGame and the mallocMuZero agent (MuZero with attention over buffers).
- Schrittwieser et al. (2020), "Mastering Atari, Go, Chess and Shogi by Planning with a Learned Model"
  (MuZero). The loss (their Eq. 1), unrolled for K steps from a replayed position t::

      l_t(θ) = Σ_{k=0..K} l^p(π_{t+k}, p^k_t) + Σ_{k=0..K} l^v(z_{t+k}, v^k_t) + Σ_{k=1..K} l^r(u_{t+k}, r^k_t)

  with the n-step value target (their Eq. 2, discount γ = 1 here: the game is finite, N moves)::

      z_t = u_{t+1} + ... + u_{t+n} + ν_{t+n}

  where ν is the search value of the root at t + n (0 past the episode's end). With ``n_step >= N``
  the target is the full Monte-Carlo return (the episodes are short). The gradient entering the
  dynamics is scaled by 1/2 and the loss averaged over the K + 1 unroll steps (their Appendix G).
  Past the end of an episode the model is trained on absorbing states (value 0, reward 0); their
  policy terms are masked.
- Danihelka et al. (ICLR 2022), "Policy improvement by planning with Gumbel": the search is
  ``mctx.gumbel_muzero_policy`` (sequential halving with Gumbel-top-k at the root) and the policy target
  is its improved policy π' = softmax(logits + σ(completedQ)) (their Eq. 11), so that few simulations
  (16-64) suffice.

Heads and losses here: l^p is the cross-entropy to π', l^v and l^r are squared errors (returns are
normalised benefits in [0, 1]), plus an auxiliary binary cross-entropy on the legal-move mask (weight
``legal_coef``), used inside the learned-model search to push down the prior logits of moves the model
believes illegal (the root is masked with the game's exact ``legal_actions``).

Three searches share one network (``models/malloc_muzero.py``):
- ``"muzero"``: the recurrent function is the learned dynamics (``make_muzero_recurrent_fn``);
- ``"alphazero"`` (the ablation): the recurrent function is the true ``game.step``; the prior and value
  come from representation + prediction on the true next observation, illegal moves are masked at every
  node, terminal states have discount 0 (``make_alphazero_recurrent_fn``).
- ``"rollout"``: the true game and the network's prior as in ``"alphazero"``, but every leaf is valued by a
  rollout to the end of the episode with XLA's heuristic restricted to game moves (``rollout_value``;
  AlphaGo's fast rollouts, Silver et al. 2016, with mixing weight 1) instead of the value head, whose errors
  the deeper searches exploit (``make_rollout_recurrent_fn``). Its cost grows with N^3 per move, so it is
  for windows, not whole programs.
- ``"policy"`` (no search): the arg-max of the masked prior, for reference.

By default training is pure RL from self-play. Optionally (not in the paper; ``rl/malloc/demos.py``) a fixed
set of expert episodes (CP-SAT under the game's moves) is kept beside the replay: the first
``pretrain_iters`` iterations learn from it alone (no self-play), later ones draw ``demo_fraction`` of every
batch from it. Reanalysis is not implemented: the replay keeps the search policies and values of the
self-play that produced them.

Modules (everything below is re-exported here, so ``from rl.malloc import muzero; muzero.solve_batch(...)``):
- ``mcts``: the network's observation, the MuZero / AlphaZero recurrent functions and the Gumbel root
  ``search`` (the module is not called ``search``: that name here is the function);
- ``replay``: recorded ``Episodes``, n-step ``value_targets``, the FIFO ``Replay`` and its K-step sampling,
  ``demo_replay``;
- ``training``: ``MuZeroConfig``, network construction, self-play (``play``), the loss and the training iteration;
- ``inference``: ``solve_batch`` (deterministic or best of N), ``select_q_scale``, the shipped network
  (``save_network`` / ``load_network``, ``TRAINED_DIR`` = ``rl/malloc/trained``).
"""
from rl.malloc.muzero.inference import (Q_SCALES, TRAINED_DIR, load_network, padded_size, save_network,
                                        select_q_scale, solve, solve_batch)
from rl.malloc.muzero.mcts import (GLOBAL_FEATURES, SEARCHES, SLOT_FEATURES, SearchOut, best_rollout_node,
                                   check_search_args,
                                   make_alphazero_recurrent_fn, make_muzero_recurrent_fn, make_rollout_recurrent_fn,
                                   observation, rollout_value, search)
from rl.malloc.muzero.replay import (Batch, Episodes, Replay, demo_replay, replay_add, replay_init, replay_sample,
                                     value_targets)
from rl.malloc.muzero.training import (SELF_PLAY_SEARCHES, MuZeroConfig, TrainState, init_params, init_train_state,
                                       loss_fn, make_model, make_optimizer, make_train_iteration, make_update, play,
                                       uses_demos)

__all__ = [
    # mcts
    "SEARCHES", "SLOT_FEATURES", "GLOBAL_FEATURES", "observation", "make_muzero_recurrent_fn",
    "make_alphazero_recurrent_fn", "make_rollout_recurrent_fn", "rollout_value", "SearchOut", "search",
    "check_search_args", "best_rollout_node",
    # replay
    "Episodes", "value_targets", "Replay", "replay_init", "replay_add", "Batch", "replay_sample", "demo_replay",
    # training
    "SELF_PLAY_SEARCHES", "MuZeroConfig", "make_model", "init_params", "play", "make_optimizer", "loss_fn",
    "TrainState", "uses_demos", "init_train_state", "make_update", "make_train_iteration",
    # inference
    "padded_size", "solve_batch", "Q_SCALES", "select_q_scale", "solve", "save_network", "load_network",
    "TRAINED_DIR",
]
