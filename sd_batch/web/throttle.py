"""Failed logins cost the guesser time: per client address, and for the whole server.

An scrypt check costs ~50 ms, so an unthrottled loop tries ~20 passwords a second for ever.
Here each address gets a few free failures, then every further failure locks it out for
twice as long as the one before (1 s, 2 s, 4 s ... up to `max_delay`); while it is locked
out its requests are refused before any password is checked, so a guess loop learns
nothing, not even that a guess was right. Beyond the free failures an address has one check
at a time (parallel guesses cannot slip in before the first failure is counted). Guessers
spread over many addresses meet the global bound: past `global_failures` failures in
`global_window` seconds, only addresses that logged in recently are checked at all. A success
clears the address. Memory is bounded: at most `max_addresses` addresses are remembered.
May import: stdlib.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

#: How long an address that logged in stays exempt from the global bound.
TRUSTED_SECONDS = 3600.0


@dataclass(slots=True)
class _Address:
    failures: int = 0
    locked_until: float = 0.0
    pending: int = 0


@dataclass
class LoginThrottle:
    """`admit(address)` before checking a password, `record(address, ok)` after."""

    free_failures: int = 5
    base_delay: float = 1.0
    max_delay: float = 300.0
    global_failures: int = 60
    global_window: float = 60.0
    max_addresses: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _addresses: OrderedDict[str, _Address] = field(default_factory=OrderedDict, repr=False)
    _failures: deque[float] = field(default_factory=deque, repr=False)
    _pending: int = field(default=0, repr=False)
    _trusted: OrderedDict[str, float] = field(default_factory=OrderedDict, repr=False)

    def admit(self, address: str) -> float:
        """0.0: go ahead and check (then call `record`); else the seconds to wait first."""
        with self._lock:
            now = self.clock()
            state = self._addresses.get(address)
            if state is not None and state.locked_until > now:
                return state.locked_until - now
            wait = self._global_wait(address, now)
            if wait > 0:
                return wait
            if state is None:
                state = self._remember(address)
            self._addresses.move_to_end(address)
            if state.failures + state.pending >= self.free_failures and state.pending:
                return self.base_delay  # past the free tries: one check at a time
            state.pending += 1
            self._pending += 1
            return 0.0

    def record(self, address: str, ok: bool) -> None:
        """The outcome of a check `admit` allowed."""
        with self._lock:
            now = self.clock()
            self._pending = max(0, self._pending - 1)
            state = self._addresses.get(address) or self._remember(address)
            state.pending = max(0, state.pending - 1)
            if ok:
                state.failures, state.locked_until = 0, 0.0
                self._trusted[address] = now
                self._trusted.move_to_end(address)
                while len(self._trusted) > self.max_addresses:
                    self._trusted.popitem(last=False)
                return
            state.failures += 1
            over = state.failures - self.free_failures
            if over >= 0:
                delay = self.base_delay * 2.0 ** min(over, 30)
                state.locked_until = now + min(self.max_delay, delay)
            self._failures.append(now)
            while len(self._failures) > self.global_failures:
                self._failures.popleft()

    def _global_wait(self, address: str, now: float) -> float:
        while self._failures and now - self._failures[0] >= self.global_window:
            self._failures.popleft()
        if len(self._failures) + self._pending < self.global_failures:
            return 0.0
        seen = self._trusted.get(address)
        if seen is not None and now - seen < TRUSTED_SECONDS:
            return 0.0
        oldest = self._failures[0] if self._failures else now
        return max(self.base_delay, self.global_window - (now - oldest))

    def _remember(self, address: str) -> _Address:
        """A new address, forgetting the least recently seen beyond the bound (an attacker
        who rotates through more addresses than that meets the global bound instead)."""
        state = self._addresses[address] = _Address()
        while len(self._addresses) > self.max_addresses:
            self._addresses.popitem(last=False)
        return state
