"""Signed statements: receipts, rejections, escalation and progress notices.

They carry metadata only (ids, codes, times), so they are signed but not encrypted::

    statement := MAGIC "RLS\\x01" | kind | partnership:str | signer:str | key_id:str
                 | created_at:uvarint | schema_fp[32] | body:bytes | signature[64]

``kind`` is 0x02 receipt, 0x03 rejection, 0x04 escalation notice, 0x05 progress notice; the
signature context is the kind's name, so neither an event signature nor another kind of
statement verifies as this one. ``partnership`` is the directory's partnership id: a
statement of one partnership never verifies in another. ``body`` is the Avro single-object
encoding of the statement's schema, read strictly (canonical encoding only).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relais.schemas import _crypto
from relais.schemas.domain import PARTNER_ID_RE, EventType
from relais.schemas.envelope import DEFAULT_SKEW_MS, MAGIC, KeyResolver, LocalIdentity
from relais.schemas.errors import EnvelopeError, Reason
from relais.schemas.registry import MAIN_SECTION, SchemaRegistry, default_registry
from relais.schemas.wire import Reader, Writer

__all__ = [
    "KINDS",
    "MAX_STATEMENT_BYTES",
    "Statement",
    "key_judged_at",
    "sign_statement",
    "verify_statement",
]

MAX_STATEMENT_BYTES = 64 * 1024

# kind byte -> (event type, signature context)
KINDS: Mapping[int, tuple[EventType, str]] = {
    0x02: (EventType.RECEIPT, "receipt"),
    0x03: (EventType.REJECTION, "rejection"),
    0x04: (EventType.ESCALATION_NOTICE, "escalation"),
    0x05: (EventType.PROGRESS_NOTICE, "progress"),
}
_KIND_OF = {etype: kind for kind, (etype, _ctx) in KINDS.items()}


@dataclass(frozen=True, slots=True)
class Statement:
    """A verified statement."""

    event_type: EventType
    partnership: str
    signer: str
    key_id: str
    created_at_ms: int
    record: dict[str, Any]
    raw: bytes


def sign_statement(
    event_type: EventType,
    record: Mapping[str, Any],
    *,
    signer: LocalIdentity,
    partnership: str,
    registry: SchemaRegistry | None = None,
    now_ms: int | None = None,
) -> bytes:
    """Validate ``record`` against the statement's schema, encode and sign it.

    ``partnership`` is the directory's partnership id, bound in the signed bytes.
    """
    kind = _KIND_OF.get(EventType(event_type))
    if kind is None:
        raise EnvelopeError(Reason.WRONG_KIND)
    if not PARTNER_ID_RE.fullmatch(partnership):
        raise EnvelopeError(Reason.MALFORMED_HEADER)
    schema = (registry or default_registry()).by_type(event_type)
    schema.validate(record)
    body = schema.encode_section(MAIN_SECTION, record)
    created = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    w = Writer().raw(MAGIC).raw(bytes([kind])).str_(partnership)
    w.str_(signer.partner_id).str_(signer.key_id).uvarint(created).raw(schema.fingerprint)
    message = w.bytes_(body).getvalue()
    if len(message) + _crypto.SIG_BYTES > MAX_STATEMENT_BYTES:
        raise EnvelopeError(Reason.OVERSIZE)
    return message + _crypto.sign(signer.sign_sk, KINDS[kind][1], message)


def key_judged_at(created_ms: int, received_ms: int, skew_ms: int = DEFAULT_SKEW_MS) -> int:
    """When a signer's key must have been valid: the verifier's receive time, within skew.

    A signer chooses ``created_ms``; the verifier does not trust it beyond the skew window,
    so a key past its ``not_after`` (or revoked) cannot go on signing by backdating: the key
    must be valid at ``received_ms - skew_ms`` at the earliest, and at ``created_ms`` when
    that is later (a statement signed just before the key's end, received just after).
    """
    return max(created_ms, received_ms - skew_ms)


def verify_statement(
    data: bytes,
    *,
    keys: KeyResolver,
    expected: EventType | None = None,
    registry: SchemaRegistry | None = None,
    now_ms: int | None = None,
    skew_ms: int = DEFAULT_SKEW_MS,
) -> Statement:
    """Check framing, kind, partnership, schema, signer key and signature, then the body.

    ``now_ms`` is the time the verifier received the statement (default: now; for a
    statement read back from a stream, the time the broker stored it): the signer's key
    must be valid then, within ``skew_ms`` (:func:`key_judged_at`).

    Every failure is an :class:`EnvelopeError` with its reason (``docs/protocol.md`` §5).
    """
    if len(data) > MAX_STATEMENT_BYTES:
        raise EnvelopeError(Reason.OVERSIZE)
    r = Reader(data)
    magic = r.raw(len(MAGIC))
    if magic[:3] != MAGIC[:3]:
        raise EnvelopeError(Reason.BAD_MAGIC)
    if magic[3] != MAGIC[3]:
        raise EnvelopeError(Reason.UNSUPPORTED_VERSION)
    kind = r.raw(1)[0]
    if kind not in KINDS:
        raise EnvelopeError(Reason.WRONG_KIND)
    event_type, context = KINDS[kind]
    if expected is not None and event_type is not expected:
        raise EnvelopeError(Reason.WRONG_KIND)
    partnership = r.str_(64)
    signer, key_id = r.str_(64), r.str_(32)
    created = r.uvarint()
    fingerprint = r.raw(32)
    body = r.bytes_(MAX_STATEMENT_BYTES)
    signed_end = r.position
    signature = r.raw(_crypto.SIG_BYTES)
    r.expect_end()
    if not PARTNER_ID_RE.fullmatch(signer) or not PARTNER_ID_RE.fullmatch(partnership):
        raise EnvelopeError(Reason.MALFORMED_HEADER)
    if partnership != keys.partnership:
        raise EnvelopeError(Reason.WRONG_PARTNERSHIP)
    schema = (registry or default_registry()).by_fingerprint(fingerprint)
    if schema.event_type is not event_type:
        raise EnvelopeError(Reason.UNKNOWN_SCHEMA)
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if created > now + skew_ms:
        raise EnvelopeError(Reason.FROM_FUTURE)
    public_key = keys.signing_key(signer, key_id, key_judged_at(created, now, skew_ms))
    _crypto.verify(public_key, context, data[:signed_end], signature)
    record = schema.decode_section(MAIN_SECTION, body)
    return Statement(
        event_type=event_type,
        partnership=partnership,
        signer=signer,
        key_id=key_id,
        created_at_ms=created,
        record=record,
        raw=data,
    )
