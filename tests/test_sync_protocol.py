"""The protocol's invariants, decoded from a probe model on a real in-process
cluster (each test's cluster runs in a fresh interpreter)."""
import pytest

from ps_sync.testing import fresh_interpreter

HERE = __name__


def _probe_custom_loop(workers, replicas, num_ps, closures, delays=(),
                       partitioned=False, legacy=False, in_memory=None,
                       ask_before_send_min_bytes=None, ema=False,
                       whole=False, jit=False):
    import os
    import tempfile
    import tensorflow as tf
    from ps_sync import telemetry
    from ps_sync.optimizer import SyncReplicasWithBackups
    from ps_sync.shard_apply import moving_average
    from ps_sync.testing import inprocess_cluster
    from tests import probe

    if in_memory:
        telemetry.IN_MEMORY_RECORDS = in_memory
    partitioner = (tf.distribute.experimental.partitioners
                   .FixedShardsPartitioner(num_ps) if partitioned else None)
    strategy = inprocess_cluster.strategy(workers, num_ps, partitioner)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    with strategy.scope():
        model = probe.ProbeModel(workers)
        model.build([None, 1])
        # EMA of the weights leaves the weights alone. A subclass of SGD
        # keeps the whole update in the close instead of cutting it per
        # server (a user's own optimizer is not known to update per
        # variable).
        sgd_class = (type("UsersSGD", (tf.keras.optimizers.SGD,), {})
                     if whole else tf.keras.optimizers.SGD)
        sgd = (tf.keras.optimizers.legacy.SGD(probe.LR) if legacy
               else sgd_class(probe.LR, use_ema=ema))
        if jit:  # XLA updates, as tf-keras sets where it sees a GPU
            sgd.jit_compile = True
        run_dir = tempfile.mkdtemp()
        settings = ({} if ask_before_send_min_bytes is None else
                    {"ask_before_send_min_bytes": ask_before_send_min_bytes})
        opt = SyncReplicasWithBackups(
            sgd, replicas, workers,
            telemetry_dir=os.path.join(run_dir, "telemetry"),
            tensorboard_dir=os.path.join(run_dir, "tb"), **settings)
    dataset = coordinator.create_per_worker_dataset(
        probe.delayed_dataset_fn(list(delays), workers))
    iterator = iter(dataset)

    step = probe.train_step_fn(strategy, model, opt)

    for _ in range(closures):
        coordinator.schedule(step, args=(iterator,))
    coordinator.join()
    steps, rows = probe.decode(model, replicas)
    # What the watchdog reads, once every closure is done.
    state = {"open_step": opt.protocol.open_step(),
             "num_waiting": opt.protocol.num_waiting(),
             "oldest_wait_s": opt.protocol.oldest_wait_s()}
    opt.close()
    memory = {"pushes": list(opt.telemetry.pushes),
              "steps": list(opt.telemetry.steps),
              "pushes_since_0": opt.telemetry.since("pushes", 0),
              "pushes_since_20": opt.telemetry.since("pushes", 20),
              "steps_since_end": opt.telemetry.since("steps", steps)}
    pushes, step_records = telemetry.read(os.path.join(run_dir, "telemetry"))
    return {"steps": steps, "rows": rows,
            "pushes": pushes, "step_records": step_records,
            "memory": memory,
            "tensorboard_files": os.listdir(os.path.join(run_dir, "tb")),
            "iterations": int(opt.iterations.numpy()),
            "stats": opt.sync_stats(), "state": state,
            "by_server": opt._by_server is not None,  # pylint: disable=W0212
            "cut": opt.sync_stats()["update_cut_per_server"],
            "jit": bool(getattr(sgd, "jit_compile", False)),
            "shard_devices": sorted({v.device for v in model.variables}),
            # (variable, its moving average) devices with use_ema.
            "averages": [(v.device, moving_average(sgd, v).device)
                         for v in _shards(model.trainable_variables)]
            if ema else [],
            # (variables summed, device) of each gradient sum.
            "sums": [(len(s.indices), s.variable.device)
                     for s in opt.protocol._sums]}  # pylint: disable=W0212


def _shards(variables):
    """The variables, each ShardedVariable as its shards."""
    return [s for v in variables for s in getattr(v, "variables", [v])]


def _protocol_placement():
    import tensorflow as tf
    from ps_sync.protocol import SyncProtocol
    from ps_sync.testing import inprocess_cluster

    strategy = inprocess_cluster.strategy(2, 2)
    with strategy.scope():
        model_var = tf.Variable(tf.zeros([4]))
        # Round robin would put the next variable on the other PS.
        step = tf.Variable(tf.constant(0, tf.int64))
        protocol = SyncProtocol([model_var], 2, 2, step_var=step)
    return {"step": step.device, "protocol": protocol.published.device,
            "state": sorted({v.device for v in (protocol.count,
                                                protocol.worker_tag)}),
            "accumulator": protocol.accumulators[0].device,
            "model_var": model_var.device}


def _one_device_check():
    import tensorflow as tf
    from ps_sync import protocol

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2)
    with tf.device("/cpu:0"):
        here = tf.Variable(1.0)
    with tf.device("/cpu:1"):
        there = tf.Variable(2.0)
    verdicts = {}
    for name, var in (("here", here), ("there", there)):
        @tf.function
        def branch_reading(var=var, name=name):
            graph = tf.compat.v1.get_default_graph()
            before = len(graph.get_operations())
            with tf.device(here.device):
                # The variable read two function graphs down.
                protocol._kept_functional(lambda: tf.cond(
                    tf.constant(True), lambda: tf.cond(
                        tf.constant(True), lambda: var.assign_add(1.0),
                        var.read_value), lambda: tf.constant(0.0)))
            try:
                protocol._check_one_device(graph.get_operations()[before:],
                                           here.device)
                verdicts[name] = None
            except ValueError as e:
                verdicts[name] = str(e)

        branch_reading.get_concrete_function()
    return {"verdicts": verdicts, "there": there.device}


def test_a_branch_reading_another_devices_resource_is_refused():
    """The per-server cut's guard: a functional If placed on one server
    whose branches read a variable of another would fail obscurely at run
    time."""
    r = fresh_interpreter.run(HERE + ":_one_device_check", timeout=120)
    assert r["verdicts"]["here"] is None
    refused = r["verdicts"]["there"]
    assert "reads a resource on %s" % r["there"] in refused
    assert "cannot be cut per parameter server" in refused


def test_protocol_state_sits_beside_the_global_step():
    """Every push reads the global step inside the critical section: on
    another PS each read was a round trip under the lock (2 PS, 3 workers:
    0.32x async's pushes/s before, 0.39-0.41x after)."""
    r = fresh_interpreter.run(HERE + ":_protocol_placement", timeout=120)
    assert r["step"] != r["model_var"], r  # two PS really used
    assert r["protocol"] == r["step"], r
    assert r["state"] == [r["step"]], r
    assert r["accumulator"] == r["model_var"], r


def _pushes(stats):
    return sum(sum(v for k, v in w.items() if not k.startswith("wait"))
               for w in stats["per_worker"])


# A push sends without asking leave with replicas=3 of 3 (no backups) and
# with the probe's few bytes by default; ask_before_send_min_bytes=0 makes
# every push ask (zeros stand in for a refused gradient on both shards).
# The update is cut per server (`shard_apply`; with a moving average of
# the weights and with XLA too) except with whole=True, which keeps the
# whole update in one close spanning both servers.
@pytest.mark.parametrize("case", [
    dict(replicas=2, ema=True), dict(partitioned=True, legacy=True,
                                     replicas=2, ask=0),
    dict(replicas=3, ask=0, jit=True),
    dict(partitioned=True, replicas=2, ema=True, whole=True)],
    ids=["ema", "partitioned-legacy-ask", "no-backup-ask-xla", "whole-ema"])
def test_every_update_is_n_fresh_pushes_from_distinct_workers(case):
    replicas, ask = case["replicas"], case.get("ask")
    partitioned = case.get("partitioned", False)
    whole = case.get("whole", False)
    r = fresh_interpreter.run(
        HERE + ":_probe_custom_loop",
        dict(workers=3, replicas=replicas, num_ps=2, closures=24,
             partitioned=partitioned, legacy=case.get("legacy", False),
             ask_before_send_min_bytes=ask, ema=case.get("ema", False),
             whole=whole, jit=case.get("jit", False)),
        timeout=240)
    assert r["by_server"] is not whole
    assert r["cut"] == (True if not whole else
                        "UsersSGD is not one of the optimizers cut per "
                        "server (SGD, Adam, AdamW, RMSprop, Adagrad)")
    assert r["jit"] is case.get("jit", False)
    if case.get("ema"):  # each average on its variable's server
        assert len(r["averages"]) == 3 + 2 * partitioned
        assert all(v == a for v, a in r["averages"]), r["averages"]
    assert r["stats"]["asks_leave"] is (ask == 0 and replicas < 3)
    assert len(r["shard_devices"]) == 2  # really spread over both PS
    # One flat sum per server, so one tensor per server per push; at least
    # one of them packs several variables.
    assert sorted(device for _, device in r["sums"]) == r["shard_devices"]
    assert max(n for n, _ in r["sums"]) >= 2
    assert r["steps"] == r["iterations"] >= 1
    assert r["stats"]["published_step"] == r["steps"]
    per_worker = r["stats"]["per_worker"]
    assert _pushes(r["stats"]) == 24  # every push counted once
    admitted = sum(w["admitted"] + w["admitted_closed"] for w in per_worker)
    # Each applied update took exactly N pushes; at most one step is open.
    assert (replicas * r["steps"] <= admitted
            <= replicas * r["steps"] + replicas - 1)
    assert sum(w["admitted_closed"] for w in per_worker) == r["steps"]


# Asking or not, the straggler's pushes are dropped the same way.
@pytest.mark.parametrize("ask", [None, 0])
def test_delayed_worker_is_dropped_and_counted(ask):
    r = fresh_interpreter.run(
        HERE + ":_probe_custom_loop",
        dict(workers=3, replicas=2, num_ps=1, closures=40,
             delays=[0.0, 0.0, 1.0], ask_before_send_min_bytes=ask),
        timeout=240)
    assert r["stats"]["asks_leave"] is (ask == 0)
    slow = r["stats"]["per_worker"][2]
    slow_pushes = sum(v for k, v in slow.items() if not k.startswith("wait"))
    assert slow_pushes >= 1
    assert slow["admitted"] + slow["admitted_closed"] <= 1
    assert slow["dropped_stale"] >= slow_pushes - 1
    # The two fast workers carried the training.
    assert r["steps"] >= 10
    assert all(2 not in row for row in r["rows"][1:])


def test_telemetry_records_match_the_decoded_updates():
    r = fresh_interpreter.run(
        HERE + ":_probe_custom_loop",
        dict(workers=3, replicas=2, num_ps=1, closures=24, in_memory=10),
        timeout=240)
    steps = r["step_records"]
    # One step record per applied update, in order, holding exactly the
    # workers the probe decoded for that update.
    assert [s["step"] for s in steps] == list(range(r["steps"]))
    assert [sorted(s["admitted"]) for s in steps] == r["rows"]
    assert all(not s["degraded"] and s["quorum"] == 2 for s in steps)
    assert all(s["opened_at"] <= s["closed_at"] for s in steps)
    # One push record per push, each outcome as counted on the PS.
    assert len(r["pushes"]) == 24
    per_worker = r["stats"]["per_worker"]
    for w in range(3):
        mine = [p for p in r["pushes"] if p["worker"] == w]
        for outcome in ("admitted", "admitted_closed", "dropped_stale"):
            assert sum(p["outcome"] == outcome for p in mine) == \
                per_worker[w][outcome]
    for p in r["pushes"]:
        assert p["v"] == 1 and p["type"] == "push"
        assert p["computed_at"] <= p["arrived_at"]
        fresh = p["outcome"].startswith("admitted")
        assert (p["tag"] == p["step"]) or not fresh
        assert (p["admitted_rank"] in (1, 2)) == fresh
    # The open step as the watchdog reads it: the workers admitted to it,
    # and nobody left waiting (the last waiters were released).
    step, count, admitted = r["state"]["open_step"]
    assert step == r["steps"]
    assert admitted == sorted(
        p["worker"] for p in r["pushes"]
        if p["step"] == step and p["outcome"] == "admitted")
    assert count == len(admitted) < 2
    assert r["state"]["num_waiting"] == 0
    assert r["state"]["oldest_wait_s"] == 0.0
    assert any(f.startswith("events.out.tfevents") for f in
               r["tensorboard_files"])
    # In memory only the latest 10 of each kind (the files keep them all);
    # `since` reads them by running number.
    memory = r["memory"]
    assert memory["pushes"] == r["pushes"][-10:]
    assert memory["steps"] == steps[-10:]
    assert memory["pushes_since_0"] == [r["pushes"][-10:], 24]
    assert memory["pushes_since_20"] == [r["pushes"][20:], 24]
    assert memory["steps_since_end"] == [[], len(steps)]


_WRITES = ("AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp",
           "ResourceApply", "ResourceSparseApply", "ResourceScatter")


def _written_handles(graph):
    """{write op: the captured handle it writes} in `graph`."""
    external = {id(inner): ext for ext, inner in graph.captures}
    return {op: external.get(id(op.inputs[0]))
            for op in graph.get_operations() if op.type.startswith(_WRITES)}


def _ancestors(op):
    seen, todo = set(), [op]
    while todo:
        current = todo.pop()
        for parent in [t.op for t in current.inputs] + current.control_inputs:
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


@pytest.mark.parametrize("family", ["sgd", "momentum", "adam",
                                    "legacy_sgd", "legacy_adam"])
def test_the_new_version_is_published_after_every_variable_write(family):
    """`published` (the tag a woken waiter takes) is written only once every
    write of the update is done, to every variable and slot: a waiter woken
    earlier read the old value of a variable on another shard under the new
    tag. Checked on the graph of the close: deterministic, where the race it
    prevents showed on a cluster about once in 30 runs."""
    import ps_sync.keras_env  # noqa: F401
    import tensorflow as tf
    from ps_sync.optimizer import SyncReplicasWithBackups
    from ps_sync.protocol import SyncProtocol
    from tests.test_optimizer_wrapper import FAMILIES

    variables = [tf.Variable(tf.ones([3, 2]), name="w"),
                 tf.Variable(tf.ones([4]), name="b")]
    opt = SyncReplicasWithBackups(FAMILIES[family](), 2, 3)
    opt._build_inner(variables)  # pylint: disable=protected-access
    protocol = SyncProtocol(variables, 2, 3)
    strategy = tf.distribute.get_strategy()

    @tf.function
    def close():
        return protocol._close(  # pylint: disable=protected-access
            opt.iterations,
            lambda means: opt._cross_replica_apply(  # pylint: disable=W0212
                strategy, list(zip(means, variables)), None))

    writes = _written_handles(close.get_concrete_function().graph)
    published, = [op for op, h in writes.items()
                  if h is protocol.published.handle]
    before = _ancestors(published)
    state = {id(v.handle) for v in protocol.variables}
    update = {op: h for op, h in writes.items() if id(h) not in state}
    # Not vacuous: the update writes both variables (and, with momentum or
    # Adam, slots).
    for v in variables:
        assert any(h is v.handle for h in update.values()), (family, v.name)
    late = sorted(op.name for op in update if op not in before)
    assert not late, (family, late)


def _external_resources(op):
    """ids of the captured handles among `op`'s resource inputs."""
    external = {id(inner): ext for ext, inner in op.graph.captures}
    return {id(external[id(t)]) for t in op.inputs
            if t.dtype.name == "resource" and id(t) in external}


@pytest.mark.parametrize("family", ["sgd", "adam", "legacy_adam"])
def test_cut_per_server_the_new_version_is_published_after_every_server(
        family):
    """Cut per server (`shard_apply`), each server's branch writes its
    variables and slots; the protocol's half of the close, which writes
    `published`, must come after every one of them (the same race as
    above). Checked on the graph of one push."""
    import ps_sync.keras_env  # noqa: F401
    import tensorflow as tf
    from ps_sync.optimizer import SyncReplicasWithBackups
    from ps_sync.protocol import SyncProtocol
    from tests.test_optimizer_wrapper import FAMILIES

    variables = [tf.Variable(tf.ones([3, 2]), name="w"),
                 tf.Variable(tf.ones([4]), name="b")]
    opt = SyncReplicasWithBackups(FAMILIES[family](), 2, 3)
    opt._build_inner(variables)  # pylint: disable=protected-access
    by_server = opt._shard_apply()  # pylint: disable=protected-access
    assert by_server.unsupported_reason() is None
    protocol = SyncProtocol(variables, 2, 3)

    @tf.function
    def push():
        return protocol._admit_and_maybe_apply(  # pylint: disable=W0212
            tf.constant(0), tf.constant(0.0, tf.float64),
            protocol._payloads(  # pylint: disable=protected-access
                [tf.ones_like(v) for v in variables]),
            opt.iterations, None, by_server=by_server)

    graph = push.get_concrete_function().graph
    branches = [op for op in graph.get_operations()
                if op.type in ("If", "StatelessIf")]
    servers = [op for op in branches
               if id(variables[0].handle) in _external_resources(op)]
    closes = [op for op in branches
              if id(opt.iterations.handle) in _external_resources(op)]
    # One device here, so one server branch, holding both variables.
    assert len(servers) == 1 and len(closes) == 1, (servers, closes)
    assert id(variables[1].handle) in _external_resources(servers[0])
    assert id(protocol.published.handle) in _external_resources(closes[0])
    assert servers[0] in _ancestors(closes[0])


def _schedule_rate_writes():
    """Two logical CPUs as two servers; an SGD on a halving schedule whose
    current-rate variable sits on cpu:1, beside a model variable or apart
    from them all. Pushes run here, traced as on a worker."""
    import ps_sync.keras_env  # noqa: F401
    import tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2)
    from ps_sync.optimizer import SyncReplicasWithBackups
    from ps_sync.protocol import SyncProtocol

    out = {}
    for case, devices in (("beside", ["/cpu:0", "/cpu:1"]),
                          ("apart", ["/cpu:0", "/cpu:0"])):
        variables = []
        for k, device in enumerate(devices):
            with tf.device(device):
                variables.append(tf.Variable(tf.ones([3]), name="v%d" % k))
        with tf.device("/cpu:1"):
            opt = SyncReplicasWithBackups(tf.keras.optimizers.SGD(
                tf.keras.optimizers.schedules.ExponentialDecay(1.0, 1, 0.5)),
                2, 2)
            opt._build_inner(variables)  # pylint: disable=protected-access
        by_server = opt._shard_apply()  # pylint: disable=protected-access
        rate = opt.inner_optimizer._current_learning_rate  # pylint: disable=W0212
        protocol = SyncProtocol(variables, 2, 2, initial_step=0,
                                step_var=opt.iterations)

        @tf.function
        def push(worker):
            # pylint: disable=protected-access
            payloads = protocol._payloads([tf.ones_like(v) for v in variables])
            with tf.device(protocol._device):  # as `push`: the lock's body
                return protocol._admit_and_maybe_apply(
                    worker, tf.constant(0.0, tf.float64), payloads,
                    opt.iterations, None, by_server=by_server)

        @tf.function
        def wait(worker):
            return protocol._wait_for_close(worker)  # pylint: disable=W0212

        graph = push.get_concrete_function(
            tf.TensorSpec([], tf.int32)).graph
        rates = []
        for call, worker in ((push, 0), (push, 1), (wait, 0), (push, 1),
                             (push, 0)):
            call(tf.constant(worker))
            if call is push:
                rates.append(float(rate.numpy()))
        out[case] = {
            "rate_device": rate.device,
            "written_outside_branches": any(
                h is rate.handle for h in _written_handles(graph).values()),
            "branches_holding_it": [
                op.device for op in graph.get_operations()
                if op.type in ("If", "StatelessIf")
                and id(rate.handle) in _external_resources(op)],
            # The tensors ops on cpu:0 (a server) take from ops on cpu:1
            # (the protocol's server, where the lock is), resources aside.
            "server_inputs_from_the_lock": sorted({
                t.name for op in graph.get_operations()
                if op.device.endswith("CPU:0")
                for t in op.inputs if t.dtype != tf.resource
                and t.op.device.endswith("CPU:1")}),
            "rates": rates,
            "updates": int(opt.iterations.numpy()),
            "variables": [v.numpy().tolist() for v in variables],
        }
    return out


def test_a_schedules_current_rate_is_written_by_the_close_on_its_server():
    """tf-keras shows, after update t, the rate of update t. Pushes wrote it
    on every push, under the lock, wherever it lives (often another
    server); now a close writes it, in the branch of its server, or in one
    of its own where that server holds no sums."""
    r = fresh_interpreter.run(HERE + ":_schedule_rate_writes", timeout=120)
    for case, got in r.items():
        assert got["rate_device"].endswith("CPU:1"), case
        assert not got["written_outside_branches"], case
        assert [d.endswith("CPU:1") for d in got["branches_holding_it"]] == [
            True], case
        # Pushes: 0 admitted, 1 closes update 0 (rate 1), 1 admitted in
        # update 1 (the shown rate stays update 0's), 0 closes it (0.5).
        assert got["rates"] == [1.0, 1.0, 1.0, 0.5], case
        # One vector carries the decision, the step and the rate: one
        # transfer to the server (the rate was one more, and the step one
        # more for updates that read it: Adam, not SGD).
        assert len(got["server_inputs_from_the_lock"]) == 1, (case, got)
        assert got["updates"] == 2, case
        # Two updates of the mean gradient 1 at rates 1 and 0.5.
        assert got["variables"] == [[-0.5] * 3] * 2, case
