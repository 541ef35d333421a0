"""`python -m launch` in local mode, with real processes: a run to
completion, exit codes, signal cleanup, the restart rules, straggler pauses.

The chief is tests/test_launch_program.py; in `--sleep_s` mode it does not
load TensorFlow, which keeps restart and signal tests cheap on 2 cores.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ps_sync.local_cluster import REPO_ROOT
from tests.test_local_cluster import assert_all_gone, processes_of_run

PROGRAM = "python -m tests.test_launch_program"


def _spec(workers=3, n=2, **extra):
    spec = {"cluster": {"chief": 1, "ps": 1, "worker": workers},
            "sync": {"replicas_to_aggregate": n},
            "program": {"command": ["python", "-m", "models.train"]}}
    spec.update(extra)
    return spec


class Launch:
    """A launcher process on a spec in tmp_path."""

    def __init__(self, tmp_path, spec, program_flags=()):
        self.run_dir = str(tmp_path / "run")
        spec_path = tmp_path / "spec.json"
        spec_path.write_text(json.dumps(spec))
        self.out_path = tmp_path / "launcher.out"
        with open(self.out_path, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "launch", str(spec_path), "--run-dir",
                 self.run_dir, "--program", PROGRAM, "--"] + list(program_flags),
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                env=dict(os.environ, PYTHONPATH=REPO_ROOT))

    def events(self):
        try:
            with open(os.path.join(self.run_dir, "events.jsonl")) as f:
                return [json.loads(line) for line in f if line.endswith("\n")]
        except FileNotFoundError:
            return []

    def wait_for(self, predicate, what):
        """Wait (bounded by the test timeout) until predicate(events)."""
        while not predicate(self.events()):
            assert self.proc.poll() is None, "launcher ended waiting for %s:\n%s" % (
                what, self.output())
            time.sleep(0.2)

    def starts(self, task):
        return [e for e in self.events()
                if e["event"] == "start" and e["task"] == task]

    def chief_attempts(self):
        try:
            with open(os.path.join(self.run_dir, "chief-attempts.txt")) as f:
                return len(f.read().split())
        except FileNotFoundError:
            return 0

    def wait(self, timeout=90):
        return self.proc.wait(timeout=timeout)

    def close(self):
        """SIGTERM, not SIGKILL: the launcher must tear its cluster down."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self):
        return self.out_path.read_text()

    def all_pids(self):
        return [e["pid"] for e in self.events() if e["event"] == "start"]


@pytest.fixture
def start(tmp_path):
    """start(spec, flags) -> Launch; any launcher left is stopped after the
    test, also when the test fails or times out."""
    launched = []

    def _start(spec, flags=()):
        launched.append(Launch(tmp_path, spec, flags))
        return launched[-1]

    yield _start
    for launch in launched:
        launch.close()


def _count_in(path, text):
    with open(path) as f:
        return f.read().count(text)


@pytest.mark.timeout(120)
def test_sync_run_to_completion_with_straggler_pauses_logged(start):
    spec = _spec(stragglers=[{
        "task": "worker-2",
        "every_s": {"distribution": "fixed", "value": 0.5},
        "pause_s": {"distribution": "uniform", "low": 0.2, "high": 0.6},
        "seed": 5}])
    launch = start(spec, ["--steps=6", "--sync"])
    assert launch.wait() == 0, launch.output()
    output = launch.output()
    for name in ("ps-0", "worker-0", "worker-1", "worker-2", "chief-0"):
        assert "\n[%s] " % name in output
        assert os.path.getsize(os.path.join(launch.run_dir, name + ".log")) > 0
    assert "[launch] chief finished with exit code 0; stopping every task" in output

    with open(os.path.join(launch.run_dir, "chief-result-1.json")) as f:
        result = json.load(f)
    assert (result["replicas_to_aggregate"], result["total_num_replicas"]) == (2, 3)
    assert result["workers"] == 3 and result["loss"] == result["loss"]
    assert result["run_dir"] == launch.run_dir

    straggler_pid = launch.starts("worker-2")[0]["pid"]
    with open(os.path.join(launch.run_dir, "stragglers.jsonl")) as f:
        log = [json.loads(line) for line in f]
    pauses = [r for r in log if r["event"] == "pause"]
    resumes = [r for r in log if r["event"] == "resume"]
    assert pauses, "no pause was injected during the run"
    assert len(resumes) == len(pauses)  # every pause ended, also at teardown
    for pause, resume in zip(pauses, resumes):
        assert pause["task"] == "worker-2" and pause["pid"] == straggler_pid
        assert pause["state"] == "T"  # the process really was stopped
        assert 0.2 <= pause["planned_s"] <= 0.6
        assert resume["paused_at"] == pause["time"] <= resume["time"]
    assert_all_gone(launch.all_pids(), launch.run_dir)


@pytest.mark.timeout(90)
def test_chief_failure_propagates_its_exit_code(start):
    launch = start(_spec(workers=1, n=1),
                    ["--fail_before_training", "--exit_code=7"])
    assert launch.wait() == 7
    output = launch.output()
    assert "[launch] chief-0 FAILED (exit code 7); last output:" in output
    assert "failing on purpose with code 7" in output
    assert len(launch.starts("chief-0")) == 1  # an exit code is not restarted
    assert_all_gone(launch.all_pids(), launch.run_dir)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_everything(start, sig):
    launch = start(_spec(workers=1, n=1), ["--sleep_s=600"])
    launch.wait_for(lambda _: launch.chief_attempts() == 1, "the chief")
    assert len(processes_of_run(launch.run_dir)) == 3
    launch.proc.send_signal(sig)
    assert launch.wait() == 128 + sig
    assert_all_gone(launch.all_pids(), launch.run_dir)


@pytest.mark.timeout(90)
def test_dead_worker_restarts_alone_at_its_address(start):
    launch = start(_spec(workers=2, n=1), ["--sleep_s=600"])
    launch.wait_for(lambda _: launch.chief_attempts() == 1, "the chief")
    first = launch.starts("worker-1")[0]
    os.kill(first["pid"], signal.SIGKILL)
    launch.wait_for(lambda _: len(launch.starts("worker-1")) == 2, "restart")
    second = launch.starts("worker-1")[1]
    assert second["address"] == first["address"] and second["pid"] != first["pid"]
    log = os.path.join(launch.run_dir, "worker-1.log")
    launch.wait_for(lambda _: _count_in(log, "ready:") == 2, "ready")
    launch.proc.send_signal(signal.SIGTERM)
    assert launch.wait() == 128 + signal.SIGTERM
    output = launch.output()
    assert "[launch] worker-1 FAILED (killed by SIGKILL); last output:" in output
    assert "[launch] restarting worker-1 at %s (restart 1 of 3)" % (
        first["address"]) in output
    for task in ("ps-0", "worker-0", "chief-0"):
        assert len(launch.starts(task)) == 1
    assert launch.chief_attempts() == 1
    assert_all_gone(launch.all_pids(), launch.run_dir)


@pytest.mark.timeout(120)
def test_ps_failure_then_chief_signal_restart_ps_and_chief(start):
    # Chief attempts 1 and 2 block; attempt 3 finishes with exit code 0.
    launch = start(_spec(workers=1, n=1),
                    ["--sleep_s=0.1", "--block_attempts=2"])
    launch.wait_for(lambda _: launch.chief_attempts() == 1, "chief attempt 1")
    ps_first = launch.starts("ps-0")[0]
    os.kill(ps_first["pid"], signal.SIGKILL)
    launch.wait_for(lambda _: launch.chief_attempts() == 2, "chief attempt 2")
    chief = launch.starts("chief-0")[1]
    os.kill(chief["pid"], signal.SIGKILL)  # killed by a signal: restart
    assert launch.wait() == 0, launch.output()

    output = launch.output()
    assert ("[launch] ps-0 died: restarting the parameter servers and the "
            "chief, which restores its last checkpoint (restart 1 of 3)") in output
    assert "[launch] chief-0 died: restarting" in output and "(restart 2 of 3)" in output
    ps_starts = launch.starts("ps-0")
    assert len(ps_starts) == 3
    assert {s["address"] for s in ps_starts} == {ps_first["address"]}
    assert len(launch.starts("chief-0")) == 3 and launch.chief_attempts() == 3
    assert len(launch.starts("worker-0")) == 1  # workers keep running
    assert_all_gone(launch.all_pids(), launch.run_dir)


@pytest.mark.timeout(90)
def test_restart_budget_is_bounded(start):
    launch = start(_spec(workers=1, n=1, restart={"max_restarts": 0}),
                    ["--sleep_s=600"])
    launch.wait_for(lambda _: launch.chief_attempts() == 1, "the chief")
    os.kill(launch.starts("ps-0")[0]["pid"], signal.SIGKILL)
    assert launch.wait() == 1
    assert "[launch] not restarting ps-0: restart budget of 0 used up" in (
        launch.output())
    assert len(launch.starts("ps-0")) == 1
    assert_all_gone(launch.all_pids(), launch.run_dir)


@pytest.mark.timeout(90)
def test_program_that_cannot_run_is_a_usage_error(tmp_path):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(_spec(workers=1, n=1)))
    run_dir = str(tmp_path / "run")
    proc = subprocess.run(
        [sys.executable, "-m", "launch", str(spec_path), "--run-dir", run_dir,
         "--program", "no-such-program-xyz --flag"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=80,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert proc.returncode == 2
    assert ("launch: error: %s: field program.command: expected a command that"
            " can be executed, but cannot start chief-0 with command "
            "no-such-program-xyz --flag" % spec_path) in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert processes_of_run(run_dir) == []


@pytest.mark.timeout(120)
def test_no_argument_runs_the_default_spec(tmp_path):
    run_dir = str(tmp_path / "run")
    proc = subprocess.run(
        [sys.executable, "-m", "launch", "--run-dir", run_dir,
         "--program", PROGRAM, "--", "--steps=4", "--sync"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=110,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert proc.returncode == 0, proc.stdout[-3000:]
    with open(os.path.join(run_dir, "spec.json")) as f:
        resolved = json.load(f)
    assert resolved["name"] == "local-default"
    assert len(resolved["_resolved"]["cluster"]["worker"]) == 3
    with open(os.path.join(run_dir, "chief-result-1.json")) as f:
        result = json.load(f)
    assert (result["replicas_to_aggregate"], result["total_num_replicas"]) == (2, 3)
    assert processes_of_run(run_dir) == []
