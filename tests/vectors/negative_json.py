"""Negative vectors of the JSON documents: the signed directory (§6), audit records (§8.1),
checkpoints (§8.3) and whole audit logs (§8.4)."""

from __future__ import annotations

import base64
import json
from typing import Any

from forge import GATEWAY, ISSUED_MS, NOW_MS, PARTNERSHIP, Drbg, World, resign_directory
from negative_wire import vector

from relais.agents.keys import PartnerKeys
from relais.broker_config.directory import canonical_json, key_id_for
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

_SMALL_ORDER_X25519 = bytes.fromhex(
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"
)


def directory_vectors(world: World) -> list[dict[str, Any]]:
    """Every refusal of a signed directory file."""
    signed = world.signed_directory
    doc = json.loads(signed)
    root = world.root
    out: list[dict[str, Any]] = []

    def add(vid: str, data: bytes, expected: str, why: str, **more: Any) -> None:
        more.setdefault("now_ms", NOW_MS)
        out.append(vector(f"directory/{vid}", "directory", "verify", data, expected, why, **more))

    def edited(change: Any) -> dict[str, Any]:
        copy = json.loads(signed)
        change(copy)
        return copy

    def resigned(vid: str, change: Any, expected: str, why: str, **more: Any) -> None:
        add(vid, resign_directory(edited(change), root), expected, why, **more)

    add("accepted", signed, "OK", "the edition in force (serial 7)", min_serial=7)
    add("not-json", b"{" + signed, "DIRECTORY_MALFORMED", "not JSON")
    add("not-utf8", signed[:-2] + b"\xff}", "DIRECTORY_MALFORMED", "a byte that is not UTF-8")
    dup = signed.replace(b'{"format"', b'{"format":"relais-directory/1","format"', 1)
    add("duplicate-member", dup, "DIRECTORY_MALFORMED", "member format twice")
    add(
        "float-serial",
        resign_directory(edited(lambda d: d["signed"].update(serial=7.0)), root),
        "DIRECTORY_MALFORMED",
        "serial 7.0 (a float), signed",
    )
    add("nan", signed.replace(b'"serial":7', b'"serial":NaN', 1), "DIRECTORY_MALFORMED", "NaN")
    add(
        "containers-over-cap",
        b"[",
        "DIRECTORY_MALFORMED",
        "400065 brackets: over the container cap, refused unparsed",
        pad={"to": 64 + 4 * 100_000 + 1, "byte": 0x5B},
    )
    add(
        "outer-members",
        canonical_json({k: v for k, v in doc.items() if k != "root_key_id"}),
        "DIRECTORY_MALFORMED",
        "no outer root_key_id",
    )
    add(
        "outer-format",
        canonical_json({**doc, "format": "relais-directory/2"}),
        "DIRECTORY_MALFORMED",
        "outer format relais-directory/2",
    )
    add(
        "root-key-id-shape",
        canonical_json({**doc, "root_key_id": "ABC"}),
        "DIRECTORY_MALFORMED",
        "outer root_key_id not 16 hex",
    )
    add(
        "signature-flipped",
        canonical_json({**doc, "signature": _flip_b64(doc["signature"])}),
        "DIRECTORY_BAD_SIGNATURE",
        "one bit of the signature flipped",
    )
    add(
        "signature-not-ascii",
        canonical_json({**doc, "signature": "é" + doc["signature"][1:]}),
        "DIRECTORY_BAD_SIGNATURE",
        "signature text not ASCII base64",
    )
    add(
        "signature-short",
        canonical_json({**doc, "signature": base64.b64encode(bytes(63)).decode()}),
        "DIRECTORY_BAD_SIGNATURE",
        "a 63-byte signature",
    )
    add(
        "member-changed",
        signed.replace(b'"serial":7', b'"serial":8', 1),
        "DIRECTORY_BAD_SIGNATURE",
        "serial changed after signing",
    )
    other = PartnerKeys.generate("root", random=Drbg("negative directory/other-root"))
    add(
        "other-root",
        resign_directory(doc, other),
        "DIRECTORY_BAD_SIGNATURE",
        "signed by another root key",
    )
    add(
        "event-context",
        canonical_json(
            {
                **doc,
                "signature": base64.b64encode(
                    _crypto.sign(root.sign_sk, "event", canonical_json(doc["signed"]))
                ).decode(),
            }
        ),
        "DIRECTORY_BAD_SIGNATURE",
        "signed under context event (domain separation)",
    )
    add("rollback", signed, "DIRECTORY_ROLLBACK", "serial 7 when 8 is in use", min_serial=8)
    expires = world.directory.expires_at_ms
    add("expired", signed, "DIRECTORY_EXPIRED", "checked 1 ms after expires_at", now_ms=expires + 1)
    add("at-expiry", signed, "OK", "checked at expires_at exactly: still valid", now_ms=expires)
    resigned(
        "root-key-ids-differ",
        lambda d: d["signed"].update(root_key_id="0123456789abcdef"),
        "DIRECTORY_MALFORMED",
        "inner root_key_id differs from the outer one (signed)",
    )
    resigned(
        "no-expiry",
        lambda d: d["signed"].pop("expires_at"),
        "DIRECTORY_MALFORMED",
        "a signed edition without expires_at",
    )
    resigned(
        "no-rules",
        lambda d: d["signed"].pop("rules"),
        "DIRECTORY_MALFORMED",
        "a signed edition without rules",
    )
    resigned(
        "key-id-not-of-keys",
        lambda d: _first_key(d).update(key_id="0123456789abcdef"),
        "DIRECTORY_MALFORMED",
        "a key id that is not KEYID of its keys",
    )
    resigned(
        "unknown-member",
        lambda d: d["signed"].update(extra=1),
        "DIRECTORY_MALFORMED",
        "an unknown member in signed",
    )
    resigned(
        "time-spelling",
        lambda d: d["signed"].update(issued_at="2025-11-14T22:00:00+00:00"),
        "DIRECTORY_MALFORMED",
        "issued_at with +00:00 in place of Z",
    )
    resigned(
        "small-order-box-key",
        _small_order,
        "SMALL_ORDER_KEY",
        "a partner's X25519 key of small order (its key id matches)",
    )
    resigned(
        "rules-invalid",
        lambda d: d["signed"].update(rules="version = 'x'\n"),
        "RULES_INVALID",
        "the edition embeds rules that do not validate",
        check_rules=True,
    )

    def two(vid: str, data: bytes, expected: str, why: str, **more: Any) -> None:
        add(f"order/{vid}", data, expected, why, faults=2, **more)

    two(
        "signature-before-model",
        canonical_json(edited(lambda d: _first_key(d).update(key_id="0123456789abcdef"))),
        "DIRECTORY_BAD_SIGNATURE",
        "a bad key id, not signed",
    )
    two(
        "rollback-before-model",
        resign_directory(
            edited(
                lambda d: (
                    d["signed"].update(serial=6),
                    _first_key(d).update(key_id="0123456789abcdef"),
                )
            ),
            root,
        ),
        "DIRECTORY_ROLLBACK",
        "serial 6 < 7 and a bad key id",
        min_serial=7,
    )
    two(
        "model-before-expiry",
        resign_directory(edited(lambda d: _first_key(d).update(key_id="0123456789abcdef")), root),
        "DIRECTORY_MALFORMED",
        "a bad key id, checked after expiry",
        now_ms=expires + 1,
    )
    two(
        "rollback-before-expiry",
        signed,
        "DIRECTORY_ROLLBACK",
        "older and expired",
        min_serial=8,
        now_ms=expires + 1,
    )
    for v in out:
        if v.pop("check_rules", False):
            v["check"] = "edition"
    return out


def _first_key(doc: dict[str, Any]) -> dict[str, Any]:
    key: dict[str, Any] = doc["signed"]["partners"][0]["keys"][0]
    return key


def _small_order(doc: dict[str, Any]) -> None:
    key = _first_key(doc)
    sign_pk = base64.b64decode(key["sign_pk"])
    key.update(
        box_pk=base64.b64encode(_SMALL_ORDER_X25519).decode(),
        key_id=key_id_for(sign_pk, _SMALL_ORDER_X25519),
    )


def _flip_b64(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode()


# -- audit records --------------------------------------------------------------------------------

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


def record_vectors() -> list[dict[str, Any]]:
    """Every refusal of one audit record."""
    good = encode_record(AuditKind.RECEIPT, _RECORD)
    out: list[dict[str, Any]] = []

    def add(vid: str, data: bytes, expected: str, why: str) -> None:
        out.append(vector(f"audit-record/{vid}", "audit_record", "decode", data, expected, why))

    text = good.decode()
    add("accepted", good, "OK", "a RECEIPT record")
    add(
        "spaces",
        json.dumps(json.loads(text), sort_keys=True).encode(),
        "AUDIT_RECORD_MALFORMED",
        "separators with spaces",
    )
    add(
        "unsorted",
        json.dumps(dict(reversed(json.loads(text).items())), separators=(",", ":")).encode(),
        "AUDIT_RECORD_MALFORMED",
        "members not sorted",
    )
    add(
        "not-ascii",
        good.replace(b"crip-93", "crip-93é".encode()),
        "AUDIT_RECORD_MALFORMED",
        "a raw non-ASCII character (must be \\u00e9)",
    )
    add("float", good.replace(b'"v":1', b'"v":1.0'), "AUDIT_RECORD_MALFORMED", "v 1.0")
    add(
        "duplicate",
        good.replace(b'{"at"', b'{"at":1,"at"'),
        "AUDIT_RECORD_MALFORMED",
        "member at twice",
    )
    add(
        "nan",
        good.replace(b'"receipt_at":' + str(NOW_MS - 90_000).encode(), b'"receipt_at":NaN'),
        "AUDIT_RECORD_MALFORMED",
        "NaN",
    )
    add(
        "depth-3",
        encode_record(AuditKind.ROUTED, {"routing": {"a": [1]}}),
        "AUDIT_RECORD_MALFORMED",
        "nested 3 levels",
    )
    add(
        "kind-unknown",
        good.replace(b'"kind":"RECEIPT"', b'"kind":"DELETED"'),
        "AUDIT_RECORD_MALFORMED",
        "kind DELETED",
    )
    add(
        "kind-not-string",
        good.replace(b'"kind":"RECEIPT"', b'"kind":1'),
        "AUDIT_RECORD_MALFORMED",
        "kind 1",
    )
    add("not-object", b"[]", "AUDIT_RECORD_MALFORMED", "a list")
    add(
        "oversize",
        encode_record(AuditKind.RECEIPT, {**_RECORD, "partner": "x" * 65_536}),
        "AUDIT_RECORD_MALFORMED",
        "over 65536 bytes",
    )
    add(
        "values-over-cap",
        encode_record(AuditKind.ROUTED, {"recipients": ["a"] * 2049}),
        "AUDIT_RECORD_MALFORMED",
        "2049 values",
    )
    add("trailing-newline", good + b"\n", "AUDIT_RECORD_MALFORMED", "a newline after the object")
    return out


# -- checkpoints and logs ---------------------------------------------------------------------


def _records(n: int) -> list[bytes]:
    return [
        encode_record(AuditKind.RECEIPT, {**_RECORD, "at": NOW_MS - 60_000 + i}) for i in range(n)
    ]


def _chain(records: list[tuple[int, bytes]], start: bytes = GENESIS) -> bytes:
    value = start
    for seq, data in records:
        value = chain_next(value, seq, data)
    return value


def checkpoint_vectors(world: World) -> list[dict[str, Any]]:
    """Every refusal of one checkpoint message (inner reason in ``inner``)."""
    gw = world.keys(GATEWAY)
    recs = list(enumerate(_records(3), start=1))
    base = Checkpoint(
        PARTNERSHIP, GATEWAY, gw.key_id, 1, 3, 3, _chain(recs).hex(), GENESIS.hex(), NOW_MS - 30_000
    )
    good = sign_checkpoint(base, gw)
    doc = json.loads(good)
    out: list[dict[str, Any]] = []

    def add(vid: str, data: bytes, expected: str, why: str, inner: str | None = None) -> None:
        more = {"inner": inner} if inner else {}
        out.append(vector(f"checkpoint/{vid}", "checkpoint", "open", data, expected, why, **more))

    def body_edit(
        vid: str, why: str, inner: str | None = None, signed_by: PartnerKeys = gw, **change: Any
    ) -> None:
        body = {**doc["checkpoint"], **change}
        sig = base64.b64encode(
            _crypto.sign(signed_by.sign_sk, "audit-checkpoint", canonical_json(body))
        ).decode()
        add(
            vid,
            canonical_json({"checkpoint": body, "signature": sig}),
            "AUDIT_CHECKPOINT_INVALID",
            why,
            inner,
        )

    add("accepted", good, "OK", "a checkpoint of records 1..3")
    bad = "AUDIT_CHECKPOINT_INVALID"
    add("not-json", good[:-1], bad, "cut JSON")
    add(
        "no-signature",
        canonical_json({"checkpoint": doc["checkpoint"]}),
        bad,
        "no signature member",
    )
    body_edit("extra-member", "an extra member", extra=1)
    body_edit("format", "format relais-audit-checkpoint/2", format="relais-audit-checkpoint/2")
    body_edit("count-boolean", "count true", count=True)
    body_edit("seq-negative", "first_seq -1", first_seq=-1)
    body_edit("seq-over-63-bits", "last_seq 2^63", last_seq=2**63)
    body_edit("chain-uppercase", "chain in uppercase hex", chain=base.chain.upper())
    body_edit("key-id-shape", "key_id of 15 hex", key_id=gw.key_id[:15])
    add(
        "signature-not-ascii",
        canonical_json({**doc, "signature": "é" + doc["signature"][1:]}),
        bad,
        "signature not ASCII base64",
    )
    add("over-4096-bytes", canonical_json({**doc, "pad": "x" * 4096}), bad, "over 4096 bytes")
    body_edit(
        "wrong-partnership", "partnership pilot-75", "WRONG_PARTNERSHIP", partnership="pilot-75"
    )
    crip = world.keys("crip-93")
    body_edit(
        "signer-not-gateway",
        "signed by crip-93 in its own name",
        "UNKNOWN_SENDER",
        signed_by=crip,
        signer="crip-93",
        key_id=crip.key_id,
    )
    body_edit("unknown-signer", "signer not in the directory", "UNKNOWN_SENDER", signer="gateway-2")
    body_edit("unknown-key", "key id not the gateway's", "UNKNOWN_KEY", key_id="0123456789abcdef")
    body_edit(
        "at-before-key",
        "at before the gateway key's not_before",
        "KEY_NOT_YET_VALID",
        at=ISSUED_MS - 2 * 86_400_000,
    )
    add(
        "signature-flipped",
        canonical_json({**doc, "signature": _flip_b64(doc["signature"])}),
        bad,
        "one bit of the signature flipped",
        "BAD_SIGNATURE",
    )
    changed = {**doc, "checkpoint": {**doc["checkpoint"], "count": 4}}
    add(
        "count-changed",
        canonical_json(changed),
        bad,
        "count changed after signing",
        "BAD_SIGNATURE",
    )
    return out


def log_vectors(world: World) -> list[dict[str, Any]]:
    """Whole audit logs (§8.4): the first problem decides."""
    gw = world.keys(GATEWAY)
    recs = _records(4)
    out: list[dict[str, Any]] = []

    def checkpoint(
        first: int,
        last: int,
        covered: list[tuple[int, bytes]],
        previous: bytes = GENESIS,
        **change: Any,
    ) -> bytes:
        fields = {
            "partnership": PARTNERSHIP, "signer": GATEWAY, "key_id": gw.key_id, "first_seq": first,
            "last_seq": last, "count": len(covered), "chain": _chain(covered, previous).hex(),
            "previous": previous.hex(), "at": NOW_MS,
        } | change  # fmt: skip
        return sign_checkpoint(Checkpoint(**fields), gw)

    def log(
        vid: str,
        messages: list[tuple[int, str, bytes]],
        expected: str,
        seq: int,
        why: str,
        **more: Any,
    ) -> None:
        out.append(
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

    r = RECORD_SUBJECT
    c = CHECKPOINT_SUBJECT
    first3 = [(1, recs[0]), (2, recs[1]), (3, recs[2])]
    ck = checkpoint(1, 3, first3)
    good = [(1, r, recs[0]), (2, r, recs[1]), (3, r, recs[2]), (4, c, ck), (5, r, recs[3])]
    anchor = f"3:{_chain(first3).hex()}"
    log("accepted", good, "OK", 0, "3 records, a checkpoint, 1 unsealed record", anchor=anchor)
    log("hole", [m for m in good if m[0] != 2], "AUDIT_RECORD_MISSING", 2, "sequence 2 absent")
    log(
        "tail-cut",
        good[:3],
        "AUDIT_RECORD_MISSING",
        4,
        "the stream's last sequence is 5, the log ends at 3",
        last_seq=5,
    )
    log(
        "record-malformed",
        [good[0], (2, r, recs[1] + b" "), *good[2:]],
        "AUDIT_RECORD_MALFORMED",
        2,
        "a record with a trailing space",
    )
    log(
        "unexpected-subject",
        [good[0], (2, "ref.audit.other", recs[1]), *good[2:]],
        "AUDIT_RECORD_MALFORMED",
        2,
        "a message on another subject",
    )
    forged = checkpoint(1, 3, first3, partnership="pilot-75")
    log(
        "checkpoint-invalid",
        [*good[:3], (4, c, forged), good[4]],
        "AUDIT_CHECKPOINT_INVALID",
        4,
        "a checkpoint of another partnership",
    )
    wrong_prev = checkpoint(1, 3, first3, previous=bytes(range(32)))
    log(
        "checkpoint-previous",
        [*good[:3], (4, c, wrong_prev), good[4]],
        "AUDIT_CHECKPOINT_DISCONTINUOUS",
        4,
        "previous is not the last checkpoint's chain",
    )
    ahead = checkpoint(1, 5, first3, last_seq=5)
    log(
        "checkpoint-ahead",
        [*good[:3], (4, c, ahead), good[4]],
        "AUDIT_CHECKPOINT_DISCONTINUOUS",
        4,
        "last_seq after the checkpoint itself",
    )
    late = checkpoint(2, 3, first3[1:])
    log(
        "checkpoint-first-seq",
        [*good[:3], (4, c, late), good[4]],
        "AUDIT_CHECKPOINT_DISCONTINUOUS",
        4,
        "first_seq 2, the first unsealed record is 1",
    )
    changed = recs[1].replace(b'"state":"DELIVERED"', b'"state":"DECLINED"')
    log(
        "record-changed",
        [good[0], (2, r, changed), *good[2:]],
        "AUDIT_CHAIN_MISMATCH",
        4,
        "record 2 changed after it was sealed",
    )
    miscount = checkpoint(1, 3, first3, count=2)
    log(
        "count",
        [*good[:3], (4, c, miscount), good[4]],
        "AUDIT_CHAIN_MISMATCH",
        4,
        "count 2 for 3 records",
    )
    log(
        "anchor-missing",
        good,
        "AUDIT_ANCHOR_MISSING",
        3,
        "an anchor the log does not hold",
        anchor=f"3:{'00' * 32}",
    )
    log(
        "order/hole-before-malformed",
        [good[0], (3, r, recs[2] + b" "), *good[3:]],
        "AUDIT_RECORD_MISSING",
        2,
        "hole at 2 and a malformed record at 3",
        faults=2,
    )
    log(
        "order/invalid-before-discontinuous",
        [*good[:3], (4, c, checkpoint(2, 3, first3[1:], partnership="pilot-75")), good[4]],
        "AUDIT_CHECKPOINT_INVALID",
        4,
        "another partnership and first_seq 2",
        faults=2,
    )
    log(
        "order/discontinuous-before-chain",
        [good[0], (2, r, changed), good[2], (4, c, wrong_prev), good[4]],
        "AUDIT_CHECKPOINT_DISCONTINUOUS",
        4,
        "wrong previous and a changed record",
        faults=2,
    )
    log(
        "order/problem-before-anchor",
        [m for m in good if m[0] != 2],
        "AUDIT_RECORD_MISSING",
        2,
        "a hole and a missing anchor",
        anchor=f"3:{'00' * 32}",
        faults=2,
    )
    return out
