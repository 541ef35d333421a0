"""A crash during a checkpoint save never leaves an unreadable latest
checkpoint (issue 6, item 5): a real process saving 48 MB checkpoints in a
loop is SIGKILLed at random moments, and each restart must restore a whole
checkpoint, the newest one that completed. A latest checkpoint damaged
anyway (a truncated file) is skipped for the one before it.
"""
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from ps_sync.local_cluster import REPO_ROOT


def _writer(directory, *flags):
    return subprocess.Popen(
        [sys.executable, "-m", "tests.checkpoint_writer", directory]
        + list(flags), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        cwd=REPO_ROOT, text=True, start_new_session=True,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT))


def _read_line(proc):
    line = proc.stdout.readline()
    assert line, "the writer ended (exit code %s)" % proc.wait()
    return json.loads(line)


def _seed():
    env = os.environ.get("PS_SYNC_FAULT_SEED")
    return int(env) if env else random.SystemRandom().randrange(1 << 30)


@pytest.mark.timeout(300)
def test_kill_during_saves_leaves_the_last_complete_checkpoint(tmp_path):
    seed = _seed()
    rng = random.Random(seed)
    directory = str(tmp_path / "checkpoints")
    last_saved = 0
    for round_ in range(3):
        proc = _writer(directory)
        try:
            restored = _read_line(proc)
            msg = "PS_SYNC_FAULT_SEED=%d round %d: %s" % (seed, round_,
                                                          restored)
            # The newest save that completed before the kill, whole.
            assert restored["unreadable"] == [], msg
            assert restored["restored"] >= last_saved, msg
            if round_:
                assert restored["values"] == [float(restored["restored"])], msg
            saved = _read_line(proc)["saved"]  # saving is under way
            # Somewhere in the next saves (each takes tens of ms or more).
            time.sleep(rng.uniform(0.0, 0.5))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            # Saves that completed before the kill were printed.
            for line in proc.stdout:
                saved = json.loads(line)["saved"]
            last_saved = saved
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            proc.stdout.close()
    # The kills left partial files behind, never a torn latest checkpoint.
    proc = _writer(directory, "--saves=0")
    try:
        final = _read_line(proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert final["restored"] >= last_saved >= 3
    assert final["values"] == [float(final["restored"])]


@pytest.mark.timeout(120)
def test_a_damaged_latest_checkpoint_is_skipped(tmp_path):
    directory = str(tmp_path / "checkpoints")
    proc = _writer(directory, "--saves=2")
    assert proc.wait(timeout=100) == 0
    proc.stdout.close()
    data, = glob.glob(os.path.join(directory, "ckpt-2.data-*"))
    with open(data, "r+b") as f:
        f.truncate(1000)
    proc = _writer(directory, "--saves=1")
    try:
        restored = _read_line(proc)
        assert proc.wait(timeout=100) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()
    assert restored["restored"] == 1
    assert restored["values"] == [1.0]
    assert restored["unreadable"] == [os.path.join(directory, "ckpt-2")]


@pytest.mark.timeout(120)
def test_no_restorable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    directory = str(tmp_path / "checkpoints")
    proc = _writer(directory, "--saves=2")
    assert proc.wait(timeout=100) == 0
    proc.stdout.close()
    for data in glob.glob(os.path.join(directory, "ckpt-*.data-*")):
        with open(data, "r+b") as f:
            f.truncate(1000)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.checkpoint_writer", directory,
         "--saves=1"], capture_output=True, text=True, cwd=REPO_ROOT,
        timeout=100, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert proc.returncode != 0
    assert proc.stdout == ""  # nothing restored, nothing saved over them
    assert ("CheckpointRestoreError: none of the 2 checkpoints in %s can be "
            "restored" % directory) in proc.stderr
