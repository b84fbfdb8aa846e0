"""The audit log: hash chain, signed checkpoints, ``relais audit verify``, tampering on disk.

* Without a broker: the verifier on stored messages built by hand (a clean log, then a
  record modified, removed, reordered, a checkpoint forged or out of line, an anchor).
* Against a real nats-server (module fixture): a whole scenario runs through the gateway
  in-process (routed events, a medical referral, refusals, receipts, an escalation, a
  closure, periodic checkpoints) with a canary string in every event's content; afterwards
  the canary must appear in no stream's subjects or headers, in no audit record, in no
  quarantine index header, in no log line and in no metric.
* Tampering: the server is stopped and its ``AUDIT`` store files are edited the way an
  attacker with disk access would. nats-server keeps each message in a ``.blk`` file with a
  per-record HighwayHash-64 checksum, but the hash key is derived from public data
  (SHA-256 of ``"<stream>-<block index>"``), so the attacker recomputes it and removes the
  block index (``index.db``) for the server to rebuild its state from the edited blocks:
  the server then serves the forged records as genuine. ``relais audit verify`` must catch
  a modified, a removed and a reordered record through the hash chain and the signed
  checkpoints. A careless attacker who does not fix the checksum leaves the server to drop
  what it cannot read, possibly with everything after it; the anchor printed by an earlier
  verification then shows the cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import generate_latest
from typer.testing import CliRunner

from relais.broker_config.connection import connect
from relais.broker_config.directory import DirectoryKeys
from relais.broker_config.embedded import start_server, stop_process
from relais.broker_config.nats_conf import TRACKER_INBOX
from relais.broker_config.rules import default_rules_text, load_rules, with_deadline
from relais.broker_config.streams import STREAMS
from relais.cli.audit_cmd import app as audit_app
from relais.gateway import metrics
from relais.gateway.audit import (
    CHECKPOINT_SUBJECT,
    GENESIS,
    RECORD_SUBJECT,
    Anchor,
    AuditKind,
    Checkpoint,
    chain_next,
    encode_record,
    sign_checkpoint,
    verify_messages,
)
from relais.gateway.checkpoint import Checkpointer
from relais.gateway.jetstream import StoredMessage, get_message, read_stream
from relais.gateway.policy import Policy
from relais.gateway.router import Router, RouterConfig
from relais.gateway.service import publish_directory
from relais.gateway.tracker import Tracker, TrackerConfig
from relais.gateway.tracker_store import EventState, TrackerStore
from relais.schemas.domain import EventType
from relais.schemas.envelope import peek_header
from relais.schemas.errors import Reason, RelaisError
from relais.schemas.samples import sample_event
from relais.schemas.statements import sign_statement

CANARY = "TEMOIN-CANARI-AUDIT-7Q"
GEND = "gend-93-bobigny"
CRIP = "crip-93"
HOSPITAL = "hopital-93-avicenne"
SCHOOL = "college-93-jaures"
BOUND = 20.0  # upper bound of a wait, not a performance target


# -- the verifier on messages built by hand ---------------------------------------------------


def build_log(territory, payloads: list[bytes], every: int) -> list[StoredMessage]:
    """Records and a checkpoint every ``every`` records, as the gateway writes them."""
    signer = territory.identities["gateway"]
    messages: list[StoredMessage] = []
    chain = sealed = GENESIS
    first = count = 0
    for payload in payloads:
        seq = len(messages) + 1
        messages.append(StoredMessage(seq, RECORD_SUBJECT, payload, {}))
        chain = chain_next(chain, seq, payload)
        first, count = first or seq, count + 1
        if count == every:
            cp = Checkpoint(
                partnership=territory.directory.partnership,
                signer=signer.partner_id,
                key_id=signer.key_id,
                first_seq=first,
                last_seq=seq,
                count=count,
                chain=chain.hex(),
                previous=sealed.hex(),
                at=time.time_ns() // 1_000_000,
            )
            data = sign_checkpoint(cp, signer)
            messages.append(StoredMessage(len(messages) + 1, CHECKPOINT_SUBJECT, data, {}))
            sealed, first, count = chain, 0, 0
    return messages


def payloads(n: int) -> list[bytes]:
    return [
        encode_record(AuditKind.RECEIPT, {"event_id": f"e{i}", "state": "DELIVERED", "at": i})
        for i in range(n)
    ]


def renumbered(messages: list[StoredMessage]) -> list[StoredMessage]:
    return [StoredMessage(i + 1, m.subject, m.data, m.headers) for i, m in enumerate(messages)]


def test_verifier_on_a_clean_and_on_damaged_logs(demo_territory) -> None:
    t = demo_territory
    keys = DirectoryKeys(t.directory)
    log = build_log(t, payloads(7), every=3)  # r r r C r r r C r
    clean = verify_messages(log, keys=keys, partnership=t.directory.partnership)
    assert clean.ok
    assert clean.records == 7
    assert clean.checkpoints == 2
    assert clean.sealed_through == 7
    assert clean.unsealed == 1
    anchor = Anchor.parse(clean.anchor)
    assert verify_messages(log, keys=keys, anchor=anchor).ok

    def problem(messages, **kw):
        report = verify_messages(messages, keys=keys, **kw)
        assert not report.ok
        return report.problem.reason, report.problem.seq

    modified = list(log)
    modified[1] = StoredMessage(2, RECORD_SUBJECT, payloads(9)[8], {})
    assert problem(modified) == (Reason.AUDIT_CHAIN_MISMATCH, 4)
    assert problem(log[:1] + log[2:]) == (Reason.AUDIT_RECORD_MISSING, 2)
    assert problem(renumbered(log[:1] + log[2:]))[0] in (
        Reason.AUDIT_CHAIN_MISMATCH,
        Reason.AUDIT_CHECKPOINT_DISCONTINUOUS,
    )
    swapped = list(log)
    swapped[0], swapped[1] = (
        StoredMessage(1, RECORD_SUBJECT, log[1].data, {}),
        StoredMessage(2, RECORD_SUBJECT, log[0].data, {}),
    )
    assert problem(swapped) == (Reason.AUDIT_CHAIN_MISMATCH, 4)
    # A checkpoint signed by a partner that is not the gateway, or not signed at all.
    forged = json.loads(log[3].data)
    forged["checkpoint"]["signer"] = CRIP
    assert (
        problem([*log[:3], StoredMessage(4, CHECKPOINT_SUBJECT, json.dumps(forged).encode(), {})])[
            0
        ]
        == Reason.AUDIT_CHECKPOINT_INVALID
    )
    # The second checkpoint dropped: the third's "previous" does not follow the first.
    longer = build_log(t, payloads(9), every=3)
    assert problem(renumbered(longer[:4] + longer[8:]))[0] in (
        Reason.AUDIT_CHECKPOINT_DISCONTINUOUS,
        Reason.AUDIT_CHAIN_MISMATCH,
    )
    # A record that is not canonical JSON, a foreign subject, a cut with an anchor.
    bad = [*log[:1], StoredMessage(2, RECORD_SUBJECT, b'{"kind": "ROUTED"}', {}), *log[2:]]
    assert problem(bad) == (Reason.AUDIT_RECORD_MALFORMED, 2)
    assert problem(log[:6], anchor=anchor) == (Reason.AUDIT_ANCHOR_MISSING, 7)
    assert problem(log[:6], last_seq=len(log)) == (Reason.AUDIT_RECORD_MISSING, 7)
    assert problem(log, partnership="other")[0] == Reason.AUDIT_CHECKPOINT_INVALID


# -- a scenario against a real server -----------------------------------------------------------


@dataclass
class Scenario:
    """What the module's scenario left behind."""

    broker: Any
    pristine: Path  # a copy of the broker's root, taken with the server stopped
    logs: list[dict[str, Any]] = field(default_factory=list)
    metrics: bytes = b""
    subjects_and_headers: list[str] = field(default_factory=list)
    audit: list[bytes] = field(default_factory=list)
    quarantine_headers: list[dict[str, str]] = field(default_factory=list)
    database: bytes = b""


def short_rules():
    return load_rules(with_deadline(default_rules_text(), "runaway-alert", 3))


async def _publish(broker, partner: str, kind: str, data: bytes) -> None:
    conn = await broker.partner(partner)
    try:
        await conn.js_publish(
            f"ref.{kind}.{partner}", data, msg_id=hashlib.sha256(data).hexdigest()
        )
    finally:
        await conn.close()


async def _until(check) -> None:
    deadline = time.monotonic() + BOUND
    while not check():
        assert time.monotonic() < deadline, "the scenario did not complete"
        await asyncio.sleep(0.05)


async def _events(t, seal, rules) -> list[tuple[str, bytes]]:
    def alert(**kw):
        return sample_event(EventType.RUNAWAY_ALERT, canary=CANARY, in_care=True, **kw)

    events = [
        (GEND, seal(t, EventType.RUNAWAY_ALERT, alert(), sender=GEND, rules=rules))
        for _ in range(3)
    ]
    medical = sample_event(EventType.MEDICAL_REFERRAL, canary=CANARY)
    events.append((HOSPITAL, seal(t, EventType.MEDICAL_REFERRAL, medical, sender=HOSPITAL)))
    danger = sample_event(EventType.DANGER_DECLARATION, canary=CANARY)
    events.append((SCHOOL, seal(t, EventType.DANGER_DECLARATION, danger, sender=SCHOOL)))
    wrong = seal(t, EventType.RUNAWAY_ALERT, alert(), sender=GEND, rules=rules, recipients=[CRIP])
    events.append((GEND, wrong))  # quarantined: RECIPIENTS_NOT_RULES
    return events


async def _run_scenario(broker, t, seal, database: Path) -> None:
    rules = short_rules()
    policy = Policy(t.directory, rules)
    signer = t.identities["gateway"]
    conn = await broker.gateway()
    store = TrackerStore(database)
    stop = asyncio.Event()
    router = Router(conn, policy, signer, config=RouterConfig())
    tracker = Tracker(conn, store, policy, signer, config=TrackerConfig(tick=0.1))
    checkpointer = Checkpointer(
        conn,
        signer,
        partnership=t.directory.partnership,
        every_records=4,
        every_seconds=0.5,
        anchor_file=database.parent / "audit-anchor.json",
    )
    tasks = [
        asyncio.create_task(router.run(stop)),
        asyncio.create_task(tracker.run(stop)),
        asyncio.create_task(checkpointer.run(stop, tick=0.1)),
    ]
    try:
        assert await publish_directory(conn, t.signed_directory, policy, t.root_public_key)
        assert not await publish_directory(conn, t.signed_directory, policy, t.root_public_key)
        events = await _events(t, seal, rules)
        ids = [peek_header(data).event_id for _, data in events]
        for sender, data in events:
            await _publish(broker, sender, "in", data)
        await _until(lambda: all(store.event(i) for i in ids[:5]))
        entry = {"event_id": ids[0], "state": "TAKEN_IN_CHARGE", "decline_reason": None}
        record = {"recipient": CRIP, "entries": [{**entry, "at": datetime.now(UTC)}]}
        receipt = sign_statement(
            EventType.RECEIPT, record, signer=t.identities[CRIP], partnership=t.partnership
        )
        await _publish(broker, CRIP, "rcpt", receipt)
        end = sample_event(
            EventType.RUNAWAY_ENDED, case_ref=ids[1], alert_sender=GEND, in_care=True
        )
        await _publish(broker, GEND, "in", seal(t, EventType.RUNAWAY_ENDED, end, sender=GEND))
        await _until(lambda: store.event(ids[2]).state is EventState.ESCALATED)
        await _until(lambda: store.event(ids[1]).state is EventState.CLOSED)
        await _until(lambda: store.event(ids[0]).state is EventState.TAKEN)
    finally:
        stop.set()
        await asyncio.wait(tasks, timeout=BOUND)
        await conn.close()
        store.close()
    for task in tasks:
        task.result()


async def _dump(broker) -> tuple[list[str], list[bytes], list[dict[str, str]]]:
    """Subjects and headers of every stored message (JetStream API), audit payloads."""
    conn = await broker.gateway()
    shown, audit, quarantine = [], [], []
    try:
        for spec in STREAMS:
            info = await conn.api(f"$JS.API.STREAM.INFO.{spec.name}")
            for seq in range(max(1, info["state"]["first_seq"]), info["state"]["last_seq"] + 1):
                msg = await get_message(conn, spec.name, seq)
                if msg is None:
                    continue
                shown.append(f"{msg.subject} {json.dumps(msg.headers)}")
                if spec.name == "AUDIT":
                    audit.append(msg.data)
                if spec.name == "QUARANTINE":
                    quarantine.append(msg.headers)
        assert len(audit) == len([m async for m in read_stream(conn, "AUDIT")])
    finally:
        await conn.close()
    return shown, audit, quarantine


@pytest.fixture(scope="module")
def scenario(demo_territory, territory_directory, broker_launcher, sealer, tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("audit"))
    broker = broker_launcher(root / "broker", territory_directory(demo_territory))
    database = root / "tracker" / "tracker.sqlite3"
    try:
        with structlog.testing.capture_logs() as logs:
            asyncio.run(_run_scenario(broker, demo_territory, sealer, database))
        shown, audit, quarantine = asyncio.run(_dump(broker))
    finally:
        stop_process(broker.server.pid)
    pristine = root / "pristine"
    shutil.copytree(broker.root, pristine)
    shutil.copy(database.parent / "audit-anchor.json", pristine / "audit-anchor.json")
    (pristine / "root.pub").write_text(demo_territory.root_public_b64 + "\n")
    return Scenario(
        broker=broker,
        pristine=pristine,
        logs=logs,
        metrics=generate_latest(metrics.REGISTRY),
        subjects_and_headers=shown,
        audit=audit,
        quarantine_headers=quarantine,
        database=b"".join(p.read_bytes() for p in database.parent.glob("tracker.sqlite3*")),
    )


def test_the_canary_appears_nowhere(scenario) -> None:
    assert any(e["event"] == "router.routed" for e in scenario.logs)
    assert any(e["event"] == "router.quarantined" for e in scenario.logs)
    assert any(e["event"] == "tracker.escalated" for e in scenario.logs)
    kinds = {json.loads(a).get("kind") for a in scenario.audit if a.startswith(b'{"')}
    assert kinds >= {"ROUTED", "QUARANTINED", "RECEIPT", "ESCALATED", "CLOSED"}
    assert scenario.quarantine_headers
    assert b"relais_router_events" in scenario.metrics
    places = {
        "subjects and headers": "\n".join(scenario.subjects_and_headers).encode(),
        "audit log": b"\n".join(scenario.audit),
        "quarantine index": json.dumps(scenario.quarantine_headers).encode(),
        "logs": repr(scenario.logs).encode(),
        "metrics": scenario.metrics,
        "tracker database": scenario.database,
    }
    for where, data in places.items():
        assert CANARY.encode() not in data, where


# -- tampering with the store -----------------------------------------------------------------

_M64 = (1 << 64) - 1
_INIT0 = (0xDBE6D5D5FE4CCE2F, 0xA4093822299F31D0, 0x13198A2E03707344, 0x243F6A8885A308D3)
_INIT1 = (0x3BD39E10CB0EF593, 0xC0ACF169B5F18A8C, 0xBE5466CF34E90C6C, 0x452821E638D01377)


def _zipper(v1: int, v0: int) -> tuple[int, int]:
    add0 = (
        (((v0 & 0xFF000000) | (v1 & 0xFF00000000)) >> 24)
        | (((v0 & 0xFF0000000000) | (v1 & 0xFF000000000000)) >> 16)
        | (v0 & 0xFF0000)
        | ((v0 & 0xFF00) << 32)
        | ((v1 & 0xFF00000000000000) >> 8)
        | ((v0 << 56) & _M64)
    )
    add1 = (
        (((v1 & 0xFF000000) | (v0 & 0xFF00000000)) >> 24)
        | (v1 & 0xFF0000)
        | ((v1 & 0xFF0000000000) >> 16)
        | ((v1 & 0xFF00) << 24)
        | ((v0 & 0xFF000000000000) >> 8)
        | ((v1 & 0xFF) << 48)
        | (v0 & 0xFF00000000000000)
    )
    return add1 & _M64, add0 & _M64


def highwayhash64(key: bytes, data: bytes) -> bytes:
    """HighwayHash-64 (the reference algorithm), little-endian: nats-server's record checksum."""
    k = struct.unpack("<4Q", key)
    mul0, mul1 = list(_INIT0), list(_INIT1)
    v0 = [_INIT0[i] ^ k[i] for i in range(4)]
    v1 = [_INIT1[i] ^ (((k[i] >> 32) | (k[i] << 32)) & _M64) for i in range(4)]

    def update(lanes: list[int]) -> None:
        for i in range(4):
            v1[i] = (v1[i] + mul0[i] + lanes[i]) & _M64
            mul0[i] ^= ((v1[i] & 0xFFFFFFFF) * (v0[i] >> 32)) & _M64
            v0[i] = (v0[i] + mul1[i]) & _M64
            mul1[i] ^= ((v0[i] & 0xFFFFFFFF) * (v1[i] >> 32)) & _M64
        for src, dst in ((v1, v0), (v0, v1)):
            for hi, lo in ((1, 0), (3, 2)):
                a1, a0 = _zipper(src[hi], src[lo])
                dst[hi], dst[lo] = (dst[hi] + a1) & _M64, (dst[lo] + a0) & _M64

    full = len(data) // 32 * 32
    for off in range(0, full, 32):
        update(list(struct.unpack_from("<4Q", data, off)))
    size = len(data) - full
    if size:
        rest, mod4 = data[full:], size & 3
        for i in range(4):
            v0[i] = (v0[i] + ((size << 32) + size)) & _M64
            halves = [(v1[i] >> s) & 0xFFFFFFFF for s in (0, 32)]
            rot = [((h << size) | (h >> (32 - size))) & 0xFFFFFFFF for h in halves]
            v1[i] = rot[0] | (rot[1] << 32)
        packet = bytearray(32)
        packet[: size & ~3] = rest[: size & ~3]
        if size & 16:
            packet[28:32] = rest[(size & ~3) + mod4 - 4 : (size & ~3) + mod4]
        elif mod4:
            tail = rest[size & ~3 :]
            packet[16], packet[17], packet[18] = tail[0], tail[mod4 >> 1], tail[mod4 - 1]
        update(list(struct.unpack("<4Q", packet)))
    for _ in range(4):
        update([((v0[i] >> 32) | (v0[i] << 32)) & _M64 for i in (2, 3, 0, 1)])
    return struct.pack("<Q", (v0[0] + v1[0] + mul0[0] + mul1[0]) & _M64)


@dataclass
class BlockRecord:
    """One message record of a nats-server ``.blk`` file."""

    seq: int
    ts: int
    subject: bytes
    headers: bytes | None
    data: bytes
    broken: bool = False  # written with a wrong checksum (a careless edit)

    @classmethod
    def parse_all(cls, blk: bytes) -> list[BlockRecord]:
        records, off = [], 0
        while off < len(blk):
            (length,) = struct.unpack_from("<I", blk, off)
            has_headers, length = bool(length & 0x80000000), length & 0x7FFFFFFF
            seq, ts, subject_len = struct.unpack_from("<QqH", blk, off + 4)
            pos = off + 22
            subject = blk[pos : pos + subject_len]
            pos += subject_len
            headers = None
            if has_headers:
                (headers_len,) = struct.unpack_from("<I", blk, pos)
                headers = blk[pos + 4 : pos + 4 + headers_len]
                pos += 4 + headers_len
            records.append(cls(seq, ts, subject, headers, blk[pos : off + length - 8]))
            off += length
        return records

    def encode(self, key: bytes) -> bytes:
        head = struct.pack("<QqH", self.seq, self.ts, len(self.subject))
        body = self.subject
        if self.headers is not None:
            body += struct.pack("<I", len(self.headers)) + self.headers
        body += self.data
        length = 4 + len(head) + len(body) + 8
        hashed = head[:16] + self.subject + (self.headers or b"") + self.data
        checksum = b"\x00" * 8 if self.broken else highwayhash64(key, hashed)
        flag = 0x80000000 if self.headers is not None else 0
        return struct.pack("<I", length | flag) + head + body + checksum


def audit_store(root: Path) -> Path:
    return root / "store" / "jetstream" / "RELAIS" / "streams" / "AUDIT" / "msgs"


def test_highwayhash_matches_the_servers_checksums(scenario) -> None:
    blk = audit_store(scenario.pristine) / "1.blk"
    key = hashlib.sha256(b"AUDIT-1").digest()
    data = blk.read_bytes()
    records = BlockRecord.parse_all(data)
    assert len(records) == len(scenario.audit)
    assert b"".join(r.encode(key) for r in records) == data


def tamper(root: Path, edit) -> None:
    """Rewrite the AUDIT block through ``edit(records) -> records``, as an attacker would."""
    msgs = audit_store(root)
    key = hashlib.sha256(b"AUDIT-1").digest()
    records = edit(BlockRecord.parse_all((msgs / "1.blk").read_bytes()))
    (msgs / "1.blk").write_bytes(b"".join(r.encode(key) for r in records))
    (msgs / "index.db").unlink(missing_ok=True)  # make the server rebuild from the blocks


@contextlib.contextmanager
def server_on_copy(scenario, tmp_path: Path, edit=None) -> Iterator[str]:
    """A server on a copy of the pristine store (edited first); yields its client URL."""
    root = tmp_path / "copy"
    shutil.copytree(scenario.pristine, root)
    config = json.loads((root / "nats-server.json").read_text())
    config["jetstream"]["store_dir"] = str(root / "store")
    config["ports_file_dir"] = str(root / "ports")
    (root / "nats-server.json").write_text(json.dumps(config))
    if edit is not None:
        tamper(root, edit)
    server = start_server(
        root / "nats-server.json", ports_dir=root / "ports", log_file=root / "nats-server.log"
    )
    try:
        yield server.client_url
    finally:
        stop_process(server.pid)


def verify_cli(scenario, url: str, *extra: str) -> tuple[int, dict[str, Any]]:
    root_key = scenario.pristine / "root.pub"
    result = CliRunner().invoke(
        audit_app,
        [
            "verify",
            "-s",
            url,
            "--creds",
            str(scenario.pristine / "creds" / "operator.nk"),
            "--root-public-key",
            str(root_key),
            "--json",
            *extra,
        ],
    )
    assert result.stdout.startswith("{"), (result.exit_code, result.output, result.stderr)
    return result.exit_code, json.loads(result.stdout)


def sealed_records(records: list[BlockRecord]) -> list[int]:
    """Indexes of records (not checkpoints) that a checkpoint after them seals."""
    last_checkpoint = max(
        i for i, r in enumerate(records) if r.subject == CHECKPOINT_SUBJECT.encode()
    )
    return [
        i for i, r in enumerate(records[:last_checkpoint]) if r.subject == RECORD_SUBJECT.encode()
    ]


def modify(records: list[BlockRecord]) -> list[BlockRecord]:
    index = sealed_records(records)[2]
    record = json.loads(records[index].data)
    record["at"] += 1  # a small lie: one millisecond
    records[index].data = encode_record(
        AuditKind(record.pop("kind")), {k: v for k, v in record.items() if k != "v"}
    )
    return records


def remove(records: list[BlockRecord]) -> list[BlockRecord]:
    del records[sealed_records(records)[1]]
    return records


def reorder(records: list[BlockRecord]) -> list[BlockRecord]:
    a, b = sealed_records(records)[1:3]
    records[a].data, records[b].data = records[b].data, records[a].data
    return records


def careless(records: list[BlockRecord]) -> list[BlockRecord]:
    index = sealed_records(records)[2]
    records[index].data = records[index].data.replace(b'"at":', b'"at": ')
    records[index].broken = True
    return records


@pytest.fixture(scope="module")
def clean_anchor(scenario, tmp_path_factory) -> str:
    with server_on_copy(scenario, Path(tmp_path_factory.mktemp("clean"))) as url:
        code, report = verify_cli(scenario, url)
    assert code == 0, report
    assert report["ok"]
    assert report["checkpoints"] >= 2
    assert report["problem"] is None
    assert report["unsealed"] == 0
    return str(report["anchor"])


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (modify, Reason.AUDIT_CHAIN_MISMATCH),
        (remove, Reason.AUDIT_RECORD_MISSING),
        (reorder, Reason.AUDIT_CHAIN_MISMATCH),
    ],
    ids=["modified", "removed", "reordered"],
)
def test_verify_detects_tampering_on_disk(scenario, clean_anchor, tmp_path, edit, reason) -> None:
    with server_on_copy(scenario, tmp_path, edit) as url:
        code, report = verify_cli(scenario, url)
    assert code == 1
    assert report["ok"] is False
    assert report["problem"]["reason"] == reason.value


def test_verify_catches_a_careless_edit_whatever_the_server_does(
    scenario, clean_anchor, demo_territory, tmp_path
) -> None:
    """nats-server 2.15 drops the unreadable record and all that follows it in the block:
    the shortened log is consistent in itself, only the anchor shows the cut; and the
    checkpointer, which keeps its own anchor, refuses to seal the shortened log."""
    with server_on_copy(scenario, tmp_path, careless) as url:
        code, report = verify_cli(scenario, url, "--anchor", clean_anchor)
        refused = asyncio.run(checkpoint_over(url, scenario, demo_territory))
    assert code == 1, report
    assert report["problem"]["reason"] in {
        Reason.AUDIT_CHAIN_MISMATCH.value,
        Reason.AUDIT_RECORD_MISSING.value,
        Reason.AUDIT_ANCHOR_MISSING.value,
    }
    assert refused is Reason.AUDIT_ANCHOR_MISSING


async def checkpoint_over(url: str, scenario, territory) -> Reason | None:
    """Run a checkpoint step with the scenario's anchor on the server at ``url``."""
    conn = await connect(
        url,
        creds=scenario.pristine / "creds" / "tracker.nk",
        inbox_prefix=TRACKER_INBOX,
        name="checkpointer",
    )
    checkpointer = Checkpointer(
        conn,
        territory.identities["gateway"],
        partnership=territory.directory.partnership,
        anchor_file=scenario.pristine / "audit-anchor.json",
    )
    try:
        await checkpointer.step(force=True)
    except RelaisError as exc:
        return exc.reason
    finally:
        await conn.close()
    return None


def test_the_anchor_file_speaks_the_form_verify_takes(scenario, tmp_path) -> None:
    """audit-anchor.json holds the SEQ:HEX that `relais audit verify --anchor` takes and
    prints: copied from the file, it verifies (no false alarm from its other fields)."""
    written = json.loads((scenario.pristine / "audit-anchor.json").read_text())
    assert written["anchor"] == f"{written['last_seq']}:{written['chain']}"
    with server_on_copy(scenario, tmp_path) as url:
        code, report = verify_cli(scenario, url, "--anchor", written["anchor"])
    assert code == 0, report
    assert report["ok"]
