"""The tamper-evident audit log: metadata-only records, a hash chain, signed checkpoints.

Records (``ref.audit.rec`` in the ``AUDIT`` stream, which denies delete and purge) are
compact JSON objects with sorted keys, ASCII only, holding ids, codes, counts and times,
never content (:func:`encode_record`). Kinds: ``ROUTED``, ``QUARANTINED``, ``RECEIPT``,
``ESCALATED``, ``CLOSED``, ``PURGED`` (the fields of each are listed in ``docs/protocol.md``
§8; ``PURGED``: a store forgot rows past their retention limit, with ``store``, ``count``
and ``up_to``, the time before which nothing is kept).
Every record is published with a ``Nats-Msg-Id`` derived from what it records (e.g.
``<event id>:routed``), so a record re-published after a crash is stored once.

Hash chain, over the records in stream order (``seq`` is the stream sequence)::

    h_0 = 32 zero bytes
    h_i = SHA-256(h_{i-1} || seq_i as 8 big-endian bytes || SHA-256(payload_i))

A single checkpointer (:mod:`relais.gateway.checkpoint`) publishes signed checkpoints on
``ref.audit.ckpt``: the records it covers, their count and the chain value after the last
one, linked to the previous checkpoint (:class:`Checkpoint`, signature context
``audit-checkpoint``).

Verification (:class:`AuditVerifier`, :func:`verify_audit`) reads the whole stream and
recomputes the chain. What an attacker with write access to the store can do, and what
catches it:

* change a record (and fix nats-server's per-record checksum, which is keyed by public data,
  so the server accepts it): the chain no longer matches the next signed checkpoint;
* remove a record: a hole in the stream sequences (``AUDIT_RECORD_MISSING``), or, if the
  later records are renumbered, a chain or count that no longer matches;
* reorder records: the chain binds each payload to its sequence and to every record before;
* forge a checkpoint: it needs the gateway's signing key;
* cut the tail, checkpoints included: only an *anchor* kept outside the store (the chain
  value of a checkpoint seen earlier, :class:`Anchor`) shows it (``AUDIT_ANCHOR_MISSING``).

Records after the last checkpoint are reported as unsealed: a change to them cannot be
detected until the next checkpoint seals them (the checkpointer runs every N records or T
seconds).

Retention: when the stream has a ``max_age`` (the partnership's ``audit_seconds``), its
oldest messages are dropped by age and the log starts after sequence 1. Verification then
starts at the first signed checkpoint whose records are all still stored: that checkpoint
marks where the retained chain begins (its ``previous`` value is taken on its signature);
records before it are counted as ``expired``, not verified. A cut of the head is therefore
indistinguishable from expiry by age; an anchor younger than the retention still catches
a cut of the tail.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from relais.broker_config.connection import Connection
from relais.broker_config.directory import DirectoryKeys, canonical_json
from relais.gateway.jetstream import Published, StoredMessage, publish, read_stream
from relais.schemas import _crypto
from relais.schemas.domain import PARTNER_ID_RE, PartnerKind
from relais.schemas.envelope import LocalIdentity
from relais.schemas.errors import ConfigError, EnvelopeError, Reason
from relais.schemas.names import AUDIT_CHECKPOINT_SUBJECT, AUDIT_RECORD_SUBJECT
from relais.schemas.statements import key_judged_at
from relais.schemas.strict_json import JsonLimits, loads_bounded

__all__ = [
    "AUDITED_ROUTING_KEYS",
    "AUDIT_STREAM",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_SUBJECT",
    "GENESIS",
    "RECORD_SUBJECT",
    "SIG_CONTEXT",
    "Anchor",
    "AuditKind",
    "AuditProblem",
    "AuditReport",
    "AuditVerifier",
    "Checkpoint",
    "append_record",
    "chain_next",
    "decode_record",
    "encode_record",
    "open_checkpoint",
    "sign_checkpoint",
    "verify_audit",
    "verify_messages",
]

AUDIT_STREAM: Final = "AUDIT"
# The routing metadata a ROUTED record keeps: where and between whom an event is handled,
# never who the child is nor what happened (``prostitution_suspected``, ``in_care``,
# ``imminent`` stay out: the operator credential may read these records). An allow-list, so
# a key added by a future schema stays out too.
AUDITED_ROUTING_KEYS: Final = frozenset(
    {
        "child_dept",
        "facts_dept",
        "guardian_dept",
        "case_ref",
        "alert_sender",
        "addressed_to",
        "requester",
    }
)
RECORD_SUBJECT: Final = AUDIT_RECORD_SUBJECT
CHECKPOINT_SUBJECT: Final = AUDIT_CHECKPOINT_SUBJECT
SIG_CONTEXT: Final = "audit-checkpoint"
CHECKPOINT_FORMAT: Final = "relais-audit-checkpoint/1"
GENESIS: Final = bytes(32)
RECORD_VERSION: Final = 1
_MAX_RECORD_BYTES: Final = 64 * 1024
# Records are flat objects whose members are scalars, lists of ids or one routing object.
_RECORD_LIMITS: Final = JsonLimits(
    max_bytes=_MAX_RECORD_BYTES, max_containers=64, max_values=2048, max_depth=2
)
_CHECKPOINT_LIMITS: Final = JsonLimits(max_bytes=4096, max_containers=2, max_values=16, max_depth=2)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_MAX_INT: Final = 2**63 - 1
_CHECKPOINT_FIELDS: Final = frozenset(
    {
        "format",
        "partnership",
        "signer",
        "key_id",
        "first_seq",
        "last_seq",
        "count",
        "chain",
        "previous",
        "at",
    }
)


class AuditKind(StrEnum):
    """What an audit record records."""

    ROUTED = "ROUTED"
    QUARANTINED = "QUARANTINED"
    RECEIPT = "RECEIPT"
    ESCALATED = "ESCALATED"
    CLOSED = "CLOSED"
    PURGED = "PURGED"


_KINDS: Final = frozenset(kind.value for kind in AuditKind)


# -- records -----------------------------------------------------------------------------------


def encode_record(kind: AuditKind, fields: Mapping[str, Any]) -> bytes:
    """The record's bytes: compact JSON, keys sorted, ASCII, with ``kind`` and ``v``."""
    body = {**fields, "kind": kind.value, "v": RECORD_VERSION}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def _record_error(why: str) -> EnvelopeError:
    return EnvelopeError(Reason.AUDIT_RECORD_MALFORMED)


def decode_record(data: bytes) -> dict[str, Any]:
    """A record's fields; :class:`EnvelopeError` (``AUDIT_RECORD_MALFORMED``) if not canonical.

    Caps (size, containers, values, depth 2) before parsing; strict JSON; then the bytes must
    be the canonical serialisation of their own parse. Nothing else escapes.
    """
    body = loads_bounded(data, _RECORD_LIMITS, _record_error)
    if not isinstance(body, dict):
        raise EnvelopeError(Reason.AUDIT_RECORD_MALFORMED)
    kind = body.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise EnvelopeError(Reason.AUDIT_RECORD_MALFORMED)
    again = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    if again.encode("ascii", "replace") != data:
        raise EnvelopeError(Reason.AUDIT_RECORD_MALFORMED)
    return body


def chain_next(previous: bytes, seq: int, payload: bytes) -> bytes:
    """``SHA-256(previous || seq (8 bytes, big-endian) || SHA-256(payload))``."""
    inner = hashlib.sha256(payload).digest()
    return hashlib.sha256(previous + seq.to_bytes(8, "big") + inner).digest()


async def append_record(
    conn: Connection, kind: AuditKind, fields: Mapping[str, Any], *, msg_id: str
) -> Published:
    """Publish one record on ``ref.audit.rec`` (stored once per ``msg_id``)."""
    return await publish(conn, RECORD_SUBJECT, encode_record(kind, fields), msg_id=msg_id)


# -- checkpoints -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement of the chain: records ``first_seq..last_seq`` (``count`` of them)."""

    partnership: str
    signer: str
    key_id: str
    first_seq: int
    last_seq: int
    count: int
    chain: str  # hex of h after the record at last_seq
    previous: str  # hex of the previous checkpoint's chain (GENESIS for the first)
    at: int  # Unix milliseconds

    def body(self) -> dict[str, Any]:
        """The signed object (see ``docs/protocol.md`` §8.3)."""
        return {"format": CHECKPOINT_FORMAT, **asdict(self)}


def sign_checkpoint(checkpoint: Checkpoint, signer: LocalIdentity) -> bytes:
    """The checkpoint message: ``{"checkpoint": body, "signature": base64}`` as compact JSON."""
    if (signer.partner_id, signer.key_id) != (checkpoint.signer, checkpoint.key_id):
        raise ConfigError("a checkpoint names the key that signs it")
    body = checkpoint.body()
    signature = _crypto.sign(signer.sign_sk, SIG_CONTEXT, canonical_json(body))
    return canonical_json({"checkpoint": body, "signature": base64.b64encode(signature).decode()})


def _parse_checkpoint(data: bytes) -> tuple[Checkpoint, dict[str, Any], bytes]:
    bad = EnvelopeError(Reason.AUDIT_CHECKPOINT_INVALID)
    outer = loads_bounded(data, _CHECKPOINT_LIMITS, lambda why: bad)
    if not isinstance(outer, dict) or set(outer) != {"checkpoint", "signature"}:
        raise bad
    body, signature = outer["checkpoint"], outer["signature"]
    if not isinstance(body, dict) or set(body) != _CHECKPOINT_FIELDS | {"format"}:
        raise bad
    if body["format"] != CHECKPOINT_FORMAT or not isinstance(signature, str):
        raise bad
    ints = ("first_seq", "last_seq", "count", "at")
    strs = ("partnership", "signer", "key_id", "chain", "previous")
    if not all(type(body[k]) is int and 0 <= body[k] <= _MAX_INT for k in ints):
        raise bad
    if not all(isinstance(body[k], str) for k in strs):
        raise bad
    # ASCII-only shapes: the signed bytes (JCS) can then always be computed
    if not (
        PARTNER_ID_RE.fullmatch(body["partnership"]) and PARTNER_ID_RE.fullmatch(body["signer"])
    ):
        raise bad
    if not _KEY_ID.fullmatch(body["key_id"]):
        raise bad
    if not (_HEX64.fullmatch(body["chain"]) and _HEX64.fullmatch(body["previous"])):
        raise bad
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except ValueError as exc:  # binascii.Error, and non-ASCII text (a bare ValueError)
        raise bad from exc
    fields = {k: body[k] for k in _CHECKPOINT_FIELDS - {"format"}}
    return Checkpoint(**fields), body, raw_signature


def open_checkpoint(
    data: bytes,
    *,
    keys: DirectoryKeys | None,
    partnership: str | None = None,
    received_ms: int | None = None,
) -> Checkpoint:
    """Parse a checkpoint message and, with ``keys``, verify its signature.

    The signer must be a partner of kind ``gateway`` whose key was valid at ``at``, or, given
    ``received_ms`` (when the broker stored it), when received, within the skew window
    (:func:`~relais.schemas.statements.key_judged_at`): a backdated checkpoint does not
    make an expired key sign again.
    Failures: :class:`EnvelopeError` with ``AUDIT_CHECKPOINT_INVALID``.
    """
    checkpoint, body, signature = _parse_checkpoint(data)
    expected = partnership if partnership is not None or keys is None else keys.partnership
    if expected is not None and checkpoint.partnership != expected:
        raise EnvelopeError(Reason.AUDIT_CHECKPOINT_INVALID) from EnvelopeError(
            Reason.WRONG_PARTNERSHIP
        )
    if keys is None:
        return checkpoint
    try:
        if not PARTNER_ID_RE.fullmatch(checkpoint.signer):
            raise EnvelopeError(Reason.MALFORMED_HEADER)
        if keys.partner_kind(checkpoint.signer) is not PartnerKind.GATEWAY:
            raise EnvelopeError(Reason.UNKNOWN_SENDER)
        at = checkpoint.at if received_ms is None else key_judged_at(checkpoint.at, received_ms)
        public = keys.signing_key(checkpoint.signer, checkpoint.key_id, at)
        _crypto.verify(public, SIG_CONTEXT, canonical_json(body), signature)
    except EnvelopeError as exc:
        raise EnvelopeError(Reason.AUDIT_CHECKPOINT_INVALID) from exc
    return checkpoint


def stored_at_ms(msg: StoredMessage) -> int | None:
    """When the broker stored ``msg`` (its ``Nats-Time-Stamp``), Unix ms; ``None``: unknown."""
    stamp = msg.headers.get("Nats-Time-Stamp", "")
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    try:
        moment = datetime.fromisoformat(whole).replace(tzinfo=UTC)
    except ValueError:
        return None
    millis = int((fraction + "000")[:3]) if fraction[:3].isdigit() else 0
    return int(moment.timestamp()) * 1000 + millis


# -- verification ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Anchor:
    """A checkpoint known from outside the store: its ``last_seq`` and chain value (hex)."""

    last_seq: int
    chain: str

    @classmethod
    def parse(cls, text: str) -> Anchor:
        """``SEQ:HEX`` (as printed by ``relais audit verify``)."""
        seq, sep, chain = text.partition(":")
        try:
            value = cls(int(seq), chain.lower())
            ok = bool(sep) and value.last_seq > 0 and len(bytes.fromhex(chain)) == 32
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError("an anchor is SEQ:HEX (the last_seq and chain of a checkpoint)")
        return value

    def __str__(self) -> str:
        return f"{self.last_seq}:{self.chain}"


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """The first thing wrong with the log."""

    reason: Reason
    seq: int
    detail: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What :func:`verify_audit` found."""

    ok: bool
    records: int
    checkpoints: int
    sealed_through: int  # last record sequence covered by a valid checkpoint (0: none)
    unsealed: int  # records after the last checkpoint
    chain: str  # chain value after the last record read (hex)
    anchor: str | None  # the last checkpoint as an anchor for a later run (SEQ:HEX)
    problem: AuditProblem | None = None
    retained_from: int = 1  # first record of the verified chain (after 1: retention)
    expired: int = 0  # records still stored before it, covered by an expired checkpoint

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        out = asdict(self)
        if self.problem is not None:
            out["problem"] = {**out["problem"], "reason": self.problem.reason.value}
        return out


@dataclass(slots=True)
class AuditVerifier:
    """Recompute the chain and check checkpoints, one stored message at a time, in order."""

    keys: DirectoryKeys
    partnership: str | None = None
    # The stream drops its oldest messages by age: the log may start after sequence 1.
    retained: bool = False
    _next_seq: int = 1
    _fed: int = 0
    _head: list[tuple[int, bytes]] | None = None  # records before the retained chain begins
    _head_first: int = 0
    _retained_from: int = 1
    _expired: int = 0
    _chain: bytes = GENESIS
    _pending: list[tuple[int, bytes]] = field(default_factory=list)
    _sealed: bytes = GENESIS
    _sealed_through: int = 0
    _records: int = 0
    _checkpoints: int = 0
    _seen_anchors: set[tuple[int, str]] = field(default_factory=set)
    problem: AuditProblem | None = None

    def _fail(self, reason: Reason, seq: int, detail: str) -> None:
        if self.problem is None:
            self.problem = AuditProblem(reason, seq, detail)

    def feed(self, msg: StoredMessage) -> None:
        """Take the next stored message (stream order); stops at the first problem."""
        if self.problem is not None:
            return
        if self.retained and not self._fed and msg.seq > 1:
            # The oldest messages were dropped by age: find where the retained chain begins.
            self._head, self._head_first, self._next_seq = [], msg.seq, msg.seq
        self._fed += 1
        if msg.seq != self._next_seq:
            self._fail(Reason.AUDIT_RECORD_MISSING, self._next_seq, "sequence absent from the log")
            return
        self._next_seq += 1
        if self._head is not None:
            self._feed_head(msg)
        elif msg.subject == RECORD_SUBJECT:
            try:
                decode_record(msg.data)
            except EnvelopeError:
                self._fail(Reason.AUDIT_RECORD_MALFORMED, msg.seq, "not a canonical audit record")
                return
            self._chain = chain_next(self._chain, msg.seq, msg.data)
            self._pending.append((msg.seq, self._chain))
            self._records += 1
        elif msg.subject == CHECKPOINT_SUBJECT:
            self._checkpoint(msg)
        else:
            self._fail(Reason.AUDIT_RECORD_MALFORMED, msg.seq, "unexpected subject in the log")

    def _feed_head(self, msg: StoredMessage) -> None:
        """Before the retained chain begins: keep records until a checkpoint covers them all."""
        head = self._head if self._head is not None else []
        if msg.subject == RECORD_SUBJECT:
            try:
                decode_record(msg.data)
            except EnvelopeError:
                self._fail(Reason.AUDIT_RECORD_MALFORMED, msg.seq, "not a canonical audit record")
                return
            head.append((msg.seq, msg.data))
            return
        if msg.subject != CHECKPOINT_SUBJECT:
            self._fail(Reason.AUDIT_RECORD_MALFORMED, msg.seq, "unexpected subject in the log")
            return
        try:
            cp = open_checkpoint(
                msg.data,
                keys=self.keys,
                partnership=self.partnership,
                received_ms=stored_at_ms(msg),
            )
            previous = bytes.fromhex(cp.previous)
        except (EnvelopeError, ValueError):
            self._fail(Reason.AUDIT_CHECKPOINT_INVALID, msg.seq, "checkpoint refused")
            return
        covered = [(seq, data) for seq, data in head if seq >= cp.first_seq]
        if cp.first_seq < self._head_first or not covered or covered[0][0] != cp.first_seq:
            return  # it seals records dropped by age: the retained chain begins later
        # The signed checkpoint marks where the retained chain begins.
        self._expired, self._head = len(head) - len(covered), None
        self._retained_from = cp.first_seq
        self._sealed = self._chain = previous
        for seq, data in covered:
            self._chain = chain_next(self._chain, seq, data)
            self._pending.append((seq, self._chain))
            self._records += 1
        self._checkpoint(msg)

    def _checkpoint(self, msg: StoredMessage) -> None:
        try:
            cp = open_checkpoint(
                msg.data,
                keys=self.keys,
                partnership=self.partnership,
                received_ms=stored_at_ms(msg),
            )
        except EnvelopeError as exc:
            cause = exc.__cause__
            why = cause.reason.value if isinstance(cause, EnvelopeError) else "malformed"
            self._fail(Reason.AUDIT_CHECKPOINT_INVALID, msg.seq, f"checkpoint refused: {why}")
            return
        discontinuous = Reason.AUDIT_CHECKPOINT_DISCONTINUOUS
        if cp.previous != self._sealed.hex():
            self._fail(discontinuous, msg.seq, "does not follow the previous checkpoint")
            return
        index = next((i for i, (seq, _) in enumerate(self._pending) if seq == cp.last_seq), None)
        if index is None or cp.last_seq >= msg.seq:
            self._fail(discontinuous, msg.seq, "covers records that are not the next ones")
            return
        if cp.first_seq != self._pending[0][0]:
            self._fail(discontinuous, msg.seq, "does not start after the previous checkpoint")
            return
        chain = self._pending[index][1]
        if cp.count != index + 1 or cp.chain != chain.hex():
            detail = f"records {cp.first_seq}..{cp.last_seq} differ from what was sealed"
            self._fail(Reason.AUDIT_CHAIN_MISMATCH, msg.seq, detail)
            return
        self._sealed, self._sealed_through = chain, cp.last_seq
        self._pending = self._pending[index + 1 :]
        self._checkpoints += 1
        self._seen_anchors.add((cp.last_seq, cp.chain))

    def finish(self, *, last_seq: int = 0, anchor: Anchor | None = None) -> AuditReport:
        """The report; ``last_seq``: the stream's last sequence before reading began."""
        emptied = self.retained and not self._fed  # every message dropped by age
        if self.problem is None and last_seq >= self._next_seq and not emptied:
            self._fail(Reason.AUDIT_RECORD_MISSING, self._next_seq, "sequence absent from the log")
        if self.problem is None and self._head is not None:
            self._fail(
                Reason.AUDIT_RECORD_MISSING,
                self._head_first,
                "no signed checkpoint marks where the retained log begins",
            )
        expired_anchor = anchor is not None and (
            emptied or (self.retained and anchor.last_seq < self._retained_from)
        )
        if (
            self.problem is None
            and anchor is not None
            and not expired_anchor
            and (anchor.last_seq, anchor.chain) not in self._seen_anchors
        ):
            self._fail(
                Reason.AUDIT_ANCHOR_MISSING,
                anchor.last_seq,
                "the anchored checkpoint is not in the log (cut or rewritten)",
            )
        last_anchor = (
            str(Anchor(self._sealed_through, self._sealed.hex())) if self._sealed_through else None
        )
        return AuditReport(
            ok=self.problem is None,
            records=self._records,
            checkpoints=self._checkpoints,
            sealed_through=self._sealed_through,
            unsealed=len(self._pending),
            chain=self._chain.hex(),
            anchor=last_anchor,
            problem=self.problem,
            retained_from=self._retained_from,
            expired=self._expired + len(self._head or ()),
        )


def verify_messages(
    messages: Iterable[StoredMessage],
    *,
    keys: DirectoryKeys,
    partnership: str | None = None,
    last_seq: int = 0,
    anchor: Anchor | None = None,
    retained: bool = False,
) -> AuditReport:
    """Verify stored messages already in hand (see :class:`AuditVerifier`)."""
    verifier = AuditVerifier(keys=keys, partnership=partnership, retained=retained)
    for msg in messages:
        verifier.feed(msg)
    return verifier.finish(last_seq=last_seq, anchor=anchor)


async def _feed_all(verifier: AuditVerifier, messages: AsyncGenerator[StoredMessage, None]) -> None:
    async with contextlib.aclosing(messages):
        async for msg in messages:
            verifier.feed(msg)
            if verifier.problem is not None:
                return


async def verify_audit(
    conn: Connection,
    *,
    keys: DirectoryKeys,
    partnership: str | None = None,
    anchor: Anchor | None = None,
) -> AuditReport:
    """Read the ``AUDIT`` stream (direct gets) and verify it.

    Needs only read access (the operator user may). ``keys``: a verified directory's key
    resolver, to check that checkpoints are signed by a gateway key valid when signed.
    """
    info = await conn.api(f"$JS.API.STREAM.INFO.{AUDIT_STREAM}")
    last_seq = int((info.get("state") or {}).get("last_seq", 0))
    # Only a stream that expires by age may start after sequence 1 (module docstring).
    retained = bool((info.get("config") or {}).get("max_age", 0))
    verifier = AuditVerifier(keys=keys, partnership=partnership, retained=retained)
    await _feed_all(verifier, read_stream(conn, AUDIT_STREAM))
    return verifier.finish(last_seq=last_seq, anchor=anchor)
