"""The hypervisor connections of this process: one per URI, opened on first use, reopened when
it died, shared by the threads of one process (`sd web`, `sd watch`, the helper service).
`SHARED_CONNECTIONS` is the one every command of this process uses unless handed another.

May import: hypervisor.connection (lazily, to open), hypervisor.types, the standard library.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .types import HypervisorAPI


class Connections:
    """One hypervisor connection per URI for this process (test:/// state lives in it).

    Thread-safe: `sd web`'s threads and the live host reads share one; a URI being opened
    (libvirtd down: ~8 s of retries) holds up only callers of that URI.
    """

    def __init__(self, opener: Callable[[str], HypervisorAPI] | None = None) -> None:
        self._opener = opener
        self._open: dict[str, HypervisorAPI] = {}
        self._guard = threading.Lock()  # the two dicts
        self._opening: dict[str, threading.Lock] = {}  # one open at a time per URI

    def __call__(self, uri: str, *, attempts: int | None = None) -> HypervisorAPI:
        with self._guard:
            opening = self._opening.setdefault(uri, threading.Lock())
        with opening:
            cached = self._open.get(uri)
            if cached is not None and cached.is_alive():
                return cached
            if cached is not None:
                self.forget(uri)  # a long-lived process (sd watch, sd web) outlives restarts
            hv: HypervisorAPI
            if self._opener is None:
                from .connection import connect

                hv = connect(uri) if attempts is None else connect(uri, attempts=attempts)
            else:
                hv = self._opener(uri)
            with self._guard:
                self._open[uri] = hv
            return hv

    def once(self, uri: str) -> HypervisorAPI:
        """URI's connection, opened (if it must be) in one attempt: a ping, which a host that
        is down fails at once rather than after ~8 s of retries."""
        return self(uri, attempts=1)

    def forget(self, uri: str) -> None:
        """Drop URI's connection (it failed): the next call opens a new one."""
        with self._guard:
            hv = self._open.pop(uri, None)
        if hv is not None:
            hv.close()

    def detach(self, uri: str) -> HypervisorAPI | None:
        """Hand over URI's connection, open, and drop it here (a test partitions a host)."""
        with self._guard:
            return self._open.pop(uri, None)

    def attach(self, uri: str, hv: HypervisorAPI) -> None:
        """Use HV for URI from now on (a detached connection coming back)."""
        with self._guard:
            self._open[uri] = hv

    def close(self) -> None:
        with self._guard:
            opened, self._open = list(self._open.values()), {}
        for hv in opened:
            hv.close()


#: Connections shared by every command run in this process (a test's in-process CLI calls).
SHARED_CONNECTIONS = Connections()
