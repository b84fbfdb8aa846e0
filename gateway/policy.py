"""What the gateway enforces: the configuration edition in force, and the earlier ones it
still honours for a grace period.

A :class:`Policy` is one verified edition: its directory and its routing rules (the rules the
edition embeds, :meth:`Policy.of`; tests may pair a directory with other rules). It is
immutable; the service hands the router and the tracker a new one when a newer edition is
loaded (``SIGHUP``). Both roles read ``policy`` once per message, so a message is judged
entirely under one edition.

:class:`Editions` keeps, besides the edition in force, each edition it replaced and when,
for ``grace_ms``: an envelope sealed under one of them by an agent that had not fetched the
new edition yet is still routed when it was right under the edition it names
(:func:`against_rules`), so a change of edition never costs an honest event. Revocation is
not delayed by the grace: envelopes are always verified with the keys of the edition in
force, and only recipients that edition still lists with a valid key receive anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relais.agents.keys import PartnerKeys
from relais.broker_config.directory import Directory, DirectoryKeys
from relais.broker_config.edition import rules_of
from relais.broker_config.rules import Decision, RuleSet
from relais.schemas import _crypto
from relais.schemas.domain import PartnerKind
from relais.schemas.envelope import EnvelopeHeader, RecipientRef
from relais.schemas.errors import ConfigError, EnvelopeError, Reason
from relais.schemas.registry import MAIN_SECTION

__all__ = ["DEFAULT_GRACE_MS", "Editions", "Policy", "against_rules", "check_gateway_identity"]

DEFAULT_GRACE_MS = 15 * 60 * 1000  # agents poll every 30 s; a broker outage may take longer


@dataclass(frozen=True, slots=True)
class Policy:
    """A verified directory, its key resolver and the routing rules."""

    directory: Directory
    rules: RuleSet
    keys: DirectoryKeys = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", DirectoryKeys(self.directory))

    @classmethod
    def of(cls, directory: Directory) -> Policy:
        """The policy of an edition: its directory and the rules it embeds."""
        return cls(directory, rules_of(directory))

    @property
    def serial(self) -> int:
        """The directory edition's serial."""
        return self.directory.serial

    def valid_key(self, ref: RecipientRef, at_ms: int) -> bool:
        """The directory lists ``ref``'s key, for an active partner, as valid at ``at_ms``."""
        partner = self.directory.get(ref.partner_id)
        key = partner.key(ref.key_id) if partner is not None and not partner.revoked else None
        return key is not None and key.valid_at(at_ms)


def against_rules(h: EnvelopeHeader, decision: Decision, policy: Policy) -> Reason | None:
    """Why a verified header is not what ``decision`` (of ``policy``) gives; ``None``: it is."""
    if not decision.sender_allowed:
        return Reason.SENDER_NOT_ALLOWED
    if h.recipient_ids != decision.recipients or h.fallback_ids != decision.fallback:
        return Reason.RECIPIENTS_NOT_RULES
    if not all(policy.valid_key(ref, h.created_at_ms) for ref in (*h.recipients, *h.fallback)):
        return Reason.RECIPIENTS_NOT_RULES
    if h.priority is not decision.priority:
        return Reason.PRIORITY_NOT_RULES
    if h.departement != decision.departement:
        return Reason.DEPARTEMENT_NOT_RULES
    for section in h.sections:
        entitled = decision.audiences.get(section.name, ())
        if section.name != MAIN_SECTION and not set(section.audience) <= set(entitled):
            return Reason.AUDIENCE_NOT_ENTITLED
    return None


class Editions:
    """The edition in force and the ones it replaced less than ``grace_ms`` ago."""

    __slots__ = ("_earlier", "_grace_ms", "current")

    def __init__(self, policy: Policy, *, grace_ms: int = DEFAULT_GRACE_MS) -> None:
        """Start with ``policy`` in force and nothing earlier."""
        self.current = policy
        self._grace_ms = grace_ms
        self._earlier: list[tuple[Policy, int]] = []  # (edition, replaced at), oldest first

    def replace(self, policy: Policy, now_ms: int) -> None:
        """Put ``policy`` in force; the edition it replaces is honoured ``grace_ms`` more."""
        if policy.serial > self.current.serial:
            self._earlier.append((self.current, now_ms))
        self.current = policy
        self._earlier = [
            (p, at)
            for p, at in self._earlier
            if p.serial < policy.serial and now_ms - at <= self._grace_ms
        ]

    def honoured(self, serial: int, now_ms: int) -> Policy | None:
        """The earlier edition ``serial`` if it was replaced less than ``grace_ms`` ago."""
        for policy, replaced_at in self._earlier:
            if policy.serial == serial and now_ms - replaced_at <= self._grace_ms:
                return policy
        return None


def check_gateway_identity(policy: Policy, signer: PartnerKeys, now_ms: int) -> None:
    """Refuse (``ConfigError``) a gateway key the directory does not list as a gateway's.

    Receivers check that rejections, escalation notices and audit checkpoints are signed by
    a partner of kind ``gateway`` with a key valid when signed: better to refuse to start
    than to sign statements every receiver will throw away.
    """
    partner = policy.directory.get(signer.partner_id)
    if partner is None or partner.kind is not PartnerKind.GATEWAY or partner.revoked:
        raise ConfigError(f"{signer.partner_id!r} is not an active gateway of the directory")
    try:
        listed = policy.keys.signing_key(signer.partner_id, signer.key_id, now_ms)
    except EnvelopeError as exc:
        raise ConfigError(
            f"the gateway key {signer.key_id} is not valid now ({exc.reason.value})"
        ) from exc
    if not _crypto.ct_equal(listed, signer.sign_pk):
        raise ConfigError("the gateway key file does not hold the key the directory lists")
