"""Do dropped gradients cross the network? Bytes on loopback per push.

  python -m benchmarks.dropped_push_bytes

An in-process cluster (1 PS, 3 workers) pushes a 32 MB dense gradient whose
forward pass reads one float. With N = 3 every push is admitted; with N = 1
one push in three is admitted and the others are dropped. A push is sent
only with leave (ps_sync.protocol: fresh, not a duplicate, the open step not
full when it asks); here the three workers compute on the same version at
the same time and ask before any of them is admitted, so all three get
leave and send, and two are dropped on arrival: about 32 MB per push in both
runs. Only a push refused leave (stale or late when it asks, as a
straggler's is) stays on the worker. The loopback counter is machine-wide:
run it on a quiet machine.
"""
import json
import os
import sys

HERE = "benchmarks.dropped_push_bytes"
SIZE = 8 * 1024 * 1024  # float32 elements: 32 MB


def _lo_bytes():
    with open("/proc/net/dev") as f:
        for line in f:
            if line.strip().startswith("lo:"):
                return int(line.split()[1])
    raise RuntimeError("no loopback interface in /proc/net/dev")


def _run(replicas, pushes):
    import ps_sync.keras_env  # noqa: F401
    import tensorflow as tf
    from ps_sync.optimizer import SyncReplicasWithBackups
    from ps_sync.testing import inprocess_cluster

    workers = 3
    strategy = inprocess_cluster.strategy(workers, 1)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    with strategy.scope():
        v = tf.Variable(tf.zeros([SIZE]), name="big")
        opt = SyncReplicasWithBackups(tf.keras.optimizers.SGD(0.1), replicas,
                                      workers)

    @tf.function
    def step():
        def replica_fn():
            with tf.GradientTape() as tape:
                with tf.device(v.device):
                    head = v[:1]  # read one float, not 32 MB
                loss = tf.reduce_sum(head)
            grad = tf.convert_to_tensor(tape.gradient(loss, v))
            opt.apply_gradients([(grad, v)])
        strategy.run(replica_fn)

    def admitted():
        return sum(w["admitted"] + w["admitted_closed"]
                   for w in opt.sync_stats()["per_worker"])

    for _ in range(workers):
        coordinator.schedule(step)
    coordinator.join()
    b0, a0 = _lo_bytes(), admitted()
    for _ in range(pushes):
        coordinator.schedule(step)
    coordinator.join()
    b1, a1 = _lo_bytes(), admitted()
    return {"replicas_to_aggregate": replicas, "pushes": pushes,
            "admitted": a1 - a0, "mb_per_push": (b1 - b0) / pushes / 2**20,
            "gradient_mb": SIZE * 4 / 2**20}


def main():
    sys.path.insert(0, os.getcwd())
    from ps_sync.testing import fresh_interpreter
    results = [fresh_interpreter.run(HERE + ":_run",
                                     dict(replicas=n, pushes=12), timeout=300)
               for n in (3, 1)]
    for r in results:
        expected = r["admitted"] * r["gradient_mb"] / r["pushes"]
        print("N=%d: %d of %d pushes admitted, %.1f MB/push on loopback "
              "(admitted gradients alone: %.1f MB/push)"
              % (r["replicas_to_aggregate"], r["admitted"], r["pushes"],
                 r["mb_per_push"], expected))
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/dropped_push_bytes.json", "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
