"""Quorum policies: how many fresh pushes close a step, decided per step.

The quorum is a runtime value held on the protocol PS. A policy runs on the
coordinator (in the step watchdog), looks at the open step and may lower the
quorum of that step (it returns to `replicas_to_aggregate` once the step
closes) or fail the run. Policies never raise the quorum above
`replicas_to_aggregate`, so no step ever averages more than N pushes.
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class OpenStep:
    """What the watchdog knows of the open step."""
    step: int                 # version the open step aggregates
    count: int                # fresh pushes admitted so far
    admitted: tuple           # worker indices admitted so far
    open_for_s: float         # seconds since the coordinator saw it open
    replicas_to_aggregate: int
    total_num_replicas: int


@dataclasses.dataclass(frozen=True)
class Decision:
    quorum: int = None        # lower the open step's quorum to this
    fail: str = None          # stop the run with this message


class QuorumPolicy:
    """Base: fixed N, never times out."""

    name = "fixed"

    def decide(self, open_step):  # pylint: disable=unused-argument
        return None

    def get_config(self):
        return {"policy": self.name}


class FixedQuorum(QuorumPolicy):
    """Every step waits for exactly N fresh pushes (the paper's protocol)."""


class TimeoutThenDegrade(QuorumPolicy):
    """After `quorum_timeout_s` with at least `min_replicas_to_aggregate`
    pushes admitted, close the step with what it has (logged as degraded)."""

    name = "timeout_degrade"

    def __init__(self, min_replicas_to_aggregate, quorum_timeout_s):
        if min_replicas_to_aggregate < 1:
            raise ValueError("min_replicas_to_aggregate must be at least 1, "
                             "got %d" % min_replicas_to_aggregate)
        if quorum_timeout_s <= 0:
            raise ValueError("quorum_timeout_s must be positive, got %r"
                             % quorum_timeout_s)
        self.min_replicas_to_aggregate = int(min_replicas_to_aggregate)
        self.quorum_timeout_s = float(quorum_timeout_s)

    def decide(self, open_step):
        if (open_step.open_for_s >= self.quorum_timeout_s
                and self.min_replicas_to_aggregate <= open_step.count
                < open_step.replicas_to_aggregate):
            return Decision(quorum=open_step.count)
        return None

    def get_config(self):
        return {"policy": self.name,
                "min_replicas_to_aggregate": self.min_replicas_to_aggregate,
                "quorum_timeout_s": self.quorum_timeout_s}


class TimeoutThenFail(QuorumPolicy):
    """After `quorum_timeout_s` without a quorum, stop with an error naming
    the workers that have not contributed to the open step."""

    name = "timeout_fail"

    def __init__(self, quorum_timeout_s):
        if quorum_timeout_s <= 0:
            raise ValueError("quorum_timeout_s must be positive, got %r"
                             % quorum_timeout_s)
        self.quorum_timeout_s = float(quorum_timeout_s)

    def decide(self, open_step):
        if open_step.open_for_s < self.quorum_timeout_s:
            return None
        missing = [w for w in range(open_step.total_num_replicas)
                   if w not in open_step.admitted]
        return Decision(fail=(
            "ps_sync: step %d has %d of %d fresh gradients after %.1f s "
            "(quorum_timeout_s=%g); workers that have not contributed: %s. "
            "More than the %d backup workers are dead or stuck."
            % (open_step.step, open_step.count,
               open_step.replicas_to_aggregate, open_step.open_for_s,
               self.quorum_timeout_s, ", ".join("worker-%d" % w
                                                for w in missing),
               open_step.total_num_replicas
               - open_step.replicas_to_aggregate)))

    def get_config(self):
        return {"policy": self.name, "quorum_timeout_s": self.quorum_timeout_s}


def from_config(config):
    if config is None:
        return FixedQuorum()
    config = dict(config)
    name = config.pop("policy", "fixed")
    policies = {"fixed": FixedQuorum, "timeout_degrade": TimeoutThenDegrade,
                "timeout_fail": TimeoutThenFail}
    if name not in policies:
        raise ValueError("unknown quorum policy %r; expected one of %s"
                         % (name, ", ".join(sorted(policies))))
    return policies[name](**config)
