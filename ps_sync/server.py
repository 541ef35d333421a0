"""One cluster task (a parameter server or a worker) as its own process.

    TF_CONFIG='{"cluster": {...}, "task": {"type": "worker", "index": 1}}' \
        python -m ps_sync.server

Reads TF_CONFIG, starts a `tf.distribute.Server`, prints one line starting
with READY_MARKER once it listens, and exits 0 on SIGTERM or SIGINT. A server
cannot be stopped from inside TensorFlow and `Server.join()` never returns
to Python, so the main thread sleeps in short steps (where Python runs the
signal handlers, whichever thread the kernel picked) and the process leaves
with `os._exit`. It also leaves when its parent dies, so a launcher killed
with SIGKILL leaves no server behind. (Not `sigtimedwait`: CPython returns a
garbage siginfo when it is interrupted past its deadline, e.g. by
SIGSTOP/SIGCONT; and a signal mask set here would come too late for threads
TensorFlow started while `ps_sync` was imported.)
"""
import ps_sync.keras_env  # noqa: F401  (before TensorFlow loads)

import json
import os
import signal
import sys
import time

READY_MARKER = "ps_sync.server ready:"
SERVER_JOBS = ("ps", "worker")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ConfigError(ValueError):
    """TF_CONFIG is missing or does not describe a ps/worker task."""


def parse_tf_config(text):
    """Return (cluster dict, job, index) from a TF_CONFIG string."""
    if not text:
        raise ConfigError(
            "TF_CONFIG is not set; it must be JSON like "
            '{"cluster": {"ps": ["127.0.0.1:2222"], "worker": '
            '["127.0.0.1:2223"]}, "task": {"type": "worker", "index": 0}}')
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError("TF_CONFIG is not valid JSON (line %d, column %d: %s)"
                          % (e.lineno, e.colno, e.msg)) from None
    if not isinstance(config, dict):
        raise ConfigError("TF_CONFIG must be a JSON object, got %s"
                          % type(config).__name__)
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ConfigError('TF_CONFIG needs a non-empty "cluster" object '
                          'mapping job names to lists of "host:port"')
    for job, addresses in cluster.items():
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and ":" in a for a in addresses)):
            raise ConfigError('TF_CONFIG "cluster.%s" must be a non-empty list '
                              'of "host:port" strings, got %r' % (job, addresses))
    if not isinstance(task, dict):
        raise ConfigError('TF_CONFIG needs a "task" object like '
                          '{"type": "worker", "index": 0}')
    job, index = task.get("type"), task.get("index", 0)
    if job not in SERVER_JOBS:
        raise ConfigError(
            'TF_CONFIG "task.type" is %r; ps_sync.server runs "ps" or "worker" '
            "tasks (the chief runs the training program itself)" % (job,))
    if job not in cluster:
        raise ConfigError('TF_CONFIG "task.type" is %r but "cluster" has no '
                          "%r job" % (job, job))
    if (not isinstance(index, int) or isinstance(index, bool)
            or not 0 <= index < len(cluster[job])):
        raise ConfigError('TF_CONFIG "task.index" is %r; the %r job has %d '
                          "task(s), so it must be an integer in [0, %d]"
                          % (index, job, len(cluster[job]),
                             len(cluster[job]) - 1))
    return cluster, job, index


def server_config(cluster, job):
    """The ConfigProto for a task: workers need inter-op threads >= workers+1,
    else blocking ops of several closures exhaust the pool on 2 cores."""
    import tensorflow as tf
    config = tf.compat.v1.ConfigProto()
    if job == "worker":
        config.inter_op_parallelism_threads = max(
            len(cluster.get("worker", [])) + 1, os.cpu_count() or 1)
    return config


def _log(message):
    print("%s %s" % (time.strftime("%H:%M:%S"), message), flush=True)


def main():
    try:
        cluster, job, index = parse_tf_config(os.environ.get("TF_CONFIG"))
    except ConfigError as e:
        print("ps_sync.server: %s" % e, file=sys.stderr, flush=True)
        return 2
    received = []
    for sig in _STOP_SIGNALS:
        signal.signal(sig, lambda signum, _: received.append(signum))
    parent = os.getppid()
    import tensorflow as tf
    config = server_config(cluster, job)
    server = tf.distribute.Server(
        tf.train.ClusterSpec(cluster), job_name=job, task_index=index,
        config=config, protocol="grpc", start=True)
    _log("%s %s:%d listening on %s (target %s, pid %d, "
         "inter_op_parallelism_threads=%d)"
         % (READY_MARKER, job, index, cluster[job][index], server.target,
            os.getpid(), config.inter_op_parallelism_threads))
    while not received:
        if os.getppid() != parent:
            _log("%s:%d stopping: parent process %d is gone" % (job, index,
                                                                 parent))
            break
        time.sleep(0.2)
    if received:
        _log("%s:%d stopping on %s" % (job, index,
                                       signal.Signals(received[0]).name))
    # Server threads never end; leave without running TF's destructors.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
