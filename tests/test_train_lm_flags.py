"""Bad settings of the LM experiment fail before any work: the library names the setting and value, the
command line (scripts.train_lm) prints it as one line with the flag's ``--`` and exits 1."""
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from training import diloco as train_diloco
from training import lm as train_lm
from training.config import from_flat


@pytest.mark.parametrize("overrides,match", [
    ({"keep_checkpoints": 0}, "keep_checkpoints=0 must be an integer >= 1"),
    ({"checkpoint_mode": "fast"}, "checkpoint_mode='fast'"),
    ({"num_heads": 3}, "d_model=128 must be divisible by num_heads=3"),
    ({"steps": 0}, "steps=0 must be an integer >= 1"),
    ({"min_lr": 0.1}, "min_lr=0.1 must not exceed lr=0.001"),
    ({"moe_experts": 4, "moe_impl": "fast"}, "moe_impl='fast'; allowed"),
    ({"moe_num_experts": 4, "moe_top_k": 5}, "moe_top_k=5 must not exceed moe_num_experts=4"),
    # optimiser settings that would silently wreck training
    ({"grad_clip": -1.0}, "grad_clip=-1.0 must be a finite number > 0"),   # gradient ascent
    ({"grad_clip": 0.0}, "grad_clip=0.0 must be a finite number > 0"),     # every update zero
    ({"weight_decay": -5.0}, "weight_decay=-5.0 must be a finite number >= 0"),
    ({"lr": float("inf")}, "lr=inf must be a finite number > 0"),
    ({"steps": 50, "warmup_steps": 100}, "warmup_steps=100 must not exceed steps=50"),  # a value the user set
    ({"warmup_steps": -2}, "warmup_steps=-2 must be an integer >= 0, or -1"),
])
def test_config_validation(devices, overrides, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        from_flat(train_lm.TrainLMConfig, overrides)


@pytest.mark.parametrize("config_cls, steps, warmup", [
    (train_lm.TrainLMConfig, 2000, 100),    # nanoGPT's 100 of 2,000 (the default run)
    (train_lm.TrainLMConfig, 30, 3),        # the default fits a short run instead of refusing it
    (train_lm.TrainLMConfig, 5000, 100),    # capped
    (train_lm.TrainLMConfig, 1, 0),
    (train_diloco.TrainDiLoCoConfig, 1200, 60),  # DiLoCo's 60 of 1,200 (its default run)
    (train_diloco.TrainDiLoCoConfig, 30, 3),
    (train_diloco.TrainDiLoCoConfig, 5000, 60),
])
def test_default_warmup_is_a_tenth_of_the_run_capped(config_cls, steps, warmup):
    cfg = from_flat(config_cls, {"steps": steps})
    assert cfg.optim.warmup_steps == -1  # "auto" until a run resolves it (config.json records the number)
    assert cfg.resolved().optim.warmup_steps == warmup
    explicit = from_flat(config_cls, {"steps": steps, "warmup_steps": min(steps, 7)})
    assert explicit.resolved().optim.warmup_steps == min(steps, 7)  # a value the user set is kept


def test_make_optimizer_resolves_auto_warmup():
    """The schedule of warmup_steps=-1 equals that of the explicit number auto_warmup_steps gives."""
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.ones(3)}
    for steps, cap in ((30, 100), (1200, 60)):
        auto = train_lm.make_optimizer(train_lm.OptimConfig(), steps, cap)
        explicit = train_lm.make_optimizer(train_lm.OptimConfig(warmup_steps=train_lm.auto_warmup_steps(steps, cap)),
                                           steps)
        sa, se = auto.init(params), explicit.init(params)
        for _ in range(5):
            ua, sa = auto.update(grads, sa, params)
            ue, se = explicit.update(grads, se, params)
            np.testing.assert_array_equal(ua["w"], ue["w"])
        assert float(jnp.abs(ua["w"]).max()) > 0


@pytest.mark.parametrize("overrides,match", [
    ({"mesh": "data:3"}, "mesh spec 'data:3' for 8 devices"),
    ({"mesh": "data:8", "batch_size": 12}, "batch_size=12 must be a multiple of the data axis size 8"),
    ({"mesh": "data:2,expert:4", "moe_experts": 6}, "moe_num_experts=6 must be divisible by the 'expert' mesh axis size 4"),
    ({"mesh": "data:2,tensor:4", "moe_experts": 4, "moe_mlp_dim": 6}, "moe_mlp_dim=6"),
])
def test_device_checks(devices, overrides, match):
    with pytest.raises(ValueError, match=match):
        train_lm.check_devices(from_flat(train_lm.TrainLMConfig, overrides))


def test_old_flag_spellings_still_build_the_same_config():
    old = from_flat(train_lm.TrainLMConfig, {"moe_experts": 8, "moe_topk": 1, "moe_aux_weight": 0.1})
    new = from_flat(train_lm.TrainLMConfig, {"moe_num_experts": 8, "moe_top_k": 1, "moe_load_balance_weight": 0.1})
    assert old == new and new.moe.num_experts == 8 and new.moe.top_k == 1
    assert from_flat(train_lm.TrainLMConfig, {}).moe is None  # dense by default


@pytest.mark.slow  # about 13 s; tests/test_bad_input.py's train_lm rows cover these cases by default
def test_cli_bad_flag_is_one_line_before_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for args, expected in (
            ([f"--workdir={tmp_path}/w", "--keep_checkpoints=0"], "error: --keep_checkpoints=0"),
            ([f"--workdir={tmp_path}/w", "--num_heads=3"], "error: --d_model=128 must be divisible by --num_heads=3"),
            ([f"--workdir={tmp_path}/w", "--moe_experts=4", "--moe_topk=5"], "--moe_top_k=5 must not exceed"),
            ([f"--workdir={tmp_path}/w", "--batch_size=12", "--mesh=data:8"], "--batch_size=12 must be a multiple"),
            ([f"--workdir={blocker}/sub", "--batch_size=16"], "is not writable"),
            ([f"--workdir={tmp_path}/w", "stray"], "unexpected arguments ['stray']")):
        out = subprocess.run([sys.executable, "-m", "scripts.train_lm", *args], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 1, out.stderr
        lines = [l for l in out.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and expected in lines[0], out.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()  # nothing was started
