"""Resource readings of a server under test: RSS and CPU time, from /proc via psutil.

"The server" is its own process plus any descendant running the same executable (a helper
process of the server, if it has one); the children it starts for clients are never counted.
A helper's memory is its unique set size: a forked helper (our keeper) shares the server's
pages, and its RSS would count them twice.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import TracebackType

import psutil  # type: ignore[import-untyped]


@dataclass(frozen=True)
class Resources:
    """What the server holds at one moment (server process plus helpers), and what it left."""

    rss: int  # bytes, as :meth:`ServerProbe.rss`
    fds: int  # open file descriptors
    threads: int
    children: int  # live descendants that are not helpers: processes started for clients
    zombies: int  # descendants that exited and were not reaped (helpers included)
    helpers_uss: int  # bytes of ``rss`` that the helpers hold alone (the rest: the server's)


class ServerProbe:
    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        try:
            self._exe = self.proc.exe()
        except psutil.Error:
            self._exe = ""
        self._helpers: list[psutil.Process] = []

    def refresh_helpers(self) -> None:
        """Find descendants that run the server's own executable (not client workloads)."""
        helpers = []
        try:
            for p in self.proc.children(recursive=True):
                try:
                    if self._exe and p.exe() == self._exe:
                        helpers.append(p)
                except psutil.Error:
                    continue
        except psutil.Error:
            pass
        self._helpers = helpers

    def _members(self) -> list[psutil.Process]:
        return [self.proc, *self._helpers]

    def rss(self) -> int:
        """Resident set size in bytes of the server, plus what its helpers hold alone."""
        try:
            total = int(self.proc.memory_info().rss)
        except psutil.Error:
            return 0
        for p in self._helpers:
            try:
                total += p.memory_full_info().uss
            except psutil.Error:
                continue
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and its helpers (not of reaped children)."""
        total = 0.0
        for p in self._members():
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
        return total

    def resources(self) -> Resources:
        """fds, threads, children and zombies now (helpers refreshed first), and RSS."""
        self.refresh_helpers()
        fds = threads = 0
        for p in self._members():
            try:
                with p.oneshot():
                    fds += p.num_fds()
                    threads += p.num_threads()
            except psutil.Error:
                continue
        helpers = {p.pid for p in self._helpers}
        children = zombies = 0
        for p in self.descendants():
            try:
                status = p.status()
            except psutil.Error:
                continue
            if status == psutil.STATUS_ZOMBIE:
                zombies += 1
            elif p.pid not in helpers:
                children += 1
        rss = self.rss()
        try:
            own = int(self.proc.memory_info().rss)
        except psutil.Error:
            own = rss
        return Resources(rss, fds, threads, children, zombies, rss - own)

    def descendants(self) -> list[psutil.Process]:
        try:
            return list(self.proc.children(recursive=True))
        except psutil.Error:
            return []


class PeakRss:
    """Samples a probe's RSS on a background thread; ``peak`` holds the maximum seen."""

    def __init__(self, probe: ServerProbe, interval: float = 0.01) -> None:
        self._probe = probe
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.peak = 0

    def _run(self) -> None:
        last_refresh = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_refresh > 0.5:
                self._probe.refresh_helpers()
                last_refresh = now
            self.peak = max(self.peak, self._probe.rss())
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRss:
        self.peak = self._probe.rss()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._probe.rss())
