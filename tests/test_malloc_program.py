"""The mallocGame on the user's own program (rl/malloc/program.py, scripts/eval_malloc.py --program / --hlo) and
the whole-program rollout search (rl/malloc/game.py, rl/malloc/muzero/): checked against the validator, CP-SAT's
optimum on small programs, the all-pairs gap search and a plain loop of searches."""
import functools
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl.malloc import evaluate, extract, game, instance, muzero, program, validate
from rl.malloc.muzero import mcts

REPO = pathlib.Path(__file__).resolve().parents[1]

# A program the repository does not ship: a 3-layer tanh MLP's SGD step (fresh names, fresh shapes).
USER_MODULE = '''
import jax, jax.numpy as jnp

def make_step():
    def loss(params, x):
        h = x
        for w in params:
            h = jnp.tanh(h @ w)
        return (h ** 2).mean()
    params = [jnp.full((48, 96), 0.01), jnp.full((96, 80), 0.01), jnp.full((80, 40), 0.01)]
    step = jax.jit(lambda p, x: jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(loss)(p, x)))
    return step, (params, jnp.ones((32, 48)))

def raises():
    raise RuntimeError("no data on this machine")
'''


def _user_step():
    scope = {}
    exec(compile(USER_MODULE, "user_module", "exec"), scope)
    return scope["make_step"]()


def _check_records(path: pathlib.Path, inst: instance.Instance, solvers: set[str]) -> dict:
    """Every record of an eval_malloc --out file is a valid placement of ``inst`` (the validator), worth the
    benefit it reports and at most the CP-SAT bound; returns {solver: record}."""
    out = json.loads(path.read_text())
    assert set(out["provenance"]) == {"command", "commit", "date", "time", "machine"}
    recs = {r["solver"]: r for r in out["records"]}
    assert set(recs) == solvers
    bound = recs["cpsat"]["bound"]
    for r in recs.values():
        offsets = evaluate.offsets_of(inst, r)
        assert validate.violations(inst, offsets) == []
        assert validate.benefit(inst, offsets) == pytest.approx(r["benefit"], rel=1e-9)
        assert r["benefit"] <= bound * (1 + 1e-9)
    return recs


def _eval(args, tmp_path, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "scripts.eval_malloc", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


# ----------------------------------------------------------------------------- the two ways in

def test_hlo_dump_of_a_program_the_repository_does_not_ship(tmp_path):
    """XLA_FLAGS=--xla_dump_to of a fresh JAX program (another process), then eval_malloc --hlo on its
    after-optimisations file: the same buffers as the instance read from compile().as_text() here, every
    placement valid and below CP-SAT's bound, CP-SAT optimal on it and the rollout search at its optimum or
    between the heuristic and it, and the memory map written beside the JSON."""
    (tmp_path / "user_module.py").write_text(USER_MODULE)
    dump = tmp_path / "dump"
    code = "import jax, user_module; f, a = user_module.make_step(); jax.block_until_ready(f(*a))"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=300,
                   env={**os.environ, "XLA_FLAGS": f"--xla_dump_to={dump}", "JAX_PLATFORMS": "cpu"})
    files = sorted(dump.glob("*jit__lambda*after_optimizations.txt"))
    assert len(files) == 1, sorted(p.name for p in dump.iterdir())
    out = tmp_path / "r.json"
    run = _eval([f"--hlo={files[0]}", "--time_limit=5", f"--out={out}"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    fn, args = _user_step()
    here = extract.instance_from_hlo(jax.jit(fn).lower(*args).compile().as_text(), "here")
    name, text = program.read_hlo(str(files[0]))
    inst = program.sized(extract.instance_from_hlo(text, name), 0.25)
    for field in ("sizes", "starts", "ends", "benefits"):
        np.testing.assert_array_equal(getattr(inst, field), getattr(here, field))
    recs = _check_records(out, inst, {"heuristic", "cpsat", "rollout"})
    assert recs["cpsat"]["optimal"]
    assert recs["heuristic"]["benefit"] <= recs["cpsat"]["benefit"] * (1 + 1e-9)
    assert recs["rollout"]["benefit"] <= recs["cpsat"]["benefit"] * (1 + 1e-9)
    assert "CP-SAT bound" in run.stdout and "vs heuristic" in run.stdout
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_program_flag_plays_a_function_of_the_users_module(tmp_path, monkeypatch):
    """--program=module:function (evaluate.run, in this process): the instance is the one extract.extract
    builds from the same function, at 1 MiB of fast memory (--capacity_bytes, rounded to the sizes' gcd) with
    other cost-model rates; every placement valid and at most CP-SAT's proven optimum."""
    (tmp_path / "user_module_b.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "p.json"
    cfg = evaluate.EvalMallocConfig(program="user_module_b:make_step", capacity_bytes=50_001, slow_bw=2e12,
                                    time_limit=5, out=str(out))
    records = evaluate.run(cfg)
    fn, args = _user_step()
    want = extract.extract(fn, args, "x", cost=extract.CostModel(slow_bw=2e12))
    inst = program.program_instance(program.ProgramSource("user_module_b:make_step", capacity_bytes=50_001,
                                                          cost=extract.CostModel(slow_bw=2e12)))
    np.testing.assert_array_equal(inst.benefits, want.benefits)
    unit = int(np.gcd.reduce(inst.sizes))  # the address unit (512 bytes with jax 0.10.2 on CPU)
    assert inst.name == "user_module_b.make_step" and inst.capacity == 50_001 // unit * unit
    assert unit > 1 and inst.meta["capacity_aligned_to"] == unit
    recs = _check_records(out, inst, {"heuristic", "cpsat", "rollout"})
    assert recs["cpsat"]["optimal"] and len(records) == 3
    assert recs["rollout"]["simulations"] == evaluate.default_simulations(inst.num_buffers) == 64  # a small program
    assert recs["rollout"]["keep_best"]
    assert (tmp_path / "p.png").exists()


# ----------------------------------------------------------------------------- reading HLO text

def _hlo_file(tmp_path, text, name="m.txt"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


GOOD = """HloModule m, is_scheduled=true

ENTRY %main (p0: f32[4,8]) -> f32[4,8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %e = f32[4,8]{1,0} exponential(%p0)
  ROOT %n = f32[4,8]{1,0} negate(%e)
}
"""


@pytest.mark.parametrize("text, says", [
    (GOOD.replace("is_scheduled=true", "is_scheduled=false"), "does not say is_scheduled=true"),
    (GOOD.replace("HloModule m, ", "Module m, "), ":1: not an HLO text module"),
    (GOOD.replace("  %e = f32[4,8]{1,0} exponential(%p0)", "  %e = f32[4,8]{1,0} exponential %p0"),
     ":5: not an HLO instruction"),
    (GOOD.replace("exponential(%p0)", "exponential(%p1)"), ":5: %e uses %p1, which no earlier instruction"),
    (GOOD.replace("negate(%e)", "negate((%e)"), ":6: unbalanced parentheses"),
    (GOOD.rstrip().rstrip("}"), ":6: computation %main (line 3) is never closed"),
    (GOOD.replace("ENTRY %main", "%main"), "no ENTRY computation"),
])
def test_bad_hlo_text_is_refused_with_file_and_line(tmp_path, text, says):
    path = _hlo_file(tmp_path, text)
    with pytest.raises(ValueError) as err:
        program.read_hlo(path)
    assert str(err.value).startswith(f"hlo={path!r}") and says in str(err.value), str(err.value)


def test_hlo_without_percent_names_or_with_typed_operands_reads_the_same(tmp_path):
    """Frontends print names with or without XLA's '%' and operands with or without their shapes."""
    fn, args = _user_step()
    text = jax.jit(fn).lower(*args).compile().as_text()
    base = extract.buffers_from_hlo(text)
    bare = extract.buffers_from_hlo(text.replace("%", ""))
    assert bare == base and len(base["names"]) > 10
    typed = GOOD.replace("exponential(%p0)", "exponential(f32[4,8]{1,0} %p0)").replace("negate(%e)",
                                                                                       "negate(f32[4,8]{1,0} e)")
    assert extract.buffers_from_hlo(typed) == extract.buffers_from_hlo(GOOD)


def test_capacity_is_rounded_to_the_address_unit_and_bounded_by_the_peak():
    inst = instance.Instance("p", sizes=np.array([8, 16, 24]), starts=np.array([0, 0, 1]), ends=np.array([1, 2, 2]),
                             benefits=np.array([1.0, 2.0, 3.0]), capacity=1)
    assert inst.peak_live_bytes() == 48
    assert program.sized(inst, 0.5).capacity == 24 and program.sized(inst, capacity_bytes=47).capacity == 40
    with pytest.raises(ValueError, match="capacity_bytes=49 is above the peak live bytes of 'p' \\(48\\)"):
        program.sized(inst, capacity_bytes=49)
    with pytest.raises(ValueError, match="capacity_fraction=0.1 gives 4 bytes of fast memory, less than the smallest"):
        program.sized(inst, 0.1)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="capacity_fraction=.* must be in \\(0, 1\\]"):
            program.check_capacity_settings(bad, 0)


@pytest.mark.parametrize("spec, says", [
    ("nomodule_here_x:make", "cannot import nomodule_here_x (ModuleNotFoundError"),
    ("user_module_c:absent", "user_module_c has no function absent"),
    ("user_module_c:raises", "raises() raised RuntimeError: no data on this machine"),
    ("user_module_c", "must be package.module:function"),
])
def test_bad_program_is_named(tmp_path, monkeypatch, spec, says):
    (tmp_path / "user_module_c.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError) as err:
        program.load_program(spec)
    assert str(err.value).startswith(f"program={spec!r}") and says in str(err.value), str(err.value)


# ----------------------------------------------------------------------------- the whole-program search

def _states(inst: instance.Instance, n: int, rng, count: int):
    """Random mid-episode states of ``inst`` padded to ``n`` (random legal moves, slow one time in three)."""
    one = jax.tree.map(lambda x: x[0], game.pad([inst], n))
    step, legal = jax.jit(game.step), jax.jit(game.legal_actions)
    out = []
    for _ in range(count):
        state = game.init(one)
        for _ in range(int(rng.integers(0, inst.num_buffers))):
            moves = np.flatnonzero(np.asarray(legal(one, state)))
            state, _, _ = step(one, state, int(rng.choice(moves if rng.uniform() > 0.3 else [0])))
        out.append(state)
    return one, out


def test_sorted_legality_matches_the_all_pairs_one(monkeypatch):
    """legal_actions from SORTED_GAPS_FROM slots (sorted clash search, duplicate offsets by a stable sort)
    against the all-pairs form, on random positions of random instances with many equal offsets."""
    rng = np.random.default_rng(3)
    cases = []
    for _ in range(6):
        inst = instance.random_instance(rng, num_buffers=40, horizon=12, max_size=4, capacity_fraction=0.6)
        one, states = _states(inst, 40, rng, 8)
        cases += [(one, s) for s in states]
    monkeypatch.setattr(game, "SORTED_GAPS_FROM", 10 ** 9)
    dense = [np.asarray(jax.jit(game.legal_actions)(o, s)) for o, s in cases]
    monkeypatch.setattr(game, "SORTED_GAPS_FROM", 0)
    for (o, s), want in zip(cases, dense):
        np.testing.assert_array_equal(np.asarray(jax.jit(game.legal_actions)(o, s)), want)
    assert sum(int(d.sum()) for d in dense) > 3 * len(dense)  # positions with choices were tested


def test_windowed_completion_is_the_prefix_of_a_game_trajectory():
    """heuristic_completion(window=w): w >= N is the whole completion; otherwise only slots t..t+w-1 change,
    each at an offset that is a legal move when its turn comes (the trajectory replays)."""
    rng = np.random.default_rng(8)
    inst = instance.random_instance(rng, num_buffers=24, horizon=10, max_size=16, capacity_fraction=0.7)
    one, states = _states(inst, 24, rng, 6)
    full = jax.jit(functools.partial(game.heuristic_completion, game_moves=True))
    for state in states:
        np.testing.assert_array_equal(game.heuristic_completion(one, state, True, window=24), full(one, state))
        offsets = np.asarray(game.heuristic_completion(one, state, True, window=5))
        t = int(state.t)
        k = np.arange(24)
        np.testing.assert_array_equal(offsets[(k < t) | (k >= t + 5)], np.asarray(state.offset)[(k < t) | (k >= t + 5)])
        replay = state
        for slot in range(t, min(t + 5, inst.num_buffers)):
            want = offsets[slot]
            ok = np.flatnonzero(np.asarray(game.legal_actions(one, replay))
                                & (np.asarray(game.candidate_offsets(one, replay)) == want))
            move = game.SLOW if want < 0 else int([a for a in ok if a != game.SLOW][0])
            replay, _, _ = game.step(one, replay, move)
        np.testing.assert_array_equal(np.asarray(replay.offset)[t:t + 5], offsets[t:t + 5])


def test_local_view_keeps_the_current_buffer_and_its_move_targets():
    """mcts.local_view: the view of width >= N is the instance itself; a narrower view holds the current
    buffer and every placed buffer live with it (the targets of its slot moves) in schedule order, its
    decided slots first; view_logits puts each view slot's moves on its own slot's moves and NEG elsewhere."""
    rng = np.random.default_rng(2)
    inst = instance.random_instance(rng, num_buffers=30, horizon=40, max_size=8, capacity_fraction=0.9)
    one, states = _states(inst, 32, rng, 8)
    for state in states:
        whole = mcts.local_view(one, state, 32)
        for f in ("size", "start", "end", "benefit", "valid"):
            np.testing.assert_array_equal(getattr(whole.inst, f), getattr(one, f) - (
                int(one.start[:30].min()) * np.asarray(one.valid) if f in ("start", "end") else 0))
        assert int(whole.state.t) == int(state.t) and bool(jnp.all(whole.state.offset == state.offset))
        v = mcts.local_view(one, state, 12)
        slots = np.asarray(v.slots)
        real = slots[slots >= 0]
        assert list(real) == sorted(real) and len(real) == 12
        t = int(state.t)
        if t < inst.num_buffers:
            assert t in real and real[int(v.state.t)] == t
            live = np.asarray(game._time_overlapping_fast(one, state.offset, t)) & (np.arange(32) < t)
            assert set(np.flatnonzero(live)) <= set(real) or live.sum() > 8
        logits = jnp.arange(game.num_actions(12), dtype=jnp.float32)
        mapped = np.asarray(mcts.view_logits(logits, v.slots, 32))
        for j, s in enumerate(slots):
            if s >= 0:
                assert mapped[game.on_top(s, 32)] == logits[game.on_top(j, 12)]
                assert mapped[game.under(s, 32)] == logits[game.under(j, 12)]
        assert (mapped > -1e8).sum() == game.FIXED_MOVES + 2 * 12


@pytest.fixture(scope="module")
def tiny():
    from models.malloc_muzero import MuZeroNetConfig
    model = muzero.make_model(MuZeroNetConfig(width=16, num_heads=2, mlp_dim=32, repr_layers=1, dyn_layers=1))
    return model, muzero.init_params(model, jax.random.PRNGKey(0), 8)


@pytest.mark.parametrize("view", [0, 6])
def test_play_carries_root_values_and_skips_forced_moves_without_changing_the_episode(tiny, view):
    """training.play's rollout search (the chosen child's rollout value carried as the next root value, no
    simulations where slow is the only move) plays the same episode as a plain loop of searches that compute
    every root value and search every move."""
    model, params = tiny
    rng = np.random.default_rng(6)  # one instance (so a whole batch is forced at times), memory scarce
    insts = [instance.random_instance(rng, num_buffers=16, horizon=10, max_size=16, capacity_fraction=0.3)]
    batch = game.pad(insts, 16)
    key = jax.random.PRNGKey(1)
    final, ep = jax.jit(muzero.play, static_argnums=(0, 4, 5, 6, 7, 8, 9, 10, 11))(
        model, params, key, batch, "rollout", 3, 4, 0.0, 30.0, False, 0, view)
    search = jax.jit(lambda k, s: mcts.search(model, params, k, batch, s, "rollout", 3, 4, 0.0, 30.0, 0, view))
    state, forced = jax.vmap(game.init)(batch), 0
    for t, k in enumerate(jax.random.split(key, 16)):
        forced += int(jnp.all(jax.vmap(game.legal_actions)(batch, state).sum(-1) == 1))
        out = search(k, state)
        np.testing.assert_array_equal(np.asarray(out.action), np.asarray(ep.action[:, t]))
        state, _, _ = jax.vmap(game.step)(batch, state, out.action)
    np.testing.assert_array_equal(np.asarray(state.offset), np.asarray(final.offset))
    assert forced > 0  # the skip was exercised


def test_descends_below_root_follows_mctx_sequential_halving():
    """mcts.descends_below_root against mctx's own table of considered visits: a search with that many
    considered root moves and simulations goes below the root's children (some visit count above 0 in the
    table) exactly when the function says so."""
    from mctx._src import seq_halving
    for sims in range(1, 9):
        for max_considered in (1, 2, 3, 4, 8, 16):
            table = seq_halving.get_table_of_considered_visits(max_considered, sims)
            for legal_moves in range(1, 12):
                legal = jnp.zeros((1, 20), bool).at[0, :legal_moves].set(True)
                revisits = any(v > 0 for v in table[min(max_considered, legal_moves)])
                assert bool(mcts.descends_below_root(legal, sims, max_considered)) == revisits, (
                    sims, max_considered, legal_moves)


@pytest.mark.parametrize("sims", [2, 4])
def test_rollout_search_without_unread_child_priors_is_the_same_search(tiny, monkeypatch, sims):
    """The rollout search skips the network below the root where no simulation can read a child's prior
    (mcts.descends_below_root): every output equals the search that runs it at every node, at positions
    where it skips and where it does not (few legal moves: 4 simulations, or 2 with one legal move)."""
    model, params = tiny
    rng = np.random.default_rng(11)
    search = lambda k, b, s: mcts.search(model, params, k, b, s, "rollout", sims, 4, 1.0, 30.0)
    skipping, batches, cases = jax.jit(search), [], []
    for capacity in (0.3, 0.6, 0.9):  # one instance a batch: the skip is decided per position
        batch = game.pad([instance.random_instance(rng, num_buffers=16, horizon=10, max_size=16,
                                                   capacity_fraction=capacity)], 16)
        batches.append(batch)
        state = jax.vmap(game.init)(batch)
        for k in jax.random.split(jax.random.PRNGKey(3), 16):
            out = skipping(k, batch, state)
            cases.append((len(batches) - 1, k, state, out))
            state, _, _ = jax.vmap(game.step)(batch, state, out.action)
    monkeypatch.setattr(mcts, "descends_below_root", lambda legal, n, m: jnp.bool_(True))
    every_node = jax.jit(search)
    descended = 0
    for i, k, state, a in cases:
        legal = jax.vmap(game.legal_actions)(batches[i], state)
        descended += int(jnp.any(jnp.minimum(4, legal.sum(-1)) < sims))
        b = every_node(k, batches[i], state)
        for name in ("action", "policy", "value", "best_return", "chosen_value"):
            np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), err_msg=name)
    assert 0 < descended < len(cases)  # both branches were exercised


# ----------------------------------------------------------------------------- the results files

def _results_files():
    return sorted((REPO / "results" / "malloc").glob("*programs_*.json"))


@pytest.mark.parametrize("path", _results_files(), ids=lambda p: p.name)
def test_whole_program_results_are_valid_placements_of_the_shipped_programs(path):
    """results/malloc/programs_*.json (eval_malloc --out of the held-out whole programs): provenance, and every
    record's placement passes the validator on the shipped instance and is worth the benefit it reports."""
    data = json.loads(path.read_text())
    assert {"command", "commit", "date", "machine"} <= set(data["provenance"])
    programs = {i.name: i for i in instance.load_dir(evaluate.PROGRAMS_DIR / "test")}
    assert {r["instance"] for r in data["records"]} <= set(programs)
    for r in data["records"]:
        inst = programs[r["instance"]]
        offsets = evaluate.offsets_of(inst, r)
        assert validate.violations(inst, offsets) == []
        assert validate.benefit(inst, offsets) == pytest.approx(r["benefit"], rel=1e-9)
        assert r["normalised_benefit"] == pytest.approx(r["benefit"] / inst.total_benefit, rel=1e-9)
