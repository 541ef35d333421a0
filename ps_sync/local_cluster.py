"""A cluster on this machine with every task its own process.

Parameter servers and workers run `python -m ps_sync.server`; the `chief`
(and an optional `evaluator`) run a given command line, the training program.
Each task gets its own TF_CONFIG, `GRPC_FAIL_FAST=use_caller` and gRPC
keepalive (`TF_GRPC_DEFAULT_OPTIONS`), runs in its own process group, and has
its output streamed with a `[worker-2] ` prefix and kept in
`<run_dir>/worker-2.log`. Teardown kills whole process groups, on `stop()`,
on leaving a `with` block (also by exception), at interpreter exit, and on
SIGTERM/SIGINT of the parent when `handle_signals` is on.

    with LocalCluster(num_workers=3, num_ps=1,
                      chief=["python", "-m", "models.train"]) as cluster:
        code = cluster.wait_chief()

This is the one process manager of the project: `launch` adds policy
(restarts, stragglers, spec files) on top of it.
"""
import atexit
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import portpicker

from ps_sync.server import READY_MARKER

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_JOBS = ("ps", "worker")
PROGRAM_JOBS = ("chief", "evaluator")
# A dead peer is noticed after keepalive_time + keepalive_timeout instead of
# an in-flight call hanging. Not more often than every 300 s: gRPC servers
# refuse pings more frequent than that on a connection without data ("too
# many pings") and drop the channel, which stalled or failed runs on a
# loaded machine with a 30 s keepalive.
DEFAULT_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 300000,
                        "grpc.keepalive_timeout_ms": 20000}
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class ClusterError(RuntimeError):
    pass


class TaskFailed(ClusterError):
    """A task exited when it should not have (e.g. during startup)."""

    def __init__(self, task, message):
        super().__init__("%s %s (%s); last output:\n%s" % (
            task.name, message, describe_exit(task.returncode),
            task.tail_text()))
        self.task = task
        self.returncode = task.returncode


class CannotStart(ClusterError):
    """A task's command could not be executed at all."""


class Interrupted(BaseException):
    """The parent got SIGTERM/SIGINT/SIGHUP; raised in the main thread so
    `with` blocks unwind and tear the cluster down."""

    def __init__(self, signum):
        super().__init__("interrupted by %s" % signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def describe_exit(code):
    if code is None:
        return "still running"
    if code < 0:
        return "killed by %s" % signal.Signals(-code).name
    return "exit code %d" % code


def exit_status(code):
    """A shell-style exit status for a Popen returncode (signal -> 128+n)."""
    return 128 - code if code < 0 else code


def grpc_options_env(options):
    """`TF_GRPC_DEFAULT_OPTIONS` text ("k=v,k=v") for a dict of options."""
    return ",".join("%s=%s" % kv for kv in sorted(options.items()))


def split_address(address):
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Task:
    """One process of the cluster and everything kept about it."""

    def __init__(self, job, index, address, argv):
        self.job, self.index, self.address, self.argv = job, index, address, argv
        self.proc = None
        self.starts = 0
        self.paused = False
        self.reported = False
        self.ready = threading.Event()
        self.tail = collections.deque(maxlen=20)
        self._pump = None

    @property
    def name(self):
        return "%s-%d" % (self.job, self.index)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def returncode(self):
        return self.proc.poll() if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def tail_text(self):
        return "\n".join("  " + line for line in self.tail) or "  (none)"


class LocalCluster:
    """Start, watch, pause, restart and stop a multi-process cluster."""

    def __init__(self, num_workers, num_ps=1, chief=None, evaluator=None,
                 addresses=None, host="127.0.0.1", run_dir=None, env=None,
                 task_env=None, grpc_options=None, echo=True,
                 startup_timeout=120.0, stop_grace=5.0, handle_signals=False,
                 cwd=None, task_prefix=None):
        """
        Args:
          num_workers, num_ps: sizes of the server jobs.
          chief: argv of the training program, run as task chief:0; None
            leaves the coordinator to the caller (see `cluster_resolver`).
          evaluator: argv run as evaluator:0 (outside the training cluster).
          addresses: optional {job: ["host:port", ...]}; jobs not given get
            ports from portpicker on `host`.
          env: extra environment for every task; task_env: {job or task name
            ("worker-2"): {VAR: value}} applied after it.
          grpc_options: gRPC channel arguments for TF_GRPC_DEFAULT_OPTIONS.
          echo: stream prefixed task output to stdout (or a file object).
          handle_signals: on SIGTERM/SIGINT/SIGHUP raise `Interrupted` in the
            main thread so the cluster is torn down (for entry points).
          task_prefix: {task name: argv prefix} run before that task's
            command, e.g. `ip netns exec <ns>` (ps_sync.testing.netns); the
            prefix must exec the command (same process).
        """
        addresses = dict(addresses or {})
        sizes = {"ps": num_ps, "worker": num_workers,
                 "chief": 1, "evaluator": 1 if evaluator else 0}
        self.addresses = {}
        for job, size in sizes.items():
            given = addresses.get(job)
            if given is not None and len(given) != size:
                raise ValueError("addresses[%r] has %d entries for %d tasks"
                                 % (job, len(given), size))
            self.addresses[job] = list(given) if given is not None else [
                "%s:%d" % (host, portpicker.pick_unused_port())
                for _ in range(size)]
        self.tasks = {}
        for job in ("ps", "worker", "chief", "evaluator"):
            argv = {"chief": chief, "evaluator": evaluator}.get(
                job, [sys.executable, "-m", "ps_sync.server"])
            if argv is None:
                continue
            for i, address in enumerate(self.addresses[job]):
                task = Task(job, i, address, list(argv))
                self.tasks[task.name] = task
        self.run_dir = os.path.abspath(
            run_dir or tempfile.mkdtemp(prefix="ps_sync_run_"))
        os.makedirs(self.run_dir, exist_ok=True)
        self.env = dict(env or {})
        self.task_env = dict(task_env or {})
        self.grpc_options = dict(DEFAULT_GRPC_OPTIONS, **(grpc_options or {}))
        self.echo = sys.stdout if echo is True else (echo or None)
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.handle_signals = handle_signals
        self.cwd = cwd or os.getcwd()
        self.task_prefix = dict(task_prefix or {})
        self._lock = threading.Lock()
        self._events = None  # events.jsonl, opened by start()
        self._saved_handlers = {}
        self._started = self._stopped = False

    # -- topology ------------------------------------------------------------

    def cluster_spec(self):
        """The training cluster as a TF_CONFIG "cluster" dict."""
        return {job: list(self.addresses[job])
                for job in ("chief", "ps", "worker") if self.addresses[job]}

    def tf_config(self, job, index=0):
        cluster = self.cluster_spec()
        if job == "evaluator":
            cluster["evaluator"] = list(self.addresses["evaluator"])
        return json.dumps({"cluster": cluster,
                           "task": {"type": job, "index": index}})

    def coordinator_env(self):
        """Environment for a coordinator started by the caller."""
        return self._task_env_vars("chief", 0)

    def cluster_resolver(self):
        """A cluster resolver for a coordinator in the calling process (set
        `coordinator_env()` in os.environ before TensorFlow is imported)."""
        import tensorflow as tf
        return tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(self.cluster_spec()), task_type="chief",
            task_id=0, rpc_layer="grpc")

    def task(self, name_or_job, index=None):
        name = name_or_job if index is None else "%s-%d" % (name_or_job, index)
        try:
            return self.tasks[name]
        except KeyError:
            raise KeyError("no task %r; tasks are %s"
                           % (name, ", ".join(self.tasks))) from None

    def servers(self):
        return [t for t in self.tasks.values() if t.job in SERVER_JOBS]

    def pids(self):
        return {name: t.pid for name, t in self.tasks.items() if t.pid}

    # -- lifecycle -------------------------------------------------------------

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        """Start the servers, wait until all accept connections, then start
        the chief and evaluator."""
        if self._started:
            raise ClusterError("cluster already started")
        self._started = True
        self._events = open(os.path.join(self.run_dir, "events.jsonl"), "a")
        atexit.register(self.stop)
        if self.handle_signals and (threading.current_thread()
                                    is threading.main_thread()):
            for sig in _STOP_SIGNALS:
                self._saved_handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            servers = self.servers()
            for task in servers:
                self._spawn(task)
            self.wait_ready(servers)
            for task in self.tasks.values():
                if task.job in PROGRAM_JOBS:
                    self._spawn(task)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, tasks, timeout=None):
        """Wait until each server printed its ready line and accepts TCP."""
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        pending = list(tasks)
        while pending:
            for task in list(pending):
                if not task.alive():
                    task.reported = True
                    self._join_pump(task)
                    self._event("exit", task, code=task.returncode)
                    raise TaskFailed(task, "exited during startup")
                if task.ready.is_set() and _accepts(task.address):
                    pending.remove(task)
            if pending and time.monotonic() > deadline:
                raise ClusterError(
                    "not ready after %.0f s: %s" % (
                        timeout or self.startup_timeout,
                        "; ".join("%s, last output:\n%s" % (t.name, t.tail_text())
                                  for t in pending)))
            if pending:
                time.sleep(0.1)
        self.say("servers ready: %s" % ", ".join(
            "%s=%s" % (t.name, t.address) for t in tasks))

    def poll(self):
        """Tasks that exited since the last call, each reported once with its
        exit status and last output lines."""
        exited = []
        for task in self.tasks.values():
            if task.proc is None or task.reported or task.alive():
                continue
            task.reported = True
            self._join_pump(task)
            self._event("exit", task, code=task.returncode)
            if task.returncode == 0:
                self.say("%s exited (exit code 0)" % task.name)
            else:
                self.say("%s FAILED (%s); last output:\n%s" % (
                    task.name, describe_exit(task.returncode),
                    task.tail_text()))
            exited.append(task)
        return exited

    def wait_chief(self, timeout=None, poll_interval=0.2):
        """Block until the chief exits; return its exit status (128+n for a
        signal). Other tasks that die meanwhile are reported, not restarted."""
        chief = self.task("chief", 0)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for task in self.poll():
                if task is chief:
                    return exit_status(task.returncode)
            if deadline is not None and time.monotonic() > deadline:
                raise ClusterError("chief still running after %.0f s" % timeout)
            time.sleep(poll_interval)

    def run(self, timeout=None):
        """Start, wait for the chief, stop everything; the chief's status."""
        with self:
            return self.wait_chief(timeout)

    # -- per-task control --------------------------------------------------

    def kill(self, name, sig=signal.SIGKILL, wait=True):
        """Send `sig` to the task's process group (e.g. to simulate a crash)."""
        task = self.task(name)
        self._event("signal", task, signal=signal.Signals(sig).name)
        _killpg(task, sig)
        if sig not in (signal.SIGSTOP, signal.SIGCONT) and task.paused:
            _killpg(task, signal.SIGCONT)  # a stopped process holds signals
            task.paused = False
        if wait and sig not in (signal.SIGSTOP, signal.SIGCONT):
            task.proc.wait()
        return task.returncode

    def stop_task(self, name):
        """Stop one task on purpose: its exit is not reported by poll()."""
        task = self.task(name)
        self._terminate([task])
        self._join_pump(task)
        task.reported = True
        self._event("stopped", task, code=task.returncode)

    def restart(self, name, wait_ready=True):
        """Stop the task if it runs and start it again at the same address."""
        task = self.task(name)
        if task.alive():
            self._terminate([task])
            self._event("stopped", task, code=task.returncode)
        self._join_pump(task)
        task.reported = False
        task.ready.clear()
        self._spawn(task)
        if wait_ready and task.job in SERVER_JOBS:
            self.wait_ready([task])
        return task

    def pause(self, name):
        """SIGSTOP the task's process group: it stays alive but makes no
        progress, like a machine that stalls."""
        task = self.task(name)
        if not task.alive():
            raise ClusterError("cannot pause %s: %s" % (
                task.name, describe_exit(task.returncode)))
        _killpg(task, signal.SIGSTOP)
        _wait_stopped(task.pid, True)  # signals land asynchronously
        task.paused = True
        self._event("pause", task)

    def resume(self, name):
        task = self.task(name)
        _killpg(task, signal.SIGCONT)
        _wait_stopped(task.pid, False)
        task.paused = False
        self._event("resume", task)

    def stop(self):
        """Stop every task (SIGTERM, then SIGKILL after `stop_grace`)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        # Teardown must finish: later signals only get noted.
        for sig in self._saved_handlers:
            signal.signal(sig, lambda *_: None)
        try:
            self._terminate(list(self.tasks.values()))
            for task in self.tasks.values():
                self._join_pump(task)
            self.say("stopped all tasks; logs in %s" % self.run_dir)
            if self._events is not None:
                self._events.close()
        finally:
            for sig, handler in self._saved_handlers.items():
                signal.signal(sig, handler)
            atexit.unregister(self.stop)

    # -- internals -------------------------------------------------------------

    def _task_env_vars(self, job, index):
        env = {
            "TF_CONFIG": self.tf_config(job, index),
            "GRPC_FAIL_FAST": "use_caller",
            "TF_GRPC_DEFAULT_OPTIONS": grpc_options_env(self.grpc_options),
            "PS_SYNC_RUN_DIR": self.run_dir,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(
                [REPO_ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        }
        env.update(self.env)
        env.update(self.task_env.get(job, {}))
        env.update(self.task_env.get("%s-%d" % (job, index), {}))
        return env

    def _spawn(self, task):
        env = dict(os.environ)
        env.update(self._task_env_vars(task.job, task.index))
        log = open(os.path.join(self.run_dir, task.name + ".log"), "ab")
        try:
            task.proc = subprocess.Popen(
                self.task_prefix.get(task.name, []) + task.argv,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, cwd=self.cwd,
                start_new_session=True)  # own group: killed whole, no orphans
        except OSError as e:
            log.close()
            raise CannotStart("cannot start %s with command %s: %s" % (
                task.name, " ".join(task.argv), e)) from None
        task.starts += 1
        task.paused = False
        log.write(b"=== %s start %d, pid %d, at %s\n" % (
            task.name.encode(), task.starts, task.pid,
            time.strftime("%Y-%m-%d %H:%M:%S").encode()))
        log.flush()
        self._event("start", task, address=task.address)
        task._pump = threading.Thread(target=self._pump, args=(task, log),
                                      name="pump-" + task.name, daemon=True)
        task._pump.start()

    def _pump(self, task, log):
        prefix = "[%s] " % task.name
        with log:
            for raw in iter(task.proc.stdout.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode("utf-8", "replace").rstrip("\n")
                task.tail.append(line)
                if READY_MARKER in line:
                    task.ready.set()
                self._write(prefix + line)
            task.proc.stdout.close()

    def _join_pump(self, task):
        # Grandchildren may hold the pipe open: do not wait on them forever.
        if task._pump is not None:
            task._pump.join(timeout=2.0)

    def _terminate(self, tasks):
        tasks = [t for t in tasks if t.proc is not None]
        for task in tasks:
            if task.alive():
                _killpg(task, signal.SIGCONT)  # a stopped task holds SIGTERM
                _killpg(task, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        for task in tasks:
            try:
                task.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for task in tasks:
            _killpg(task, signal.SIGKILL)  # also any grandchildren left
            task.proc.wait()
            task.paused = False

    def _on_signal(self, signum, frame):
        raise Interrupted(signum)

    def _event(self, event, task, **fields):
        record = dict(time=time.time(), event=event, task=task.name,
                      pid=task.pid, **fields)
        with self._lock:
            if self._events is not None and not self._events.closed:
                self._events.write(json.dumps(record) + "\n")
                self._events.flush()

    def say(self, message):
        """Print a launcher message, prefixed [launch]."""
        for line in message.splitlines():
            self._write("[launch] " + line)

    def _write(self, line):
        if self.echo is None:
            return
        with self._lock:
            try:
                self.echo.write(line + "\n")
                self.echo.flush()
            except ValueError:  # echo stream closed at interpreter exit
                pass


def _killpg(task, sig):
    try:
        os.killpg(task.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def proc_stat(pid):
    """The fields of /proc/<pid>/stat after the command name (index 0 is the
    state letter, 11 and 12 user and system CPU in clock ticks), or None if
    the process is gone or there is no /proc."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _wait_stopped(pid, stopped, timeout=5.0):
    """Wait until /proc shows the process stopped (or running again)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = proc_stat(pid)
        if not fields:
            return  # gone, or no /proc: nothing to wait for
        state = fields[0]
        if (state in "Tt") == stopped or state in "ZX":
            return
        time.sleep(0.01)


def _accepts(address):
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False
