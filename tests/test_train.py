"""models.train end to end on an in-process cluster (each run its own
interpreter: in-process servers cannot be shut down), its usage errors, and
the recipe arithmetic."""
import json
import os
import subprocess
import sys

import pytest

from ps_sync.local_cluster import REPO_ROOT

PNG = b"\x89PNG\r\n\x1a\n"


def run_train(flags, timeout):
    """`python -m models.train FLAGS` -> (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "models.train"] + list(flags),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT,
                 GRPC_FAIL_FAST="use_caller"))
    return proc.returncode, proc.stdout, proc.stderr


def load_summary(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG, path


def assert_common(summary, run_dir, stdout, target):
    assert summary["run_dir"] == run_dir
    assert "run directory: %s" % run_dir in stdout
    assert "Run summary: small_cnn on digits" in stdout
    assert summary["updates"] >= target == summary["target_updates"]
    assert summary["train_time_s"] > 0
    assert summary["updates_per_s"] == pytest.approx(
        (summary["updates"] - summary["start_update"])
        / summary["train_time_s"], rel=1e-3)  # train_time_s is rounded
    # Learned something real: chance is 0.1 on 10 classes.
    assert summary["test_accuracy"]["top1"] >= 0.7
    assert summary["test_accuracy"]["update"] == summary["updates"]
    history = summary["eval_history"]
    assert history[0]["update"] == 0 and history[0]["examples"] == 360
    assert [h["update"] for h in history] == sorted(h["update"]
                                                    for h in history)
    assert history[-1]["top1"] == summary["test_accuracy"]["top1"]
    with open(os.path.join(run_dir, "eval.jsonl")) as f:
        assert len(f.readlines()) == len(history)
    # The final checkpoint is named after its update.
    assert summary["checkpoint"].endswith("ckpt-%d" % summary["updates"])
    assert os.listdir(summary["tensorboard_dir"])
    assert_png(summary["plots"]["accuracy"])
    assert "progress: update" in stdout


# N=2 of 3 with a last fit resized to what remains after the first.
RESIZED_SYNC_RUN = ["--local_cluster_workers=3", "--replicas_to_aggregate=2",
                    "--train_updates=30", "--eval_every_updates=30",
                    "--resize_last_interval=always"]


@pytest.mark.timeout(150)
def test_sync_run_end_to_end(tmp_path):
    run_dir = str(tmp_path / "run")
    code, out, err = run_train(
        RESIZED_SYNC_RUN + ["--progress_every_s=1", "--run_dir=" + run_dir],
        timeout=140)
    assert code == 0, err[-3000:]
    s = load_summary(run_dir)
    assert_common(s, run_dir, out, 30)
    # The weights a rollback would restore (3 rollbacks by default).
    assert "checkpoint" in os.listdir(
        os.path.join(run_dir, "checkpoints", "good"))
    # One interval of 60 worker steps applies about 20 updates (a third of
    # the pushes are dropped); a second one would end near 40. The chief
    # sizes a last fit to the 10 or so that remain instead ("auto" would
    # not here: this fit took longer to start than 10 updates take).
    assert "worker steps per update measured: a new fit" in out
    assert s["updates"] <= 34
    assert (s["mode"], s["replicas_to_aggregate"], s["total_num_replicas"],
            s["backup_workers"]) == ("sync", 2, 3, 1)
    assert "sync, N=2 of 3 workers (b=1)" in out
    # TensorFlow's INFO lines are off by default, ps_sync's own stay.
    assert "ps_sync: 2 of 3 workers per step" in err
    assert "Waiting for all global closures" not in out + err
    # Pushes per worker from the telemetry, consistent with each other and
    # with the protocol's own counters.
    rows = s["per_worker"]
    assert [w["worker"] for w in rows] == [0, 1, 2]
    assert sum(w["pushes"] for w in rows) == s["pushes"]
    assert all(w["admitted"] + w["dropped"] == w["pushes"] for w in rows)
    assert s["dropped"] == sum(w["dropped"] for w in rows)
    assert s["wasted_share"] == pytest.approx(s["dropped"] / s["pushes"])
    assert sum(w["admitted_share"] for w in rows) == pytest.approx(1.0)
    admitted = sum(w["admitted"] for w in rows)
    # Every update took N=2 admitted pushes (the last may be half full).
    assert 2 * s["updates"] <= admitted <= 2 * s["updates"] + 1
    counters = s["sync_stats"]["per_worker"]
    assert [c["admitted"] + c["admitted_closed"] for c in counters] == [
        w["admitted"] for w in rows]
    assert all(w["compute_s"] > 0 and w["waiting_s"] > 0 for w in rows)
    # The gradient-arrival distribution: one row per k of N+b.
    assert [a["k"] for a in s["arrival"]] == [1, 2, 3]
    assert s["arrival"][0]["p50_s"] <= s["arrival"][1]["p50_s"]
    assert s["arrival"][1]["arrived_fraction"] > 0.9
    for name in ("gradient_arrivals", "worker_step_times",
                 "worker_pushes_and_time"):
        assert_png(s["plots"][name])
    assert s["pauses"] is None  # no launcher, no injection log
    for name in ("pushes.jsonl", "steps.jsonl", "analysis.json",
                 "analysis.txt"):
        assert os.path.exists(os.path.join(run_dir, name)), name


def train_losses(tensorboard_dir):
    """{update: the train/loss scalar written at the end of an interval}."""
    import glob
    import tensorflow as tf
    losses = {}
    for path in glob.glob(os.path.join(tensorboard_dir, "events*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "train/loss":
                    losses[event.step] = float(
                        tf.make_ndarray(value.tensor))
    return losses


@pytest.mark.timeout(150)
def test_a_new_fit_trains_on_from_the_weights_not_their_averages(tmp_path):
    """tf-keras' fit puts the moving averages in place of the weights at
    its end (`use_ema`); before a resized last fit that reset training to
    averages of momentum 0.9999, nearly the initial weights (the second
    fit's loss went back from 1.38 to 2.16)."""
    run_dir = str(tmp_path / "run")
    code, out, err = run_train(
        RESIZED_SYNC_RUN + ["--ema_momentum=0.9999", "--run_dir=" + run_dir],
        timeout=140)
    assert code == 0, err[-3000:]
    assert "worker steps per update measured: a new fit" in out
    s = load_summary(run_dir)
    losses = train_losses(s["tensorboard_dir"])
    first, *later = [losses[u] for u in sorted(losses)]
    assert later, losses  # at least one more fit
    assert all(loss < first for loss in later), losses
    # Evaluations read the averages, still near the initial weights, while
    # the weights themselves learned (about 0.9 at a loss near 0.4).
    assert s["test_accuracy"]["top1"] < 0.5


@pytest.mark.timeout(150)
def test_async_run_end_to_end(tmp_path):
    run_dir = str(tmp_path / "run")
    code, out, err = run_train(
        ["--mode=async", "--local_cluster_workers=2", "--train_updates=60",
         "--eval_every_updates=30", "--progress_every_s=1",
         "--max_rollbacks=0", "--tensorflow_log_level=info",
         "--run_dir=" + run_dir], timeout=140)
    assert code == 0, err[-3000:]
    # Asked for: the coordinator's joins at each interval's end.
    assert "Waiting for all global closures to be finished" in err
    s = load_summary(run_dir)
    assert_common(s, run_dir, out, 60)
    assert (s["mode"], s["replicas_to_aggregate"], s["total_num_replicas"],
            s["backup_workers"]) == ("async", 1, 2, 0)
    assert s["per_worker"] is None and s["sync_stats"] is None
    assert sorted(s["plots"]) == ["accuracy"]
    assert not os.path.exists(os.path.join(run_dir, "pushes.jsonl"))
    # No rollback can happen: no weights saved for one.
    good = os.path.join(run_dir, "checkpoints", "good")
    assert not os.path.exists(good) or not os.listdir(good)


@pytest.mark.timeout(150)
def test_a_restarted_chief_continues_from_its_checkpoint(tmp_path):
    run_dir = str(tmp_path / "run")
    # With the Inception recipe's moving average of the weights, which
    # tf-keras put in place of the weights at a fit's end, in the last
    # checkpoint too: the second chief trained on from the averages.
    common = ["--local_cluster_workers=2", "--eval_every_updates=20",
              "--checkpoint_every_updates=10", "--ema_momentum=0.9999",
              "--run_dir=" + run_dir]
    code, _, err = run_train(common + ["--train_updates=20"], timeout=70)
    assert code == 0, err[-3000:]
    first = load_summary(run_dir)
    code, out, err = run_train(common + ["--train_updates=40"], timeout=70)
    assert code == 0, err[-3000:]
    second = load_summary(run_dir)
    assert second["start_update"] == first["updates"] >= 20
    assert "continuing from update %d" % first["updates"] in out
    assert second["updates"] >= 40
    # The evaluation history carries over; no second update-0 evaluation.
    updates = [h["update"] for h in second["eval_history"]]
    assert updates[:len(first["eval_history"])] == [
        h["update"] for h in first["eval_history"]]
    assert updates.count(0) == 1
    # Trained on from the first chief's weights, not their averages (0.9999:
    # nearly the initial weights, a loss back near 2.3).
    losses = train_losses(second["tensorboard_dir"])
    assert min(losses) <= 20 < max(losses), losses
    assert losses[max(losses)] < losses[min(losses)], losses


@pytest.mark.timeout(150)
def test_an_evaluator_task_evaluates_the_chiefs_checkpoints(tmp_path):
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    tf_config = {"cluster": {"chief": ["localhost:1"], "ps": ["localhost:2"],
                             "worker": ["localhost:3", "localhost:4"]},
                 "task": {"type": "evaluator", "index": 0}}
    # With the Inception recipe's moving average of the weights: both
    # evaluate the averages.
    evaluator = subprocess.Popen(
        [sys.executable, "-m", "models.train",
         "--checkpoint_every_updates=10", "--ema_momentum=0.9999"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=dict(os.environ, PYTHONPATH=REPO_ROOT,
                            TF_CONFIG=json.dumps(tf_config),
                            PS_SYNC_RUN_DIR=run_dir))
    try:
        code, _, err = run_train(
            ["--local_cluster_workers=2", "--train_updates=30",
             "--checkpoint_every_updates=10", "--ema_momentum=0.9999",
             "--run_dir=" + run_dir], timeout=100)
        assert code == 0, err[-3000:]
        out, _ = evaluator.communicate(timeout=30)
    finally:
        evaluator.kill()
    assert evaluator.returncode == 0, out[-3000:]
    chief = load_summary(run_dir)
    with open(os.path.join(run_dir, "eval_sidecar.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert "evaluator: ckpt-%d" % chief["updates"] in out
    # The last checkpoint holds the final averages the chief evaluated (the
    # weights themselves, which learned, would score far higher).
    assert records[-1]["update"] == chief["updates"]
    assert chief["test_accuracy"]["top1"] < 0.5
    assert records[-1]["top1"] == pytest.approx(
        chief["test_accuracy"]["top1"], abs=1e-6)
    assert [r["update"] for r in records] == sorted(
        {r["update"] for r in records})


@pytest.mark.parametrize("flags,message", [
    (["--dataset=mnist"],
     "unknown dataset 'mnist'; known datasets: digits, imagenet2012, "
     "imagenet_tfrecord"),
    (["--model=resnet50"], "unknown model 'resnet50'"),
    (["--dataset=imagenet_tfrecord"], "dataset 'imagenet_tfrecord' needs a "
     "data dir"),
    (["--dataset=imagenet_tfrecord", "--data_dir=/nonexistent/imagenet"],
     "ImageNet data dir '/nonexistent/imagenet' does not exist"),
    (["--dataset=imagenet_tfrecord", "--data_dir={tmp}"],
     "no ImageNet TFRecord shards for split 'train'"),
    (["--dataset=imagenet2012", "--data_dir={tmp}"],
     "TFDS 'imagenet2012' is not prepared in data dir"),
    (["--dataset=digits", "--data_dir={tmp}"], "needs no data dir"),
    (["--total_num_replicas=3"],
     "--total_num_replicas=3 but the cluster has 2 workers"),
    (["--quorum_policy=adaptive"],
     "--quorum_policy=adaptive needs --min_replicas_to_aggregate"),
])
def test_wrong_flags_are_usage_errors(tmp_path, flags, message):
    flags = [f.format(tmp=tmp_path) for f in flags]
    code, out, err = run_train(flags + ["--local_cluster_workers=2"],
                               timeout=60)
    assert code == 2
    assert "models.train: error: " in err and message in err
    assert "Traceback" not in err + out
    assert "run directory" not in out  # stopped before any cluster work


def test_no_cluster_is_a_usage_error():
    env_free = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    proc = subprocess.run(
        [sys.executable, "-m", "models.train"], cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=60,
        env=dict(env_free, PYTHONPATH=REPO_ROOT))
    assert proc.returncode == 2
    assert "TF_CONFIG is not set" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_epochs_count_applied_updates_and_the_schedule_decays_on_them():
    from models import recipes
    # Sync: an update takes N batches; async: one.
    per_update = recipes.examples_per_update(32, 2, sync=True)
    assert per_update == 64
    assert recipes.examples_per_update(32, 2, sync=False) == 32
    assert recipes.updates_for_epochs(10, 1437, per_update) == 225
    # Inception: 0.045 x0.94 every 2 epochs of applied updates.
    lr = recipes.learning_rate(recipes.INCEPTION, updates_per_epoch=100.0)
    assert float(lr(199)) == pytest.approx(0.045)
    assert float(lr(200)) == pytest.approx(0.045 * 0.94)
    assert float(lr(1000)) == pytest.approx(0.045 * 0.94 ** 5)
    opt = recipes.make_optimizer(recipes.INCEPTION, 100.0)
    config = opt.get_config()
    assert (config["rho"], config["momentum"], config["epsilon"]) == (
        0.9, 0.9, 1.0)
    assert config["use_ema"] and config["ema_momentum"] == 0.9999


@pytest.mark.parametrize("mode, overshoot, resizes, timing, expected", [
    ("always", 10, 0, None, True),
    ("always", 1.5, 0, None, False),     # within max(1, 5% of 40)
    ("always", 10, 3, None, False),      # MAX_RESIZES used up
    ("never", 100, 0, (1.0, 1.0), False),
    ("auto", 10, 0, (20.0, 0.3), False),  # 3 s of updates vs a 20 s start
    ("auto", 100, 0, (20.0, 0.3), True),  # 30 s of updates
    ("auto", 100, 0, None, False),       # no telemetry (async)
])
def test_the_last_interval_is_resized_when_worth_a_new_fit(
        mode, overshoot, resizes, timing, expected):
    from models import trainer
    assert trainer.should_resize(mode, overshoot, 40, resizes,
                                 timing) is expected
