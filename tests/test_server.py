"""ps_sync.server: one cluster task per process (real processes, no mocks)."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import portpicker
import pytest

from ps_sync import server
from ps_sync.local_cluster import REPO_ROOT

PY = sys.executable


def _env(tf_config):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config if isinstance(tf_config, str) else (
            json.dumps(tf_config))
    return env


def _start(tf_config, **kwargs):
    return subprocess.Popen([PY, "-m", "ps_sync.server"], env=_env(tf_config),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=REPO_ROOT, **kwargs)


def _ready_line(proc):
    for raw in proc.stdout:
        line = raw.decode()
        if server.READY_MARKER in line:
            return line
    raise AssertionError("server exited without a ready line")


def without_tf_log(stderr):
    """stderr minus TensorFlow's C++ log preamble (absl/glog lines), which
    importing the ps_sync package prints before our own message."""
    return "".join(line for line in stderr.splitlines(True)
                   if not re.match(r"WARNING: All log messages before absl|"
                                   r"[IWEF]\d{4} ", line))


def _gone(pid):
    """True once pid no longer exists or is a zombie (exited, not reaped)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _cluster(workers=1):
    return {"ps": ["127.0.0.1:%d" % portpicker.pick_unused_port()],
            "worker": ["127.0.0.1:%d" % portpicker.pick_unused_port()
                       for _ in range(workers)]}


@pytest.mark.parametrize("text, expected", [
    (None, "TF_CONFIG is not set"),
    ("{bad", "not valid JSON (line 1, column 2"),
    ("[]", "must be a JSON object"),
    ('{"task": {"type": "ps"}}', 'needs a non-empty "cluster"'),
    ('{"cluster": {"ps": "a:1"}, "task": {"type": "ps"}}', '"cluster.ps"'),
    ('{"cluster": {"ps": ["a:1"]}}', 'needs a "task" object'),
    ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "chief"}}',
     'runs "ps" or "worker"'),
    ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "worker"}}',
     "has no 'worker' job"),
    ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 1}}',
     "integer in [0, 0]"),
])
def test_parse_tf_config_rejects(text, expected):
    with pytest.raises(server.ConfigError) as info:
        server.parse_tf_config(text)
    assert expected in str(info.value)


def test_parse_tf_config_accepts():
    cluster = _cluster(2)
    assert server.parse_tf_config(json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": 1}})) == (
            cluster, "worker", 1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tf_config, expected", [
    (None, "TF_CONFIG is not set"),
    ('{"cluster": ', "TF_CONFIG is not valid JSON (line 1, column 13"),
])
def test_bad_tf_config_exits_2_without_traceback(tf_config, expected):
    proc = subprocess.run([PY, "-m", "ps_sync.server"], env=_env(tf_config),
                          capture_output=True, text=True, timeout=50,
                          cwd=REPO_ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    message = without_tf_log(proc.stderr)
    assert message.startswith("ps_sync.server: ") and message.count("\n") == 1
    assert expected in message


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_worker_serves_then_exits_0_on_signal(sig):
    cluster = _cluster(workers=3)
    proc = _start({"cluster": cluster, "task": {"type": "worker", "index": 2}})
    try:
        line = _ready_line(proc)
        assert "worker:2 listening on %s" % cluster["worker"][2] in line
        # 3 workers: at least workers + 1 inter-op threads, or 2 cores hang.
        threads = int(line.split("inter_op_parallelism_threads=")[1].rstrip(")\n"))
        assert threads >= 4
        from ps_sync.local_cluster import _accepts
        assert _accepts(cluster["worker"][2])
        # A pause longer than the server's 1 s poll must not look like a stop
        # signal (CPython's sigtimedwait returns garbage after one).
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(1.5)
        os.kill(proc.pid, signal.SIGCONT)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0
        rest = proc.stdout.read().decode()
        assert "worker:2 stopping on %s" % sig.name in rest
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.timeout(90)
def test_server_exits_when_its_parent_is_killed():
    cluster = _cluster()
    tf_config = json.dumps({"cluster": cluster,
                            "task": {"type": "ps", "index": 0}})
    # The parent starts the server, reports its pid, then sleeps until killed.
    parent = subprocess.Popen(
        [PY, "-c", "import subprocess, sys, time\n"
         "p = subprocess.Popen([sys.executable, '-m', 'ps_sync.server'])\n"
         "print(p.pid, flush=True)\n"
         "time.sleep(600)\n"],
        env=_env(tf_config), stdout=subprocess.PIPE, start_new_session=True,
        cwd=REPO_ROOT)
    server_pid = int(parent.stdout.readline())
    try:
        from ps_sync.local_cluster import _accepts
        while not _accepts(cluster["ps"][0]):
            assert not _gone(server_pid), "server died during startup"
            time.sleep(0.2)
        parent.kill()
        parent.wait()
        while not _gone(server_pid):  # bounded by the test timeout
            time.sleep(0.2)
    finally:
        try:  # the server shares the parent's process group
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        parent.wait()
