"""An in-process TensorFlow cluster: workers and parameter servers as
`tf.distribute.Server` objects inside the calling process.

In-process servers can never be shut down, so a process gets one cluster; run
each cluster test in a fresh interpreter (see `fresh_interpreter`).
"""
import ps_sync.keras_env  # noqa: F401

import portpicker
import tensorflow as tf

_created = False


def create(num_workers, num_ps=1, rpc_layer="grpc"):
    """Start the servers and return a `SimpleClusterResolver` for them.

    Workers get `inter_op_parallelism_threads >= num_workers + 1`: with fewer,
    a 2-core machine deadlocks once several workers block on each other.
    """
    global _created
    if _created:
        raise RuntimeError(
            "an in-process cluster already exists in this process; in-process "
            "servers cannot be shut down, run each cluster in a fresh "
            "interpreter (ps_sync.testing.fresh_interpreter)")
    _created = True
    spec = {
        "worker": ["localhost:%d" % portpicker.pick_unused_port()
                   for _ in range(num_workers)],
        "ps": ["localhost:%d" % portpicker.pick_unused_port()
               for _ in range(num_ps)],
    }
    cluster_spec = tf.train.ClusterSpec(spec)
    worker_config = tf.compat.v1.ConfigProto()
    worker_config.inter_op_parallelism_threads = max(
        num_workers + 1, worker_config.inter_op_parallelism_threads)
    for i in range(num_workers):
        tf.distribute.Server(cluster_spec, job_name="worker", task_index=i,
                             config=worker_config, protocol=rpc_layer,
                             start=True)
    for i in range(num_ps):
        tf.distribute.Server(cluster_spec, job_name="ps", task_index=i,
                             protocol=rpc_layer, start=True)
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        cluster_spec, rpc_layer=rpc_layer)


def strategy(num_workers, num_ps=1, variable_partitioner=None):
    """A ParameterServerStrategy over a fresh in-process cluster."""
    resolver = create(num_workers, num_ps)
    return tf.distribute.experimental.ParameterServerStrategy(
        resolver, variable_partitioner=variable_partitioner)
