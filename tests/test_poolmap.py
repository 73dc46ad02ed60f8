"""ordered_map: results in order whatever order the work ends in, never more than the window
submitted ahead, an error raised in its turn with the rest cancelled, and a cancel request."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dsbackup.errors import Cancelled
from dsbackup.poolmap import ordered_map


def test_results_come_in_order_with_at_most_window_submitted_ahead():
    submitted: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        time.sleep(0.002 * ((7 * i) % 5))  # later items often end first
        return i * i

    class Counting(ThreadPoolExecutor):
        def submit(self, fn, *args, **kw):
            with lock:
                submitted.append(args[0])
            return super().submit(fn, *args, **kw)

    out = []
    with Counting(max_workers=4) as pool:
        for r in ordered_map(pool, work, range(40), 5):
            with lock:
                ahead = len(submitted) - len(out)
            assert ahead <= 5
            out.append(r)
    assert out == [i * i for i in range(40)] and submitted == list(range(40))


def test_an_error_is_raised_in_its_turn_and_the_rest_is_cancelled():
    started: list[int] = []

    def work(i: int) -> int:
        started.append(i)
        if i == 3:
            raise ValueError("item 3")
        time.sleep(0.01)
        return i

    got = []
    with ThreadPoolExecutor(max_workers=1) as pool, pytest.raises(ValueError, match="item 3"):
        for r in ordered_map(pool, work, range(100), 4):
            got.append(r)
    assert got == [0, 1, 2]
    assert max(started) < 10  # nothing past the window was run after the error


def test_cancel_raises_cancelled_before_waiting_for_the_next_result():
    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=2) as pool:
        it = ordered_map(pool, lambda i: i, range(10), 3, cancel=cancel,
                         cancelled="restore cancelled")
        assert next(it) == 0
        cancel.set()
        with pytest.raises(Cancelled, match="restore cancelled"):
            next(it)


def test_a_budget_bounds_the_cost_in_flight_and_lets_a_large_item_through_alone():
    sizes = [3, 1, 1, 9, 2, 2, 2, 2, 5, 1] * 4  # 9: larger than the budget
    lock = threading.Lock()
    in_flight: list[int] = []
    worst = 0

    class Counting(ThreadPoolExecutor):
        def submit(self, fn, *args, **kw):
            nonlocal worst
            with lock:
                in_flight.append(sizes[args[0]])
                if len(in_flight) > 1:
                    worst = max(worst, sum(in_flight))
            return super().submit(fn, *args, **kw)

    out = []
    with Counting(max_workers=3) as pool:
        for r in ordered_map(pool, lambda i: i, range(len(sizes)), 100,
                             cost=lambda i: sizes[i], budget=6):
            with lock:
                in_flight.pop(0)
            out.append(r)
    assert out == list(range(len(sizes)))
    assert 0 < worst <= 6  # more than one in flight only within the budget
