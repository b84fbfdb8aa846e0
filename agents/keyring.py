"""A partner agent's private keys: one or several key files of the same partner.

Several key files are loaded during a key rotation: the new key signs as soon as the
directory lists it as valid, and envelopes sealed to the old key (the header names the key
id each recipient was wrapped to) still open with the old one until it is removed.

The signing key is the newest key (latest ``not_before`` in the directory) among those the
directory lists as valid now; the same rule gives senders the key they wrap to
(:meth:`relais.broker_config.directory.DirectoryKeys.box_key`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from pathlib import Path

from relais.agents.keys import PartnerKeys, load_key_file
from relais.broker_config.directory import Directory
from relais.schemas.errors import ConfigError, EnvelopeError, Reason

__all__ = ["Keyring"]

_IDEMPOTENCY_LABEL = b"relais/1 agent idempotency"


class Keyring:
    """The private identities of one partner, by key id. Never ``repr``-s a secret."""

    __slots__ = ("_by_id", "_keys", "_partner_id")

    def __init__(self, keys: Sequence[PartnerKeys]) -> None:
        """Hold ``keys``: at least one, all of the same partner, no key id twice."""
        if not keys:
            raise ConfigError("at least one key file is needed")
        partners = {k.partner_id for k in keys}
        if len(partners) != 1:
            raise ConfigError("the key files belong to different partners")
        self._keys = tuple(keys)
        self._by_id = {k.key_id: k for k in keys}
        if len(self._by_id) != len(self._keys):
            raise ConfigError("the same key file is given twice")
        self._partner_id = next(iter(partners))

    @classmethod
    def load(cls, paths: Iterable[Path], passphrase: bytes) -> Keyring:
        """Load every key file with the same passphrase (raises ``KeyFileError``)."""
        return cls([load_key_file(Path(p), passphrase) for p in paths])

    @property
    def partner_id(self) -> str:
        """The partner the keys belong to."""
        return self._partner_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The key ids held, in the order the files were given."""
        return tuple(k.key_id for k in self._keys)

    def by_key_id(self, key_id: str) -> PartnerKeys | None:
        """The identity holding ``key_id``, or ``None``."""
        return self._by_id.get(key_id)

    def signer(self, directory: Directory, at_ms: int) -> PartnerKeys:
        """The key to sign with at ``at_ms``: the newest one the directory lists as valid.

        Raises ``EnvelopeError`` with the reason the router would give: ``UNKNOWN_SENDER``,
        ``REVOKED_PARTNER``, or ``UNKNOWN_KEY`` when no key held is valid now.
        """
        partner = directory.get(self._partner_id)
        if partner is None:
            raise EnvelopeError(Reason.UNKNOWN_SENDER)
        if partner.revoked:
            raise EnvelopeError(Reason.REVOKED_PARTNER)
        for listed in partner.valid_keys(at_ms):
            held = self._by_id.get(listed.key_id)
            if held is not None:
                return held
        raise EnvelopeError(Reason.UNKNOWN_KEY)

    def idempotency_key(self) -> bytes:
        """A local MAC key for idempotency fingerprints (derived from the first key file).

        Fingerprints of requests are kept at rest: keyed, they reveal nothing about the
        content to someone who reads the database without the partner's private key.
        """
        seed = self._keys[0].sign_sk[:32]
        return hmac.new(seed, _IDEMPOTENCY_LABEL, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return f"Keyring(partner_id={self._partner_id!r}, key_ids={self.key_ids!r})"
