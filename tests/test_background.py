"""BackgroundCall: one call at a time in a thread; its error raised by wait() or the next start."""

from __future__ import annotations

import threading

import pytest

from dsbackup.background import BackgroundCall


def test_calls_run_one_at_a_time_in_order_and_wait_joins():
    seen: list[int] = []
    gate = threading.Event()
    call = BackgroundCall("t")
    call.start(lambda: (gate.wait(5), seen.append(1)))
    assert call.busy
    gate.set()
    call.start(seen.append, 2)  # waits for the first call before it starts
    call.wait()
    assert seen == [1, 2] and not call.busy


def test_an_error_is_raised_once_by_wait_or_by_the_next_start():
    call = BackgroundCall("t")
    call.start(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        call.wait()
    call.wait()  # said once
    call.start(lambda: [][0])
    with pytest.raises(IndexError):
        call.start(print)
    call.wait()
