"""Retention on the partner side: what the agent forgets, when, and how it shows it did.

The limits are the partnership's (``retention`` in the signed directory,
:class:`~relais.broker_config.retention.Retention`); the agent applies those of the edition
in force every ``purge_interval`` (:func:`cutoffs` then
:meth:`~relais.agents.store.AgentStore.purge`, one transaction):

* inbox rows taken in charge or declined longer ago than ``agent_inbox_seconds``, and rows
  never answered received longer ago than ``agent_unanswered_seconds``: the sealed envelope
  goes with the row. The agent keeps no decrypted copy anywhere (envelopes are opened on
  each read, webhook bodies rendered when sent), so nothing else holds the content; their
  receipt entries and webhook jobs go too, once their statements were published;
* outbox rows published, rejected or escalated longer ago than ``agent_outbox_seconds``
  (never a queued one: it still has to reach the broker), with their idempotency keys,
  and notices and refusals older than that;
* published receipt statements older than ``agent_outbox_seconds`` whose entries are gone.

The directory refuses limits under which an agent would forget an event the broker could
still deliver again (``agent_inbox_seconds`` and ``agent_unanswered_seconds`` at least
``delivery_seconds``): a redelivery of a forgotten event would be taken for a new one.

Evidence: an agent may not write to the partnership's audit log (no partner identity may
make the broker store anything but its own events and receipts; a partner that could append
to the log could also flood it). So each purge is recorded locally, metadata only: a row of
the ``purges`` table (store, count, up-to time), an ``agent.purged`` log line and the
``relais_agent_purged_total{store}`` counter, which the partner's monitoring keeps; the
partner shows "nothing older than the limit" from them and from its own database.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from relais.broker_config.retention import Retention

__all__ = ["Cutoffs", "PurgeCounts", "cutoffs", "purge_rows"]


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Unix milliseconds before which each kind of row is past its limit."""

    answered: int
    unanswered: int
    outbox: int


@dataclass(frozen=True, slots=True)
class PurgeCounts:
    """How many rows one purge forgot, per store."""

    inbox: int
    outbox: int
    notices: int

    @property
    def total(self) -> int:
        """Every row forgotten."""
        return self.inbox + self.outbox + self.notices


def cutoffs(retention: Retention, now_ms: int) -> Cutoffs:
    """The cutoffs of ``retention`` at ``now_ms``."""
    return Cutoffs(
        answered=retention.cutoff_ms("agent_inbox_seconds", now_ms),
        unanswered=retention.cutoff_ms("agent_unanswered_seconds", now_ms),
        outbox=retention.cutoff_ms("agent_outbox_seconds", now_ms),
    )


_GONE_EVENTS = (
    "event_id NOT IN (SELECT event_id FROM inbox) AND event_id NOT IN (SELECT event_id FROM outbox)"
)


def purge_rows(db: sqlite3.Connection, limits: Cutoffs, at_ms: int) -> PurgeCounts:
    """Delete what is past ``limits`` (inside the caller's transaction); record the purge."""
    inbox = db.execute(
        "DELETE FROM inbox WHERE (state != 'delivered' AND updated_at < ?)"
        " OR (state = 'delivered' AND received_at < ?)",
        (limits.answered, limits.unanswered),
    ).rowcount
    outbox = db.execute(
        "DELETE FROM outbox WHERE state != 'queued' AND COALESCE(published_at, created_at) < ?",
        (limits.outbox,),
    ).rowcount
    notices = db.execute("DELETE FROM notices WHERE received_at < ?", (limits.outbox,)).rowcount
    db.execute("DELETE FROM refused WHERE at < ?", (limits.outbox,))
    # Webhook jobs of forgotten events and notices: nothing is left to render.
    db.execute(
        "DELETE FROM webhooks WHERE webhook_id NOT IN (SELECT event_id FROM inbox)"
        " AND webhook_id NOT IN (SELECT notice_id FROM notices)"
    )
    # Receipt entries already sent, of events forgotten; then statements left empty.
    db.execute(
        f"DELETE FROM receipt_entries WHERE {_GONE_EVENTS} AND statement_id IN"  # noqa: S608
        " (SELECT id FROM statements WHERE published_at IS NOT NULL)"
    )
    db.execute(
        "DELETE FROM statements WHERE published_at IS NOT NULL AND created_at < ?"
        " AND id NOT IN (SELECT statement_id FROM receipt_entries WHERE statement_id IS NOT NULL)",
        (limits.outbox,),
    )
    counts = PurgeCounts(inbox=inbox, outbox=outbox, notices=notices)
    rows = [
        ("inbox", counts.inbox, min(limits.answered, limits.unanswered)),
        ("outbox", counts.outbox, limits.outbox),
        ("notices", counts.notices, limits.outbox),
    ]
    db.executemany(
        "INSERT INTO purges(store, count, up_to, at) VALUES (?,?,?,?)",
        [(store, count, up_to, at_ms) for store, count, up_to in rows if count],
    )
    return counts
