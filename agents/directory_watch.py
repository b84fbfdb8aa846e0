"""The signed configuration edition an agent works with, kept current without a restart.

An edition is the directory and the routing rules, signed together by the root key
(:mod:`relais.broker_config.edition`): the agent routes with the rules of the edition in
force, never with a local file of its own. It starts from the configured directory file, or
from the newer edition it cached in its data directory on an earlier run. It then polls the
last edition the gateway published on ``ref.dir`` (``$JS.API.DIRECT.GET.DIRECTORY.ref.dir``,
a direct get of the last message by subject, which every partner user may do), verifies it
against the pinned root key, refuses anything older than the edition in use
(``DIRECTORY_ROLLBACK``), expired (``DIRECTORY_EXPIRED``) or with invalid rules
(``RULES_INVALID``), and applies a newer one at once: the next event is routed and verified
with it. The agent polls every ``directory_poll_seconds``, and at once when a rejection's
cause is an edition change or a received envelope names a newer edition. The edition in use
is cached (atomically) so a restart never goes back to an older one.

:meth:`DirectoryWatch.expiry` tells how long the edition in use remains valid: the agent
logs a warning from the warning window on (``agent.directory_expiring``), an error once it
expired (``agent.directory_expired``; submissions are then refused with
``DIRECTORY_EXPIRED`` until a valid edition arrives), and sets a gauge of the seconds left.

:class:`DirectoryView` is an immutable snapshot: a message is judged entirely under one
edition even if a new one arrives meanwhile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import structlog

from relais.agents.keys import write_atomic
from relais.broker_config.connection import Connection
from relais.broker_config.directory import Directory, DirectoryKeys, verify_directory
from relais.broker_config.edition import ExpiryState, expiry_state, rules_of
from relais.broker_config.rules import RuleSet
from relais.schemas.errors import ConfigError, DirectoryError, EnvelopeError, Reason, RelaisError
from relais.schemas.names import DIRECTORY_STREAM, DIRECTORY_SUBJECT

__all__ = ["DIRECTORY_SUBJECT", "DirectoryView", "DirectoryWatch", "HistoricKeys"]

_DIRECT_GET: Final = f"$JS.API.DIRECT.GET.{DIRECTORY_STREAM}.{DIRECTORY_SUBJECT}"

_log = structlog.get_logger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class HistoricKeys:
    """Signing keys as listed in the directory, whatever their validity today.

    For re-verifying envelopes the agent stored after verifying them on receipt: a key
    revoked or expired since must not make the inbox unreadable, yet the bytes read back
    are still checked against a key the signed directory lists for that sender.
    """

    __slots__ = ("_directory",)

    def __init__(self, directory: Directory) -> None:
        self._directory = directory

    @property
    def partnership(self) -> str:
        """The partnership id every envelope verified here must name."""
        return self._directory.partnership

    def signing_key(self, partner_id: str, key_id: str, at_ms: int) -> bytes:
        """The listed Ed25519 key (``UNKNOWN_SENDER`` / ``UNKNOWN_KEY`` when not listed)."""
        partner = self._directory.get(partner_id)
        if partner is None:
            raise EnvelopeError(Reason.UNKNOWN_SENDER)
        key = partner.key(key_id)
        if key is None:
            raise EnvelopeError(Reason.UNKNOWN_KEY)
        return key.sign_pk_bytes


@dataclass(frozen=True, slots=True)
class DirectoryView:
    """One verified edition and its key resolvers."""

    directory: Directory
    signed: bytes = field(repr=False)
    keys: DirectoryKeys = field(init=False, repr=False)
    historic: HistoricKeys = field(init=False, repr=False)
    rules: RuleSet = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", DirectoryKeys(self.directory))
        object.__setattr__(self, "historic", HistoricKeys(self.directory))
        # The edition's own rules (DirectoryError(RULES_INVALID) refuses the edition).
        object.__setattr__(self, "rules", rules_of(self.directory))

    @property
    def serial(self) -> int:
        """The edition's serial."""
        return self.directory.serial


class DirectoryWatch:
    """The current directory edition, verified against the pinned root key."""

    def __init__(self, root_public_key: bytes, initial: bytes, *, cache: Path | None) -> None:
        """Start from ``initial`` or from the cached edition, whichever is newer."""
        self._root = root_public_key
        self._cache = cache
        self._reported: tuple[int, ExpiryState] | None = None
        view = DirectoryView(verify_directory(initial, root_public_key), initial)
        cached = self._read_cache()
        self._cached_serial = None if cached is None else cached.serial
        if cached is not None and cached.serial > view.serial:
            view = cached
        self._view = view

    def _read_cache(self) -> DirectoryView | None:
        if self._cache is None or not self._cache.is_file():
            return None
        try:
            signed = self._cache.read_bytes()
            return DirectoryView(verify_directory(signed, self._root), signed)
        except (OSError, RelaisError) as exc:
            reason = exc.reason.value if isinstance(exc, RelaisError) else "UNREADABLE"
            _log.warning("agent.directory_cache_ignored", reason=reason)
            return None

    @property
    def current(self) -> DirectoryView:
        """The edition in use."""
        return self._view

    @property
    def serial(self) -> int:
        """Serial of the edition in use."""
        return self._view.serial

    def offer(self, signed: bytes, *, now_ms: int | None = None) -> bool:
        """Apply ``signed`` if it verifies, is newer and not expired; True when applied.

        Raises ``DirectoryError`` (bad signature, malformed, rollback, expired, rules invalid).
        """
        now = _now_ms() if now_ms is None else now_ms
        directory = verify_directory(signed, self._root, min_serial=self._view.serial, now_ms=now)
        if directory.serial == self._view.serial:
            return False
        self._view = DirectoryView(directory, signed)
        self._write_cache()
        _log.info("agent.directory_applied", serial=directory.serial)
        return True

    def _write_cache(self) -> None:
        if self._cache is None:
            return
        try:
            write_atomic(self._cache, self._view.signed, mode=0o644, overwrite=True)
        except ConfigError:
            _log.warning("agent.directory_cache_not_written", serial=self._view.serial)
        else:
            self._cached_serial = self._view.serial

    async def poll(self, conn: Connection) -> bool:
        """Fetch the last edition on ``ref.dir`` and apply it if newer; True when applied.

        A missing, invalid or older edition changes nothing (logged with its reason code).
        Transport failures raise ``TransportError``.
        """
        msg = await conn.request(_DIRECT_GET, b"")
        status = (msg.headers or {}).get("Status")
        if status is not None:
            if status != "404":
                _log.warning("agent.directory_poll_status", status=status)
            return False
        try:
            return self.offer(msg.data)
        except DirectoryError as exc:
            _log.warning("agent.directory_refused", reason=exc.reason.value)
            return False

    def expiry(self, now_ms: int | None = None) -> tuple[ExpiryState, float]:
        """``(state, seconds left)`` of the edition in use; logged once per edition and state."""
        state, left = expiry_state(self._view.directory, _now_ms() if now_ms is None else now_ms)
        if state is not ExpiryState.VALID and self._reported != (self.serial, state):
            self._reported = (self.serial, state)
            what = f"agent.directory_{state.value}"
            (_log.error if state is ExpiryState.EXPIRED else _log.warning)(
                what, serial=self.serial, seconds_left=round(left)
            )
        return state, left

    def initialise_cache(self) -> None:
        """Cache the edition in use when the cache holds none or an older one."""
        if self._cached_serial is None or self._cached_serial < self._view.serial:
            self._write_cache()
