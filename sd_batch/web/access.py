"""Who is asking, and what they own: `sd web`'s access rules.

Bound to a loopback address, the site serves the local user only and asks for no password.
Bound elsewhere it requires one of: HTTP basic against a site file of scrypt hashes (`USER:HASH`
lines, written by `sd web --hash-password USER`), or the user name a trusted reverse proxy puts
in a header (the admin names the header; the server must then be reachable only through that
proxy). Every state-changing form carries a CSRF token (an HMAC of the user under a per-server
secret). Pools started here are recorded with their owner in `<state_dir>/web/owners.json`; a
user sees and terminates only their own.
May import: errors, stdlib.
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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

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
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(want))  # fmt: skip
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
            raise ConfigError(f"{path}:{number}: expected USER:scrypt$... ",
                              hint="write lines with sd web --hash-password USER")  # fmt: skip
        users[user] = stored
    return users


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Access:
    """How requests are authenticated. No auth only when the server listens on loopback."""

    require_auth: bool = False
    passwords: Mapping[str, str] = field(default_factory=dict)
    #: A reverse proxy's header naming the authenticated user (e.g. X-Remote-User).
    remote_user_header: str | None = None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    local_user: str = field(default_factory=getpass.getuser)

    @classmethod
    def for_bind(cls, host: str, passwords: Path | None, remote_user_header: str | None
                 ) -> Access:  # fmt: skip
        if is_loopback(host) and passwords is None and remote_user_header is None:
            return cls()
        if passwords is None and remote_user_header is None:
            raise ConfigError(
                f"sd web bound to {host} (not this machine only) needs authentication",
                hint="give --passwords FILE (lines from sd web --hash-password USER) or "
                "--remote-user-header NAME behind a reverse proxy that sets it",
            )
        users = load_passwords(passwords) if passwords is not None else {}
        return cls(True, users, remote_user_header)

    def user(self, headers: Mapping[str, str]) -> str | None:
        """The requesting user, or None when the request must authenticate (401)."""
        if not self.require_auth:
            return self.local_user
        if self.remote_user_header is not None:
            name = headers.get(self.remote_user_header.lower(), "").strip()
            return name or None
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        stored = self.passwords.get(user)
        return user if stored is not None and verify_password(password, stored) else None

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
