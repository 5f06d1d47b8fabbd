"""What a session or a connection owns besides its processes, in one pattern.

An owner has one :class:`Resources`: at most one resource of each kind (a file-handle table,
the HTTP body streams, the path watches...), made on first use by the method family that
needs it, and released when the owner ends (a session at its teardown, a connection when it
closes). A resource asked for after its owner ended is released at once, so it refuses
work instead of outliving its owner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar


class Resource(Protocol):
    def release(self) -> None:
        """The owner ended: stop, close and forget everything. Idempotent."""


R = TypeVar("R", bound=Resource)


class Resources:
    """The resources of one owner; see the module docstring."""

    __slots__ = ("_by_kind", "_released")

    def __init__(self) -> None:
        self._by_kind: dict[type, Resource] = {}
        self._released = False

    def get(self, kind: type[R], make: Callable[[], R]) -> R:
        """The owner's resource of this kind, made by ``make`` on first use."""
        resource = self._by_kind.get(kind)
        if resource is None:
            resource = make()
            if self._released:
                resource.release()
                return resource
            self._by_kind[kind] = resource
        assert isinstance(resource, kind)
        return resource

    def release_all(self) -> None:
        """Release every resource, newest first. Idempotent."""
        self._released = True
        resources = list(self._by_kind.values())
        self._by_kind.clear()
        for resource in reversed(resources):
            resource.release()
