"""Converting between the three counts of synchronous training.

- worker steps (pushes tried): what `model.fit`'s `steps_per_epoch` counts
  under ParameterServerStrategy, whatever `steps_per_execution` is;
- applied updates: `optimizer.iterations`, the global step. Each update
  averages N = replicas_to_aggregate gradients, so with N + b workers at most
  N of every N + b pushes count, and an epoch of `steps_per_epoch` worker
  steps applies at most `steps_per_epoch * N / (N + b)` updates (fewer when
  a push is dropped as stale);
- examples: each update consumes N * per-worker batch size admitted examples.

Learning-rate schedules given to the wrapped optimizer already run on
applied updates (it only counts the updates it applies); a schedule written in
epochs needs `updates_per_epoch`, as TF1's Inception recipe divided its
decay steps by replicas_to_aggregate.
"""
import math


def _check(replicas_to_aggregate, total_num_replicas):
    if not 1 <= replicas_to_aggregate <= total_num_replicas:
        raise ValueError("need 1 <= replicas_to_aggregate (%r) <= "
                         "total_num_replicas (%r)"
                         % (replicas_to_aggregate, total_num_replicas))


def max_updates(worker_steps, replicas_to_aggregate, total_num_replicas):
    """The most updates `worker_steps` pushes can apply."""
    _check(replicas_to_aggregate, total_num_replicas)
    return worker_steps // replicas_to_aggregate


def expected_updates(worker_steps, replicas_to_aggregate, total_num_replicas):
    """Updates applied if every worker pushes at the same rate and exactly
    the b slowest pushes of each step are dropped."""
    _check(replicas_to_aggregate, total_num_replicas)
    # N of every N + b pushes are admitted, N admitted pushes per update.
    return worker_steps / total_num_replicas


def worker_steps_for_updates(updates, replicas_to_aggregate,
                             total_num_replicas):
    """Worker steps to schedule to expect `updates` applied updates."""
    _check(replicas_to_aggregate, total_num_replicas)
    return int(math.ceil(updates * total_num_replicas))


def updates_per_epoch(num_examples, batch_size_per_worker,
                      replicas_to_aggregate):
    """Applied updates that consume `num_examples` admitted examples."""
    if batch_size_per_worker < 1 or replicas_to_aggregate < 1:
        raise ValueError("batch size and replicas_to_aggregate must be >= 1")
    return num_examples / (batch_size_per_worker * replicas_to_aggregate)
