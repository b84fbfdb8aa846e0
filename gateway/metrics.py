"""Prometheus metrics of the gateway: counts and durations labelled with codes only.

Labels are outcomes, reason codes, priorities and receipt states: never ids, never content.
The metrics live in their own registry (:data:`REGISTRY`), served on loopback by
:func:`serve` when the settings give a port.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

__all__ = [
    "AUDIT_CHECKPOINTS",
    "REGISTRY",
    "ROUTER_EVENTS",
    "ROUTER_SECONDS",
    "TRACKER_CLOSED",
    "TRACKER_ESCALATIONS",
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


def serve(port: int) -> None:
    """Serve :data:`REGISTRY` on ``http://127.0.0.1:<port>/metrics`` (a daemon thread)."""
    start_http_server(port, addr="127.0.0.1", registry=REGISTRY)
