"""The main job, `python -m launch` on its default spec, end to end: a local
cluster (1 PS, 3 workers, N=2 + 1 backup, worker-2 paused by the launcher)
trains small_cnn on digits within 5 minutes on 2 cores to a test accuracy of
at least 0.95, prints progress, a summary table and its run directory, and
leaves summary.json and the plots there."""
import json
import os
import subprocess
import sys
import time

import pytest

from ps_sync.local_cluster import REPO_ROOT

TIME_BOUND_S = 300.0  # the bound, start to finish
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(TIME_BOUND_S + 60)
def test_default_job(tmp_path):
    run_dir = str(tmp_path / "run")
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "launch", "--run-dir", run_dir],
        cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=TIME_BOUND_S + 30, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert elapsed < TIME_BOUND_S, "took %.0f s" % elapsed

    with open(os.path.join(run_dir, "summary.json")) as f:
        s = json.load(f)
    # What the default spec asks for.
    assert (s["model"], s["dataset"], s["mode"]) == ("small_cnn", "digits",
                                                     "sync")
    assert s["total_num_replicas"] == 3 and s["backup_workers"] >= 1
    assert s["test_accuracy"]["top1"] >= 0.95
    assert s["updates"] >= s["target_updates"] and s["updates_per_s"] > 0
    # The summary table's content, per worker.
    rows = s["per_worker"]
    assert [w["worker"] for w in rows] == [0, 1, 2]
    assert all(w["pushes"] == w["admitted"] + w["dropped"] for w in rows)
    assert all(w["compute_s"] > 0 and w["waiting_s"] > 0 for w in rows)
    assert s["dropped"] > 0  # the backup's gradients were dropped
    # The launcher paused worker-2, and the analysis saw it.
    assert s["pauses"]["count"] >= 1 and s["pauses"]["injected_s"] > 0
    assert s["pauses"]["matched"] >= 1
    for name in ("accuracy", "gradient_arrivals"):
        path = s["plots"][name]
        assert os.path.dirname(path) == os.path.join(run_dir, "plots")
        with open(path, "rb") as f:
            assert f.read(8) == PNG
    # What the user sees: progress while it runs, the table, the path.
    assert "[chief-0] progress: update" in out
    assert "[chief-0] eval: update" in out
    assert "updates/s" in out
    assert "worker  pushes  admitted  dropped  share  computing s  waiting s" \
        in out
    assert "run directory: %s" % run_dir in out
    assert "summary: %s" % os.path.join(run_dir, "summary.json") in out
