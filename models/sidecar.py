"""The evaluator task: evaluates every checkpoint the chief writes.

A spec with `"evaluator": 1` runs the training program a second time with
task type `evaluator`, outside the training cluster. It restores the model
part of each new checkpoint in <run_dir>/checkpoints into a local model
(with a recipe that keeps a moving average of the weights, the averages
from the optimizer's part, as the chief evaluates them), evaluates it on
the held-out set and appends the result to
<run_dir>/eval_sidecar.jsonl (with `saved_at`, the checkpoint's write time),
until the chief has written summary.json and the newest checkpoint has been
evaluated. Only the newest checkpoint at each look is evaluated. The
chief's own inline evaluations (eval.jsonl) do not depend on it.
"""
import os
import time

from ps_sync import keras_env  # noqa: F401

import tensorflow as tf

from models import datasets, evaluation, recipes

SIDECAR_FILE = "eval_sidecar.jsonl"


def checkpoint_update(path):
    """The update a checkpoint was saved at (CheckpointManager numbers them
    by the optimizer's step)."""
    return int(path.rsplit("-", 1)[1])


def run(config, run_dir, done_file, poll_s=2.0, say=print):
    evaluator = evaluation.ChiefEvaluator(
        config.model, config.num_classes, config.input_shape,
        datasets.eval_dataset(config.dataset, config.eval_batch_size,
                              config.data_dir, config.image_size),
        run_dir, history_file=SIDECAR_FILE)
    parts = {"model": evaluator.model}
    if config.recipe.ema_momentum > 0:
        # Only for its averages; the update schedule does not matter here.
        parts["optimizer"] = recipes.make_optimizer(config.recipe, 1)
        parts["optimizer"].build(evaluator.model.trainable_variables)
    checkpoint = tf.train.Checkpoint(**parts)
    directory = os.path.join(run_dir, "checkpoints")
    started = time.time()

    def chief_done():
        path = os.path.join(run_dir, done_file)
        return os.path.exists(path) and os.path.getmtime(path) >= started

    say("evaluator: watching %s" % directory)
    seen = {h["update"] for h in evaluator.history}

    def evaluate(path):
        update = checkpoint_update(path)
        if update in seen:
            return
        # When the weights existed: the save, not this (later) evaluation.
        saved_at = os.path.getmtime(path + ".index")
        checkpoint.restore(path).expect_partial()
        weights = evaluation.moving_average_weights(
            evaluator.model, parts.get("optimizer"))
        record = evaluator.evaluate(weights, update, time.time() - started,
                                    saved_at=saved_at)
        seen.add(update)
        say("evaluator: %s | precision@1 %.4f precision@5 %.4f"
            % (os.path.basename(path), record["top1"], record["top5"]))

    for path in tf.train.checkpoints_iterator(
            directory, min_interval_secs=poll_s, timeout=poll_s,
            timeout_fn=chief_done):
        evaluate(path)
    # The iterator can stop on the chief's done file before it has yielded
    # the final checkpoint, written just before: evaluate that one too.
    last = tf.train.latest_checkpoint(directory)
    if last is not None:
        evaluate(last)
    return evaluator.history
