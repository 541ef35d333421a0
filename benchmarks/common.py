"""What the benchmark scripts share: the machine record, launching a cluster
spec as real processes, interleaving variants, and writing results.

The machine these run on is small (2 cores) and usually shared, so every
script runs its variants side by side in one invocation, interleaved
round-robin over seeds (a load change then hits every variant alike), and
reports ratios; the results record the load average at start and end.
"""
import ps_sync.keras_env  # noqa: F401  (every entry point, before TF)

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")
RUN_ROOT = os.path.join(REPO_ROOT, "runs", "benchmarks")
SHARED_NOTE = ("machine shared with other jobs (other TensorFlow processes) "
               "while this ran: absolute times are noisy, compare ratios of "
               "variants run side by side")
# The gRPC error TensorFlow reports when a server sends GOAWAY for too many
# keepalive pings; seen to stall a run for minutes (counted, not hidden).
GRPC_STALL_MARK = "Too many pings"


class BenchmarkError(RuntimeError):
    """A run failed or timed out; carries the tail of its output."""


# -- command lines -----------------------------------------------------------

def int_list(text):
    """argparse type: "0,1,2" -> [0, 1, 2], with a clear error."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected comma-separated integers, got %r" % text) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _int_at_least(text, low):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected an integer, got %r"
                                         % text) from None
    if value < low:
        raise argparse.ArgumentTypeError("must be at least %d, got %d"
                                         % (low, value))
    return value


def positive_int(text):
    return _int_at_least(text, 1)


def non_negative_int(text):
    return _int_at_least(text, 0)


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number, got %r"
                                         % text) from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive, got %s" % text)
    return value


def fraction(text):
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError("must be in (0, 1], got %s" % text)
    return value


def momentum(text):
    """A number in [0, 1) (0: off)."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value < 1:
        raise argparse.ArgumentTypeError(
            "expected a number in [0, 1), got %r" % text)
    return value


# -- the machine -------------------------------------------------------------

def load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def machine_start():
    """Recorded before the first run; `machine_end` completes it."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "shared": True,
            "note": SHARED_NOTE, "load_average_start": load_average(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def machine_end(machine):
    return dict(machine, load_average_end=load_average(),
                ended_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


# -- running variants --------------------------------------------------------

def interleaved(seeds, variants):
    """[(seed, variant), ...] round-robin: every variant once per seed, the
    variant order rotated from one seed to the next."""
    order = []
    for i, seed in enumerate(seeds):
        k = i % len(variants)
        order.extend((seed, v) for v in variants[k:] + variants[:k])
    return order


def fresh_run_dir(run_dir):
    """Remove the launcher run directory an earlier invocation left at
    `run_dir`: the training program would resume it from its checkpoints
    and report that run's history as this one's (a rerun of
    inception_small measured 0.0 s of training so). Anything else there is
    left alone, with an error."""
    if not os.path.exists(run_dir):
        return
    if not os.path.exists(os.path.join(run_dir, "spec.json")):
        raise BenchmarkError(
            "%s exists and is not a run directory of the launcher (no "
            "spec.json): pass another --run_root or remove it" % run_dir)
    say("removing the earlier run %s" % run_dir)
    shutil.rmtree(run_dir)


def launch(spec, run_dir, program_args, timeout_s):
    """Run a cluster spec (a dict) with the launcher, every task a real
    process; returns {"summary", "wall_s", "grpc_stalls", "run_dir"}.

    The spec is written beside the run directory; the launcher's own
    validation applies. Output stays in the run directory (`--quiet`).
    """
    fresh_run_dir(run_dir)
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    spec_path = run_dir + ".spec.json"
    with open(spec_path, "w") as f:
        json.dump(spec, f, indent=1)
    argv = [sys.executable, "-m", "launch", spec_path, "--run-dir", run_dir,
            "--quiet", "--"] + list(program_args)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO_ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    start = time.time()
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        out = _stop(proc)
        raise BenchmarkError("run %s timed out after %.0f s:\n%s" % (
            run_dir, timeout_s, _tail(out)))
    except BaseException:  # SIGTERM / Ctrl-C of the benchmark: no orphans
        _stop(proc)
        raise
    wall = time.time() - start
    summary_path = os.path.join(run_dir, "summary.json")
    if proc.returncode != 0 or not os.path.exists(summary_path):
        raise BenchmarkError("run %s failed (exit %s):\n%s\n%s" % (
            run_dir, proc.returncode, _tail(out),
            _tail(_read(os.path.join(run_dir, "chief-0.log")))))
    with open(summary_path) as f:
        summary = json.load(f)
    return {"summary": summary, "wall_s": wall, "run_dir": run_dir,
            "grpc_stalls": count_in_file(os.path.join(run_dir, "chief-0.log"),
                                         GRPC_STALL_MARK)}


def _stop(proc):
    """Stop a launcher: SIGTERM makes it stop every task of its cluster; a
    group kill is the backstop. Returns its remaining output."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    except ProcessLookupError:
        out, _ = proc.communicate()
    return out


def exit_on_sigterm():
    """Turn SIGTERM into SystemExit so that a running launch stops its
    cluster on the way out (timeouts of callers send SIGTERM)."""
    def handler(signum, frame):  # pylint: disable=unused-argument
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _tail(data, lines=40):
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else \
        (data or "")
    return "\n".join(text.splitlines()[-lines:])


def count_in_file(path, needle, window=6):
    """Errors in a task log whose message holds `needle`: TF logs each
    error twice (its `ERROR:tensorflow` logger and absl), the message over
    several lines; count the former whose next lines hold the needle."""
    lines = _read(path).decode("utf-8", "replace").splitlines()
    return sum(1 for i, line in enumerate(lines)
               if line.startswith("ERROR:tensorflow")
               and any(needle in x for x in lines[i:i + window]))


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def add_keepalive_arg(parser):
    parser.add_argument(
        "--grpc_keepalive_ms", type=positive_int, default=None,
        help="gRPC keepalive_time_ms of every task (default: the launcher's "
        "30000). gRPC servers answer pings more frequent than every 300000 "
        "ms on a connection without data with GOAWAY 'Too many pings', "
        "which stalled or failed runs on a loaded machine; 300000 avoids it")


def base_spec(name, workers, replicas, stragglers=(), ps=1,
              keepalive_ms=None):
    """A local cluster spec: 1 chief, `ps` PS, `workers` workers, N =
    `replicas` (ignored by --mode=async), the given straggler entries."""
    spec = {"name": name.replace("_", "-").lower(),
            "cluster": {"chief": 1, "ps": ps, "worker": workers},
            "sync": {"replicas_to_aggregate": replicas},
            "program": {"command": ["python", "-m", "models.train"]},
            "stragglers": list(stragglers)}
    if keepalive_ms:
        spec["local"] = {"grpc_options": {"grpc.keepalive_time_ms":
                                          keepalive_ms}}
    return spec


def stragglers_or_usage_error(parser, path, workers):
    """stragglers_from(path, workers), or a usage error naming --stragglers."""
    if not os.path.isfile(path):
        parser.error("--stragglers: no such file %r" % path)
    try:
        return stragglers_from(path, workers)
    except (ValueError, OSError) as e:
        parser.error("--stragglers: %s" % e)


def stragglers_from(spec_path, workers):
    """The straggler entries of a cluster spec, moved onto the last workers
    of a `workers`-worker cluster (so the same distribution applies to
    clusters of different sizes), in the spec's order."""
    with open(spec_path) as f:
        entries = json.load(f).get("stragglers", [])
    if len(entries) > workers:
        raise ValueError("%s has %d straggler entries for %d workers"
                         % (spec_path, len(entries), workers))
    out = []
    for i, entry in enumerate(entries):
        out.append(dict(entry, task="worker-%d" % (workers - 1 - i)))
    return out


def with_seed(stragglers, seed):
    """The same entries, each schedule's RNG seed shifted by `seed`."""
    return [dict(e, seed=e.get("seed", 0) + 1000 * seed) for e in stragglers]


# -- results -----------------------------------------------------------------

def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def write_report(out_prefix, report):
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    path = out_prefix + ".json"
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    return path


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def say(message):
    print(message, flush=True)
