"""benchmarks/staleness.py with tiny settings: it trains, writes its JSON
and PNG, and refuses bad input with a usage error."""
import pytest

from tests import benchmark_run

MODULE = "benchmarks.staleness"


@pytest.mark.timeout(90)
def test_staleness_smoke(tmp_path):
    out = str(tmp_path / "staleness")
    code, output, report = benchmark_run.run(MODULE, [
        "--delays", "0,2", "--depths", "1,2", "--seeds", "0", "--steps",
        "60", "--eval_every", "20", "--out", out], timeout=80)
    assert code == 0, output[-3000:]
    benchmark_run.assert_machine(report)
    assert set(report["summary"]) == {"depth_1", "depth_2"}
    assert len(report["runs"]) == 4
    for run in report["runs"]:
        assert 0.0 <= run["final_top1"] <= 1.0
        assert [c[0] for c in run["curve"]] == [20, 40, 60]
    row = report["summary"]["depth_2"]["2"]
    assert row["each_seed"] and 0.0 <= row["mean"] <= 1.0
    benchmark_run.assert_png(out + ".png")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, message", [
    (["--delays", "a,b"], "expected comma-separated integers"),
    (["--delays", "-1"], "--delays must be >= 0"),
    (["--steps", "0"], "must be at least 1"),
    (["--steps", "4", "--delays", "8"], "smaller than --steps"),
])
def test_staleness_bad_input(tmp_path, args, message):
    code, output, _ = benchmark_run.run(
        MODULE, args + ["--out", str(tmp_path / "x")], timeout=50)
    assert code == 2 and message in output
    assert "Traceback" not in output
