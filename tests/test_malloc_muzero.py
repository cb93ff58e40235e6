"""mallocMuZero (rl/malloc/muzero/, models/malloc_muzero.py, rl/malloc/train.py): fast tests on tiny
instances (N = 8 padded slots, width 16, a handful of simulations)."""
import dataclasses
import functools
import types
import shutil
import json
import pathlib
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.malloc_muzero import MuZeroNetConfig
from rl.malloc import baselines, game, instance, muzero, pygame_ref, validate

N = 8
TINY_NET = MuZeroNetConfig(width=16, num_heads=2, mlp_dim=32, repr_layers=1, dyn_layers=1)
PLAY = jax.jit(muzero.play, static_argnums=(0, 4, 5, 6))  # (model, params, key, inst, kind, sims, considered)


def _instances(k, seed=0, max_n=N):
    rng = np.random.default_rng(seed)
    return [instance.random_instance(rng, num_buffers=int(rng.integers(3, max_n + 1)), horizon=12, max_size=16)
            for _ in range(k)]


@pytest.fixture(scope="module")
def tiny():
    model = muzero.make_model(TINY_NET)
    params = muzero.init_params(model, jax.random.PRNGKey(0), N)
    return model, params


@pytest.fixture(scope="module")
def insts16():
    return _instances(16, seed=2)


def test_network_shapes_and_padding(tiny):
    model, params = tiny
    batch = game.pad(_instances(3), N)
    state = jax.vmap(game.init)(batch)
    slots, glob, valid = jax.vmap(muzero.observation)(batch, state)
    assert slots.shape == (3, N, muzero.SLOT_FEATURES) and glob.shape == (3, muzero.GLOBAL_FEATURES)
    apply = jax.jit(model.apply, static_argnames="method")
    latent = apply(params, slots, glob, valid, method=model.represent)
    assert latent.tokens.shape == (3, N + 1, TINY_NET.width)
    pred = apply(params, latent, method=model.predict)
    assert pred.logits.shape == pred.legal_logits.shape == (3, game.num_actions(N)) and pred.value.shape == (3,)
    slot_logits = pred.logits[:, game.FIXED_MOVES:].reshape(3, 2, N)  # on-top block, under block
    assert bool(jnp.all((slot_logits <= -1e8) == ~valid[:, None, :]))  # padding slots are never proposed
    nxt, reward = apply(params, latent, jnp.array([0, 1, 2]), method=model.dynamics)
    assert nxt.tokens.shape == latent.tokens.shape and reward.shape == (3,)
    # the same parameters serve another padded size (pointer-style slot scoring)
    big = game.pad(_instances(2), 2 * N)
    s2, g2, v2 = jax.vmap(muzero.observation)(big, jax.vmap(game.init)(big))
    assert apply(params, apply(params, s2, g2, v2, method=model.represent),
                 method=model.predict).logits.shape == (2, game.num_actions(2 * N))


def _jax_and_python_games(inst):
    """``inst`` padded to N slots with its initial JAX state, the plain-Python reference game, and the map
    from the reference's move numbers (n slots) to the padded game's (N slots: same blocks, other offsets)."""
    n = inst.num_buffers
    padded = jax.tree.map(lambda x: x[0], game.pad([inst], N))
    padded_move = [a if a < 3 + n else a - n + N for a in range(2 * n + 3)]
    return padded, game.init(padded), pygame_ref.PyMallocGame(inst), padded_move


def test_python_game_agrees_with_jax_game():
    step = jax.jit(game.step)
    legal_fn = jax.jit(game.legal_actions)
    for k, inst in enumerate(_instances(6, seed=1)):
        n = inst.num_buffers
        padded, state, ref, padded_move = _jax_and_python_games(inst)
        rng = random.Random(k)
        while not ref.done:
            legal = np.asarray(legal_fn(padded, state))
            assert [bool(legal[a]) for a in padded_move] == ref.legal_actions()
            assert legal.sum() == sum(ref.legal_actions())
            move = rng.choice([a for a in range(2 * n + 3) if legal[padded_move[a]]] + [rng.randrange(2 * n + 3)])
            action = padded_move[move]  # some illegal
            r_ref, _ = ref.step(move)
            state, r, _ = step(padded, state, action)
            assert float(r) == pytest.approx(r_ref, rel=1e-6, abs=1e-7)
        offsets = game.offsets_in_instance_order(padded, state)
        assert list(offsets) == ref.offsets_in_instance_order()
        assert validate.normalised_benefit(inst, offsets) == pytest.approx(ref.ret, rel=1e-5)


def test_heuristic_completion_matches_numpy_xla_heuristic():
    """game.heuristic_return (a leaf value of the rollout search) from the initial state equals the NumPy
    XLA heuristic's normalised benefit, and from random mid-episode states that heuristic run over the
    undecided buffers only, the decided ones fixed (baselines.xla_heuristic with ``decided``); restricted to
    game moves, the completion replays as legal moves of the game and returns what it promised."""
    completion, step, legal_actions = jax.jit(game.heuristic_return), jax.jit(game.step), jax.jit(game.legal_actions)
    in_moves = jax.jit(functools.partial(game.heuristic_completion, game_moves=True))
    completion_in_moves = jax.jit(functools.partial(game.heuristic_return, game_moves=True))
    rng = np.random.default_rng(11)
    for _ in range(48):  # 16 buffers, fast memory at 80 % of the peak: gaps of several sizes to choose from
        inst = instance.random_instance(rng, num_buffers=16, horizon=12, max_size=16, capacity_fraction=0.8)
        padded = jax.tree.map(lambda x: x[0], game.pad([inst], 16))
        state = game.init(padded)
        full = baselines.xla_heuristic(inst)
        assert float(completion(padded, state)) == pytest.approx(validate.normalised_benefit(inst, full), rel=1e-5)
        for _ in range(int(rng.integers(1, inst.num_buffers))):  # a random prefix of legal moves
            state, _, _ = step(padded, state, int(rng.choice(np.flatnonzero(legal_actions(padded, state)))))
        decided = np.zeros(inst.num_buffers, bool)
        decided[np.asarray(padded.order)[:int(state.t)]] = True
        completed = baselines.xla_heuristic(inst, game.offsets_in_instance_order(padded, state), decided)
        assert validate.violations(inst, completed) == []
        gained = inst.benefits[(completed >= 0) & ~decided].sum() / inst.total_benefit
        assert float(completion(padded, state)) == pytest.approx(gained, rel=1e-5, abs=1e-6)
        # in game moves (the rollout search's leaf value): the completion is a game trajectory from the state
        offsets = np.asarray(in_moves(padded, state))
        replay, before = state, float(state.ret)
        while not bool(game.done(padded, replay)):
            want = offsets[int(replay.t)]
            moves = np.flatnonzero(np.asarray(legal_actions(padded, replay))
                                   & (np.asarray(game.candidate_offsets(padded, replay)) == want))
            moves = [game.SLOW] if want < 0 else [a for a in moves if a != game.SLOW]
            assert moves, f"offset {want} of slot {int(replay.t)} is no legal move"
            replay, _, _ = step(padded, replay, int(moves[0]))
        assert list(np.asarray(replay.offset)) == list(offsets)
        assert float(completion_in_moves(padded, state)) == pytest.approx(float(replay.ret) - before, abs=1e-6)
        finished = game.heuristic_finish(padded, state)  # keep_best's terminal state: that same trajectory
        assert list(np.asarray(finished.offset)) == list(offsets) and bool(game.done(padded, finished))
        assert float(finished.ret) == pytest.approx(float(replay.ret), abs=1e-6)


@pytest.mark.parametrize("kind", ["muzero", "alphazero", "rollout", "policy"])
def test_search_masks_the_root_and_placements_pass_the_validator(tiny, insts16, kind):
    model, params = tiny
    batch = game.pad(insts16, N)
    final, ep = PLAY(model, params, jax.random.PRNGKey(3), batch, kind, 4, 4)
    taken = jnp.take_along_axis(ep.legal, ep.action[..., None], -1)[..., 0]
    assert bool(jnp.all(taken))  # every chosen move was legal at its root
    assert float(jnp.abs(jnp.where(ep.legal, 0.0, ep.policy)).max()) == 0.0  # no target mass on illegal moves
    assert bool(jnp.all(jnp.abs(ep.policy.sum(-1) - 1) < 1e-5))
    played = int(((ep.action != game.SLOW) & ep.active).sum())
    assert int((final.offset >= 0).sum()) == played  # illegal moves would have been played slow
    for j, inst in enumerate(insts16):
        one = lambda tree: jax.tree.map(lambda x: x[j], tree)
        offsets = game.offsets_in_instance_order(one(batch), one(final))
        assert offsets.dtype == np.int64 and validate.violations(inst, offsets) == []
        assert validate.normalised_benefit(inst, offsets) == pytest.approx(float(final.ret[j]), rel=1e-5, abs=1e-6)


def test_sorted_gap_search_matches_the_dense_one(monkeypatch):
    """game._free_gaps_sorted (whole programs) against _free_gaps_dense (all pairs) at random placements and
    candidates, every slot live included: the same clashes, and the same gap wherever a candidate fits; and
    the heuristic completion is the same offsets through either."""
    rng = np.random.default_rng(5)
    dense, fast = jax.jit(game._free_gaps_dense), jax.jit(game._free_gaps_sorted)
    for trial in range(60):
        inst = instance.random_instance(rng, num_buffers=int(rng.integers(2, 24)), horizon=10, max_size=16,
                                        capacity_fraction=float(rng.uniform(0.3, 1.0)))
        padded = jax.tree.map(lambda x: x[0], game.pad([inst], 24))
        cap = int(padded.capacity)
        offset = np.where(rng.uniform(size=24) < 0.7, rng.integers(0, cap, 24), -1)
        if trial % 3 == 0:  # every slot live, all in the upper half: room below the lowest one
            offset = rng.integers(cap // 2, cap, 24)
        live = jnp.asarray(offset >= 0) if trial % 3 == 0 else game._time_overlapping_fast(
            padded, jnp.asarray(offset, jnp.int32), int(rng.integers(0, inst.num_buffers)))
        cand = jnp.asarray(rng.integers(-3, cap + 3, 40), jnp.int32).at[0].set(0)
        size = jnp.asarray(int(rng.integers(1, max(2, cap // 2))), jnp.int32)
        a, b = (f(padded, jnp.asarray(offset, jnp.int32), live, cand, size) for f in (dense, fast))
        np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
        free = ~np.asarray(a[0])
        for x, y in zip(a[1:], b[1:]):
            np.testing.assert_array_equal(np.asarray(x)[free], np.asarray(y)[free])
    insts = _instances(6, seed=12, max_n=24)
    batch = game.pad(insts, 24)
    start = jax.vmap(game.init)(batch)
    complete = lambda: np.asarray(jax.vmap(functools.partial(game.heuristic_completion, game_moves=True))(batch, start))
    monkeypatch.setattr(game, "SORTED_GAPS_FROM", 10**9)
    with_dense = complete()
    monkeypatch.setattr(game, "SORTED_GAPS_FROM", 0)
    np.testing.assert_array_equal(with_dense, complete())


def test_best_rollout_node_is_the_best_visited_path_plus_rollout():
    """mcts.best_rollout_node against a NumPy argmax over a hand-made tree: return so far + the node's
    rollout value, visited nodes only (an unvisited node's zero-filled slot never wins)."""
    rng = np.random.default_rng(4)
    b, nodes = 3, 7
    ret = rng.uniform(0, 0.5, (b, nodes)).astype(np.float32)
    raw = rng.uniform(0, 0.5, (b, nodes)).astype(np.float32)
    visits = rng.integers(0, 3, (b, nodes)).astype(np.int32)
    visits[:, 0], visits[:, -1], raw[:, -1] = 1, 0, 9.0  # the root is visited; the best-looking node is not
    states = game.State(offset=jnp.asarray(np.arange(b * nodes).reshape(b, nodes, 1), jnp.int32),
                        t=jnp.zeros((b, nodes), jnp.int32), ret=jnp.asarray(ret))
    tree = types.SimpleNamespace(embeddings=(None, states), raw_values=jnp.asarray(raw),
                                 node_visits=jnp.asarray(visits))
    best_ret, best_state = muzero.best_rollout_node(tree)
    total = np.where(visits > 0, ret + raw, -np.inf)
    want = np.argmax(total, axis=1)
    np.testing.assert_allclose(np.asarray(best_ret), total[np.arange(b), want], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(best_state.offset)[:, 0], np.arange(b) * nodes + want)


def test_keep_best_answers_with_the_best_trajectory_the_searches_evaluated(tiny, insts16):
    """The rollout search with ``keep_best``: the episode played is unchanged, the answer is never worse than
    it nor than the heuristic's own game-move completion from the start (the first root's rollout), it is a
    valid placement whose benefit is the return reported, and on some instances it is strictly better than
    the episode (the path is really taken). Other searches refuse it (their trees hold no true returns)."""
    model, params = tiny
    batch = game.pad(insts16, N)
    play = jax.jit(muzero.play, static_argnums=(0, 4, 5, 6, 7, 8, 9))
    key = jax.random.PRNGKey(3)
    final, ep = play(model, params, key, batch, "rollout", 4, 4, 0.0, 1.0, False)
    best, ep_best = play(model, params, key, batch, "rollout", 4, 4, 0.0, 1.0, True)
    np.testing.assert_array_equal(np.asarray(ep.action), np.asarray(ep_best.action))
    heuristic = jax.vmap(functools.partial(game.heuristic_return, game_moves=True))(batch, jax.vmap(game.init)(batch))
    assert bool(jnp.all(best.ret >= final.ret)) and bool(jnp.all(best.ret >= heuristic - 1e-6))
    assert float(jnp.max(best.ret - final.ret)) > 0
    for j, inst in enumerate(insts16):
        one = lambda tree: jax.tree.map(lambda x: x[j], tree)
        offsets = game.offsets_in_instance_order(one(batch), one(best))
        assert validate.violations(inst, offsets) == []
        assert validate.normalised_benefit(inst, offsets) == pytest.approx(float(best.ret[j]), rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="keep_best needs the rollout search"):
        muzero.solve_batch(insts16[:1], model, params, "muzero", 4, keep_best=True)


def test_value_targets_match_a_loop():
    rng = np.random.default_rng(0)
    reward, value = rng.uniform(size=(3, 7)).astype(np.float32), rng.uniform(size=(3, 7)).astype(np.float32)
    for n in (1, 3, 7, 20):
        got = np.asarray(muzero.value_targets(jnp.asarray(reward), jnp.asarray(value), n))
        want = np.zeros_like(reward)
        for b in range(3):
            for t in range(7):
                want[b, t] = reward[b, t:t + n].sum() + (value[b, t + n] if t + n < 7 else 0.0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_replay_is_fifo_and_batches_mask_past_the_end(tiny, insts16):
    model, params = tiny
    replay = muzero.replay_init(24, N)
    _, ep = PLAY(model, params, jax.random.PRNGKey(3), game.pad(insts16, N), "policy", 4, 4)
    add = jax.jit(muzero.replay_add, static_argnums=2)
    replay = add(add(replay, ep, 32), ep, 32)
    assert int(replay.size) == 24 and int(replay.ptr) == 8  # wrapped around
    np.testing.assert_array_equal(np.asarray(replay.action[:8]), np.asarray(ep.action[8:]))
    b = jax.jit(muzero.replay_sample, static_argnums=(2, 3))(replay, jax.random.PRNGKey(1), 64, 3)
    steps = np.asarray(b.state.t)[:, None] + np.arange(4)
    np.testing.assert_array_equal(np.asarray(b.mask), steps < np.asarray(b.inst.num)[:, None])
    assert float(jnp.abs(jnp.where(b.mask, 0.0, b.value)).max()) == 0.0


# about 20 s; the loss terms are checked against NumPy in tests/test_rl_losses.py, the train loop by the resume test
@pytest.mark.slow
def test_one_training_iteration_lowers_the_loss_on_a_fixed_batch(tiny, insts16):
    model, params = tiny
    cfg = muzero.MuZeroConfig(max_buffers=N, batch=16, num_simulations=4, max_considered=4, replay_episodes=16,
                              train_batch=32, unroll=3, lr=3e-3, weight_decay=0.0)
    opt = muzero.make_optimizer(cfg)
    _, ep = PLAY(model, params, jax.random.PRNGKey(3), game.pad(insts16, N), "alphazero", 4, 4)
    replay = muzero.replay_add(muzero.replay_init(16, N), ep, cfg.n_step)
    fixed = jax.jit(muzero.replay_sample, static_argnums=(2, 3))(replay, jax.random.PRNGKey(2), cfg.train_batch,
                                                                 cfg.unroll)
    update = jax.jit(muzero.make_update(model, opt, cfg))
    loss_jit = jax.jit(lambda p: muzero.loss_fn(model, p, fixed, cfg)[0])
    loss = lambda p: float(loss_jit(p))
    before = loss(params)
    new_params, _, metrics = update(params, opt.init(params), fixed)
    assert float(metrics["loss"]) == pytest.approx(before, rel=1e-4)
    assert np.isfinite(before) and loss(new_params) < before


@pytest.mark.parametrize("search", ["rollout"])  # muzero self-play: test_train_malloc_tiny_run_resumes_bit_for_bit
def test_self_play_iteration_records_the_searchs_episodes(insts16, search):
    """One self-play iteration with the rollout search (the search as improvement operator) fills the replay
    with the batch's episodes: policy targets are distributions over the legal moves, the replayed rewards sum to the
    reported self-play return, and the parameters move."""
    cfg = muzero.MuZeroConfig(max_buffers=N, batch=16, num_simulations=4, max_considered=4, replay_episodes=16,
                              train_batch=8, unroll=2, updates_per_iter=1, search=search)
    model = muzero.make_model(TINY_NET)
    opt = muzero.make_optimizer(cfg)
    state = muzero.init_train_state(model, opt, cfg, seed=0)
    new, metrics = jax.jit(muzero.make_train_iteration(model, opt, cfg))(state, game.pad(insts16, N))
    r = new.replay
    assert int(r.size) == 16
    assert float(jnp.abs(jnp.where(r.legal, 0.0, r.policy)).max()) == 0.0
    assert bool(jnp.all(jnp.where(r.active, jnp.abs(r.policy.sum(-1) - 1) < 1e-5, True)))
    assert float(r.reward.sum(-1).mean()) == pytest.approx(float(metrics["selfplay_return"]), rel=1e-4)
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.params, new.params)
    assert max(jax.tree.leaves(moved)) > 0


def test_solve_batch_returns_valid_offsets_in_instance_order(tiny):
    model, params = tiny
    insts = _instances(5, seed=6)
    offsets = muzero.solve_batch(insts, model, params, "policy", num_simulations=1, max_buffers=N)
    for inst, off in zip(insts, offsets):  # (the searches' placements: test_search_masks_the_root_...)
        assert off.dtype == np.int64 and off.shape == (inst.num_buffers,)
        assert validate.violations(inst, off) == []
    with pytest.raises(ValueError, match="solver kind='greedy'"):
        muzero.solve_batch(insts, model, params, "greedy")


@pytest.mark.slow  # about 20 s
def test_best_of_samples_is_valid_and_never_worse_than_the_deterministic_search(tiny):
    model, params = tiny
    insts = _instances(12, seed=10)
    det = muzero.solve_batch(insts, model, params, "muzero", 4, 4, max_buffers=N)
    best = muzero.solve_batch(insts, model, params, "muzero", 4, 4, max_buffers=N, samples=8)
    gains = []
    for inst, d, b in zip(insts, det, best):
        assert validate.violations(inst, b) == []
        gains.append(validate.benefit(inst, b) - validate.benefit(inst, d))
    assert min(gains) >= -1e-9 and max(gains) > 0  # the noisy episodes are really played and kept when better
    with pytest.raises(ValueError, match="samples=0"):
        muzero.solve_batch(insts, model, params, "muzero", 4, samples=0)


def test_shipped_network_loads_and_is_small():
    model, params, info = muzero.load_network()
    assert (muzero.TRAINED_DIR / "muzero.msgpack").stat().st_size < 2 * 2 ** 20
    assert info["trained_by"].startswith("python -m scripts.train_malloc")
    assert sum(x.size for x in jax.tree.leaves(params)) > 0 and model.cfg.width == info["net_config"]["width"]


@pytest.mark.slow  # about 100 s (the export's q_scale selection); the shared checkpointed loop's resume is
# tested by default through train_lm, train_diloco and train_jssp
def test_train_malloc_tiny_run_resumes_bit_for_bit(tmp_path):
    from rl.malloc import train as train_malloc
    from training import config as config_lib

    cfg = config_lib.from_flat(train_malloc.TrainMallocConfig, dict(
        workdir=str(tmp_path / "a"), steps=3, max_buffers=N, batch=4, num_simulations=2, max_considered=2,
        unroll=2, replay_episodes=8, train_batch=8, updates_per_iter=1, width=16, num_heads=2, mlp_dim=32,
        repr_layers=1, eval_every=0, eval_simulations=2, log_every=1, checkpoint_every=1, checkpoint_mode="sync"))
    full = train_malloc.train(cfg)
    assert full["step"] == 3 and (tmp_path / "a" / "curves.png").is_file()
    first = (tmp_path / "a" / "metrics.jsonl").read_text()
    shutil.rmtree(tmp_path / "a" / "checkpoints" / "3")  # as if killed between the saves of steps 2 and 3
    resumed = train_malloc.train(dataclasses.replace(cfg, export_dir=str(tmp_path / "net")))
    assert resumed["resumed_from"] == 2 and resumed["step"] == 3
    rows = lambda text: [{k: v for k, v in r.items() if k != "steps_per_sec"}
                         for r in map(json.loads, text.splitlines())]
    again = (tmp_path / "a" / "metrics.jsonl").read_text()
    assert rows(first) == rows(again) and len(rows(first)) == 3  # the same trajectory, bit for bit
    from event_scalars import assert_events_match_metrics

    assert [s for s, _ in assert_events_match_metrics(tmp_path / "a")["loss"]] == [1, 2, 3]  # step 3 once
    model, params, info = muzero.load_network(tmp_path / "net")
    assert "--steps=3" in info["trained_by"] and "--max_buffers=8" in info["trained_by"]
    with pytest.raises(ValueError, match="search='dqn'"):
        config_lib.from_flat(train_malloc.TrainMallocConfig, dict(workdir=str(tmp_path / "c"), search="dqn"))
    with pytest.raises(ValueError, match="lacks muzero.msgpack"):
        muzero.load_network(pathlib.Path(tmp_path / "nothing"))


@pytest.mark.slow  # about 15 s
def test_select_q_scale_picks_the_best_mean_benefit(tiny):
    model, params = tiny
    insts = _instances(4, seed=8)
    best, means = muzero.select_q_scale(insts, model, params, num_simulations=4, max_considered=4,
                                        candidates=(0.01, 1.0))
    assert set(means) == {"0.01", "1.0"} and means[str(best)] == max(means.values())
    offsets = muzero.solve_batch(insts, model, params, "muzero", 4, 4, q_scale=best)
    assert np.mean([validate.normalised_benefit(i, o) for i, o in zip(insts, offsets)]) == pytest.approx(
        means[str(best)])
