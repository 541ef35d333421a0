"""A parameter server or the chief killed in a real launched run (issue 6,
items 3 and 4): the launcher restarts the parameter servers and the chief,
which restores the latest checkpoint and continues from its update.

Everything is asserted from the run's own records: telemetry (one run id per
coordinator), the launcher's events, the checkpoints and the summary. The
kill lands at a random moment after the first checkpoint; the seed is in
every assertion message (PS_SYNC_FAULT_SEED=<seed> replays the delay).
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from ps_sync.local_cluster import REPO_ROOT

K = 10            # checkpoint every K updates
TARGET = 120      # updates to train


def _seed():
    env = os.environ.get("PS_SYNC_FAULT_SEED")
    return int(env) if env else random.SystemRandom().randrange(1 << 30)


def _events(run_dir):
    try:
        with open(os.path.join(run_dir, "events.jsonl")) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []


def _checkpoint_numbers(run_dir):
    state = os.path.join(run_dir, "checkpoints", "checkpoint")
    if not os.path.exists(state):
        return []
    with open(state) as f:
        paths = [line.split('"')[1] for line in f
                 if line.startswith("all_model_checkpoint_paths")]
    return [int(p.rsplit("-", 1)[1]) for p in paths]


def _runs_in_order(records):
    """{run_id: [records]} in order of first appearance."""
    runs = {}
    for r in records:
        runs.setdefault(r["run_id"], []).append(r)
    return list(runs.values())


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.timeout(480)
@pytest.mark.parametrize("victim", ["ps-0", "chief-0"])
def test_killed_task_restarts_from_the_last_checkpoint(tmp_path, victim):
    seed = _seed()
    rng = random.Random(seed)
    run_dir = str(tmp_path / "run")
    spec = {"cluster": {"chief": 1, "ps": 1, "worker": 3},
            "sync": {"replicas_to_aggregate": 2},
            "program": {"command": ["python", "-m", "models.train"]},
            "restart": {"max_restarts": 2}}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    out_path = tmp_path / "launcher.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "launch", str(spec_path), "--run-dir",
             run_dir, "--", "--train_updates=%d" % TARGET,
             "--checkpoint_every_updates=%d" % K, "--eval_every_updates=60",
             "--progress_every_s=2"],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
            env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    try:
        # After the first checkpoint, at a random moment of training.
        deadline = time.monotonic() + 300
        while not _checkpoint_numbers(run_dir):
            assert proc.poll() is None, out_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 2.0))
        pid = [e["pid"] for e in _events(run_dir)
               if e["event"] == "start" and e["task"] == victim][-1]
        os.killpg(pid, signal.SIGKILL)
        killed_at = time.time()
        code = proc.wait(timeout=360)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
    output = out_path.read_text()
    msg = "PS_SYNC_FAULT_SEED=%d; launcher output tail:\n%s" % (
        seed, output[-4000:])
    assert code == 0, msg
    starts = [e for e in _events(run_dir) if e["event"] == "start"]
    assert [e["task"] for e in starts].count("chief-0") == 2, msg
    assert [e["task"] for e in starts].count("ps-0") == 2, msg
    assert [e["task"] for e in starts].count("worker-0") == 1, msg

    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    restored = summary["start_update"]
    assert "continuing from update %d" % restored in output, msg
    # Saves come exactly every K updates, so the restored one is a multiple.
    assert restored >= K and restored % K == 0, msg
    assert summary["updates"] >= TARGET, msg
    assert summary["test_accuracy"]["top1"] >= 0.8, msg

    steps = _read_jsonl(os.path.join(run_dir, "steps.jsonl"))
    first, second = _runs_in_order(steps)  # exactly two coordinators
    # The first run applied 0, 1, ... one update per step, until the kill.
    assert [s["step"] for s in first] == list(range(len(first))), msg
    assert all(s["closed_at"] < killed_at for s in first), msg
    # Lost work is at most one checkpoint interval: the first run's last
    # recorded update is at most K past the restored checkpoint (a hold
    # keeps update K+1 from being applied before update K is saved).
    assert len(first) - restored <= K, msg
    # The second run continues at the restored update, one per step, every
    # step whole, to the target: no update applied twice.
    assert [s["step"] for s in second] == list(
        range(restored, restored + len(second))), msg
    assert restored + len(second) == summary["updates"], msg
    assert all(len(set(s["admitted"])) == 2 == s["quorum"]
               for s in first + second), msg
    pushes = _read_jsonl(os.path.join(run_dir, "pushes.jsonl"))
    later = [p for p in pushes if p["run_id"] == second[0]["run_id"]]
    # No gradient computed on a version of the first run was admitted.
    assert all(p["tag"] >= restored for p in later
               if p["outcome"].startswith("admitted")), msg
    # Checkpoints of both runs are at multiples of K, but for the final one.
    numbers = _checkpoint_numbers(run_dir)
    assert all(n % K == 0 for n in numbers[:-1]), (numbers, msg)
    assert numbers[-1] == summary["updates"], (numbers, msg)
