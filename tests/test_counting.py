import pytest

from ps_sync import counting


def test_updates_from_worker_steps():
    # 3 workers, N = 2: 30 pushes apply at most 15 updates, 10 when exactly
    # the one slowest push of every step is dropped.
    assert counting.max_updates(30, 2, 3) == 15
    assert counting.expected_updates(30, 2, 3) == 10
    assert counting.worker_steps_for_updates(10, 2, 3) == 30
    assert counting.max_updates(7, 2, 3) == 3  # a partial step stays open


def test_updates_per_epoch_counts_admitted_examples():
    # Digits: 1437 examples, batch 32 per worker, N = 2.
    assert counting.updates_per_epoch(1437, 32, 2) == pytest.approx(22.45, 0.01)
    # Paper-scale Inception: 1.28M images, batch 32, N = 50.
    assert counting.updates_per_epoch(1281167, 32, 50) == pytest.approx(800.7,
                                                                        0.01)


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="replicas_to_aggregate"):
        counting.max_updates(10, 4, 3)
    with pytest.raises(ValueError):
        counting.updates_per_epoch(100, 0, 2)
