"""ps_sync: synchronous SGD with backup workers on ParameterServerStrategy.

    from ps_sync import SyncReplicasWithBackups
    optimizer = SyncReplicasWithBackups(tf.keras.optimizers.SGD(0.1),
                                        replicas_to_aggregate=N,
                                        total_num_replicas=N + b)
"""
from ps_sync import keras_env  # noqa: F401  (must run before TensorFlow loads)
from ps_sync.optimizer import SyncReplicasWithBackups  # noqa: E402
from ps_sync.quorum import (FixedQuorum, TimeoutThenDegrade,  # noqa: E402
                            TimeoutThenFail)
from ps_sync.watchdog import QuorumTimeoutError  # noqa: E402

__all__ = ["SyncReplicasWithBackups", "FixedQuorum", "TimeoutThenDegrade",
           "TimeoutThenFail", "QuorumTimeoutError"]
