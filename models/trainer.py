"""One training run on the chief: build, restore, `model.fit`, evaluate.

    outcome = trainer.train(config, strategy, run_dir)

Keras "epochs" are intervals: the first schedules N worker steps per update
it may apply (every update takes N admitted pushes), so it applies at most
`eval_every_updates` updates; each ends with a join, after which the chief
evaluates and stops once the target is reached. With backups some pushes are
dropped, so an interval applies fewer updates than it could. Keras cannot
resize an interval mid-fit and schedules a whole interval ahead (a stop only
takes effect at its end), so when the next interval would overshoot the
target, the chief may end the fit and start another whose interval is what
remains times the pushes per update measured (at most `MAX_RESIZES` times
per run). A new fit costs its start (Keras makes new per-worker datasets and
iterators; with a worker stopped, that took 20 s and more), so by default
(`resize_last_interval="auto"`) it does so only when the extra updates would
take longer than the current fit took to start.

Everything that runs TensorFlow ops after training (the final evaluation,
closing the telemetry) happens in `on_train_end`, still inside `model.fit`:
once fit returns, Keras drops its per-worker iterators, and the chief's
next eager op can wait for their remote deletion on a worker the launcher
keeps pausing (seen: 5 to 30 s).
"""
import dataclasses
import json
import math
import os
import time

from ps_sync import keras_env  # noqa: F401

import tensorflow as tf

from models import datasets, divergence, evaluation, progress, recipes
from models import registry, scalar_log
from ps_sync import checkpointing
from ps_sync.optimizer import SyncReplicasWithBackups


ROLLBACKS_FILE = "rollbacks.jsonl"
MAX_RESIZES = 3


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run needs, resolved from flags and the recipe."""
    model: str
    dataset: str
    data_dir: str
    image_size: int
    input_shape: tuple
    num_classes: int
    num_train_examples: int
    sync: bool
    replicas_to_aggregate: int
    total_num_replicas: int
    quorum_policy: dict
    recipe: recipes.Recipe
    target_updates: int
    updates_per_epoch: float
    eval_every_updates: int
    checkpoint_every_updates: int
    eval_batch_size: int = 256
    steps_per_execution: int = 1
    resize_last_interval: str = "auto"  # "always", "never"
    progress_every_s: float = 5.0
    seed: int = 0
    max_rollbacks: int = 3
    divergence_factor: float = 3.0
    divergence_patience: int = 2
    inject_divergence_at_update: int = None  # fault injection (tests, chaos)

    @property
    def backup_workers(self):
        return self.total_num_replicas - self.replicas_to_aggregate

    def mode_text(self):
        if self.sync:
            return "sync, N=%d of %d workers (b=%d)" % (
                self.replicas_to_aggregate, self.total_num_replicas,
                self.backup_workers)
        return "async, %d workers" % self.total_num_replicas


def say(message):
    print(message, flush=True)


def build(config, strategy, run_dir):
    """Model and optimizer under the strategy; the optimizer's slots are built
    now so that a checkpoint restores into them at once."""
    with strategy.scope():
        model = registry.build_model(config.model, config.num_classes,
                                     input_shape=config.input_shape)
        optimizer = recipes.make_optimizer(config.recipe,
                                           config.updates_per_epoch)
        if config.sync:
            optimizer = SyncReplicasWithBackups(
                optimizer, config.replicas_to_aggregate,
                config.total_num_replicas,
                quorum_policy=config.quorum_policy, telemetry_dir=run_dir)
        model.compile(optimizer,
                      steps_per_execution=config.steps_per_execution,
                      **registry.compile_kwargs(config.model))
        optimizer.build(model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    return model, optimizer, checkpoint


class _Run:
    """The state of one chief's training: evaluation, logs, the clock."""

    def __init__(self, config, model, optimizer, evaluator, writer,
                 time_offset, run_dir):
        self.config = config
        self.run_dir = run_dir
        self.model = model
        self.optimizer = optimizer
        self.evaluator = evaluator
        self.writer = writer
        self.time_offset = time_offset  # training time of earlier chiefs
        self.fit_start = None
        self.monitor = None
        self.train_time = 0.0
        self.final = None
        self.sync_stats = None
        self.monitor_divergence = divergence.DivergenceMonitor(
            config.divergence_factor, config.divergence_patience)
        self.diverged = None      # the Verdict that stopped this fit
        self.rollbacks = []       # events, earlier chiefs' included
        self.good = None          # CheckpointManager of the last good weights
        self.pushes_per_update = None  # measured over the current fit
        self.fit_called_at = None
        # This fit's closes so far: (first, last, count), and how far the
        # telemetry's steps were read.
        self.fit_closes = (None, None, 0)
        self.steps_seen = 0
        self.resizes = 0          # fits ended to resize the last interval
        self.resize_pending = False
        self.ema_paused = None    # the optimizer whose use_ema is off

    def rollback_pending(self):
        return (self.diverged is not None
                and len(self.rollbacks) < self.config.max_rollbacks)

    def save_good(self, update):
        """Save the weights a rollback restores, while one still can: each
        save reads every variable through the coordinator under the hold
        (4 s for inception_v3_small), so none with --max_rollbacks=0 or
        once they are used up."""
        if len(self.rollbacks) < self.config.max_rollbacks:
            checkpointing.save(self.good, update)

    def keep_weights_at_the_fit_end(self):
        """tf-keras' fit ends by putting the moving averages in place of the
        weights (`finalize_variable_values` with `use_ema`). A fit another
        follows then trained on from the averages (momentum 0.9999: the
        train loss went from 1.38 back to 2.16 after a resize), and the
        last fit's checkpoint held them as the weights, for a restarted
        chief to train on from. The weights stay the weights here and the
        averages stay in the optimizer; evaluations read them there. Off
        from the last interval's end until `_fit` turns it back on, after
        the fit and before the next one traces anything."""
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        if getattr(inner, "use_ema", False):
            inner.use_ema = False
            self.ema_paused = inner

    def resume_weight_averaging(self):
        if self.ema_paused is not None:
            self.ema_paused.use_ema = True
            self.ema_paused = None

    def another_fit_pending(self):
        return self.rollback_pending() or self.resize_pending

    def clock(self):
        return self.time_offset + (time.time() - self.fit_start)

    def updates(self):
        return int(self.optimizer.iterations.numpy())

    def evaluate(self, update, elapsed_s):
        record = self.evaluator.evaluate(
            evaluation.moving_average_weights(self.model, self.optimizer),
            update, elapsed_s)
        top5 = record["top5"] if record["top5"] is not None else float("nan")
        say("eval: update %d/%d | precision@1 %.4f precision@5 %.4f | loss "
            "%.4f | %.0f s" % (record["update"], self.config.target_updates,
                               record["top1"], top5, record["loss"],
                               record["elapsed_s"] or 0))
        self.writer.scalars({"eval/" + k: record[k]
                             for k in ("top1", "top5", "loss")},
                            record["update"])
        return record

    def finish(self):
        """Close the telemetry and evaluate the final weights (their moving
        averages, if the optimizer keeps them)."""
        if self.fit_start is not None:
            self.train_time = time.time() - self.fit_start
        if self.monitor is not None:
            self.monitor.stop()
        if hasattr(self.optimizer, "close"):
            self.optimizer.close()  # flushes the telemetry files
            self.sync_stats = self.optimizer.sync_stats()
        self.final = self.evaluate(self.updates(),
                                   self.time_offset + self.train_time)
        self.writer.close()


class _IntervalCallback(tf.keras.callbacks.Callback):
    """At each interval's end (every closure joined, so the weights are
    those of whole updates): evaluate, or stop once at the target."""

    def __init__(self, run, steps_per_interval):
        super().__init__()
        self.run = run
        self.steps = steps_per_interval
        self.start_update = run.updates()

    def on_epoch_end(self, epoch, logs=None):
        try:
            self._interval_end(epoch, logs)
        finally:
            last = (self.params or {}).get("epochs", epoch + 1)
            if self.model.stop_training or epoch + 1 >= last:
                self.run.keep_weights_at_the_fit_end()

    def _interval_end(self, epoch, logs):
        run = self.run
        updates = run.updates()
        run.writer.scalars(
            {"train/" + k: v for k, v in (logs or {}).items()}, updates)
        verdict = run.monitor_divergence.observe((logs or {}).get("loss"))
        if verdict.diverged:
            say("divergence at update %d: %s" % (updates, verdict.reason))
            run.diverged = verdict
            self.model.stop_training = True
            return
        if verdict.healthy:
            run.save_good(updates)
        _maybe_inject_divergence(run, updates)
        if updates >= run.config.target_updates:
            self.model.stop_training = True  # on_train_end evaluates
            return
        run.evaluate(updates, run.clock())
        if updates > self.start_update:
            run.pushes_per_update = ((epoch + 1) * self.steps
                                     / (updates - self.start_update))
            remaining = run.config.target_updates - updates
            if should_resize(run.config.resize_last_interval,
                             self.steps / run.pushes_per_update - remaining,
                             run.config.target_updates, run.resizes,
                             _fit_timing(run)):
                run.resize_pending = True
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        if not self.run.another_fit_pending():
            self.run.finish()


def should_resize(mode, overshoot, target_updates, resizes, timing):
    """End the fit so that the next one's interval fits what remains?
    `overshoot`: updates the next interval would apply past the target;
    `timing`: (seconds this fit took to its first update, seconds per
    update since), or None if unknown."""
    if mode == "never" or resizes >= MAX_RESIZES:
        return False
    if overshoot <= max(1.0, 0.05 * target_updates):
        return False
    if mode == "always":
        return True
    if timing is None:
        return False
    start_s, per_update_s = timing
    return overshoot * per_update_s > start_s


def _fit_timing(run):
    """(seconds from this fit's call to its first update, mean seconds per
    update since) from the PS telemetry; None without telemetry (async) or
    before two updates. Reads only the steps new since the last call."""
    telemetry = getattr(run.optimizer, "telemetry", None)
    if telemetry is None:
        return None
    telemetry.drain()
    steps, run.steps_seen = telemetry.since("steps", run.steps_seen)
    first, last, count = run.fit_closes
    for s in steps:
        if s["closed_at"] >= run.fit_called_at:
            first = s["closed_at"] if first is None else first
            last, count = s["closed_at"], count + 1
    run.fit_closes = (first, last, count)
    if count < 2:
        return None
    return first - run.fit_called_at, (last - first) / (count - 1)


def _maybe_inject_divergence(run, updates):
    """Fault injection: once per run directory, poison the weights (NaN), as
    a numerical blow-up would."""
    at = run.config.inject_divergence_at_update
    marker = os.path.join(run.run_dir, "divergence_injected")
    if at is None or updates < at or os.path.exists(marker):
        return
    open(marker, "w").close()
    for v in run.model.trainable_variables:
        v.assign(v * float("nan"))
    say("injected a divergence at update %d (weights set to NaN)" % updates)


def _read_rollbacks(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _roll_back(run, checkpointer, checkpoint):
    """Restore the last good weights and save them as the latest
    checkpoint (a restarted chief must not restore the diverged ones)."""
    path = run.good.latest_checkpoint
    diverged_at = run.updates()
    checkpointing.restore(checkpoint, path).assert_existing_objects_matched()
    restored = run.updates()
    checkpointer.save()
    event = {"time": time.time(), "diverged_at_update": diverged_at,
             "reason": run.diverged.reason, "restored": path,
             "restored_update": restored,
             "rollback": len(run.rollbacks) + 1}
    run.rollbacks.append(event)
    with open(os.path.join(run.run_dir, ROLLBACKS_FILE), "a") as f:
        f.write(json.dumps(event) + "\n")
    run.diverged = None
    run.monitor_divergence.reset_streak()
    say("rolled back to %s (update %d) after a divergence at update %d; "
        "rollback %d of at most %d, with a fresh data order"
        % (path, restored, diverged_at, event["rollback"],
           run.config.max_rollbacks))


def _steps_per_interval(config, remaining, pushes_per_update=None):
    """Worker steps per interval and an upper bound on intervals.
    `pushes_per_update` as measured, or None: then the fewest an update can
    take (N), so that the interval cannot apply more than it should."""
    if pushes_per_update is None:
        pushes_per_update = config.replicas_to_aggregate if config.sync else 1
    interval = min(config.eval_every_updates, remaining)
    spe = config.steps_per_execution
    steps = spe * max(1, int(math.ceil(interval * pushes_per_update / spe)))
    # An upper bound on intervals only: the callback stops at the target.
    max_intervals = 100 * int(math.ceil(remaining / interval)) + 10
    return steps, max_intervals


def _fit(config, run, checkpointer):
    """One `model.fit` from the current update until the target, a
    divergence or the end of its interval budget."""
    start = run.updates()
    remaining = config.target_updates - start
    steps, max_intervals = _steps_per_interval(
        config, remaining, run.pushes_per_update if run.resize_pending
        else None)
    if run.resize_pending:
        run.resizes += 1
        run.resize_pending = False
        say("%d updates to go, %.2f worker steps per update measured: a new "
            "fit with an interval of %d steps" % (remaining,
                                                  run.pushes_per_update,
                                                  steps))
    # A restarted chief or a rollback must not replay an earlier input order.
    dataset_fn = datasets.per_worker_dataset_fn(
        config.dataset, config.recipe.batch_size,
        seed=config.seed + 1000003 * start + 7919 * len(run.rollbacks),
        data_dir=config.data_dir, image_size=config.image_size)
    run.monitor = progress.ProgressMonitor(
        run.optimizer, config.target_updates, config.progress_every_s,
        run.writer, printer=say)
    say("training %s on %s: %s, %d updates to go (of %d), %d worker "
        "steps per interval" % (config.model, config.dataset,
                                config.mode_text(), remaining,
                                config.target_updates, steps))
    # The checkpoint callback's final save comes before the final
    # evaluation (both in on_train_end); none after a divergence.
    callbacks = [checkpointing.UpdateCheckpointCallback(
                     checkpointer, final_save=lambda: run.diverged is None),
                 _IntervalCallback(run, steps)]
    run.fit_called_at = time.time()
    run.fit_closes = (None, None, 0)
    if run.fit_start is None:
        run.fit_start = run.fit_called_at
    run.monitor.start()
    try:
        run.model.fit(tf.keras.utils.experimental.DatasetCreator(dataset_fn),
                      epochs=max_intervals, steps_per_epoch=steps,
                      callbacks=callbacks, verbose=0)
    finally:
        run.monitor.stop()
        run.resume_weight_averaging()


def train(config, strategy, run_dir):
    """Train to the target; returns what the summary needs."""
    model, optimizer, checkpoint = build(config, strategy, run_dir)
    checkpointer = checkpointing.UpdateCheckpointer(
        checkpoint, os.path.join(run_dir, "checkpoints"), optimizer,
        config.checkpoint_every_updates)
    restored = checkpointer.restore_latest()
    start_update = int(optimizer.iterations.numpy())
    if restored is not None:
        say("restored %s: continuing from update %d"
            % (checkpointer.restored, start_update))
    evaluator = evaluation.ChiefEvaluator(
        config.model, config.num_classes, config.input_shape,
        datasets.eval_dataset(config.dataset, config.eval_batch_size,
                              config.data_dir, config.image_size), run_dir)
    # Training time continues from the last evaluation of an earlier chief.
    offset = (max([h.get("elapsed_s") or 0.0 for h in evaluator.history],
                  default=0.0) if restored is not None else 0.0)
    run = _Run(config, model, optimizer, evaluator,
               scalar_log.ScalarLog(os.path.join(run_dir, "tensorboard")),
               offset, run_dir)
    run.rollbacks = _read_rollbacks(os.path.join(run_dir, ROLLBACKS_FILE))
    run.good = tf.train.CheckpointManager(
        checkpoint, os.path.join(run_dir, "checkpoints", "good"),
        max_to_keep=1, step_counter=optimizer.iterations)
    run.save_good(start_update)  # what a rollback reaches
    if start_update == 0:
        run.evaluate(0, 0.0)
    if start_update >= config.target_updates:
        say("nothing to train: update %d already reaches the target %d"
            % (start_update, config.target_updates))
        run.finish()
    while run.updates() < config.target_updates:
        _fit(config, run, checkpointer)
        if run.resize_pending:
            continue
        if run.diverged is None:
            break
        if not run.rollback_pending():
            say("diverged again with the %d rollbacks used up: stopping"
                % config.max_rollbacks)
            run.diverged = None
            run.finish()
            break
        _roll_back(run, checkpointer, checkpoint)
    return {"start_update": start_update, "updates": run.final["update"],
            "rollbacks": run.rollbacks,
            "train_time_s": run.train_time, "eval_history": evaluator.history,
            "final_eval": run.final,
            "checkpoint": checkpointer.manager.latest_checkpoint,
            "sync_stats": run.sync_stats}
