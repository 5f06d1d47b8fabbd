"""The client's ordering core, without I/O: events released once each in seq order, and
the holes a catch-up read leaves filled with the exit, the close, or an explicit gap."""

from __future__ import annotations

from exec_server.client.process import Closed, Exited, Output, _Gap, _Sequencer


def out(seq: int) -> Output:
    return Output(seq, "stdout", b"%d" % seq)


def test_events_are_released_in_order_once_each() -> None:
    seq = _Sequencer()
    assert seq.add(out(2)) == []
    assert seq.add(Exited(3, 0)) == []
    assert seq.add(out(1)) == [out(1), out(2), Exited(3, 0)]
    assert seq.add(out(2)) == [] and seq.add(out(1)) == []  # repeats are dropped
    assert seq.add(Closed(4)) == [Closed(4)]
    assert seq.delivered == 4 and seq.saw_exit and seq.saw_closed


def test_holes_are_the_runs_neither_released_nor_pending() -> None:
    seq = _Sequencer()
    seq.add(out(1))
    seq.add(out(4))
    seq.add(out(7))
    assert seq.holes(9) == [(2, 3), (5, 6), (8, 9)]
    assert seq.holes(4) == [(2, 3)]


def test_settle_places_the_close_last_and_the_exit_in_the_one_hole_left() -> None:
    seq = _Sequencer()
    for s in (1, 2, 4, 5):  # output after the exit: a grandchild held the pipe
        seq.add(out(s))
    assert seq.settle(6, exited=True, exit_code=3, closed=True) == [Closed(6), Exited(3, 3)]


def test_settle_names_what_the_server_dropped() -> None:
    seq = _Sequencer()
    seq.add(out(1))
    seq.add(out(5))
    assert seq.settle(5, exited=False, exit_code=None, closed=False) == [_Gap(2, 4)]
    seq = _Sequencer()
    seq.add(out(1))
    seq.add(out(6))  # 2..5 missing; the exit is one of them, the rest was dropped
    filled = seq.settle(7, exited=True, exit_code=0, closed=True)
    assert filled == [Closed(7), Exited(5, 0), _Gap(2, 4)]
    released = [item for f in filled for item in seq.add(f)]
    assert released == [_Gap(2, 4), Exited(5, 0), out(6), Closed(7)]


def test_settle_when_nothing_is_missing_adds_nothing() -> None:
    seq = _Sequencer()
    for item in (out(1), Exited(2, 0), Closed(3)):
        seq.add(item)
    assert seq.settle(3, exited=True, exit_code=0, closed=True) == []


def test_a_late_copy_inside_a_gap_is_dropped() -> None:
    seq = _Sequencer()
    seq.add(out(1))
    seq.add(_Gap(3, 5))
    assert seq.add(out(4)) == []
    assert seq.add(out(2)) == [out(2), _Gap(3, 5)]
    assert seq.add(out(6)) == [out(6)]
