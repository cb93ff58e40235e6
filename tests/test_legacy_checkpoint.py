"""A checkpoint written before the settings were nested (commit 30bc341: flat TrainLMConfig, old flag names
``--moe_experts/--moe_topk/--moe_aux_weight``) still resumes under the current names.

The fixture is step 10 of ``python -m scripts.train_lm --steps=20 --checkpoint_every=10 --num_layers=1
--d_model=32 --mlp_dim=64 --seq_len=16 --eval_every=10 --log_every=10 --warmup_steps=5 --moe_experts=4
--moe_topk=1 --moe_aux_weight=0.02`` run at that commit. (Checked by hand too: the resumed run's step-20 state equals the
old code's uninterrupted run bit for bit, dense and MoE.)"""
import pathlib
import re
import shutil

import pytest

from training import lm
from training.config import from_flat

FIXTURE = pathlib.Path(__file__).parent / "data" / "legacy_moe_lm"
SETTINGS = dict(steps=20, checkpoint_every=10, num_layers=1, d_model=32, mlp_dim=64, seq_len=16, eval_every=10,
                log_every=10, warmup_steps=5, mesh="data:4,tensor:2", init="v1")  # the init scheme of that commit


def test_old_checkpoint_resumes_with_new_setting_names(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "run")
    cfg = from_flat(lm.TrainLMConfig, dict(workdir=str(tmp_path / "run"), moe_num_experts=4, moe_top_k=1,
                                           moe_load_balance_weight=0.02, **SETTINGS))
    summary = lm.train(cfg)
    assert summary["resumed_from"] == 10 and summary["step"] == 20
    # the old code's uninterrupted run (one device) ended at this validation loss (its summary.json)
    assert abs(summary["val_loss"] - 5.705772876739502) < 1e-4  # 8 devices here, 1 there: summation order


@pytest.mark.parametrize("changed, says", [
    ({"moe_top_k": 2}, "`moe_top_k`: checkpoint has 1, flags give 2"),
    ({"init": "gpt2"}, "`init`: checkpoint has 'v1', flags give 'gpt2'"),  # made before the setting existed
])
def test_old_checkpoint_with_other_settings_is_refused_naming_them(tmp_path, changed, says):
    shutil.copytree(FIXTURE, tmp_path / "run")
    cfg = from_flat(lm.TrainLMConfig, {**dict(workdir=str(tmp_path / "run"), moe_num_experts=4, moe_top_k=1,
                                              moe_load_balance_weight=0.02, **SETTINGS), **changed})
    with pytest.raises(ValueError, match=re.escape(says)):
        lm.train(cfg)
