"""Negative vectors of signed statements (§5, §9.2): receipts, and rejections that must come
from the gateway. :func:`statement_vectors` returns the vector dicts ``generate.py`` writes."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

from forge import (
    EXPIRED_KEY_PARTNER,
    FUTURE_KEY_PARTNER,
    GATEWAY,
    HOSPITAL,
    NOW_MS,
    REVOKED_KEY_PARTNER,
    REVOKED_PARTNER,
    SKEW_MS,
    StatementPlan,
    World,
    avro_long,
    avro_string,
    body_of,
    flip,
    noncanonical_signature,
    receipt_body,
    sign_plan,
    varied,
    vector,
)

from relais.schemas.domain import EventType
from relais.schemas.registry import default_registry
from relais.schemas.samples import sample_event
from relais.schemas.statements import MAX_STATEMENT_BYTES
from relais.schemas.wire import encode_uvarint

_EVENT_ID = uuid.UUID("019a8012-4c0d-7a6a-84a2-cbcc0c5c7fd0")
_AT_MS = NOW_MS - 90_000
_OTHER_KEY = "0123456789abcdef"


class Statements:
    """Collects statement vectors made from crip-93's receipt."""

    def __init__(self, world: World) -> None:
        self.world = world
        record = {
            "recipient": "crip-93",
            "entries": [
                {
                    "event_id": _EVENT_ID,
                    "state": "DELIVERED",
                    "decline_reason": None,
                    "outcome": None,
                    "at": datetime.fromtimestamp(_AT_MS / 1000, UTC),
                }
            ],
        }
        self.body = body_of(EventType.RECEIPT, record)
        self.header = self.body[:10]  # C3 01 and the schema's CRC
        # one entry by hand: event_id, state DELIVERED, decline_reason null, outcome null, at
        self.head = avro_string(str(_EVENT_ID)) + avro_long(0)
        self.entry = self.head + avro_long(0) + avro_long(0) + avro_long(_AT_MS)
        assert receipt_body("crip-93", [[self.entry]], header=self.header) == self.body
        self.base = StatementPlan(EventType.RECEIPT, world.keys("crip-93"), self.body)
        self.good = sign_plan(self.base)
        self.out: list[dict[str, Any]] = []

    def raw(self, vid: str, data: bytes, expected: str, why: str, **more: Any) -> None:
        """A vector of given bytes."""
        check = more.pop("check", "verify")
        more.setdefault("now_ms", NOW_MS)
        self.out.append(vector(f"statement/{vid}", "statement", check, data, expected, why, **more))

    def sign(self, vid: str, expected: str, why: str, **kw: Any) -> None:
        """A vector signed from the base plan with ``kw``'s changes."""
        context = {k: kw.pop(k) for k in ("check", "faults", "plan") if k in kw}
        plan = context.pop("plan", self.base)
        self.raw(vid, sign_plan(varied(plan, **kw)), expected, why, **context)

    def receipt(self, *blocks: list[bytes]) -> bytes:
        """A receipt body whose entries are written in ``blocks``."""
        return receipt_body("crip-93", list(blocks), header=self.header)


def statement_vectors(world: World) -> list[dict[str, Any]]:
    """Every refusal of a signed statement, in the order of §9.2."""
    s = Statements(world)
    s.raw("accepted", s.good, "OK", "crip-93's receipt", expected_kind="receipt")
    for group in (_framing, _header, _identity, _bodies, _gateway, _order):
        group(s)
    return s.out


def _framing(s: Statements) -> None:
    good = s.good
    pad = {"to": MAX_STATEMENT_BYTES + 1, "byte": 0}
    s.raw("oversize", good[:5], "OVERSIZE", "one byte over 65536", pad=pad)
    s.raw("bad-magic", b"XLS" + good[3:], "BAD_MAGIC", "magic XLS")
    s.raw("version-2", good[:3] + b"\x02" + good[4:], "UNSUPPORTED_VERSION", "version byte 02")
    s.raw("kind-6", good[:4] + b"\x06" + good[5:], "WRONG_KIND", "kind 06 is no statement")
    s.raw("kind-event", good[:4] + b"\x01" + good[5:], "WRONG_KIND", "kind 01 (an event)")
    s.raw("kind-not-expected", good, "WRONG_KIND", "a receipt where a rejection is expected",
          expected_kind="rejection")  # fmt: skip
    s.raw("truncated", good[:-1], "TRUNCATED", "the signature one byte short")
    s.raw("trailing-byte", good + b"\x00", "TRAILING_BYTES", "one byte after the signature")
    at = 5 + 1 + len(b"pilot-93") + 1 + len(b"crip-93") + 1 + 16  # created_at
    created = encode_uvarint(s.base.created_ms)
    assert good[at : at + len(created)] == created
    assert len(created) == 6
    longer = created[:-1] + bytes([created[-1] | 0x80, 0])
    overlong = good[:at] + longer + good[at + len(created) :]
    s.raw("created-overlong", overlong, "VARINT_OVERLONG", "created_at in 7 bytes ending in 00")
    beyond = good[:5] + b"\xff\x7f" + good[6:]
    s.raw("partnership-beyond-input", beyond, "LENGTH_EXCEEDS_INPUT", "a length > the input")


def _header(s: Statements) -> None:
    medical = default_registry().by_type(EventType.MEDICAL_REFERRAL).fingerprint
    s.sign("signer-over-cap", "FIELD_TOO_LARGE", "a 65-byte signer (str(64))", signer_id="c" * 65)
    s.sign("signer-not-an-id", "MALFORMED_HEADER", "signer not a partner id", signer_id="CRIP 93")
    s.sign("wrong-partnership", "WRONG_PARTNERSHIP", "signed for pilot-75", partnership="pilot-75")
    s.sign("unknown-fingerprint", "UNKNOWN_SCHEMA", "schema_fp of no schema", schema_fp=bytes(32))
    s.sign("fingerprint-of-an-event", "UNKNOWN_SCHEMA", "medical_referral's fp in a receipt",
           schema_fp=medical)  # fmt: skip
    s.sign("from-future", "FROM_FUTURE", "created 5 min + 1 ms after now",
           created_ms=NOW_MS + SKEW_MS + 1)  # fmt: skip


def _identity(s: Statements) -> None:
    w = s.world
    s.sign("unknown-signer", "UNKNOWN_SENDER", "signer not in the directory", signer_id="crip-94")
    s.sign("revoked-partner", "REVOKED_PARTNER", "signer revoked", signer=w.keys(REVOKED_PARTNER))
    s.sign("unknown-key", "UNKNOWN_KEY", "key id not the signer's", key_id=_OTHER_KEY)
    s.sign("revoked-key", "REVOKED_KEY", "key revoked", signer=w.keys(REVOKED_KEY_PARTNER))
    s.sign("key-not-yet-valid", "KEY_NOT_YET_VALID", "the signer's key starts in 10 days",
           signer=w.keys(FUTURE_KEY_PARTNER))  # fmt: skip
    s.sign("key-expired-backdated", "EXPIRED_KEY",
           "backdated into its key's validity: judged at max(created_at, now - skew)",
           signer=w.keys(EXPIRED_KEY_PARTNER), created_ms=NOW_MS - 2 * 3_600_000)  # fmt: skip
    bad = "BAD_SIGNATURE"
    s.sign("signature-s-not-canonical", "NONCANONICAL_SIGNATURE", "S + L in place of S",
           signature_hook=noncanonical_signature)  # fmt: skip
    s.sign("signature-flipped", bad, "one bit of R flipped", signature_hook=flip(5))
    s.sign("signature-event-context", bad, "signed under context event", context="event")
    s.sign("signature-rejection-context", bad, "signed as a rejection", context="rejection")


def _bodies(s: Statements) -> None:
    nc, entry, tail = "NONCANONICAL_ENCODING", s.entry, s.entry[len(s.head) :]
    state_9 = avro_string(str(_EVENT_ID)) + avro_long(9) + tail
    sized = s.header + avro_string("crip-93") + avro_long(-1) + avro_long(len(entry)) + entry
    minus_1 = s.head + avro_long(-1) + tail[1:]  # decline_reason's union index
    cases = [
        ("enum-index-9", s.receipt([state_9]), nc, "state enum index 9 of 4"),
        ("array-two-blocks", s.receipt([entry], [entry]), nc, "entries in two blocks of one"),
        ("array-sized-block", sized + b"\x00", nc, "a block with a negative count"),
        ("union-index-minus-1", s.receipt([minus_1]), nc, "decline_reason union index -1"),
        ("too-many-entries", s.receipt([entry] * 1025), "TOO_MANY_ITEMS", "1025 entries"),
        ("body-trailing", s.body + b"\x00", "BODY_DECODE_FAILED", "one byte after the record"),
        ("body-crc", s.body[:2] + bytes(8) + s.body[10:], "BODY_DECODE_FAILED", "another CRC"),
    ]
    for vid, body, expected, why in cases:
        s.sign(vid, expected, why, body=body)


def _gateway(s: Statements) -> None:
    """Rejections and notices must come from the gateway (the receiver's rule)."""
    record = sample_event(EventType.REJECTION, rng=random.Random(3), alert_sender=HOSPITAL)
    forged = StatementPlan(
        EventType.REJECTION, s.world.keys("crip-93"), body_of(EventType.REJECTION, record)
    )
    s.sign("rejection-accepted", "OK", "a rejection signed by the gateway", check="from_gateway",
           plan=forged, signer=s.world.keys(GATEWAY))  # fmt: skip
    s.sign("rejection-not-from-gateway", "SIGNER_NOT_GATEWAY", "a rejection signed by crip-93",
           check="from_gateway", plan=forged)  # fmt: skip
    s.sign("order/verify-before-gateway", "BAD_SIGNATURE", "not from the gateway, badly signed",
           check="from_gateway", plan=forged, signature_hook=flip(5), faults=2)  # fmt: skip


def _order(s: Statements) -> None:
    """Two faults each: the earlier check of §9.2 decides."""
    good = s.good
    s.raw("order/kind-before-framing", (good[:4] + b"\x06" + good[5:])[:-1], "WRONG_KIND",
          "kind 06 and truncated", faults=2)  # fmt: skip
    s.raw("order/framing-before-shape", sign_plan(varied(s.base, signer_id="CRIP 93")) + b"\x00",
          "TRAILING_BYTES", "a bad signer id and a trailing byte", faults=2)  # fmt: skip
    s.sign("order/shape-before-partnership", "MALFORMED_HEADER", "bad signer, other partnership",
           signer_id="CRIP 93", partnership="pilot-75", faults=2)  # fmt: skip
    s.sign("order/partnership-before-schema", "WRONG_PARTNERSHIP", "other partnership and schema",
           partnership="pilot-75", schema_fp=bytes(32), faults=2)  # fmt: skip
    s.sign("order/schema-before-future", "UNKNOWN_SCHEMA", "unknown schema, from the future",
           schema_fp=bytes(32), created_ms=NOW_MS + SKEW_MS + 1, faults=2)  # fmt: skip
    s.sign("order/future-before-key", "FROM_FUTURE", "from the future, unknown key",
           key_id=_OTHER_KEY, created_ms=NOW_MS + SKEW_MS + 1, faults=2)  # fmt: skip
    s.sign("order/signature-before-body", "BAD_SIGNATURE", "bad signature, trailing body byte",
           body=s.body + b"\x00", signature_hook=flip(5), faults=2)  # fmt: skip
