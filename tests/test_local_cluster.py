"""ps_sync.local_cluster: real multi-process clusters on 127.0.0.1.

The test process never imports TensorFlow: every TF process is a task (or a
fresh interpreter), so clusters are torn down for real after each test.
"""
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ps_sync import local_cluster
from ps_sync.local_cluster import LocalCluster, REPO_ROOT, TaskFailed
from ps_sync.testing import fresh_interpreter

PROGRAM = [sys.executable, "-m", "tests.test_launch_program"]


def processes_of_run(run_dir):
    """Pids of live processes whose environment names this run directory:
    finds tasks and anything they started, without psutil."""
    found = []
    needle = ("PS_SYNC_RUN_DIR=%s" % run_dir).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as f:
                environ = f.read().split(b"\0")
            with open("/proc/%s/stat" % entry) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and state != "Z":
            found.append(int(entry))
    return found


def assert_all_gone(pids, run_dir):
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert processes_of_run(run_dir) == []


def proc_state(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.timeout(90)
def test_chief_trains_with_prefixed_logs_and_leaves_no_process(tmp_path):
    echo = io.StringIO()
    cluster = LocalCluster(num_workers=2, num_ps=1, run_dir=str(tmp_path),
                           chief=PROGRAM + ["--steps=4"], echo=echo)
    assert cluster.run(timeout=80) == 0
    pids = list(cluster.pids().values())
    assert len(pids) == 4
    assert_all_gone(pids, str(tmp_path))

    with open(tmp_path / "chief-result-1.json") as f:
        result = json.load(f)
    assert result["workers"] == 2
    assert result["loss"] == result["loss"]  # a real number, not NaN
    spec = result["tf_config"]["cluster"]
    assert sorted(spec) == ["chief", "ps", "worker"]
    assert result["tf_config"]["task"] == {"type": "chief", "index": 0}
    assert result["env"]["GRPC_FAIL_FAST"] == "use_caller"
    assert result["env"]["TF_GRPC_DEFAULT_OPTIONS"] == (
        "grpc.keepalive_time_ms=300000,grpc.keepalive_timeout_ms=20000")
    output = echo.getvalue()
    for name in ("ps-0", "worker-0", "worker-1"):
        assert "[%s] " % name in output
        with open(tmp_path / (name + ".log")) as f:
            log = f.read()
        assert "ps_sync.server ready:" in log
        assert "stopping on SIGTERM" in log
    assert "[chief-0] RESULT " in output
    events = [json.loads(line) for line in open(tmp_path / "events.jsonl")]
    assert [e["task"] for e in events if e["event"] == "start"] == [
        "ps-0", "worker-0", "worker-1", "chief-0"]


@pytest.mark.timeout(60)
def test_chief_failure_propagates_its_exit_code(tmp_path):
    echo = io.StringIO()
    cluster = LocalCluster(
        num_workers=1, num_ps=1, run_dir=str(tmp_path), echo=echo,
        chief=PROGRAM + ["--fail_before_training", "--exit_code=3"])
    assert cluster.run(timeout=50) == 3
    assert "chief-0 FAILED (exit code 3); last output:" in echo.getvalue()
    assert "failing on purpose with code 3" in echo.getvalue()
    assert_all_gone(cluster.pids().values(), str(tmp_path))


@pytest.mark.timeout(60)
def test_kill_restart_pause_resume_without_tensorflow_here(tmp_path):
    with LocalCluster(num_workers=2, num_ps=1, run_dir=str(tmp_path),
                      echo=False) as cluster:
        worker = cluster.task("worker", 1)
        old_pid, address = worker.pid, worker.address
        assert cluster.kill("worker-1") == -signal.SIGKILL
        assert [t.name for t in cluster.poll()] == ["worker-1"]
        assert cluster.poll() == []  # reported once
        cluster.restart("worker-1")
        assert worker.pid != old_pid and worker.address == address
        assert worker.starts == 2 and local_cluster._accepts(address)
        with pytest.raises(ProcessLookupError):
            os.kill(old_pid, 0)

        cluster.pause("worker-0")
        assert proc_state(cluster.task("worker-0").pid) == "T"
        cluster.resume("worker-0")
        assert proc_state(cluster.task("worker-0").pid) in "RS"
        cluster.pause("worker-0")  # stop() must also end a paused task
        pids = list(cluster.pids().values())
    assert_all_gone(pids, str(tmp_path))
    events = [json.loads(line)["event"] for line in open(tmp_path / "events.jsonl")]
    assert events.count("pause") == 2 and events.count("resume") == 1
    with open(tmp_path / "worker-1.log") as f:
        assert f.read().count("=== worker-1 start") == 2


@pytest.mark.timeout(60)
def test_server_that_cannot_start_is_reported_and_nothing_is_left(tmp_path):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = LocalCluster(
            num_workers=1, num_ps=1, run_dir=str(tmp_path), echo=False,
            addresses={"ps": ["127.0.0.1:%d" % port]})
        with pytest.raises(TaskFailed) as info:
            cluster.start()
    assert info.value.task.name == "ps-0"
    assert "ps-0 exited during startup" in str(info.value)
    assert_all_gone(cluster.pids().values(), str(tmp_path))


def test_tf_config_per_task_and_evaluator_outside_training_cluster(tmp_path):
    cluster = LocalCluster(num_workers=2, num_ps=1, run_dir=str(tmp_path),
                           chief=["true"], evaluator=["true"],
                           env={"A": "all"}, task_env={"worker": {"A": "w"},
                                                      "worker-1": {"A": "w1"}},
                           grpc_options={"grpc.keepalive_time_ms": 5000},
                           echo=False)
    spec = cluster.cluster_spec()
    assert sorted(spec) == ["chief", "ps", "worker"] and len(spec["worker"]) == 2
    assert len(set(sum(spec.values(), []))) == 4  # distinct ports
    worker = json.loads(cluster.tf_config("worker", 1))
    assert worker == {"cluster": spec, "task": {"type": "worker", "index": 1}}
    evaluator = json.loads(cluster.tf_config("evaluator", 0))
    assert sorted(evaluator["cluster"]) == ["chief", "evaluator", "ps", "worker"]
    env = cluster._task_env_vars("worker", 1)
    assert (env["A"], cluster._task_env_vars("worker", 0)["A"],
            cluster._task_env_vars("ps", 0)["A"]) == ("w1", "w", "all")
    assert env["TF_GRPC_DEFAULT_OPTIONS"] == (
        "grpc.keepalive_time_ms=5000,grpc.keepalive_timeout_ms=20000")
    assert env["PS_SYNC_RUN_DIR"] == str(tmp_path)


def _coordinator_in_child(steps):
    """Runs in a fresh interpreter: servers as processes, coordinator here."""
    cluster = LocalCluster(num_workers=2, num_ps=1, echo=False)
    with cluster:
        os.environ.update(cluster.coordinator_env())
        import ps_sync.keras_env  # noqa: F401
        import tensorflow as tf
        strategy = tf.distribute.experimental.ParameterServerStrategy(
            cluster.cluster_resolver())
        coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
        with strategy.scope():
            total = tf.Variable(0.0)

        @tf.function
        def step():
            total.assign_add(1.0)
            return tf.distribute.coordinator.experimental_get_current_worker_index()

        results = [coordinator.schedule(step) for _ in range(steps)]
        coordinator.join()
        workers = sorted({int(r.fetch()) for r in results})
        value = float(total.numpy())
        pids = list(cluster.pids().values())
    return {"total": value, "workers_seen": workers, "pids": pids,
            "run_dir": cluster.run_dir}


@pytest.mark.timeout(90)
def test_coordinator_in_caller_uses_cluster_resolver():
    result = fresh_interpreter.run(
        "tests.test_local_cluster:_coordinator_in_child", {"steps": 8},
        timeout=80)
    assert result["total"] == 8.0
    assert set(result["workers_seen"]) <= {0, 1} and result["workers_seen"]
    assert_all_gone(result["pids"], result["run_dir"])


def _parent_main(run_dir, pid_file):
    """A parent process that runs a cluster whose chief never ends."""
    cluster = LocalCluster(num_workers=1, num_ps=1, run_dir=run_dir,
                           chief=PROGRAM + ["--sleep_s=600"],
                           handle_signals=True, echo=False)
    try:
        with cluster:
            with open(pid_file + ".tmp", "w") as f:
                json.dump(cluster.pids(), f)
            os.rename(pid_file + ".tmp", pid_file)
            cluster.wait_chief()
    except local_cluster.Interrupted as e:
        sys.exit(e.exit_code)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_parent_signal_tears_everything_down(tmp_path, sig):
    run_dir, pid_file = str(tmp_path / "run"), str(tmp_path / "pids.json")
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import ps_sync.keras_env, sys\n"
         "from tests.test_local_cluster import _parent_main\n"
         "_parent_main(sys.argv[1], sys.argv[2])\n", run_dir, pid_file],
        cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    try:
        while not os.path.exists(pid_file):
            assert parent.poll() is None, "parent died before the cluster ran"
            time.sleep(0.2)
        with open(pid_file) as f:
            pids = json.load(f)
        assert sorted(pids) == ["chief-0", "ps-0", "worker-0"]
        assert len(processes_of_run(run_dir)) == 3
        parent.send_signal(sig)
        assert parent.wait(timeout=60) == 128 + sig
    finally:
        if parent.poll() is None:
            parent.terminate()  # the parent tears its cluster down
            parent.wait(timeout=30)
    assert_all_gone(pids.values(), run_dir)
