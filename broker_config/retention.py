"""Retention: how long each store of relais keeps what it holds, signed with the directory.

The partnership decides (GDPR art. 5(1)(e), storage limitation; the CNIL's 2021
recommendation on logging keeps access logs 6 to 12 months) and the root key signs it: the
:class:`Retention` object is the optional ``retention`` member of the signed directory
(absent: the defaults below). Durations are whole seconds (the directory holds no floats).

Where each limit is enforced, and what it counts from:

===========================  ==================================  ==========================
member                       enforced by                         counted from
===========================  ==================================  ==========================
``ingress_seconds``          INGRESS ``max_age`` (nats-server)   publication by the sender
``delivery_seconds``         DELIVERY ``max_age``                routing (copy stored)
``receipts_seconds``         RECEIPTS ``max_age``                publication of the receipt
``quarantine_seconds``       QUARANTINE ``max_age``              quarantine
``audit_seconds``            AUDIT ``max_age``                   the audit record
``agent_inbox_seconds``      each agent's purge task             taken in charge / declined
``agent_unanswered_seconds`` each agent's purge task             receipt of an unanswered one
``agent_outbox_seconds``     each agent's purge task             publication / rejection
``tracker_closed_seconds``   the gateway tracker's purge task    leaving ``open``
===========================  ==================================  ==========================

A stream's ``max_age`` counts from the time a message was stored, not from the closure of
its case: nats-server cannot delete one message of a ``deny_delete`` stream by a rule. So
the stream limits must cover the longest-lived open case plus the time kept after it; the
stores that know the state of a case (inbox, tracker) count from its closure.

What must hold whatever the scale (checked when the directory is parsed, so a bad edition
is refused before anything is enforced): every duration is at least
:data:`MIN_SECONDS` and at most :data:`MAX_SECONDS`, and the audit log is kept at least as
long as anything it speaks about (``audit_seconds`` is the largest), so that the record of
a purge outlives what was purged; and an agent keeps an inbox row at least as long as the
broker keeps its delivery (``agent_inbox_seconds`` and ``agent_unanswered_seconds`` at least
``delivery_seconds``), so that a redelivery is always recognised by its event id.
Operational minimums that depend on the gateway's and the agents' settings (a DELIVERY
limit longer than any agent may stay offline, an INGRESS limit longer than the longest
escalation deadline, both longer than the 2 h duplicate window) are the partnership's
responsibility and listed in ``docs/operations.md``; a stream limit below the duplicate
window shrinks that window to it (:class:`~relais.broker_config.streams.StreamSpec`).
"""

from __future__ import annotations

from typing import Annotated, Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "DAY",
    "MAX_SECONDS",
    "MIN_SECONDS",
    "STREAM_RETENTION",
    "Retention",
    "default_retention",
]

DAY: Final = 86_400
# Below one second nats-server's max_age is meaningless, and 0 would mean "for ever".
MIN_SECONDS: Final = 1
MAX_SECONDS: Final = 20 * 365 * DAY

Seconds = Annotated[int, Field(ge=MIN_SECONDS, le=MAX_SECONDS)]

# Stream name -> the Retention member that is its max_age.
STREAM_RETENTION: Final[dict[str, str]] = {
    "INGRESS": "ingress_seconds",
    "DELIVERY": "delivery_seconds",
    "RECEIPTS": "receipts_seconds",
    "QUARANTINE": "quarantine_seconds",
    "AUDIT": "audit_seconds",
}


class Retention(BaseModel):
    """Retention limits of the partnership, in seconds (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ingress_seconds: Seconds = 30 * DAY
    delivery_seconds: Seconds = 30 * DAY
    receipts_seconds: Seconds = 90 * DAY
    quarantine_seconds: Seconds = 90 * DAY
    audit_seconds: Seconds = 365 * DAY
    agent_inbox_seconds: Seconds = 30 * DAY
    agent_unanswered_seconds: Seconds = 90 * DAY
    agent_outbox_seconds: Seconds = 30 * DAY
    tracker_closed_seconds: Seconds = 90 * DAY

    @model_validator(mode="after")
    def _audit_outlives(self) -> Self:
        others = {n: v for n, v in self.model_dump().items() if n != "audit_seconds"}
        longest = max(others, key=lambda n: others[n])
        if others[longest] > self.audit_seconds:
            raise PydanticCustomError(
                "retention", "audit_seconds must be at least every other limit"
            )
        if min(self.agent_inbox_seconds, self.agent_unanswered_seconds) < self.delivery_seconds:
            # Else an agent could forget an event that the broker may deliver again.
            raise PydanticCustomError(
                "retention", "agent inbox limits must be at least delivery_seconds"
            )
        return self

    def stream_max_age(self, stream: str) -> float | None:
        """The ``max_age`` of ``stream`` in seconds, ``None`` for streams it does not govern."""
        member = STREAM_RETENTION.get(stream)
        return None if member is None else float(getattr(self, member))

    def cutoff_ms(self, member: str, now_ms: int) -> int:
        """Unix milliseconds before which ``member``'s rows are past their limit."""
        return now_ms - int(getattr(self, member)) * 1000


def default_retention() -> Retention:
    """The defaults (30 days of referrals, 90 of receipts and quarantine, 12 months of audit)."""
    return Retention()
