"""Pool starts in progress in this `sd web` process, and the ones that failed.

A start POST answers at once; the pool starts in a thread of its own (not daemon, so the
interpreter waits for it at exit too), one per start, so two pools start at the same time.
While it runs the pool is "starting"; when it succeeds its entry goes (the ledger knows the
pool from then on); when it fails the entry keeps the error for the pool's page until its user
dismisses it (or starts that name again). The registry lives in memory: a failure is forgotten
when the server restarts, and a start the server died in is the reaper's (`sd reap`): its
ledger owner names this process, now dead.
May import: errors, stdlib.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import SdError

LOG = logging.getLogger("sd_batch.web")
STARTING, FAILED = "starting", "failed"
Explain = Callable[[SdError], str]  # a failed start's error as its user reads it


@dataclass(frozen=True, slots=True)
class Start:
    """Pool NAME on URI, started by USER from site template TEMPLATE."""

    uri: str
    name: str
    user: str
    template: str
    state: str = STARTING
    error: str = ""
    #: The failed start's rollback could not remove everything (its message says what).
    left_behind: bool = False


class Starts:
    """The registry: at most one start per (URI, pool name) at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._starts: dict[tuple[str, str], Start] = {}
        self._threads: dict[tuple[str, str], threading.Thread] = {}

    def get(self, uri: str, name: str) -> Start | None:
        with self._lock:
            return self._starts.get((uri, name))

    def of(self, user: str) -> list[Start]:
        with self._lock:
            return sorted(
                (s for s in self._starts.values() if s.user == user), key=lambda s: (s.uri, s.name)
            )

    def claim(self, uri: str, name: str, user: str, template: str) -> Start | None:
        """A new start of NAME for USER, or None while one (anyone's) is in progress.
        A failed start of that name is replaced: its name is free again."""
        with self._lock:
            current = self._starts.get((uri, name))
            if current is not None and current.state == STARTING:
                return None
            start = Start(uri, name, user, template)
            self._starts[(uri, name)] = start
            return start

    def release(self, start: Start) -> None:
        """Drop START (a claim refused before it ran, a failure its user dismissed)."""
        with self._lock:
            if self._starts.get((start.uri, start.name)) is start:
                del self._starts[(start.uri, start.name)]

    def dismiss(self, uri: str, name: str, user: str) -> bool:
        """Forget USER's failed start of NAME; False when there is none."""
        with self._lock:
            current = self._starts.get((uri, name))
            if current is None or current.user != user or current.state != FAILED:
                return False
            del self._starts[(uri, name)]
            return True

    def run(
        self,
        start: Start,
        work: Callable[[], object],
        explain: Explain,
        failed: Callable[[Start], None],
    ) -> None:
        """Run WORK (the start) in a thread of its own. If it raises, START becomes FAILED
        with the error (an SdError as EXPLAIN words it), then FAILED is called with it."""
        thread = threading.Thread(
            target=self._run,
            args=(start, work, explain, failed),
            name=f"sd web: start {start.name}",
            daemon=False,
        )
        with self._lock:
            self._threads[(start.uri, start.name)] = thread
        thread.start()

    def _run(
        self,
        start: Start,
        work: Callable[[], object],
        explain: Explain,
        failed: Callable[[Start], None],
    ) -> None:
        key = (start.uri, start.name)
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - a bug must still end the start, not hang it
            if isinstance(exc, SdError):
                error = explain(exc)
                left = bool(exc.hint and exc.hint.startswith("NOT rolled back"))
            else:
                LOG.exception("starting pool %s failed unexpectedly", start.name)
                error, left = f"an unexpected error ({type(exc).__name__}: {exc})", False
            LOG.warning("pool %s of %s did not start: %s", start.name, start.user, error)
            done = dataclasses.replace(start, state=FAILED, error=error, left_behind=left)
            with self._lock:
                self._starts[key] = done
                self._threads.pop(key, None)
            failed(done)
        else:
            with self._lock:
                if self._starts.get(key) is start:
                    del self._starts[key]
                self._threads.pop(key, None)

    def in_progress(self) -> list[str]:
        with self._lock:
            return sorted(name for (_uri, name), s in self._starts.items() if s.state == STARTING)

    def wait(self) -> None:
        """Wait until every start in progress has ended (started, or failed and rolled back)."""
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join()
