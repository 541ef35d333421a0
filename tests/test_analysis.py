"""ps_sync.analysis on hand-made telemetry whose statistics are known.

The scenario: 3 workers, N=2, one run. Steps 0, 1, 2 close at 10, 12, 15,
so versions 1 and 2 are complete (published at 10 and 12). Worker 2 is the
straggler: its pushes are all dropped, and the launcher paused it from 11 to
12 (and once more at 20, when it pushed nothing).
"""
import json
import os

import pytest

from ps_sync import analysis

RUN = "r1"


def push(worker, tag, step, ready, computed, arrived, outcome, rank=0):
    return {"type": "push", "v": 1, "run_id": RUN, "step": step, "tag": tag,
            "worker": worker, "ready_at": ready, "computed_at": computed,
            "arrived_at": arrived, "outcome": outcome, "admitted_rank": rank,
            "quorum": 2}


def step(t, closed_at, admitted):
    return {"type": "step", "v": 1, "run_id": RUN, "step": t,
            "closed_at": closed_at, "opened_at": closed_at - 1,
            "admitted": admitted, "quorum": 2, "degraded": False,
            "closed_by": admitted[-1]}


PUSHES = [
    push(0, 0, 0, 0.0, 9.5, 9.6, "admitted", 1),
    push(1, 0, 0, 0.0, 9.9, 10.0, "admitted_closed", 2),
    push(2, 0, 1, 0.0, 10.5, 10.6, "dropped_stale"),
    push(0, 1, 1, 10.0, 10.9, 11.0, "admitted", 1),
    push(1, 1, 1, 10.0, 11.8, 12.0, "admitted_closed", 2),
    push(2, 1, 2, 10.6, 13.4, 13.5, "dropped_stale"),
    push(1, 2, 2, 12.0, 13.4, 13.5, "admitted", 1),
    push(0, 2, 2, 12.0, 14.8, 15.0, "admitted_closed", 2),
    push(2, 2, 3, 13.5, 15.4, 15.5, "dropped_stale"),
]
STEPS = [step(0, 10.0, [0, 1]), step(1, 12.0, [0, 1]), step(2, 15.0, [1, 0])]
STRAGGLER_LOG = [
    {"event": "pause", "task": "worker-2", "time": 11.0, "planned_s": 0.9},
    {"event": "resume", "task": "worker-2", "time": 12.0, "paused_at": 11.0,
     "paused_s": 1.0},
    {"event": "pause", "task": "worker-2", "time": 20.0, "planned_s": 0.5},
    {"event": "resume", "task": "worker-2", "time": 20.5, "paused_at": 20.0,
     "paused_s": 0.5},
]


def _approx(values):
    return pytest.approx(values, abs=1e-9)


def test_arrival_offsets_every_k_late_pushes_included():
    offsets, versions = analysis.arrival_offsets(PUSHES, STEPS, 3)
    assert versions == 2  # version 0 has no start, version 3 never closed
    assert offsets[0] == _approx([1.0, 1.5])
    assert offsets[1] == _approx([2.0, 3.0])
    assert offsets[2] == _approx([3.5, 3.5])  # the dropped straggler's
    stats = analysis.arrival_stats(offsets, versions, limit_s=3.0)
    assert [s["arrived_fraction"] for s in stats] == [1.0, 1.0, 1.0]
    assert stats[0]["p50"] == pytest.approx(1.25)
    assert stats[1]["mean"] == pytest.approx(2.5)
    assert stats[1]["p90"] == pytest.approx(2.9)
    assert [s["within_limit_fraction"] for s in stats] == [1.0, 1.0, 0.0]


def test_a_worker_busy_with_an_old_version_leaves_the_kth_missing():
    # Version 2 gets no gradient from worker 2.
    pushes = [p for p in PUSHES if not (p["worker"] == 2 and p["tag"] == 2)]
    offsets, versions = analysis.arrival_offsets(pushes, STEPS, 3)
    assert offsets[2] == _approx([3.5])
    stats = analysis.arrival_stats(offsets, versions)
    assert stats[2]["arrived_fraction"] == 0.5
    assert stats[2]["count"] == 1


def test_duplicates_count_once_per_worker():
    dup = push(1, 1, 1, 10.0, 11.9, 12.5, "dropped_duplicate")
    offsets, _ = analysis.arrival_offsets(PUSHES + [dup], STEPS, 3)
    assert offsets[1] == _approx([2.0, 3.0])


def test_step_and_compute_times_per_worker():
    times = analysis.step_times(PUSHES, 3)
    assert times[0]["step"] == _approx([1.0, 3.0])
    assert times[0]["compute"] == _approx([0.9, 2.8])
    assert times[1]["step"] == _approx([2.0, 1.5])
    assert times[2]["step"] == _approx([2.9, 2.0])
    assert times[2]["compute"] == _approx([2.8, 1.9])


def test_compute_vs_waiting():
    split = analysis.compute_vs_wait(PUSHES, 3)
    assert [s["compute_s"] for s in split] == _approx([3.7, 3.2, 4.7])
    assert [s["waiting_s"] for s in split] == _approx([1.6, 0.3, 0.2])
    assert split[1]["compute_share"] == pytest.approx(3.2 / 3.5)


def test_push_phases():
    # Worker 0 resumes 0.3 s after version 2 is published at 12.0.
    pushes = [dict(p, ready_at=12.3) if (p["worker"], p["tag"]) == (0, 2)
              else p for p in PUSHES]
    phases = analysis.push_phases(pushes, STEPS)
    assert phases["compute"]["count"] == 6  # pushes with a ready time
    assert phases["compute"]["max"] == pytest.approx(2.8)  # worker 2, tag 1
    assert phases["send"]["mean"] == pytest.approx(0.8 / 6)
    # Only worker 0 waited (after its admitted pushes of tags 0 and 1).
    assert phases["resume"]["count"] == 2
    assert phases["resume"]["max"] == pytest.approx(0.3)
    assert phases["resume"]["mean"] == pytest.approx(0.15)


def test_push_counts_and_admitted_share():
    counts = analysis.push_counts(PUSHES, 3)
    assert [c["pushes"] for c in counts] == [3, 3, 3]
    assert [c["admitted"] for c in counts] == [3, 3, 0]
    assert [c["dropped"] for c in counts] == [0, 0, 3]
    assert counts[2]["dropped_by_outcome"] == {"dropped_stale": 3}
    assert [c["admitted_share"] for c in counts] == [0.5, 0.5, 0.0]


def test_pauses_against_observed_delays():
    pauses = [{"task": "worker-2", "worker": 2, "start": 11.0, "end": 12.0,
               "paused_s": 1.0, "planned_s": 0.9},
              {"task": "worker-2", "worker": 2, "start": 20.0, "end": 20.5,
               "paused_s": 0.5, "planned_s": 0.5}]
    delays = analysis.pause_delays(PUSHES, pauses)
    # Worker 2 arrived at 10.6, 13.5 and 15.5: the gap over the pause is
    # 2.9 s, its other gap 2.0 s.
    assert delays[0]["gaps_affected"] == 1
    assert delays[0]["baseline_gap_s"] == pytest.approx(2.0)
    assert delays[0]["observed_delay_s"] == pytest.approx(0.9)
    assert delays[0]["next_push_outcome"] == "dropped_stale"
    # After its last push: nothing to observe.
    assert delays[1]["observed_delay_s"] is None
    assert delays[1]["gaps_affected"] == 0


def test_update_rate_pools_restarted_runs():
    restarted = [dict(s, run_id="r2", closed_at=s["closed_at"] + 100)
                 for s in STEPS[:2]]
    # r1: 2 updates over 5 s; r2: 1 over 2 s.
    assert analysis.update_rate(STEPS) == pytest.approx(0.4)
    assert analysis.update_rate(STEPS + restarted) == pytest.approx(3 / 7)


def _write_run(run_dir):
    os.makedirs(run_dir, exist_ok=True)
    for name, records in (("pushes.jsonl", PUSHES), ("steps.jsonl", STEPS),
                          ("stragglers.jsonl", STRAGGLER_LOG)):
        with open(os.path.join(run_dir, name), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    with open(os.path.join(run_dir, "spec.json"), "w") as f:
        json.dump({"sync": {"replicas_to_aggregate": 2},
                   "_resolved": {"cluster": {"worker": ["a", "b", "c"]}}}, f)


def test_run_directory_report_and_plots(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    _write_run(run_dir)
    assert analysis.main([run_dir, "--limit_s", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 workers, N=2 per update (b=1)" in out
    assert ("Injected pauses: 2, 1.5 s in total; 1 (1.0 s) while the worker "
            "trained, observed delay 0.9 s") in out
    with open(os.path.join(run_dir, "analysis.json")) as f:
        result = json.load(f)
    assert result["num_workers"] == 3 and result["replicas_to_aggregate"] == 2
    assert result["updates"] == 3 and result["pushes"] == 9
    assert result["wasted_share"] == pytest.approx(3 / 9)
    assert result["updates_per_s"] == pytest.approx(0.4)
    assert [a["within_limit_fraction"] for a in result["arrival"]] == [
        1.0, 0.5, 0.0]
    assert result["per_worker"][2]["step_time"]["p50"] == pytest.approx(2.45)
    assert result["pauses"]["matched"] == 1
    assert result["pauses"]["observed_s"] == pytest.approx(0.9)
    assert result["pauses"]["matched_injected_s"] == pytest.approx(1.0)
    for name in ("gradient_arrivals", "worker_step_times",
                 "worker_pushes_and_time", "pauses_vs_delays"):
        path = result["plots"][name]
        assert path == os.path.join(run_dir, "plots", name + ".png")
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(run_dir, "analysis.txt")) as f:
        assert f.read() in out


def test_missing_run_dir_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        analysis.main([str(tmp_path / "nope")])
    assert e.value.code == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        analysis.main([str(tmp_path)])
    assert e.value.code == 2
    assert "pushes.jsonl" in capsys.readouterr().err
