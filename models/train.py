"""The training program: run by the launcher's chief, or standalone.

    python -m launch                                  # the default job
    python -m launch cluster_specs/local_no_backup.json -- --mode=async
    python -m models.train --local_cluster_workers=3 --replicas_to_aggregate=2

Under the launcher the cluster comes from TF_CONFIG and the run directory
from PS_SYNC_RUN_DIR (as task type `evaluator`, the program evaluates the
chief's checkpoints instead: models/sidecar.py); `--local_cluster_workers=W`
starts an in-process cluster instead (tests, quick trials).

The chief builds the model under ParameterServerStrategy, wraps the recipe's
optimizer (models/recipes.py) in SyncReplicasWithBackups (`--mode=sync`;
`--mode=async` keeps it plain), restores the newest checkpoint of the run
directory and trains with `model.fit` until `--train_updates` applied
updates (or `--train_epochs` epochs, counted in applied updates),
evaluating at intervals (models/trainer.py); then prints a summary table
and draws the plots (models/report.py, ps_sync/analysis.py).

The run directory gets: pushes.jsonl/steps.jsonl (telemetry), eval.jsonl,
checkpoints/, tensorboard/, summary.json, analysis.{json,txt}, plots/
(and eval_sidecar.jsonl from an evaluator task).
"""
import time

_PROCESS_START = time.time()  # program time includes loading TensorFlow

from ps_sync import keras_env  # noqa: F401,E402  (before TensorFlow)

import dataclasses  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import tensorflow as tf  # noqa: E402

from models import datasets, imagenet, recipes, registry, report  # noqa: E402
from models import trainer  # noqa: E402
from ps_sync import checkpointing  # noqa: E402
from models.trainer import say  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("model", "small_cnn",
                    "model name: " + ", ".join(registry.names()))
flags.DEFINE_string("dataset", "digits",
                    "dataset name: " + ", ".join(datasets.names()))
flags.DEFINE_string("data_dir", None, "data directory (ImageNet datasets)")
flags.DEFINE_integer("image_size", None, "ImageNet image side (default: "
                     "the model's input size)")
flags.DEFINE_enum("mode", "sync", ["sync", "async"],
                  "sync: SyncReplicasWithBackups; async: the plain optimizer")
flags.DEFINE_integer("replicas_to_aggregate", None,
                     "N, gradients per update (default: every worker)")
flags.DEFINE_integer("total_num_replicas", None,
                     "N+b; must equal the cluster's workers (default: them)")
flags.DEFINE_enum("quorum_policy", "fixed",
                  ["fixed", "timeout_degrade", "timeout_fail", "adaptive"],
                  "what a step does when its quorum is slow to come")
flags.DEFINE_integer("min_replicas_to_aggregate", None,
                     "timeout_degrade, adaptive: the fewest gradients a step "
                     "may take")
flags.DEFINE_float("quorum_timeout_s", None,
                   "timeout_degrade / timeout_fail: seconds a step may wait")
flags.DEFINE_enum("optimizer", None, list(recipes.OPTIMIZERS),
                  "optimizer (default: the model's recipe)")
flags.DEFINE_float("learning_rate", None, "initial learning rate")
flags.DEFINE_float("lr_decay_rate", None, "staircase decay factor")
flags.DEFINE_float("lr_decay_epochs", None,
                   "decay every this many epochs of applied updates")
flags.DEFINE_integer("batch_size", None, "batch size per worker")
flags.DEFINE_float("ema_momentum", None,
                   "moving average of weights, evaluated instead (0: off)")
flags.DEFINE_integer("train_updates", None,
                     "applied updates to train for (wins over train_epochs)")
flags.DEFINE_float("train_epochs", None,
                   "epochs to train for, counted in applied updates")
flags.DEFINE_integer("eval_every_updates", None,
                     "evaluate on the chief every this many updates")
flags.DEFINE_integer("checkpoint_every_updates", None,
                     "save a checkpoint every this many updates (0: only at "
                     "the end)")
flags.DEFINE_integer("eval_batch_size", 256, "evaluation batch size")
flags.DEFINE_float("evaluator_poll_s", 2.0,
                   "evaluator task: seconds between looks for a new "
                   "checkpoint")
flags.DEFINE_integer("steps_per_execution", 1,
                     "worker steps per scheduled closure")
flags.DEFINE_enum("resize_last_interval", "auto", ["auto", "always", "never"],
                  "when the next interval would end past the update target "
                  "(with backups, intervals apply fewer updates than they "
                  "schedule pushes for): end the fit and start one sized to "
                  "what remains, 'always', 'never', or 'auto': when the "
                  "extra updates would take longer than this fit took to "
                  "start")
flags.DEFINE_float("progress_every_s", 5.0, "seconds between progress lines")
flags.DEFINE_float("target_accuracy", None,
                   "precision@1 to mark on the plot and report as reached")
flags.DEFINE_integer("max_rollbacks", 3,
                     "divergences rolled back to the last good checkpoint "
                     "(with a fresh data order) before the run gives up")
flags.DEFINE_float("divergence_factor", 3.0,
                   "an interval's training loss this many times its running "
                   "minimum counts towards a divergence (a non-finite loss "
                   "is one at once)")
flags.DEFINE_integer("divergence_patience", 2,
                     "intervals in a row above the factor that make a "
                     "divergence")
flags.DEFINE_integer("inject_divergence_at_update", None,
                     "fault injection: set the weights to NaN once, at the "
                     "first interval end at or past this update")
flags.DEFINE_string("run_dir", None, "run directory (default: "
                    "$PS_SYNC_RUN_DIR, else runs/train-<time>-<pid>)")
flags.DEFINE_integer("seed", 0, "input order seed (each worker derives its "
                     "own)")
flags.DEFINE_integer("local_cluster_workers", 0,
                     "start an in-process cluster with this many workers "
                     "instead of reading TF_CONFIG")
flags.DEFINE_integer("local_cluster_ps", 1,
                     "parameter servers of the in-process cluster")
flags.DEFINE_enum("tensorflow_log_level", "warning",
                  ["debug", "info", "warning", "error"],
                  "TensorFlow's Python log level (its INFO lines, twice "
                  "each, were a third of the default job's output); "
                  "ps_sync logs through absl, at --verbosity")


# -- flags -> config ---------------------------------------------------------

def check_data_flags():
    """Model, dataset and data dir, checked before any cluster work; a
    mistake is a usage error (exit code 2, no traceback)."""
    try:
        registry.get_spec(FLAGS.model)
        spec = datasets.get_spec(FLAGS.dataset)
        _check_data_dir(spec, FLAGS.data_dir)
        num_train = datasets.num_train_examples(FLAGS.dataset, FLAGS.data_dir)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    return spec, FLAGS.image_size or _model_image_size(), num_train


def _check_data_dir(spec, data_dir):
    """Without building a tf.data pipeline: functions created before the
    cluster connects make TensorFlow log errors when it connects."""
    if spec.imagenet_source is None:
        if data_dir:
            raise ValueError("dataset %r needs no data dir, got --data_dir=%r"
                             % (spec.name, data_dir))
        return
    if not data_dir:
        raise ValueError("dataset %r needs a data dir (%s)"
                         % (spec.name, spec.description))
    if not os.path.isdir(data_dir):
        raise ValueError("ImageNet data dir %r does not exist (dataset %r: %s)"
                         % (data_dir, spec.name, spec.description))
    if spec.imagenet_source == "tfrecord":
        for split in ("train", "validation"):
            imagenet.tfrecord_files(data_dir, split)
    # TFDS: num_train_examples reads the prepared dataset's info.


def _model_image_size():
    return registry.get_spec(FLAGS.model).input_shape[0]


def _recipe():
    base = recipes.default_recipe(FLAGS.model)
    overrides = {name: getattr(FLAGS, name) for name in (
        "optimizer", "learning_rate", "lr_decay_rate", "lr_decay_epochs",
        "batch_size", "ema_momentum", "eval_every_updates",
        "checkpoint_every_updates") if getattr(FLAGS, name) is not None}
    return dataclasses.replace(base, **overrides)


def _quorum_policy():
    policy = FLAGS.quorum_policy
    if policy == "fixed":
        return None
    if policy == "adaptive":
        # Each step's quorum between the minimum and N (ps_sync.quorum).
        if FLAGS.min_replicas_to_aggregate is None:
            raise app.UsageError("--quorum_policy=adaptive needs "
                                 "--min_replicas_to_aggregate")
        return {"policy": "adaptive",
                "min_replicas_to_aggregate": FLAGS.min_replicas_to_aggregate}
    if FLAGS.quorum_timeout_s is None:
        raise app.UsageError("--quorum_policy=%s needs --quorum_timeout_s"
                             % policy)
    config = {"policy": policy, "quorum_timeout_s": FLAGS.quorum_timeout_s}
    if policy == "timeout_degrade":
        if FLAGS.min_replicas_to_aggregate is None:
            raise app.UsageError("--quorum_policy=timeout_degrade needs "
                                 "--min_replicas_to_aggregate")
        config["min_replicas_to_aggregate"] = FLAGS.min_replicas_to_aggregate
    return config


def resolve_config(num_workers):
    """The run's Config for a cluster of `num_workers` workers."""
    spec, size, num_train = check_data_flags()
    sync = FLAGS.mode == "sync"
    total = FLAGS.total_num_replicas or num_workers
    if total != num_workers:
        raise app.UsageError(
            "--total_num_replicas=%d but the cluster has %d workers; N+b must "
            "be the number of workers" % (total, num_workers))
    n = FLAGS.replicas_to_aggregate or total
    if not 1 <= n <= total:
        raise app.UsageError("--replicas_to_aggregate=%d must be between 1 "
                             "and the %d workers" % (n, total))
    recipe = _recipe()
    if recipe.batch_size < 1:
        raise app.UsageError("--batch_size must be positive")
    if FLAGS.max_rollbacks < 0:
        raise app.UsageError("--max_rollbacks must be 0 or more, got %d"
                             % FLAGS.max_rollbacks)
    if FLAGS.divergence_factor <= 1 or FLAGS.divergence_patience < 1:
        raise app.UsageError(
            "--divergence_factor must be above 1 and --divergence_patience at "
            "least 1, got %g and %d" % (FLAGS.divergence_factor,
                                        FLAGS.divergence_patience))
    per_update = recipes.examples_per_update(recipe.batch_size, n, sync)
    updates_per_epoch = num_train / per_update
    if FLAGS.train_updates is not None:
        target = FLAGS.train_updates
    else:
        epochs = (FLAGS.train_epochs if FLAGS.train_epochs is not None
                  else recipe.train_epochs)
        target = recipes.updates_for_epochs(epochs, num_train, per_update)
    if target < 1:
        raise app.UsageError("nothing to train: %d updates" % target)
    return trainer.Config(
        model=FLAGS.model, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
        image_size=size, input_shape=tuple(datasets.input_shape(
            FLAGS.dataset, size)),
        num_classes=spec.num_classes, num_train_examples=num_train,
        sync=sync, replicas_to_aggregate=n, total_num_replicas=total,
        quorum_policy=_quorum_policy() if sync else None, recipe=recipe,
        target_updates=target, updates_per_epoch=updates_per_epoch,
        eval_every_updates=max(1, recipe.eval_every_updates),
        checkpoint_every_updates=max(0, recipe.checkpoint_every_updates),
        eval_batch_size=FLAGS.eval_batch_size,
        steps_per_execution=FLAGS.steps_per_execution,
        resize_last_interval=FLAGS.resize_last_interval,
        progress_every_s=FLAGS.progress_every_s, seed=FLAGS.seed,
        max_rollbacks=FLAGS.max_rollbacks,
        divergence_factor=FLAGS.divergence_factor,
        divergence_patience=FLAGS.divergence_patience,
        inject_divergence_at_update=FLAGS.inject_divergence_at_update)


def resolve_run_dir():
    run_dir = FLAGS.run_dir or os.environ.get("PS_SYNC_RUN_DIR")
    if not run_dir:
        run_dir = os.path.join("runs", "train-%s-%d" % (
            time.strftime("%Y%m%d-%H%M%S"), os.getpid()))
    run_dir = os.path.abspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    return run_dir


# -- the cluster -------------------------------------------------------------

def tf_config_resolver():
    """The launcher's cluster (reading TF_CONFIG connects to nothing)."""
    if not os.environ.get("TF_CONFIG"):
        raise app.UsageError(
            "no cluster: TF_CONFIG is not set. Run under the launcher "
            "(python -m launch) or pass --local_cluster_workers=W for an "
            "in-process cluster")
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def summarize(config, run_dir, outcome, program_start):
    summary = report.build_summary(config, run_dir, outcome, program_start,
                                   FLAGS.target_accuracy)
    summary["summary_json"] = os.path.join(run_dir, report.SUMMARY_FILE)
    report.write_summary(summary, run_dir)
    say(report.table(summary))
    say("summary: %s" % summary["summary_json"])
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    logging.getLogger("tensorflow").setLevel(
        FLAGS.tensorflow_log_level.upper())
    # Every flag is checked before an in-process cluster starts.
    check_data_flags()
    resolver = None if FLAGS.local_cluster_workers else tf_config_resolver()
    num_workers = (FLAGS.local_cluster_workers or
                   len(resolver.cluster_spec().as_dict().get("worker", [])))
    config = resolve_config(num_workers)
    run_dir = resolve_run_dir()
    say("run directory: %s" % run_dir)
    if resolver is not None and resolver.task_type == "evaluator":
        from models import sidecar
        if FLAGS.evaluator_poll_s <= 0:
            raise app.UsageError("--evaluator_poll_s must be positive, got %g"
                                 % FLAGS.evaluator_poll_s)
        sidecar.run(config, run_dir, report.SUMMARY_FILE,
                    poll_s=FLAGS.evaluator_poll_s, say=say)
        return 0
    if resolver is None:
        from ps_sync.testing import inprocess_cluster
        resolver = inprocess_cluster.create(FLAGS.local_cluster_workers,
                                            FLAGS.local_cluster_ps)
    strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
    outcome = trainer.train(config, strategy, run_dir)
    summarize(config, run_dir, outcome, _PROCESS_START)
    say("run directory: %s" % run_dir)
    return 0


def _exit(code):
    sys.stdout.flush()
    sys.stderr.flush()
    # ParameterServerStrategy's coordinator threads (and in-process servers)
    # never end: leave without joining them.
    os._exit(code)


def run():
    def main_and_exit(argv):
        try:
            code = main(argv)
        except app.UsageError as e:
            # One paragraph, as the launcher does; --helpshort lists flags.
            sys.stderr.write("models.train: error: %s\nRun with --helpshort "
                             "for the flags.\n" % e)
            _exit(2)
        except checkpointing.CheckpointRestoreError as e:
            sys.stderr.write("models.train: error: %s\nUse another "
                             "--run_dir, or move its checkpoints/ away.\n" % e)
            _exit(2)
        except BaseException:  # pylint: disable=broad-except
            traceback.print_exc()
            _exit(1)
        _exit(code or 0)
    app.run(main_and_exit)


if __name__ == "__main__":
    run()
