"""Who is asking, and what they own: `sd web`'s access rules.

Bound to a loopback address, the site serves the local user only and asks for no password.
Bound elsewhere it requires one of: HTTP basic against a site file of scrypt hashes (`USER:HASH`
lines, written by `sd web --hash-password USER`), or the user name a trusted reverse proxy puts
in a header (the admin names the header; the server must then be reachable only through that
proxy). Every state-changing form carries a CSRF token (an HMAC of the user under a per-server
secret). `Served` says which Host and Origin headers name this server, so a page of another
site whose name was re-pointed at us (DNS rebinding) is refused before it can read a token;
`LoginThrottle` slows password guessing. Pools started here are recorded with their owner in
`<state_dir>/web/owners.json`; a user sees and terminates only their own.
May import: errors, web.throttle, stdlib.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import getpass
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ConfigError
from .throttle import LoginThrottle

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$SALT$HASH` (hex), as the password file holds it."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = bytes.fromhex(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want),
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got, want)


def load_passwords(path: Path) -> dict[str, str]:
    """USER -> hash from a password file (`#` comments and blank lines allowed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the password file {path}: {exc.strerror}") from exc
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not user or not stored.startswith("scrypt$"):
            raise ConfigError(
                f"{path}:{number}: expected USER:scrypt$... ",
                hint="write lines with sd web --hash-password USER",
            )
        users[user] = stored
    return users


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Served:
    """The names a request to this server may carry in Host, Origin and Referer.

    A DNS-rebinding page (its own name re-pointed at our address) sends its own name in Host
    and Origin: only names the server answers to pass. ADDRESSES (the bound address; on
    loopback also `localhost` and the loopback addresses; on a wildcard bind this machine's
    host names) must come with the bound PORT (any port when PORT is None); IP literals are
    always ours on a wildcard bind (a rebinding attack needs a name of its own). NAMES are the
    admin's (`--server-name`, e.g. a reverse proxy's public name): any port.
    """

    port: int | None = None
    addresses: frozenset[str] = frozenset({"localhost", "127.0.0.1", "::1"})
    any_address: bool = False
    names: frozenset[str] = frozenset()

    @classmethod
    def for_bind(cls, host: str, port: int | None, names: tuple[str, ...] = ()) -> Served:
        host = host.strip("[]").lower()
        addresses = {host}
        if is_loopback(host) or _wildcard(host):
            addresses |= {"localhost", "127.0.0.1", "::1"}
        if _wildcard(host):
            addresses |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        return cls(
            port,
            frozenset(addresses),
            _wildcard(host),
            frozenset(n.strip().lower().rstrip(".") for n in names if n.strip()),
        )

    def host_ok(self, authority: str, default_port: int = 80) -> bool:
        """Whether a Host header (or an Origin's `host[:port]`) names this server."""
        if not authority or any(c in authority for c in "@/\\?# \t"):
            return False
        try:
            parts = urlsplit(f"//{authority}")
            name, port = (parts.hostname or "").rstrip("."), parts.port or default_port
        except ValueError:  # a port that is not a number, or out of range
            return False
        if not name:
            return False
        if name in self.names:
            return True
        if self.port is not None and port != self.port:
            return False
        return name in self.addresses or (self.any_address and _ip(name))

    def origin_ok(self, origin: str | None, referer: str | None) -> bool:
        """Whether a state-changing request comes from our own pages: its Origin (else its
        Referer) names this server. Neither: not a browser's form (a script with the CSRF
        token, which only our own pages show); allowed."""
        source = origin if origin is not None else referer
        if source is None:
            return True
        try:
            parts = urlsplit(source.strip())
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (a sandboxed frame, a file: page) among them
        return self.host_ok(parts.netloc, 443 if parts.scheme == "https" else 80)


@dataclass(frozen=True, slots=True)
class Login:
    """Who is asking (None: must authenticate), or how long the address must wait first."""

    user: str | None
    retry_after: float = 0.0


@dataclass(frozen=True, slots=True)
class Access:
    """How requests are authenticated. No auth only when the server listens on loopback."""

    require_auth: bool = False
    passwords: Mapping[str, str] = field(default_factory=dict)
    #: A reverse proxy's header naming the authenticated user (e.g. X-Remote-User).
    remote_user_header: str | None = None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    local_user: str = field(default_factory=getpass.getuser)
    served: Served = field(default_factory=Served)
    throttle: LoginThrottle = field(default_factory=LoginThrottle, compare=False)

    @classmethod
    def for_bind(
        cls,
        host: str,
        passwords: Path | None,
        remote_user_header: str | None,
        *,
        port: int | None = None,
        names: tuple[str, ...] = (),
    ) -> Access:
        served = Served.for_bind(host, port, names)
        if is_loopback(host) and passwords is None and remote_user_header is None:
            return cls(served=served)
        if passwords is None and remote_user_header is None:
            raise ConfigError(
                f"sd web bound to {host} (not this machine only) needs authentication",
                hint="give --passwords FILE (lines from sd web --hash-password USER) or "
                "--remote-user-header NAME behind a reverse proxy that sets it",
            )
        users = load_passwords(passwords) if passwords is not None else {}
        return cls(True, users, remote_user_header, served=served)

    def login(self, headers: Mapping[str, str], client: str) -> Login:
        """The requesting user; None when the request must authenticate (401); a wait when
        CLIENT (its address) or the server had too many failed logins (429: no password is
        checked then)."""
        if not self.require_auth:
            return Login(self.local_user)
        if self.remote_user_header is not None:
            name = headers.get(self.remote_user_header.lower(), "").strip()
            return Login(name or None)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return Login(None)  # no guess made: the browser's first request, before the prompt
        wait = self.throttle.admit(client)
        if wait > 0:
            return Login(None, wait)
        ok = False
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
            stored = self.passwords.get(user)
            ok = stored is not None and verify_password(password, stored)
        except (binascii.Error, UnicodeDecodeError):
            pass
        finally:
            self.throttle.record(client, ok)
        return Login(user if ok else None)

    def csrf_token(self, user: str) -> str:
        return hmac.new(self.secret, b"csrf\0" + user.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, user: str, token: str) -> bool:
        return hmac.compare_digest(self.csrf_token(user), token)


class Owners:
    """Which user started which pool through the web form: `owners.json` under the state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.folder = state_dir / "web"
        self.file = self.folder / "owners.json"

    @contextmanager
    def _locked(self) -> Iterator[dict[str, str]]:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.folder / "owners.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = json.loads(self.file.read_text(encoding="utf-8"))
            except FileNotFoundError:
                data = {}
            before = dict(data)
            yield data
            if data != before:
                tmp = self.file.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
                tmp.replace(self.file)

    @staticmethod
    def _key(uri: str, name: str) -> str:
        return f"{uri} {name}"

    def owner(self, uri: str, name: str) -> str | None:
        with self._locked() as data:
            return data.get(self._key(uri, name))

    def record(self, uri: str, name: str, user: str) -> None:
        with self._locked() as data:
            data[self._key(uri, name)] = user

    def forget(self, uri: str, name: str, *, user: str | None = None) -> None:
        """Forget pool NAME's owner (only if it is still USER, when given)."""
        with self._locked() as data:
            if user is None or data.get(self._key(uri, name)) == user:
                data.pop(self._key(uri, name), None)

    def pools_of(self, user: str) -> list[tuple[str, str]]:
        """(uri, pool name) of every pool USER started here."""
        with self._locked() as data:
            return sorted(tuple(k.split(" ", 1)) for k, v in data.items() if v == user)  # type: ignore[misc]
