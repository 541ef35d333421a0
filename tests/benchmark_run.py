"""Run a benchmark script as its users do (a fresh `python -m`), with tiny
settings, and hand back its exit code, output and results JSON."""
import json
import os
import signal
import subprocess
import sys

from ps_sync.local_cluster import REPO_ROOT

PNG = b"\x89PNG\r\n\x1a\n"


def run(module, args, timeout):
    """(returncode, output, report or None); `--out` must be in args."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module] + list(args), cwd=REPO_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT), start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the benchmark then stops the clusters it launched.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        raise AssertionError("%s timed out after %.0f s:\n%s"
                             % (module, timeout, output[-3000:])) from None
    out = args[args.index("--out") + 1] if "--out" in args else None
    report = None
    if out and os.path.exists(out + ".json"):
        with open(out + ".json") as f:
            report = json.load(f)
    return proc.returncode, output, report


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG


def assert_machine(report):
    m = report["machine"]
    assert m["cpus"] >= 1 and m["shared"] is True
    assert len(m["load_average_start"]) == 3
    assert len(m["load_average_end"]) == 3
