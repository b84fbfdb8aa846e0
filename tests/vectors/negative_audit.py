"""Negative vectors of the audit log: records (§8.1), checkpoints (§8.3) and whole logs
(§8.4, §9.2). Each builder returns the vector dicts ``generate.py`` writes."""

from __future__ import annotations

import base64
import json
from typing import Any

from forge import GATEWAY, ISSUED_MS, NOW_MS, PARTNERSHIP, World, flip, vector

from relais.agents.keys import PartnerKeys
from relais.broker_config.directory import canonical_json
from relais.gateway.audit import (
    CHECKPOINT_SUBJECT,
    GENESIS,
    RECORD_SUBJECT,
    AuditKind,
    Checkpoint,
    chain_next,
    encode_record,
    sign_checkpoint,
)
from relais.schemas import _crypto

_RECORD = {
    "event_id": "019a8012-4c0d-7a6a-84a2-cbcc0c5c7fd0",
    "partner": "crip-93",
    "state": "DELIVERED",
    "event_type": "medical_referral",
    "decline_reason": None,
    "outcome": None,
    "receipt_at": NOW_MS - 90_000,
    "at": NOW_MS - 60_000,
}
_BAD_RECORD = "AUDIT_RECORD_MALFORMED"
_BAD_CHECKPOINT = "AUDIT_CHECKPOINT_INVALID"
_DISCONTINUOUS = "AUDIT_CHECKPOINT_DISCONTINUOUS"


def record_vectors() -> list[dict[str, Any]]:
    """Every refusal of one audit record."""
    good = encode_record(AuditKind.RECEIPT, _RECORD)
    parsed = json.loads(good)
    receipt_at = b'"receipt_at":' + str(_RECORD["receipt_at"]).encode()
    cases = [
        ("accepted", good, "a RECEIPT record"),
        ("spaces", json.dumps(parsed, sort_keys=True).encode(), "separators with spaces"),
        ("unsorted", json.dumps(dict(reversed(parsed.items())), separators=(",", ":")).encode(),
         "members not sorted"),
        ("not-ascii", good.replace(b"crip-93", "crip-93é".encode()), "a raw é (must be \\u00e9)"),
        ("float", good.replace(b'"v":1', b'"v":1.0'), "v 1.0"),
        ("duplicate", good.replace(b'{"at"', b'{"at":1,"at"'), "member at twice"),
        ("nan", good.replace(receipt_at, b'"receipt_at":NaN'), "NaN"),
        ("depth-3", encode_record(AuditKind.ROUTED, {"routing": {"a": [1]}}), "nested 3 levels"),
        ("kind-unknown", good.replace(b'"kind":"RECEIPT"', b'"kind":"DELETED"'), "kind DELETED"),
        ("kind-not-string", good.replace(b'"kind":"RECEIPT"', b'"kind":1'), "kind 1"),
        ("not-object", b"[]", "a list"),
        ("oversize", encode_record(AuditKind.RECEIPT, {**_RECORD, "partner": "x" * 65_536}),
         "over 65536 bytes"),
        ("values-over-cap", encode_record(AuditKind.ROUTED, {"recipients": ["a"] * 2049}),
         "2049 values"),
        ("trailing-newline", good + b"\n", "a newline after the object"),
    ]  # fmt: skip
    return [
        vector(
            f"audit-record/{vid}",
            "audit_record",
            "decode",
            data,
            "OK" if vid == "accepted" else _BAD_RECORD,
            why,
        )
        for vid, data, why in cases
    ]


def _records(n: int) -> list[bytes]:
    return [
        encode_record(AuditKind.RECEIPT, {**_RECORD, "at": _RECORD["at"] + i}) for i in range(n)
    ]


def _chain(records: list[tuple[int, bytes]], start: bytes = GENESIS) -> bytes:
    value = start
    for seq, data in records:
        value = chain_next(value, seq, data)
    return value


def _flip_b64(text: str) -> str:
    return base64.b64encode(flip(0)(base64.b64decode(text))).decode()


def checkpoint_vectors(world: World) -> list[dict[str, Any]]:
    """Every refusal of one checkpoint message (its inner reason in ``inner``)."""
    gw, crip = world.keys(GATEWAY), world.keys("crip-93")
    chain = _chain(list(enumerate(_records(3), start=1)))
    base = Checkpoint(PARTNERSHIP, GATEWAY, gw.key_id, 1, 3, 3, chain.hex(), GENESIS.hex(), NOW_MS)
    doc = json.loads(sign_checkpoint(base, gw))
    out: list[dict[str, Any]] = []

    def add(vid: str, message: dict[str, Any], why: str, inner: str | None = None) -> None:
        expected = "OK" if vid == "accepted" else _BAD_CHECKPOINT
        more = {"inner": inner} if inner else {}
        data = canonical_json(message)
        out.append(vector(f"checkpoint/{vid}", "checkpoint", "open", data, expected, why, **more))

    def signed(vid: str, why: str, inner: str | None = None, by: PartnerKeys = gw, **change: Any):
        body = {**doc["checkpoint"], **change}
        sig = _crypto.sign(by.sign_sk, "audit-checkpoint", canonical_json(body))
        add(vid, {"checkpoint": body, "signature": base64.b64encode(sig).decode()}, why, inner)

    add("accepted", doc, "a checkpoint of records 1..3")
    add("no-signature", {"checkpoint": doc["checkpoint"]}, "no signature member")
    add("over-4096-bytes", {**doc, "pad": "x" * 4096}, "over 4096 bytes")
    add("signature-not-ascii", {**doc, "signature": "é" + doc["signature"][1:]}, "not ASCII")
    signed("extra-member", "an extra member", extra=1)
    signed("format", "format relais-audit-checkpoint/2", format="relais-audit-checkpoint/2")
    signed("count-boolean", "count true", count=True)
    signed("seq-negative", "first_seq -1", first_seq=-1)
    signed("seq-over-63-bits", "last_seq 2^63", last_seq=2**63)
    signed("chain-uppercase", "chain in uppercase hex", chain=base.chain.upper())
    signed("key-id-shape", "key_id of 15 hex", key_id=gw.key_id[:15])
    signed("wrong-partnership", "partnership pilot-75", "WRONG_PARTNERSHIP", partnership="pilot-75")
    signed("signer-not-gateway", "signed by crip-93 in its own name", "UNKNOWN_SENDER", by=crip,
           signer="crip-93", key_id=crip.key_id)  # fmt: skip
    signed("unknown-signer", "signer not in the directory", "UNKNOWN_SENDER", signer="gateway-2")
    signed("unknown-key", "key id not the gateway's", "UNKNOWN_KEY", key_id="0123456789abcdef")
    signed("at-before-key", "at before the key's not_before", "KEY_NOT_YET_VALID",
           at=ISSUED_MS - 2 * 86_400_000)  # fmt: skip
    flipped = {**doc, "signature": _flip_b64(doc["signature"])}
    add("signature-flipped", flipped, "one bit of the signature flipped", "BAD_SIGNATURE")
    changed = {**doc, "checkpoint": {**doc["checkpoint"], "count": 4}}
    add("count-changed", changed, "count changed after signing", "BAD_SIGNATURE")
    out.append(
        vector(
            "checkpoint/not-json",
            "checkpoint",
            "open",
            canonical_json(doc)[:-1],
            _BAD_CHECKPOINT,
            "cut JSON",
        )
    )
    return out


class _Log:
    """Audit logs made from four records and a checkpoint of the first three."""

    def __init__(self, world: World) -> None:
        self.gw = world.keys(GATEWAY)
        self.recs = _records(4)
        self.first3 = [(1, self.recs[0]), (2, self.recs[1]), (3, self.recs[2])]
        r, c = RECORD_SUBJECT, CHECKPOINT_SUBJECT
        self.good = [(i + 1, r, self.recs[i]) for i in range(3)]
        self.good += [(4, c, self.checkpoint(1, 3)), (5, r, self.recs[3])]
        self.anchor = f"3:{_chain(self.first3).hex()}"
        self.out: list[dict[str, Any]] = []

    def checkpoint(self, first: int, last: int, previous: bytes = GENESIS, **change: Any) -> bytes:
        """A checkpoint of the records ``first..last`` after ``previous``."""
        covered = [(s, d) for s, d in self.first3 if first <= s <= last]
        fields = {
            "partnership": PARTNERSHIP, "signer": GATEWAY, "key_id": self.gw.key_id,
            "first_seq": first, "last_seq": last, "count": len(covered),
            "chain": _chain(covered, previous).hex(), "previous": previous.hex(), "at": NOW_MS,
        } | change  # fmt: skip
        return sign_checkpoint(Checkpoint(**fields), self.gw)

    def with_(self, seq: int, data: bytes, subject: str = RECORD_SUBJECT) -> list[Any]:
        """The good log with message ``seq`` replaced."""
        return [(seq, subject, data) if m[0] == seq else m for m in self.good]

    def log(self, vid: str, messages: list[Any], expected: str, seq: int, why: str, **more: Any):
        """A vector of the whole log."""
        self.out.append(
            {
                "id": f"audit-log/{vid}",
                "target": "audit_log",
                "check": "verify",
                "messages": [
                    {"seq": s, "subject": subj, "data_b64": base64.b64encode(d).decode()}
                    for s, subj, d in messages
                ],
                "last_seq": more.pop("last_seq", messages[-1][0] if messages else 0),
                "expected": expected,
                "problem_seq": seq,
                "description": why,
                **more,
            }
        )


def log_vectors(world: World) -> list[dict[str, Any]]:
    """Whole audit logs (§8.4): the first problem decides, at the sequence it is found."""
    g = _Log(world)
    c, good, missing = CHECKPOINT_SUBJECT, g.good, "AUDIT_RECORD_MISSING"
    changed = g.recs[1].replace(b'"state":"DELIVERED"', b'"state":"DECLINED"')
    wrong_prev = g.checkpoint(1, 3, previous=bytes(range(32)))
    no_anchor = f"3:{'00' * 32}"
    g.log("accepted", good, "OK", 0, "3 records, a checkpoint, 1 unsealed", anchor=g.anchor)
    g.log("hole", [m for m in good if m[0] != 2], missing, 2, "sequence 2 absent")
    g.log("tail-cut", good[:3], missing, 4, "the stream's last sequence is 5", last_seq=5)
    g.log("record-malformed", g.with_(2, g.recs[1] + b" "), _BAD_RECORD, 2, "a trailing space")
    g.log("unexpected-subject", g.with_(2, g.recs[1], "ref.audit.other"), _BAD_RECORD, 2,
          "a message on another subject")  # fmt: skip
    g.log("checkpoint-invalid", g.with_(4, g.checkpoint(1, 3, partnership="pilot-75"), c),
          _BAD_CHECKPOINT, 4, "a checkpoint of another partnership")  # fmt: skip
    g.log("checkpoint-previous", g.with_(4, wrong_prev, c), _DISCONTINUOUS, 4,
          "previous is not the last checkpoint's chain")  # fmt: skip
    g.log("checkpoint-ahead", g.with_(4, g.checkpoint(1, 3, last_seq=5), c), _DISCONTINUOUS, 4,
          "last_seq after the checkpoint itself")  # fmt: skip
    g.log("checkpoint-first-seq", g.with_(4, g.checkpoint(2, 3), c), _DISCONTINUOUS, 4,
          "first_seq 2, the first unsealed record is 1")  # fmt: skip
    g.log("record-changed", g.with_(2, changed), "AUDIT_CHAIN_MISMATCH", 4,
          "record 2 changed after it was sealed")  # fmt: skip
    g.log("count", g.with_(4, g.checkpoint(1, 3, count=2), c), "AUDIT_CHAIN_MISMATCH", 4,
          "count 2 for 3 records")  # fmt: skip
    g.log("anchor-missing", good, "AUDIT_ANCHOR_MISSING", 3, "an anchor the log does not hold",
          anchor=no_anchor)  # fmt: skip
    # two faults each: the earlier check of §8.4 decides
    hole_then_bad = [good[0], (3, RECORD_SUBJECT, g.recs[2] + b" "), *good[3:]]
    g.log("order/hole-before-malformed", hole_then_bad, missing, 2, "hole at 2, bad record at 3",
          faults=2)  # fmt: skip
    g.log("order/invalid-before-discontinuous",
          g.with_(4, g.checkpoint(2, 3, partnership="pilot-75"), c), _BAD_CHECKPOINT, 4,
          "another partnership and first_seq 2", faults=2)  # fmt: skip
    both = [good[0], (2, RECORD_SUBJECT, changed), good[2], (4, c, wrong_prev), good[4]]
    g.log("order/discontinuous-before-chain", both, _DISCONTINUOUS, 4,
          "wrong previous and a changed record", faults=2)  # fmt: skip
    g.log("order/problem-before-anchor", [m for m in good if m[0] != 2], missing, 2,
          "a hole and a missing anchor", anchor=no_anchor, faults=2)  # fmt: skip
    return g.out
