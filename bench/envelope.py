"""Cost of seal / open against the raw primitives the same work needs, measured in one run.

For 1, 4 and 8 recipients of a medical referral (two sections: main to everyone, medical to
half of the recipients), prints µs per seal and per open (as a recipient entitled to both
sections), and the ratio to the sum of the raw PyNaCl and fastavro operations: Avro encode
(resp. decode) of each section (and, for seal, one fastavro validation of the record, which
sealing must do), one XChaCha20-Poly1305 per section, one sealed box per wrap
(resp. one sealed-box open per readable section), one Ed25519 sign (resp. verify) over the
signed bytes. Timings are medians of several rounds, interleaved, so the ratio is robust to
machine noise; absolute times are not comparable across runs.

    python bench/envelope.py [--rounds 7] [--iterations 300]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable

import fastavro
from fastavro.validation import validate
from nacl import bindings
from nacl.public import PrivateKey, SealedBox

from relais.agents.territory import PartnerSpec, build_territory
from relais.schemas.domain import EventType, PartnerKind, Priority
from relais.schemas.envelope import Recipient, _parse_unverified, open_envelope, seal
from relais.schemas.registry import default_registry
from relais.schemas.samples import sample_event


def _timer(fn: Callable[[], object], iterations: int) -> float:
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - start) / iterations * 1e6


def measure(n_recipients: int, rounds: int, iterations: int) -> dict[str, float]:
    """Median µs of seal, open, raw-seal and raw-open for ``n_recipients``."""
    specs = [PartnerSpec("hopital-93", PartnerKind.HOSPITAL, "Hôpital", ("93",))]
    specs += [
        PartnerSpec(f"dest-{i:02d}", PartnerKind.PARQUET, f"Destinataire {i}", ("93",))
        for i in range(n_recipients)
    ]
    territory = build_territory(specs)
    sender = territory.identities["hopital-93"]
    ids = [s.id for s in specs[1:]]
    rcpts = [
        Recipient(i, territory.identities[i].key_id, territory.identities[i].box_pk) for i in ids
    ]
    medical = ids[: max(1, n_recipients // 2)]
    keys = territory.keys()
    record = sample_event(EventType.MEDICAL_REFERRAL)
    schema = default_registry().by_type(EventType.MEDICAL_REFERRAL)
    reader = territory.identities[medical[0]]

    def do_seal() -> bytes:
        return seal(
            EventType.MEDICAL_REFERRAL,
            record,
            sender=sender,
            partnership=territory.partnership,
            recipients=rcpts,
            departement="93",
            priority=Priority.URGENT,
            audiences={"medical": medical},
        )

    sealed = do_seal()

    def do_open() -> None:
        open_envelope(sealed, recipient=reader, keys=keys)

    # the raw operations the same work needs
    parts = schema.split(record)
    parsed = {name: schema.sections[name].parsed for name in parts}
    key, nonce = os.urandom(32), os.urandom(24)
    box_pks = [r.box_pk for r in rcpts]
    sk = PrivateKey.generate()
    boxes = {name: SealedBox(sk.public_key).encrypt(key) for name in parts}
    n_wraps = len(ids) + len(medical)
    sign_sk = sender.sign_sk
    message = sealed[: _parse_unverified(sealed).signed_end]  # what is really signed
    signature = bindings.crypto_sign(message, sign_sk)[:64]
    bodies = {}
    for name, values in parts.items():
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed[name], values)
        bodies[name] = buf.getvalue()
    cts = {
        n: bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(b, b"", nonce, key)
        for n, b in bodies.items()
    }

    full = schema.full_parsed

    def raw_seal() -> None:
        validate(record, full, raise_errors=False)  # sealing validates its input
        for name, values in parts.items():
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed[name], values)
            bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(buf.getvalue(), b"", nonce, key)
        for i in range(n_wraps):
            bindings.crypto_box_seal(key, box_pks[i % len(box_pks)])
        bindings.crypto_sign(message, sign_sk)

    def raw_open() -> None:
        bindings.crypto_sign_open(signature + message, sender.sign_pk)
        for name in parts:
            bindings.crypto_box_seal_open(boxes[name], bytes(sk.public_key), bytes(sk))
            bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(cts[name], b"", nonce, key)
            fastavro.schemaless_reader(io.BytesIO(bodies[name]), parsed[name], parsed[name])

    results: dict[str, list[float]] = {k: [] for k in ("seal", "raw_seal", "open", "raw_open")}
    for _ in range(rounds):
        results["seal"].append(_timer(do_seal, iterations))
        results["raw_seal"].append(_timer(raw_seal, iterations))
        results["open"].append(_timer(do_open, iterations))
        results["raw_open"].append(_timer(raw_open, iterations))
    return {k: statistics.median(v) for k, v in results.items()}


def main() -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    head = ("recipients", "seal µs", "raw µs", "ratio", "open µs", "raw µs", "ratio")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (10, 9, 8, 6, 9, 8, 6), strict=True)))
    worst = 0.0
    for n in (1, 4, 8):
        m = measure(n, args.rounds, args.iterations)
        rs, ro = m["seal"] / m["raw_seal"], m["open"] / m["raw_open"]
        worst = max(worst, rs, ro)
        print(
            f"{n:>10} {m['seal']:>9.0f} {m['raw_seal']:>8.0f} {rs:>6.2f}"
            f" {m['open']:>9.0f} {m['raw_open']:>8.0f} {ro:>6.2f}"
        )
    print(f"worst ratio {worst:.2f} (target ≤ 1.30)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
