"""The partnership's configuration edition: the signed directory and the rules it embeds.

One document signed by the root key holds who is who (the directory) and how events are
routed (the rules file's text, member ``rules``): agents and routers that hold the same
edition compute the same recipients. An :class:`Edition` is that document verified, its
rules parsed and validated once. Its number is the directory's ``serial``; it is bound in
every envelope's signed header with the rules version, and recorded in every routing
decision.

Every edition ends (``expires_at``). Verifiers refuse an expired one (``DIRECTORY_EXPIRED``),
so whoever holds back ``ref.dir`` cannot keep agents on an old edition for ever; agents and
the gateway warn ahead (:func:`expiry_state`: from :data:`WARN_BEFORE` before the end, or a
quarter of the validity for short ones) in their logs and in a gauge of the seconds left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Final

from relais.broker_config.directory import Directory, verify_directory
from relais.broker_config.rules import RuleSet, load_rules
from relais.schemas.errors import DirectoryError, Reason, RoutingError

__all__ = [
    "WARN_BEFORE",
    "Edition",
    "ExpiryState",
    "edition_of",
    "expiry_state",
    "rules_of",
    "verify_edition",
]

WARN_BEFORE: Final = timedelta(days=7)
_WARN_BEFORE_MS: Final = int(WARN_BEFORE.total_seconds() * 1000)


class ExpiryState(StrEnum):
    """Where an edition stands against its validity end."""

    VALID = "valid"
    EXPIRING = "expiring"  # within the warning window: sign and publish the next one
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Edition:
    """One verified configuration edition: directory, parsed rules, signed bytes."""

    directory: Directory
    rules: RuleSet
    signed: bytes = field(default=b"", repr=False)

    @property
    def serial(self) -> int:
        """The edition number (the directory's serial)."""
        return self.directory.serial

    @property
    def rules_version(self) -> int:
        """The version of the rules the edition embeds."""
        return self.rules.version

    def expired(self, now_ms: int) -> bool:
        """True when the edition is past its validity end at ``now_ms``."""
        return self.directory.expired(now_ms)


def rules_of(directory: Directory) -> RuleSet:
    """The rules an edition embeds (``DirectoryError(RULES_INVALID)`` when invalid)."""
    try:
        return load_rules(directory.rules)
    except RoutingError as exc:
        raise DirectoryError(
            f"edition {directory.serial}: {exc}", reason=Reason.RULES_INVALID
        ) from exc


def edition_of(directory: Directory, signed: bytes = b"") -> Edition:
    """An :class:`Edition` for an already verified directory (its rules parsed)."""
    return Edition(directory, rules_of(directory), signed)


def verify_edition(
    signed: bytes,
    root_public_key: bytes,
    *,
    min_serial: int | None = None,
    now_ms: int | None = None,
) -> Edition:
    """Verify a signed edition (see :func:`~relais.broker_config.directory.verify_directory`)
    and parse its rules.

    Reasons: those of the directory (``DIRECTORY_BAD_SIGNATURE``, ``DIRECTORY_ROLLBACK``,
    ``DIRECTORY_EXPIRED`` given ``now_ms``...) and ``RULES_INVALID``.
    """
    directory = verify_directory(signed, root_public_key, min_serial=min_serial, now_ms=now_ms)
    return edition_of(directory, signed)


def expiry_state(directory: Directory, now_ms: int) -> tuple[ExpiryState, float]:
    """``(state, seconds left)`` of an edition at ``now_ms`` (negative once expired)."""
    left_ms = directory.expires_at_ms - now_ms
    validity_ms = (directory.valid_until - directory.issued_at) // timedelta(milliseconds=1)
    warn_ms = min(_WARN_BEFORE_MS, validity_ms // 4)
    if left_ms < 0:
        return ExpiryState.EXPIRED, left_ms / 1000
    if left_ms <= warn_ms:
        return ExpiryState.EXPIRING, left_ms / 1000
    return ExpiryState.VALID, left_ms / 1000
