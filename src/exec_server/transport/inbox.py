"""What a transport owns for receiving: hold messages back, pause reading, resume.

Received messages are handed to the connection one by one while it has room (its replies
can be queued and its waiting requests are under their bound). Otherwise they are held here
and reading from the peer is paused, so the peer backs up instead of our memory; once there
is room again, :meth:`Inbox.resume` hands over what was held and reads again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")


class Inbox(Generic[Item]):
    """The inbound queue of one connection; see the module docstring."""

    __slots__ = ("_deliver", "_delivering", "_held", "_pause_reading", "_resume_reading", "_room")

    def __init__(
        self,
        deliver: Callable[[Item], bool],
        room: Callable[[], bool],
        pause_reading: Callable[[], None],
        resume_reading: Callable[[], None],
    ) -> None:
        """``deliver`` hands one item to the connection (False: it is gone, stop);
        ``room`` tells whether it can take one more now."""
        self._deliver = deliver
        self._room = room
        self._pause_reading = pause_reading
        self._resume_reading = resume_reading
        self._held: deque[Item] = deque()
        self._delivering = False

    @property
    def holding(self) -> bool:
        """Whether items wait to be handed over."""
        return bool(self._held)

    def receive(self, item: Item) -> None:
        """One item from the peer: handed over now when nothing is held and there is room,
        else held (and handed over in order by :meth:`process`)."""
        if self._held or self._delivering or not self._room():
            self._held.append(item)
            self.process()
            return
        self._delivering = True
        try:
            self._deliver(item)
        finally:
            self._delivering = False

    def hold(self, item: Item) -> None:
        """Queue an item without handing anything over yet (several from one read)."""
        self._held.append(item)

    def process(self) -> None:
        """Hand held items over while there is room; otherwise pause reading the peer."""
        if self._delivering:
            return  # re-entered while handing over (a flush made room): the outer loop goes on
        self._delivering = True
        try:
            held = self._held
            while held:
                if not self._room():
                    self._pause_reading()
                    return
                if not self._deliver(held.popleft()):
                    held.clear()
                    return
        finally:
            self._delivering = False

    def resume(self) -> None:
        """There is room again: hand over what was held, then read the peer again."""
        self.process()
        if not self._held:
            self._resume_reading()

    def clear(self) -> None:
        self._held.clear()
