"""Authentication for the web interface: passwords, TOTP codes, sessions, CSRF tokens.

* Passwords are hashed with argon2id (argon2-cffi's defaults: 64 MiB, 3 passes, RFC 9106's
  second recommended option); at least 12 characters.
* TOTP (RFC 6238, 30 s steps, 6 digits, SHA-1 as every authenticator app supports): a code
  is accepted within one step of the clock, and only for a step later than the last one
  accepted for that person, so an observed code cannot be replayed.
* Sessions live in the agent's memory (a restart logs everybody out): a random 256-bit
  token in an ``HttpOnly; SameSite=Strict`` cookie (``Secure`` under TLS), only its SHA-256
  kept, ended after ``idle`` seconds without a request and ``lifetime`` seconds in any
  case. A visitor who is not logged in gets an anonymous session too, so the login form
  carries a CSRF token like every other form; logging in replaces it (no session fixation).
* Each session has its CSRF token, to be sent back in every form (``csrf`` field) and
  compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import argon2
import pyotp

from relais.schemas.errors import PayloadError

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "PasswordHasher",
    "Session",
    "Sessions",
    "check_password_strength",
    "csrf_matches",
    "new_password",
    "new_totp_secret",
    "totp_step_accepted",
    "totp_uri",
]

MIN_PASSWORD_LENGTH: Final = 12
_MAX_PASSWORD_LENGTH: Final = 1024
_TOTP_STEP: Final = 30
_MAX_ANONYMOUS: Final = 10_000
_ISSUER: Final = "relais"


class PasswordHasher:
    """argon2id hashing and verification (a wrong password is ``False``, never an error)."""

    def __init__(self, *, time_cost: int | None = None, memory_cost: int | None = None) -> None:
        """argon2-cffi's defaults unless given (tests may lower them)."""
        self._hasher = argon2.PasswordHasher(
            time_cost=argon2.DEFAULT_TIME_COST if time_cost is None else time_cost,
            memory_cost=argon2.DEFAULT_MEMORY_COST if memory_cost is None else memory_cost,
            type=argon2.Type.ID,
        )
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        """The encoded argon2id hash of ``password``."""
        return self._hasher.hash(password)

    def verify(self, digest: str, password: str) -> bool:
        """Whether ``password`` matches ``digest``."""
        try:
            return self._hasher.verify(digest, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    def dummy_verify(self, password: str) -> None:
        """The work of a verification, for an unknown user (timing tells nothing)."""
        self.verify(self._dummy, password)

    def needs_rehash(self, digest: str) -> bool:
        """The hash was made with weaker parameters than the current ones."""
        try:
            return self._hasher.check_needs_rehash(digest)
        except argon2.exceptions.InvalidHashError:
            return True


def check_password_strength(password: str) -> None:
    """Raise ``PayloadError`` for a password shorter than 12 characters (or absurdly long)."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= _MAX_PASSWORD_LENGTH:
        raise PayloadError(
            f"a password has {MIN_PASSWORD_LENGTH} to {_MAX_PASSWORD_LENGTH} characters",
            fields=("password",),
        )


def new_password() -> str:
    """A random initial password (about 120 bits), to hand to the person once."""
    return secrets.token_urlsafe(15)


def new_totp_secret() -> str:
    """A random TOTP secret, base32 (160 bits)."""
    return pyotp.random_base32(32)


def totp_uri(secret: str, username: str, partner_id: str) -> str:
    """The ``otpauth://`` URI an authenticator app reads (as a QR code or typed)."""
    return pyotp.TOTP(secret).provisioning_uri(name=f"{username}@{partner_id}", issuer_name=_ISSUER)


def totp_step_accepted(
    secret: str, code: str, *, after_step: int, now: float | None = None
) -> int | None:
    """The time step ``code`` is valid for (within one step of now, later than
    ``after_step``), or ``None``."""
    code = code.strip().replace(" ", "")
    if len(code) != 6 or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    moment = time.time() if now is None else now
    current = int(moment) // _TOTP_STEP
    for step in (current - 1, current, current + 1):
        if step > after_step and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def csrf_matches(session: Session, given: str | None) -> bool:
    """The CSRF token sent back with a form is the session's."""
    return bool(given) and hmac.compare_digest(session.csrf.encode(), str(given).encode())


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(slots=True)
class Session:
    """One browser's session (anonymous until logged in)."""

    token: str = field(repr=False)
    csrf: str = field(repr=False)
    created: float
    last_seen: float
    username: str | None = None

    @property
    def authenticated(self) -> bool:
        """A person logged in with this session."""
        return self.username is not None


class Sessions:
    """The sessions of the running agent (see the module docstring)."""

    def __init__(
        self,
        *,
        idle_seconds: float,
        lifetime_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Sessions ending after ``idle_seconds`` unused and ``lifetime_seconds`` in any case."""
        self._idle = idle_seconds
        self._lifetime = lifetime_seconds
        self._clock = clock
        self._by_digest: OrderedDict[str, Session] = OrderedDict()

    def new(self, username: str | None = None) -> Session:
        """A fresh session (anonymous when ``username`` is ``None``)."""
        self._expire()
        now = self._clock()
        session = Session(
            token=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            created=now,
            last_seen=now,
            username=username,
        )
        self._by_digest[_digest(session.token)] = session
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie value (its idle clock restarted), or ``None``."""
        if not token or len(token) > 100:
            return None
        key = _digest(token)
        session = self._by_digest.get(key)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen > self._idle or now - session.created > self._lifetime:
            del self._by_digest[key]
            return None
        session.last_seen = now
        self._by_digest.move_to_end(key)
        return session

    def end(self, session: Session) -> None:
        """End a session (logout, or replaced at login)."""
        self._by_digest.pop(_digest(session.token), None)

    def end_for(self, username: str) -> None:
        """End every session of a person (disabled, reset)."""
        for key in [k for k, s in self._by_digest.items() if s.username == username]:
            del self._by_digest[key]

    def _expire(self) -> None:
        now = self._clock()
        for key in [
            k
            for k, s in self._by_digest.items()
            if now - s.last_seen > self._idle or now - s.created > self._lifetime
        ]:
            del self._by_digest[key]
        # Anonymous sessions cost nothing to make: cap them, oldest first.
        anonymous = [k for k, s in self._by_digest.items() if not s.authenticated]
        for key in anonymous[: max(0, len(anonymous) - _MAX_ANONYMOUS)]:
            del self._by_digest[key]
