"""The simulator against cases with known answers (pure Python, no
TensorFlow): deterministic times give exact step times; exponential times
give known order statistics; the paper-tail calibration hits its targets."""
import math
import statistics
import subprocess
import sys

import pytest

from ps_sync import quorum
from ps_sync import simulator as sim


def _cluster(workers, times, n=None, **kwargs):
    return sim.Cluster(num_workers=workers, worker_times=times,
                       replicas_to_aggregate=n, **kwargs)


def test_does_not_load_tensorflow():
    code = ("import sys, ps_sync.simulator, ps_sync.recommend; "
            "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.call([sys.executable, "-c", code]) == 0


def test_deterministic_times_give_exact_steps():
    result = sim.simulate(_cluster(3, sim.Fixed(1.0), 2), updates=10)
    assert result.closes == pytest.approx([float(t) for t in range(1, 11)])
    assert result.quorums == [2] * 10


def test_deterministic_ps_costs_add_exactly():
    # All 3 arrive at 1.0; the PS serves 0.1 + 0.1 + (0.1 + apply 0.2): the
    # step closes at 1.5. The closer restarts at once, the two waiters
    # 0.05 s later; its push then enters first, the others queue behind it.
    result = sim.simulate(_cluster(3, sim.Fixed(1.0), 3, push_cost_s=0.1,
                                   apply_cost_s=0.2, wake_s=0.05), updates=6)
    assert result.closes == pytest.approx([1.5, 3.0, 4.5, 6.0, 7.5, 9.0])


def test_a_slow_worker_is_dropped_every_time():
    # Worker 2 needs 2.7 s: by then its version is gone; it is retagged at
    # once and its next gradient is stale again. Steps run at 1 s.
    result = sim.simulate(_cluster(3, sim.Fixed([1.0, 1.0, 2.7]), 2),
                          updates=20)
    assert result.closes == pytest.approx([float(t) for t in range(1, 21)])
    assert result.pushes - result.admitted == 7   # at 2.7, 5.4, ... 18.9
    assert result.admitted == 40


def test_n_of_n_waits_for_the_slowest():
    result = sim.simulate(_cluster(3, sim.Fixed([1.0, 1.0, 2.5]), 3),
                          updates=5)
    assert result.step_times == pytest.approx([2.5] * 5)
    assert result.wasted_share == 0


def test_async_applies_every_push_and_the_ps_can_bound_it():
    # 4 workers, 1 s of compute, 0.1 s per apply: the first round queues,
    # after that each worker's cycle is 1.1 s with no wait.
    result = sim.simulate(_cluster(4, sim.Fixed(1.0), mode="async",
                                   apply_cost_s=0.1), updates=8)
    assert result.closes == pytest.approx([1.1, 1.2, 1.3, 1.4,
                                           2.2, 2.3, 2.4, 2.5])
    # 10 workers of 0.1 s against 0.05 s per apply: the PS is the limit.
    busy = sim.simulate(_cluster(10, sim.Fixed(0.1), mode="async",
                                 apply_cost_s=0.05), updates=400)
    assert busy.updates_per_s == pytest.approx(20.0, rel=1e-6)


def test_workers_sharing_cores_slow_down_proportionally():
    one_machine = sim.simulate(_cluster(4, sim.Fixed(1.0), 4,
                                        workers_per_machine=4,
                                        cores_per_machine=2), updates=3)
    assert one_machine.closes == pytest.approx([2.0, 4.0, 6.0])
    two_machines = sim.simulate(_cluster(4, sim.Fixed(1.0), 4,
                                         workers_per_machine=2,
                                         cores_per_machine=2), updates=3)
    assert two_machines.closes == pytest.approx([1.0, 2.0, 3.0])
    # With N=2 of 4 on 2 cores: 4 share at 0.5 speed until 2.0; the two
    # closers... all four finish together, two are admitted, two dropped
    # and retagged, so the next round again has four computing: 2 s steps.
    backups = sim.simulate(_cluster(4, sim.Fixed(1.0), 2,
                                    workers_per_machine=4,
                                    cores_per_machine=2), updates=3)
    assert backups.closes == pytest.approx([2.0, 4.0, 6.0])


def test_a_paused_worker_makes_no_progress():
    # Worker 1 is stopped during [0.5, 1.5]: its 1 s of work ends at 2.0.
    result = sim.simulate(_cluster(2, sim.Fixed(1.0), 2,
                                   pauses=((1, 0.5, 1.5),)), updates=3)
    assert result.closes == pytest.approx([2.0, 3.0, 4.0])
    assert result.compute_times[:2] == pytest.approx([1.0, 2.0])


def test_first_step_is_the_nth_order_statistic_of_exponentials():
    # Every worker starts together on version 0, so the first update closes
    # at the N-th smallest of N+b iid Exp(rate) times, and the k-th fresh
    # arrival at the k-th smallest.
    n, b, rate, runs = 6, 3, 2.0, 3000
    firsts, kth = [], [[] for _ in range(n)]
    for seed in range(runs):
        result = sim.simulate(_cluster(n + b, sim.Exponential(rate), n),
                              updates=1, seed=seed)
        firsts.append(result.closes[0])
        for k, offset in enumerate(result.arrivals[0]):
            kth[k].append(offset)
    expected = sim.expected_exp_order_stat(n, n + b, rate)
    sd = math.sqrt(sim.var_exp_order_stat(n, n + b, rate))
    # 4 standard errors: a false failure has probability below 1e-4.
    assert abs(statistics.fmean(firsts) - expected) < 4 * sd / math.sqrt(runs)
    for k in range(1, n + 1):
        expected_k = sim.expected_exp_order_stat(k, n + b, rate)
        sd_k = math.sqrt(sim.var_exp_order_stat(k, n + b, rate))
        assert abs(statistics.fmean(kth[k - 1]) - expected_k) \
            < 4 * sd_k / math.sqrt(runs)


def test_n_of_n_step_is_the_maximum_of_exponentials():
    # b = 0: every worker waits each step, so steps are independent maxima:
    # E = H_N / rate.
    n, rate, steps = 5, 1.0, 4000
    result = sim.simulate(_cluster(n, sim.Exponential(rate), n),
                          updates=steps, seed=1)
    expected = sim.expected_exp_order_stat(n, n, rate)
    sd = math.sqrt(sim.var_exp_order_stat(n, n, rate))
    assert abs(statistics.fmean(result.step_times) - expected) \
        < 4 * sd / math.sqrt(steps)


def test_backups_shorten_steps_under_a_heavy_tail():
    tail = sim.paper_tail(100)
    full = sim.simulate(_cluster(100, tail, 100), updates=100)
    backed = sim.simulate(_cluster(100, tail, 96), updates=100)
    assert backed.mean_step_s < 0.85 * full.mean_step_s
    assert backed.quorums == [96] * 100


def test_paper_tail_calibration_hits_both_targets():
    cal = sim.calibrate_paper_tail()
    zero, at_most_one = sim.count_within_probs(
        cal["p_fast_late"], cal["p_slow_late"], 100, 1)
    assert zero == pytest.approx(0.3, abs=1e-9)
    assert at_most_one == pytest.approx(0.8, abs=1e-9)
    # Sampled: the share of rounds whose 99th / 100th arrival is within 2 s.
    # 4 binomial standard errors at 4000 rounds: 0.025 and 0.029.
    rounds = sim.order_stat_samples(cal["dist"], 100, 4000, seed=3)
    assert sim.fraction_within(rounds, 99, 2.0) == pytest.approx(0.8,
                                                                 abs=0.025)
    assert sim.fraction_within(rounds, 100, 2.0) == pytest.approx(0.3,
                                                                  abs=0.029)
    # A normal machine's median is near 1 s with the default sigma.
    assert 0.9 < cal["fast_median_s"] < 1.2 < cal["slow_median_s"]


def test_paper_tail_rejects_impossible_targets():
    with pytest.raises(ValueError, match="last < second_last"):
        sim.calibrate_paper_tail(second_last=0.3, last=0.8)
    with pytest.raises(ValueError, match="no slow machine"):
        sim.calibrate_paper_tail(n=50)


def test_iid_times_cannot_give_the_paper_pair():
    # Why the calibration needs slow machines: with iid times, 30% for the
    # last fixes F(2 s) and then the second-to-last is at 66%, not 80%.
    f = 0.3 ** (1 / 100)
    second_last = f ** 100 + 100 * f ** 99 * (1 - f)
    assert second_last == pytest.approx(0.663, abs=0.001)


def test_quorum_policy_lowers_steps_within_its_bounds():
    policy = quorum.AdaptiveQuorum(min_replicas_to_aggregate=15,
                                   explore_every=5, warmup_steps=3)
    result = sim.simulate(_cluster(20, sim.LogNormal(1.0, 0.3), 20,
                                   quorum_policy=policy, poll_s=0.02),
                          updates=60, seed=2)
    assert all(15 <= q <= 20 for q in result.quorums)
    assert min(result.quorums) < 20        # it did lower some steps
    assert policy.decisions
    assert all(15 <= q < 20 for _, q in policy.decisions)


def test_pauses_from_spec_follow_the_schedule():
    entries = [{"task": "worker-2", "every_s": {"distribution": "fixed",
                                                "value": 1.0},
                "pause_s": {"distribution": "fixed", "value": 0.5}}]
    assert sim.pauses_from_spec(entries, 4.0) == [
        (2, 1.0, 1.5), (2, 2.5, 3.0)]


def test_bad_cluster_is_refused():
    with pytest.raises(ValueError, match="between 1 and num_workers"):
        _cluster(3, sim.Fixed(1.0), 4)
    with pytest.raises(ValueError, match="mode"):
        _cluster(3, sim.Fixed(1.0), mode="semi")
    with pytest.raises(ValueError, match="updates or duration_s"):
        sim.simulate(_cluster(3, sim.Fixed(1.0)))


def test_adaptive_quorum_learns_steps_shorter_than_a_poll():
    # Steps of 30 ms, polled every 50 ms: most open and close between two
    # polls. Worker 2 is paused 2 s in every 3.5 s (SIGSTOP); the policy
    # learns from the PS log's exact arrivals and leaves it behind.
    pauses = tuple((2, 1.0 + 3.5 * i, 3.0 + 3.5 * i) for i in range(6))
    policy = quorum.AdaptiveQuorum(min_replicas_to_aggregate=2,
                                   warmup_steps=3, explore_every=10)
    result = sim.simulate(_cluster(3, sim.Fixed(0.03), 3, pauses=pauses,
                                   quorum_policy=policy),
                          duration_s=20.0, seed=0)
    fixed = sim.simulate(_cluster(3, sim.Fixed(0.03), 3, pauses=pauses),
                         duration_s=20.0, seed=0)
    assert all(2 <= q <= 3 for q in result.quorums)
    assert result.quorums.count(2) > result.updates // 4
    assert result.updates > 1.4 * fixed.updates
    assert all(q == 2 for _, q in policy.decisions)
