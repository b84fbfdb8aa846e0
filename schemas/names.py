"""Every name on the wire, in one place: subjects, streams, consumers, headers.

Part of the contract every partner shares (docs/protocol.md §7): the other modules import
these names instead of spelling them. Subjects hold ids and codes only, never personal data.

Subjects::

    ref.in.<sender>                         INGRESS     sealed events, one subject per sender
    ref.out.<recipient>.<PRIORITY>          DELIVERY    copies and statements for a recipient
    ref.rcpt.<recipient>                    RECEIPTS    signed receipts
    ref.audit.rec, ref.audit.ckpt           AUDIT       audit records, signed checkpoints
    ref.quar.<reason>                       QUARANTINE  refused events
    ref.dir                                 DIRECTORY   signed configuration editions
    ref.seen.<event id>                     SEEN        the router's replay store
    ref.lease.<role>                        LEASES      who runs a role that runs once
"""

from __future__ import annotations

from typing import Final

from relais.schemas.domain import Priority

__all__ = [
    "ADVISORIES_STREAM",
    "ALL_SUBJECTS",
    "AUDIT_CHECKPOINT_SUBJECT",
    "AUDIT_RECORD_SUBJECT",
    "AUDIT_STREAM",
    "AUDIT_SUBJECTS",
    "DELIVERY_STREAM",
    "DELIVERY_SUBJECTS",
    "DIRECTORY_STREAM",
    "DIRECTORY_SUBJECT",
    "DIRECTORY_SUBJECTS",
    "H_CLAIMED_SENDER",
    "H_ESCALATION",
    "H_EVENT_ID",
    "H_INGRESS_SEQ",
    "H_MSG_ID",
    "H_REASON",
    "H_RULE",
    "H_SENDER",
    "H_TYPE",
    "INGRESS_STREAM",
    "INGRESS_SUBJECTS",
    "LEASES_STREAM",
    "LEASES_SUBJECTS",
    "QUARANTINE_ANY",
    "QUARANTINE_STREAM",
    "QUARANTINE_SUBJECTS",
    "RECEIPTS_STREAM",
    "RECEIPTS_SUBJECTS",
    "ROUTER_CONSUMER",
    "SEEN_STREAM",
    "SEEN_SUBJECTS",
    "TRACKER_AUDIT_CONSUMER",
    "TRACKER_CONSUMER",
    "delivery_consumer_name",
    "delivery_subject",
    "ingress_subject",
    "lease_subject",
    "quarantine_subject",
    "receipts_subject",
    "seen_subject",
]

# -- streams -----------------------------------------------------------------------------------

INGRESS_STREAM: Final = "INGRESS"
DELIVERY_STREAM: Final = "DELIVERY"
RECEIPTS_STREAM: Final = "RECEIPTS"
AUDIT_STREAM: Final = "AUDIT"
QUARANTINE_STREAM: Final = "QUARANTINE"
DIRECTORY_STREAM: Final = "DIRECTORY"
ADVISORIES_STREAM: Final = "ADVISORIES"
SEEN_STREAM: Final = "SEEN"
LEASES_STREAM: Final = "LEASES"

# -- subjects ----------------------------------------------------------------------------------

AUDIT_RECORD_SUBJECT: Final = "ref.audit.rec"
AUDIT_CHECKPOINT_SUBJECT: Final = "ref.audit.ckpt"
DIRECTORY_SUBJECT: Final = "ref.dir"


# what each stream captures
INGRESS_SUBJECTS: Final = ("ref.in.*",)
DELIVERY_SUBJECTS: Final = tuple(f"ref.out.*.{p.label}" for p in Priority)
RECEIPTS_SUBJECTS: Final = ("ref.rcpt.*",)
AUDIT_SUBJECTS: Final = ("ref.audit.>",)
QUARANTINE_SUBJECTS: Final = ("ref.quar.>",)
QUARANTINE_ANY: Final = "ref.quar.*"  # one token: the reason code
DIRECTORY_SUBJECTS: Final = (DIRECTORY_SUBJECT,)
SEEN_SUBJECTS: Final = ("ref.seen.*",)
LEASES_SUBJECTS: Final = ("ref.lease.*",)
ALL_SUBJECTS: Final = "ref.>"


def ingress_subject(sender: str) -> str:
    """Where ``sender``'s agent publishes its sealed events."""
    return f"ref.in.{sender}"


def delivery_subject(recipient: str, priority: Priority) -> str:
    """Where the gateway puts what ``recipient`` receives at ``priority``."""
    return f"ref.out.{recipient}.{priority.label}"


def receipts_subject(recipient: str) -> str:
    """Where ``recipient``'s agent publishes its signed receipts."""
    return f"ref.rcpt.{recipient}"


def quarantine_subject(reason: str) -> str:
    """Where the router keeps an event it refused for ``reason`` (a reason code)."""
    return f"ref.quar.{reason}"


def seen_subject(event_id: str) -> str:
    """The router's replay-store entry of ``event_id``."""
    return f"ref.seen.{event_id}"


def lease_subject(role: str) -> str:
    """The lease of a role that runs exactly once (``tracker``)."""
    return f"ref.lease.{role}"


# -- consumers ---------------------------------------------------------------------------------

ROUTER_CONSUMER: Final = "router"
TRACKER_CONSUMER: Final = "tracker"
TRACKER_AUDIT_CONSUMER: Final = "tracker-audit"


def delivery_consumer_name(partner_id: str, priority: Priority) -> str:
    """The durable consumer a partner pulls ``priority`` deliveries from."""
    return f"out-{partner_id}-{priority.label}"


# -- headers (ids and codes only) --------------------------------------------------------------

H_MSG_ID: Final = "Nats-Msg-Id"
H_EVENT_ID: Final = "Relais-Event-Id"
H_TYPE: Final = "Relais-Type"
H_RULE: Final = "Relais-Rule"
H_ESCALATION: Final = "Relais-Escalation"
H_REASON: Final = "Relais-Reason"
H_INGRESS_SEQ: Final = "Relais-Ingress-Seq"
H_SENDER: Final = "Relais-Sender"
H_CLAIMED_SENDER: Final = "Relais-Claimed-Sender"
