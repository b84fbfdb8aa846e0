"""The sealed envelope: sign once, encrypt once per section, wrap per entitled recipient.

Byte layout (normative text in ``docs/protocol.md``)::

    envelope := MAGIC "RLS\\x01" | kind 0x01 | core:bytes | digests | sections | signature[64]
    digests  := for each section of core: sha256(ciphertext) | sha256(wraps)
    sections := for each section of core: ciphertext:bytes | wraps (80 bytes per audience entry)

``core`` names the protocol, the event, its schema fingerprint, the partnership (the
directory's ``partnership`` id: an envelope of one partnership never verifies in another,
even where the same keys are enrolled in both), the sender and key, priority,
département, times, the configuration edition and rules version the sender routed with,
routing metadata (codes only), the sorted recipients and fallback
recipients with the key id each is wrapped to, and per section its name, sorted audience,
nonce and key commitment. The signature (context ``event``) covers everything from MAGIC up
to the end of ``digests``: the header. The AEAD associated data of section *i* is
``MAGIC | kind | core:bytes | uvarint(i)``: it cannot include the digests, which depend on
the ciphertext, but the signature does.

:func:`seal` builds an envelope; :func:`verify_envelope` checks everything that can be
checked without a private key (the router uses it); :func:`open_envelope` also unwraps,
decrypts and decodes the sections the recipient is entitled to. Every failure raises the
one opaque :class:`~relais.schemas.errors.EnvelopeError` with a precise ``reason``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from relais.schemas import _crypto
from relais.schemas.domain import (
    EVENT_TYPES,
    PARTNER_ID_RE,
    ROUTING_VALUE_RE,
    EventType,
    Priority,
)
from relais.schemas.errors import EnvelopeError, Reason, SchemaError
from relais.schemas.registry import MAIN_SECTION, EventSchema, SchemaRegistry, default_registry
from relais.schemas.wire import Reader, Writer

__all__ = [
    "KIND_EVENT",
    "MAGIC",
    "MAX_ENVELOPE_BYTES",
    "MAX_RECIPIENTS",
    "EnvelopeHeader",
    "KeyResolver",
    "LocalIdentity",
    "OpenedEvent",
    "Recipient",
    "RecipientRef",
    "SectionInfo",
    "VerifiedEnvelope",
    "new_event_id",
    "open_envelope",
    "peek_header",
    "seal",
    "verify_envelope",
]

MAGIC = b"RLS\x01"
PROTOCOL = "relais/1"
KIND_EVENT = 0x01
SIG_CONTEXT = "event"

MAX_ENVELOPE_BYTES = 256 * 1024
MAX_CORE_BYTES = 16 * 1024
MAX_SECTION_BYTES = 192 * 1024
MAX_RECIPIENTS = 64
MAX_FALLBACK = 16
MAX_SECTIONS = 4
MAX_ROUTING_ENTRIES = 16
MAX_TTL_MS = 90 * 24 * 3600 * 1000
MAX_EDITION = 2**53 - 1  # the directory's serial cap (exact in every JSON implementation)
DEFAULT_TTL_MS = 14 * 24 * 3600 * 1000
DEFAULT_SKEW_MS = 5 * 60 * 1000
_ID_CAP = 64
_KEY_ID_CAP = 32

Clock = Callable[[], int]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class KeyResolver(Protocol):
    """Public keys from the signed directory (implemented by ``broker_config.directory``)."""

    @property
    def partnership(self) -> str:
        """The directory's partnership id, which every envelope and statement must name."""
        ...

    def signing_key(self, partner_id: str, key_id: str, at_ms: int) -> bytes:
        """The Ed25519 public key, or ``EnvelopeError`` (unknown, revoked, expired...)."""
        ...


class LocalIdentity(Protocol):
    """A partner's own private keys (``relais.agents.keys.PartnerKeys``)."""

    @property
    def partner_id(self) -> str: ...
    @property
    def key_id(self) -> str: ...
    @property
    def sign_sk(self) -> bytes: ...
    @property
    def box_pk(self) -> bytes: ...
    @property
    def box_sk(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Recipient:
    """A recipient to seal for: its partner id and the X25519 key it is wrapped to."""

    partner_id: str
    key_id: str
    box_pk: bytes


class RecipientRef(NamedTuple):
    """A recipient as bound in the header."""

    partner_id: str
    key_id: str


class SectionInfo(NamedTuple):
    """One section as bound in the header (digests filled in by the parser)."""

    name: str
    audience: tuple[str, ...]
    nonce: bytes
    commitment: bytes
    ct_hash: bytes = b""
    wraps_hash: bytes = b""


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    """The signed header of an event envelope: metadata only, no content."""

    event_id: uuid.UUID
    event_type: EventType
    schema_fp: bytes
    sender: str
    sender_key_id: str
    priority: Priority
    departement: str
    created_at_ms: int
    expires_at_ms: int
    routing: Mapping[str, str]
    recipients: tuple[RecipientRef, ...]
    fallback: tuple[RecipientRef, ...]
    sections: tuple[SectionInfo, ...]
    partnership: str
    # The configuration edition (directory serial) and rules version the sender routed with.
    edition: int = 0
    rules_version: int = 0

    @property
    def recipient_ids(self) -> tuple[str, ...]:
        """Primary recipients' partner ids, sorted."""
        return tuple(r.partner_id for r in self.recipients)

    @property
    def fallback_ids(self) -> tuple[str, ...]:
        """Fallback (escalation) recipients' partner ids, sorted."""
        return tuple(r.partner_id for r in self.fallback)

    def audience(self, section: str) -> tuple[str, ...]:
        """Audience of a section, or ``()`` when the envelope has no such section."""
        for info in self.sections:
            if info.name == section:
                return info.audience
        return ()


@dataclass(frozen=True, slots=True)
class VerifiedEnvelope:
    """An envelope whose framing, schema, times, sender key, signature and digests hold."""

    header: EnvelopeHeader
    schema: EventSchema
    raw: bytes
    core: bytes
    ciphertexts: tuple[bytes, ...]
    wraps: tuple[tuple[bytes, ...], ...]


@dataclass(frozen=True, slots=True)
class OpenedEvent:
    """What a recipient can read: the fields of the sections it is entitled to."""

    header: EnvelopeHeader
    fields: dict[str, Any]
    opened_sections: tuple[str, ...]
    withheld_sections: tuple[str, ...]


def new_event_id(now_ms: int, random: _crypto.RandomSource = os.urandom) -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then random bits."""
    rand = int.from_bytes(random(10), "big")
    value = (now_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 68) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b
    return uuid.UUID(int=value)


# -- sealing --------------------------------------------------------------------------------


def seal(
    event_type: EventType | str,
    record: Mapping[str, Any],
    *,
    sender: LocalIdentity,
    partnership: str,
    recipients: Sequence[Recipient],
    departement: str,
    priority: Priority,
    fallback: Sequence[Recipient] = (),
    audiences: Mapping[str, Collection[str]] | None = None,
    registry: SchemaRegistry | None = None,
    now_ms: int | None = None,
    ttl_ms: int = DEFAULT_TTL_MS,
    random: _crypto.RandomSource = os.urandom,
    event_id: uuid.UUID | None = None,
    edition: int = 0,
    rules_version: int = 0,
) -> bytes:
    """Validate, split, encrypt, wrap and sign one event; return the envelope bytes.

    ``audiences`` gives, for each secret section (e.g. ``"medical"``), the partner ids
    entitled to it (a subset of recipients and fallback); a secret section nobody is entitled
    to is left out of the envelope. The main section goes to every recipient and fallback.
    Sealing refuses a secret section whose audience is not a subset of the recipients.
    ``partnership`` is the directory's partnership id, bound in the header, as are
    ``edition`` and ``rules_version``: the configuration edition the recipients were
    computed with.
    """
    reg = registry or default_registry()
    schema = reg.by_type(event_type)
    plaintexts = schema.encode_record(record)  # validates
    routing = schema.routing_metadata(record)
    now = _now_ms() if now_ms is None else now_ms
    if not 0 < ttl_ms <= MAX_TTL_MS:
        raise EnvelopeError(Reason.EXPIRED)
    eid = event_id or new_event_id(now, random)

    everyone = {r.partner_id: r for r in (*recipients, *fallback)}
    rcpt = tuple(sorted(recipients, key=lambda r: r.partner_id))
    fb = tuple(sorted(fallback, key=lambda r: r.partner_id))
    section_plan: list[tuple[str, tuple[str, ...]]] = []
    for name in schema.section_names:
        if name == MAIN_SECTION:
            members: Collection[str] = everyone.keys()
        else:
            members = (audiences or {}).get(name, ())
            if not set(members) <= everyone.keys():
                raise EnvelopeError(Reason.BAD_AUDIENCE)
        if members:
            section_plan.append((name, tuple(sorted(members))))

    keys, infos = [], []
    for name, audience in section_plan:
        key = random(_crypto.KEY_BYTES)
        keys.append(key)
        infos.append(
            SectionInfo(
                name=name,
                audience=audience,
                nonce=random(_crypto.NONCE_BYTES),
                commitment=_crypto.commitment(key, plaintexts[name]),
            )
        )
    header = EnvelopeHeader(
        event_id=eid,
        event_type=schema.event_type,
        schema_fp=schema.fingerprint,
        sender=sender.partner_id,
        sender_key_id=sender.key_id,
        priority=Priority(priority),
        departement=departement,
        created_at_ms=now,
        expires_at_ms=now + ttl_ms,
        routing=routing,
        recipients=tuple(RecipientRef(r.partner_id, r.key_id) for r in rcpt),
        fallback=tuple(RecipientRef(r.partner_id, r.key_id) for r in fb),
        sections=tuple(infos),
        partnership=partnership,
        edition=edition,
        rules_version=rules_version,
    )
    _check_sealable(header)
    core = _encode_core(header)
    prefix = Writer().raw(MAGIC).raw(bytes([KIND_EVENT])).bytes_(core).getvalue()

    digests = Writer()
    body = Writer()
    for index, (info, key) in enumerate(zip(infos, keys, strict=True)):
        ciphertext = _crypto.aead_encrypt(
            key, info.nonce, plaintexts[info.name], _aad(prefix, index)
        )
        wraps = b"".join(
            _crypto.wrap_key(key, everyone[pid].box_pk, random) for pid in info.audience
        )
        digests.raw(_crypto.sha256(ciphertext)).raw(_crypto.sha256(wraps))
        body.bytes_(ciphertext).raw(wraps)
    signed = prefix + digests.getvalue()
    signature = _crypto.sign(sender.sign_sk, SIG_CONTEXT, signed)
    envelope = signed + body.getvalue() + signature
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(Reason.OVERSIZE)
    return envelope


def _check_sealable(h: EnvelopeHeader) -> None:
    """The caps and invariants receivers enforce, checked before sealing (no parse needed)."""
    refs = (*h.recipients, *h.fallback)
    if len(h.recipients) > MAX_RECIPIENTS or len(h.fallback) > MAX_FALLBACK:
        raise EnvelopeError(Reason.TOO_MANY_RECIPIENTS)
    if len(h.sections) > MAX_SECTIONS:
        raise EnvelopeError(Reason.TOO_MANY_SECTIONS)
    if len(h.routing) > MAX_ROUTING_ENTRIES or len(h.departement) > 3:
        raise EnvelopeError(Reason.FIELD_TOO_LARGE)
    if any(len(k) > 32 or not ROUTING_VALUE_RE.fullmatch(k) for k in h.routing):
        raise EnvelopeError(Reason.MALFORMED_HEADER)
    if len(h.sender_key_id) > _KEY_ID_CAP or any(len(r.key_id) > _KEY_ID_CAP for r in refs):
        raise EnvelopeError(Reason.FIELD_TOO_LARGE)
    if not PARTNER_ID_RE.fullmatch(h.partnership):
        raise EnvelopeError(Reason.MALFORMED_HEADER)
    for ids in (h.recipient_ids, h.fallback_ids):
        if not _ascending(ids):
            raise EnvelopeError(Reason.UNSORTED_RECIPIENTS)
        if not all(PARTNER_ID_RE.fullmatch(i) for i in ids):
            raise EnvelopeError(Reason.MALFORMED_HEADER)
    _check_shape(h, sorted(h.routing))


def _aad(prefix: bytes, index: int) -> bytes:
    return prefix + Writer().uvarint(index).getvalue()


def _encode_core(h: EnvelopeHeader) -> bytes:
    w = Writer()
    w.str_(PROTOCOL).raw(h.event_id.bytes).str_(h.event_type.value).raw(h.schema_fp)
    w.str_(h.partnership).str_(h.sender).str_(h.sender_key_id).uvarint(int(h.priority)).str_(
        h.departement
    )
    w.uvarint(h.created_at_ms).uvarint(h.expires_at_ms)
    w.uvarint(h.edition).uvarint(h.rules_version)
    w.uvarint(len(h.routing))
    for key in sorted(h.routing):
        w.str_(key).str_(h.routing[key])
    for group in (h.recipients, h.fallback):
        w.uvarint(len(group))
        for ref in group:
            w.str_(ref.partner_id).str_(ref.key_id)
    w.uvarint(len(h.sections))
    for info in h.sections:
        w.str_(info.name).str_list(info.audience).raw(info.nonce).raw(info.commitment)
    return w.getvalue()


# -- parsing (unverified) -------------------------------------------------------------------


def _ascending(items: Sequence[str]) -> bool:
    """Strictly ascending (sorted, no duplicates)."""
    listed = list(items)
    return listed == sorted(listed) and len(set(listed)) == len(listed)


def _read_refs(r: Reader, cap: int) -> tuple[RecipientRef, ...]:
    n = r.count(cap, Reason.TOO_MANY_RECIPIENTS)
    ids: list[str] = []
    refs: list[RecipientRef] = []
    for _ in range(n):
        pid = r.str_(_ID_CAP)
        ids.append(pid)
        refs.append(RecipientRef(pid, r.str_(_KEY_ID_CAP)))
    if not _ascending(ids):
        raise EnvelopeError(Reason.UNSORTED_RECIPIENTS)
    if not all(map(PARTNER_ID_RE.fullmatch, ids)):
        raise EnvelopeError(Reason.MALFORMED_HEADER)
    return tuple(refs)


_EVENT_TYPE_BY_VALUE = {t.value: t for t in EVENT_TYPES}
_PRIORITY_BY_VALUE = {int(p): p for p in Priority}


def _parse_unverified_core(core: bytes, outer: Reader | None = None) -> EnvelopeHeader:
    """Parse the core of a header. Nothing here is authenticated yet: caps and shape only.

    With ``outer`` (the envelope reader, positioned after the core), the section digests
    that follow the core are read too and folded into the sections.
    """
    r = Reader(core)
    if r.str_(16) != PROTOCOL:
        raise EnvelopeError(Reason.UNSUPPORTED_VERSION)
    event_id = uuid.UUID(bytes=r.raw(16))
    event_type = _EVENT_TYPE_BY_VALUE.get(r.str_(48))
    schema_fp = r.raw(32)
    partnership = r.str_(_ID_CAP)
    sender, sender_key_id = r.str_(_ID_CAP), r.str_(_KEY_ID_CAP)
    priority = _PRIORITY_BY_VALUE.get(r.uvarint())
    if event_type is None:
        raise EnvelopeError(Reason.UNKNOWN_TYPE)
    if priority is None:
        raise EnvelopeError(Reason.MALFORMED_HEADER)
    departement = r.str_(3)
    created, expires = r.uvarint(), r.uvarint()
    edition, rules_version = r.uvarint(), r.uvarint()
    n_routing = r.count(MAX_ROUTING_ENTRIES, Reason.MALFORMED_HEADER)
    routing = {}
    keys = []
    for _ in range(n_routing):
        key, value = r.str_(32), r.str_(64)
        if not ROUTING_VALUE_RE.fullmatch(key) or not ROUTING_VALUE_RE.fullmatch(value):
            raise EnvelopeError(Reason.MALFORMED_HEADER)
        keys.append(key)
        routing[key] = value
    recipients = _read_refs(r, MAX_RECIPIENTS)
    fallback = _read_refs(r, MAX_FALLBACK)
    n_sections = r.count(MAX_SECTIONS, Reason.TOO_MANY_SECTIONS)
    raw_sections = [
        (
            r.str_(16),
            r.str_list(MAX_RECIPIENTS + MAX_FALLBACK, _ID_CAP, Reason.TOO_MANY_RECIPIENTS),
            r.raw(_crypto.NONCE_BYTES),
            r.raw(32),
        )
        for _ in range(n_sections)
    ]
    r.expect_end()
    if outer is None:
        sections = tuple(SectionInfo(*raw) for raw in raw_sections)
    else:
        sections = tuple(SectionInfo(*raw, outer.raw(32), outer.raw(32)) for raw in raw_sections)
    header = EnvelopeHeader(
        event_id=event_id,
        event_type=event_type,
        schema_fp=schema_fp,
        sender=sender,
        sender_key_id=sender_key_id,
        priority=priority,
        departement=departement,
        created_at_ms=created,
        expires_at_ms=expires,
        routing=routing,
        recipients=recipients,
        fallback=fallback,
        sections=sections,
        partnership=partnership,
        edition=edition,
        rules_version=rules_version,
    )
    if not PARTNER_ID_RE.fullmatch(partnership):
        raise EnvelopeError(Reason.MALFORMED_HEADER)
    _check_shape(header, keys)
    return header


def _check_shape(h: EnvelopeHeader, routing_keys: list[str]) -> None:
    if not _ascending(routing_keys):
        raise EnvelopeError(Reason.MALFORMED_HEADER)
    if not PARTNER_ID_RE.fullmatch(h.sender) or not h.recipients:
        raise EnvelopeError(Reason.MALFORMED_HEADER)
    if h.event_type not in EVENT_TYPES or not ROUTING_VALUE_RE.fullmatch(h.departement):
        raise EnvelopeError(Reason.MALFORMED_HEADER)
    members = set(h.recipient_ids)
    if members & set(h.fallback_ids) or h.sender in members:
        raise EnvelopeError(Reason.BAD_AUDIENCE)
    members |= set(h.fallback_ids)
    names = [s.name for s in h.sections]
    if not names or names[0] != MAIN_SECTION or not _ascending(names[1:]):
        raise EnvelopeError(Reason.MALFORMED_HEADER)
    if MAIN_SECTION in names[1:]:
        raise EnvelopeError(Reason.MALFORMED_HEADER)
    for info in h.sections:
        if not info.audience or not _ascending(info.audience):
            raise EnvelopeError(Reason.BAD_AUDIENCE)
        if not set(info.audience) <= members:
            raise EnvelopeError(Reason.BAD_AUDIENCE)
    if set(h.sections[0].audience) != members:
        raise EnvelopeError(Reason.BAD_AUDIENCE)
    if h.expires_at_ms <= h.created_at_ms or h.expires_at_ms - h.created_at_ms > MAX_TTL_MS:
        raise EnvelopeError(Reason.MALFORMED_HEADER)
    if not (0 <= h.edition <= MAX_EDITION and 0 <= h.rules_version <= MAX_EDITION):
        raise EnvelopeError(Reason.MALFORMED_HEADER)


@dataclass(frozen=True, slots=True)
class _Framed:
    header: EnvelopeHeader
    core: bytes
    signed_end: int
    ciphertexts: tuple[bytes, ...]
    wraps: tuple[tuple[bytes, ...], ...]
    signature: bytes


def _parse_unverified(data: bytes) -> _Framed:
    if len(data) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(Reason.OVERSIZE)
    r = Reader(data)
    if r.raw(len(MAGIC))[:3] != MAGIC[:3]:
        raise EnvelopeError(Reason.BAD_MAGIC)
    if data[3] != MAGIC[3]:
        raise EnvelopeError(Reason.UNSUPPORTED_VERSION)
    if r.raw(1)[0] != KIND_EVENT:
        raise EnvelopeError(Reason.WRONG_KIND)
    core = r.bytes_(MAX_CORE_BYTES)
    header = _parse_unverified_core(core, r)
    signed_end = r.position
    ciphertexts, wraps = [], []
    for info in header.sections:
        ciphertexts.append(r.bytes_(MAX_SECTION_BYTES))
        blob = r.raw(_crypto.WRAP_BYTES * len(info.audience))
        wraps.append(
            tuple(blob[i : i + _crypto.WRAP_BYTES] for i in range(0, len(blob), _crypto.WRAP_BYTES))
        )
    signature = r.raw(_crypto.SIG_BYTES)
    r.expect_end()
    return _Framed(
        header=header,
        core=core,
        signed_end=signed_end,
        ciphertexts=tuple(ciphertexts),
        wraps=tuple(wraps),
        signature=signature,
    )


def peek_header(data: bytes) -> EnvelopeHeader:
    """Parse a header WITHOUT verifying it (for quarantine indexing and diagnostics only)."""
    return _parse_unverified(data).header


# -- verification and opening ---------------------------------------------------------------


def verify_envelope(
    data: bytes,
    *,
    keys: KeyResolver,
    registry: SchemaRegistry | None = None,
    now_ms: int | None = None,
    skew_ms: int = DEFAULT_SKEW_MS,
) -> VerifiedEnvelope:
    """Check everything that needs no private key, cheapest first.

    Framing and caps, the partnership (``WRONG_PARTNERSHIP`` unless it is the directory's),
    known schema for the declared type, times, the sender's key in the directory at creation
    time, the canonical signature, then each section's digests.
    """
    framed = _parse_unverified(data)
    h = framed.header
    if h.partnership != keys.partnership:
        raise EnvelopeError(Reason.WRONG_PARTNERSHIP)
    reg = registry or default_registry()
    schema = reg.by_fingerprint(h.schema_fp)
    if schema.event_type is not h.event_type:
        raise EnvelopeError(Reason.UNKNOWN_SCHEMA)
    if not {s.name for s in h.sections} <= set(schema.section_names):
        raise EnvelopeError(Reason.MALFORMED_HEADER)
    now = _now_ms() if now_ms is None else now_ms
    if h.created_at_ms > now + skew_ms:
        raise EnvelopeError(Reason.FROM_FUTURE)
    if h.expires_at_ms < now:
        raise EnvelopeError(Reason.EXPIRED)
    public_key = keys.signing_key(h.sender, h.sender_key_id, h.created_at_ms)
    _crypto.verify(public_key, SIG_CONTEXT, data[: framed.signed_end], framed.signature)
    for info, ct, wraps in zip(h.sections, framed.ciphertexts, framed.wraps, strict=True):
        if not (
            _crypto.ct_equal(_crypto.sha256(ct), info.ct_hash)
            and _crypto.ct_equal(_crypto.sha256(b"".join(wraps)), info.wraps_hash)
        ):
            raise EnvelopeError(Reason.SECTION_HASH_MISMATCH)
    return VerifiedEnvelope(
        header=h,
        schema=schema,
        raw=data,
        core=framed.core,
        ciphertexts=framed.ciphertexts,
        wraps=framed.wraps,
    )


def open_envelope(
    data: bytes | VerifiedEnvelope,
    *,
    recipient: LocalIdentity,
    keys: KeyResolver,
    registry: SchemaRegistry | None = None,
    now_ms: int | None = None,
    skew_ms: int = DEFAULT_SKEW_MS,
) -> OpenedEvent:
    """Verify (unless given a :class:`VerifiedEnvelope`), then decrypt what ``recipient`` may read.

    Sections whose audience does not include the recipient are reported as withheld; the
    recipient holds no key for them. The routing metadata in clear must match the content.
    """
    env = (
        data
        if isinstance(data, VerifiedEnvelope)
        else verify_envelope(data, keys=keys, registry=registry, now_ms=now_ms, skew_ms=skew_ms)
    )
    h = env.header
    me = recipient.partner_id
    ref = next((x for x in (*h.recipients, *h.fallback) if x.partner_id == me), None)
    if ref is None:
        raise EnvelopeError(Reason.NOT_A_RECIPIENT)
    if ref.key_id != recipient.key_id:
        raise EnvelopeError(Reason.UNKNOWN_KEY)
    prefix = env.raw[: 4 + 1] + Writer().bytes_(env.core).getvalue()
    fields: dict[str, Any] = {}
    opened: list[str] = []
    for index, (info, ct, wraps) in enumerate(
        zip(h.sections, env.ciphertexts, env.wraps, strict=True)
    ):
        if me not in info.audience:
            continue
        key = _crypto.unwrap_key(wraps[info.audience.index(me)], recipient.box_pk, recipient.box_sk)
        plaintext = _crypto.aead_decrypt(key, info.nonce, ct, _aad(prefix, index))
        if not _crypto.ct_equal(_crypto.commitment(key, plaintext), info.commitment):
            raise EnvelopeError(Reason.COMMITMENT_MISMATCH)
        fields.update(env.schema.decode_section(info.name, plaintext))
        opened.append(info.name)
    try:
        routing = env.schema.pinned_reader.routing_metadata(fields)
    except SchemaError as exc:
        raise EnvelopeError(Reason.ROUTING_MISMATCH) from exc
    if routing != dict(h.routing):
        raise EnvelopeError(Reason.ROUTING_MISMATCH)
    withheld = tuple(n for n in env.schema.section_names if n not in opened)
    return OpenedEvent(
        header=h, fields=fields, opened_sections=tuple(opened), withheld_sections=withheld
    )
