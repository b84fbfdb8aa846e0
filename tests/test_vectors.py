"""Golden vectors of the wire format, checked with independent implementations.

Signatures are verified with the ``cryptography`` package's Ed25519 (OpenSSL, not
libsodium); section bodies are decoded with the reference ``avro`` package (not fastavro);
the CRC-64 of each section schema is recomputed by ``avro``. Re-sealing the recorded record
with the recorded keys, clock and random stream must give the recorded bytes exactly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import uuid
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl import bindings

from relais.agents.keys import PartnerKeys
from relais.schemas.domain import EventType, Priority
from relais.schemas.envelope import Recipient, open_envelope, seal
from relais.schemas.errors import EnvelopeError, Reason
from relais.schemas.registry import default_registry, to_jsonable
from relais.schemas.statements import verify_statement

VECTORS = json.loads(
    Path(__file__).with_name("vectors").joinpath("envelope_v1.json").read_text("utf-8")
)
EVENT = VECTORS["event"]
NOW_MS = VECTORS["now_ms"]


class Drbg:
    """The deterministic random stream of the vectors (see tests/vectors/generate.py)."""

    def __init__(self, seed: bytes) -> None:
        self.seed, self.counter, self.buffer = seed, 0, b""

    def __call__(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += hashlib.sha256(self.seed + self.counter.to_bytes(8, "big")).digest()
            self.counter += 1
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


class VectorKeys:
    """Key resolution from the vector's public keys."""

    partnership = VECTORS["partnership"]

    def signing_key(self, partner_id: str, key_id: str, at_ms: int) -> bytes:
        entry = VECTORS["keys"].get(partner_id)
        if entry is None or entry["key_id"] != key_id:
            raise EnvelopeError(Reason.UNKNOWN_KEY)
        return bytes.fromhex(entry["sign_pk_hex"])


def identity(partner_id: str) -> PartnerKeys:
    entry = VECTORS["keys"][partner_id]
    keys = PartnerKeys(
        partner_id, bytes.fromhex(entry["sign_seed_hex"]), bytes.fromhex(entry["box_sk_hex"])
    )
    assert keys.key_id == entry["key_id"]
    assert keys.sign_pk.hex() == entry["sign_pk_hex"]
    return keys


def test_signature_verifies_with_an_independent_ed25519() -> None:
    data = bytes.fromhex(EVENT["envelope_hex"])
    signed = data[: EVENT["signed_end"]]
    signature = bytes.fromhex(EVENT["signature_hex"])
    sender = VECTORS["keys"]["hopital-93-avicenne"]
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(sender["sign_pk_hex"]))
    public.verify(signature, b"relais/1 sig:event\x00" + signed)
    # the same bytes under another context do not verify: domain separation
    with pytest.raises(InvalidSignature):
        public.verify(signature, b"relais/1 sig:receipt\x00" + signed)
    with pytest.raises(InvalidSignature):
        public.verify(signature, signed)


def test_header_bytes_are_as_documented() -> None:
    data = bytes.fromhex(EVENT["envelope_hex"])
    core = bytes.fromhex(EVENT["core_hex"])
    assert data[:5] == b"RLS\x01\x01"
    assert core[:9] == b"\x08relais/1"
    assert core[9:25] == uuid.UUID(EVENT["event_id"]).bytes
    assert core.find(b"medical_referral") == 26
    assert bytes.fromhex(EVENT["schema_fingerprint_hex"]) in core


def test_resealing_reproduces_the_bytes_exactly() -> None:
    schema = default_registry().by_type(EVENT["event_type"])
    assert schema.fingerprint.hex() == EVENT["schema_fingerprint_hex"]
    recipients = next(s for s in EVENT["sections"] if s["name"] == "main")["audience"]
    medical = next(s for s in EVENT["sections"] if s["name"] == "medical")["audience"]
    data = seal(
        EventType(EVENT["event_type"]),
        schema.from_json(EVENT["record"]),
        sender=identity("hopital-93-avicenne"),
        partnership=VECTORS["partnership"],
        recipients=[Recipient(p, identity(p).key_id, identity(p).box_pk) for p in recipients],
        departement="93",
        priority=Priority.URGENT,
        audiences={"medical": medical},
        now_ms=NOW_MS,
        random=Drbg(EVENT["seal_random_seed"].encode()),
        edition=EVENT["edition"],
        rules_version=EVENT["rules_version"],
    )
    assert data.hex() == EVENT["envelope_hex"]


def _without_logical_types(schema: Any) -> Any:
    """The schema with ``{"type": <primitive>, "logicalType": ...}`` reduced to the primitive.

    The Avro specification's Parsing Canonical Form reduces such a schema to the bare
    primitive name (fastavro and the Java implementation do); the Python ``avro`` package
    1.12 keeps ``{"type": "int"}`` and so computes another CRC. Reducing first lets ``avro``
    compute the specified fingerprint.
    """
    if isinstance(schema, list):
        return [_without_logical_types(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if (
        "logicalType" in schema
        and isinstance(schema.get("type"), str)
        and schema["type"] in ("int", "long", "string", "bytes")
    ):
        return schema["type"]
    out = dict(schema)
    if "fields" in out:
        out["fields"] = [{**f, "type": _without_logical_types(f["type"])} for f in out["fields"]]
    for key in ("items", "values"):
        if key in out:
            out[key] = _without_logical_types(out[key])
    return out


def _avro_decode(section: dict[str, Any], plaintext: bytes) -> dict[str, Any]:
    parsed = avro.schema.parse(json.dumps(section["section_schema"]))
    plain = avro.schema.parse(json.dumps(_without_logical_types(section["section_schema"])))
    # single-object encoding: C3 01, then the schema's CRC-64-AVRO, little endian
    assert plaintext[:2] == b"\xc3\x01"
    assert plaintext[2:10] == plain.fingerprint("CRC-64-AVRO")
    decoder = avro.io.BinaryDecoder(io.BytesIO(plaintext[10:]))
    datum = avro.io.DatumReader(parsed).read(decoder)
    assert isinstance(datum, dict)
    return datum


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return to_jsonable(value)


@pytest.mark.parametrize("section", EVENT["sections"], ids=lambda s: s["name"])
def test_sections_decrypt_and_decode_with_the_avro_package(section: dict[str, Any]) -> None:
    data = bytes.fromhex(EVENT["envelope_hex"])
    reader = identity(section["audience"][0])
    opened = open_envelope(data, recipient=reader, keys=VectorKeys(), now_ms=NOW_MS)
    assert section["name"] in opened.opened_sections
    plaintext = bytes.fromhex(section["plaintext_hex"])
    datum = _avro_decode(section, plaintext)
    assert _normalise(datum) == _normalise(section["decoded"])
    fields = {k: opened.fields[k] for k in section["decoded"]}
    assert _normalise(fields) == _normalise(section["decoded"])


def test_section_ciphertext_is_xchacha20poly1305_of_the_plaintext() -> None:
    """Recompute a ciphertext from the unwrapped key, nonce and documented associated data."""
    data = bytes.fromhex(EVENT["envelope_hex"])
    core = bytes.fromhex(EVENT["core_hex"])
    parquet = identity("parquet-93-bobigny")
    from relais.schemas.envelope import verify_envelope

    verified = verify_envelope(data, keys=VectorKeys(), now_ms=NOW_MS)
    for index, (info, ct, wraps) in enumerate(
        zip(verified.header.sections, verified.ciphertexts, verified.wraps, strict=True)
    ):
        wrap = wraps[info.audience.index("parquet-93-bobigny")]
        key = bindings.crypto_box_seal_open(wrap, parquet.box_pk, parquet.box_sk)
        aad = b"RLS\x01\x01" + _uvarint(len(core)) + core + _uvarint(index)
        plaintext = bytes.fromhex(EVENT["sections"][index]["plaintext_hex"])
        again = bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, info.nonce, key)
        assert again == ct
        commitment = hashlib.sha256(b"relais/1 commit\x00" + key + plaintext).digest()
        assert commitment == info.commitment
        assert hashlib.sha256(ct).digest() == info.ct_hash


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_receipt_statement_vector() -> None:
    data = bytes.fromhex(VECTORS["receipt"]["statement_hex"])
    signer = VECTORS["keys"][VECTORS["receipt"]["signer"]]
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(signer["sign_pk_hex"]))
    public.verify(data[-64:], b"relais/1 sig:receipt\x00" + data[:-64])
    statement = verify_statement(data, keys=VectorKeys(), now_ms=NOW_MS + 10_000)
    assert statement.event_type is EventType.RECEIPT
    assert _normalise(statement.record) == _normalise(VECTORS["receipt"]["record"])
