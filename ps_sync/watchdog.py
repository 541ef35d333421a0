"""Coordinator-side release of waiters that no remaining closure can free.

A worker admitted to an open step waits for it to close. At the end of an
epoch (or of a custom loop's schedule) the closures that could complete the
quorum may never come, and `ClusterCoordinator.join()` would then wait on the
waiters forever (hazard 3 of DESIGN.md). This thread watches the
coordinator's closure queue: once every pending closure is a waiter, it bumps
the release generation on the protocol PS and the waiters return, leaving the
open step open for later closures. A release never touches protocol state, so
a spurious one only costs a little efficiency.
"""
import threading

from absl import logging


def pending_closures(coordinator):
    """Closures scheduled but not finished, or None if unknown."""
    queue = getattr(getattr(coordinator, "_cluster", None), "closure_queue",
                    None)
    if queue is None:
        return None
    try:
        tagged = sum(q.qsize() for q in list(queue._tagged_queue.values()))
        return queue._queue.qsize() + tagged + queue._inflight_closure_count
    except AttributeError:
        return None


class ReleaseWatchdog:

    def __init__(self, protocol, coordinator, interval_s=0.05):
        self._protocol = protocol
        self._coordinator = coordinator
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.releases = 0
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="ps_sync-release-watchdog")

    def start(self):
        if pending_closures(self._coordinator) is None:
            logging.warning(
                "ps_sync: this TensorFlow's ClusterCoordinator does not expose "
                "its closure queue; waiters are freed only by max_wait_s")
            return self
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()

    def _run(self):
        limit = self._protocol.total_num_replicas
        while not self._stop.wait(self._interval_s):
            try:
                pending = pending_closures(self._coordinator)
                if pending is None or pending > limit:
                    continue
                waiting = self._protocol.num_waiting()
                # Re-read: a closure may have been scheduled meanwhile.
                if waiting and pending_closures(self._coordinator) <= waiting:
                    self._protocol.release_waiters()
                    self.releases += 1
            except Exception as e:  # pylint: disable=broad-except
                # The cluster may be going away; the waiters' own deadline
                # still bounds every wait.
                logging.log_every_n(logging.WARNING,
                                    "ps_sync watchdog: %s", 100, e)
