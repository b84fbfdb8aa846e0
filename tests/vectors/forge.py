"""The deterministic partnership of the negative vectors, and forgers of wire bytes.

Everything comes from :class:`Drbg` streams with fixed seeds and a fixed clock, so
``generate.py`` writes the same bytes on every run. The forgers build envelopes and
statements field by field, exactly as ``docs/protocol.md`` §4 and §5 lay them out, with
hooks that break one thing at a time and sign the result with the key given (a vector
stays signed unless the fault it shows is the signature).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from relais.agents.keys import PartnerKeys
from relais.agents.territory import DEMO_PARTNERS, build_territory
from relais.broker_config.directory import (
    Directory,
    Partner,
    canonical_json,
    new_partner_key,
    sign_directory,
    to_ms,
)
from relais.schemas import _crypto
from relais.schemas import envelope as env_mod
from relais.schemas.domain import EventType, PartnerKind, Priority
from relais.schemas.envelope import MAGIC, EnvelopeHeader, RecipientRef, SectionInfo
from relais.schemas.registry import EventSchema, default_registry
from relais.schemas.wire import Writer, encode_uvarint

PARTNERSHIP = "pilot-93"
ISSUED = datetime(2025, 11, 14, 22, 0, tzinfo=UTC)
ISSUED_MS = to_ms(ISSUED)
NOW_MS = ISSUED_MS + 30 * 60 * 1000  # 2025-11-14T22:30:00Z
SKEW_MS = env_mod.DEFAULT_SKEW_MS
MAX_AGE_MS = 7 * 86_400_000
HOSPITAL = "hopital-93-avicenne"
GATEWAY = "gateway"
# Partners whose keys show each key state (kind school: no rule routes to a school).
REVOKED_PARTNER = "college-93-radie"
REVOKED_KEY_PARTNER = "college-93-cle-revoquee"
EXPIRED_KEY_PARTNER = "college-93-cle-expiree"
FUTURE_KEY_PARTNER = "college-93-cle-future"
EXTRA_PARTNERS = (REVOKED_PARTNER, REVOKED_KEY_PARTNER, EXPIRED_KEY_PARTNER, FUTURE_KEY_PARTNER)


class Drbg:
    """Deterministic byte stream: SHA-256(seed || counter_be64), counter from 0."""

    def __init__(self, seed: bytes | str) -> None:
        self.seed = seed.encode() if isinstance(seed, str) else seed
        self.counter = 0
        self.buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self.buffer) < n:
            block = self.seed + self.counter.to_bytes(8, "big")
            self.buffer += hashlib.sha256(block).digest()
            self.counter += 1
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


@dataclass
class World:
    """The partnership of the vectors: private keys, the edition in force, its root."""

    root: PartnerKeys
    identities: dict[str, PartnerKeys]
    directory: Directory
    signed_directory: bytes

    def keys(self, partner_id: str) -> PartnerKeys:
        """A partner's private keys."""
        return self.identities[partner_id]

    def ref(self, partner_id: str) -> tuple[str, str, bytes]:
        """``(partner id, key id, X25519 public key)`` as an envelope seals to it."""
        keys = self.identities[partner_id]
        return partner_id, keys.key_id, keys.box_pk


def build_world() -> World:
    """The demo territory of 93 (deterministic keys) and four schools showing key states."""
    drbg = Drbg("relais negative vectors v1 keys")
    territory = build_territory(DEMO_PARTNERS, partnership=PARTNERSHIP, random=drbg, now=ISSUED)
    identities = dict(territory.identities)
    partners = list(territory.directory.partners)
    windows = {
        REVOKED_PARTNER: (ISSUED - timedelta(days=1), ISSUED + timedelta(days=365)),
        REVOKED_KEY_PARTNER: (ISSUED - timedelta(days=1), ISSUED + timedelta(days=365)),
        EXPIRED_KEY_PARTNER: (ISSUED - timedelta(days=30), ISSUED - timedelta(hours=1)),
        FUTURE_KEY_PARTNER: (ISSUED + timedelta(days=10), ISSUED + timedelta(days=365)),
    }
    for pid in EXTRA_PARTNERS:
        keys = PartnerKeys.generate(pid, random=drbg)
        identities[pid] = keys
        not_before, not_after = windows[pid]
        key = new_partner_key(keys.sign_pk, keys.box_pk, not_before=not_before, not_after=not_after)
        if pid == REVOKED_KEY_PARTNER:
            key = key.model_validate({**key.model_dump(), "revoked": True})
        partners.append(
            Partner(
                id=pid,
                kind=PartnerKind.SCHOOL,
                name=f"Collège {pid}",
                departements=("93",),
                keys=(key,),
                revoked=pid == REVOKED_PARTNER,
            )
        )
    directory = Directory.model_validate(
        {
            **{k: getattr(territory.directory, k) for k in type(territory.directory).model_fields},
            "partners": tuple(sorted(partners, key=lambda p: p.id)),
            "serial": 7,
        }
    )
    return World(territory.root, identities, directory, sign_directory(directory, territory.root))


def resign_directory(document: dict[str, Any], root: PartnerKeys) -> bytes:
    """A directory file whose ``signed`` member is signed again with ``root`` (§6)."""
    signature = _crypto.sign(root.sign_sk, "directory", canonical_json(document["signed"]))
    return canonical_json({**document, "signature": base64.b64encode(signature).decode()}) + b"\n"


# -- vectors ----------------------------------------------------------------------------------

_L = 2**252 + 27742317777372353535851937790883648493  # order of the Ed25519 base point


def vector(
    vid: str, target: str, check: str, data: bytes, expected: str, why: str, **more: Any
) -> dict[str, Any]:
    """One vector: its id, what checks it, the input (base64), the expected code."""
    return {
        "id": vid,
        "target": target,
        "check": check,
        "input_b64": base64.b64encode(data).decode("ascii"),
        "expected": expected,
        "description": why,
        **more,
    }


def flip(offset: int) -> Callable[[bytes], bytes]:
    """A hook flipping the low bit of the byte at ``offset``."""

    def hook(data: bytes) -> bytes:
        return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]

    return hook


def noncanonical_signature(signature: bytes) -> bytes:
    """The same signature with ``S + L`` in place of ``S`` (still 32 bytes)."""
    s = int.from_bytes(signature[32:], "little") + _L
    return signature[:32] + s.to_bytes(32, "little")


# -- envelopes --------------------------------------------------------------------------------


@dataclass
class SectionPlan:
    """One section to seal: its name, audience and plaintext (and optional faults)."""

    name: str
    audience: tuple[str, ...]
    plaintext: bytes
    committed: bytes | None = None  # the plaintext the commitment names (default: plaintext)
    nonce_for_aead: bytes | None = None  # encrypt under another nonce than the header's


@dataclass
class EventPlan:
    """Every field of an envelope (protocol.md §4), each overridable."""

    event_type: EventType
    schema: EventSchema
    sender: PartnerKeys
    recipients: list[tuple[str, str, bytes]]
    fallback: list[tuple[str, str, bytes]]
    sections: list[SectionPlan]
    routing: dict[str, str]
    departement: str = "93"
    priority: Priority = Priority.URGENT
    created_ms: int = NOW_MS - 60_000
    ttl_ms: int = env_mod.DEFAULT_TTL_MS
    partnership: str = PARTNERSHIP
    edition: int = 7
    rules_version: int = 1
    event_id: uuid.UUID | None = None
    sender_id: str | None = None  # the header's sender (default: the signer's id)
    sender_key_id: str | None = None
    signer_sk: bytes | None = None  # who really signs (default: the sender)
    context: str = "event"
    schema_fp: bytes | None = None
    type_name: EventType | None = None  # the header's event_type (default: event_type)
    keep_order: bool = False  # write recipients as given (unsorted)
    core_hook: Callable[[bytes], bytes] | None = None
    envelope_hook: Callable[[bytes], bytes] | None = None
    ct_hooks: dict[int, Callable[[bytes], bytes]] = field(default_factory=dict)
    wrap_hooks: dict[int, Callable[[list[bytes]], list[bytes]]] = field(default_factory=dict)
    signature_hook: Callable[[bytes], bytes] | None = None
    extra_boxes: dict[str, bytes] = field(default_factory=dict)  # audience entries no recipient


def medical_plan(world: World, record: Mapping[str, Any]) -> EventPlan:
    """A medical referral from the hospital, sealed as the rules of the edition say."""
    schema = default_registry().by_type(EventType.MEDICAL_REFERRAL)
    plaintexts = schema.encode_record(record)
    rcpt = ("crip-93", "medref-93", "parquet-93-bobigny", "uaped-93-jean-verdier")
    medical = ("medref-93", "parquet-93-bobigny", "uaped-93-jean-verdier")
    return EventPlan(
        event_type=EventType.MEDICAL_REFERRAL,
        schema=schema,
        sender=world.keys(HOSPITAL),
        recipients=[world.ref(p) for p in rcpt],
        fallback=[],
        sections=[
            SectionPlan("main", rcpt, plaintexts["main"]),
            SectionPlan("medical", medical, plaintexts["medical"]),
        ],
        routing=schema.routing_metadata(record),
    )


def seal_plan(plan: EventPlan, drbg: Drbg) -> bytes:
    """The envelope bytes of ``plan`` (protocol.md §4), faults applied by its hooks.

    Draws: the event id's 10 random bytes, each section's key (32) and nonce (24), then
    each wrap's ephemeral secret (32), as ``seal`` does.
    """
    eid = plan.event_id or env_mod.new_event_id(plan.created_ms, drbg)
    keys = [drbg(_crypto.KEY_BYTES) for _ in plan.sections]
    nonces = [drbg(_crypto.NONCE_BYTES) for _ in plan.sections]
    infos = [
        SectionInfo(
            s.name,
            s.audience,
            nonce,
            _crypto.commitment(key, s.committed if s.committed is not None else s.plaintext),
        )
        for s, key, nonce in zip(plan.sections, keys, nonces, strict=True)
    ]
    order: Callable[[list[tuple[str, str, bytes]]], list[tuple[str, str, bytes]]] = (
        (lambda refs: refs) if plan.keep_order else (lambda refs: sorted(refs))
    )
    header = EnvelopeHeader(
        event_id=eid,
        event_type=plan.type_name or plan.event_type,
        schema_fp=plan.schema_fp or plan.schema.fingerprint,
        sender=plan.sender_id or plan.sender.partner_id,
        sender_key_id=plan.sender_key_id or plan.sender.key_id,
        priority=plan.priority,
        departement=plan.departement,
        created_at_ms=plan.created_ms,
        expires_at_ms=plan.created_ms + plan.ttl_ms,
        routing=plan.routing,
        recipients=tuple(RecipientRef(p, k) for p, k, _ in order(plan.recipients)),
        fallback=tuple(RecipientRef(p, k) for p, k, _ in order(plan.fallback)),
        sections=tuple(infos),
        partnership=plan.partnership,
        edition=plan.edition,
        rules_version=plan.rules_version,
    )
    core = env_mod._encode_core(header)
    if plan.core_hook is not None:
        core = plan.core_hook(core)
    prefix = MAGIC + bytes([env_mod.KIND_EVENT]) + encode_uvarint(len(core)) + core
    boxes = {p: pk for p, _, pk in (*plan.recipients, *plan.fallback)} | plan.extra_boxes
    digests, body = b"", b""
    for index, (section, key, nonce) in enumerate(zip(plan.sections, keys, nonces, strict=True)):
        aad = prefix + encode_uvarint(index)
        ct = _crypto.aead_encrypt(key, section.nonce_for_aead or nonce, section.plaintext, aad)
        ct = plan.ct_hooks.get(index, lambda b: b)(ct)
        wraps = [_crypto.wrap_key(key, boxes[p], drbg) for p in section.audience]
        wraps = plan.wrap_hooks.get(index, lambda w: w)(wraps)
        digests += _crypto.sha256(ct) + _crypto.sha256(b"".join(wraps))
        body += Writer().bytes_(ct).getvalue() + b"".join(wraps)
    signed = prefix + digests
    signature = _crypto.sign(plan.signer_sk or plan.sender.sign_sk, plan.context, signed)
    if plan.signature_hook is not None:
        signature = plan.signature_hook(signature)
    data = signed + body + signature
    return plan.envelope_hook(data) if plan.envelope_hook is not None else data


def varied(plan: EventPlan, **changes: Any) -> EventPlan:
    """A copy of ``plan`` with ``changes``."""
    return replace(plan, **changes)


# -- statements -------------------------------------------------------------------------------

STATEMENT_KIND = {
    EventType.RECEIPT: (0x02, "receipt"),
    EventType.REJECTION: (0x03, "rejection"),
    EventType.ESCALATION_NOTICE: (0x04, "escalation"),
    EventType.PROGRESS_NOTICE: (0x05, "progress"),
}


@dataclass
class StatementPlan:
    """Every field of a statement (protocol.md §5), each overridable."""

    event_type: EventType
    signer: PartnerKeys
    body: bytes
    created_ms: int = NOW_MS - 60_000
    partnership: str = PARTNERSHIP
    kind: int | None = None
    signer_id: str | None = None
    key_id: str | None = None
    schema_fp: bytes | None = None
    context: str | None = None
    signer_sk: bytes | None = None
    head_hook: Callable[[bytes], bytes] | None = None  # the bytes before the signature
    signature_hook: Callable[[bytes], bytes] | None = None


def sign_plan(plan: StatementPlan) -> bytes:
    """The statement bytes of ``plan``."""
    kind, context = STATEMENT_KIND[plan.event_type]
    schema = default_registry().by_type(plan.event_type)
    w = Writer().raw(MAGIC).raw(bytes([plan.kind if plan.kind is not None else kind]))
    w.str_(plan.partnership).str_(plan.signer_id or plan.signer.partner_id)
    w.str_(plan.key_id or plan.signer.key_id).uvarint(plan.created_ms)
    w.raw(plan.schema_fp or schema.fingerprint).bytes_(plan.body)
    head = w.getvalue()
    if plan.head_hook is not None:
        head = plan.head_hook(head)
    signature = _crypto.sign(plan.signer_sk or plan.signer.sign_sk, plan.context or context, head)
    if plan.signature_hook is not None:
        signature = plan.signature_hook(signature)
    return head + signature


def body_of(event_type: EventType, record: Mapping[str, Any]) -> bytes:
    """The canonical single-object encoding of a statement record."""
    return default_registry().by_type(event_type).encode_section("main", record)


def avro_long(value: int) -> bytes:
    """Avro zig-zag varint of ``value``."""
    return encode_uvarint((value << 1) ^ (value >> 63))


def avro_string(text: str) -> bytes:
    """Avro string: zig-zag length then UTF-8."""
    raw = text.encode()
    return avro_long(len(raw)) + raw


def receipt_body(recipient: str, blocks: Sequence[Sequence[bytes]], *, header: bytes) -> bytes:
    """A receipt body written by hand: ``header`` (C3 01 + CRC), recipient, entry blocks.

    Each element of ``blocks`` is one array block (its items' bytes); an empty block list is
    the empty array. Used to spell arrays in several blocks.
    """
    out = header + avro_string(recipient)
    for block in blocks:
        out += avro_long(len(block)) + b"".join(block)
    return out + b"\x00"
