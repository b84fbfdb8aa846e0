"""What the gateway enforces: one verified directory edition and the routing rules.

A :class:`Policy` is immutable; the service swaps the router's and the tracker's policy
for a new one when a newer directory edition is loaded (``SIGHUP``). Both roles read
``policy`` once per message, so a message is judged entirely under one edition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relais.agents.keys import PartnerKeys
from relais.broker_config.directory import Directory, DirectoryKeys
from relais.broker_config.rules import RuleSet
from relais.schemas import _crypto
from relais.schemas.domain import PartnerKind
from relais.schemas.errors import ConfigError, EnvelopeError

__all__ = ["Policy", "check_gateway_identity"]


@dataclass(frozen=True, slots=True)
class Policy:
    """A verified directory, its key resolver and the routing rules."""

    directory: Directory
    rules: RuleSet
    keys: DirectoryKeys = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", DirectoryKeys(self.directory))

    @property
    def serial(self) -> int:
        """The directory edition's serial."""
        return self.directory.serial


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
