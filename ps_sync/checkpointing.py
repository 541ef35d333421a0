"""Consistent checkpoints every K applied updates, saved by the coordinator.

Under ParameterServerStrategy, tf-keras' BackupAndRestore saves once per
epoch; a run that must lose at most K updates saves from the coordinator while
workers keep training. The parameter servers could be applying an update
while the checkpoint reads the variables, so a save first takes the protocol's
hold (inside the step's critical section: once it is set, no update is being
applied and none starts). Workers keep computing and steps keep filling up to
their quorum meanwhile; the held steps close as soon as the hold is let go.
A checkpoint therefore never holds half an update (invariant 6 of
DESIGN.md); the protocol's apply seqlock double-checks it.

Saves come exactly every K updates: while the checkpointer runs, the update
that makes a multiple of K sets the hold itself (on the protocol PS), so no
update K+1 is applied before update K is saved, and a crash loses at most K
updates. That close also hands its step to the checkpointer thread through
a queue on the PS, which the thread waits on rather than polling. A crash
during a save leaves the previous checkpoint as the latest (TensorFlow
renames complete files into place and writes the `checkpoint` index last);
a latest checkpoint that cannot be read anyway is skipped for the one
before it.
"""
import contextlib
import threading

from absl import logging
import tensorflow as tf
from tensorflow.python.eager import context
from tensorflow.python.checkpoint import functional_saver

_SAVER_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _without_new_functions():
    """TensorFlow's saver wraps every save and restore that spans several
    tasks in a new tf.function (functional_saver.MultiDeviceSaver), and
    adding a function to a context with remote workers registers it on every
    task, synchronously, holding the GIL. A save while any worker was
    stopped or unreachable froze the whole coordinator (60.8 s with one
    worker SIGSTOPped, measured; the hold of a sync save meanwhile stopped
    every step). The saver's eager path, which it takes for a single task,
    involves no worker; this makes every save and restore take it. (TF 2.21;
    on a TensorFlow without that attribute they are unchanged.)"""
    original = functional_saver.MultiDeviceSaver.__init__

    def init(saver, *args, **kwargs):
        original(saver, *args, **kwargs)
        if hasattr(saver, "_num_unique_tasks"):
            saver._num_unique_tasks = 1  # pylint: disable=protected-access

    with _SAVER_PATCH_LOCK:
        functional_saver.MultiDeviceSaver.__init__ = init
        try:
            yield
        finally:
            functional_saver.MultiDeviceSaver.__init__ = original


def _on_the_coordinator():
    """Checkpoint files written and read by this process (the coordinator),
    which moves the variables to and from the parameter servers as its
    other eager reads do: nothing is left to a cross-task copy, and the
    files are where the coordinator runs."""
    return tf.train.CheckpointOptions(
        experimental_io_device=(context.context().host_address_space()
                                + "/device:CPU:0"))


def save(manager, checkpoint_number):
    """`manager.save(checkpoint_number=...)`, in a way that never registers a
    function on the workers (see `_without_new_functions`), with every
    shard written and merged by the coordinator. (Left on the parameter
    servers, the eager merge hung with two of them, on the cross-task copy
    of the shard prefixes: tests/test_sync_checkpoint.py.)"""
    with _without_new_functions():
        return manager.save(checkpoint_number=checkpoint_number,
                            options=_on_the_coordinator())


def restore(checkpoint, path):
    """`checkpoint.restore(path)`, read by the coordinator as `save` writes,
    on the eager path too. Not free of waits: the first restore of its kind
    while a worker was stopped waited 80 s for TensorFlow to give up on
    registering the eager restore op there ("ping timeout"), though, unlike
    the function path (a 60 s freeze), every other thread of the
    coordinator ran meanwhile. Objects built later are restored when they
    are built, by TensorFlow alone."""
    with _without_new_functions():
        return checkpoint.restore(path, options=_on_the_coordinator())


class InconsistentCheckpointError(RuntimeError):
    pass


class CheckpointRestoreError(RuntimeError):
    """Checkpoints exist but none can be restored."""


class UpdateCheckpointer:
    """Save `checkpoint` every `every_n_updates` applied updates.

    Args:
      checkpoint: a `tf.train.Checkpoint` holding the model and optimizer.
      directory: where the `tf.train.CheckpointManager` keeps them.
      optimizer: the `SyncReplicasWithBackups` (or any optimizer: without the
        protocol there is no concurrent apply to guard against).
      every_n_updates: K; 0 disables the periodic saves.
      poll_interval_s: how often it looks for a step to save while the
        protocol is not built yet, or for an optimizer without one (with
        the protocol it waits for the close that sets the hold instead).
    """

    def __init__(self, checkpoint, directory, optimizer, every_n_updates,
                 max_to_keep=5, poll_interval_s=0.05):
        self.manager = tf.train.CheckpointManager(
            checkpoint, directory, max_to_keep=max_to_keep,
            step_counter=optimizer.iterations)
        self._optimizer = optimizer
        self._every = int(every_n_updates)
        self._poll_interval_s = poll_interval_s
        self._last_saved = None
        self._stop = threading.Event()
        self._thread = None
        self.saves = []           # (update, path)
        self.restored = None      # path restored by restore_latest
        self._holding = False     # the protocol holds every K updates
        self.unreadable = []      # checkpoints restore_latest had to skip
        self.looks = 0            # maybe_save calls with a protocol

    def _protocol(self):
        return getattr(self._optimizer, "protocol", None)

    def restore_latest(self):
        """Restore the newest readable checkpoint; returns its update count,
        or None if there is none."""
        errors = []
        for path in reversed(self.manager.checkpoints):
            try:
                status = restore(self.manager.checkpoint, path)
                status.assert_existing_objects_matched()
            except Exception as e:  # pylint: disable=broad-except
                # Damaged files fail in many ways (IndexError, DataLossError,
                # NotFoundError, ...): try the checkpoint before it.
                logging.error("ps_sync: cannot restore %s (%s: %s); trying "
                              "the checkpoint before it", path,
                              type(e).__name__, e)
                self.unreadable.append(path)
                errors.append("%s: %s: %s" % (path, type(e).__name__, e))
                continue
            step = int(self._optimizer.iterations.numpy())
            self._last_saved = step
            self.restored = path
            logging.info("ps_sync: restored %s at update %d", path, step)
            return step
        if errors:
            # Never start over silently on top of checkpoints that exist.
            raise CheckpointRestoreError(
                "none of the %d checkpoints in %s can be restored into this "
                "model (was it changed?):\n  %s" % (
                    len(errors), self.manager.directory,
                    "\n  ".join(e[:500] for e in errors)))
        return None

    def _sequence(self):
        protocol = self._protocol()
        return protocol.apply_sequence() if protocol is not None else 0

    def save(self):
        """Save now, with every step close held for the duration."""
        protocol = self._protocol()
        if protocol is not None:
            protocol.set_hold(True)
        try:
            before = self._sequence()
            step = int(self._optimizer.iterations.numpy())
            path = save(self.manager, step)
            if self._sequence() != before or before % 2:
                raise InconsistentCheckpointError(
                    "an update was applied while %s was written under the "
                    "hold; the checkpoint is not trustworthy" % path)
        finally:
            if protocol is not None:
                protocol.set_hold(False)
                # Steps that filled up during the hold close now.
                protocol.close_if_closable()
        self._last_saved = step
        self.saves.append((step, path))
        return path

    def maybe_save(self):
        if self._every <= 0:
            return None
        protocol = self._protocol()
        if protocol is not None:
            self.looks += 1
        if protocol is not None and not self._holding:
            # The protocol is built when the first step is traced.
            protocol.set_hold_every(self._every)
            self._holding = True
        # Read before the step: once held, the step cannot move.
        held = protocol is not None and protocol.held()
        step = int(self._optimizer.iterations.numpy())
        last = self._last_saved if self._last_saved is not None else 0
        if step != last and (step - last >= self._every
                             or step % self._every == 0):
            return self.save()
        if held:
            # Held at a step already saved: nothing to write.
            protocol.set_hold(False)
            protocol.close_if_closable()
        return None

    def start(self):
        """Save in a background thread while training runs."""
        self._stop.clear()
        self._holding = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="ps_sync-checkpointer")
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        protocol = self._protocol()
        if self._thread is not None and protocol is not None:
            protocol.interrupt_next_hold()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        if protocol is not None and self._holding:
            protocol.set_hold_every(0)
            self._holding = False
            # A close may have set the hold meanwhile: nobody saves now.
            protocol.set_hold(False)
            protocol.close_if_closable()

    def _run(self):
        if self._every <= 0:
            return
        # Polls until the protocol exists (it is built when the first step
        # is traced), and throughout for an optimizer without one.
        while self._protocol() is None:
            if self._stop.wait(self._poll_interval_s):
                return
            self._maybe_save_logged()
        protocol = self._protocol()
        # Arms the hold, and saves a multiple of K passed before it was.
        while not self._holding:
            self._maybe_save_logged()
            if not self._holding and self._stop.wait(self._poll_interval_s):
                return
        # Then sleeps until a close sets the hold: no reads in between, and
        # a held step is let go as soon as its checkpoint is written.
        while not self._stop.is_set():
            try:
                step = protocol.next_hold()
            except Exception as e:  # pylint: disable=broad-except
                logging.warning("ps_sync checkpointer: %s", e)
                self._stop.wait(self._poll_interval_s)
                continue
            if step >= 0:  # else an interrupt: from `stop`, or a past one
                self._maybe_save_logged()

    def _maybe_save_logged(self):
        try:
            self.maybe_save()
        except Exception as e:  # pylint: disable=broad-except
            logging.warning("ps_sync checkpointer: %s", e)


class UpdateCheckpointCallback(tf.keras.callbacks.Callback):
    """Runs an `UpdateCheckpointer` for the duration of `model.fit`, plus a
    final save at the end (batch-level callbacks are refused under
    ParameterServerStrategy, so this one uses only train begin/end)."""

    def __init__(self, checkpointer, final_save=None):
        super().__init__()
        self.checkpointer = checkpointer
        # A callable deciding whether to save at the end (e.g. not weights
        # that diverged); default: always.
        self.final_save = final_save

    def on_train_begin(self, logs=None):
        self.checkpointer.start()

    def on_train_end(self, logs=None):
        self.checkpointer.stop()
        if self.final_save is None or self.final_save():
            self.checkpointer.save()
