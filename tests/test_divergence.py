"""models.divergence: when a run counts as diverged, and the rollback of a
real run that diverged (weights poisoned with NaN by the fault injection)."""
import json
import math
import os

import pytest

from models.divergence import DivergenceMonitor
from tests.test_train import load_summary, run_train


def test_a_non_finite_loss_diverges_at_once():
    m = DivergenceMonitor(factor=3.0, patience=2)
    assert m.observe(2.0).healthy
    for bad in (math.nan, math.inf):
        v = m.observe(bad)
        assert v.diverged and not v.healthy and "loss is" in v.reason


def test_a_loss_far_above_its_minimum_diverges_after_patience():
    m = DivergenceMonitor(factor=3.0, patience=2)
    assert [m.observe(x).healthy for x in (2.0, 1.0, 0.5)] == [True] * 3
    v = m.observe(1.6)  # above 3 x 0.5: one strike
    assert not v.healthy and not v.diverged
    assert m.observe(1.4).healthy  # back under: the streak ends
    assert not m.observe(2.0).diverged
    v = m.observe(5.0)
    assert v.diverged and "running minimum 0.5" in v.reason
    m.reset_streak()
    assert not m.observe(5.0).diverged  # a fresh streak after a rollback
    assert m.running_min == 0.5


def test_no_loss_is_neither_healthy_nor_diverged():
    v = DivergenceMonitor().observe(None)
    assert not v.healthy and not v.diverged


@pytest.mark.parametrize("factor,patience", [(1.0, 2), (3.0, 0)])
def test_bad_settings_are_refused(factor, patience):
    with pytest.raises(ValueError):
        DivergenceMonitor(factor, patience)


@pytest.mark.timeout(200)
def test_a_diverged_run_rolls_back_to_its_last_good_checkpoint(tmp_path):
    run_dir = str(tmp_path / "run")
    code, out, err = run_train(
        ["--local_cluster_workers=2", "--train_updates=80",
         "--eval_every_updates=10", "--checkpoint_every_updates=10",
         "--inject_divergence_at_update=30", "--run_dir=" + run_dir],
        timeout=180)
    assert code == 0, err[-3000:]
    s = load_summary(run_dir)
    # Poisoned at the end of the interval that reached 30 (after its good
    # save), detected at the end of the next one, rolled back to 30.
    assert "injected a divergence at update 30" in out
    rollback, = s["rollbacks"]
    assert rollback["restored_update"] == 30
    assert 30 < rollback["diverged_at_update"] <= 40
    assert rollback["reason"] == "loss is nan"
    assert rollback["restored"].endswith(os.path.join("good", "ckpt-30"))
    assert "rolled back to" in out and "rollback 1 of at most 3" in out
    assert "rollback 1" in out.split("Run summary")[1]
    with open(os.path.join(run_dir, "rollbacks.jsonl")) as f:
        assert [json.loads(line) for line in f] == s["rollbacks"]
    # Trained on to the target from the good weights.
    assert s["updates"] >= 80
    assert s["test_accuracy"]["top1"] >= 0.7
    # The newest checkpoint holds the recovered weights, not the NaN ones.
    assert s["checkpoint"].endswith("ckpt-%d" % s["updates"])
