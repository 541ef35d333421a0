"""A probe model whose applied updates can be decoded.

Variables:
  t       +1 per applied update (its gradient is the constant -1/lr), so the
          value a worker reads is the parameter version it computes on;
  marks   [max_steps, total] matrices, one per shard placement, whose
          gradient is one_hot(version) x one_hot(worker) / lr: after training,
          row k holds -1/N at every worker that contributed to the update
          applied on version k.
With plain SGD each applied update is the mean of the admitted gradients, so
row k of every marks matrix must have exactly N entries of -1/N (quorum,
freshness, distinct workers), identical across all marks matrices
(consistency across shards).
"""
import ps_sync.keras_env  # noqa: F401

import numpy as np
import tensorflow as tf

MAX_STEPS = 256
LR = 0.5


def worker_index():
    return tf.distribute.coordinator.experimental_get_current_worker_index()


def delayed_dataset_fn(delays, total):
    """Per-worker dataset of dummy batches; worker i sleeps delays[i] s per
    element, which really slows that worker's steps."""
    from tensorflow.python.data.experimental.ops import testing

    micros = [int(d * 1e6) for d in delays] + [0] * (total - len(delays))

    def dataset_fn():
        delay = tf.gather(tf.constant(micros, tf.int64), worker_index())
        ds = tf.data.Dataset.from_tensors(tf.zeros([1, 1])).repeat()
        return ds.apply(testing.sleep(delay))
    return dataset_fn


class ProbeModel(tf.keras.Model):
    """Its output is the probe loss itself; compile with `probe_loss`."""

    def __init__(self, total, num_marks=2, max_steps=MAX_STEPS):
        super().__init__()
        self.total = total
        self.max_steps = max_steps
        self.t = self.add_weight("t", shape=[], initializer="zeros")
        self.marks = [self.add_weight("marks%d" % i, shape=[max_steps, total],
                                      initializer="zeros")
                      for i in range(num_marks)]

    def call(self, x):
        version = tf.stop_gradient(self.t)
        mark = (tf.one_hot(tf.cast(version, tf.int32), self.max_steps)[:, None]
                * tf.one_hot(worker_index(), self.total)[None, :])
        loss = -self.t / LR
        for m in self.marks:
            loss += tf.reduce_sum(m * mark) / LR
        # One value per example of the batch, all equal.
        return tf.zeros_like(x[:, :1]) + loss


def train_step_fn(strategy, model, optimizer):
    """The scheduled function of a custom training loop on the probe."""
    @tf.function
    def step(iterator):
        def replica_fn(x):
            with tf.GradientTape() as tape:
                loss = probe_loss(None, model(x))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return strategy.run(replica_fn, args=(next(iterator),))
    return step


def probe_loss(y_true, y_pred):
    del y_true
    return tf.reduce_mean(y_pred)


def decode_any_quorum(model):
    """Like `decode` for runs whose quorum may change per step (degraded
    steps): row k must hold -1/q at exactly q workers, the same at every
    marks matrix. Returns (steps, rows)."""
    steps = int(model.t.numpy())
    marks = [np.asarray(tf.convert_to_tensor(m)) for m in model.marks]
    for other in marks[1:]:
        assert np.allclose(other, marks[0]), "shards saw different pushes"
    rows = []
    for k in range(steps):
        row = -marks[0][k]
        workers = np.nonzero(np.abs(row) > 1e-6)[0]
        assert len(workers) >= 1, "row %d is empty: %s" % (k, row)
        assert np.allclose(row[workers], 1.0 / len(workers)), (
            "row %d is not one mean of distinct fresh pushes: %s" % (k, row))
        rows.append([int(w) for w in workers])
    assert not np.abs(marks[0][steps:]).max(initial=0) > 1e-6, (
        "marks beyond the applied updates")
    return steps, rows


def decode(model, replicas_to_aggregate):
    """Check the marks; returns (steps, rows) with rows[k] the contributing
    workers of update k. Raises AssertionError on any violation."""
    steps = int(model.t.numpy())
    marks = [np.asarray(tf.convert_to_tensor(m)) for m in model.marks]
    scaled = [np.rint(-m * replicas_to_aggregate).astype(int) for m in marks]
    for other in scaled[1:]:
        assert (other == scaled[0]).all(), "shards saw different pushes"
    rows = []
    for k in range(steps):
        row = scaled[0][k]
        assert set(np.unique(row)) <= {0, 1}, "row %d: %s" % (k, row)
        assert row.sum() == replicas_to_aggregate, "row %d: %s" % (k, row)
        rows.append([int(w) for w in np.nonzero(row)[0]])
    assert not scaled[0][steps:].any(), "marks beyond the applied updates"
    return steps, rows
