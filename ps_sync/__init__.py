"""ps_sync: synchronous SGD with backup workers on ParameterServerStrategy.

    import ps_sync
    optimizer = ps_sync.SyncReplicasWithBackups(
        tf.keras.optimizers.SGD(0.1), replicas_to_aggregate=N,
        total_num_replicas=N + b)

Importing ps_sync pins tf.keras to tf-keras (Keras 2) before TensorFlow
loads; TensorFlow itself is loaded only when a name below is first used, so
light entry points (the launcher, a cluster task) stay fast.
"""
import importlib

from ps_sync import keras_env  # noqa: F401  (must run before TensorFlow loads)

_EXPORTS = {
    "SyncReplicasWithBackups": "ps_sync.optimizer",
    "AdaptiveQuorum": "ps_sync.quorum",
    "FixedQuorum": "ps_sync.quorum",
    "TimeoutThenDegrade": "ps_sync.quorum",
    "TimeoutThenFail": "ps_sync.quorum",
    "QuorumTimeoutError": "ps_sync.watchdog",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError("module 'ps_sync' has no attribute %r" % name)
