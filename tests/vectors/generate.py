"""Regenerate the vectors of the wire format (``python tests/vectors/generate.py``).

Two files: ``envelope_v1.json``, the golden (positive) vectors below, and
``negative_v1.json``, one vector per refusal (``forge.py``: the partnership and the forgers;
``negative_envelope.py``, ``negative_statement.py``, ``negative_directory.py``,
``negative_audit.py``: the vectors; format in docs/protocol.md §9.3). ``--check`` rebuilds
both in memory and exits 1 if either file differs from what is committed (CI runs it through
tests/test_vectors.py).

The vectors pin the bytes of protocol version 1: fixed keys, fixed clock and a deterministic
random source, so that an independent implementation can reproduce every byte. Regenerate
only when the wire format or a schema changes on purpose, and say so in the commit.

Random draws, in this order (each ``draw(n)`` takes the next ``n`` bytes of the stream
``SHA-256(seed || counter_be64)`` for counter 0, 1, 2...):
for keys: for each partner, its Ed25519 seed (32) then its X25519 secret (32);
for ``seal``: the event id's 10 random bytes; for each section in order, its content key
(32) then its nonce (24); then for each section in order and each audience entry in order,
the ephemeral X25519 secret of the wrap (32).
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

from relais.agents.keys import PartnerKeys
from relais.schemas import envelope as env_mod
from relais.schemas.domain import EventType, Priority
from relais.schemas.envelope import Recipient, open_envelope, seal, verify_envelope
from relais.schemas.registry import default_registry, to_jsonable
from relais.schemas.samples import sample_event
from relais.schemas.statements import sign_statement, verify_statement

OUT = Path(__file__).with_name("envelope_v1.json")
NEGATIVE_OUT = Path(__file__).with_name("negative_v1.json")
NOW_MS = 1_763_159_400_000  # 2025-11-14T22:30:00Z
PARTNERSHIP = "pilot-93"
EDITION = 7  # the configuration edition (directory serial) the sender routed with
RULES_VERSION = 2
SENDER = "hopital-93-avicenne"
RECIPIENTS = ("crip-93", "parquet-93-bobigny", "uaped-93-jean-verdier")
MEDICAL_AUDIENCE = ("parquet-93-bobigny", "uaped-93-jean-verdier")


class Drbg:
    """Deterministic byte stream: SHA-256(seed || counter), counter from 0."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.counter = 0
        self.buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self.buffer) < n:
            block = self.seed + self.counter.to_bytes(8, "big")
            self.buffer += hashlib.sha256(block).digest()
            self.counter += 1
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


def keys_for(ids: tuple[str, ...], drbg: Drbg) -> dict[str, PartnerKeys]:
    """Deterministic key pairs."""
    return {pid: PartnerKeys(pid, drbg(32), drbg(32)) for pid in ids}


def build() -> dict[str, Any]:
    """Every vector, as one JSON document."""
    keys = keys_for((SENDER, *RECIPIENTS), Drbg(b"relais vectors v1 keys"))
    default_registry()
    record = sample_event(EventType.MEDICAL_REFERRAL, rng=random.Random(2025))
    data = seal(
        EventType.MEDICAL_REFERRAL,
        record,
        sender=keys[SENDER],
        partnership=PARTNERSHIP,
        recipients=[Recipient(p, keys[p].key_id, keys[p].box_pk) for p in RECIPIENTS],
        departement="93",
        priority=Priority.URGENT,
        audiences={"medical": MEDICAL_AUDIENCE},
        now_ms=NOW_MS,
        random=Drbg(b"relais vectors v1 seal"),
        edition=EDITION,
        rules_version=RULES_VERSION,
    )
    resolver = _Resolver(keys)
    verified = verify_envelope(data, keys=resolver, now_ms=NOW_MS)
    framed = env_mod._parse_unverified(data)
    schema = verified.schema
    sections = []
    for info in verified.header.sections:
        reader = keys[info.audience[0]]
        opened = open_envelope(verified, recipient=reader, keys=resolver)
        plaintext = schema.encode_section(info.name, schema.split(record)[info.name])
        sections.append(
            {
                "name": info.name,
                "audience": list(info.audience),
                "plaintext_hex": plaintext.hex(),
                "section_schema": schema.sections[info.name].parsed,
                "decoded": to_jsonable(
                    {f: opened.fields[f] for f in schema.sections[info.name].fields}
                ),
            }
        )
    receipt_record = sample_event(EventType.RECEIPT, rng=random.Random(7))
    receipt = sign_statement(
        EventType.RECEIPT,
        receipt_record,
        signer=keys["crip-93"],
        partnership=PARTNERSHIP,
        now_ms=NOW_MS + 5_000,
    )
    return {
        "description": "relais wire format v1 golden vectors; see docs/protocol.md",
        "now_ms": NOW_MS,
        "partnership": PARTNERSHIP,
        "keys": {
            pid: {
                "key_id": k.key_id,
                "sign_seed_hex": k.sign_sk[:32].hex(),
                "sign_pk_hex": k.sign_pk.hex(),
                "box_sk_hex": k.box_sk.hex(),
                "box_pk_hex": k.box_pk.hex(),
            }
            for pid, k in keys.items()
        },
        "event": {
            "event_type": EventType.MEDICAL_REFERRAL.value,
            "record": to_jsonable(record),
            "seal_random_seed": "relais vectors v1 seal",
            "envelope_hex": data.hex(),
            "core_hex": framed.core.hex(),
            "signed_end": framed.signed_end,
            "signature_hex": data[-64:].hex(),
            "schema_fingerprint_hex": schema.fingerprint.hex(),
            "event_id": str(verified.header.event_id),
            "edition": verified.header.edition,
            "rules_version": verified.header.rules_version,
            "routing": dict(verified.header.routing),
            "sections": sections,
        },
        "receipt": {
            # as decoded (schema defaults filled in), which is what a verifier compares
            "record": to_jsonable(
                verify_statement(receipt, keys=resolver, now_ms=NOW_MS + 5_000).record
            ),
            "statement_hex": receipt.hex(),
            "signer": "crip-93",
        },
    }


class _Resolver:
    partnership = PARTNERSHIP

    def __init__(self, keys: dict[str, PartnerKeys]) -> None:
        self.keys = keys

    def signing_key(self, partner_id: str, key_id: str, at_ms: int) -> bytes:
        return self.keys[partner_id].sign_pk


def build_negative() -> dict[str, Any]:
    """The negative vectors, as one JSON document."""
    # siblings of this script (python puts its folder first on the path)
    import forge
    from forge import build_world
    from negative_audit import checkpoint_vectors, log_vectors, record_vectors
    from negative_directory import directory_vectors
    from negative_envelope import envelope_vectors
    from negative_statement import statement_vectors

    world = build_world()
    vectors = [
        *envelope_vectors(world),
        *statement_vectors(world),
        *directory_vectors(world),
        *record_vectors(),
        *checkpoint_vectors(world),
        *log_vectors(world),
    ]
    ids = [v["id"] for v in vectors]
    assert len(set(ids)) == len(ids), "vector ids are unique"
    return {
        "description": "relais wire format v1 negative vectors; format: docs/protocol.md §9",
        "format": "relais-negative-vectors/1",
        "context": {
            "partnership": forge.PARTNERSHIP,
            "root_sign_pk_hex": world.root.sign_pk.hex(),
            "directory_b64": base64.b64encode(world.signed_directory).decode("ascii"),
            "directory_now_ms": forge.NOW_MS,
            "skew_ms": forge.SKEW_MS,
            "max_age_ms": forge.MAX_AGE_MS,
            "keys": {
                pid: {
                    "key_id": k.key_id,
                    "box_sk_hex": k.box_sk.hex(),
                    "box_pk_hex": k.box_pk.hex(),
                }
                for pid, k in sorted(world.identities.items())
            },
        },
        "vectors": vectors,
    }


def _text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    """Write the vectors files, or with ``--check`` compare them with a fresh build."""
    outputs = {OUT: _text(build()), NEGATIVE_OUT: _text(build_negative())}
    if "--check" in argv:
        stale = [p.name for p, text in outputs.items() if p.read_text("utf-8") != text]
        if stale:
            print(f"out of date: {', '.join(stale)} (run python tests/vectors/generate.py)")
            return 1
        print("vectors up to date")
        return 0
    for path, text in outputs.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
