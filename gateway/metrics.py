"""Prometheus metrics of the gateway: counts and durations labelled with codes only.

Labels are outcomes, reason codes, priorities and receipt states: never ids, never content.
The metrics live in their own registry (:data:`REGISTRY`), served on loopback by
:func:`serve` when the settings give a port.

The watch gauges (``relais_tracker_*_events``, ``relais_stream_*``, ``relais_partner_*``,
``relais_broker_sync_always``, ``relais_audit_verified_*``, ``relais_retention_*``) are set by
the tracker role's keeper (:mod:`relais.gateway.keeper`) every few seconds; the alerting
rules in ``deploy/prometheus/relais-rules.yml`` use them. The only ids among their labels
are stream names and the partner ids of delivery consumers: organisations, already in every
subject, never a person.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = [
    "AUDIT_CHECKPOINTS",
    "AUDIT_VERIFIED_OK",
    "AUDIT_VERIFIED_SEQ",
    "AUDIT_VERIFIED_TIME",
    "BROKER_SYNC_ALWAYS",
    "DIRECTORY_EXPIRES",
    "DIRECTORY_SERIAL",
    "PARTNER_PENDING",
    "PARTNER_WAITING",
    "REGISTRY",
    "RETENTION_PURGED",
    "ROUTER_EVENTS",
    "ROUTER_SECONDS",
    "STREAM_BYTES",
    "STREAM_FIRST_TIME",
    "STREAM_MAX_AGE",
    "STREAM_MAX_BYTES",
    "STREAM_MESSAGES",
    "TRACKER_ACTIVE",
    "TRACKER_CLOSED",
    "TRACKER_ESCALATIONS",
    "TRACKER_NEXT_DEADLINE",
    "TRACKER_OPEN",
    "TRACKER_OVERDUE",
    "TRACKER_RECEIPTS",
    "serve",
]

REGISTRY: Final = CollectorRegistry()

ROUTER_EVENTS: Final = Counter(
    "relais_router_events",
    "Ingress messages handled by the router, by outcome and reason code.",
    ("outcome", "reason", "priority"),
    registry=REGISTRY,
)
ROUTER_SECONDS: Final = Histogram(
    "relais_router_seconds",
    "Time to route or quarantine one ingress message.",
    ("outcome",),
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
DIRECTORY_SERIAL: Final = Gauge(
    "relais_gateway_directory_serial",
    "Configuration edition (directory serial) the gateway enforces.",
    registry=REGISTRY,
)
DIRECTORY_EXPIRES: Final = Gauge(
    "relais_gateway_directory_expires_seconds",
    "Seconds until the configuration edition in force expires (negative: expired).",
    registry=REGISTRY,
)
TRACKER_RECEIPTS: Final = Counter(
    "relais_tracker_receipts",
    "Receipt entries that changed the state of an (event, recipient), by state.",
    ("state",),
    registry=REGISTRY,
)
TRACKER_ESCALATIONS: Final = Counter(
    "relais_tracker_escalations",
    "Events escalated to their fallback recipients after their deadline.",
    ("priority",),
    registry=REGISTRY,
)
TRACKER_CLOSED: Final = Counter(
    "relais_tracker_closed",
    "Cases closed by an event of a closing rule (e.g. runaway ended).",
    registry=REGISTRY,
)
AUDIT_CHECKPOINTS: Final = Counter(
    "relais_audit_checkpoints",
    "Signed audit checkpoints published.",
    registry=REGISTRY,
)

# -- watch gauges (set by relais.gateway.keeper) -------------------------------------------------

TRACKER_ACTIVE: Final = Gauge(
    "relais_gateway_tracker_active",
    "1 while this tracker holds the lease (the active one), 0 while it is a standby",
)
TRACKER_OPEN: Final = Gauge(
    "relais_tracker_open_events",
    "Events with a deadline not passed yet that nobody took in charge, by priority.",
    ("priority",),
    registry=REGISTRY,
)
TRACKER_OVERDUE: Final = Gauge(
    "relais_tracker_overdue_events",
    "Events past their deadline that nobody took in charge, escalated or not, by priority.",
    ("priority",),
    registry=REGISTRY,
)
TRACKER_NEXT_DEADLINE: Final = Gauge(
    "relais_tracker_next_deadline_seconds",
    "Seconds until the earliest deadline of an open event, by priority (absent: none).",
    ("priority",),
    registry=REGISTRY,
)
STREAM_MESSAGES: Final = Gauge(
    "relais_stream_messages", "Messages stored in a stream.", ("stream",), registry=REGISTRY
)
STREAM_BYTES: Final = Gauge(
    "relais_stream_bytes", "Bytes stored in a stream.", ("stream",), registry=REGISTRY
)
STREAM_MAX_BYTES: Final = Gauge(
    "relais_stream_max_bytes",
    "Byte limit of a stream (-1: none).",
    ("stream",),
    registry=REGISTRY,
)
STREAM_MAX_AGE: Final = Gauge(
    "relais_stream_max_age_seconds",
    "Retention limit of a stream (0: kept for ever).",
    ("stream",),
    registry=REGISTRY,
)
STREAM_FIRST_TIME: Final = Gauge(
    "relais_stream_first_timestamp_seconds",
    "Store time of the oldest message of a stream (Unix seconds; absent when empty).",
    ("stream",),
    registry=REGISTRY,
)
PARTNER_PENDING: Final = Gauge(
    "relais_partner_delivery_pending",
    "Deliveries a partner's agent has not acknowledged yet (pending and in flight).",
    ("partner", "priority"),
    registry=REGISTRY,
)
PARTNER_WAITING: Final = Gauge(
    "relais_partner_pull_waiting",
    "Pull requests of a partner's agent waiting on its delivery consumers (0: not pulling).",
    ("partner",),
    registry=REGISTRY,
)
BROKER_SYNC_ALWAYS: Final = Gauge(
    "relais_broker_sync_always",
    "1 when the broker reports sync_always (every acknowledged write on disk), else 0.",
    registry=REGISTRY,
)
AUDIT_VERIFIED_TIME: Final = Gauge(
    "relais_audit_verified_timestamp_seconds",
    "When the gateway last verified the audit chain to its end without a problem.",
    registry=REGISTRY,
)
AUDIT_VERIFIED_SEQ: Final = Gauge(
    "relais_audit_verified_seq",
    "Last audit stream sequence the gateway verified.",
    registry=REGISTRY,
)
AUDIT_VERIFIED_OK: Final = Gauge(
    "relais_audit_verified_ok",
    "1 while the audit chain verifies, 0 after a problem (see relais audit verify).",
    registry=REGISTRY,
)
RETENTION_PURGED: Final = Counter(
    "relais_retention_purged",
    "Rows or messages forgotten past their retention limit, by store.",
    ("store",),
    registry=REGISTRY,
)


def serve(port: int) -> None:
    """Serve :data:`REGISTRY` on ``http://127.0.0.1:<port>/metrics`` (a daemon thread)."""
    start_http_server(port, addr="127.0.0.1", registry=REGISTRY)
