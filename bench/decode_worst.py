"""Time and memory of each decoder on the worst inputs we can build, against a normal input.

For every decoder of outside input (section bodies, envelopes, statements, the directory,
audit records, checkpoints), prints the median µs and the peak memory (tracemalloc) of one
decode of a normal input measured in the same run, then of each worst case, as ratios to
that baseline. Worst cases are refused or accepted as they come: the point is what they
cost. Absolute times are not comparable across runs; nothing here is asserted.

    python bench/decode_worst.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable

from relais.agents.territory import build_territory
from relais.broker_config.directory import verify_directory
from relais.gateway.audit import AuditKind, decode_record, encode_record, open_checkpoint
from relais.schemas.avro_strict import MAX_ITEMS
from relais.schemas.domain import EventType, Priority
from relais.schemas.envelope import MAX_ENVELOPE_BYTES, Recipient, seal, verify_envelope
from relais.schemas.errors import RelaisError
from relais.schemas.registry import default_registry
from relais.schemas.samples import sample_event


def _varint(n: int) -> bytes:
    raw, out = n << 1, bytearray()
    while True:
        out.append((raw & 0x7F) | (0x80 if raw > 0x7F else 0))
        raw >>= 7
        if not raw:
            return bytes(out)


def _cost(fn: Callable[[], object], rounds: int) -> tuple[float, int]:
    """Median µs of one call, and its peak traced memory in bytes."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        with contextlib.suppress(RelaisError):
            fn()
        times.append((time.perf_counter() - start) * 1e6)
    tracemalloc.start()
    with contextlib.suppress(RelaisError):
        fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak


def _medical_cases() -> dict[str, bytes]:
    schema = default_registry().by_type(EventType.MEDICAL_REFERRAL)
    record = sample_event(EventType.MEDICAL_REFERRAL) | {"injuries": [], "sti_tests": []}
    record["toxicology"] = []
    body = schema.encode_record(record)["medical"]
    findings = record["clinical_findings"].encode()
    at = 10 + len(_varint(len(findings))) + len(findings) + 3  # the toxicology list
    packed = _varint(98_000) + b"\x00\x02" * 98_000 + b"\x00"
    full = dict(record, toxicology=[{"substance": "GHB", "result": "PENDING"}] * MAX_ITEMS)
    big_text = dict(record, clinical_findings="x" * 190_000)
    return {
        "normal": schema.encode_record(sample_event(EventType.MEDICAL_REFERRAL))["medical"],
        "192 KiB of 2-byte items (refused)": body[:at] + packed + body[at + 1 :],
        f"{MAX_ITEMS} items (the cap, accepted)": schema.encode_record(full)["medical"],
        "one 190 KB string": schema.encode_record(big_text)["medical"],
    }


def main() -> None:
    """Print one table per decoder."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    t = build_territory()
    schema = default_registry().by_type(EventType.MEDICAL_REFERRAL)
    crip = t.identities["crip-93"]
    envelope = seal(
        EventType.MEDICAL_REFERRAL,
        sample_event(EventType.MEDICAL_REFERRAL),
        sender=t.identities["hopital-93-avicenne"],
        partnership=t.partnership,
        recipients=[Recipient("crip-93", crip.key_id, crip.box_pk)],
        departement="93",
        priority=Priority.URGENT,
    )
    record = encode_record(AuditKind.ROUTED, {"event_id": "e", "recipients": ["crip-93"]})
    keys = t.keys()
    root = t.root.sign_pk
    # inputs are built before measuring: only the decode is timed and traced
    garbage = envelope[:5] + b"\xff" * (MAX_ENVELOPE_BYTES - 5)
    flood = b"[" + b"{}," * (21 * 1024 * 1024) + b"{}]"
    ones = b"[" + b"1," * 2_400_000 + b"1]"
    nested = b"[" * 32768 + b"]" * 32768
    long_text = b'{"kind":"ROUTED","v":1,"x":"' + b"a" * 65000 + b'"}'
    deep_checkpoint = b"[" * 2048 + b"]" * 2048
    checkpoint = json.dumps({"checkpoint": {}, "signature": ""}).encode()
    suites: dict[str, dict[str, Callable[[], object]]] = {
        "section body": {
            name: (lambda b=b: schema.decode_section("medical", b))
            for name, b in _medical_cases().items()
        },
        "envelope": {
            "normal": lambda: verify_envelope(envelope, keys=keys),
            "256 KiB of 0xff after the magic": lambda: verify_envelope(garbage, keys=keys),
        },
        "directory": {
            "normal": lambda: verify_directory(t.signed_directory, root),
            "63 MiB of [{},...] (refused)": lambda: verify_directory(flood, root),
            "[1,1,...] at the value cap": lambda: verify_directory(ones, root),
        },
        "audit record": {
            "normal": lambda: decode_record(record),
            "64 KiB nested lists (refused)": lambda: decode_record(nested),
            "64 KiB string": lambda: decode_record(long_text),
        },
        "checkpoint": {
            "normal": lambda: open_checkpoint(checkpoint, keys=keys),
            "4 KiB nested (refused)": lambda: open_checkpoint(deep_checkpoint, keys=keys),
        },
    }
    for title, cases in suites.items():
        base_us, base_mem = _cost(cases["normal"], rounds)
        print(f"\n{title}: normal {base_us:.0f} µs, {base_mem / 1024:.0f} KiB peak")
        for name, fn in cases.items():
            if name == "normal":
                continue
            us, mem = _cost(fn, rounds)
            print(
                f"  {name:40s} {us:10.0f} µs ({us / base_us:7.1f}x)"
                f" {mem / 1024:9.0f} KiB ({mem / max(base_mem, 1):7.1f}x)"
            )


if __name__ == "__main__":
    main()
