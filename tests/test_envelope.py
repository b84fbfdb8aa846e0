"""The sealed envelope: round trips, secrecy, and one negative test per rejection reason."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testkit import avro_strategy

from relais.agents.keys import PartnerKeys
from relais.agents.territory import Territory, build_territory
from relais.broker_config.directory import (
    DirectoryKeys,
    add_key,
    new_partner_key,
    revoke_key,
    revoke_partner,
)
from relais.schemas import _crypto
from relais.schemas import envelope as env_mod
from relais.schemas.domain import EVENT_TYPES, EventType, Priority
from relais.schemas.envelope import (
    MAX_ENVELOPE_BYTES,
    Recipient,
    open_envelope,
    seal,
    verify_envelope,
)
from relais.schemas.errors import EnvelopeError, Reason
from relais.schemas.registry import default_registry
from relais.schemas.samples import sample_event
from relais.schemas.statements import sign_statement, verify_statement
from relais.schemas.wire import Writer, encode_uvarint

CANARY = "CANARY-7f3a-ne-doit-pas-fuiter"
HOSPITAL = "hopital-93-avicenne"
CRIP = "crip-93"
PARQUET = "parquet-93-bobigny"
UAPED = "uaped-93-jean-verdier"
MEDICAL_RCPTS = (CRIP, PARQUET, UAPED)


@pytest.fixture(scope="module")
def territory() -> Territory:
    return build_territory()


def recipients(t: Territory, ids: tuple[str, ...]) -> list[Recipient]:
    return [Recipient(i, t.identities[i].key_id, t.identities[i].box_pk) for i in ids]


def seal_referral(t: Territory, **kw: Any) -> bytes:
    record = sample_event(EventType.MEDICAL_REFERRAL, canary=CANARY)
    args: dict[str, Any] = {
        "sender": t.identities[HOSPITAL],
        "partnership": t.partnership,
        "recipients": recipients(t, MEDICAL_RCPTS),
        "departement": "93",
        "priority": Priority.URGENT,
        "audiences": {"medical": [PARQUET, UAPED]},
    }
    args.update(kw)
    return seal(EventType.MEDICAL_REFERRAL, record, **args)


def reason_of(data: bytes, t: Territory, who: str = CRIP, **kw: Any) -> Reason:
    with pytest.raises(EnvelopeError) as info:
        open_envelope(data, recipient=t.identities[who], keys=t.keys(), **kw)
    assert str(info.value) == EnvelopeError.OPAQUE_MESSAGE
    return info.value.reason


@pytest.fixture(scope="module")
def referral(territory: Territory) -> bytes:
    return seal_referral(territory)


# -- round trip and secrecy -------------------------------------------------------------------


def test_entitled_recipients_read_both_sections(territory: Territory, referral: bytes) -> None:
    original = sample_event(EventType.MEDICAL_REFERRAL, canary=CANARY)
    for who in (PARQUET, UAPED):
        opened = open_envelope(referral, recipient=territory.identities[who], keys=territory.keys())
        assert opened.opened_sections == ("main", "medical")
        assert opened.withheld_sections == ()
        assert set(opened.fields) == set(original)
        assert CANARY in repr(opened.fields)


def test_crip_gets_main_section_and_no_medical_field(territory: Territory, referral: bytes) -> None:
    opened = open_envelope(referral, recipient=territory.identities[CRIP], keys=territory.keys())
    schema = verify_envelope(referral, keys=territory.keys()).schema
    medical_fields = set(schema.sections["medical"].fields)
    assert medical_fields
    assert opened.opened_sections == ("main",)
    assert opened.withheld_sections == ("medical",)
    assert not medical_fields & set(opened.fields)
    assert set(opened.fields) == set(schema.sections["main"].fields)


def test_crip_cannot_decrypt_medical_section_at_all(territory: Territory, referral: bytes) -> None:
    verified = verify_envelope(referral, keys=territory.keys())
    medical = verified.header.sections[1]
    assert medical.name == "medical"
    assert CRIP not in medical.audience
    crip = territory.identities[CRIP]
    for wrap in verified.wraps[1]:  # none of the wraps opens with the CRIP's key
        with pytest.raises(EnvelopeError) as info:
            _crypto.unwrap_key(wrap, crip.box_pk, crip.box_sk)
        assert info.value.reason is Reason.UNWRAP_FAILED


def test_canary_only_in_entitled_output(territory: Territory, referral: bytes) -> None:
    assert CANARY.encode() not in referral  # encrypted on the wire
    outputs = {
        who: repr(
            open_envelope(
                referral, recipient=territory.identities[who], keys=territory.keys()
            ).fields
        )
        for who in MEDICAL_RCPTS
    }
    assert CANARY in outputs[PARQUET]
    assert CANARY in outputs[UAPED]
    record = sample_event(EventType.MEDICAL_REFERRAL, canary=CANARY)
    schema = verify_envelope(referral, keys=territory.keys()).schema
    main_canary = any(CANARY in repr(record[f]) for f in schema.sections["main"].fields)
    assert (CANARY in outputs[CRIP]) is main_canary
    medical_only = {f: record[f] for f in schema.sections["medical"].fields}
    assert CANARY in repr(medical_only)


def test_header_holds_routing_codes_only(territory: Territory, referral: bytes) -> None:
    header = verify_envelope(referral, keys=territory.keys()).header
    assert header.sender == HOSPITAL
    assert header.recipient_ids == tuple(sorted(MEDICAL_RCPTS))
    assert all(
        v.replace("-", "").replace("_", "").isalnum() or "." in v for v in header.routing.values()
    )


def test_every_domain_event_round_trips(territory: Territory) -> None:
    for etype in EventType:
        if etype not in EVENT_TYPES:
            continue
        record = sample_event(etype)
        data = seal(
            etype,
            record,
            sender=territory.identities[HOSPITAL],
            partnership=territory.partnership,
            recipients=recipients(territory, (CRIP, PARQUET)),
            departement="93",
            priority=Priority.URGENT,
            audiences={"medical": [PARQUET], "identity": [CRIP, PARQUET]},
        )
        opened = open_envelope(data, recipient=territory.identities[PARQUET], keys=territory.keys())
        assert opened.header.event_type is etype
        assert set(opened.fields) == set(record)


# -- framing and caps -------------------------------------------------------------------------


def test_truncated_envelope(territory: Territory, referral: bytes) -> None:
    for cut in (1, 3, 5, 6, 40, len(referral) // 2, len(referral) - 65, len(referral) - 1):
        assert reason_of(referral[:cut], territory) in (
            Reason.TRUNCATED,
            Reason.LENGTH_EXCEEDS_INPUT,
        )


def test_trailing_bytes(territory: Territory, referral: bytes) -> None:
    assert reason_of(referral + b"\x00", territory) is Reason.TRAILING_BYTES


def test_signature_stripped(territory: Territory, referral: bytes) -> None:
    assert reason_of(referral[:-64], territory) is Reason.TRUNCATED


def test_overlong_varint(territory: Territory, referral: bytes) -> None:
    framed = env_mod._parse_unverified(referral)
    size = len(framed.core)
    minimal = encode_uvarint(size)
    overlong = bytes([b | 0x80 for b in minimal]) + b"\x00"  # same value, one byte too many
    start = 5 + len(minimal)
    forged = referral[:5] + overlong + referral[start:]
    assert reason_of(forged, territory) is Reason.VARINT_OVERLONG
    ten_bytes = referral[:5] + b"\xff" * 10 + referral[5:]
    assert reason_of(ten_bytes, territory) is Reason.VARINT_OVERLONG


def test_huge_length_prefix_in_small_payload(territory: Territory) -> None:
    forged = env_mod.MAGIC + b"\x01" + encode_uvarint(2**62) + b"x" * 100
    tracemalloc.start()
    try:
        assert reason_of(forged, territory) is Reason.LENGTH_EXCEEDS_INPUT
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # nothing of the announced size was ever allocated


def test_oversize_envelope(territory: Territory, referral: bytes) -> None:
    assert reason_of(referral + b"\x00" * MAX_ENVELOPE_BYTES, territory) is Reason.OVERSIZE


def test_bad_magic_and_kind(territory: Territory, referral: bytes) -> None:
    assert reason_of(b"XYZ" + referral[3:], territory) is Reason.BAD_MAGIC
    assert reason_of(referral[:3] + b"\x02" + referral[4:], territory) is Reason.UNSUPPORTED_VERSION
    assert reason_of(referral[:4] + b"\x02" + referral[5:], territory) is Reason.WRONG_KIND


# -- tampering --------------------------------------------------------------------------------


def _core_bounds(data: bytes) -> tuple[int, int]:
    framed = env_mod._parse_unverified(data)
    size = len(framed.core)
    start = 5 + len(encode_uvarint(size))
    return start, start + size


def test_bit_flip_in_every_header_byte_and_ciphertext(
    territory: Territory, referral: bytes
) -> None:
    framed = env_mod._parse_unverified(referral)
    reasons: set[Reason] = set()
    for i in range(len(referral)):  # header, digests, ciphertexts, wraps and signature
        for bit in (0x01, 0x80):
            mutated = bytearray(referral)
            mutated[i] ^= bit
            reasons.add(reason_of(bytes(mutated), territory))
    assert framed.signed_end < len(referral)
    assert Reason.BAD_SIGNATURE in reasons
    assert Reason.SECTION_HASH_MISMATCH in reasons  # flips in ciphertexts and wraps


def test_each_header_field_flip_is_rejected(territory: Territory, referral: bytes) -> None:
    """Field by field: flipping a byte of the field's encoding is rejected."""
    start, _end = _core_bounds(referral)
    h = verify_envelope(referral, keys=territory.keys()).header
    fields = {
        "event_id": h.event_id.bytes,
        "schema_fp": h.schema_fp,
        "sender": h.sender.encode(),
        "sender_key_id": h.sender_key_id.encode(),
        "recipient": CRIP.encode(),
        "nonce": h.sections[0].nonce,
        "commitment": h.sections[1].commitment,
        "departement": b"\x0293",
    }
    expected = {
        "schema_fp": {Reason.UNKNOWN_SCHEMA},
        "sender": {Reason.UNKNOWN_SENDER, Reason.MALFORMED_HEADER, Reason.BAD_AUDIENCE},
        "sender_key_id": {Reason.UNKNOWN_KEY},
    }
    for name, needle in fields.items():
        at = referral.index(needle, start)
        mutated = bytearray(referral)
        mutated[at + len(needle) - 1] ^= 0x01
        reason = reason_of(bytes(mutated), territory)
        allowed = expected.get(
            name,
            {
                Reason.BAD_SIGNATURE,
                Reason.MALFORMED_HEADER,
                Reason.UNSORTED_RECIPIENTS,
                Reason.BAD_AUDIENCE,
            },
        )
        assert reason in allowed, (name, reason)


def _resign(
    data: bytes,
    signer: PartnerKeys,
    *,
    core: bytes | None = None,
    body: bytes | None = None,
    digests: bytes | None = None,
) -> bytes:
    """Rebuild an envelope with new parts and a fresh signature by ``signer``."""
    framed = env_mod._parse_unverified(data)
    _start, end = _core_bounds(data)
    core = framed.core if core is None else core
    digests = data[end : framed.signed_end] if digests is None else digests
    body = data[framed.signed_end : -64] if body is None else body
    signed = Writer().raw(env_mod.MAGIC).raw(b"\x01").bytes_(core).raw(digests).getvalue()
    return signed + body + _crypto.sign(signer.sign_sk, "event", signed)


def test_signature_replaced_by_another_partners_valid_signature(
    territory: Territory, referral: bytes
) -> None:
    attacker = territory.identities["hotel-93-gare"]
    resigned = _resign(referral, attacker)
    assert reason_of(resigned, territory) is Reason.BAD_SIGNATURE


def test_surreptitious_forwarding_fails(territory: Territory, referral: bytes) -> None:
    """A recipient re-wraps the key it learnt and re-signs the ciphertext as its own.

    The signature and digests then hold, but the AEAD associated data binds the original
    header (sender, recipients), so the new recipient cannot decrypt.
    """
    forwarder = territory.identities[PARQUET]
    school = territory.identities["college-93-jaures"]
    verified = verify_envelope(referral, keys=territory.keys())
    h = verified.header
    main = h.sections[0]
    key = _crypto.unwrap_key(
        verified.wraps[0][main.audience.index(PARQUET)], forwarder.box_pk, forwarder.box_sk
    )
    new_main = env_mod.SectionInfo("main", (school.partner_id,), main.nonce, main.commitment)
    forged_header = env_mod.EnvelopeHeader(
        h.event_id,
        h.event_type,
        h.schema_fp,
        PARQUET,
        forwarder.key_id,
        h.priority,
        h.departement,
        h.created_at_ms,
        h.expires_at_ms,
        h.routing,
        (env_mod.RecipientRef(school.partner_id, school.key_id),),
        (),
        (new_main,),
        h.partnership,
    )
    core = env_mod._encode_core(forged_header)
    wrap = _crypto.wrap_key(key, school.box_pk, __import__("os").urandom)
    ciphertext = verified.ciphertexts[0]
    digests = _crypto.sha256(ciphertext) + _crypto.sha256(wrap)
    body = Writer().bytes_(ciphertext).raw(wrap).getvalue()
    forged = _resign(referral, forwarder, core=core, body=body, digests=digests)
    assert verify_envelope(forged, keys=territory.keys()).header.sender == PARQUET
    assert reason_of(forged, territory, who="college-93-jaures") is Reason.DECRYPT_FAILED


def test_recipient_added_removed_or_swapped(territory: Territory, referral: bytes) -> None:
    h = verify_envelope(referral, keys=territory.keys()).header
    framed = env_mod._parse_unverified(referral)
    rebuilt = env_mod._encode_core(h)
    assert rebuilt == framed.core
    school = territory.identities["college-93-jaures"]
    variants = {
        "added": (*h.recipients, env_mod.RecipientRef("zz-intrus", school.key_id)),
        "removed": h.recipients[:-1],
        "swapped": (env_mod.RecipientRef("college-93-jaures", school.key_id), *h.recipients[1:]),
    }
    for name, refs in variants.items():
        changed = env_mod.EnvelopeHeader(
            h.event_id,
            h.event_type,
            h.schema_fp,
            h.sender,
            h.sender_key_id,
            h.priority,
            h.departement,
            h.created_at_ms,
            h.expires_at_ms,
            h.routing,
            tuple(sorted(refs, key=lambda r: r.partner_id)),
            h.fallback,
            h.sections,
            h.partnership,
        )
        core = env_mod._encode_core(changed)
        _start, end = _core_bounds(referral)
        forged = referral[:5] + encode_uvarint(len(core)) + core + referral[end:]
        assert reason_of(forged, territory) in (Reason.BAD_AUDIENCE, Reason.BAD_SIGNATURE), name


def test_wrapped_keys_swapped_between_recipients(territory: Territory, referral: bytes) -> None:
    verified = verify_envelope(referral, keys=territory.keys())
    wraps = verified.wraps[0]
    swapped = referral.replace(wraps[0] + wraps[1], wraps[1] + wraps[0])
    assert swapped != referral
    assert reason_of(swapped, territory) is Reason.SECTION_HASH_MISMATCH


def test_sections_reordered_or_dropped(territory: Territory, referral: bytes) -> None:
    verified = verify_envelope(referral, keys=territory.keys())
    framed = env_mod._parse_unverified(referral)
    parts = [
        Writer().bytes_(ct).raw(b"".join(w)).getvalue()
        for ct, w in zip(verified.ciphertexts, verified.wraps, strict=True)
    ]
    head, sig = referral[: framed.signed_end], referral[-64:]
    reordered = head + parts[1] + parts[0] + sig
    assert reason_of(reordered, territory) in (
        Reason.SECTION_HASH_MISMATCH,
        Reason.TRUNCATED,
        Reason.TRAILING_BYTES,
        Reason.LENGTH_EXCEEDS_INPUT,
    )
    dropped = head + parts[0] + sig
    assert reason_of(dropped, territory) in (
        Reason.TRUNCATED,
        Reason.LENGTH_EXCEEDS_INPUT,
        Reason.SECTION_HASH_MISMATCH,
    )


def test_event_signature_presented_as_receipt(territory: Territory) -> None:
    crip = territory.identities[CRIP]
    receipt = {
        "recipient": CRIP,
        "entries": [],
    }
    try:
        data = sign_statement(
            EventType.RECEIPT, receipt, signer=crip, partnership=territory.partnership
        )
    except Exception:  # noqa: BLE001 - schema may require entries; use a sample instead
        data = sign_statement(
            EventType.RECEIPT,
            sample_event(EventType.RECEIPT),
            signer=crip,
            partnership=territory.partnership,
        )
    message = data[:-64]
    as_event = message + _crypto.sign(crip.sign_sk, "event", message)
    with pytest.raises(EnvelopeError) as info:
        verify_statement(as_event, keys=territory.keys())
    assert info.value.reason is Reason.BAD_SIGNATURE
    assert verify_statement(data, keys=territory.keys()).signer == CRIP
    # and a receipt can never pass as an event envelope
    with pytest.raises(EnvelopeError):
        verify_envelope(data, keys=territory.keys())


# -- keys and directory -----------------------------------------------------------------------


def test_unknown_sender_and_unknown_key(territory: Territory) -> None:
    stranger = PartnerKeys.generate("inconnu-93")
    data = seal_referral(territory, sender=stranger)
    assert reason_of(data, territory) is Reason.UNKNOWN_SENDER
    impostor = PartnerKeys.generate(HOSPITAL)  # right id, key not in the directory
    data = seal_referral(territory, sender=impostor)
    assert reason_of(data, territory) is Reason.UNKNOWN_KEY


def test_revoked_key_and_partner(territory: Territory, referral: bytes) -> None:
    hospital = territory.identities[HOSPITAL]
    revoked = DirectoryKeys(revoke_key(territory.directory, HOSPITAL, hospital.key_id))
    with pytest.raises(EnvelopeError) as info:
        verify_envelope(referral, keys=revoked)
    assert info.value.reason is Reason.REVOKED_KEY
    gone = DirectoryKeys(revoke_partner(territory.directory, HOSPITAL))
    with pytest.raises(EnvelopeError) as info:
        verify_envelope(referral, keys=gone)
    assert info.value.reason is Reason.REVOKED_PARTNER


def test_expired_and_not_yet_valid_key(territory: Territory) -> None:
    hospital = territory.identities[HOSPITAL]
    key = territory.directory.get(HOSPITAL).key(hospital.key_id)  # type: ignore[union-attr]
    after = key.not_after_ms + 1000
    data = seal_referral(territory, now_ms=after)
    assert reason_of(data, territory, now_ms=after) is Reason.EXPIRED_KEY
    before = key.not_before_ms - 1000
    data = seal_referral(territory, now_ms=before)
    assert reason_of(data, territory, now_ms=before) is Reason.KEY_NOT_YET_VALID


def test_rotation_new_key_is_used_and_both_verify(territory: Territory) -> None:
    hospital_new = PartnerKeys.generate(HOSPITAL)
    old = territory.directory.get(HOSPITAL).keys[0]  # type: ignore[union-attr]
    from datetime import datetime

    nb = datetime.fromtimestamp(old.not_before_ms / 1000 + 60, tz=UTC)
    rotated = add_key(
        territory.directory,
        HOSPITAL,
        new_partner_key(
            hospital_new.sign_pk,
            hospital_new.box_pk,
            not_before=nb,
            not_after=nb + timedelta(days=30),
        ),
    )
    keys = DirectoryKeys(rotated)
    for sender in (territory.identities[HOSPITAL], hospital_new):
        data = seal_referral(territory, sender=sender)
        assert verify_envelope(data, keys=keys).header.sender_key_id == sender.key_id


def test_expired_envelope(territory: Territory, referral: bytes) -> None:
    h = verify_envelope(referral, keys=territory.keys()).header
    assert reason_of(referral, territory, now_ms=h.expires_at_ms + 1) is Reason.EXPIRED


def test_unknown_schema_fingerprint(territory: Territory, referral: bytes) -> None:
    h = verify_envelope(referral, keys=territory.keys()).header
    start, _ = _core_bounds(referral)
    at = referral.index(h.schema_fp, start)
    mutated = bytearray(referral)
    mutated[at] ^= 0xFF
    assert reason_of(bytes(mutated), territory) is Reason.UNKNOWN_SCHEMA


def test_non_canonical_signature(territory: Territory, referral: bytes) -> None:
    sig = referral[-64:]
    s = int.from_bytes(sig[32:], "little") + _crypto._ED25519_L
    assert s < 2**256
    forged = referral[:-32] + s.to_bytes(32, "little")
    assert reason_of(forged, territory) is Reason.NONCANONICAL_SIGNATURE


def test_small_order_x25519_key(territory: Territory) -> None:
    small = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
    with pytest.raises(EnvelopeError) as info:
        seal_referral(territory, recipients=[Recipient(CRIP, "k", small)], audiences={})
    assert info.value.reason is Reason.SMALL_ORDER_KEY
    # a malicious sender puts a small-order ephemeral key in a wrap and signs it
    referral = seal_referral(territory)
    verified = verify_envelope(referral, keys=territory.keys())
    framed = env_mod._parse_unverified(referral)
    crip_at = verified.header.sections[0].audience.index(CRIP)
    wraps = list(verified.wraps[0])
    wraps[crip_at] = small + wraps[crip_at][32:]
    parts = [Writer().bytes_(verified.ciphertexts[0]).raw(b"".join(wraps)).getvalue()]
    parts += [
        Writer().bytes_(ct).raw(b"".join(w)).getvalue()
        for ct, w in zip(verified.ciphertexts[1:], verified.wraps[1:], strict=True)
    ]
    digests = _crypto.sha256(verified.ciphertexts[0]) + _crypto.sha256(b"".join(wraps))
    _, end = _core_bounds(referral)
    digests += referral[end + 64 : framed.signed_end]
    forged = _resign(
        referral, territory.identities[HOSPITAL], body=b"".join(parts), digests=digests
    )
    assert reason_of(forged, territory) is Reason.SMALL_ORDER_KEY


def test_not_a_recipient(territory: Territory, referral: bytes) -> None:
    assert reason_of(referral, territory, who="hotel-93-gare") is Reason.NOT_A_RECIPIENT


# -- properties -------------------------------------------------------------------------------

_DANGER = EventType.DANGER_DECLARATION


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_seal_then_open_is_the_identity(territory: Territory, data: st.DataObject) -> None:
    """For generated events of every type, each recipient reads back exactly its sections."""
    etype = data.draw(st.sampled_from(sorted(t for t in EVENT_TYPES)))
    schema = default_registry().by_type(etype)
    record = data.draw(
        st.fixed_dictionaries({n: avro_strategy(t) for n, t in schema.field_types.items()})
    )
    record.update({f: v for f, v in sample_event(etype).items() if f in schema.routing})
    sealed = seal(
        etype,
        record,
        sender=territory.identities[HOSPITAL],
        partnership=territory.partnership,
        recipients=recipients(territory, MEDICAL_RCPTS),
        departement="93",
        priority=data.draw(st.sampled_from(list(Priority))),
        audiences={"medical": [PARQUET], "identity": [CRIP, PARQUET]},
    )
    for who in MEDICAL_RCPTS:
        opened = open_envelope(sealed, recipient=territory.identities[who], keys=territory.keys())
        readable = {f for s in opened.opened_sections for f in schema.sections[s].fields}
        assert opened.fields == {f: v for f, v in record.items() if f in readable}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(min_value=0), delta=st.integers(min_value=1, max_value=255))
def test_every_single_byte_mutation_is_rejected(
    territory: Territory, referral: bytes, index: int, delta: int
) -> None:
    mutated = bytearray(referral)
    at = index % len(referral)
    mutated[at] = (mutated[at] + delta) % 256
    with pytest.raises(EnvelopeError):
        open_envelope(
            bytes(mutated), recipient=territory.identities[PARQUET], keys=territory.keys()
        )
