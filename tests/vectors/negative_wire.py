"""Negative vectors of the binary wire: event envelopes (§4, router policy of §9) and signed
statements (§5). Each builder returns the vector dicts ``generate.py`` writes."""

from __future__ import annotations

import base64
import random
import uuid
from collections.abc import Callable
from typing import Any

import fastavro
from forge import (
    EXPIRED_KEY_PARTNER,
    FUTURE_KEY_PARTNER,
    GATEWAY,
    HOSPITAL,
    MAX_AGE_MS,
    NOW_MS,
    REVOKED_KEY_PARTNER,
    REVOKED_PARTNER,
    SKEW_MS,
    Drbg,
    EventPlan,
    SectionPlan,
    StatementPlan,
    World,
    avro_long,
    avro_string,
    body_of,
    medical_plan,
    receipt_body,
    seal_plan,
    sign_plan,
    varied,
)

from relais.schemas import _crypto
from relais.schemas.domain import EventType, Priority
from relais.schemas.envelope import MAX_ENVELOPE_BYTES, RecipientRef
from relais.schemas.registry import default_registry
from relais.schemas.samples import sample_event
from relais.schemas.statements import MAX_STATEMENT_BYTES
from relais.schemas.wire import encode_uvarint

_L = 2**252 + 27742317777372353535851937790883648493  # order of the Ed25519 base point


def vector(vid: str, target: str, check: str, data: bytes, expected: str, why: str, **more: Any):
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


def _flip(offset: int) -> Callable[[bytes], bytes]:
    def hook(data: bytes) -> bytes:
        return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]

    return hook


def _noncanonical_signature(sig: bytes) -> bytes:
    s = int.from_bytes(sig[32:], "little") + _L
    return sig[:32] + s.to_bytes(32, "little")


def _main_edit(base: bytes, offset: int, old: bytes, new: bytes) -> bytes:
    """The main plaintext with the bytes at ``offset`` (checked to be ``old``) replaced."""
    assert base[offset : offset + len(old)] == old, (base[offset : offset + 8].hex(), old)
    return base[:offset] + new + base[offset + len(old) :]


def envelope_vectors(world: World) -> list[dict[str, Any]]:
    """Every refusal of an event envelope: verification, opening, router policy."""
    record = sample_event(EventType.MEDICAL_REFERRAL, rng=random.Random(2025))
    base = medical_plan(world, record)
    out: list[dict[str, Any]] = []

    def add(vid: str, plan: EventPlan, check: str, expected: str, why: str, **more: Any) -> bytes:
        data = seal_plan(plan, Drbg(f"negative {vid}"))
        out.append(vector(f"envelope/{vid}", "envelope", check, data, expected, why, **more))
        return data

    good = seal_plan(base, Drbg("negative envelope/good"))
    out.append(
        vector(
            "envelope/accepted", "envelope", "admit", good, "OK",
            "the base of every envelope vector: routed by the rules of the edition",
            ingress_sender=HOSPITAL, now_ms=NOW_MS,
        )
    )  # fmt: skip
    assert good[5] >= 0x80 > good[6]  # the core length takes two bytes (128..16383)

    def raw(vid: str, data: bytes, expected: str, why: str, **more: Any) -> None:
        out.append(
            vector(
                f"envelope/{vid}", "envelope", "verify", data, expected, why, now_ms=NOW_MS, **more
            )
        )

    # 1. size, magic, kind
    raw(
        "oversize",
        good[:5],
        "OVERSIZE",
        "one byte over 262144",
        pad={"to": MAX_ENVELOPE_BYTES + 1, "byte": 0},
    )
    raw("bad-magic", b"RLT" + good[3:], "BAD_MAGIC", "magic RLT")
    raw("version-2", good[:3] + b"\x02" + good[4:], "UNSUPPORTED_VERSION", "version byte 02")
    raw(
        "kind-statement",
        good[:4] + b"\x02" + good[5:],
        "WRONG_KIND",
        "kind 02 (a receipt) given as an event",
    )
    # 2. framing
    raw("truncated", good[:-10], "TRUNCATED", "the signature is 10 bytes short")
    raw("trailing-byte", good + b"\x00", "TRAILING_BYTES", "one byte after the signature")
    overlong = good[:5] + bytes([good[5], good[6] | 0x80, 0x00]) + good[7:]
    raw(
        "core-length-overlong",
        overlong,
        "VARINT_OVERLONG",
        "the core length as a 3-byte varint ending in 00",
    )
    ten = good[:5] + b"\x80" * 9 + b"\x01" + good[7:]
    raw("varint-10-bytes", ten, "VARINT_OVERLONG", "a 10-byte varint (at most 9)")
    raw(
        "core-length-beyond-input",
        good[:5] + encode_uvarint(len(good)) + good[7:],
        "LENGTH_EXCEEDS_INPUT",
        "core length beyond the input",
    )
    big = good[:5] + encode_uvarint(20_000) + bytes(20_000) + good[7:]
    raw("core-over-cap", big, "FIELD_TOO_LARGE", "a 20000-byte core (cap 16384) inside the input")
    fake = [(f"p-{i:03d}", "0" * 16, world.keys("crip-93").box_pk) for i in range(65)]
    add(
        "65-recipients",
        varied(
            base,
            recipients=fake,
            sections=[
                SectionPlan("main", tuple(p for p, _, _ in fake), base.sections[0].plaintext)
            ],
        ),
        "verify",
        "TOO_MANY_RECIPIENTS",
        "65 recipients (at most 64)",
        now_ms=NOW_MS,
    )
    fb = [(f"q-{i:03d}", "0" * 16, world.keys("crip-93").box_pk) for i in range(17)]
    add(
        "17-fallback",
        varied(base, fallback=fb),
        "verify",
        "TOO_MANY_RECIPIENTS",
        "17 fallback recipients (at most 16)",
        now_ms=NOW_MS,
    )
    five = [SectionPlan(n, base.sections[0].audience, b"x") for n in ("main", "a", "b", "c", "d")]
    add(
        "5-sections",
        varied(base, sections=five),
        "verify",
        "TOO_MANY_SECTIONS",
        "5 sections (at most 4)",
        now_ms=NOW_MS,
    )
    add(
        "departement-4-bytes",
        varied(base, departement="9300"),
        "verify",
        "FIELD_TOO_LARGE",
        "département of 4 bytes (str(3))",
        now_ms=NOW_MS,
    )
    add(
        "priority-3",
        varied(base, core_hook=_priority_hook(3)),
        "verify",
        "MALFORMED_HEADER",
        "priority 3",
        now_ms=NOW_MS,
    )
    add(
        "sender-not-an-id",
        varied(base, sender_id="Hopital_93"),
        "verify",
        "MALFORMED_HEADER",
        "sender is not a partner id",
        now_ms=NOW_MS,
    )
    add(
        "label-not-utf8",
        varied(base, core_hook=_departement_not_utf8),
        "verify",
        "MALFORMED_HEADER",
        "département bytes not UTF-8",
        now_ms=NOW_MS,
    )
    add(
        "expiry-before-creation",
        varied(base, ttl_ms=0),
        "verify",
        "MALFORMED_HEADER",
        "expires_at = created_at",
        now_ms=NOW_MS,
    )
    add(
        "ttl-over-90-days",
        varied(base, ttl_ms=90 * 86_400_000 + 1),
        "verify",
        "MALFORMED_HEADER",
        "expires_at more than 90 days after created_at",
        now_ms=NOW_MS,
    )
    add(
        "medical-first",
        varied(base, sections=list(reversed(base.sections))),
        "verify",
        "MALFORMED_HEADER",
        "sections not main first",
        now_ms=NOW_MS,
    )
    add(
        "core-trailing-byte",
        varied(base, core_hook=lambda c: c + b"\x00"),
        "verify",
        "TRAILING_BYTES",
        "one byte after the last section of the core",
        now_ms=NOW_MS,
    )
    add(
        "recipients-unsorted",
        varied(base, recipients=list(reversed(base.recipients)), keep_order=True),
        "verify",
        "UNSORTED_RECIPIENTS",
        "recipients in descending order",
        now_ms=NOW_MS,
    )
    dup = [*base.recipients, base.recipients[-1]]
    add(
        "recipient-twice",
        varied(base, recipients=dup),
        "verify",
        "UNSORTED_RECIPIENTS",
        "a recipient listed twice",
        now_ms=NOW_MS,
    )
    me = world.ref(HOSPITAL)
    add(
        "sender-among-recipients",
        varied(
            base,
            recipients=[*base.recipients, me],
            sections=[
                SectionPlan(
                    "main",
                    tuple(sorted([*base.sections[0].audience, HOSPITAL])),
                    base.sections[0].plaintext,
                ),
                base.sections[1],
            ],
        ),
        "verify",
        "BAD_AUDIENCE",
        "the sender is one of its recipients",
        now_ms=NOW_MS,
    )
    outsider = SectionPlan(
        "medical", ("hotel-93-gare", "parquet-93-bobigny"), base.sections[1].plaintext
    )
    add(
        "audience-outside-recipients",
        varied(
            base,
            sections=[base.sections[0], outsider],
            extra_boxes={"hotel-93-gare": world.keys("hotel-93-gare").box_pk},
        ),
        "verify",
        "BAD_AUDIENCE",
        "a medical audience entry that is no recipient",
        now_ms=NOW_MS,
    )
    short_main = SectionPlan("main", base.sections[0].audience[1:], base.sections[0].plaintext)
    add(
        "main-not-everyone",
        varied(base, sections=[short_main, base.sections[1]]),
        "verify",
        "BAD_AUDIENCE",
        "main audience is not recipients ∪ fallback",
        now_ms=NOW_MS,
    )
    add(
        "type-is-a-statement",
        varied(base, type_name=EventType.RECEIPT),
        "verify",
        "UNKNOWN_TYPE",
        "event_type receipt",
        now_ms=NOW_MS,
    )
    add(
        "wrong-partnership",
        varied(base, partnership="pilot-75"),
        "verify",
        "WRONG_PARTNERSHIP",
        "signed for partnership pilot-75",
        now_ms=NOW_MS,
    )
    add(
        "unknown-fingerprint",
        varied(base, schema_fp=bytes(32)),
        "verify",
        "UNKNOWN_SCHEMA",
        "schema_fp of no schema",
        now_ms=NOW_MS,
    )
    other = default_registry().by_type(EventType.RUNAWAY_ALERT).fingerprint
    add(
        "fingerprint-of-another-type",
        varied(base, schema_fp=other),
        "verify",
        "UNKNOWN_SCHEMA",
        "schema_fp of runaway_alert in a medical_referral",
        now_ms=NOW_MS,
    )
    psych = [*base.sections, SectionPlan("psych", base.sections[1].audience, b"x")]
    add(
        "section-not-in-schema",
        varied(base, sections=psych),
        "verify",
        "MALFORMED_HEADER",
        "a section the schema does not have",
        now_ms=NOW_MS,
    )
    add(
        "from-future",
        varied(base, created_ms=NOW_MS + SKEW_MS + 1),
        "verify",
        "FROM_FUTURE",
        "created 5 min + 1 ms after now",
        now_ms=NOW_MS,
    )
    add(
        "future-within-skew",
        varied(base, created_ms=NOW_MS + SKEW_MS),
        "admit",
        "OK",
        "created exactly 5 min after now: accepted",
        now_ms=NOW_MS,
        ingress_sender=HOSPITAL,
    )
    add(
        "expired",
        varied(base, created_ms=NOW_MS - 3_600_000, ttl_ms=3_600_000 - 1),
        "verify",
        "EXPIRED",
        "expires_at 1 ms before now",
        now_ms=NOW_MS,
    )
    stranger = world.keys("crip-93")
    add(
        "unknown-sender",
        varied(base, sender_id="hopital-93-inconnu"),
        "verify",
        "UNKNOWN_SENDER",
        "sender not in the directory",
        now_ms=NOW_MS,
    )
    add(
        "revoked-partner",
        varied(base, sender=world.keys(REVOKED_PARTNER)),
        "verify",
        "REVOKED_PARTNER",
        "sender revoked in the directory",
        now_ms=NOW_MS,
    )
    add(
        "unknown-key",
        varied(base, sender_key_id="0123456789abcdef"),
        "verify",
        "UNKNOWN_KEY",
        "key id not the sender's",
        now_ms=NOW_MS,
    )
    add(
        "revoked-key",
        varied(base, sender=world.keys(REVOKED_KEY_PARTNER)),
        "verify",
        "REVOKED_KEY",
        "the sender's key is revoked",
        now_ms=NOW_MS,
    )
    add(
        "key-not-yet-valid",
        varied(base, sender=world.keys(FUTURE_KEY_PARTNER)),
        "verify",
        "KEY_NOT_YET_VALID",
        "created before the key's not_before",
        now_ms=NOW_MS,
    )
    add(
        "key-expired",
        varied(base, sender=world.keys(EXPIRED_KEY_PARTNER)),
        "verify",
        "EXPIRED_KEY",
        "created after the key's not_after",
        now_ms=NOW_MS,
    )
    add(
        "signature-s-not-canonical",
        varied(base, signature_hook=_noncanonical_signature),
        "verify",
        "NONCANONICAL_SIGNATURE",
        "S + L in place of S",
        now_ms=NOW_MS,
    )
    add(
        "signature-flipped",
        varied(base, signature_hook=_flip(0)),
        "verify",
        "BAD_SIGNATURE",
        "one bit of R flipped",
        now_ms=NOW_MS,
    )
    add(
        "signature-receipt-context",
        varied(base, context="receipt"),
        "verify",
        "BAD_SIGNATURE",
        "signed under context receipt (domain separation)",
        now_ms=NOW_MS,
    )
    add(
        "signed-by-another",
        varied(base, signer_sk=stranger.sign_sk),
        "verify",
        "BAD_SIGNATURE",
        "signed by crip-93's key in the hospital's name",
        now_ms=NOW_MS,
    )
    data = seal_plan(base, Drbg("negative envelope/ciphertext-changed"))
    end_of_signed = _signed_end(data)
    raw(
        "ciphertext-changed",
        _flip(end_of_signed + 3)(data),
        "SECTION_HASH_MISMATCH",
        "one bit of the first ciphertext flipped after signing",
    )
    raw(
        "wraps-changed",
        _flip(len(data) - 64 - 1)(data),
        "SECTION_HASH_MISMATCH",
        "one bit of the last wrap flipped after signing",
    )

    # 3. opening (recipient crip-93 unless said)
    crip_index = base.sections[0].audience.index("crip-93")
    add(
        "not-a-recipient",
        base,
        "open",
        "NOT_A_RECIPIENT",
        "opened by hotel-93-gare",
        now_ms=NOW_MS,
        recipient="hotel-93-gare",
    )
    wrong_ref = [
        (p, "0123456789abcdef" if p == "crip-93" else k, pk) for p, k, pk in base.recipients
    ]
    add(
        "recipient-key-id",
        varied(base, recipients=wrong_ref),
        "open",
        "UNKNOWN_KEY",
        "the header names another key of crip-93",
        now_ms=NOW_MS,
        recipient="crip-93",
    )

    def wraps(
        hook: Callable[[list[bytes]], list[bytes]],
    ) -> dict[int, Callable[[list[bytes]], list[bytes]]]:
        return {0: hook}

    def small(w: list[bytes]) -> list[bytes]:
        return [bytes(32) + x[32:] if i == crip_index else x for i, x in enumerate(w)]

    def swapped(w: list[bytes]) -> list[bytes]:
        w = list(w)
        w[crip_index], w[crip_index + 1] = w[crip_index + 1], w[crip_index]
        return w

    add(
        "wrap-small-order",
        varied(base, wrap_hooks=wraps(small)),
        "open",
        "SMALL_ORDER_KEY",
        "crip-93's wrap has an all-zero ephemeral key",
        now_ms=NOW_MS,
        recipient="crip-93",
    )
    add(
        "wraps-swapped",
        varied(base, wrap_hooks=wraps(swapped)),
        "open",
        "UNWRAP_FAILED",
        "crip-93 and medref-93's wraps swapped (then signed)",
        now_ms=NOW_MS,
        recipient="crip-93",
    )
    main, medical = base.sections
    add(
        "aead-other-nonce",
        varied(
            base,
            sections=[
                SectionPlan("main", main.audience, main.plaintext, nonce_for_aead=bytes(24)),
                medical,
            ],
        ),
        "open",
        "DECRYPT_FAILED",
        "main encrypted under another nonce than the header's",
        now_ms=NOW_MS,
        recipient="crip-93",
    )
    add(
        "ciphertext-shorter-than-tag",
        varied(base, ct_hooks={0: lambda ct: ct[:10]}),
        "open",
        "DECRYPT_FAILED",
        "a 10-byte main ciphertext (signed)",
        now_ms=NOW_MS,
        recipient="crip-93",
    )
    add(
        "commitment-other-plaintext",
        varied(
            base,
            sections=[
                SectionPlan(
                    "main", main.audience, main.plaintext, committed=main.plaintext + b"\x00"
                ),
                medical,
            ],
        ),
        "open",
        "COMMITMENT_MISMATCH",
        "the commitment names another plaintext",
        now_ms=NOW_MS,
        recipient="crip-93",
    )

    def body(vid: str, plaintext: bytes, expected: str, why: str, reader: str = "crip-93") -> None:
        plan = varied(base, sections=[SectionPlan("main", main.audience, plaintext), medical])
        add(vid, plan, "open", expected, why, now_ms=NOW_MS, recipient=reader)

    p = main.plaintext
    body("body-marker", b"\xc3\x02" + p[2:], "BODY_DECODE_FAILED", "single-object marker C3 02")
    body("body-crc", p[:2] + bytes(8) + p[10:], "BODY_DECODE_FAILED", "another schema CRC")
    body("body-truncated", p[:-1], "BODY_DECODE_FAILED", "the body one byte short")
    body("body-trailing", p + b"\x00", "BODY_DECODE_FAILED", "one byte after the record")
    body(
        "boolean-2",
        _main_edit(p, 16, b"\x00", b"\x02"),
        "NONCANONICAL_ENCODING",
        "in_care spelled 02 (true to fastavro, false to avro)",
    )
    body(
        "varint-overlong",
        _main_edit(p, 10, b"\x04", b"\x84\x00"),
        "NONCANONICAL_ENCODING",
        "child_dept length 2 spelled 84 00",
    )
    body(
        "varint-11-bytes",
        _main_edit(p, 10, b"\x04", b"\x84" + b"\x80" * 9 + b"\x00"),
        "NONCANONICAL_ENCODING",
        "child_dept length in 11 bytes",
    )
    body(
        "union-index-minus-1",
        _main_edit(p, 17, b"\x00", b"\x01"),
        "NONCANONICAL_ENCODING",
        "guardian_dept union index -1",
    )
    body(
        "too-many-items",
        _many_indicators(record),
        "TOO_MANY_ITEMS",
        "1025 indicators in main (cap 1024)",
    )
    routed = dict(base.routing, prostitution_suspected="false")
    add(
        "routing-mismatch",
        varied(base, routing=routed),
        "open",
        "ROUTING_MISMATCH",
        "header says prostitution_suspected=false, content true",
        now_ms=NOW_MS,
        recipient="crip-93",
    )

    # 4. router policy (admit), after verification
    def admit(
        vid: str,
        plan: EventPlan,
        expected: str,
        why: str,
        *,
        sender: str = HOSPITAL,
        now: int = NOW_MS,
    ) -> None:
        add(vid, plan, "admit", expected, why, now_ms=now, ingress_sender=sender)

    admit(
        "signer-not-ingress",
        base,
        "SIGNER_NOT_INGRESS_IDENTITY",
        "published on ref.in.crip-93",
        sender="crip-93",
    )
    later = NOW_MS + MAX_AGE_MS  # a clock a week on: the keys were valid when it was sealed
    admit(
        "stale",
        varied(base, created_ms=NOW_MS - 1),
        "STALE",
        "created 7 days + 1 ms before now",
        now=later,
    )
    school = world.keys("college-93-jaures")
    admit(
        "sender-not-allowed",
        varied(base, sender=school),
        "SENDER_NOT_ALLOWED",
        "a school sends a medical referral",
        sender="college-93-jaures",
    )
    admit(
        "recipient-missing",
        varied(
            base,
            recipients=base.recipients[1:],
            sections=[SectionPlan("main", main.audience[1:], main.plaintext), medical],
        ),
        "RECIPIENTS_NOT_RULES",
        "crip-93 left out",
    )
    admit(
        "recipient-key-not-listed",
        varied(base, recipients=wrong_ref),
        "RECIPIENTS_NOT_RULES",
        "crip-93 sealed to a key id the directory does not list",
    )
    admit(
        "priority",
        varied(base, priority=Priority.FLASH),
        "PRIORITY_NOT_RULES",
        "FLASH where the rule says URGENT",
    )
    admit(
        "departement",
        varied(base, departement="75"),
        "DEPARTEMENT_NOT_RULES",
        "département 75, the facts are in 93",
    )
    leaked = SectionPlan(
        "medical", tuple(sorted((*medical.audience, "crip-93"))), medical.plaintext
    )
    admit(
        "audience-not-entitled",
        varied(base, sections=[main, leaked]),
        "AUDIENCE_NOT_ENTITLED",
        "the medical section wrapped for crip-93",
    )

    # 5. two faults: the first check in the documented order decides
    def two(vid: str, plan: EventPlan, check: str, expected: str, why: str, **more: Any) -> None:
        add(
            f"order/{vid}",
            plan,
            check,
            expected,
            why,
            now_ms=more.pop("now", NOW_MS),
            faults=2,
            **more,
        )

    two(
        "type-before-priority",
        varied(base, type_name=EventType.RECEIPT, core_hook=_priority_hook(3)),
        "verify",
        "UNKNOWN_TYPE",
        "unknown type and priority 3",
    )
    two(
        "shape-before-partnership",
        varied(base, partnership="pilot-75", sections=[short_main, medical]),
        "verify",
        "BAD_AUDIENCE",
        "bad main audience and another partnership",
    )
    two(
        "partnership-before-schema",
        varied(base, partnership="pilot-75", schema_fp=bytes(32)),
        "verify",
        "WRONG_PARTNERSHIP",
        "another partnership and an unknown schema",
    )
    two(
        "schema-before-time",
        varied(base, schema_fp=bytes(32), created_ms=NOW_MS + SKEW_MS + 1),
        "verify",
        "UNKNOWN_SCHEMA",
        "unknown schema and from the future",
    )
    two(
        "time-before-sender",
        varied(base, sender_id="hopital-93-inconnu", created_ms=NOW_MS - 10, ttl_ms=5),
        "verify",
        "EXPIRED",
        "expired and unknown sender",
    )
    two(
        "key-before-signature",
        varied(base, sender_key_id="0123456789abcdef", signature_hook=_flip(0)),
        "verify",
        "UNKNOWN_KEY",
        "unknown key and a bad signature",
    )
    two(
        "signature-before-digests",
        varied(base, signature_hook=_flip(0), envelope_hook=lambda d: _flip(_signed_end(d) + 3)(d)),
        "verify",
        "BAD_SIGNATURE",
        "bad signature; a ciphertext is also not the signed one",
    )
    two(
        "sections-in-order",
        varied(
            base,
            sections=[
                SectionPlan("main", main.audience, main.plaintext, committed=b""),
                SectionPlan(
                    "medical", medical.audience, medical.plaintext, nonce_for_aead=bytes(24)
                ),
            ],
        ),
        "open",
        "COMMITMENT_MISMATCH",
        "main's commitment and medical's AEAD both fail",
        recipient="parquet-93-bobigny",
    )
    two(
        "body-before-routing",
        varied(
            base,
            routing=routed,
            sections=[
                SectionPlan("main", main.audience, _main_edit(p, 16, b"\x00", b"\x02")),
                medical,
            ],
        ),
        "open",
        "NONCANONICAL_ENCODING",
        "boolean 2 and a routing mismatch",
        recipient="crip-93",
    )
    two(
        "verify-before-policy",
        varied(base, priority=Priority.FLASH, sender_key_id="0123456789abcdef"),
        "admit",
        "UNKNOWN_KEY",
        "unknown key and a priority the rules do not give",
        ingress_sender=HOSPITAL,
    )
    two(
        "ingress-before-stale",
        varied(base, created_ms=NOW_MS - 1),
        "admit",
        "SIGNER_NOT_INGRESS_IDENTITY",
        "stale and published by another partner",
        ingress_sender="crip-93",
        now=later,
    )
    two(
        "stale-before-rules",
        varied(base, created_ms=NOW_MS - 1, priority=Priority.FLASH),
        "admit",
        "STALE",
        "stale and the wrong priority",
        ingress_sender=HOSPITAL,
        now=later,
    )
    two(
        "recipients-before-priority",
        varied(
            base,
            priority=Priority.FLASH,
            departement="75",
            recipients=base.recipients[1:],
            sections=[SectionPlan("main", main.audience[1:], main.plaintext), medical],
        ),
        "admit",
        "RECIPIENTS_NOT_RULES",
        "missing recipient, wrong priority and département",
        ingress_sender=HOSPITAL,
    )
    two(
        "priority-before-departement",
        varied(base, priority=Priority.FLASH, departement="75"),
        "admit",
        "PRIORITY_NOT_RULES",
        "wrong priority and département",
        ingress_sender=HOSPITAL,
    )
    two(
        "departement-before-audience",
        varied(base, departement="75", sections=[main, leaked]),
        "admit",
        "DEPARTEMENT_NOT_RULES",
        "wrong département and a leaked medical section",
        ingress_sender=HOSPITAL,
    )
    return out


def _core_offset(core: bytes, field: str) -> int:
    """Offset in a core of ``priority`` or ``departement`` (read as §4 lays the core out)."""
    from relais.schemas.wire import Reader

    r = Reader(core)
    r.str_(16), r.raw(16), r.str_(48), r.raw(32), r.str_(64), r.str_(64), r.str_(32)
    if field == "departement":
        r.uvarint()
    return r.position


def _priority_hook(value: int) -> Callable[[bytes], bytes]:
    """Rewrite the priority byte of a core."""

    def hook(core: bytes) -> bytes:
        at = _core_offset(core, "priority")
        assert core[at] in (0, 1, 2)
        return core[:at] + bytes([value]) + core[at + 1 :]

    return hook


def _departement_not_utf8(core: bytes) -> bytes:
    at = _core_offset(core, "departement")
    assert core[at : at + 3] == b"\x0293"
    return core[: at + 1] + b"\xff" + core[at + 2 :]


def _signed_end(data: bytes) -> int:
    """Offset of the first ciphertext's length prefix: after MAGIC, KIND, core, digests."""
    from relais.schemas.envelope import peek_header
    from relais.schemas.wire import Reader

    r = Reader(data, 5)
    r.bytes_(16384)
    return r.position + 64 * len(peek_header(data).sections)


def _many_indicators(record: dict[str, Any]) -> bytes:
    """Main section of ``record`` with 1025 indicators, written by fastavro (no cap there)."""
    schema = default_registry().by_type(EventType.MEDICAL_REFERRAL)
    section = schema.sections["main"]
    symbols = next(f for f in section.parsed["fields"] if f["name"] == "indicators")
    first = symbols["type"]["items"]["symbols"][0]
    values = {f: record[f] for f in section.fields} | {"indicators": [first] * 1025}
    import io

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(section.parsed), values)
    return b"\xc3\x01" + section.fp8 + buf.getvalue()


# -- statements -------------------------------------------------------------------------------


def _entry(event_id: uuid.UUID, state: int, at_ms: int, *, outcome: int | None = None) -> bytes:
    """One receipt entry by hand: event_id, state index, decline_reason null, outcome, at."""
    tail = avro_long(0) if outcome is None else avro_long(1) + avro_long(outcome)
    return avro_string(str(event_id)) + avro_long(state) + avro_long(0) + tail + avro_long(at_ms)


def statement_vectors(world: World) -> list[dict[str, Any]]:
    """Every refusal of a signed statement (receipts, rejections, notices)."""
    crip = world.keys("crip-93")
    eid = uuid.UUID("019a8012-4c0d-7a6a-84a2-cbcc0c5c7fd0")
    record = {
        "recipient": "crip-93",
        "entries": [
            {
                "event_id": eid,
                "state": "DELIVERED",
                "decline_reason": None,
                "outcome": None,
                "at": _dt(NOW_MS - 90_000),
            }
        ],
    }
    good_body = body_of(EventType.RECEIPT, record)
    header = good_body[:10]
    entry = _entry(eid, 0, NOW_MS - 90_000)
    assert receipt_body("crip-93", [[entry]], header=header) == good_body
    base = StatementPlan(EventType.RECEIPT, crip, good_body)
    out: list[dict[str, Any]] = []

    def add(
        vid: str, data: bytes, expected: str, why: str, *, check: str = "verify", **more: Any
    ) -> None:
        more.setdefault("now_ms", NOW_MS)
        out.append(vector(f"statement/{vid}", "statement", check, data, expected, why, **more))

    def plan(vid: str, p: StatementPlan, expected: str, why: str, **more: Any) -> None:
        add(vid, sign_plan(p), expected, why, **more)

    good = sign_plan(base)
    add(
        "accepted",
        good,
        "OK",
        "the base of every statement vector: crip-93's receipt",
        expected_kind="receipt",
    )
    add(
        "oversize",
        good[:5],
        "OVERSIZE",
        "one byte over 65536",
        pad={"to": MAX_STATEMENT_BYTES + 1, "byte": 0},
    )
    add("bad-magic", b"XLS" + good[3:], "BAD_MAGIC", "magic XLS")
    add("version-2", good[:3] + b"\x02" + good[4:], "UNSUPPORTED_VERSION", "version byte 02")
    add("kind-6", good[:4] + b"\x06" + good[5:], "WRONG_KIND", "kind 06 is no statement")
    add(
        "kind-event",
        good[:4] + b"\x01" + good[5:],
        "WRONG_KIND",
        "kind 01 (an event) given as a statement",
    )
    add(
        "kind-not-expected",
        good,
        "WRONG_KIND",
        "a receipt where a rejection is expected",
        expected_kind="rejection",
    )
    add("truncated", good[:-1], "TRUNCATED", "the signature one byte short")
    add("trailing-byte", good + b"\x00", "TRAILING_BYTES", "one byte after the signature")
    at = 5 + 1 + len(b"pilot-93") + 1 + len(b"crip-93") + 1 + 16
    overlong = (
        good[:at]
        + encode_uvarint(NOW_MS - 60_000)[:-1]
        + bytes([good[at + 5] | 0x80, 0])
        + good[at + 6 :]
    )
    assert encode_uvarint(NOW_MS - 60_000) == good[at : at + 6]
    add("created-overlong", overlong, "VARINT_OVERLONG", "created_at in 7 bytes ending in 00")
    add(
        "partnership-beyond-input",
        good[:5] + b"\xff\x7f" + good[6:],
        "LENGTH_EXCEEDS_INPUT",
        "partnership length beyond the input",
    )
    plan(
        "signer-over-cap",
        varied(base, signer_id="c" * 65),
        "FIELD_TOO_LARGE",
        "a 65-byte signer (str(64))",
    )
    plan(
        "signer-not-an-id",
        varied(base, signer_id="CRIP 93"),
        "MALFORMED_HEADER",
        "signer is not a partner id",
    )
    plan(
        "wrong-partnership",
        varied(base, partnership="pilot-75"),
        "WRONG_PARTNERSHIP",
        "signed for partnership pilot-75",
    )
    plan(
        "unknown-fingerprint",
        varied(base, schema_fp=bytes(32)),
        "UNKNOWN_SCHEMA",
        "schema_fp of no schema",
    )
    medical_fp = default_registry().by_type(EventType.MEDICAL_REFERRAL).fingerprint
    plan(
        "fingerprint-of-an-event",
        varied(base, schema_fp=medical_fp),
        "UNKNOWN_SCHEMA",
        "the fingerprint of medical_referral in a receipt",
    )
    plan(
        "from-future",
        varied(base, created_ms=NOW_MS + SKEW_MS + 1),
        "FROM_FUTURE",
        "created 5 min + 1 ms after now",
    )
    plan(
        "unknown-signer",
        varied(base, signer_id="crip-94"),
        "UNKNOWN_SENDER",
        "signer not in the directory",
    )
    plan(
        "revoked-partner",
        varied(base, signer=world.keys(REVOKED_PARTNER)),
        "REVOKED_PARTNER",
        "signer revoked",
    )
    plan(
        "unknown-key",
        varied(base, key_id="0123456789abcdef"),
        "UNKNOWN_KEY",
        "key id not the signer's",
    )
    plan(
        "revoked-key",
        varied(base, signer=world.keys(REVOKED_KEY_PARTNER)),
        "REVOKED_KEY",
        "the signer's key is revoked",
    )
    plan(
        "key-not-yet-valid",
        varied(base, signer=world.keys(FUTURE_KEY_PARTNER)),
        "KEY_NOT_YET_VALID",
        "the signer's key starts in 10 days",
    )
    plan(
        "key-expired-backdated",
        varied(base, signer=world.keys(EXPIRED_KEY_PARTNER), created_ms=NOW_MS - 2 * 3_600_000),
        "EXPIRED_KEY",
        "backdated into its key's validity: judged at max(created_at, now - skew)",
    )
    plan(
        "signature-s-not-canonical",
        varied(base, signature_hook=_noncanonical_signature),
        "NONCANONICAL_SIGNATURE",
        "S + L in place of S",
    )
    plan(
        "signature-flipped",
        varied(base, signature_hook=_flip(5)),
        "BAD_SIGNATURE",
        "one bit of R flipped",
    )
    plan(
        "signature-event-context",
        varied(base, context="event"),
        "BAD_SIGNATURE",
        "signed under context event (domain separation)",
    )
    plan(
        "signature-rejection-context",
        varied(base, context="rejection"),
        "BAD_SIGNATURE",
        "a receipt signed under context rejection",
    )

    def body(vid: str, raw_body: bytes, expected: str, why: str) -> None:
        plan(vid, varied(base, body=raw_body), expected, why)

    e_state = avro_string(str(eid)) + avro_long(0)
    tail = entry[len(e_state) :]
    body(
        "enum-index-9",
        receipt_body("crip-93", [[avro_string(str(eid)) + avro_long(9) + tail]], header=header),
        "NONCANONICAL_ENCODING",
        "state enum index 9 of 4",
    )
    body(
        "array-two-blocks",
        receipt_body("crip-93", [[entry], [entry]], header=header),
        "NONCANONICAL_ENCODING",
        "entries in two blocks of one",
    )
    negative = (
        header + avro_string("crip-93") + avro_long(-1) + avro_long(len(entry)) + entry + b"\x00"
    )
    body(
        "array-sized-block",
        negative,
        "NONCANONICAL_ENCODING",
        "a block with a negative count (sized block)",
    )
    body(
        "union-index-minus-1",
        receipt_body("crip-93", [[e_state + avro_long(-1) + tail[1:]]], header=header),
        "NONCANONICAL_ENCODING",
        "decline_reason union index -1",
    )
    body(
        "too-many-entries",
        receipt_body("crip-93", [[entry] * 1025], header=header),
        "TOO_MANY_ITEMS",
        "1025 entries (cap 1024)",
    )
    body("body-trailing", good_body + b"\x00", "BODY_DECODE_FAILED", "one byte after the record")
    body(
        "body-crc",
        good_body[:2] + bytes(8) + good_body[10:],
        "BODY_DECODE_FAILED",
        "another schema CRC",
    )

    # from the gateway only: rejections and notices (the receiver's rule after verification)
    rejection = sample_event(EventType.REJECTION, rng=random.Random(3), alert_sender=HOSPITAL)
    forged = StatementPlan(EventType.REJECTION, crip, body_of(EventType.REJECTION, rejection))
    plan(
        "rejection-accepted",
        varied(forged, signer=world.keys(GATEWAY)),
        "OK",
        "a rejection signed by the gateway",
        check="from_gateway",
    )
    plan(
        "rejection-not-from-gateway",
        forged,
        "SIGNER_NOT_GATEWAY",
        "a rejection signed by crip-93",
        check="from_gateway",
    )

    # two faults
    def two(vid: str, data: bytes, expected: str, why: str, **more: Any) -> None:
        add(f"order/{vid}", data, expected, why, faults=2, **more)

    two(
        "kind-before-framing",
        (good[:4] + b"\x06" + good[5:])[:-1],
        "WRONG_KIND",
        "kind 06 and truncated",
    )
    two(
        "framing-before-shape",
        sign_plan(varied(base, signer_id="CRIP 93")) + b"\x00",
        "TRAILING_BYTES",
        "a bad signer id and a trailing byte",
    )
    two(
        "shape-before-partnership",
        sign_plan(varied(base, signer_id="CRIP 93", partnership="pilot-75")),
        "MALFORMED_HEADER",
        "bad signer id and another partnership",
    )
    two(
        "partnership-before-schema",
        sign_plan(varied(base, partnership="pilot-75", schema_fp=bytes(32))),
        "WRONG_PARTNERSHIP",
        "another partnership and an unknown schema",
    )
    two(
        "schema-before-future",
        sign_plan(varied(base, schema_fp=bytes(32), created_ms=NOW_MS + SKEW_MS + 1)),
        "UNKNOWN_SCHEMA",
        "unknown schema, from the future",
    )
    two(
        "future-before-key",
        sign_plan(varied(base, key_id="0123456789abcdef", created_ms=NOW_MS + SKEW_MS + 1)),
        "FROM_FUTURE",
        "from the future, unknown key",
    )
    two(
        "signature-before-body",
        sign_plan(varied(base, body=good_body + b"\x00", signature_hook=_flip(5))),
        "BAD_SIGNATURE",
        "bad signature and a trailing body byte",
    )
    two(
        "verify-before-gateway",
        sign_plan(varied(forged, signature_hook=_flip(5))),
        "BAD_SIGNATURE",
        "not from the gateway and badly signed",
        check="from_gateway",
    )
    return out


def _dt(ms: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC)


__all__ = ["RecipientRef", "_crypto", "envelope_vectors", "statement_vectors", "vector"]
