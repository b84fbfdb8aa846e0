"""Who may do what on the broker: accounts, users, imports and limits, derived from the directory.

nats-server checks the subject a client publishes to, never the reply subject it names, and
JetStream answers every request (an API call, a pull, a publish acknowledgement) on that reply
subject. Were the streams in the clients' account, any client could make JetStream store an
answer in any stream (a consumer-info request naming ``ref.audit.rec`` as its reply would write into
the audit log, which denies delete and purge). So JetStream lives in an account no client of
the partnership connects to, and every identity has an account of its own:

* ``RELAIS`` (the hub) owns JetStream: every stream and consumer. Its only user is the
  provisioning administrator, used by ``relais broker up|reload|provision`` and never by the
  running gateway;
* ``ROUTER``, ``TRACKER`` (the tracker, the audit checkpointer and the directory publisher)
  and ``OPERATOR`` (read-only inspection) hold one service user each;
* ``PARTNER_<id>`` holds the one user of partner ``<id>``.

One account per partner rather than one shared by all partners: in a shared account, a reply
subject naming another partner's inbox (``_INBOX_<other>.x``) would deliver the answer to that
partner, whose subscribe permission covers its inbox; per-user permissions cannot prevent it.

A client account reaches the hub only through service imports of the exact subjects its role
needs; the hub exports them. Answers travel back to a response subject in the client's own
account: a client that names another subject as reply can only reach its own account, where no
other identity is. All the imports of one account come from one single service export of the
hub (``>``, streamed responses): nats-server drops an answer whose delivery would cross that
same export again (its loop detection), so even a reply naming one of the client's own
imported subjects (its ingress, say) stores nothing. The property is tested as the whole
product identities × requests × reply targets in ``tests/test_reflection.py``.

The JetStream API (``$JS.API.STREAM.INFO...``) answers for the account of the requester unless
that account imports ``$JS.API.INFO`` from the account that owns JetStream; every identity that
makes API calls therefore imports it (it returns the hub's account counters, no content).

Ack subjects are imported with an exact number of tokens, in the classic form
``$JS.ACK.<stream>.<consumer>.*.*.*.*.*`` (9 tokens) and the domain form
``$JS.ACK.*.*.<stream>.<consumer>.*.*.*.*.*.*`` (12 tokens). A trailing ``>`` must not be used:
with ``$JS.ACK.*.*.DELIVERY.out-a-FLASH.>`` partner ``a`` could publish
``$JS.ACK.DELIVERY.out-b-FLASH.DELIVERY.out-a-FLASH.1.1.1``, a 9-token subject that nats-server
routes to ``b``'s consumer.

A partner gets a user only while it is not revoked and holds a key valid now; the next
``broker reload`` after its last key expires removes it (:func:`expiring_partners` names the
partners whose last key expires soon, for the warnings). Every account has a connection and a
subscription limit (:class:`AccountLimits`), so one partner cannot exhaust the server.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from relais.broker_config.directory import Directory, Partner
from relais.schemas.domain import Priority
from relais.schemas.errors import ConfigError
from relais.schemas.names import (
    ALL_SUBJECTS,
    AUDIT_CHECKPOINT_SUBJECT,
    AUDIT_RECORD_SUBJECT,
    AUDIT_STREAM,
    DELIVERY_STREAM,
    DELIVERY_SUBJECTS,
    DIRECTORY_SUBJECT,
    INGRESS_STREAM,
    QUARANTINE_ANY,
    RECEIPTS_STREAM,
    ROUTER_CONSUMER,
    SEEN_SUBJECTS,
    TRACKER_AUDIT_CONSUMER,
    TRACKER_CONSUMER,
    delivery_consumer_name,
    ingress_subject,
    lease_subject,
    receipts_subject,
)

__all__ = [
    "ACCOUNT",
    "GATEWAY_INBOX",
    "HUB_ACCOUNT",
    "OPERATOR_INBOX",
    "ROUTER_INBOX",
    "SYSTEM_ACCOUNT",
    "TRACKER_INBOX",
    "AccountLimits",
    "Identity",
    "Service",
    "ServiceKeys",
    "accounts_block",
    "delivery_consumer_name",
    "expiring_partners",
    "identities",
    "inbox_prefix",
    "partner_account",
    "partner_users",
    "service_inbox",
]

HUB_ACCOUNT: Final = "RELAIS"
ACCOUNT: Final = HUB_ACCOUNT  # the account that owns JetStream (older name)
SYSTEM_ACCOUNT: Final = "SYS"
_PARTNER_ACCOUNT_PREFIX: Final = "PARTNER_"
_JS_INFO: Final = "$JS.API.INFO"


class Service(StrEnum):
    """The service identities of the hub (each its own credential)."""

    ADMIN = "admin"  # provisioning: streams, consumers; only `relais broker ...` uses it
    ROUTER = "router"
    TRACKER = "tracker"  # tracker, audit checkpointer, directory publisher
    OPERATOR = "operator"  # read-only inspection


def service_inbox(service: Service) -> str:
    """The inbox prefix a service identity connects with (``_`` cannot start a partner id)."""
    return f"_INBOX__{service.value}"


GATEWAY_INBOX: Final = service_inbox(Service.ADMIN)
ROUTER_INBOX: Final = service_inbox(Service.ROUTER)
TRACKER_INBOX: Final = service_inbox(Service.TRACKER)
OPERATOR_INBOX: Final = service_inbox(Service.OPERATOR)
_SERVICE_ACCOUNTS: Final = {
    Service.ROUTER: "ROUTER",
    Service.TRACKER: "TRACKER",
    Service.OPERATOR: "OPERATOR",
}


def inbox_prefix(partner_id: str) -> str:
    """The inbox prefix a partner's agent must connect with (``inbox_prefix=...``)."""
    return f"_INBOX_{partner_id}"


def partner_account(partner_id: str) -> str:
    """The account of partner ``partner_id``."""
    return f"{_PARTNER_ACCOUNT_PREFIX}{partner_id}"


def _ack_subjects(stream: str, consumer: str) -> tuple[str, str]:
    # Exact token counts, never ">": see the module docstring.
    return (
        f"$JS.ACK.{stream}.{consumer}.*.*.*.*.*",
        f"$JS.ACK.*.*.{stream}.{consumer}.*.*.*.*.*.*",
    )


def _pull(stream: str, consumer: str) -> tuple[str, ...]:
    return (f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", *_ack_subjects(stream, consumer))


_DELIVERY_SUBJECTS: Final = DELIVERY_SUBJECTS
_DIRECTORY_READ: Final = "$JS.API.DIRECT.GET.DIRECTORY.>"


@dataclass(frozen=True, slots=True)
class Identity:
    """One user: its account and the hub subjects it may reach (all imported, all allowed)."""

    name: str  # "router", "partner crip-93", ...
    account: str
    inbox: str
    subjects: tuple[str, ...]

    def user(self, nkey: str) -> dict[str, Any]:
        """The nats-server user entry: publish only to the imports, subscribe only the inbox."""
        return {
            "nkey": nkey,
            "permissions": {
                "publish": {"allow": list(self.subjects)},
                "subscribe": {"allow": [f"{self.inbox}.>"]},
            },
        }


def partner_identity(partner_id: str) -> Identity:
    """A partner's agent: its ingress, its receipts, its own consumers, the directory."""
    subjects = [
        ingress_subject(partner_id),
        receipts_subject(partner_id),
        _JS_INFO,
        _DIRECTORY_READ,
    ]
    for priority in Priority:
        consumer = delivery_consumer_name(partner_id, priority)
        subjects.extend(_pull(DELIVERY_STREAM, consumer))
        subjects.append(f"$JS.API.CONSUMER.INFO.DELIVERY.{consumer}")
    return Identity(
        f"partner {partner_id}",
        partner_account(partner_id),
        inbox_prefix(partner_id),
        tuple(subjects),
    )


def _router() -> Identity:
    subjects = (
        *_pull(INGRESS_STREAM, ROUTER_CONSUMER),
        *_DELIVERY_SUBJECTS,  # one copy per recipient, rejections to the sender
        AUDIT_RECORD_SUBJECT,  # ROUTED records
        QUARANTINE_ANY,
        *SEEN_SUBJECTS,  # the replay store
        _JS_INFO,
        "$JS.API.STREAM.INFO.SEEN",
        "$JS.API.DIRECT.GET.SEEN",
        "$JS.API.DIRECT.GET.SEEN.>",
        _DIRECTORY_READ,
    )
    return Identity("router", "ROUTER", ROUTER_INBOX, subjects)


def _tracker() -> Identity:
    subjects = (
        *_pull(RECEIPTS_STREAM, TRACKER_CONSUMER),
        *_pull(AUDIT_STREAM, TRACKER_AUDIT_CONSUMER),
        *_DELIVERY_SUBJECTS,  # escalations to the fallback recipients, notices
        AUDIT_RECORD_SUBJECT,
        AUDIT_CHECKPOINT_SUBJECT,
        DIRECTORY_SUBJECT,  # the directory publisher: nobody else may write an edition
        lease_subject("tracker"),  # exactly one active tracker (gateway.lease)
        _JS_INFO,
        "$JS.API.STREAM.INFO.*",  # the keeper's retention evidence and watch gauges
        "$JS.API.CONSUMER.LIST.DELIVERY",  # the keeper's delivery backlog gauges
        "$JS.API.STREAM.MSG.GET.INGRESS",  # the original envelope, for an escalation
        "$JS.API.STREAM.MSG.GET.AUDIT",
        "$JS.API.DIRECT.GET.AUDIT",
        "$JS.API.DIRECT.GET.AUDIT.>",
        "$JS.API.DIRECT.GET.RECEIPTS",  # receipts stored but not yet delivered to it
        "$JS.API.CONSUMER.INFO.RECEIPTS.tracker",  # how far the active tracker acknowledged
        "$JS.API.CONSUMER.INFO.AUDIT.tracker-audit",
        "$JS.API.DIRECT.GET.LEASES.ref.lease.tracker",
        _DIRECTORY_READ,
    )
    return Identity("tracker", "TRACKER", TRACKER_INBOX, subjects)


def _operator() -> Identity:
    # Read-only: counters, names, consumer states, the metadata-only audit records and the
    # public directory. No message of INGRESS, DELIVERY, RECEIPTS or QUARANTINE.
    subjects = (
        _JS_INFO,
        "$JS.API.STREAM.NAMES",
        "$JS.API.STREAM.LIST",
        "$JS.API.STREAM.INFO.*",
        "$JS.API.CONSUMER.NAMES.*",
        "$JS.API.CONSUMER.LIST.*",
        "$JS.API.CONSUMER.INFO.*.*",
        "$JS.API.DIRECT.GET.AUDIT",
        "$JS.API.DIRECT.GET.AUDIT.>",
        _DIRECTORY_READ,
    )
    return Identity("operator", "OPERATOR", OPERATOR_INBOX, subjects)


_SERVICE_IDENTITIES: Final = {
    Service.ROUTER: _router(),
    Service.TRACKER: _tracker(),
    Service.OPERATOR: _operator(),
}


def service_identity(service: Service) -> Identity:
    """The identity of a service role (the administrator has no import: it is in the hub)."""
    if service is Service.ADMIN:
        return Identity(
            "admin", HUB_ACCOUNT, GATEWAY_INBOX, ("$JS.API.>", "$JS.ACK.>", ALL_SUBJECTS)
        )
    return _SERVICE_IDENTITIES[service]


class AccountLimits(BaseModel):
    """Connections and subscriptions per account, generated with the users."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    partner_connections: int = Field(default=8, ge=1, le=10_000)
    partner_subscriptions: int = Field(default=512, ge=16, le=1_000_000)
    router_connections: int = Field(default=64, ge=1, le=10_000)
    tracker_connections: int = Field(default=16, ge=1, le=10_000)
    operator_connections: int = Field(default=32, ge=1, le=10_000)
    service_subscriptions: int = Field(default=10_000, ge=16, le=1_000_000)

    def for_service(self, service: Service) -> dict[str, int]:
        """The ``limits`` block of a service account."""
        connections = {
            Service.ROUTER: self.router_connections,
            Service.TRACKER: self.tracker_connections,
            Service.OPERATOR: self.operator_connections,
        }[service]
        return {"max_connections": connections, "max_subscriptions": self.service_subscriptions}

    def for_partner(self) -> dict[str, int]:
        """The ``limits`` block of a partner account."""
        return {
            "max_connections": self.partner_connections,
            "max_subscriptions": self.partner_subscriptions,
        }


@dataclass(frozen=True, slots=True)
class ServiceKeys:
    """The public nkeys of the service users (never taken from the directory)."""

    admin: str
    router: str
    tracker: str
    operator: str

    def of(self, service: Service) -> str:
        """The public nkey of ``service``."""
        return str(getattr(self, service.value))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def partner_users(directory: Directory | None, *, at_ms: int | None = None) -> list[Partner]:
    """The partners that get a NATS user: not revoked, with an nkey and a key valid now.

    A revoked partner, or one whose keys have all expired, loses its user (the server closes
    its connections on reload); its consumers and their messages are kept by
    :func:`relais.broker_config.streams.provision`.
    """
    if directory is None:
        return []
    now = _now_ms() if at_ms is None else at_ms
    return [
        p
        for p in directory.partners
        if not p.revoked and p.nats_nkey is not None and p.valid_keys(now)
    ]


def expiring_partners(
    directory: Directory, *, within_ms: int, at_ms: int | None = None
) -> list[tuple[str, int]]:
    """``(partner id, expiry ms)`` of users whose last valid key expires within ``within_ms``."""
    now = _now_ms() if at_ms is None else at_ms
    found = []
    for partner in partner_users(directory, at_ms=now):
        last = max(k.not_after_ms for k in partner.valid_keys(now))
        if last - now <= within_ms:
            found.append((partner.id, last))
    return found


def identities(directory: Directory | None, *, at_ms: int | None = None) -> list[Identity]:
    """Every client identity of the partnership (services first), for tests and inspection."""
    found = [service_identity(s) for s in Service]
    found.extend(partner_identity(p.id) for p in partner_users(directory, at_ms=at_ms))
    return found


def _client_account(identity: Identity, nkey: str, limits: Mapping[str, int]) -> dict[str, Any]:
    return {
        "users": [identity.user(nkey)],
        "imports": [{"service": {"account": HUB_ACCOUNT, "subject": s}} for s in identity.subjects],
        "limits": dict(limits),
    }


def _check_unique(pairs: Iterable[tuple[str, str]]) -> None:
    seen: dict[str, str] = {}
    for nkey, who in pairs:
        if nkey in seen:
            # One nkey, one identity: a shared key would merge two sets of permissions.
            raise ConfigError(f"{who} uses the nkey of {seen[nkey]}")
        seen[nkey] = who


def accounts_block(
    directory: Directory | None,
    services: ServiceKeys,
    *,
    limits: AccountLimits | None = None,
    hub_jetstream: Mapping[str, Any] | str = "enabled",
    at_ms: int | None = None,
) -> dict[str, Any]:
    """The ``accounts`` block of the server configuration (see the module docstring)."""
    limits = limits or AccountLimits()
    partners = partner_users(directory, at_ms=at_ms)
    _check_unique(
        [(services.of(s), f"the {s.value} user") for s in Service]
        + [(str(p.nats_nkey), f"partner {p.id!r}") for p in partners]
    )
    hub: dict[str, Any] = {
        "jetstream": hub_jetstream,
        "users": [service_identity(Service.ADMIN).user(services.admin)],
        # One export for every import (see the module docstring: loop detection). It names
        # no account list: nats-server 2.15 does not re-resolve the imports of an account
        # added by a reload against such a list (a new partner would get "no responders").
        # The configuration defines every account and every import, so only these cross.
        "exports": [{"service": ">", "response_type": "stream"}],
    }
    accounts: dict[str, Any] = {SYSTEM_ACCOUNT: {"users": []}, HUB_ACCOUNT: hub}
    for service, account in _SERVICE_ACCOUNTS.items():
        accounts[account] = _client_account(
            service_identity(service), services.of(service), limits.for_service(service)
        )
    for partner in partners:
        accounts[partner_account(partner.id)] = _client_account(
            partner_identity(partner.id), str(partner.nats_nkey), limits.for_partner()
        )
    return accounts
