"""benchmarks/paper_scale_sim.py: simulator predictions for the paper's
configurations, checked on worker times whose answer is known."""
import json

import pytest

from tests import benchmark_run

MODULE = "benchmarks.paper_scale_sim"


def _measured(tmp_path, samples):
    path = tmp_path / "inception_small.json"
    path.write_text(json.dumps({"results": [
        {"mode": "async", "protocol": None},
        {"mode": "sync", "protocol": {"compute_s_samples": samples}}]}))
    return str(path)


@pytest.mark.timeout(120)
def test_constant_times_give_the_closed_form_rates(tmp_path):
    out = str(tmp_path / "scale")
    code, output, report = benchmark_run.run(MODULE, [
        "--measured", _measured(tmp_path, [0.5, 0.5, 0.5]), "--updates",
        "20", "--seeds", "1", "--push_cost_ms", "0", "--apply_cost_ms", "0",
        "--out", out], timeout=110)
    assert code == 0, output[-3000:]
    rows = [r for r in report["rows"] if r["times"] == "measured"]
    assert {(r["n"], r["b"]) for r in rows} == {(50, 4), (96, 4), (200, 10)}
    for r in rows:
        machines = r["n"] + r["b"]
        if r["mode"] == "async":
            # Every push applied, each worker one every 0.5 s.
            assert r["updates_per_s"] == pytest.approx(machines / 0.5,
                                                       rel=0.05)
        else:
            # All arrive together every 0.5 s: one update of the quorum,
            # the b others dropped.
            quorum = r["n"] if r["mode"] == "sync" else machines
            assert r["updates_per_s"] == pytest.approx(2.0, rel=1e-6)
            assert r["mean_quorum"] == quorum
            assert r["images_per_s"] == pytest.approx(2.0 * quorum * 32)
            assert r["wasted_share"] == pytest.approx(
                (machines - quorum) / machines, abs=0.01)
    # The paper's heavy tail: backups beat waiting for every machine.
    tail = {(r["n"], r["mode"]): r for r in report["rows"]
            if r["times"] == "paper_tail"}
    for n in (50, 96, 200):
        assert (tail[(n, "sync")]["images_per_s"]
                > tail[(n, "sync_no_backup")]["images_per_s"])
    benchmark_run.assert_png(out + ".png")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("contents, message", [
    (None, "No such file"),
    ("{", "not JSON"),
    ('{"results": [{"mode": "sync"}]}', "no results[*].protocol"),
])
def test_bad_measured_file_is_a_usage_error(tmp_path, contents, message):
    path = tmp_path / "m.json"
    if contents is not None:
        path.write_text(contents)
    code, output, _ = benchmark_run.run(MODULE, [
        "--measured", str(path), "--out", str(tmp_path / "x")], timeout=50)
    assert code == 2 and message in output and str(path) in output
    assert "Traceback" not in output
