"""Evaluation on the chief: precision@1 and @5 of the training model's
current weights on the held-out set.

`model.evaluate` under ParameterServerStrategy fails on a finite dataset, so
the chief keeps a local copy of the model (built outside the strategy's
scope, its variables on the chief), copies the weights into it and evaluates
that. With a moving average of the weights, the averages are what is
evaluated, as TF1's Inception eval restored them.
"""
import json
import os
import time

import ps_sync.keras_env  # noqa: F401

import tensorflow as tf

from models import registry
from ps_sync import shard_apply

EVAL_FILE = "eval.jsonl"


def moving_average_weights(model, optimizer):
    """model.get_weights() with each trainable variable replaced by its
    moving average, if the optimizer keeps one (tf-keras `use_ema`; the
    averages, not the flag: the trainer turns the flag off at a fit's end
    so that tf-keras leaves the weights alone)."""
    weights = model.get_weights()
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    trainable = {id(v) for v in model.trainable_variables}
    out = []
    for var, value in zip(model.weights, weights):
        average = (shard_apply.moving_average(inner, var)
                   if id(var) in trainable else None)
        out.append(value if average is None else average.numpy())
    return out


class ChiefEvaluator:
    """A local copy of the model and the eval set; appends each result to
    `<run_dir>/eval.jsonl` (kept across chief restarts; the evaluator task
    uses its own file).

    The loop is its own tf.function rather than `Model.evaluate`: inside
    `model.fit`'s callbacks the ParameterServerStrategy scope is active, and
    Keras would schedule the copy's evaluation on the workers.
    """

    def __init__(self, model_name, num_classes, input_shape, eval_dataset,
                 run_dir=None, history_file=EVAL_FILE):
        self.model = registry.build_model(model_name, num_classes,
                                          input_shape=input_shape)
        self.dataset = eval_dataset
        self.path = os.path.join(run_dir, history_file) if run_dir else None
        self.history = read_history(self.path) if run_dir else []
        self._k = min(5, num_classes)
        self._step = tf.function(self._batch_counts)

    def _batch_counts(self, x, y):
        logits = registry.main_logits(self.model(x, training=False))
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        loss = tf.keras.losses.sparse_categorical_crossentropy(
            y, logits, from_logits=True)
        top1 = tf.math.in_top_k(y, logits, 1)
        topk = tf.math.in_top_k(y, logits, self._k)
        return (tf.reduce_sum(tf.cast(top1, tf.float64)),
                tf.reduce_sum(tf.cast(topk, tf.float64)),
                tf.reduce_sum(tf.cast(loss, tf.float64)),
                tf.cast(tf.size(y), tf.float64))

    def evaluate(self, weights, update, elapsed_s=None, **extra):
        """Evaluate `weights` as of `update`; `extra` fields go into the
        record as they are."""
        start = time.time()
        self.model.set_weights(weights)
        top1 = topk = loss = count = 0.0
        for x, y in self.dataset:
            a, b, c, n = self._step(x, y)
            top1, topk, loss, count = (top1 + float(a), topk + float(b),
                                       loss + float(c), count + float(n))
        record = {"update": int(update), "time": time.time(),
                  "elapsed_s": elapsed_s, "examples": int(count),
                  "top1": top1 / count, "top5": topk / count,
                  "loss": loss / count,
                  "eval_s": round(time.time() - start, 3)}
        record.update(extra)
        self.history.append(record)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        return record


def read_history(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
