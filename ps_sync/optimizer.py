"""`SyncReplicasWithBackups`: a tf-keras optimizer wrapper that turns
asynchronous ParameterServerStrategy training into synchronous training with
backup workers.

`SyncReplicasWithBackups(opt, replicas_to_aggregate=N, total_num_replicas=N+b)`
returns a wrapper of the same family as `opt` (the current
`tf.keras.optimizers.Optimizer` or a `tf.keras.optimizers.legacy` one), as
tf-keras does for LossScaleOptimizer, so `model.compile` accepts it. The
wrapper delegates checkpointing to the wrapped optimizer: a checkpoint holds
exactly the wrapped optimizer's keys (`iter`/`iterations`, slots,
hyperparameters), so checkpoints move freely between synchronous and
asynchronous runs. The protocol's own state is not saved; it realigns to the
restored step on the first push.
"""
# pylint: disable=protected-access
from ps_sync import keras_env  # noqa: F401

import contextlib

from absl import logging
import tensorflow as tf
from tf_keras.src.optimizers import optimizer as optimizer_v3
from tf_keras.src.optimizers.legacy import optimizer_v2

from ps_sync import protocol as protocol_lib
from ps_sync import quorum as quorum_lib
from ps_sync import shard_apply as shard_apply_lib
from ps_sync import telemetry as telemetry_lib
from ps_sync import watchdog as watchdog_lib


def _current_worker_index():
    return tf.distribute.coordinator.experimental_get_current_worker_index()


def _parameter_server_strategy(strategy):
    return isinstance(strategy,
                      tf.distribute.experimental.ParameterServerStrategy)


def _sync_from_config(config, custom_objects, legacy):
    config = dict(config)
    inner = tf.keras.optimizers.deserialize(
        config.pop("optimizer"), custom_objects=custom_objects,
        use_legacy_optimizer=legacy)
    return SyncReplicasWithBackups(inner, **config)


class _SyncReplicasMixin:
    """What the two optimizer families share: settings, protocol, push."""

    def _init_sync(self, inner, replicas_to_aggregate, total_num_replicas=None,
                   quorum_policy=None, telemetry_dir=None,
                   tensorboard_dir=None,
                   max_wait_s=600.0,
                   ask_before_send_min_bytes=(
                       protocol_lib.ASK_BEFORE_SEND_MIN_BYTES)):
        if not isinstance(inner, (optimizer_v3.Optimizer,
                                  optimizer_v2.OptimizerV2)):
            raise TypeError(
                "SyncReplicasWithBackups wraps a tf-keras optimizer "
                "(tf.keras.optimizers.* or tf.keras.optimizers.legacy.*), "
                "got %r" % (inner,))
        if isinstance(inner, _SyncReplicasMixin):
            raise TypeError("the optimizer is already a SyncReplicasWithBackups")
        total = (replicas_to_aggregate if total_num_replicas is None
                 else total_num_replicas)
        if replicas_to_aggregate < 1:
            raise ValueError("replicas_to_aggregate must be at least 1, got %d"
                             % replicas_to_aggregate)
        if total < replicas_to_aggregate:
            raise ValueError(
                "total_num_replicas (%d) must be at least replicas_to_aggregate"
                " (%d): backups are the workers beyond the quorum"
                % (total, replicas_to_aggregate))
        self._optimizer = inner
        self._replicas_to_aggregate = int(replicas_to_aggregate)
        self._total_num_replicas = int(total)
        if not isinstance(quorum_policy, quorum_lib.QuorumPolicy):
            quorum_policy = quorum_lib.from_config(quorum_policy)
        self._quorum_policy = quorum_policy
        self._telemetry_dir = telemetry_dir
        self._tensorboard_dir = tensorboard_dir
        self._max_wait_s = float(max_wait_s)
        if (isinstance(ask_before_send_min_bytes, bool)
                or not isinstance(ask_before_send_min_bytes, int)
                or ask_before_send_min_bytes < 0):
            raise ValueError(
                "ask_before_send_min_bytes must be a whole number of bytes "
                ">= 0 (0: every push with backups asks leave), got %r"
                % (ask_before_send_min_bytes,))
        self._ask_before_send_min_bytes = ask_before_send_min_bytes
        self._protocol = None
        self._protocol_vars = None
        # The per-server updater (shard_apply), when the optimizer allows.
        self._by_server = None
        self._update_cut_per_server = None
        self._watchdog = None
        self._telemetry = None

    # -- public surface ------------------------------------------------------

    @property
    def inner_optimizer(self):
        return self._optimizer

    @property
    def replicas_to_aggregate(self):
        return self._replicas_to_aggregate

    @property
    def total_num_replicas(self):
        return self._total_num_replicas

    @property
    def protocol(self):
        """The `SyncProtocol` once the first step was traced, else None."""
        return self._protocol

    def sync_stats(self):
        """Push and wait counters per worker (see `SyncProtocol.stats`)."""
        if self._protocol is None:
            return None
        stats = self._protocol.stats()
        stats["watchdog_releases"] = (self._watchdog.releases
                                      if self._watchdog else 0)
        stats["degraded_steps"] = (list(self._watchdog.degraded_steps)
                                   if self._watchdog else [])
        stats["degraded_count"] = (self._watchdog.degraded_count
                                   if self._watchdog else 0)
        # True, or why the whole update stays in one close (slower with
        # several parameter servers).
        stats["update_cut_per_server"] = self._update_cut_per_server
        return stats

    @property
    def telemetry(self):
        """The `TelemetryWriter` (the latest records in `.pushes`/`.steps`,
        new ones by `.since`)."""
        return self._telemetry

    def close(self):
        """Stop the coordinator-side threads and flush telemetry."""
        if self._watchdog is not None:
            self._watchdog.stop()
        if self._telemetry is not None:
            self._telemetry.close()

    def _sync_get_config(self):
        config = {"optimizer": tf.keras.optimizers.serialize(self._optimizer)}
        config.update(self._sync_config())
        return config

    def _sync_config(self):
        return {"replicas_to_aggregate": self._replicas_to_aggregate,
                "total_num_replicas": self._total_num_replicas,
                "quorum_policy": self._quorum_policy.get_config(),
                "telemetry_dir": self._telemetry_dir,
                "tensorboard_dir": self._tensorboard_dir,
                "max_wait_s": self._max_wait_s,
                "ask_before_send_min_bytes": self._ask_before_send_min_bytes}

    # -- the push ------------------------------------------------------------

    def _sync_active(self):
        strategy = tf.distribute.get_strategy()
        if not _parameter_server_strategy(strategy):
            return False
        return self._total_num_replicas > 1

    def _check_cluster(self, strategy):
        workers = strategy._num_workers
        if workers != self._total_num_replicas:
            raise ValueError(
                "SyncReplicasWithBackups: total_num_replicas=%d but the "
                "cluster has %d workers; set total_num_replicas to the number "
                "of workers (replicas_to_aggregate=%d plus the backups)"
                % (self._total_num_replicas, workers,
                   self._replicas_to_aggregate))

    def _ensure_protocol(self, var_list, grads):
        if self._protocol is not None:
            if [id(v) for v in var_list] != self._protocol_vars:
                # The accumulators were built for the first list.
                raise ValueError(
                    "SyncReplicasWithBackups aggregates one fixed list of "
                    "variables, the one of its first apply_gradients (%d "
                    "variables); this call passes %d, or others. Use one "
                    "wrapper per set of variables, and make every variable "
                    "get a gradient (None gradients are dropped)."
                    % (len(self._protocol_vars), len(var_list)))
            return
        self._protocol_vars = self._no_dependency([id(v) for v in var_list])
        strategy = tf.distribute.get_strategy()
        self._check_cluster(strategy)
        with tf.init_scope(), contextlib.ExitStack() as scopes:
            if not tf.distribute.has_strategy():
                scopes.enter_context(strategy.scope())
            self._build_inner(var_list)
            # Not a checkpoint dependency (the wrapper delegates tracking to
            # the wrapped optimizer): protocol state must never be restored,
            # the protocol realigns to the restored step instead.
            self._protocol = self._no_dependency(protocol_lib.SyncProtocol(
                var_list, self._replicas_to_aggregate,
                self._total_num_replicas,
                initial_step=int(self._optimizer.iterations.numpy()),
                step_var=self._optimizer.iterations,
                ask_before_send_min_bytes=self._ask_before_send_min_bytes,
                sparse=[isinstance(g, tf.IndexedSlices) for g in grads]))
            by_server = self._shard_apply()
            reason = by_server.unsupported_reason()
            self._update_cut_per_server = reason or True
            if reason:
                # Correct either way; with several parameter servers every
                # push then carries the whole update's cross-server graph.
                logging.info("ps_sync: the update is not cut per parameter "
                             "server: %s", reason)
                by_server = None
            self._by_server = self._no_dependency(by_server)
            self._protocol.set_coordinator_apply(
                lambda means: self._cross_replica_apply(
                    strategy, list(zip(means, var_list)), None),
                self._optimizer.iterations, strategy, by_server=by_server)
            self._protocol.prepare_coordinator()
            coordinator = getattr(strategy, "_cluster_coordinator", None)
            if coordinator is not None:
                self._watchdog = watchdog_lib.StepWatchdog(
                    self._protocol, coordinator, self._quorum_policy,
                    max_wait_s=self._max_wait_s).start()
            self._telemetry = telemetry_lib.TelemetryWriter(
                self._protocol, self._telemetry_dir,
                tensorboard_dir=self._tensorboard_dir).start()
        logging.info("ps_sync: %d of %d workers per step, run id %s",
                     self._replicas_to_aggregate, self._total_num_replicas,
                     self._protocol.run_id)

    def _sync_apply(self, grads_and_vars, name):
        grads_and_vars = [(g, v) for g, v in grads_and_vars if g is not None]
        if not grads_and_vars:
            return self.iterations
        grads, variables = zip(*grads_and_vars)
        replica_context = tf.distribute.get_replica_context()
        if replica_context is None:
            raise RuntimeError(
                "SyncReplicasWithBackups.apply_gradients must run in a replica "
                "context: call it inside strategy.run(...) in the function "
                "given to ClusterCoordinator.schedule (model.fit does this)")
        worker = _current_worker_index()

        # The push runs in cross-replica context: the wrapped optimizer's apply
        # sits inside a tf.cond, where a merge_call is not allowed.
        def push(strategy):
            self._ensure_protocol(variables, grads)

            def apply_fn(means):
                return self._cross_replica_apply(
                    strategy, list(zip(means, variables)), name)

            return self._protocol.push(worker, list(grads),
                                       self._optimizer.iterations, apply_fn,
                                       by_server=self._by_server)

        outcome = replica_context.merge_call(push)
        # Read where the outcome is, on the PS: no round trip to the worker.
        with tf.control_dependencies([outcome]):
            return self._optimizer.iterations.read_value()


@tf.keras.utils.register_keras_serializable(package="ps_sync",
                                            name="SyncReplicasWithBackups")
class _SyncReplicasV3(tf.__internal__.tracking.DelegatingTrackableMixin,
                      optimizer_v3.Optimizer, _SyncReplicasMixin):
    """Wrapper for the current tf.keras.optimizers.Optimizer family."""

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def __init__(self, optimizer, replicas_to_aggregate, total_num_replicas=None,
                 **settings):
        self._init_sync(optimizer, replicas_to_aggregate, total_num_replicas,
                        **settings)
        # Optimizer.__init__ is not called: the wrapped one owns all state.
        tf.__internal__.tracking.DelegatingTrackableMixin.__init__(
            self, self._optimizer)

    def apply_gradients(self, grads_and_vars, name=None,
                        skip_gradients_aggregation=False, **kwargs):
        if not self._sync_active():
            return self._optimizer.apply_gradients(
                grads_and_vars, name=name,
                skip_gradients_aggregation=skip_gradients_aggregation,
                **kwargs)
        return self._sync_apply(grads_and_vars, name)

    def _build_inner(self, var_list):
        self._optimizer.build(var_list)

    def _shard_apply(self):
        return shard_apply_lib.CurrentShardApply(self._optimizer)

    def _cross_replica_apply(self, strategy, grads_and_vars, name):
        # What Optimizer.apply_gradients does, minus the cross-replica
        # aggregation (one replica per worker) and the merge_calls.
        inner = self._optimizer
        with tf.name_scope(name or inner.name):
            inner._compute_current_learning_rate()
            grads_and_vars = shard_apply_lib.current_prepared(
                inner, grads_and_vars, lambda var: strategy.extended.update(
                    var, self._decay_weight, group=False))
            variables = [var for _, var in grads_and_vars]
            iteration = inner._distributed_apply_gradients_fn(
                strategy, grads_and_vars)
            constrained = [var.assign(var.constraint(var))
                           for var in variables if var.constraint is not None]
        with tf.control_dependencies(constrained):
            return tf.identity(iteration)

    def _decay_weight(self, var):
        return shard_apply_lib.decay_weight(self._optimizer, var)

    def build(self, var_list):
        return self._optimizer.build(var_list)

    @property
    def iterations(self):
        return self._optimizer.iterations

    @iterations.setter
    def iterations(self, variable):
        self._optimizer.iterations = variable

    @property
    def variables(self):
        return self._optimizer.variables

    @property
    def learning_rate(self):
        return self._optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self._optimizer.learning_rate = learning_rate

    @property
    def use_ema(self):
        return self._optimizer.use_ema

    @use_ema.setter
    def use_ema(self, use_ema):
        self._optimizer.use_ema = use_ema

    @property
    def ema_momentum(self):
        return self._optimizer.ema_momentum

    def finalize_variable_values(self, var_list):
        return self._optimizer.finalize_variable_values(var_list)

    def get_config(self):
        return self._sync_get_config()

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return _sync_from_config(config, custom_objects, legacy=False)


@tf.keras.utils.register_keras_serializable(
    package="ps_sync", name="SyncReplicasWithBackupsLegacy")
class _SyncReplicasLegacy(tf.__internal__.tracking.DelegatingTrackableMixin,
                          optimizer_v2.OptimizerV2, _SyncReplicasMixin):
    """Wrapper for the tf.keras.optimizers.legacy family (OptimizerV2)."""

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def __init__(self, optimizer, replicas_to_aggregate, total_num_replicas=None,
                 **settings):
        self._init_sync(optimizer, replicas_to_aggregate, total_num_replicas,
                        **settings)
        tf.__internal__.tracking.DelegatingTrackableMixin.__init__(
            self, self._optimizer)
        # OptimizerV2 attributes Keras reads on any optimizer.
        self._hyper = {}
        self._weights = []
        self._iterations = None
        self._name = "SyncReplicasWithBackups"

    def apply_gradients(self, grads_and_vars, name=None,
                        experimental_aggregate_gradients=True):
        if not self._sync_active():
            return self._optimizer.apply_gradients(
                grads_and_vars, name=name,
                experimental_aggregate_gradients=
                experimental_aggregate_gradients)
        return self._sync_apply(grads_and_vars, name)

    def _build_inner(self, var_list):
        self._optimizer._create_all_weights(var_list)
        _ = self._optimizer.iterations

    def _shard_apply(self):
        return shard_apply_lib.LegacyShardApply(self._optimizer)

    def _cross_replica_apply(self, strategy, grads_and_vars, name):
        # What OptimizerV2.apply_gradients does, minus the cross-replica
        # aggregation (one replica per worker) and the merge_call.
        inner = self._optimizer
        with tf.name_scope(inner._name):
            apply_state = inner._prepare([v for _, v in grads_and_vars])
            grads_and_vars = inner._transform_gradients(grads_and_vars)
            return inner._distributed_apply(strategy, grads_and_vars,
                                            apply_state=apply_state,
                                            name=name)

    def get_gradients(self, loss, params):
        return self._optimizer.get_gradients(loss, params)

    def get_weights(self):
        return self._optimizer.get_weights()

    def set_weights(self, weights):
        return self._optimizer.set_weights(weights)

    @property
    def weights(self):
        return self._optimizer.weights

    def variables(self):
        return self._optimizer.variables()

    @property
    def iterations(self):
        return self._optimizer.iterations

    @iterations.setter
    def iterations(self, variable):
        self._optimizer.iterations = variable

    def get_slot_names(self):
        return self._optimizer.get_slot_names()

    def get_slot(self, var, slot_name):
        return self._optimizer.get_slot(var, slot_name)

    def __getattribute__(self, name):
        try:
            return object.__getattribute__(self, name)
        except AttributeError as e:
            if name == "_optimizer" or name == "_hyper":
                raise e
            # Hyperparameters (learning_rate, decay, ...) live on the
            # wrapped optimizer.
            if name == "lr":
                name = "learning_rate"
            if name in self._optimizer._hyper:
                return self._optimizer._get_hyper(name)
            raise e

    def __setattr__(self, name, value):
        if name == "lr":
            name = "learning_rate"
        if (name != "_optimizer" and hasattr(self, "_optimizer")
                and name in self._optimizer._hyper):
            self._optimizer._set_hyper(name, value)
        else:
            super().__setattr__(name, value)

    def get_config(self):
        return self._sync_get_config()

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return _sync_from_config(config, custom_objects, legacy=True)


class _Dispatch(type):
    """Makes `SyncReplicasWithBackups(opt, ...)` build the wrapper of `opt`'s
    family, and `isinstance(x, SyncReplicasWithBackups)` true for both."""

    def __call__(cls, optimizer, *args, **kwargs):
        if isinstance(optimizer, optimizer_v2.OptimizerV2):
            return _SyncReplicasLegacy(optimizer, *args, **kwargs)
        if isinstance(optimizer, optimizer_v3.Optimizer):
            return _SyncReplicasV3(optimizer, *args, **kwargs)
        raise TypeError(
            "SyncReplicasWithBackups wraps a tf-keras optimizer "
            "(tf.keras.optimizers.* or tf.keras.optimizers.legacy.*), got %r"
            % (optimizer,))

    def __instancecheck__(cls, instance):
        return isinstance(instance, _SyncReplicasMixin)


class SyncReplicasWithBackups(metaclass=_Dispatch):
    """Synchronous SGD with backup workers (Chen et al., arXiv 1604.00981).

    Args:
      optimizer: the tf-keras optimizer that applies each aggregated update
        (current or legacy family; the wrapper is of the same family).
      replicas_to_aggregate: N, fresh gradients averaged into each update.
      total_num_replicas: N + b, the number of workers (defaults to N). The
        cluster must have exactly this many workers.
      quorum_policy: a `ps_sync.quorum.QuorumPolicy` or its config dict;
        default fixed N. `TimeoutThenDegrade(min_replicas_to_aggregate,
        quorum_timeout_s)` or `TimeoutThenFail(quorum_timeout_s)` bound how
        long a step may wait for its quorum.
      telemetry_dir: where the coordinator writes pushes.jsonl and
        steps.jsonl (records are kept in memory either way).
      tensorboard_dir: where to write per-update TensorBoard scalars
        (ps_sync/collect_s, update_interval_s, quorum, wasted_share).
      max_wait_s: the step watchdog releases any worker that has waited this
        long for its step to close (it normally releases them far earlier,
        when no pending closure could close the step).
      ask_before_send_min_bytes: with backups, a push whose gradients total
        at least this many bytes (all shapes static) first asks the PS for
        leave and sends nothing if it is certain to be dropped; smaller ones
        send at once, since the question is a round trip per push and costs
        more than a small dropped gradient. Default 1 MiB; 0: always ask.

    Without ParameterServerStrategy, or with a single worker, it is exactly the
    wrapped optimizer.
    """

    def __init__(self, optimizer, replicas_to_aggregate,
                 total_num_replicas=None, quorum_policy=None,
                 telemetry_dir=None, tensorboard_dir=None,
                 max_wait_s=600.0,
                 ask_before_send_min_bytes=(
                     protocol_lib.ASK_BEFORE_SEND_MIN_BYTES)):
        raise AssertionError("constructed through _Dispatch")  # pragma: no cover
