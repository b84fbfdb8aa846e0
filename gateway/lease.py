"""Exactly one active tracker: a lease in a replicated stream, taken and renewed by compare-and-set.

The lease is the last message on ``ref.lease.<name>`` in the ``LEASES`` stream (one message
per subject, replicated like every stream): ``{"holder": <process id>, "until_ms": <ms>}``.
A tracker takes or renews it by publishing with ``Nats-Expected-Last-Subject-Sequence`` set
to the sequence it read (``0`` when there is none): of two contenders reading the same lease,
the broker stores only one (the other gets JetStream error 10071, wrong last sequence). A
lease may be taken over once its ``until_ms`` has passed; its holder renews it every
``ttl / 4``.

Fencing: the holder acts only while :meth:`Lease.held` (its own clock before
``until_ms - margin``), so an old holder that missed its renewals (a pause, a partition) stops
acting before anyone else may take the lease, as long as the clocks of the two hosts differ by
less than ``margin``. Even then nothing is done twice: every message the tracker publishes
carries a Nats-Msg-Id derived from the event, which the broker deduplicates.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import structlog

from relais.broker_config.connection import Connection
from relais.gateway.jetstream import last_for_subject, publish
from relais.schemas.errors import RelaisError
from relais.schemas.names import LEASES_STREAM, lease_subject

__all__ = ["LEASE_STREAM", "Lease", "LeaseConfig"]

LEASE_STREAM: Final = LEASES_STREAM
_WRONG_LAST_SEQUENCE: Final = 10071

_log = structlog.get_logger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    """Timing of the lease: a standby takes over at most ``ttl`` after the holder's end."""

    name: str = "tracker"
    ttl_ms: int = 3000
    margin_ms: int = 750

    @property
    def renew_every(self) -> float:
        """Seconds between two renewals (and between two attempts of a standby)."""
        return self.ttl_ms / 4000


class Lease:
    """One contender for the lease (see the module docstring)."""

    def __init__(
        self,
        conn: Connection,
        *,
        config: LeaseConfig | None = None,
        clock: Callable[[], int] = _now_ms,
        holder: str | None = None,
    ) -> None:
        self._conn = conn
        self.config = config or LeaseConfig()
        self._clock = clock
        self.holder = holder or str(uuid.uuid4())
        self._until = 0  # end of the lease we hold, by our clock (0: not held)

    @property
    def subject(self) -> str:
        """The lease's subject."""
        return lease_subject(self.config.name)

    def held(self) -> bool:
        """True while this contender may act (its lease, with the fencing margin)."""
        return self._clock() < self._until - self.config.margin_ms

    async def attempt(self) -> bool:
        """Take or renew the lease if it is ours or free; True if we hold it now.

        A broker error counts as not holding it (the caller stops acting and tries again).
        """
        now = self._clock()
        try:
            current = await last_for_subject(self._conn, LEASE_STREAM, self.subject)
            expected = 0
            if current is not None:
                holder, until = _parse(current.data)
                if holder != self.holder and until > now:
                    self._until = 0
                    return False
                expected = current.seq
            record = {"holder": self.holder, "until_ms": now + self.config.ttl_ms}
            result = await publish(
                self._conn,
                self.subject,
                json.dumps(record, sort_keys=True).encode(),
                expect_last_subject_seq=expected,
                expected_errors=frozenset({_WRONG_LAST_SEQUENCE}),
            )
        except RelaisError as exc:
            _log.warning("lease.unavailable", lease=self.config.name, reason=exc.reason.value)
            self._until = 0
            return False
        if result.error is not None:  # someone else took it between our read and write
            self._until = 0
            return False
        if not self._until:
            _log.info("lease.acquired", lease=self.config.name, holder=self.holder)
        self._until = now + self.config.ttl_ms
        return True

    async def release(self) -> None:
        """Give the lease up now (a clean stop): a standby need not wait for its end."""
        if not self._until:
            return
        self._until = 0
        try:
            current = await last_for_subject(self._conn, LEASE_STREAM, self.subject)
            if current is None or _parse(current.data)[0] != self.holder:
                return
            record = {"holder": self.holder, "until_ms": 0}
            await publish(
                self._conn,
                self.subject,
                json.dumps(record, sort_keys=True).encode(),
                expect_last_subject_seq=current.seq,
                expected_errors=frozenset({_WRONG_LAST_SEQUENCE}),
            )
        except RelaisError as exc:
            _log.warning("lease.release_failed", lease=self.config.name, reason=exc.reason.value)


def _parse(data: bytes) -> tuple[str, int]:
    """``(holder, until_ms)`` of a stored lease; a damaged one counts as expired."""
    try:
        record = json.loads(data)
        return str(record["holder"]), int(record["until_ms"])
    except (ValueError, KeyError, TypeError):
        return "", 0
