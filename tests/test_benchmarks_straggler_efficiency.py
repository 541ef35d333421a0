"""benchmarks/straggler_efficiency.py with tiny settings: a clean and an
injected real local cluster (2 workers, N=1 + 1 backup), and the ratio of
measured to ideal step time computed from their run directories."""
import pytest

from tests import benchmark_run

MODULE = "benchmarks.straggler_efficiency"


@pytest.mark.timeout(240)
def test_straggler_efficiency_smoke(tmp_path):
    out = str(tmp_path / "eff")
    code, output, report = benchmark_run.run(MODULE, [
        "--workers", "2", "--backups", "1", "--seeds", "0",
        "--train_updates", "16", "--warmup_steps", "2", "--out", out,
        "--run_root", str(tmp_path / "runs")], timeout=230)
    assert code == 0, output[-3000:]
    benchmark_run.assert_machine(report)
    [r] = report["results"]
    assert (r["workers"], r["replicas_to_aggregate"], r["backups"]) == \
        (2, 1, 1)
    assert r["clean_steps"] > 0 and r["injected_steps"] > 0
    assert r["base_step_s"] > 0 and r["measured_step_s"] > 0
    assert r["ideal_step_s"] >= r["base_step_s"] - 1e-9  # a mean of sums
    assert r["efficiency_ratio"] > 0 and r["slowdown_vs_clean"] > 0
    assert all(p["ideal_s"] == pytest.approx(r["base_step_s"]
                                             + p["nth_delay_s"])
               for p in r["per_step"])
    assert report["summary"]["b1"]["efficiency_ratio_each"] == \
        [r["efficiency_ratio"]]
    benchmark_run.assert_png(out + ".png")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, message", [
    (["--backups", "4"], "--backups must be between 0 and workers-1"),
    (["--train_updates", "5", "--warmup_steps", "5"], "--warmup_steps"),
    (["--seeds", ""], "expected at least one integer"),
])
def test_straggler_efficiency_bad_input(tmp_path, args, message):
    code, output, _ = benchmark_run.run(
        MODULE, args + ["--out", str(tmp_path / "x")], timeout=50)
    assert code == 2 and message in output
    assert "Traceback" not in output
