"""benchmarks/inception_small.py with tiny settings: generated ImageNet
shards through the Inception input pipeline, one real sync cluster (2 PS,
2 workers, N=1 + 1 backup) of a few pushes. The network is small_cnn at
16x16: tracing inception_v3_small alone takes 3 minutes on 2 shared cores,
so the Inception graph itself runs in the benchmark (results committed),
not here."""
import os

import pytest

from tests import benchmark_run

MODULE = "benchmarks.inception_small"


@pytest.mark.timeout(180)
def test_inception_small_smoke(tmp_path):
    out = str(tmp_path / "inception")
    code, output, report = benchmark_run.run(MODULE, [
        "--variants", "sync_b1", "--model", "small_cnn", "--image_size",
        "16", "--workers", "2", "--train_pushes", "6",
        "--eval_every", "2", "--warmup_pushes", "0", "--num_ps", "2",
        "--num_train_images", "16", "--out", out,
        "--run_root", str(tmp_path / "runs")], timeout=170)
    assert code == 0, output[-3000:]
    benchmark_run.assert_machine(report)
    [r] = report["results"]
    assert r["updates"] > 0 and r["workers"] == 2
    # Both parameter servers ran (their logs are the launcher's).
    assert r["num_ps"] == 2
    assert os.path.exists(os.path.join(r["run_dir"], "ps-1.log"))
    assert r["model"] == "small_cnn"
    assert r["updates_per_s"] > 0 and r["worker_steps_per_s"] > 0
    p = r["protocol"]
    assert p["cycles"] > 0 and p["compute_s_mean"] > 0
    assert 0 < p["compute_s_median"] <= max(p["compute_s_samples"])
    assert p["push_s_median"] > 0 and p["wait_s_median"] >= 0
    assert 0.0 < p["protocol_share"] < 1.0
    assert p["compute_share"] + p["protocol_share"] == pytest.approx(1.0)
    benchmark_run.assert_png(out + ".png")


@pytest.mark.timeout(60)
def test_inception_small_bad_input(tmp_path):
    code, output, _ = benchmark_run.run(
        MODULE, ["--variants", "sync_b3", "--out", str(tmp_path / "x")],
        timeout=50)
    assert code == 2 and "--variants: unknown sync_b3" in output
    assert "Traceback" not in output
