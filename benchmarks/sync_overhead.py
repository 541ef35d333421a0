"""Protocol overhead against the anchors, same model and cluster, one run.

  python -m benchmarks.sync_overhead [--workers 3] [--seconds 20]
      [--batch_sizes 32,256]

Each configuration runs in a fresh interpreter with its own in-process
cluster (1 PS + W workers as tf.distribute.Server objects):
  tf1_sync   TF1 tf.compat.v1.train.SyncReplicasOptimizer in graph mode, the
             paper's own implementation: between-graph replication, one
             session per worker (worker 0 is the chief and runs the token
             queue runner), replicas_to_aggregate = total = W.
  ps_sync    SyncReplicasWithBackups on ParameterServerStrategy, N = W, b = 0.
  ps_sync_b1 the same with N = W - 1 and one backup.
  async      plain ParameterServerStrategy, the wrapped optimizer alone.
Reported: updates/s (applied updates), pushes/s (gradients sent), the
share of gradient computations wasted (pushes that were dropped), and for
the ps_sync runs the median of each phase of a push from the telemetry
(ps_sync.analysis.push_phases: compute, send, resume after a wait). Numbers are
measurements on this machine, not gates. With several `--batch_sizes` the
four configurations run once per batch size, interleaved (configuration by
configuration, batch sizes in a rotating order) so load changes on a shared
machine hit every batch size alike.

  python -m benchmarks.sync_overhead --paired_rounds 8 [--quorums 3,2,1]
      [--batch_sizes 32,256,1024]

Paired mode, instead of the above: at each batch size, async and ps_sync at
each quorum N (b = W - N backups) built over ONE in-process cluster, and TF1
(N = W) on an in-process cluster of its own (its sessions are graph mode, so
it can share the process), all measured in alternating windows of --seconds,
the order reversed every other round. Separate interpreters on a shared
machine differ by +-15% run to run; paired windows see the same load. Also
reports CPU milliseconds per push (every cluster is this process) and the
medians over rounds of per-round ratios: each ps_sync configuration's push
rate over async's and update rate over TF1's, and TF1's push rate over
async's. Larger batches show how the ratios move as a push's compute grows
against the protocol's fixed cost.

  python -m benchmarks.sync_overhead --paired_rounds 6 --processes

The same with every task its own process (`python -m ps_sync.server`, as
deployed: PS + W worker processes per cluster, this process the coordinator
and the home of TF1's worker sessions, whose graphs run on their worker
processes). CPU milliseconds per push then add up this process and every
task process of every cluster.

  python -m benchmarks.sync_overhead --paired_rounds 6 --processes --ps_own_core

The same with the parameter servers pinned to a CPU of their own and every
other process (workers, this coordinator, TF1's sessions) to the rest, as
when the PS has its own machine: sharing every core, the protocol's PS work
and the workers' compute take turns on the same CPUs. The affinities read
back from the processes are in the JSON.

  python -m benchmarks.sync_overhead ... --layers 50

Any mode with a model of many variables (50 extra 64x64 layers: 102
variables), as real models have: a push of async or TF1 moves one gradient
per variable, each its own transfer. `--ema_momentum 0.9999`: every
optimizer keeps the moving average of the weights the Inception recipe
keeps. `--optimizer inception`: every optimizer is the Inception
recipe's RMSProp on its decaying rate instead of SGD.
"""
from benchmarks import common  # first: pins Keras 2 before TensorFlow

import argparse
import functools
import json
import os
import sys
import threading
import time

HERE = "benchmarks.sync_overhead"
DIM, HIDDEN, CLASSES = 64, 256, 10


def _shapes(mlp):
    """The MLP's variable shapes: `mlp["layers"]` extra DIM x DIM layers
    (kernel and bias each, as a real model's many variables), then
    DIM-HIDDEN-CLASSES. `mlp`: the model options of --layers,
    --ema_momentum and --optimizer ({} for none)."""
    extra = [s for _ in range(mlp.get("layers", 0))
             for s in ([DIM, DIM], [DIM])]
    return extra + [[DIM, HIDDEN], [HIDDEN, CLASSES]]


def _logits(tf, x, variables):
    extra, (w1, w2) = variables[:-2], variables[-2:]
    for kernel, bias in zip(extra[::2], extra[1::2]):
        x = tf.nn.relu(tf.matmul(x, kernel) + bias)
    return tf.matmul(tf.nn.relu(tf.matmul(x, w1)), w2)


class _Tf1Sync:
    """TF1's SyncReplicasOptimizer on its own in-process cluster (1 PS + W
    workers), each worker's session in a thread, measured in windows like
    `_window`: between windows a gate stops every worker at its next
    session.run. Graph mode per worker graph, so it can share a process (and
    its CPU accounting) with the eager TF2 configurations."""

    def __init__(self, workers, batch, spec=None, mlp=None):
        """`spec`: {"ps": [address], "worker": [W addresses]} of servers
        already running (a process cluster); None starts them in-process."""
        import ps_sync.keras_env  # noqa: F401
        import portpicker
        import tensorflow as tf
        v1 = tf.compat.v1

        config = v1.ConfigProto(inter_op_parallelism_threads=workers + 1)
        if spec is None:
            spec = {"ps": ["localhost:%d" % portpicker.pick_unused_port()],
                    "worker": ["localhost:%d" % portpicker.pick_unused_port()
                               for _ in range(workers)]}
            cluster = tf.train.ClusterSpec(spec)
            v1.train.Server(cluster, job_name="ps", task_index=0)
            targets = [v1.train.Server(cluster, job_name="worker",
                                       task_index=i, config=config).target
                       for i in range(workers)]
        else:
            spec = {job: spec[job] for job in ("ps", "worker")}
            cluster = tf.train.ClusterSpec(spec)
            targets = ["grpc://" + a for a in spec["worker"]]
        self._lock = threading.Lock()
        self._gate = threading.Event()
        self._pushes = 0
        self._step = 0
        self._error = None
        chief_ready = threading.Event()

        def worker(i):
            try:
                self._worker(tf, cluster, config, targets[i], workers, batch,
                             mlp or {}, i, chief_ready)
            except Exception as e:  # surfaced by window()
                self._error = "TF1 worker %d: %r" % (i, e)
                chief_ready.set()

        for i in range(workers):
            threading.Thread(target=worker, args=(i,), daemon=True).start()
        if not chief_ready.wait(timeout=180):
            raise RuntimeError("the TF1 chief session did not start")
        # Warm-up: the first steps start the sessions and queue runners.
        self.window(1.0)

    def _worker(self, tf, cluster, base_config, target, workers, batch, mlp,
                i, chief_ready):
        v1 = tf.compat.v1
        graph = tf.Graph()
        with graph.as_default(), v1.device(v1.train.replica_device_setter(
                worker_device="/job:worker/task:%d" % i, cluster=cluster)):
            step = v1.train.get_or_create_global_step()
            x = tf.random.normal([batch, DIM])
            y = tf.random.uniform([batch], 0, CLASSES, tf.int32)
            variables = [v1.get_variable("v%d" % k, shape)
                         for k, shape in enumerate(_shapes(mlp))]
            logits = _logits(tf, x, variables)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
            # The paper's moving average of the weights: the chief's token
            # queue runner updates it after each update.
            averages = (v1.train.ExponentialMovingAverage(mlp["ema"], step)
                        if mlp.get("ema") else None)
            opt = v1.train.SyncReplicasOptimizer(
                _tf1_optimizer(v1, mlp, step),
                replicas_to_aggregate=workers, total_num_replicas=workers,
                variable_averages=averages,
                variables_to_average=variables if averages else None)
            train_op = opt.minimize(loss, global_step=step)
            hook = opt.make_session_run_hook(is_chief=(i == 0))
        if i != 0:
            chief_ready.wait()
        # Only the tasks this worker's graph uses: a process cluster's
        # servers also list a chief, which no TF1 process serves.
        config = v1.ConfigProto()
        config.CopyFrom(base_config)
        config.device_filters.extend(["/job:ps", "/job:worker/task:%d" % i])
        with graph.as_default(), v1.train.MonitoredTrainingSession(
                master=target, is_chief=(i == 0), hooks=[hook],
                config=config) as sess:
            if i == 0:
                chief_ready.set()
            while True:
                self._gate.wait()
                now_step = sess.run([train_op, step])[1]
                with self._lock:
                    self._pushes += 1
                    self._step = max(self._step, int(now_step))

    def window(self, seconds):
        """Let the workers run for `seconds`: counts and CPU, as `_window`.
        (Non-chief workers may stay blocked on a token between windows,
        tensorflow#7970; they resume with the next window.)"""
        with self._lock:
            start = _mark(self._step, self._pushes)
        self._gate.set()
        time.sleep(seconds)
        with self._lock:
            end = _mark(self._step, self._pushes)
        self._gate.clear()
        if self._error:
            raise RuntimeError(self._error)
        return _between(start, end)


def _tf1_sync(workers, seconds, batch, mlp=None):
    return _Tf1Sync(workers, batch, mlp=mlp).window(seconds)


OPTIMIZERS = ("sgd", "inception")
# The Inception recipe's staircase decay, every this many updates: a
# schedule, so its current rate is shown as the recipe's is.
DECAY_UPDATES = 1000


def _optimizer(mlp):
    """The tf-keras optimizer of --optimizer and --ema_momentum: SGD(0.01),
    or the Inception recipe's RMSProp on its decaying rate."""
    import dataclasses
    from models import recipes

    ema = mlp.get("ema", 0.0)
    if mlp.get("optimizer", "sgd") == "sgd":
        recipe = recipes.Recipe(optimizer="sgd", learning_rate=0.01)
    else:
        recipe = dataclasses.replace(recipes.INCEPTION,
                                     lr_decay_epochs=1.0)
    return recipes.make_optimizer(
        dataclasses.replace(recipe, ema_momentum=ema), DECAY_UPDATES)


def _tf1_optimizer(v1, mlp, step):
    """TF1's counterpart of `_optimizer`."""
    if mlp.get("optimizer", "sgd") == "sgd":
        return v1.train.GradientDescentOptimizer(0.01)
    from models import recipes
    r = recipes.INCEPTION
    rate = v1.train.exponential_decay(r.learning_rate, step, DECAY_UPDATES,
                                      r.lr_decay_rate, staircase=True)
    return v1.train.RMSPropOptimizer(rate, decay=r.rmsprop_decay,
                                     momentum=r.momentum, epsilon=r.epsilon)


def _build(strategy, coordinator, workers, batch, mode, replicas,
           steps_per_closure, mlp=None):
    """The model, optimizer and scheduled step function of one TF2
    configuration, warmed up (traced, first pushes done)."""
    import tensorflow as tf
    from ps_sync.optimizer import SyncReplicasWithBackups

    mlp = mlp or {}
    with strategy.scope():
        variables = [tf.Variable(tf.random.normal(shape) * 0.1,
                                 name="v%d" % k)
                     for k, shape in enumerate(_shapes(mlp))]
        inner = _optimizer(mlp)
        opt = (inner if mode == "async"
               else SyncReplicasWithBackups(inner, replicas, workers))
        pushes = tf.Variable(tf.constant(0, tf.int64), name="pushes")

    @tf.function
    def step():
        def replica_fn():
            x = tf.random.normal([batch, DIM])
            y = tf.random.uniform([batch], 0, CLASSES, tf.int32)
            with tf.GradientTape() as tape:
                logits = _logits(tf, x, variables)
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables))
            pushes.assign_add(1)
        # As model.fit's steps_per_execution: several pushes per closure.
        for _ in tf.range(steps_per_closure):
            strategy.run(replica_fn)

    for _ in range(2 * workers):
        coordinator.schedule(step)
    coordinator.join()
    return step, opt, pushes


# The task processes of process clusters (paired mode, --processes), as
# (role, pid): role "ps" or "worker".
_CLUSTER_PIDS = []
TASK_ROLES = ("ps", "worker")


def own_core_split():
    """(the parameter servers' CPUs, everyone else's) for --ps_own_core:
    the first CPU this process may use, and the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise ValueError("--ps_own_core needs at least 2 CPUs, this process "
                         "may use %d" % len(cpus))
    return {cpus[0]}, set(cpus[1:])


def pin(pid, cpus):
    """Every current thread of process `pid` to `cpus` (threads started
    later inherit their creator's); returns the CPUs its threads may use,
    read back."""
    seen = set()
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            os.sched_setaffinity(int(tid), cpus)
            seen |= os.sched_getaffinity(int(tid))
        except ProcessLookupError:  # the thread ended meanwhile
            pass
    return sorted(seen)


def _cpu_s():
    """CPU seconds so far: (this process: the coordinator, and with
    in-process clusters every task's threads too; {role: the process-cluster
    tasks of that role})."""
    import resource
    from ps_sync.local_cluster import proc_stat
    usage = resource.getrusage(resource.RUSAGE_SELF)
    ticks = {}
    for role, pid in _CLUSTER_PIDS:
        fields = proc_stat(pid)
        if fields:
            ticks[role] = (ticks.get(role, 0)
                           + int(fields[11]) + int(fields[12]))
    return (usage.ru_utime + usage.ru_stime,
            {role: n / os.sysconf("SC_CLK_TCK") for role, n in ticks.items()})


def _mark(updates, pushes):
    """One edge of a measuring window: counts, wall time, `_cpu_s`."""
    return (updates, pushes, time.time()) + _cpu_s()


def _between(start, end):
    """A window's record from its two `_mark`s. Every cluster's tasks count
    in its CPU, the idle ones' too (an idle server costs next to nothing).
    With process clusters the CPU is also split by where it was spent: the
    parameter servers, the workers, this process (the coordinator, and
    TF1's session clients)."""
    (u0, p0, t0, own0, roles0), (u1, p1, t1, own1, roles1) = start, end
    pushes = max(1, p1 - p0)
    tasks = {role: roles1.get(role, 0.0) - roles0.get(role, 0.0)
             for role in set(TASK_ROLES) | set(roles1)}
    record = {"updates": u1 - u0, "pushes": p1 - p0, "seconds": t1 - t0,
              "cpu_ms_per_push":
                  1000 * (own1 - own0 + sum(tasks.values())) / pushes}
    if _CLUSTER_PIDS:
        record["task_cpu_ms_per_push"] = 1000 * sum(tasks.values()) / pushes
        for role in TASK_ROLES:
            record[role + "_cpu_ms_per_push"] = 1000 * tasks[role] / pushes
        record["coordinator_cpu_ms_per_push"] = 1000 * (own1 - own0) / pushes
    return record


def _window(coordinator, workers, built, seconds):
    """Schedule `built`'s step for `seconds` of wall time: counts and CPU.

    The closure queue never runs dry inside the window and is drained only
    after it: while it drains, workers idle one by one, and with backups
    the last admitted ones wait for the watchdog to release them (up to one
    50 ms poll each). Joining every 12 closures, as before session 9, put
    that tail in every window: 97 releases in 12 s at N = 2 of 3."""
    from ps_sync.watchdog import pending_closures
    step, opt, pushes = built

    def top_up():
        pending = pending_closures(coordinator)
        for _ in range(4 * workers - (pending or 0)):
            coordinator.schedule(step)
        if pending is None:  # cannot see the queue: drain it
            coordinator.join()

    top_up()
    start = _mark(int(opt.iterations.numpy()), int(pushes.numpy()))
    while time.time() - start[2] < seconds:
        time.sleep(0.005)
        top_up()
    end = _mark(int(opt.iterations.numpy()), int(pushes.numpy()))
    coordinator.join()
    return _between(start, end)


def _tf2(workers, seconds, batch, mode, replicas, steps_per_closure=1,
         mlp=None):
    import ps_sync.keras_env  # noqa: F401
    import tensorflow as tf
    from ps_sync import analysis, telemetry
    from ps_sync.testing import inprocess_cluster

    strategy = inprocess_cluster.strategy(workers, 1)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    built = _build(strategy, coordinator, workers, batch, mode, replicas,
                   steps_per_closure, mlp)
    t0 = time.time()
    result = _window(coordinator, workers, built, seconds)
    opt = built[1]
    if mode != "async":
        opt.telemetry.drain()
        summary = telemetry.summarize(opt.telemetry.pushes,
                                      opt.telemetry.steps, workers)
        result["wasted_share"] = summary["wasted_share"]
        # Pushes of the warm-up excluded: tracing would dominate them.
        timed = [p for p in opt.telemetry.pushes if p["arrived_at"] >= t0]
        result["phases_ms"] = {
            name: round(1000 * d["p50"], 2) if d["p50"] is not None else None
            for name, d in analysis.push_phases(
                timed, opt.telemetry.steps).items()}
        result["stats"] = opt.sync_stats()
    return result


def _process_cluster(workers, name, split=None, affinity=None, num_ps=1):
    """`num_ps` PS + `workers` workers, each task its own process (torn down at
    exit, logs in runs/benchmarks/sync_overhead/<name>); their CPU counts in
    `_cpu_s`. `split`: (PS CPUs, worker CPUs) to pin them to, the CPUs read
    back recorded in `affinity`."""
    from ps_sync.local_cluster import LocalCluster
    cluster = LocalCluster(num_workers=workers, num_ps=num_ps, echo=False,
                           run_dir=os.path.join(common.RUN_ROOT,
                                                "sync_overhead", name))
    cluster.start()
    _CLUSTER_PIDS.extend((t.name.split("-")[0], t.pid)
                         for t in cluster.servers())
    if split is not None:
        for t in cluster.servers():
            affinity["%s/%s" % (name, t.name)] = pin(
                t.pid, split[0] if t.name.startswith("ps") else split[1])
    return cluster


def _paired(workers, seconds, rounds, batch_sizes, quorums,
            steps_per_closure, processes=False, ps_own_core=False,
            num_ps=1, mlp=None):
    """Every configuration at every batch size in ONE process: async and
    ps_sync at each quorum over one cluster, TF1 on a cluster of its own
    (one per batch size), measured in alternating windows of `seconds` (the
    order reversed every other round), so that load on a shared machine hits
    every configuration alike. The clusters are in-process, or with
    `processes` every task is its own process (this one is the coordinator,
    and TF1's sessions run here too). Returns each batch size's windows per
    configuration; `_paired_summary` reduces them. With `ps_own_core`
    (process clusters only) the PS tasks run on a CPU of their own and the
    rest here, under "affinity" the CPUs read back per process. `num_ps`
    parameter servers per cluster (process clusters only): the model's
    variables are spread over them. `mlp`: the model's options
    (`_shapes`)."""
    import ps_sync.keras_env  # noqa: F401
    split = own_core_split() if ps_own_core else None
    affinity = {}
    if split:
        # Before TensorFlow starts its threads: they inherit this.
        affinity["coordinator"] = pin(os.getpid(), split[1])
    if processes:
        cluster = _process_cluster(workers, "tf2", split, affinity, num_ps)
        # Before TensorFlow starts this process's own server.
        os.environ.update(cluster.coordinator_env())
    import tensorflow as tf
    from ps_sync.testing import inprocess_cluster

    if processes:
        strategy = tf.distribute.experimental.ParameterServerStrategy(
            cluster.cluster_resolver())
    else:
        strategy = inprocess_cluster.strategy(workers, 1)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    measure = {}  # (batch, name) -> a function of the window length
    for batch in batch_sizes:
        configs = {"async": ("async", workers)}
        configs.update({"ps_sync_n%d" % n: ("sync", n) for n in quorums})
        for name, (mode, n) in configs.items():
            built = _build(strategy, coordinator, workers, batch, mode, n,
                           steps_per_closure, mlp)
            measure[batch, name] = functools.partial(
                _window, coordinator, workers, built)
        # TF1's replica_device_setter spreads its variables over every PS.
        spec = (_process_cluster(workers, "tf1_batch%d" % batch, split,
                                 affinity, num_ps).cluster_spec()
                if processes else None)
        measure[batch, "tf1_sync"] = _Tf1Sync(workers, batch, spec,
                                              mlp).window
    windows = {str(b): {name: [] for (b2, name) in measure if b2 == b}
               for b in batch_sizes}
    order = list(measure)
    for r in range(rounds):
        for batch, name in (order if r % 2 == 0 else order[::-1]):
            windows[str(batch)][name].append(measure[batch, name](seconds))
    if split:
        windows["affinity"] = affinity
    return windows


# The CPU split of process-cluster windows (`_between`).
SPLIT_KEYS = ("task_cpu_ms_per_push", "ps_cpu_ms_per_push",
              "worker_cpu_ms_per_push", "coordinator_cpu_ms_per_push")


def _paired_summary(windows):
    """Medians per configuration; each ps_sync configuration's push rate over
    async's and its update rate over TF1's, paired by round (the median of
    the per-round ratios); TF1's push rate over async's the same way."""
    import statistics

    def rate(w, key):
        return w[key] / w["seconds"]

    def paired(name, other, key):
        return statistics.median(
            rate(w, key) / max(rate(o, key), 1e-9)
            for w, o in zip(windows[name], windows[other]))

    summary = {}
    for name, ws in windows.items():
        summary[name] = {
            "updates_per_s": statistics.median(rate(w, "updates") for w in ws),
            "pushes_per_s": statistics.median(rate(w, "pushes") for w in ws),
            "cpu_ms_per_push": statistics.median(
                w["cpu_ms_per_push"] for w in ws)}
        for key in SPLIT_KEYS:
            if key in ws[0]:
                summary[name][key] = statistics.median(w[key] for w in ws)
        if name != "async":
            summary[name]["pushes_vs_async"] = paired(name, "async", "pushes")
        if name.startswith("ps_sync") and "tf1_sync" in windows:
            summary[name]["updates_vs_tf1"] = paired(name, "tf1_sync",
                                                     "updates")
    return summary


def _runs(w, seconds, batch, spc, mlp=None):
    return {
        "tf1_sync": (HERE + ":_tf1_sync",
                     dict(workers=w, seconds=seconds, batch=batch,
                          mlp=mlp)),
        "ps_sync": (HERE + ":_tf2", dict(workers=w, seconds=seconds,
                                         batch=batch, mode="sync",
                                         replicas=w, steps_per_closure=spc,
                                         mlp=mlp)),
        "ps_sync_b1": (HERE + ":_tf2", dict(workers=w, seconds=seconds,
                                            batch=batch, mode="sync",
                                            replicas=w - 1,
                                            steps_per_closure=spc,
                                            mlp=mlp)),
        "async": (HERE + ":_tf2", dict(workers=w, seconds=seconds,
                                       batch=batch, mode="async",
                                       replicas=w, steps_per_closure=spc,
                                       mlp=mlp)),
    }


RATIOS = {  # name: (numerator config, denominator config, rate)
    "ps_sync_vs_tf1_updates": ("ps_sync", "tf1_sync", "updates_per_s"),
    "ps_sync_vs_async_pushes": ("ps_sync", "async", "pushes_per_s"),
    "ps_sync_b1_vs_async_pushes": ("ps_sync_b1", "async", "pushes_per_s"),
}


def _ratios(results):
    """The ratios whose two configurations ran (--configs may omit some)."""
    return {name: results[a][rate] / results[b][rate]
            for name, (a, b, rate) in RATIOS.items()
            if a in results and b in results}


def _mlp(args):
    return {"layers": args.layers, "ema": args.ema_momentum,
            "optimizer": args.optimizer}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch", type=common.positive_int, default=32)
    parser.add_argument("--batch_sizes", type=common.int_list, default=None,
                        help="comma-separated batch sizes per worker, run "
                        "interleaved in one invocation (default: --batch)")
    parser.add_argument("--steps_per_closure", type=int, default=1,
                        help="pushes per scheduled closure for the TF2 runs, "
                        "like model.fit's steps_per_execution")
    parser.add_argument("--configs", default=None,
                        help="comma-separated subset of tf1_sync, ps_sync, "
                        "ps_sync_b1, async (default: all four)")
    parser.add_argument("--paired_rounds", type=int, default=0,
                        help="> 0: paired mode (see the module doc) with "
                        "this many rounds of alternating windows, at each "
                        "of --batch_sizes")
    parser.add_argument("--quorums", type=common.int_list, default=None,
                        help="paired mode: the ps_sync quorums N to measure "
                        "(default: W and W-1)")
    parser.add_argument("--processes", action="store_true",
                        help="paired mode: every task of every cluster its "
                        "own process (the deployed topology) instead of "
                        "in-process servers")
    parser.add_argument("--ps_own_core", action="store_true",
                        help="with --processes: the parameter servers on a "
                        "CPU of their own, every other process on the rest "
                        "(as when the PS has its own machine)")
    parser.add_argument("--num_ps", type=common.positive_int, default=1,
                        help="with --processes: parameter servers per "
                        "cluster (the model's variables spread over them)")
    parser.add_argument("--layers", type=common.non_negative_int, default=0,
                        help="extra 64x64 layers of the MLP, a kernel and a "
                        "bias each: 2 * layers + 2 variables (a real model "
                        "has hundreds)")
    parser.add_argument("--ema_momentum", type=common.momentum, default=0.0,
                        help="every optimizer keeps a moving average of the "
                        "weights with this momentum, as the Inception "
                        "recipe (0.9999): use_ema in TF2, TF1's "
                        "variable_averages (default 0: none)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                        help="sgd: SGD(0.01); inception: the Inception "
                        "recipe's RMSProp (rho 0.9, momentum 0.9, epsilon "
                        "1.0, two slots a variable) on its rate 0.045 "
                        "decayed x0.94 every %d updates, TF1's "
                        "RMSPropOptimizer on exponential_decay alike"
                        % DECAY_UPDATES)
    parser.add_argument("--out", default="benchmarks/results/sync_overhead")
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2 (ps_sync_b1 needs a "
                     "backup)")
    batches = args.batch_sizes or [args.batch]
    if any(b < 1 for b in batches):
        parser.error("--batch_sizes must be positive")
    sys.path.insert(0, os.getcwd())
    from ps_sync.testing import fresh_interpreter

    if args.paired_rounds < 0:
        parser.error("--paired_rounds must be 0 (off) or positive")
    quorums = args.quorums or [args.workers, args.workers - 1]
    if any(not 1 <= n <= args.workers for n in quorums):
        parser.error("--quorums must be between 1 and --workers (%d)"
                     % args.workers)
    if args.processes and not args.paired_rounds:
        parser.error("--processes needs paired mode (--paired_rounds > 0)")
    if args.num_ps > 1 and not args.processes:
        parser.error("--num_ps above 1 needs --processes")
    if args.ps_own_core:
        if not args.processes:
            parser.error("--ps_own_core needs --processes")
        try:
            own_core_split()
        except ValueError as e:
            parser.error(str(e))
    if args.paired_rounds:
        _main_paired(args, batches, quorums)
        return
    machine = common.machine_start()
    names = list(_runs(args.workers, args.seconds, batches[0], 1))
    if args.configs:
        chosen = [c.strip() for c in args.configs.split(",") if c.strip()]
        unknown = [c for c in chosen if c not in names]
        if unknown or not chosen:
            parser.error("--configs: unknown %s; known: %s" % (
                ", ".join(unknown) or "(none given)", ", ".join(names)))
        names = [n for n in names if n in chosen]
    by_batch = {b: {} for b in batches}
    # Configuration by configuration, the batch sizes rotated each time.
    for i, name in enumerate(names):
        k = i % len(batches)
        for batch in batches[k:] + batches[:k]:
            target, kwargs = _runs(args.workers, args.seconds, batch,
                                   args.steps_per_closure, _mlp(args))[name]
            r = fresh_interpreter.run(target, kwargs,
                                      timeout=args.seconds * 3 + 180)
            r["updates_per_s"] = r["updates"] / r["seconds"]
            r["pushes_per_s"] = r["pushes"] / r["seconds"]
            by_batch[batch][name] = r
            print("batch %-4d %-11s %7.1f updates/s %7.1f pushes/s%s%s" % (
                batch, name, r["updates_per_s"], r["pushes_per_s"],
                "  wasted %.0f%%" % (100 * r["wasted_share"])
                if r.get("wasted_share") is not None else "",
                "  p50 ms: " + ", ".join(
                    "%s %s" % kv for kv in r["phases_ms"].items())
                if r.get("phases_ms") else ""), flush=True)
    ratios_by_batch = {b: _ratios(by_batch[b]) for b in batches}
    for b in batches:
        for k, v in ratios_by_batch[b].items():
            print("batch %-4d %-28s %.2f" % (b, k, v))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    report = {"args": vars(args), "machine": common.machine_end(machine),
              # The first batch size, as before --batch_sizes existed.
              "results": {n: by_batch[batches[0]][n] for n in names},
              "ratios": ratios_by_batch[batches[0]],
              "results_by_batch": {str(b): by_batch[b] for b in batches},
              "ratios_by_batch": {str(b): ratios_by_batch[b]
                                  for b in batches}}
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=2)
    _plot(by_batch, args.out + ".png")
    print("wrote %s.json and %s.png" % (args.out, args.out))


def _main_paired(args, batch_sizes, quorums):
    from ps_sync.testing import fresh_interpreter
    machine = common.machine_start()
    configs = len(quorums) + 2
    windows = fresh_interpreter.run(
        HERE + ":_paired",
        dict(workers=args.workers, seconds=args.seconds,
             rounds=args.paired_rounds, batch_sizes=batch_sizes,
             quorums=quorums, steps_per_closure=args.steps_per_closure,
             processes=args.processes, ps_own_core=args.ps_own_core,
             num_ps=args.num_ps, mlp=_mlp(args)),
        timeout=len(batch_sizes) * (
            args.seconds * args.paired_rounds * configs * 2 + 300))
    affinity = windows.pop("affinity", None)
    by_batch = {}
    for batch in batch_sizes:
        summary = _paired_summary(windows[str(batch)])
        by_batch[str(batch)] = {"summary": summary,
                                "windows": windows[str(batch)]}
        for name, r in summary.items():
            print("paired batch %-4d %-12s %7.1f updates/s %7.1f pushes/s "
                  "%6.2f CPU ms/push%s%s%s" % (
                      batch, name, r["updates_per_s"], r["pushes_per_s"],
                      r["cpu_ms_per_push"],
                      " (PS %.2f, workers %.2f, coordinator %.2f)" % (
                          r["ps_cpu_ms_per_push"],
                          r["worker_cpu_ms_per_push"],
                          r["coordinator_cpu_ms_per_push"])
                      if "ps_cpu_ms_per_push" in r else "",
                      "  pushes vs async %.2f" % r["pushes_vs_async"]
                      if "pushes_vs_async" in r else "",
                      "  updates vs TF1 %.2f" % r["updates_vs_tf1"]
                      if "updates_vs_tf1" in r else ""), flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"args": vars(args), "machine": common.machine_end(machine),
                   "paired": {"batch_sizes": batch_sizes, "quorums": quorums,
                              "by_batch": by_batch, "affinity": affinity}},
                  f, indent=2)
    _plot({b: by_batch[str(b)]["summary"] for b in batch_sizes},
          args.out + ".png",
          "same process cluster"
          + (", %d PS" % args.num_ps if args.num_ps > 1 else "")
          + (", PS on its own CPU" if args.ps_own_core else "")
          if args.processes else "same in-process cluster")
    print("wrote %s.json and %s.png" % (args.out, args.out))


def _plot(by_batch, path, topology="same in-process cluster"):
    plt = common.pyplot()
    batches = list(by_batch)
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 3),
                             squeeze=False)
    for ax, batch in zip(axes[0], batches):
        results = by_batch[batch]
        names = list(results)
        x = range(len(names))
        ax.bar([i - 0.2 for i in x],
               [results[n]["updates_per_s"] for n in names], 0.4,
               label="updates/s")
        ax.bar([i + 0.2 for i in x],
               [results[n]["pushes_per_s"] for n in names], 0.4,
               label="pushes/s")
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, fontsize=8)
        ax.legend(fontsize=8)
        ax.set_title("batch %d per worker, %s" % (batch, topology))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
