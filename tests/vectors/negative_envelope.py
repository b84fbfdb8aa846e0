"""Negative vectors of the event envelope: verification (§4.1, §9.2), opening (§4.2) and the
router's policy (§9.2). :func:`envelope_vectors` returns the vector dicts ``generate.py``
writes; each group of refusals is one function."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from typing import Any

import fastavro
from forge import (
    EXPIRED_KEY_PARTNER,
    FUTURE_KEY_PARTNER,
    HOSPITAL,
    MAX_AGE_MS,
    NOW_MS,
    REVOKED_KEY_PARTNER,
    REVOKED_PARTNER,
    SKEW_MS,
    Drbg,
    EventPlan,
    SectionPlan,
    World,
    flip,
    medical_plan,
    noncanonical_signature,
    seal_plan,
    varied,
    vector,
)

from relais.schemas.domain import EventType, Priority
from relais.schemas.envelope import MAX_ENVELOPE_BYTES, peek_header
from relais.schemas.registry import default_registry
from relais.schemas.samples import sample_event
from relais.schemas.wire import Reader, encode_uvarint

# Keyword arguments that are the vector's context rather than a change of the plan.
_CONTEXT = frozenset({"now_ms", "recipient", "ingress_sender", "faults", "pad"})
_OTHER_KEY = "0123456789abcdef"  # a key id nobody holds


class Envelopes:
    """Collects envelope vectors made from one base plan."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.record = sample_event(EventType.MEDICAL_REFERRAL, rng=random.Random(2025))
        self.base = medical_plan(world, self.record)
        self.main, self.medical = self.base.sections
        self.good = seal_plan(self.base, Drbg("negative envelope/good"))
        self.out: list[dict[str, Any]] = []

    def raw(self, vid: str, data: bytes, expected: str, why: str, **context: Any) -> None:
        """A vector of given bytes, checked by verification."""
        context.setdefault("now_ms", NOW_MS)
        self.out.append(
            vector(f"envelope/{vid}", "envelope", "verify", data, expected, why, **context)
        )

    def seal(self, vid: str, expected: str, why: str, check: str = "verify", **kw: Any) -> None:
        """A vector sealed from the base plan with ``kw``'s changes (context keys apart)."""
        context = {k: v for k, v in kw.items() if k in _CONTEXT}
        context.setdefault("now_ms", NOW_MS)
        plan = varied(self.base, **{k: v for k, v in kw.items() if k not in _CONTEXT})
        data = seal_plan(plan, Drbg(f"negative {vid}"))
        self.out.append(
            vector(f"envelope/{vid}", "envelope", check, data, expected, why, **context)
        )

    def mains(self, plaintext: bytes | None = None, **change: Any) -> list[SectionPlan]:
        """The sections with main's plaintext (or another of its fields) replaced."""
        main = varied(self.main, plaintext=plaintext or self.main.plaintext, **change)
        return [main, self.medical]


def envelope_vectors(world: World) -> list[dict[str, Any]]:
    """Every refusal of an event envelope, each group in the order of §9.2."""
    e = Envelopes(world)
    e.seal("accepted", "OK", "the base of every envelope vector", "admit", ingress_sender=HOSPITAL)
    for group in (_framing, _counts, _shape, _identity, _signature, _opening, _bodies, _policy):
        group(e)
    _order_verify(e)
    _order_later(e)
    return e.out


def _framing(e: Envelopes) -> None:
    good = e.good
    assert good[5] >= 0x80 > good[6]  # the core length takes two bytes (128..16383)
    pad = {"to": MAX_ENVELOPE_BYTES + 1, "byte": 0}
    e.raw("oversize", good[:5], "OVERSIZE", "one byte over 262144", pad=pad)
    e.raw("bad-magic", b"RLT" + good[3:], "BAD_MAGIC", "magic RLT")
    e.raw("version-2", good[:3] + b"\x02" + good[4:], "UNSUPPORTED_VERSION", "version byte 02")
    e.raw("kind-statement", good[:4] + b"\x02" + good[5:], "WRONG_KIND", "kind 02 (a receipt)")
    e.raw("truncated", good[:-10], "TRUNCATED", "the signature is 10 bytes short")
    e.raw("trailing-byte", good + b"\x00", "TRAILING_BYTES", "one byte after the signature")
    overlong = good[:5] + bytes([good[5], good[6] | 0x80, 0x00]) + good[7:]
    e.raw("core-length-overlong", overlong, "VARINT_OVERLONG", "core length in 3 bytes ending 00")
    ten = good[:5] + b"\x80" * 9 + b"\x01" + good[7:]
    e.raw("varint-10-bytes", ten, "VARINT_OVERLONG", "a 10-byte varint (at most 9)")
    beyond = good[:5] + encode_uvarint(len(good)) + good[7:]
    e.raw("core-length-beyond-input", beyond, "LENGTH_EXCEEDS_INPUT", "core length > the input")
    big = good[:5] + encode_uvarint(20_000) + bytes(20_000) + good[7:]
    e.raw("core-over-cap", big, "FIELD_TOO_LARGE", "a 20000-byte core (cap 16384)")


def _counts(e: Envelopes) -> None:
    box = e.world.keys("crip-93").box_pk
    fake = [(f"p-{i:03d}", "0" * 16, box) for i in range(65)]
    everyone = [SectionPlan("main", tuple(p for p, _, _ in fake), e.main.plaintext)]
    e.seal(
        "65-recipients", "TOO_MANY_RECIPIENTS", "65 recipients", recipients=fake, sections=everyone
    )
    fallback = [(f"q-{i:03d}", "0" * 16, box) for i in range(17)]
    e.seal("17-fallback", "TOO_MANY_RECIPIENTS", "17 fallback recipients", fallback=fallback)
    five = [SectionPlan(n, e.main.audience, b"x") for n in ("main", "a", "b", "c", "d")]
    e.seal("5-sections", "TOO_MANY_SECTIONS", "5 sections (at most 4)", sections=five)
    e.seal("departement-4-bytes", "FIELD_TOO_LARGE", "a 4-byte département", departement="9300")


def _shape(e: Envelopes) -> None:
    b, malformed = e.base, "MALFORMED_HEADER"
    e.seal("priority-3", malformed, "priority 3", core_hook=_priority_hook(3))
    e.seal("sender-not-an-id", malformed, "sender is not a partner id", sender_id="Hopital_93")
    e.seal("label-not-utf8", malformed, "département not UTF-8", core_hook=_departement_not_utf8)
    e.seal("expiry-before-creation", malformed, "expires_at = created_at", ttl_ms=0)
    e.seal("ttl-over-90-days", malformed, "expires 90 days + 1 ms on", ttl_ms=90 * 86_400_000 + 1)
    e.seal("medical-first", malformed, "sections not main first", sections=[e.medical, e.main])
    e.seal("core-trailing-byte", "TRAILING_BYTES", "a byte after the core's last section",
           core_hook=lambda c: c + b"\x00")  # fmt: skip
    e.seal("recipients-unsorted", "UNSORTED_RECIPIENTS", "recipients in descending order",
           recipients=list(reversed(b.recipients)), keep_order=True)  # fmt: skip
    e.seal("recipient-twice", "UNSORTED_RECIPIENTS", "a recipient listed twice",
           recipients=[*b.recipients, b.recipients[-1]])  # fmt: skip
    with_me = tuple(sorted([*e.main.audience, HOSPITAL]))
    e.seal("sender-among-recipients", "BAD_AUDIENCE", "the sender is one of its recipients",
           recipients=[*b.recipients, e.world.ref(HOSPITAL)],
           sections=[varied(e.main, audience=with_me), e.medical])  # fmt: skip
    outsider = varied(e.medical, audience=("hotel-93-gare", "parquet-93-bobigny"))
    e.seal("audience-outside-recipients", "BAD_AUDIENCE", "medical audience entry no recipient",
           sections=[e.main, outsider],
           extra_boxes={"hotel-93-gare": e.world.keys("hotel-93-gare").box_pk})  # fmt: skip
    e.seal("main-not-everyone", "BAD_AUDIENCE", "main audience is not recipients ∪ fallback",
           sections=e.mains(audience=e.main.audience[1:]))  # fmt: skip
    e.seal("type-is-a-statement", "UNKNOWN_TYPE", "event_type receipt", type_name=EventType.RECEIPT)
    e.seal("wrong-partnership", "WRONG_PARTNERSHIP", "signed for pilot-75", partnership="pilot-75")
    e.seal("unknown-fingerprint", "UNKNOWN_SCHEMA", "schema_fp of no schema", schema_fp=bytes(32))
    other = default_registry().by_type(EventType.RUNAWAY_ALERT).fingerprint
    e.seal("fingerprint-of-another-type", "UNKNOWN_SCHEMA", "runaway_alert's fp", schema_fp=other)
    psych = [*b.sections, SectionPlan("psych", e.medical.audience, b"x")]
    e.seal("section-not-in-schema", malformed, "a section the schema lacks", sections=psych)


def _identity(e: Envelopes) -> None:
    w = e.world
    e.seal("from-future", "FROM_FUTURE", "created 5 min + 1 ms after now",
           created_ms=NOW_MS + SKEW_MS + 1)  # fmt: skip
    e.seal("future-within-skew", "OK", "created exactly 5 min after now: accepted", "admit",
           created_ms=NOW_MS + SKEW_MS, ingress_sender=HOSPITAL)  # fmt: skip
    e.seal("expired", "EXPIRED", "expires_at 1 ms before now",
           created_ms=NOW_MS - 3_600_000, ttl_ms=3_600_000 - 1)  # fmt: skip
    e.seal("unknown-sender", "UNKNOWN_SENDER", "sender not listed", sender_id="hopital-93-inconnu")
    e.seal("revoked-partner", "REVOKED_PARTNER", "sender revoked", sender=w.keys(REVOKED_PARTNER))
    e.seal("unknown-key", "UNKNOWN_KEY", "key id not the sender's", sender_key_id=_OTHER_KEY)
    e.seal("revoked-key", "REVOKED_KEY", "the key is revoked", sender=w.keys(REVOKED_KEY_PARTNER))
    e.seal("key-not-yet-valid", "KEY_NOT_YET_VALID", "created before the key's not_before",
           sender=w.keys(FUTURE_KEY_PARTNER))  # fmt: skip
    e.seal("key-expired", "EXPIRED_KEY", "created after the key's not_after",
           sender=w.keys(EXPIRED_KEY_PARTNER))  # fmt: skip


def _signature(e: Envelopes) -> None:
    bad = "BAD_SIGNATURE"
    e.seal("signature-s-not-canonical", "NONCANONICAL_SIGNATURE", "S + L in place of S",
           signature_hook=noncanonical_signature)  # fmt: skip
    e.seal("signature-flipped", bad, "one bit of R flipped", signature_hook=flip(0))
    e.seal("signature-receipt-context", bad, "signed under context receipt", context="receipt")
    e.seal("signed-by-another", bad, "crip-93's key signs in the hospital's name",
           signer_sk=e.world.keys("crip-93").sign_sk)  # fmt: skip
    data = seal_plan(e.base, Drbg("negative envelope/ciphertext-changed"))
    changed = flip(_signed_end(data) + 3)(data)
    e.raw("ciphertext-changed", changed, "SECTION_HASH_MISMATCH", "a ciphertext bit flipped")
    last_wrap = flip(len(data) - 64 - 1)(data)
    e.raw("wraps-changed", last_wrap, "SECTION_HASH_MISMATCH", "a bit of the last wrap flipped")


def _opening(e: Envelopes) -> None:
    crip = e.main.audience.index("crip-93")

    def small(w: list[bytes]) -> list[bytes]:
        return [bytes(32) + x[32:] if i == crip else x for i, x in enumerate(w)]

    def swapped(w: list[bytes]) -> list[bytes]:
        w = list(w)
        w[crip], w[crip + 1] = w[crip + 1], w[crip]
        return w

    def opened(vid: str, expected: str, why: str, **kw: Any) -> None:
        kw.setdefault("recipient", "crip-93")
        e.seal(vid, expected, why, "open", **kw)

    other_key = [(p, _OTHER_KEY if p == "crip-93" else k, pk) for p, k, pk in e.base.recipients]
    opened(
        "not-a-recipient", "NOT_A_RECIPIENT", "opened by hotel-93-gare", recipient="hotel-93-gare"
    )
    opened(
        "recipient-key-id", "UNKNOWN_KEY", "crip-93 named with another key", recipients=other_key
    )
    opened("wrap-small-order", "SMALL_ORDER_KEY", "crip-93's wrap: ephemeral key 0",
           wrap_hooks={0: small})  # fmt: skip
    opened("wraps-swapped", "UNWRAP_FAILED", "crip-93 and medref-93's wraps swapped, then signed",
           wrap_hooks={0: swapped})  # fmt: skip
    opened("aead-other-nonce", "DECRYPT_FAILED", "main encrypted under another nonce",
           sections=e.mains(nonce_for_aead=bytes(24)))  # fmt: skip
    opened("ciphertext-shorter-than-tag", "DECRYPT_FAILED", "a 10-byte main ciphertext, signed",
           ct_hooks={0: lambda ct: ct[:10]})  # fmt: skip
    opened("commitment-other-plaintext", "COMMITMENT_MISMATCH", "commitment of another plaintext",
           sections=e.mains(committed=e.main.plaintext + b"\x00"))  # fmt: skip
    routed = dict(e.base.routing, prostitution_suspected="false")
    opened("routing-mismatch", "ROUTING_MISMATCH", "header and content differ",
           routing=routed)  # fmt: skip


def _bodies(e: Envelopes) -> None:
    p, bad, nc = e.main.plaintext, "BODY_DECODE_FAILED", "NONCANONICAL_ENCODING"

    def body(vid: str, plaintext: bytes, expected: str, why: str) -> None:
        e.seal(vid, expected, why, "open", recipient="crip-93", sections=e.mains(plaintext))

    # main: C3 01, CRC (8), child_dept (04 '9' '3'), facts_dept, in_care, guardian_dept union
    body("body-marker", b"\xc3\x02" + p[2:], bad, "single-object marker C3 02")
    body("body-crc", p[:2] + bytes(8) + p[10:], bad, "another schema CRC")
    body("body-truncated", p[:-1], bad, "the body one byte short")
    body("body-trailing", p + b"\x00", bad, "one byte after the record")
    body("boolean-2", _edit(p, 16, b"\x00", b"\x02"), nc, "in_care spelled 02")
    body("varint-overlong", _edit(p, 10, b"\x04", b"\x84\x00"), nc, "a length 2 spelled 84 00")
    eleven = b"\x84" + b"\x80" * 9 + b"\x00"
    body("varint-11-bytes", _edit(p, 10, b"\x04", eleven), nc, "a length in 11 bytes")
    body("union-index-minus-1", _edit(p, 17, b"\x00", b"\x01"), nc, "guardian_dept index -1")
    body("too-many-items", _many_indicators(e.record), "TOO_MANY_ITEMS", "1025 indicators in main")


def _policy(e: Envelopes) -> None:
    b, later = e.base, NOW_MS + MAX_AGE_MS  # a week on: the keys were valid when it was sealed
    other_key = [(p, _OTHER_KEY if p == "crip-93" else k, pk) for p, k, pk in b.recipients]
    leaked = varied(e.medical, audience=tuple(sorted((*e.medical.audience, "crip-93"))))

    def admit(vid: str, expected: str, why: str, **kw: Any) -> None:
        kw.setdefault("ingress_sender", HOSPITAL)
        e.seal(vid, expected, why, "admit", **kw)

    admit("signer-not-ingress", "SIGNER_NOT_INGRESS_IDENTITY", "on ref.in.crip-93",
          ingress_sender="crip-93")  # fmt: skip
    admit("stale", "STALE", "created 7 days + 1 ms before now", created_ms=NOW_MS - 1, now_ms=later)
    admit("sender-not-allowed", "SENDER_NOT_ALLOWED", "a school sends a medical referral",
          sender=e.world.keys("college-93-jaures"), ingress_sender="college-93-jaures")  # fmt: skip
    admit("recipient-missing", "RECIPIENTS_NOT_RULES", "crip-93 left out",
          recipients=b.recipients[1:], sections=e.mains(audience=e.main.audience[1:]))  # fmt: skip
    admit("recipient-key-not-listed", "RECIPIENTS_NOT_RULES", "crip-93 sealed to an unlisted key",
          recipients=other_key)  # fmt: skip
    admit(
        "priority",
        "PRIORITY_NOT_RULES",
        "FLASH where the rule says URGENT",
        priority=Priority.FLASH,
    )
    admit("departement", "DEPARTEMENT_NOT_RULES", "75, the facts are in 93", departement="75")
    admit("audience-not-entitled", "AUDIENCE_NOT_ENTITLED", "the medical section for crip-93",
          sections=[e.main, leaked])  # fmt: skip


def _order_verify(e: Envelopes) -> None:
    """Two faults each: the earlier check of §9.2 decides."""
    short_main = e.mains(audience=e.main.audience[1:])

    def two(vid: str, expected: str, why: str, **kw: Any) -> None:
        e.seal(f"order/{vid}", expected, why, faults=2, **kw)

    two("type-before-priority", "UNKNOWN_TYPE", "unknown type and priority 3",
        type_name=EventType.RECEIPT, core_hook=_priority_hook(3))  # fmt: skip
    two("shape-before-partnership", "BAD_AUDIENCE", "bad main audience, another partnership",
        partnership="pilot-75", sections=short_main)  # fmt: skip
    two("partnership-before-schema", "WRONG_PARTNERSHIP", "another partnership, unknown schema",
        partnership="pilot-75", schema_fp=bytes(32))  # fmt: skip
    two("schema-before-time", "UNKNOWN_SCHEMA", "unknown schema, from the future",
        schema_fp=bytes(32), created_ms=NOW_MS + SKEW_MS + 1)  # fmt: skip
    two("time-before-sender", "EXPIRED", "expired and unknown sender",
        sender_id="hopital-93-inconnu", created_ms=NOW_MS - 10, ttl_ms=5)  # fmt: skip
    two("key-before-signature", "UNKNOWN_KEY", "unknown key and a bad signature",
        sender_key_id=_OTHER_KEY, signature_hook=flip(0))  # fmt: skip
    two("signature-before-digests", "BAD_SIGNATURE", "bad signature, a changed ciphertext",
        signature_hook=flip(0), envelope_hook=lambda d: flip(_signed_end(d) + 3)(d))  # fmt: skip


def _order_later(e: Envelopes) -> None:
    """Two faults each, in opening and router policy."""
    later = NOW_MS + MAX_AGE_MS
    leaked = varied(e.medical, audience=tuple(sorted((*e.medical.audience, "crip-93"))))
    boolean_2 = _edit(e.main.plaintext, 16, b"\x00", b"\x02")
    routed = dict(e.base.routing, prostitution_suspected="false")
    mix = [varied(e.main, committed=b""), varied(e.medical, nonce_for_aead=bytes(24))]

    def two(vid: str, expected: str, why: str, check: str, **kw: Any) -> None:
        if check == "admit":
            kw.setdefault("ingress_sender", HOSPITAL)
        e.seal(f"order/{vid}", expected, why, check, faults=2, **kw)

    two("sections-in-order", "COMMITMENT_MISMATCH", "main's commitment and medical's AEAD fail",
        "open", recipient="parquet-93-bobigny", sections=mix)  # fmt: skip
    two("body-before-routing", "NONCANONICAL_ENCODING", "boolean 2 and a routing mismatch",
        "open", recipient="crip-93", routing=routed, sections=e.mains(boolean_2))  # fmt: skip
    two("verify-before-policy", "UNKNOWN_KEY", "unknown key and a priority not the rules'",
        "admit", priority=Priority.FLASH, sender_key_id=_OTHER_KEY)  # fmt: skip
    two("ingress-before-stale", "SIGNER_NOT_INGRESS_IDENTITY", "stale, on another's ingress",
        "admit", created_ms=NOW_MS - 1, now_ms=later, ingress_sender="crip-93")  # fmt: skip
    two("stale-before-rules", "STALE", "stale and the wrong priority",
        "admit", created_ms=NOW_MS - 1, priority=Priority.FLASH, now_ms=later)  # fmt: skip
    two("recipients-before-priority", "RECIPIENTS_NOT_RULES", "a recipient missing, wrong priority",
        "admit", priority=Priority.FLASH, recipients=e.base.recipients[1:],
        sections=e.mains(audience=e.main.audience[1:]))  # fmt: skip
    two("priority-before-departement", "PRIORITY_NOT_RULES", "wrong priority and département",
        "admit", priority=Priority.FLASH, departement="75")  # fmt: skip
    two("departement-before-audience", "DEPARTEMENT_NOT_RULES", "wrong département, leaked medical",
        "admit", departement="75", sections=[e.main, leaked])  # fmt: skip


# -- byte surgery -----------------------------------------------------------------------------


def _edit(base: bytes, offset: int, old: bytes, new: bytes) -> bytes:
    """``base`` with the bytes at ``offset`` (checked to be ``old``) replaced by ``new``."""
    assert base[offset : offset + len(old)] == old, (base[offset : offset + 8].hex(), old)
    return base[:offset] + new + base[offset + len(old) :]


def _core_offset(core: bytes, field: str) -> int:
    """Offset in a core of ``priority`` or ``departement`` (read as §4 lays the core out)."""
    r = Reader(core)
    r.str_(16), r.raw(16), r.str_(48), r.raw(32), r.str_(64), r.str_(64), r.str_(32)
    if field == "departement":
        r.uvarint()
    return r.position


def _priority_hook(value: int) -> Callable[[bytes], bytes]:
    """Rewrite the priority byte of a core."""

    def hook(core: bytes) -> bytes:
        at = _core_offset(core, "priority")
        return _edit(core, at, core[at : at + 1], bytes([value]))

    return hook


def _departement_not_utf8(core: bytes) -> bytes:
    return _edit(core, _core_offset(core, "departement"), b"\x0293", b"\x02\xff3")


def _signed_end(data: bytes) -> int:
    """Offset of the first ciphertext's length prefix: after MAGIC, KIND, core, digests."""
    r = Reader(data, 5)
    r.bytes_(16384)
    return r.position + 64 * len(peek_header(data).sections)


def _many_indicators(record: dict[str, Any]) -> bytes:
    """Main section of ``record`` with 1025 indicators, written by fastavro (no cap there)."""
    section = default_registry().by_type(EventType.MEDICAL_REFERRAL).sections["main"]
    field = next(f for f in section.parsed["fields"] if f["name"] == "indicators")
    first = field["type"]["items"]["symbols"][0]
    values = {f: record[f] for f in section.fields} | {"indicators": [first] * 1025}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(section.parsed), values)
    return b"\xc3\x01" + section.fp8 + buf.getvalue()


__all__ = ["EventPlan", "envelope_vectors"]
