"""benchmarks/sync_overhead.py with tiny settings: ps_sync (b=0) and async
at two batch sizes, one second each, every one in a fresh interpreter with
its own in-process cluster (four interpreters; all four configurations at
two batch sizes took 4 minutes on 2 shared cores); and the paired mode,
every configuration, TF1 included, at two batch sizes in one interpreter."""
import os
import subprocess
import sys

import pytest

from benchmarks import sync_overhead
from tests import benchmark_run

MODULE = "benchmarks.sync_overhead"
CONFIGS = {"ps_sync", "async"}


def _run_ok(out, args):
    """Run the benchmark with `args` writing to `out`; its report, checked
    for a clean exit and the machine record."""
    code, output, report = benchmark_run.run(
        MODULE, args + ["--out", out], timeout=290)
    assert code == 0, output[-3000:]
    benchmark_run.assert_machine(report)
    return report


@pytest.mark.timeout(300)
def test_sync_overhead_two_batch_sizes(tmp_path):
    out = str(tmp_path / "overhead")
    report = _run_ok(out, ["--workers", "2", "--seconds", "1",
                           "--batch_sizes", "8,64",
                           "--configs", "ps_sync,async"])
    assert set(report["results_by_batch"]) == {"8", "64"}
    for batch, results in report["results_by_batch"].items():
        assert set(results) == CONFIGS
        for r in results.values():
            assert r["updates"] > 0 and r["pushes_per_s"] > 0
        phases = results["ps_sync"]["phases_ms"]
        assert set(phases) == {"compute", "send", "resume"}
        assert phases["compute"] > 0 and phases["send"] > 0
        assert "phases_ms" not in results["async"]
        assert set(report["ratios_by_batch"][batch]) == {
            "ps_sync_vs_async_pushes"}
    assert report["results"] == report["results_by_batch"]["8"]
    benchmark_run.assert_png(out + ".png")


@pytest.mark.timeout(300)
def test_sync_overhead_paired_windows_over_one_cluster(tmp_path):
    out = str(tmp_path / "paired")
    report = _run_ok(out, ["--workers", "2", "--seconds", "1",
                           "--paired_rounds", "2", "--quorums", "2,1",
                           "--batch_sizes", "8,64", "--layers", "2"])
    assert report["args"]["layers"] == 2  # 6 variables, TF1's too
    paired = report["paired"]
    assert paired["quorums"] == [2, 1] and paired["batch_sizes"] == [8, 64]
    assert set(paired["by_batch"]) == {"8", "64"}
    for one in paired["by_batch"].values():
        windows, summary = one["windows"], one["summary"]
        assert set(windows) == set(summary) == {
            "async", "ps_sync_n2", "ps_sync_n1", "tf1_sync"}
        for name, ws in windows.items():
            assert len(ws) == 2  # one window per round
            for w in ws:
                assert w["pushes"] > 0 and w["seconds"] >= 1
                assert w["cpu_ms_per_push"] > 0
        # An update takes N pushes (more were tried: stale, duplicate or
        # late ones, and a step left open at a window's edge); TF1 applies
        # every push of a step (N = W = 2), give or take the steps open at
        # the window's two edges.
        for name, n in (("ps_sync_n2", 2), ("ps_sync_n1", 1)):
            for w in windows[name]:
                assert 1 <= w["updates"] and n * w["updates"] <= w["pushes"] + n
        for w in windows["tf1_sync"]:
            assert abs(2 * w["updates"] - w["pushes"]) <= 4
        for name, other, key, field in (
                ("ps_sync_n2", "async", "pushes", "pushes_vs_async"),
                ("ps_sync_n1", "async", "pushes", "pushes_vs_async"),
                ("tf1_sync", "async", "pushes", "pushes_vs_async"),
                ("ps_sync_n2", "tf1_sync", "updates", "updates_vs_tf1")):
            ratios = [(w[key] / w["seconds"]) / (o[key] / o["seconds"])
                      for w, o in zip(windows[name], windows[other])]
            assert summary[name][field] == pytest.approx(
                sum(ratios) / 2)  # the median of two
        assert "pushes_vs_async" not in summary["async"]
        assert "updates_vs_tf1" not in summary["tf1_sync"]
    benchmark_run.assert_png(out + ".png")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("ps_own_core,num_ps", [(False, 1), (True, 1),
                                                (True, 2)])
def test_sync_overhead_paired_over_process_clusters(tmp_path, ps_own_core,
                                                    num_ps):
    """--processes: two clusters of real task processes (one for async and
    ps_sync, one for TF1), their CPU counted with the coordinator's; with
    --ps_own_core the PS tasks on one CPU, the rest on the others; with
    --num_ps 2 two PS tasks per cluster, the Inception recipe's RMSProp on
    its decaying rate and a moving average of the weights (TF1's
    RMSPropOptimizer and variable_averages, use_ema with the update cut per
    server)."""
    out = str(tmp_path / "processes")
    ema = (["--ema_momentum", "0.9", "--optimizer", "inception"]
           if num_ps == 2 else [])
    report = _run_ok(out, ["--workers", "2", "--seconds", "1",
                           "--paired_rounds", "1", "--quorums", "2",
                           "--batch_sizes", "8", "--processes"]
                     + (["--ps_own_core"] if ps_own_core else [])
                     + ["--num_ps", str(num_ps)] + ema)
    assert report["args"]["processes"] is True
    assert report["args"]["num_ps"] == num_ps
    assert report["args"]["ema_momentum"] == (0.9 if ema else 0.0)
    assert report["args"]["optimizer"] == ("inception" if ema else "sgd")
    affinity = report["paired"]["affinity"]
    if ps_own_core:
        ps_cpus, other_cpus = map(sorted, sync_overhead.own_core_split())
        tasks = dict({"ps-%d" % i: ps_cpus for i in range(num_ps)},
                     **{"worker-0": other_cpus, "worker-1": other_cpus})
        assert affinity == dict(
            {"coordinator": other_cpus},
            **{"%s/%s" % (cluster, task): cpus
               for cluster in ("tf2", "tf1_batch8")
               for task, cpus in tasks.items()})
    else:
        assert affinity is None
    windows = report["paired"]["by_batch"]["8"]["windows"]
    assert set(windows) == {"async", "ps_sync_n2", "tf1_sync"}
    for ws in windows.values():
        w, = ws
        assert w["pushes"] > 0 and w["seconds"] >= 1
        # The workers compute in their own processes: most of the CPU is
        # theirs and the PS's, not this coordinator's.
        assert 0 < w["task_cpu_ms_per_push"] < w["cpu_ms_per_push"]
        assert w["task_cpu_ms_per_push"] > 0.5 * w["cpu_ms_per_push"]
        # Split by where it was spent, adding up to the whole.
        assert w["ps_cpu_ms_per_push"] > 0 and w["worker_cpu_ms_per_push"] > 0
        assert w["ps_cpu_ms_per_push"] + w["worker_cpu_ms_per_push"] == (
            pytest.approx(w["task_cpu_ms_per_push"]))
        assert w["task_cpu_ms_per_push"] + w["coordinator_cpu_ms_per_push"] == (
            pytest.approx(w["cpu_ms_per_push"]))
    summary = report["paired"]["by_batch"]["8"]["summary"]
    assert summary["ps_sync_n2"]["ps_cpu_ms_per_push"] == (
        windows["ps_sync_n2"][0]["ps_cpu_ms_per_push"])
    w, = windows["ps_sync_n2"]
    assert 1 <= w["updates"] and 2 * w["updates"] <= w["pushes"] + 2
    w, = windows["tf1_sync"]
    assert abs(2 * w["updates"] - w["pushes"]) <= 4
    benchmark_run.assert_png(out + ".png")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, message", [
    (["--batch_sizes", "8,x"], "expected comma-separated integers"),
    (["--batch_sizes", "0"], "--batch_sizes must be positive"),
    (["--workers", "1"], "--workers must be at least 2"),
    (["--configs", "tf2"], "--configs: unknown tf2"),
    (["--paired_rounds", "-1"], "--paired_rounds must be 0 (off) or"),
    (["--workers", "2", "--quorums", "3"],
     "--quorums must be between 1 and --workers (2)"),
    (["--processes"], "--processes needs paired mode (--paired_rounds > 0)"),
    (["--paired_rounds", "1", "--ps_own_core"],
     "--ps_own_core needs --processes"),
    (["--paired_rounds", "1", "--num_ps", "2"],
     "--num_ps above 1 needs --processes"),
    (["--num_ps", "0"], "must be at least 1, got 0"),
    (["--layers", "-1"], "must be at least 0, got -1"),
    (["--ema_momentum", "1"], "expected a number in [0, 1), got '1'"),
    (["--ema_momentum", "x"], "expected a number in [0, 1), got 'x'"),
    (["--optimizer", "adam"], "invalid choice: 'adam' (choose from"),
])
def test_sync_overhead_bad_input(tmp_path, args, message):
    code, output, _ = benchmark_run.run(
        MODULE, args + ["--out", str(tmp_path / "x")], timeout=50)
    assert code == 2 and message in output
    assert "Traceback" not in output


@pytest.mark.timeout(60)
def test_pin_moves_every_thread_of_a_process():
    """`pin` sets the CPUs of each thread a process has (a thread's own
    affinity is what the scheduler reads), and reads them back."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs to tell a pinned process from a free one")
    ps_cpus, other_cpus = sync_overhead.own_core_split()
    assert ps_cpus.isdisjoint(other_cpus) and len(ps_cpus) == 1
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import threading, time\n"
         "for _ in range(3):\n"
         "    threading.Thread(target=time.sleep, args=(60,),"
         " daemon=True).start()\n"
         "print('up', flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "up"
        tids = [int(t) for t in os.listdir("/proc/%d/task" % child.pid)]
        assert len(tids) == 4
        assert sync_overhead.pin(child.pid, ps_cpus) == sorted(ps_cpus)
        assert all(os.sched_getaffinity(t) == ps_cpus for t in tids)
        assert sync_overhead.pin(child.pid, other_cpus) == sorted(other_cpus)
        assert all(os.sched_getaffinity(t) == other_cpus for t in tids)
    finally:
        child.kill()
        child.wait()
