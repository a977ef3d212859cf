"""A `run` request's connection in the helper service: the result stream whose status goes
first, the watch that destroys the VM when the runner hangs up (or saves it when the runner
says the job is vacated), and the paused starts under way that a job's next request waits for.
May import: helper.client, the standard library.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
from collections.abc import Callable
from typing import Protocol

from .client import EVICT_LINE

log = logging.getLogger("sd_batch.helper.service")

#: How long a job's request waits for its VM's paused start (`Starting`).
STARTING_SECONDS = 300.0


class Replier(Protocol):
    """The request handler: whether a reply (or its first bytes) went out."""

    replied: bool


class Starting:
    """The jobs whose VM is being started paused after their prepare (`start_paused`): the
    job's run, cleanup and a repeated prepare wait for that start to end, so a cleanup never
    races a start into a domain nobody records, and a run resumes what the start made."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._under_way: dict[tuple[int, str], threading.Event] = {}

    def begin(self, key: tuple[int, str]) -> threading.Event:
        done = threading.Event()
        with self._lock:
            self._under_way[key] = done
        return done

    def end(self, key: tuple[int, str], done: threading.Event) -> None:
        with self._lock:
            if self._under_way.get(key) is done:
                del self._under_way[key]
        done.set()

    def wait(self, key: tuple[int, str], timeout: float = STARTING_SECONDS) -> None:
        with self._lock:
            done = self._under_way.get(key)
        if done is not None and not done.wait(timeout):
            log.warning(
                "uid %d job %s: its paused start still runs after %.0f s; going on",
                key[0],
                key[1],
                timeout,
            )


class StatusFirst:
    """The result tar's way out: `{"ok": true}` goes first, with the first bytes, so nothing
    is promised before jobs.run has the whole result in hand."""

    def __init__(self, sock: socket.socket, handler: Replier) -> None:
        self.sock, self.handler = sock, handler

    def status(self) -> None:
        if not self.handler.replied:
            self.handler.replied = True
            self.sock.sendall(b'{"ok": true}\n')

    def write(self, data: bytes) -> int:
        self.status()
        self.sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass


class HangupWatch:
    """While a `run` waits on its VM: the runner hanging up calls the VM's destroy callback,
    then again every second until the run ends (a VM started just after the first call dies
    too). Data the runner sends is read and dropped."""

    def __init__(self, sock: socket.socket, what: str) -> None:
        self.sock, self.what = sock, what
        self.done = threading.Event()
        self.hung_up = False
        self.save: Callable[[], None] | None = None
        self.thread: threading.Thread | None = None
        # `stop` wakes the poll at once: the result's connection closes when the run ends,
        # not up to a poll period later (the runner waits for that end of the stream)
        self.wake_read, self.wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def start(self, destroy: Callable[[], None]) -> None:
        """`jobs.run`'s INSTALL_SIGNALS: it hands us the destroy callback."""
        self.thread = threading.Thread(
            target=self._watch, args=(destroy,), daemon=True, name=f"watch {self.what}"
        )
        self.thread.start()

    def _watch(self, destroy: Callable[[], None]) -> None:
        poller = select.poll()
        gone = select.POLLHUP | select.POLLERR | select.POLLNVAL | select.POLLRDHUP
        poller.register(self.sock.fileno(), select.POLLIN | gone)
        poller.register(self.wake_read, select.POLLIN)
        while not self.done.is_set():
            events = [e for e in poller.poll(500) if e[0] == self.sock.fileno()]
            if not events:
                continue
            if not events[0][1] & gone:
                try:
                    data = self.sock.recv(4096, socket.MSG_DONTWAIT)
                    if data:
                        if EVICT_LINE in data and self.save is not None:
                            log.info("%s: the job is being vacated: saving its VM", self.what)
                            save, self.save = self.save, None
                            save()
                        continue
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    pass
            break
        else:
            return
        self.hung_up = True
        log.warning("%s: the runner hung up: destroying its VM", self.what)
        while True:
            destroy()
            if self.done.wait(1.0):
                return

    def stop(self) -> None:
        self.done.set()
        os.write(self.wake_write, b"x")
        if self.thread is not None:
            self.thread.join()
        os.close(self.wake_read)
        os.close(self.wake_write)

    def on_evict(self, save: Callable[[], None]) -> None:
        """`jobs.run`'s INSTALL_EVICT: the runner sending EVICT_LINE calls SAVE (once)."""
        self.save = save
