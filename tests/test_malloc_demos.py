"""Demonstrations for mallocMuZero (rl/malloc/demos.py) and learning from them (rl/malloc/muzero/,
rl/malloc/train.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.malloc_muzero import MuZeroNetConfig
from rl.malloc import cpsat, demos, game, instance, muzero, pygame_ref, validate

N = 8
TINY_NET = MuZeroNetConfig(width=16, num_heads=2, mlp_dim=32, repr_layers=1, dyn_layers=1)


def _instances(k, seed=0):
    rng = np.random.default_rng(seed)
    return [instance.random_instance(rng, num_buffers=int(rng.integers(3, N + 1)), horizon=12, max_size=16)
            for _ in range(k)]


@pytest.fixture(scope="module")
def expert():
    insts = _instances(12, seed=5)
    episodes, returns = demos.demonstration_episodes(insts, N, time_limit_s=5.0)
    return insts, episodes, returns


def test_demonstrations_replay_the_cpsat_game_optimum_move_by_move(expert):
    insts, ep, returns = expert
    for b, inst in enumerate(insts):
        sol = cpsat.solve(inst, 5.0, game_moves=True)
        assert sol.optimal
        assert float(returns[b]) == pytest.approx(sol.benefit / inst.total_benefit, rel=1e-5)
        py = pygame_ref.PyMallocGame(inst)  # the independent Python game accepts every move as legal
        for t in range(inst.num_buffers):
            a = int(ep.action[b, t])
            assert py.legal_actions()[a] and bool(ep.legal[b, t, a])
            py.step(a)
        assert validate.violations(inst, py.offsets_in_instance_order()) == []
        assert validate.benefit(inst, py.offsets_in_instance_order()) == pytest.approx(sol.benefit)
        assert np.asarray(ep.active[b]).tolist() == [t < inst.num_buffers for t in range(N)]
    np.testing.assert_array_equal(np.asarray(ep.policy.argmax(-1)), np.asarray(ep.action))
    np.testing.assert_allclose(np.asarray(ep.policy.sum(-1)), 1.0)


def test_move_for_offset_plays_slow_when_no_legal_move_reaches_the_target():
    inst = game.pad([instance.Instance("t", sizes=np.array([2, 1]), starts=np.array([0, 0]), ends=np.array([1, 1]),
                                       benefits=np.array([1.0, 1.0]), capacity=4)], 2)
    one = jax.tree.map(lambda x: x[0], inst)
    s0 = game.init(one)
    assert int(demos.move_for_offset(one, s0, 0)) == game.ZERO and int(demos.move_for_offset(one, s0, -1)) == game.SLOW
    assert int(demos.move_for_offset(one, s0, 2)) == game.CEILING
    assert int(demos.move_for_offset(one, s0, 1)) == game.SLOW   # offset 1 is not a game move
    s1, _, _ = game.step(one, s0, jnp.int32(game.ZERO))
    assert int(demos.move_for_offset(one, s1, 2)) == game.on_top(0, 2)
    assert int(demos.move_for_offset(one, s1, 3)) == game.CEILING
    assert int(demos.move_for_offset(one, s1, 0)) == game.SLOW   # taken


def test_address_units_scale_sizes_and_offsets_back_to_bytes():
    """Sizes and capacity sharing a factor of 4 bytes are played in units of 4; offsets come back in bytes."""
    inst = instance.Instance("u", sizes=np.array([8, 4, 12]), starts=np.array([0, 0, 1]), ends=np.array([1, 2, 2]),
                             benefits=np.array([1.0, 1.0, 1.0]), capacity=24)
    assert game.address_unit(inst) == 4
    one = jax.tree.map(lambda x: x[0], game.pad([inst], 4))
    assert int(one.unit) == 4 and int(one.capacity) == 6 and np.asarray(one.size)[:3].tolist() == [2, 1, 3]
    state = game.init(one)
    for move in (game.ZERO, game.on_top(0, 4), game.CEILING):  # 8 B at 0, 4 B at 8, 12 B at 24 - 12
        state, _, _ = game.step(one, state, jnp.int32(move))
    offsets = game.offsets_in_instance_order(one, state)
    assert offsets.tolist() == [0, 8, 12] and validate.violations(inst, offsets) == []
    ep, returns = demos.demonstration_episodes([inst], 4, time_limit_s=2.0)  # byte targets replay in units
    assert float(returns[0]) == pytest.approx(1.0)


def test_demo_replay_value_targets_are_the_expert_returns_to_go(expert):
    insts, ep, returns = expert
    rep = muzero.demo_replay(ep)
    assert int(rep.size) == len(insts)
    np.testing.assert_allclose(np.asarray(rep.value_target[:, 0]), np.asarray(returns), rtol=1e-5)
    r = np.asarray(ep.reward)
    np.testing.assert_allclose(np.asarray(rep.value_target), np.cumsum(r[:, ::-1], 1)[:, ::-1], atol=1e-6)


@pytest.mark.slow  # about 70 s
def test_pretraining_learns_from_demonstrations_only_then_mixes(expert):
    insts, ep, _ = expert
    model = muzero.make_model(TINY_NET)
    cfg = muzero.MuZeroConfig(max_buffers=N, batch=4, num_simulations=2, max_considered=2, replay_episodes=8,
                              train_batch=16, unroll=2, updates_per_iter=8, lr=3e-3, weight_decay=0.0,
                              pretrain_iters=2, demo_fraction=0.5)
    opt = muzero.make_optimizer(cfg)
    state = muzero.init_train_state(model, opt, cfg, seed=0, demos=muzero.demo_replay(ep))
    it = jax.jit(muzero.make_train_iteration(model, opt, cfg))
    batch = game.pad(_instances(4, seed=9), N)
    fixed = muzero.replay_sample(state.demos, jax.random.PRNGKey(4), 64, cfg.unroll)
    loss = lambda p: float(muzero.loss_fn(model, p, fixed, cfg)[0])
    before = loss(state.params)
    s1, m1 = it(state, batch)
    s2, _ = it(s1, batch)
    assert int(s2.replay.size) == 0 and float(m1["selfplay_return"]) == 0.0   # no self-play yet
    assert loss(s2.params) < before
    s3, m3 = it(s2, batch)                                                    # now self-play, mixed batches
    assert int(s3.replay.size) == 4 and float(m3["selfplay_return"]) > 0.0
    np.testing.assert_array_equal(np.asarray(s3.demos.action), np.asarray(state.demos.action))
    with pytest.raises(ValueError, match="demo_fraction=1.0"):
        muzero.MuZeroConfig(demo_fraction=1.0)


def _train_config(tmp_path, **flat):
    from rl.malloc import train as train_lib
    from training import config as config_lib

    return config_lib.from_flat(train_lib.TrainMallocConfig, {"workdir": str(tmp_path), **flat})


def test_train_malloc_demo_settings_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="need demonstrations"):
        _train_config(tmp_path, pretrain_steps=5)  # the old spelling of pretrain_iters
    with pytest.raises(ValueError, match="pretrain_iters=50 must be <= steps=10"):
        _train_config(tmp_path, steps=10, pretrain_iters=50, demos=3)
    with pytest.raises(ValueError, match="demos=-1"):
        _train_config(tmp_path, demos=-1)
    with pytest.raises(ValueError, match="init_from='.*nothing' lacks muzero.msgpack"):
        _train_config(tmp_path, init_from=str(tmp_path / "nothing"))
    assert not (tmp_path / "checkpoints").exists()


def test_shipped_network_command_line_still_builds_its_config(tmp_path):
    """The shipped network's ``trained_by`` line (stage 2: rollout-search self-play from the stage-1 network)
    gives back the config it recorded, and the stage-1 line it was initialised from (written before the
    settings were renamed) still parses to that run's settings; regenerated, both name the settings by
    their current names."""
    from rl.malloc import train as train_lib
    from training import config as config_lib
    from training import run as run_lib

    types = {f.name: f.type for f in config_lib.flat_fields(train_lib.TrainMallocConfig)}
    types.update({old: types[new] for old, new in config_lib.renamed(train_lib.TrainMallocConfig).items()})

    def config_of(line: str, **overrides):
        words = line.split()
        assert words[:3] == ["python", "-m", "scripts.train_malloc"]
        flat = {}
        for word in words[3:]:
            name, value = word[2:].split("=", 1)
            flat[name] = value == "True" if types[name] is bool else types[name](value)
        return _train_config(tmp_path, **{**flat, **overrides})

    _, _, info = muzero.load_network()
    stage2 = config_of(info["trained_by"], init_from=str(muzero.TRAINED_DIR))  # a network dir that exists here
    assert stage2.muzero.search == "rollout" and stage2.muzero.num_simulations == 32 and stage2.steps == 150
    recorded = config_lib.upgrade_flat(train_lib.TrainMallocConfig, info["train_config"])
    now = config_lib.to_flat(stage2)
    assert {k: v for k, v in recorded.items() if k not in ("workdir", "init_from")} == {
        k: now[k] for k in recorded if k not in ("workdir", "init_from")}
    assert "--search=rollout" in run_lib.command_line("scripts.train_malloc", stage2)
    assert MuZeroNetConfig(**info["net_config"]) == stage2.net
    stage1 = config_of(info["initialised_from"]["trained_by"])
    assert stage1.muzero.pretrain_iters == 1000 and stage1.muzero.num_simulations == 16 and stage1.demos == 1500
    again = run_lib.command_line("scripts.train_malloc", stage1)
    assert "--pretrain_iters=1000" in again and "--demos=1500" in again


def test_init_from_loads_an_exported_network_and_checks_its_architecture(tmp_path):
    from rl.malloc import train as train_lib

    model = muzero.make_model(TINY_NET)
    params = muzero.init_params(model, jax.random.PRNGKey(7), N)
    muzero.save_network(tmp_path / "net", params, TINY_NET, {"trained_by": "test"})
    cfg = train_lib.TrainMallocConfig(workdir=str(tmp_path / "w"), init_from=str(tmp_path / "net"), net=TINY_NET)
    opt = muzero.make_optimizer(cfg.muzero)
    got = train_lib.initial_params(cfg, opt)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(got))   # a checkpointable train state
    for a, b in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    wider = train_lib.TrainMallocConfig(workdir=str(tmp_path / "w"), init_from=str(tmp_path / "net"))
    with pytest.raises(ValueError, match="has network"):
        train_lib.initial_params(wider, opt)
