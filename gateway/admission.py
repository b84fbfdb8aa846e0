"""Admission: every check of an ingress message the router makes without I/O.

:func:`admit` verifies an envelope against the edition in force and judges it against the
routing rules (see :mod:`relais.gateway.router` for the order of the checks), or, when it
does not fit them, against the earlier edition it names if that one is still honoured
(:class:`~relais.gateway.policy.Editions`): an agent that had not fetched the new edition
yet loses nothing. Pure functions of their arguments: the router does the I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

from relais.broker_config.rules import Decision
from relais.gateway.audit import AUDITED_ROUTING_KEYS
from relais.gateway.policy import DEFAULT_GRACE_MS, Editions, Policy, against_rules
from relais.schemas.envelope import (
    DEFAULT_SKEW_MS,
    EnvelopeHeader,
    VerifiedEnvelope,
    verify_envelope,
)
from relais.schemas.errors import EnvelopeError, Reason

__all__ = ["Admitted", "Refused", "RouterConfig", "admit", "routed_record"]

_DAY_MS: Final = 86_400_000


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Tunables of a router (from the gateway settings)."""

    max_age_ms: int = 7 * _DAY_MS
    skew_ms: int = DEFAULT_SKEW_MS
    batch: int = 100
    fetch_expires: float = 0.5
    retry_delay: float = 2.0
    pipeline: int = 2  # pulled batches in hand at once
    # from how many messages a step goes as an atomic batch (None: jetstream's default)
    atomic_min: int | None = None
    grace_ms: int = DEFAULT_GRACE_MS  # how long a replaced edition is still honoured
    ahead_retries: int = 3  # deliveries of an envelope naming a newer edition before judging


@dataclass(frozen=True, slots=True)
class Admitted:
    """An envelope that passed every check but replay, and the rules' decision for it.

    ``deliver_to`` / ``fallback``: who gets it now / on escalation (the header's, or under
    grace those of them the edition in force still names); ``missing``: recipients the
    edition in force adds, for whom the sender must re-seal; ``edition``: the edition in
    force when it was routed (the header names the one it was sealed under).
    """

    envelope: VerifiedEnvelope
    decision: Decision
    deliver_to: tuple[str, ...] = ()
    fallback: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    edition: int = 0
    resealed_from: int | None = None  # a re-sealing: ingress sequence of the first envelope

    @property
    def rule(self) -> str:
        """``<rule id>@<rules version>``."""
        return f"{self.decision.rule_id}@{self.decision.ruleset_version}"


@dataclass(frozen=True, slots=True)
class Refused:
    """Why an envelope is refused; ``header`` when it was verified (authentic ids).

    ``ahead``: it names an edition newer than the router's (retried before it is judged).
    """

    reason: Reason
    header: EnvelopeHeader | None = None
    ahead: bool = False


def admit(
    data: bytes,
    *,
    sender: str,
    policy: Policy,
    now_ms: int,
    config: RouterConfig,
    editions: Editions | None = None,
) -> Admitted | Refused:
    """Every check of an ingress message but replay (pure: no I/O). See the module docstring.

    ``editions``: the earlier editions still honoured (``policy`` is the one in force).
    """
    try:
        env = verify_envelope(data, keys=policy.keys, now_ms=now_ms, skew_ms=config.skew_ms)
    except EnvelopeError as exc:
        return Refused(exc.reason)
    h = env.header
    if h.sender != sender:
        return Refused(Reason.SIGNER_NOT_INGRESS_IDENTITY, h)
    if h.created_at_ms < now_ms - config.max_age_ms:
        return Refused(Reason.STALE, h)
    decision = policy.rules.decide(
        h.event_type, h.routing, sender=sender, directory=policy.directory
    )
    reason = against_rules(h, decision, policy)
    if reason is None:
        return Admitted(env, decision, h.recipient_ids, h.fallback_ids, edition=policy.serial)
    earlier = editions.honoured(h.edition, now_ms) if editions is not None else None
    if earlier is not None:
        graced = _under_grace(env, decision, earlier, policy, now_ms)
        if graced is not None:
            return graced
    return Refused(reason, h, ahead=h.edition > policy.serial)


def _under_grace(
    env: VerifiedEnvelope, current: Decision, earlier: Policy, policy: Policy, now_ms: int
) -> Admitted | None:
    """Routing under an earlier edition the envelope was right for, or ``None``."""
    h = env.header
    then = earlier.rules.decide(
        h.event_type, h.routing, sender=h.sender, directory=earlier.directory
    )
    if against_rules(h, then, earlier) is not None:
        return None
    # Only what the edition in force still names, with a key it still holds valid: a
    # revoked or rotated-out recipient receives nothing more.
    deliver = tuple(
        r.partner_id
        for r in h.recipients
        if r.partner_id in current.recipients and policy.valid_key(r, now_ms)
    )
    if not deliver:
        return None
    fallback = tuple(
        r.partner_id
        for r in h.fallback
        if r.partner_id in current.fallback and policy.valid_key(r, now_ms)
    )
    missing = tuple(p for p in (*current.recipients, *current.fallback) if p not in deliver)
    missing = tuple(p for p in missing if p not in fallback)
    return Admitted(env, then, deliver, fallback, missing, edition=policy.serial)


def routed_record(data: bytes, admitted: Admitted, seq: int, now: int) -> dict[str, Any]:
    """The ROUTED audit record: ids, codes, times, and where the original envelope is."""
    h, decision = admitted.envelope.header, admitted.decision
    deadline = decision.deadline_seconds
    return {
        "event_id": str(h.event_id),
        "event_type": h.event_type.value,
        "sender": h.sender,
        "recipients": list(admitted.deliver_to),
        "fallback": list(admitted.fallback),
        "rule": admitted.rule,
        "edition": h.edition,
        "rules_version": h.rules_version,
        "edition_in_force": admitted.edition,
        "resealed_from": admitted.resealed_from,
        "priority": h.priority.label,
        "departement": h.departement,
        # never prostitution_suspected, in_care...: the operator may read this record
        "routing": {k: v for k, v in h.routing.items() if k in AUDITED_ROUTING_KEYS},
        "closes_case": decision.closes_case,
        "ingress_seq": seq,
        "digest": hashlib.sha256(data).hexdigest(),
        "created_at": h.created_at_ms,
        "at": now,
        "deadline_at": now + deadline * 1000 if deadline is not None else None,
    }
