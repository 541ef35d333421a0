"""Live progress lines while `model.fit` runs.

Under ParameterServerStrategy tf-keras reports only per epoch (no progress
bar, no batch callbacks), so a coordinator thread prints a line every few
seconds: applied updates (read from the optimizer's step on the parameter
servers), the update rate over the last interval and, in synchronous mode,
the pushes admitted and dropped since the last line from the core
optimizer's telemetry. The same numbers go to TensorBoard (a
`models.scalar_log.ScalarLog`).
"""
import collections
import threading
import time



class ProgressMonitor:

    def __init__(self, optimizer, target_updates, every_s=5.0, writer=None,
                 printer=print):
        self._optimizer = optimizer
        self._target = target_updates
        self._every_s = every_s
        self._writer = writer
        self._print = printer
        self._stop = threading.Event()
        self._thread = None
        self._pushes_seen = 0
        self._last = None  # (time, updates)
        self.started_at = None
        self.lines = []

    def start(self):
        self.started_at = time.time()
        self._last = (self.started_at, self._updates())
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="train-progress")
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _updates(self):
        return int(self._optimizer.iterations.numpy())

    def _run(self):
        while not self._stop.wait(self._every_s):
            try:
                self.tick()
            except Exception as e:  # pylint: disable=broad-except
                # A progress line must never take training down.
                self._print("progress: unavailable (%s)" % e)

    def _new_pushes(self):
        telemetry = getattr(self._optimizer, "telemetry", None)
        if telemetry is None:
            return None
        pushes, self._pushes_seen = telemetry.since("pushes",
                                                    self._pushes_seen)
        return pushes

    def tick(self):
        now, updates = time.time(), self._updates()
        last_time, last_updates = self._last
        self._last = (now, updates)
        rate = (updates - last_updates) / max(now - last_time, 1e-9)
        parts = ["update %d/%d" % (updates, self._target),
                 "%.1f updates/s" % rate]
        pushes = self._new_pushes()
        dropped_share = None
        if pushes is not None:
            admitted = collections.Counter(
                p["worker"] for p in pushes
                if p["outcome"].startswith("admitted"))
            dropped = len(pushes) - sum(admitted.values())
            dropped_share = dropped / len(pushes) if pushes else 0.0
            parts.append("pushes %d: admitted %d, dropped %d" % (
                len(pushes), sum(admitted.values()), dropped))
            parts.append("admitted by worker " + " ".join(
                "w%d:%d" % (w, admitted[w]) for w in sorted(admitted)))
        parts.append("%.0f s" % (now - self.started_at))
        line = "progress: " + " | ".join(parts)
        self.lines.append(line)
        self._print(line)
        if self._writer is not None:
            self._writer.scalars({"progress/updates_per_s": rate,
                                  "progress/dropped_share": dropped_share},
                                 updates)
        return line
