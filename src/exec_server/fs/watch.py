"""``fs/watchMissing``: tell the client once when paths it is waiting for may have appeared.

The client (codex 0.169, at every session start) names paths that do not exist yet, such as
``.agents/skills`` and each ancestor's ``.git``, and optionally one ``present`` path that does.
The watch fires once, with ``fs/missingChanged {watchId}``, as soon as the view it was built
on may be stale; the client then looks again and registers a new watch under a new id.
Behaviour probed on the 0.169 reference:

- It fires when the first absent component of any missing path is created (file, directory,
  symlink, or renamed into place): for ``d1/d2/f`` with only the parent of ``d1`` existing,
  creating ``d1`` fires. Other names appearing next to it do not.
- It fires when the directory watched for that component changes itself (permissions,
  removal, rename), and when ``present`` changes, is removed or renamed.
- A session has one watch at a time, and ids only go up: a request whose id is not greater
  than every id seen before in the session is refused and changes nothing (so the first id
  must be at least 1); any other request replaces the current watch, even when the new one
  is then refused.
- It is refused (``watching: false``, nothing registered) when ``missing`` is empty, a
  missing path already exists, a missing path can never appear (an ancestor is not a
  directory), or ``present`` does not exist.
- Under the operator's confinement, a path it hides looks absent, whether or not it exists
  (the answer must not tell): it counts as missing, and as not there for ``present``. Paths
  are then looked at through a :class:`PathView` that checks each through a descriptor (a
  symlink swapped meanwhile changes nothing), and watched through that descriptor too.

Events come from inotify on the event loop: no polling. Watches belong to the session and
are released with it; the inotify instance is the server's, shared by every session, and a
session watches at most ``max_paths`` paths at once (past it the watch is refused).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from . import inotify
from .inotify import Inotify, Subscription

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class PathView(Protocol):
    """How a watch sees the filesystem."""

    def mode(self, path: str) -> int | None:
        """The ``st_mode`` of what ``path`` leads to, or None when it is absent (or looks
        so); OSError for anything else (not a directory on the way, a loop)."""

    def watch(self, path: str, add: Callable[[str], _T]) -> _T:
        """``add(name)`` with a name inotify may watch for what ``path`` leads to."""


class PlainView:
    """The filesystem as it is: what the client sees without a confinement."""

    def mode(self, path: str) -> int | None:
        try:
            return os.stat(path).st_mode
        except FileNotFoundError:
            return None

    def watch(self, path: str, add: Callable[[str], _T]) -> _T:
        return add(path)


PLAIN = PlainView()


@dataclass(frozen=True, slots=True)
class _Target:
    """A path inotify watches for one missing path or for ``present``."""

    directory: str
    """The path watched: the nearest existing ancestor, or ``present`` itself."""
    name: str | None
    """The child of ``directory`` whose appearance fires; None for ``present``."""


@dataclass(eq=False)
class _Watch:
    watch_id: int
    subscriptions: list[Subscription] = field(default_factory=list)


class MissingWatches:
    """The watch of one session; ``notify(watch_id)`` sends ``fs/missingChanged``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        notify: Callable[[int], None],
        max_paths: int = 256,
    ) -> None:
        self._loop = loop
        self._notify = notify
        self._max_paths = max_paths
        self._inotify: Inotify | None = None
        self._current: _Watch | None = None
        self._last_id = 0
        self._released = False

    def register(
        self,
        watch_id: int,
        missing: list[str],
        present: str | None,
        view: PathView = PLAIN,
    ) -> bool:
        """Replace the session's watch; False when the new one is refused (module docstring).

        Paths are absolute and normalised, and seen through ``view``. Runs on the event loop
        (a few ``stat`` calls a path): a watch past ``max_paths`` is refused by its count,
        before any path is looked at."""
        if self._released or watch_id <= self._last_id:
            return False
        self._last_id = watch_id
        self._cancel()
        if len(missing) + (present is not None) > self._max_paths:
            return False
        targets = _plan(missing, present, view) if missing else None
        if targets is None:
            return False
        watch = _Watch(watch_id)
        if not self._subscribe(watch, targets, view):
            return False
        self._current = watch
        if _changed(missing, present, view):  # it changed before the kernel watches were in place
            self._loop.call_soon(self._fire, watch)
        return True

    def _cancel(self) -> None:
        if self._current is not None:
            self._unsubscribe(self._current)
            self._current = None

    def _subscribe(self, watch: _Watch, targets: list[_Target], view: PathView) -> bool:
        try:
            if self._inotify is None:
                self._inotify = inotify.acquire(self._loop)
            for target in targets:
                listener = _listener(target.name, functools.partial(self._fire, watch))
                add = functools.partial(self._inotify.subscribe, listener=listener)
                watch.subscriptions.append(view.watch(target.directory, add))
        except OSError as exc:  # out of inotify instances or watches, or the path just went
            log.info("fs/watchMissing %d not watched: %s", watch.watch_id, exc)
            self._unsubscribe(watch)
            return False
        return True

    def _fire(self, watch: _Watch) -> None:
        if self._current is not watch:
            return  # fired already, replaced, or released
        self._current = None
        self._unsubscribe(watch)
        self._notify(watch.watch_id)

    def _unsubscribe(self, watch: _Watch) -> None:
        if self._inotify is not None:
            for subscription in watch.subscriptions:
                self._inotify.unsubscribe(subscription)
        watch.subscriptions.clear()

    @property
    def watching(self) -> int | None:
        """The id of the watch waiting to fire, if any."""
        return None if self._current is None else self._current.watch_id

    def release(self) -> None:
        """The session ended: drop the watch and the share of the inotify instance; nothing
        is sent."""
        self._released = True
        self._cancel()
        if self._inotify is not None:
            inotify.release(self._inotify)
            self._inotify = None


def _listener(name: str | None, fire: Callable[[], None]) -> Callable[[int, str], None]:
    """A listener that fires on the watched path itself and, for an ancestor directory, on
    the one child name that matters."""

    def on_event(mask: int, event_name: str) -> None:
        if event_name == "" or event_name == name:
            fire()

    return on_event


def _exists(view: PathView, path: str) -> bool:
    """As ``os.path.exists``: anything that cannot be looked at does not exist."""
    try:
        return view.mode(path) is not None
    except OSError:
        return False


def _plan(missing: list[str], present: str | None, view: PathView) -> list[_Target] | None:
    """What to watch, or None when the watch must be refused."""
    targets = []
    for path in missing:
        target = _absent_component(path, view)
        if target is None:
            return None
        targets.append(target)
    if present is not None:
        if not _exists(view, present):
            return None
        targets.append(_Target(present, None))
    return targets


def _absent_component(path: str, view: PathView) -> _Target | None:
    """The nearest existing ancestor of a missing path and the child of it that would appear
    first; None if the path exists or can never appear (an ancestor is not a directory)."""
    if _exists(view, path):
        return None
    child = path
    parent = os.path.dirname(child)
    while parent != child:
        try:
            mode = view.mode(parent)
        except OSError:  # not a directory on the way, no permission, a loop
            return None
        if mode is None:
            child, parent = parent, os.path.dirname(parent)
            continue
        if not stat.S_ISDIR(mode):
            return None
        return _Target(parent, os.path.basename(child))
    return None  # "/" itself is missing: nothing can appear


def _changed(missing: list[str], present: str | None, view: PathView) -> bool:
    """Whether the state a new watch was planned on has moved already."""
    if present is not None and not _exists(view, present):
        return True
    return any(_exists(view, path) for path in missing)
