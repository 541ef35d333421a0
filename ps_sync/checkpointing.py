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
"""
import threading

from absl import logging
import tensorflow as tf


class InconsistentCheckpointError(RuntimeError):
    pass


class UpdateCheckpointer:
    """Save `checkpoint` every `every_n_updates` applied updates.

    Args:
      checkpoint: a `tf.train.Checkpoint` holding the model and optimizer.
      directory: where the `tf.train.CheckpointManager` keeps them.
      optimizer: the `SyncReplicasWithBackups` (or any optimizer: without the
        protocol there is no concurrent apply to guard against).
      every_n_updates: K; 0 disables the periodic saves.
    """

    def __init__(self, checkpoint, directory, optimizer, every_n_updates,
                 max_to_keep=5, poll_interval_s=0.25):
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

    def restore_latest(self):
        """Restore the newest checkpoint; returns its update count or None."""
        path = self.manager.latest_checkpoint
        if path is None:
            return None
        self.manager.checkpoint.restore(path)
        step = int(self._optimizer.iterations.numpy())
        self._last_saved = step
        logging.info("ps_sync: restored %s at update %d", path, step)
        return step

    def _sequence(self):
        protocol = getattr(self._optimizer, "protocol", None)
        return protocol.apply_sequence() if protocol is not None else 0

    def save(self):
        """Save now, with every step close held for the duration."""
        protocol = getattr(self._optimizer, "protocol", None)
        if protocol is not None:
            protocol.set_hold(True)
        try:
            before = self._sequence()
            step = int(self._optimizer.iterations.numpy())
            path = self.manager.save(checkpoint_number=step)
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
        step = int(self._optimizer.iterations.numpy())
        last = self._last_saved if self._last_saved is not None else 0
        if step - last >= self._every:
            return self.save()
        return None

    def start(self):
        """Save in a background thread while training runs."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="ps_sync-checkpointer")
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

    def _run(self):
        while not self._stop.wait(self._poll_interval_s):
            try:
                self.maybe_save()
            except Exception as e:  # pylint: disable=broad-except
                logging.warning("ps_sync checkpointer: %s", e)


class UpdateCheckpointCallback(tf.keras.callbacks.Callback):
    """Runs an `UpdateCheckpointer` for the duration of `model.fit`, plus a
    final save at the end (batch-level callbacks are refused under
    ParameterServerStrategy, so this one uses only train begin/end)."""

    def __init__(self, checkpointer):
        super().__init__()
        self.checkpointer = checkpointer

    def on_train_begin(self, logs=None):
        self.checkpointer.start()

    def on_train_end(self, logs=None):
        self.checkpointer.stop()
        self.checkpointer.save()
