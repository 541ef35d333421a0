"""Detecting a diverging run, for the authors' third practice: restart an
unstable run from a good checkpoint (with a fresh data order).

The monitor sees the training loss at the end of every interval (the
weights are those of whole updates then). A run has diverged when the loss
is not finite, or when it stays above `factor` x its running minimum for
`patience` intervals in a row. An interval that passes is healthy, and the
weights at its end are what a rollback returns to.
"""
import dataclasses
import math


@dataclasses.dataclass
class Verdict:
    healthy: bool
    diverged: bool
    reason: str = ""


class DivergenceMonitor:

    def __init__(self, factor=3.0, patience=2):
        if factor <= 1.0:
            raise ValueError("the divergence factor must be above 1, got %r"
                             % factor)
        if patience < 1:
            raise ValueError("the divergence patience must be at least 1, "
                             "got %r" % patience)
        self.factor = float(factor)
        self.patience = int(patience)
        self.running_min = math.inf
        self._above = 0

    def observe(self, loss):
        """The verdict on the interval that ended with this loss."""
        if loss is None:
            return Verdict(healthy=False, diverged=False, reason="no loss")
        loss = float(loss)
        if not math.isfinite(loss):
            return Verdict(False, True, "loss is %r" % loss)
        if loss > self.factor * self.running_min:
            self._above += 1
            reason = ("loss %.4g above %g x its running minimum %.4g for %d "
                      "interval(s)" % (loss, self.factor, self.running_min,
                                       self._above))
            return Verdict(False, self._above >= self.patience, reason)
        self._above = 0
        self.running_min = min(self.running_min, loss)
        return Verdict(True, False)

    def reset_streak(self):
        """After a rollback: the running minimum stands, the streak not."""
        self._above = 0
