"""`recommend` on cases whose answer is known, its curve and its CLI errors
(pure Python, small simulations)."""
import json
import math

import pytest

from ps_sync import recommend
from ps_sync import simulator as sim


def _curve(steps_min=1000, noise_batch=100):
    return recommend.Curve({"steps_min": steps_min,
                            "noise_batch": noise_batch})


def test_equal_deterministic_times_need_no_backup():
    # Steps cost the same with or without backups; backups only shrink the
    # batch, so every b > 0 needs more steps.
    rows, best = recommend.evaluate(8, sim.Fixed(1.0), _curve(), 32,
                                    range(4), updates=20, seeds=1)
    assert (best["n"], best["b"]) == (8, 0)
    assert [r["mean_step_s"] for r in rows] == pytest.approx([1.0] * 4)
    assert [r["vs_best"] > 1 for r in rows] == [False, True, True, True]


def test_one_dead_slow_machine_needs_a_backup():
    times = sim.PerWorker([sim.Fixed(1.0)] * 7 + [sim.Fixed(10.0)])
    rows, best = recommend.evaluate(8, times, _curve(), 32, range(4),
                                    updates=20, seeds=1)
    assert best["b"] >= 1
    assert rows[0]["mean_step_s"] == pytest.approx(10.0)
    assert rows[1]["mean_step_s"] == pytest.approx(1.0)
    # With one backup the slow machine is absorbed: more only costs steps.
    assert best["b"] == 1


def test_critical_batch_curve():
    curve = _curve(1000, 100)
    assert curve.steps(100) == pytest.approx(2000)
    assert curve.steps(400) == pytest.approx(1250)


def test_points_curve_interpolates_log_log(tmp_path):
    path = tmp_path / "curve.json"
    path.write_text(json.dumps({"source": "measured", "points": [
        {"total_batch": 100, "steps": 4000},
        {"total_batch": 400, "steps": 1000},
        {"total_batch": 1600, "steps": 500}]}))
    curve = recommend.load_curve(str(path))
    assert curve.source == "measured"
    assert curve.steps(100) == pytest.approx(4000)
    assert curve.steps(200) == pytest.approx(2000)        # slope -1
    assert curve.steps(800) == pytest.approx(1000 / math.sqrt(2))
    assert curve.steps(3200) == pytest.approx(500 / math.sqrt(2))  # extrap.


@pytest.mark.parametrize("content, message", [
    ("{", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"points": [{"total_batch": 1, "steps": 2}]}', "field points"),
    ('{"points": [{"total_batch": 1}, {"total_batch": 2}]}', "numeric"),
    ('{"steps_min": 10}', "steps_min and noise_batch"),
    ('{"steps_min": -1, "noise_batch": 3}', "steps_min > 0"),
])
def test_bad_curve_files_are_named(tmp_path, content, message):
    path = tmp_path / "curve.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        recommend.load_curve(str(path))
    assert str(path) in str(info.value)


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "rec.json"
    assert recommend.main(["--machines", "6", "--times", "fixed:1.0",
                           "--max_backups", "2", "--updates", "10",
                           "--seeds", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "recommended: N=6, b=0" in text
    assert "assumed" in text                    # the default curve says so
    saved = json.loads(out.read_text())
    assert saved["recommended"] == {"n": 6, "b": 0}
    assert [r["b"] for r in saved["rows"]] == [0, 1, 2]


@pytest.mark.parametrize("argv, message", [
    (["--times", "gamma:1"], "--times gamma:1: expected paper"),
    (["--times", "lognormal:1"], "--times lognormal:1: expected"),
    (["--times", "run:/nonexistent/run"], "run directory does not exist"),
    (["--machines", "4", "--max_backups", "4"], "--max_backups must be"),
    (["--curve", "/nonexistent/curve.json"], "cannot read it"),
])
def test_cli_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        recommend.main(argv + ["--updates", "5", "--seeds", "1"])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
