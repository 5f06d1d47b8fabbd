"""The two halves a transport owns, driven directly: the outbox batches and bounds what goes
out, the inbox holds back what comes in while the connection has no room."""

from __future__ import annotations

import asyncio

from exec_server.transport.inbox import Inbox
from exec_server.transport.outbox import Outbox


class Recorder:
    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []
        self.room_calls = 0

    def write(self, pieces: list[bytes]) -> None:
        self.writes.append(list(pieces))

    def on_room(self) -> None:
        self.room_calls += 1


async def test_messages_of_one_loop_turn_leave_in_one_write() -> None:
    out = Recorder()
    outbox = Outbox(out.write, 1000, out.on_room)
    outbox.put((b"a", b"\n"), 1)
    outbox.put((b"b", b"\n"), 1)
    assert out.writes == []
    await asyncio.sleep(0)
    assert out.writes == [[b"a", b"\n", b"b", b"\n"]]


async def test_a_batch_leaves_when_it_ends_not_at_the_end_of_the_turn() -> None:
    out = Recorder()
    outbox = Outbox(out.write, 1000, out.on_room)
    outbox.begin_batch()
    outbox.put((b"reply",), 5)
    await asyncio.sleep(0)
    assert out.writes == []
    outbox.end_batch()
    assert out.writes == [[b"reply"]]


async def test_past_the_high_water_mark_it_is_not_writable_until_drained() -> None:
    out = Recorder()
    outbox = Outbox(out.write, 10, out.on_room)
    outbox.pause_writing()  # the OS transport's buffer is full
    outbox.put((b"x" * 4,), 4)
    assert not outbox.writable
    outbox.resume_writing()
    assert outbox.writable and out.room_calls == 1
    outbox.put((b"y" * 12,), 12)  # past the mark: handed to the OS at once
    assert out.writes[-1] == [b"x" * 4, b"y" * 12]
    assert outbox.writable and outbox.queued_bytes == 0
    assert out.room_calls == 2  # the OS took it all: room again, said once


async def test_clear_forgets_what_is_queued() -> None:
    out = Recorder()
    outbox = Outbox(out.write, 10, out.on_room)
    outbox.put((b"gone",), 4)
    outbox.clear()
    await asyncio.sleep(0)
    assert out.writes == []


class Peer:
    def __init__(self) -> None:
        self.delivered: list[int] = []
        self.room = True
        self.reading = True
        self.stop_at: int | None = None

    def deliver(self, item: int) -> bool:
        self.delivered.append(item)
        return item != self.stop_at

    def has_room(self) -> bool:
        return self.room

    def pause(self) -> None:
        self.reading = False

    def resume(self) -> None:
        self.reading = True


def _inbox(peer: Peer) -> Inbox[int]:
    return Inbox(peer.deliver, peer.has_room, peer.pause, peer.resume)


def test_items_pass_straight_through_while_there_is_room() -> None:
    peer = Peer()
    inbox = _inbox(peer)
    inbox.receive(1)
    inbox.receive(2)
    assert peer.delivered == [1, 2] and not inbox.holding and peer.reading


def test_without_room_items_are_held_in_order_and_reading_pauses() -> None:
    peer = Peer()
    inbox = _inbox(peer)
    peer.room = False
    inbox.receive(1)
    inbox.hold(2)
    inbox.hold(3)
    inbox.process()
    assert peer.delivered == [] and inbox.holding and not peer.reading
    peer.room = True
    inbox.resume()
    assert peer.delivered == [1, 2, 3] and not inbox.holding and peer.reading


def test_a_connection_that_ends_drops_what_is_held() -> None:
    peer = Peer()
    inbox = _inbox(peer)
    peer.stop_at = 2
    for item in (1, 2, 3):
        inbox.hold(item)
    inbox.process()
    assert peer.delivered == [1, 2] and not inbox.holding


def test_room_made_while_delivering_does_not_reorder() -> None:
    peer = Peer()
    delivered: list[int] = []

    def deliver_and_resume(item: int) -> bool:
        delivered.append(item)
        inbox.resume()  # a flush inside a handler made room: must not deliver out of turn
        return True

    inbox: Inbox[int] = Inbox(deliver_and_resume, peer.has_room, peer.pause, peer.resume)
    for item in (1, 2, 3):
        inbox.hold(item)
    inbox.process()
    assert delivered == [1, 2, 3]
