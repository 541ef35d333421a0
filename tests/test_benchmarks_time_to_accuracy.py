"""benchmarks/time_to_accuracy.py with tiny settings: one real local
cluster (sync, 2 workers, N=2 with the adaptive quorum down to 1, the
default straggler on worker-1, an evaluator task) for half an epoch; the
JSON holds the run, its gradients per update from the telemetry, its
accuracy curve and its summary."""
import os

import pytest

from tests import benchmark_run

MODULE = "benchmarks.time_to_accuracy"


@pytest.mark.timeout(180)
def test_time_to_accuracy_smoke(tmp_path):
    out = str(tmp_path / "tta")
    code, output, report = benchmark_run.run(MODULE, [
        "--variants", "sync_adaptive", "--workers", "2", "--backups", "1",
        "--seeds", "0", "--train_epochs", "0.5", "--eval_every_examples",
        "320", "--target", "0.5", "--out", out,
        "--run_root", str(tmp_path / "runs")], timeout=170)
    assert code == 0, output[-3000:]
    benchmark_run.assert_machine(report)
    assert report["variants"] == {"sync_adaptive": {
        "mode": "sync", "replicas_to_aggregate": 2,
        "min_replicas_to_aggregate": 1, "workers": 2}}
    assert report["stragglers"][0]["task"] == "worker-1"
    [run] = report["runs"]
    assert run["updates"] > 0 and 0.0 <= run["final_top1"] <= 1.0
    # Every applied update took 1 or 2 gradients, as many as updates.
    sizes = run["admitted_per_update"]
    assert set(sizes) <= {"1", "2"} and sum(sizes.values()) == run["updates"]
    assert 1.0 <= run["admitted_per_update_mean"] <= 2.0
    assert run["train_time_s"] > 0 and run["grpc_stalls"] >= 0
    # Update 0 and the final weights from the chief, the evaluator task's
    # checkpoints between (at least the final one), in time order.
    assert len(run["curve"]) >= 3, run["curve"]
    times = [c[0] for c in run["curve"]]
    assert times == sorted(times) and run["curve"][0][1] == 0
    assert os.path.exists(os.path.join(run["run_dir"], "eval_sidecar.jsonl"))
    # The last point at or before the epoch budget.
    within = [c for c in run["curve"] if c[1] <= run["budget_updates"]]
    assert run["top1_at_budget"] == within[-1][2]
    summary = report["summary"]["sync_adaptive"]
    assert summary["runs"] == 1 and 0.0 <= summary["final_top1_mean"] <= 1.0
    benchmark_run.assert_png(out + ".png")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, message", [
    (["--variants", "sync_b7"], "--variants: unknown sync_b7"),
    (["--adaptive_min", "4"], "--adaptive_min must be between 1 and"),
    (["--eval", "later"], "--eval: invalid choice: 'later'"),
    (["--backups", "3"], "--backups must be between 0 and workers-1"),
    (["--target", "1.5"], "must be in (0, 1]"),
    (["--stragglers", "/nonexistent.json"], "--stragglers: no such file"),
])
def test_time_to_accuracy_bad_input(tmp_path, args, message):
    code, output, _ = benchmark_run.run(
        MODULE, args + ["--out", str(tmp_path / "x")], timeout=50)
    assert code == 2 and message in output
    assert "Traceback" not in output
