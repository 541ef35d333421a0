"""PS log rows -> exact per-step arrivals (pure Python)."""
import pytest

from ps_sync import steplog


def _row(step, tag, worker, arrived_at, outcome, rank=0, quorum=3):
    # LOG_FIELDS order; ready_at and computed_at are not read.
    return (step, tag, worker, 0.0, 0.0, arrived_at, outcome, rank, quorum)


S = steplog
ROWS = [
    # Step 4 closes: step 5 opens at 10.0 (step 4's own opening is unknown).
    _row(4, 4, 2, 10.0, S.ADMITTED_CLOSED, 3),
    _row(5, 3, 2, 10.05, S.DROPPED_STALE),       # an old gradient: ignored
    _row(5, 5, 0, 10.1, S.ADMITTED, 1),
    _row(5, 5, 1, 10.3, S.ADMITTED, 2),
    # The coordinator lowered the quorum to 2 and closed step 5.
    _row(5, 5, 1, 10.35, S.POLICY_CLOSED, 2, quorum=2),
    # Worker 2's gradient for step 5 comes after the close: fresh, dropped.
    _row(6, 5, 2, 10.5, S.DROPPED_STALE),
    _row(6, 6, 0, 10.6, S.ADMITTED, 1),
    _row(6, 6, 0, 10.65, S.DROPPED_DUPLICATE),   # not a new gradient
    _row(6, 6, 1, 10.7, S.ADMITTED, 2),
    _row(6, 6, 2, 10.8, S.ADMITTED_CLOSED, 3),   # finalises step 5
    _row(7, 7, 0, 10.9, S.ADMITTED, 1),
    _row(7, 7, 1, 11.0, S.ADMITTED, 2),
    _row(7, 7, 1, 11.5, S.POLICY_CLOSED, 2, quorum=2),  # finalises step 6
    # Step 7's third gradient, after step 8 closed: step 7 is final.
    _row(8, 8, 0, 11.6, S.ADMITTED_CLOSED, 1, quorum=1),
    _row(9, 7, 2, 11.7, S.DROPPED_STALE),
]


def _closed(rows):
    arrivals = steplog.StepArrivals()
    out = []
    for row in rows:
        out.extend(arrivals.add(steplog.push_record(row)))
    return arrivals, out


def test_closed_steps_carry_every_fresh_arrival_from_the_opening():
    arrivals, closed = _closed(ROWS)
    assert [c.step for c in closed] == [5, 6, 7]
    five, six, seven = closed
    assert (five.opened_at, five.closed_at, five.quorum) == (10.0, 10.35, 2)
    # The third gradient came after the close: 0.5 s after the opening.
    assert five.offsets == pytest.approx((0.1, 0.3, 0.5))
    assert five.final_s == pytest.approx(0.8)      # step 6 closed at 10.8
    assert (six.opened_at, six.closed_at, six.quorum) == (10.35, 10.8, 3)
    assert six.offsets == pytest.approx((0.25, 0.35, 0.45))
    # Step 7's late third gradient came after step 8 closed: not counted.
    assert seven.offsets == pytest.approx((0.1, 0.2))
    assert seven.final_s == pytest.approx(0.8)
    assert arrivals.opened_at(9) == 11.6
    assert arrivals.opened_at(10) is None


def test_a_step_whose_opening_was_not_seen_is_skipped():
    # Rows lost before step 5's opening: nothing about step 5.
    _, closed = _closed(ROWS[1:10])
    assert closed == []


def test_reset_forgets_open_records():
    arrivals = steplog.StepArrivals()
    for row in ROWS[:6]:
        arrivals.add(steplog.push_record(row))
    arrivals.reset()
    assert arrivals.opened_at(6) is None
    assert [c.step for row in ROWS[6:]
            for c in arrivals.add(steplog.push_record(row))] == [7]
