"""The wrapped optimizer's update, one parameter server at a time.

A step's close applies the mean gradient to every variable. With the
variables spread over several parameter servers, a close traced as one graph
spans them all, and every push (closing or not) drags that graph's
cross-server edges under the lock: with 2 PS a push made ~20 server-to-server
transfers in a chain of round trips and kept 0.40x async's pushes/s. A close
cut per server runs as one single-device functional If on each, whose branch
touches only that server's variables, slots and sums; the protocol sends each
server one small decision vector per push and gets one token back.

What keeps the wrapped optimizer's update on one device: its per-variable
update reads, besides the variable and its slots, a few scalars (the step
counter, the learning rate, hyperparameter variables) that live on one
server. They are handed to each server's branch as values (the step counter
read under the lock, the variables just before it, where they live): the
branch is traced with a shallow copy of the optimizer whose attributes that
hold them are the values (`_with_values`), so the update code runs
unchanged. This only works for optimizers whose
per-variable update reads nothing else and writes nothing but the variable
and its own slots: the families listed below, and no option that couples
variables (global gradient clipping). The moving average of the weights
(`use_ema`) is per variable, its averages beside their variables, and an
XLA update (`jit_compile`, which tf-keras turns on where the coordinator
sees a GPU) is compiled per variable: both are cut too. Any other
optimizer keeps the whole-update close (`unsupported_reason`).
"""
# pylint: disable=protected-access
import copy

import tensorflow as tf
from tf_keras.src.optimizers.schedules import learning_rate_schedule

# Per-variable updates that read only the variable, its slots and the
# scalars handed over as values (checked in tests/test_shard_apply.py: an
# update cut per server equals the whole update).
SUPPORTED_CURRENT = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad")
SUPPORTED_LEGACY = ("SGD", "Adam", "RMSprop", "Adagrad")


def _with_values(obj, values):
    """A shallow copy of `obj` (the same slots, variables and lists) whose
    attributes named in `values` hold those values instead. `obj` itself is
    untouched: other threads may read it (`optimizer.iterations`) while a
    push is traced. Set past tracking: the copy shares the original's
    checkpoint-dependency lists."""
    clone = copy.copy(obj)
    for name, value in values.items():
        object.__setattr__(clone, name, value)
    return clone


def decay_weight(inner, var):
    """The decoupled weight decay of a current `Optimizer` (AdamW...)."""
    lr = tf.cast(inner.learning_rate, var.dtype)
    wd = tf.cast(inner.weight_decay, var.dtype)
    return var.assign_sub(var * wd * lr)


def _read(variable):
    with tf.device(variable.device):
        return variable.read_value()


def _family_reason(inner, supported, legacy):
    name = type(inner).__name__
    if name not in supported or not type(inner).__module__.startswith(
            "tf_keras."):
        return "%s%s is not one of the optimizers cut per server (%s)" % (
            "legacy " if legacy else "", name, ", ".join(supported))
    if getattr(inner, "global_clipnorm", None) is not None:
        return "global_clipnorm couples the variables"
    return None


def current_prepared(inner, grads_and_vars, decay):
    """What a current `Optimizer` does before its per-variable updates: clip
    the gradients, deduplicate sparse ones, decay the weights (`decay(var)`
    for each variable that takes weight decay)."""
    grads, variables = zip(*grads_and_vars)
    grads = inner._clip_gradients(list(grads))
    grads = inner._deduplicate_sparse_grad(grads)
    if inner.weight_decay is not None:
        for var in variables:
            if inner._use_weight_decay(var):
                decay(var)
    return list(zip(grads, variables))


def moving_average(inner, var):
    """The moving average tf-keras keeps of `var` (`use_ema`; one per
    variable, indexed by its key), or None if it keeps none."""
    averages = getattr(inner, "_model_variables_moving_average", None)
    if not averages:
        return None
    return averages[inner._index_dict[inner._var_key(var)]]


def _update_moving_averages(inner, variables):
    """The moving average of the weights (`use_ema`) of `variables`, and
    every `ema_overwrite_frequency` updates the variables overwritten with
    it, the same arithmetic as tf-keras' `Optimizer`, on the step counter
    handed over as a value."""
    averages = [moving_average(inner, var) for var in variables]
    momentum = inner.ema_momentum
    for average, var in zip(averages, variables):
        average.assign(momentum * average + (1 - momentum) * var)
    if not inner.ema_overwrite_frequency:
        return
    overwrite = (inner.iterations + 1) % inner.ema_overwrite_frequency == 0

    def overwritten():
        return tf.group([var.assign(average)
                         for average, var in zip(averages, variables)])

    tf.cond(overwrite, overwritten, tf.no_op)


class CurrentShardApply:
    """Per-server updates of a current `tf.keras.optimizers.Optimizer`."""

    def __init__(self, inner):
        self._inner = inner

    def unsupported_reason(self):
        return _family_reason(self._inner, SUPPORTED_CURRENT, legacy=False)

    def read_scalars(self):
        """The scalar variables the updates read besides the step counter
        (the learning rate), read where they live. The protocol reads them
        before taking the lock: under it, each read on another server was
        one more transfer each way on every push. They change only when the
        user assigns them, so an update may use the value of a moment
        before its close."""
        lr = self._inner._learning_rate
        if isinstance(lr, tf.Variable):
            return {"_learning_rate": _read(lr)}
        return {}

    def current_rate(self, step):
        """A schedule's learning rate at `step` (None without a schedule)."""
        lr = self._inner._learning_rate
        if not isinstance(lr, learning_rate_schedule.LearningRateSchedule):
            return None
        return lr(tf.cast(step, self._inner._iterations.dtype))

    def scalar_values(self, step, read=None, rate=None):
        """{attribute: value} of the scalars the updates read, at `step`
        (the step counter before this update, as the optimizer sees it);
        `read` from `read_scalars` (read now if not given); `rate` from
        `current_rate(step)` (computed now if not given)."""
        inner = self._inner
        values = dict(self.read_scalars() if read is None else read)
        values["_iterations"] = tf.cast(step, inner._iterations.dtype)
        if rate is None:
            rate = self.current_rate(step)
        if rate is not None:
            values["_current_learning_rate"] = tf.cast(
                rate, inner._current_learning_rate.dtype)
        return values

    def record(self, values):
        """Writes the whole update would make besides the variables: the
        current learning rate of a schedule (what `optimizer.learning_rate`
        shows)."""
        if "_current_learning_rate" not in values:
            return []
        variable = self._inner._current_learning_rate
        with tf.device(variable.device):
            return [variable.assign(values["_current_learning_rate"])]

    def record_device(self):
        """Where `record` writes (None: it writes nothing)."""
        if not isinstance(self._inner._learning_rate,
                          learning_rate_schedule.LearningRateSchedule):
            return None
        return self._inner._current_learning_rate.device

    def apply(self, grads_and_vars, values):
        """The update of `grads_and_vars` (all on one server), with the
        scalars taken from `values`. Traced inside that server's branch."""
        inner = _with_values(self._inner, values)
        grads_and_vars = current_prepared(
            inner, grads_and_vars, lambda var: decay_weight(inner, var))
        for grad, var in grads_and_vars:
            if inner.jit_compile:  # as the whole update: XLA per variable
                inner._update_step_xla(grad, var, id(inner._var_key(var)))
            else:
                inner._update_step(grad, var)
        variables = [var for _, var in grads_and_vars]
        if inner.use_ema:
            # As Optimizer._distributed_apply_gradients_fn, before the
            # constraints: each average lives beside its variable.
            _update_moving_averages(inner, variables)
        for var in variables:
            if var.constraint is not None:
                var.assign(var.constraint(var))


class LegacyShardApply:
    """Per-server updates of a `tf.keras.optimizers.legacy` optimizer."""

    def __init__(self, inner):
        self._inner = inner

    def unsupported_reason(self):
        inner = self._inner
        if inner.gradient_transformers:
            return "gradient_transformers may couple the variables"
        return _family_reason(inner, SUPPORTED_LEGACY, legacy=True)

    def read_scalars(self):
        """The hyperparameter variables, read where they live (see
        `CurrentShardApply.read_scalars`)."""
        return {name: _read(value)
                for name, value in self._inner._hyper.items()
                if isinstance(value, tf.Variable)}

    def current_rate(self, step):
        del step  # a legacy schedule is evaluated in the update itself
        return None

    def scalar_values(self, step, read=None, rate=None):
        del rate
        inner = self._inner
        hyper = dict(inner._hyper)
        hyper.update(self.read_scalars() if read is None else read)
        return {"_iterations": tf.cast(step, inner.iterations.dtype),
                "_hyper": hyper}

    def record(self, values):
        del values
        return []

    def record_device(self):
        return None

    def apply(self, grads_and_vars, values):
        inner = _with_values(self._inner, values)
        variables = [v for _, v in grads_and_vars]
        apply_state = inner._prepare(variables)
        grads_and_vars = inner._transform_gradients(grads_and_vars)
        for grad, var in grads_and_vars:
            kwargs = {}
            if isinstance(grad, tf.IndexedSlices):
                if "apply_state" in inner._sparse_apply_args:
                    kwargs["apply_state"] = apply_state
                inner._resource_apply_sparse_duplicate_indices(
                    grad.values, var, grad.indices, **kwargs)
                continue
            if "apply_state" in inner._dense_apply_args:
                kwargs["apply_state"] = apply_state
            update = inner._resource_apply_dense(grad, var, **kwargs)
            if var.constraint is not None:
                with tf.control_dependencies([update]):
                    var.assign(var.constraint(var))
