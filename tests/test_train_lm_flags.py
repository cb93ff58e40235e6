"""Bad flags of scripts.train_lm fail before any work, with a message naming the flag and value."""
import subprocess
import sys

import pytest

from scripts import train_lm


@pytest.mark.parametrize("overrides,match", [
    ({"keep_checkpoints": 0}, "--keep_checkpoints=0 must be an integer >= 1"),
    ({"checkpoint_mode": "fast"}, "--checkpoint_mode='fast'"),
    ({"num_heads": 3}, "d_model=128 must be divisible by num_heads=3"),
    ({"steps": 0}, "--steps=0 must be an integer >= 1"),
    ({"min_lr": 0.1}, "--min_lr=0.1 must not exceed --lr=0.001"),
    ({"moe_experts": 4, "moe_impl": "fast"}, "MoEConfig.impl='fast'; allowed"),
])
def test_config_validation(devices, overrides, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        train_lm.TrainLMConfig(**overrides)


@pytest.mark.parametrize("overrides,match", [
    ({"mesh": "data:3"}, "mesh spec 'data:3' for 8 devices"),
    ({"mesh": "data:8", "batch_size": 12}, "--batch_size=12 must be a multiple of the data axis size 8"),
    ({"mesh": "data:2,expert:4", "moe_experts": 6}, "--moe_experts=6 must be divisible by the 'expert' mesh axis size 4"),
    ({"mesh": "data:2,tensor:4", "moe_experts": 4, "moe_mlp_dim": 6}, "expert width 6"),
])
def test_device_checks(devices, overrides, match):
    with pytest.raises(ValueError, match=match):
        train_lm.check_devices(train_lm.TrainLMConfig(**overrides))


def test_cli_bad_flag_is_a_usage_error_before_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for args, expected in (
            ([f"--workdir={tmp_path}/w", "--keep_checkpoints=0"], "--keep_checkpoints=0"),
            ([f"--workdir={tmp_path}/w", "--batch_size=12", "--mesh=data:8"], "--batch_size=12 must be a multiple"),
            ([f"--workdir={blocker}/sub", "--batch_size=16"], "is not writable")):
        out = subprocess.run([sys.executable, "-m", "scripts.train_lm", *args], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode != 0
        assert expected in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()  # nothing was started
