"""Golden vectors of the wire format, checked with independent implementations.

Signatures are verified with the ``cryptography`` package's Ed25519 (OpenSSL, not
libsodium); section bodies are decoded with the reference ``avro`` package (not fastavro);
the CRC-64 of each section schema is recomputed by ``avro``. Re-sealing the recorded record
with the recorded keys, clock and random stream must give the recorded bytes exactly.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl import bindings

from relais.agents.keys import PartnerKeys
from relais.broker_config.directory import DirectoryKeys, verify_directory
from relais.broker_config.rules import load_rules
from relais.gateway.audit import Anchor, decode_record, open_checkpoint, verify_messages
from relais.gateway.jetstream import StoredMessage
from relais.gateway.policy import Policy
from relais.gateway.router import Refused, RouterConfig, admit
from relais.schemas.domain import EventType, PartnerKind, Priority
from relais.schemas.envelope import Recipient, open_envelope, seal, verify_envelope
from relais.schemas.errors import EnvelopeError, Reason, RelaisError
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


# -- negative vectors ---------------------------------------------------------------------------
#
# tests/vectors/negative_v1.json (format: docs/protocol.md §9): every vector is refused by the
# public decoders and verifiers with exactly its expected code ("OK": accepted), and every
# member of Reason is either the expected code of a vector or listed in NOT_ON_EXCHANGED_BYTES.

NEGATIVE = json.loads(
    Path(__file__).with_name("vectors").joinpath("negative_v1.json").read_text("utf-8")
)
CONTEXT = NEGATIVE["context"]
ROOT_PK = bytes.fromhex(CONTEXT["root_sign_pk_hex"])
DIRECTORY = verify_directory(
    base64.b64decode(CONTEXT["directory_b64"]), ROOT_PK, now_ms=CONTEXT["directory_now_ms"]
)
KEYS = DirectoryKeys(DIRECTORY)
POLICY = Policy(DIRECTORY, load_rules(DIRECTORY.rules))
ROUTER = RouterConfig(max_age_ms=CONTEXT["max_age_ms"], skew_ms=CONTEXT["skew_ms"])

# Codes no single exchanged input decides, each with why; docs/protocol.md §9 lists them too.
NOT_ON_EXCHANGED_BYTES: dict[str, str] = {
    "SECTION_COUNT_MISMATCH": "reserved: the framing makes the section count implicit",
    "WRAP_COUNT_MISMATCH": "reserved: the framing makes the wrap count implicit",
    "REPLAY": "the router's replay store: depends on earlier ingress messages (test_router.py)",
    "EDITION_CHANGED": "a rejection sent under the grace of an earlier edition: router state",
    "KEYFILE_PERMISSIONS": "a local private key file's mode",
    "KEYFILE_BAD_PASSPHRASE": "a local private key file's passphrase",
    "KEYFILE_MALFORMED": "a local private key file's format",
    "SCHEMA_INVALID": "the .avsc files loaded into the registry",
    "SCHEMA_LINT": "the .avsc files loaded into the registry",
    "SCHEMA_INCOMPATIBLE": "a schema change checked against the history",
    "SCHEMA_CONFLICT": "two schema files with one canonical form",
    "NO_RULE": "the sender's agent finds nobody to seal for",
    "PERMISSION_DENIED": "transport: nats-server refused an operation",
    "TIMEOUT": "transport",
    "NOT_CONNECTED": "transport",
    "SERVER_NOT_DURABLE": "transport: the broker does not fsync every write",
    "BROKER_ERROR": "transport",
    "STORAGE_LIMIT": "transport: a stream or a partner's share of it is full",
    "CONNECTION_LIMIT": "transport: an identity holds all its connections",
    "CONFIG_INVALID": "settings, broker configuration, command-line input",
    "INVALID_PAYLOAD": "the agent's local HTTP API bodies (and the tracker's receipt rule)",
    "IDEMPOTENCY_KEY_REUSED": "the agent's local HTTP API",
    "UNAUTHORIZED": "the agent's local HTTP API",
    "UNKNOWN_EVENT": "the agent's local HTTP API",
    "STATE_CONFLICT": "the agent's local HTTP API",
    "NOT_READY": "the agent's local HTTP API",
    "STORE_FAILED": "the agent's local store",
}


@dataclass(frozen=True)
class _Holder:
    """A recipient's identity from the vectors' context (box keys only: it opens, never signs)."""

    partner_id: str
    key_id: str
    box_pk: bytes
    box_sk: bytes
    sign_sk: bytes = b""


def _holder(partner_id: str) -> _Holder:
    entry = CONTEXT["keys"][partner_id]
    return _Holder(
        partner_id,
        entry["key_id"],
        bytes.fromhex(entry["box_pk_hex"]),
        bytes.fromhex(entry["box_sk_hex"]),
    )


def _input(vector: dict[str, Any]) -> bytes:
    data = base64.b64decode(vector["input_b64"])
    pad = vector.get("pad")
    if pad is not None:
        data += bytes([pad["byte"]]) * (pad["to"] - len(data))
    return data


def _envelope(vector: dict[str, Any], data: bytes) -> str:
    now = vector["now_ms"]
    if vector["check"] == "admit":
        checked = admit(
            data, sender=vector["ingress_sender"], policy=POLICY, now_ms=now, config=ROUTER
        )
        return checked.reason.value if isinstance(checked, Refused) else "OK"
    if vector["check"] == "open":
        recipient = _holder(vector["recipient"])
        open_envelope(data, recipient=recipient, keys=KEYS, now_ms=now, skew_ms=ROUTER.skew_ms)
        return "OK"
    verify_envelope(data, keys=KEYS, now_ms=now, skew_ms=ROUTER.skew_ms)
    return "OK"


def _statement(vector: dict[str, Any], data: bytes) -> str:
    kind = vector.get("expected_kind")
    statement = verify_statement(
        data, keys=KEYS, expected=EventType(kind) if kind else None, now_ms=vector["now_ms"]
    )
    # "from_gateway": the receiver's rule for rejections and notices (agents/receiving.py)
    if vector["check"] == "from_gateway" and KEYS.partner_kind(statement.signer) is not (
        PartnerKind.GATEWAY
    ):
        return Reason.SIGNER_NOT_GATEWAY.value
    return "OK"


def _directory(vector: dict[str, Any], data: bytes) -> str:
    directory = verify_directory(
        data, ROOT_PK, min_serial=vector.get("min_serial"), now_ms=vector.get("now_ms")
    )
    if vector["check"] == "edition":
        load_rules(directory.rules)
    return "OK"


def _audit_log(vector: dict[str, Any]) -> tuple[str, int]:
    messages = [
        StoredMessage(m["seq"], m["subject"], base64.b64decode(m["data_b64"]), {})
        for m in vector["messages"]
    ]
    anchor = Anchor.parse(vector["anchor"]) if "anchor" in vector else None
    report = verify_messages(messages, keys=KEYS, last_seq=vector["last_seq"], anchor=anchor)
    if report.problem is None:
        return "OK", 0
    return report.problem.reason.value, report.problem.seq


def outcome(vector: dict[str, Any]) -> str:
    """What relais answers to a vector: ``OK`` or the reason code of its typed error."""
    target = vector["target"]
    if target == "audit_log":
        return _audit_log(vector)[0]
    data = _input(vector)
    try:
        if target == "envelope":
            return _envelope(vector, data)
        if target == "statement":
            return _statement(vector, data)
        if target == "directory":
            return _directory(vector, data)
        if target == "audit_record":
            decode_record(data)
        elif target == "checkpoint":
            open_checkpoint(data, keys=KEYS)
        else:
            raise AssertionError(f"unknown target {target}")
    except RelaisError as exc:
        cause = exc.__cause__
        if target == "checkpoint" and isinstance(cause, EnvelopeError):
            # the inner reason of AUDIT_CHECKPOINT_INVALID, where the vector names one
            return f"{exc.reason.value}/{cause.reason.value}"
        return exc.reason.value
    return "OK"


@pytest.mark.parametrize("vector", NEGATIVE["vectors"], ids=lambda v: v["id"])
def test_negative_vector(vector: dict[str, Any]) -> None:
    code, _, inner = outcome(vector).partition("/")
    assert code == vector["expected"]
    assert inner == vector.get("inner", inner)
    if vector["target"] == "audit_log":
        assert _audit_log(vector)[1] == vector["problem_seq"]
    if vector["target"] == "envelope" and vector["check"] == "verify":
        # the router refuses what verification refuses, with the same code
        checked = admit(
            _input(vector), sender="x-0", policy=POLICY, now_ms=vector["now_ms"], config=ROUTER
        )
        assert isinstance(checked, Refused)
        assert checked.reason.value == vector["expected"]


def test_every_reason_has_a_vector_or_a_documented_exemption() -> None:
    expected = {v["expected"] for v in NEGATIVE["vectors"]} - {"OK"}
    codes = {r.value for r in Reason}
    assert expected <= codes
    assert not expected & NOT_ON_EXCHANGED_BYTES.keys(), "an exempt code has a vector"
    assert codes - expected == NOT_ON_EXCHANGED_BYTES.keys()
    assert all(why for why in NOT_ON_EXCHANGED_BYTES.values())


def test_every_reason_is_in_the_protocol_document() -> None:
    text = (Path(__file__).parents[1] / "docs" / "protocol.md").read_text("utf-8")
    missing = [r.value for r in Reason if f"`{r.value}`" not in text]
    assert not missing
    assert "negative_v1.json" in text


def test_vectors_are_reproducible() -> None:
    """``generate.py --check`` rebuilds both vector files byte for byte."""
    script = Path(__file__).with_name("vectors") / "generate.py"
    done = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
