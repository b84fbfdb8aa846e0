"""Prometheus metrics of one agent (``GET /metrics``).

Labels are low-cardinality codes only: event type, priority, outcome, reason code, receipt
state, webhook kind. Never an id, a partner, a field or any content. Each :class:`AgentMetrics`
has its own registry, so several agents can live in one process (tests).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["AgentMetrics"]

_TYPE_PRIORITY = ("event_type", "priority")


class AgentMetrics:
    """Counters, gauges and histograms of the agent."""

    def __init__(self) -> None:
        """Create the metrics in a registry of their own."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.submitted = Counter(
            "relais_agent_submitted_total",
            "Events handed to the agent, by outcome (accepted, replayed, refused) and reason.",
            [*_TYPE_PRIORITY, "outcome", "reason"],
            registry=r,
        )
        self.published = Counter(
            "relais_agent_published_total",
            "Events stored by the broker on the partner's ingress subject.",
            list(_TYPE_PRIORITY),
            registry=r,
        )
        self.publish_failures = Counter(
            "relais_agent_publish_failures_total",
            "Failed attempts to publish queued events, by reason.",
            ["reason"],
            registry=r,
        )
        self.deliveries = Counter(
            "relais_agent_deliveries_total",
            "Messages pulled from the delivery consumers, by outcome and reason.",
            [*_TYPE_PRIORITY, "outcome", "reason"],
            registry=r,
        )
        self.receipts = Counter(
            "relais_agent_receipt_entries_total",
            "Receipt entries acknowledged by the broker, by state.",
            ["state"],
            registry=r,
        )
        self.webhooks = Counter(
            "relais_agent_webhook_attempts_total",
            "Webhook calls to the partner's system, by kind, priority and outcome.",
            ["kind", "priority", "outcome"],
            registry=r,
        )
        self.actions = Counter(
            "relais_agent_actions_total",
            "Take-charge and decline actions, by outcome.",
            ["action", "outcome"],
            registry=r,
        )
        self.outbox_queued = Gauge(
            "relais_agent_outbox_queued", "Events waiting for the broker.", registry=r
        )
        self.webhooks_pending = Gauge(
            "relais_agent_webhooks_pending", "Webhook calls still to make.", registry=r
        )
        self.directory_serial = Gauge(
            "relais_agent_directory_serial", "Serial of the directory edition in use.", registry=r
        )
        self.resealed = Counter(
            "relais_agent_resealed",
            "Events re-sealed by the agent after a rejection an edition change caused.",
            ("reason",),
            registry=r,
        )
        self.directory_expires_seconds = Gauge(
            "relais_agent_directory_expires_seconds",
            "Seconds until the configuration edition in use expires (negative: expired).",
            registry=r,
        )
        self.nats_connected = Gauge(
            "relais_agent_nats_connected", "1 while connected to the broker.", registry=r
        )
        self.purged = Counter(
            "relais_agent_purged_total",
            "Rows forgotten past the partnership's retention limits, by store.",
            ["store"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "relais_agent_delivery_batch_seconds",
            "Time to verify, store, acknowledge a pulled batch.",
            ["priority"],
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
