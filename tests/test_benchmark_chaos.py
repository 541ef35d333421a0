"""benchmarks/chaos.py: the per-fault accounting on known records, and its
usage errors (the benchmark itself runs two launched jobs: not a test)."""
import json
import os
import subprocess
import sys

from benchmarks import chaos
from ps_sync.local_cluster import REPO_ROOT


def _write(path, records):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def test_faults_are_accounted_from_the_run_records(tmp_path):
    # Run "a" applies steps 0..24 (closed at t = 100 + step), the PS dies at
    # t = 125, run "b" restores update 20 and closes it at t = 140.
    steps = ([{"run_id": "a", "step": i, "closed_at": 100.0 + i}
              for i in range(25)]
             + [{"run_id": "b", "step": 20 + i, "closed_at": 140.0 + i}
                for i in range(10)])
    pushes = [{"worker": 2, "arrived_at": 146.5, "outcome": "dropped_stale"},
              {"worker": 2, "arrived_at": 147.0, "outcome": "admitted"},
              {"worker": 1, "arrived_at": 146.0, "outcome": "admitted"}]
    _write(tmp_path / "steps.jsonl", steps)
    _write(tmp_path / "pushes.jsonl", pushes)
    faults = [{"time": 125.0, "task": "ps-0", "role": "ps"},
              {"time": 145.5, "task": "worker-2", "role": "worker"}]
    rows, curve = chaos.analyse(str(tmp_path), faults, k=10)
    ps, worker = rows
    assert ps["updates_lost"] == 5          # 20..24 applied again
    assert ps["recover_s"] == 15.0          # first update of run b
    assert ps["gap_s"] == 140.0 - 124.0
    assert worker["updates_lost"] == 0
    assert worker["recover_s"] == 1.5       # its first admitted gradient
    assert worker["gap_s"] == 1.0           # updates never stopped
    assert curve[0] == (100.0, 0) and len(curve) == 35
    text = chaos.report({"faults": rows,
                         "fault_free": {"wall_s": 60, "updates": 35,
                                        "top1": 0.97},
                         "chaos": {"wall_s": 90, "updates": 35,
                                   "top1": 0.96}})
    assert "| 1 | ps-0 | 5 | 15.0 | 16.0 |" in text
    assert "| chaos | 90 | 35 | 0.960 |" in text


def test_bad_weights_are_a_usage_error():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.chaos", "--weights", "gpu=1"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert proc.returncode == 2
    assert "--weights: expected role=odds pairs" in proc.stderr
    assert "Traceback" not in proc.stderr
