"""Every decoder of outside input lets only typed relais errors out, and refuses cheaply.

One property test per decoder, over arbitrary bytes and over mutations of a valid input
(byte changes, insertions, deletions, truncation): whatever happens, the only exception is a
:class:`~relais.schemas.errors.RelaisError` with a reason code. Then the examples the
outside checks found: non-canonical Avro of a valid payload, oversized lists, a 63 MiB
directory of empty objects, the same keys in another partnership.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relais.agents.keys import PartnerKeys
from relais.agents.territory import Territory, build_territory
from relais.broker_config.directory import DirectoryKeys, parse_directory, verify_directory
from relais.gateway.audit import (
    RECORD_SUBJECT,
    AuditKind,
    Checkpoint,
    decode_record,
    encode_record,
    open_checkpoint,
    sign_checkpoint,
    verify_messages,
)
from relais.gateway.jetstream import StoredMessage
from relais.schemas.avro_strict import MAX_ITEMS
from relais.schemas.domain import EventType, Priority
from relais.schemas.envelope import Recipient, open_envelope, peek_header, seal, verify_envelope
from relais.schemas.errors import DirectoryError, EnvelopeError, PayloadError, Reason, RelaisError
from relais.schemas.registry import default_registry
from relais.schemas.samples import sample_event
from relais.schemas.statements import sign_statement, verify_statement

HOSPITAL, CRIP, PARQUET = "hopital-93-avicenne", "crip-93", "parquet-93-bobigny"
PROPERTY = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def territory() -> Territory:
    return build_territory()


@pytest.fixture(scope="module")
def referral(territory: Territory) -> bytes:
    ids = (CRIP, PARQUET)
    return seal(
        EventType.MEDICAL_REFERRAL,
        sample_event(EventType.MEDICAL_REFERRAL),
        sender=territory.identities[HOSPITAL],
        partnership=territory.partnership,
        recipients=[
            Recipient(i, territory.identities[i].key_id, territory.identities[i].box_pk)
            for i in ids
        ],
        departement="93",
        priority=Priority.URGENT,
        audiences={"medical": [PARQUET]},
    )


@pytest.fixture(scope="module")
def receipt(territory: Territory) -> bytes:
    return sign_statement(
        EventType.RECEIPT,
        sample_event(EventType.RECEIPT),
        signer=territory.identities[CRIP],
        partnership=territory.partnership,
    )


def _gateway(territory: Territory) -> PartnerKeys:
    return next(
        territory.identities[p.id]
        for p in territory.directory.partners
        if p.kind.value == "gateway" and p.id in territory.identities
    )


@pytest.fixture(scope="module")
def checkpoint(territory: Territory) -> bytes:
    signer = _gateway(territory)
    cp = Checkpoint(
        partnership=territory.partnership,
        signer=signer.partner_id,
        key_id=signer.key_id,
        first_seq=1,
        last_seq=3,
        count=3,
        chain="ab" * 32,
        previous="00" * 32,
        at=int(territory.directory.issued_at.timestamp() * 1000) + 1000,
    )
    return sign_checkpoint(cp, signer)


SAMPLE = sample_event(EventType.MEDICAL_REFERRAL, rng=random.Random(12))
RECORD = encode_record(
    AuditKind.ROUTED,
    {"event_id": "019a8012-4c0d-7a6a-84a2-cbcc0c5c7fd0", "recipients": ["crip-93"], "at": 1},
)


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with a few random edits (change, insert, delete, truncate)."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["change", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "change" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


def _inputs(original: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=512), mutated(original))


def _only_typed(call: Any, data: bytes) -> None:
    """Run a decoder; a failure must be a relais error with a reason code."""
    try:
        call(data)
    except RelaisError as exc:
        reason = exc.reason
    else:
        return
    assert isinstance(reason, Reason)


# -- one property per decoder ------------------------------------------------------------------


@PROPERTY
@given(data=st.data())
def test_envelope_decoders_raise_only_typed_errors(
    territory: Territory, referral: bytes, data: st.DataObject
) -> None:
    blob = data.draw(_inputs(referral))
    keys = territory.keys()
    _only_typed(peek_header, blob)
    _only_typed(lambda b: verify_envelope(b, keys=keys), blob)
    reader = territory.identities[PARQUET]
    _only_typed(lambda b: open_envelope(b, recipient=reader, keys=keys), blob)


@PROPERTY
@given(data=st.data())
def test_statement_decoder_raises_only_typed_errors(
    territory: Territory, receipt: bytes, data: st.DataObject
) -> None:
    blob = data.draw(_inputs(receipt))
    _only_typed(lambda b: verify_statement(b, keys=territory.keys()), blob)


@PROPERTY
@given(data=st.data())
def test_section_decoder_raises_only_typed_errors(data: st.DataObject) -> None:
    schema = default_registry().by_type(EventType.MEDICAL_REFERRAL)
    name = data.draw(st.sampled_from(list(schema.section_names)))
    body = schema.encode_record(SAMPLE)[name]
    blob = data.draw(st.one_of(mutated(body), st.binary(max_size=64).map(lambda b: body[:10] + b)))
    _only_typed(lambda b: schema.decode_section(name, b), blob)


@PROPERTY
@given(data=st.data())
def test_directory_decoders_raise_only_typed_errors(
    territory: Territory, data: st.DataObject
) -> None:
    blob = data.draw(_inputs(territory.signed_directory))
    _only_typed(lambda b: verify_directory(b, territory.root.sign_pk), blob)
    _only_typed(parse_directory, blob)


@PROPERTY
@given(data=st.data())
def test_audit_record_decoder_raises_only_typed_errors(data: st.DataObject) -> None:
    _only_typed(decode_record, data.draw(_inputs(RECORD)))


@PROPERTY
@given(data=st.data())
def test_checkpoint_decoder_raises_only_typed_errors(
    territory: Territory, checkpoint: bytes, data: st.DataObject
) -> None:
    blob = data.draw(_inputs(checkpoint))
    _only_typed(lambda b: open_checkpoint(b, keys=territory.keys()), blob)
    _only_typed(lambda b: open_checkpoint(b, keys=None), blob)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.floats(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=20,
)


@PROPERTY
@given(value=_JSON, nested=st.integers(0, 3000))
def test_oddly_typed_and_deep_json_is_refused_typed(
    territory: Territory, checkpoint: bytes, value: Any, nested: int
) -> None:
    """Records and checkpoints of any JSON shape, nested up to thousands deep."""
    deep = b"[" * nested + json.dumps(value).encode("utf-8", "surrogatepass") + b"]" * nested
    outer = json.loads(checkpoint)
    odd = json.dumps({**outer, "checkpoint": {**outer["checkpoint"], "chain": value}})
    for blob in (deep, odd.encode("utf-8", "surrogatepass")):
        _only_typed(decode_record, blob)
        _only_typed(lambda b: open_checkpoint(b, keys=territory.keys()), blob)


# -- the examples the outside checks found ----------------------------------------------------


def _main_body(event_type: EventType) -> tuple[Any, bytes]:
    schema = default_registry().by_type(event_type)
    return schema, schema.encode_record(sample_event(event_type))["main"]


def _varint(n: int) -> bytes:
    raw, out = (n << 1) ^ (n >> 63), bytearray()
    while True:
        out.append((raw & 0x7F) | (0x80 if raw > 0x7F else 0))
        raw >>= 7
        if not raw:
            return bytes(out)


def test_non_canonical_encodings_of_a_valid_payload_are_refused() -> None:
    # medical_referral main: child_dept, facts_dept (strings), in_care (boolean), ...
    schema, body = _main_body(EventType.MEDICAL_REFERRAL)
    assert schema.decode_section("main", body)
    record = sample_event(EventType.MEDICAL_REFERRAL)
    prefix = 10 + sum(
        len(_varint(len(record[f]))) + len(record[f]) for f in ("child_dept", "facts_dept")
    )
    assert body[prefix] in (0, 1)  # in_care
    boolean_two = body[:prefix] + b"\x02" + body[prefix + 1 :]
    # guardian_dept: a union ["null", "string"]; its index is the next varint
    index_at = prefix + 1
    minus_one = body[:index_at] + b"\x01" + body[index_at + 1 :]  # zig-zag 1 is -1
    overlong = body[:index_at] + bytes([body[index_at] | 0x80, 0x00]) + body[index_at + 1 :]
    eleven = body[:index_at] + b"\x80" * 10 + b"\x00" + body[index_at + 1 :]
    for bad in (boolean_two, minus_one, overlong, eleven):
        with pytest.raises(EnvelopeError) as info:
            schema.decode_section("main", bad)
        assert info.value.reason is Reason.NONCANONICAL_ENCODING
    with pytest.raises(EnvelopeError) as info:
        schema.decode_section("main", body + b"\x00")
    assert info.value.reason is Reason.BODY_DECODE_FAILED


def test_a_section_packed_with_minimal_items_is_refused_before_reading_them() -> None:
    schema = default_registry().by_type(EventType.MEDICAL_REFERRAL)
    sec = schema.sections["medical"]
    record = sample_event(EventType.MEDICAL_REFERRAL) | {
        "injuries": [],
        "sti_tests": [],
        "toxicology": [],
    }
    body = schema.encode_record(record)["medical"]
    # clinical_findings (a string), injuries and sti_tests (empty), pregnancy_test (an enum),
    # then toxicology: put 98,000 two-byte entries (~192 KiB) in place of its empty list
    findings = record["clinical_findings"].encode()
    at = 10 + len(_varint(len(findings))) + len(findings) + 3
    assert body[at] == 0
    assert sec.fields.index("toxicology") == 4
    packed = _varint(98_000) + b"\x00\x02" * 98_000 + _varint(0)
    bad = body[:at] + packed + body[at + 1 :]
    assert len(bad) > 190_000
    with pytest.raises(EnvelopeError) as info:
        schema.decode_section("medical", bad)
    assert info.value.reason is Reason.TOO_MANY_ITEMS


def test_seal_refuses_a_referral_with_97000_toxicology_entries(territory: Territory) -> None:
    record = sample_event(EventType.MEDICAL_REFERRAL)
    record["toxicology"] = [{"substance": "ALCOHOL", "result": "NEGATIVE"}] * 97_000
    with pytest.raises(PayloadError) as info:
        seal(
            EventType.MEDICAL_REFERRAL,
            record,
            sender=territory.identities[HOSPITAL],
            partnership=territory.partnership,
            recipients=[
                Recipient(
                    CRIP, territory.identities[CRIP].key_id, territory.identities[CRIP].box_pk
                )
            ],
            departement="93",
            priority=Priority.URGENT,
        )
    assert info.value.reason is Reason.TOO_MANY_ITEMS
    record.update(injuries=[], sti_tests=[], toxicology=record["toxicology"][:MAX_ITEMS])
    default_registry().by_type(EventType.MEDICAL_REFERRAL).encode_record(record)  # at the cap


def test_a_63_mib_directory_of_empty_objects_is_refused_before_parsing(
    territory: Territory,
) -> None:
    flood = b"[" + b"{}," * (21 * 1024 * 1024) + b"{}]"
    assert len(flood) > 63 * 1024 * 1024
    for call in (parse_directory, lambda b: verify_directory(b, territory.root.sign_pk)):
        with pytest.raises(DirectoryError) as info:
            call(flood)
        assert info.value.reason is Reason.DIRECTORY_MALFORMED
        assert "too many" in str(info.value)  # the byte counts, not the parser


def test_non_ascii_signatures_are_typed_errors(territory: Territory, checkpoint: bytes) -> None:
    outer = json.loads(territory.signed_directory)
    outer["signature"] = "é" * 88
    with pytest.raises(DirectoryError) as dinfo:
        verify_directory(json.dumps(outer).encode(), territory.root.sign_pk)
    assert dinfo.value.reason is Reason.DIRECTORY_BAD_SIGNATURE
    cp = json.loads(checkpoint)
    cp["signature"] = "é" * 88
    with pytest.raises(EnvelopeError) as cinfo:
        open_checkpoint(json.dumps(cp, ensure_ascii=False).encode(), keys=None)
    assert cinfo.value.reason is Reason.AUDIT_CHECKPOINT_INVALID


def test_a_ciphertext_shorter_than_the_tag_is_a_typed_error() -> None:
    from relais.schemas import _crypto

    with pytest.raises(EnvelopeError) as info:
        _crypto.aead_decrypt(bytes(32), bytes(24), b"short", b"")
    assert info.value.reason is Reason.DECRYPT_FAILED


# -- the partnership's identity ----------------------------------------------------------------


def test_the_same_keys_in_another_partnership_do_not_replay(
    territory: Territory, referral: bytes, receipt: bytes, checkpoint: bytes
) -> None:
    other = build_territory(partnership="partenariat-75")
    # the same key pairs, enrolled in the other partnership's directory
    same = DirectoryKeys(
        other.directory.model_validate(
            {
                **{n: getattr(other.directory, n) for n in type(other.directory).model_fields},
                "partnership": "partenariat-75",
                "partners": territory.directory.partners,
            }
        )
    )
    assert same.partnership != territory.partnership
    for call in (
        lambda: verify_envelope(referral, keys=same),
        lambda: verify_statement(receipt, keys=same),
    ):
        with pytest.raises(EnvelopeError) as info:
            call()
        assert info.value.reason is Reason.WRONG_PARTNERSHIP
    with pytest.raises(EnvelopeError) as cinfo:
        open_checkpoint(checkpoint, keys=same)
    assert cinfo.value.reason is Reason.AUDIT_CHECKPOINT_INVALID
    assert isinstance(cinfo.value.__cause__, EnvelopeError)
    assert cinfo.value.__cause__.reason is Reason.WRONG_PARTNERSHIP
    # and in their own partnership they verify
    assert verify_envelope(referral, keys=territory.keys()).header.partnership == (
        territory.partnership
    )
    assert open_checkpoint(checkpoint, keys=territory.keys()).partnership == territory.partnership


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"kind":["ROUTED"],"v":1}',
        b'{"kind":"ROUTED","v":1,"x":' + b"[" * 50 + b"]" * 50 + b"}",
        b'{"kind":"ROUTED","v":1.0}',
        b'{"kind":"ROUTED","kind":"ROUTED","v":1}',
        b"\xff\xfe",
    ],
)
def test_audit_verification_reports_a_malformed_record_as_a_finding(
    territory: Territory, payload: bytes
) -> None:
    """What ``relais audit verify`` prints: the first problem, never a traceback."""
    messages = [
        StoredMessage(1, RECORD_SUBJECT, RECORD, {}),
        StoredMessage(2, RECORD_SUBJECT, payload, {}),
    ]
    report = verify_messages(messages, keys=territory.keys(), partnership=territory.partnership)
    assert not report.ok
    assert report.problem is not None
    assert report.problem.reason is Reason.AUDIT_RECORD_MALFORMED
    assert report.problem.seq == 2
