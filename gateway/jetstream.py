"""JetStream calls of the gateway beyond :class:`~relais.broker_config.connection.Connection`.

* :func:`publish`: a stream publish whose refusal is an explicit value when it is expected
  (``Nats-Expected-Last-Subject-Sequence`` lost to another writer), never an exception to
  parse: the replay store and the audit checkpointer use it for "write only if nobody has";
* :func:`publish_many`: many messages for one stream, all in flight at once; from
  :data:`ATOMIC_MIN` messages on they go as atomic batches (nats-server 2.12+, streams with
  ``allow_atomic``: ``DELIVERY`` and ``AUDIT``), which a server with ``sync_interval:
  always`` writes with one fsync per batch instead of one per message;
* :func:`get_message`: one stored message by sequence (``STREAM.MSG.GET``), e.g. the original
  envelope of an event to escalate, read back from ``INGRESS``;
* :func:`last_for_subject`: the last message of a subject (direct get);
* :func:`read_stream`: every stored message from a sequence on, in stream order, in batches
  (batched direct get, nats-server 2.11+), with the real sequence of each, so a caller sees
  the gaps left by removed messages.

Every failure is a :class:`~relais.schemas.errors.TransportError`. Nothing here logs payloads.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import weakref
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from nats.aio.msg import Msg
from nats.nuid import NUID

from relais.broker_config.connection import Connection
from relais.broker_config.streams import STREAMS
from relais.schemas.errors import Reason, TransportError

__all__ = [
    "ATOMIC_MAX",
    "ATOMIC_MIN",
    "ERR_WRONG_LAST_SEQUENCE",
    "Outgoing",
    "Published",
    "StoredMessage",
    "get_message",
    "last_for_subject",
    "publish",
    "publish_many",
    "read_stream",
    "use_atomic_batches",
]

# JetStream API error codes.
ERR_WRONG_LAST_SEQUENCE: Final = 10071
_ERR_NO_MESSAGE: Final = 10037
_EXPECTED_LAST_SUBJECT_SEQ: Final = "Nats-Expected-Last-Subject-Sequence"
_READ_BATCH: Final = 500
_READ_TIMEOUT: Final = 10.0
# Atomic batches (measured with nats-server 2.15.1, 2 cores): a batch costs the server about
# 3.5 ms of CPU whatever its size, plus some 20 µs per message, and is written with one fsync;
# a message published alone costs some 15 µs without fsync and 120 µs of CPU (mostly the
# kernel's) with ``sync_interval: always``, where a stream also writes its messages one fsync
# after the other. Below about 32 messages a batch costs more than it saves.
ATOMIC_MIN: Final = 48
ATOMIC_MAX: Final = 500  # the server refuses batches over 1000 messages (its default limit)
# nats-server holds at most 50 unfinished batches per stream (its default limit).
_ATOMIC_IN_FLIGHT: Final = 8
_ERR_BATCH_DUPLICATE: Final = 10201
_batching = {"atomic": True}  # see use_atomic_batches()


def use_atomic_batches(enabled: bool) -> None:
    """Whether this process sends atomic batches (:func:`publish_many`, :func:`publish`).

    On by default: with ``sync_interval: always`` (the production setting) a batch is one
    fsync instead of one per message. A broker that does not fsync every write (development)
    gains nothing from them and pays their fixed cost: turn them off there.
    """
    _batching["atomic"] = enabled


_nuid = NUID()


@dataclass(frozen=True, slots=True)
class Published:
    """The outcome of :func:`publish`: stored (``seq``), a duplicate, or refused (``error``)."""

    seq: int = 0
    duplicate: bool = False
    error: int | None = None

    @property
    def stored(self) -> bool:
        """True when the stream holds the message (now or from an earlier publish)."""
        return self.error is None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for :func:`publish_many` (every one carries a ``Nats-Msg-Id``)."""

    subject: str
    payload: bytes
    msg_id: str
    headers: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as a stream stores it."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]


def _json(msg: Msg, what: str) -> dict[str, Any]:
    try:
        answer = json.loads(msg.data)
    except ValueError as exc:
        raise TransportError(f"{what}: malformed answer") from exc
    if not isinstance(answer, dict):
        raise TransportError(f"{what}: malformed answer")
    return answer


def _error_code(answer: dict[str, Any]) -> int | None:
    error = answer.get("error")
    if not error:
        return None
    code = error.get("err_code") if isinstance(error, dict) else None
    return int(code) if isinstance(code, int) else -1


async def publish(
    conn: Connection,
    subject: str,
    payload: bytes,
    *,
    msg_id: str | None = None,
    headers: dict[str, str] | None = None,
    expect_last_subject_seq: int | None = None,
    expected_errors: frozenset[int] = frozenset(),
) -> Published:
    """Publish to a stream and wait for its acknowledgement.

    ``expect_last_subject_seq`` stores the message only if the last one on ``subject`` has
    that sequence (``0``: only if the subject is empty). API errors listed in
    ``expected_errors`` come back as ``Published(error=code)``; others raise.

    A plain publish with a ``msg_id`` to a stream that allows atomic batches (``DELIVERY``,
    ``AUDIT``) joins the other such publishes on the same connection made in the same turn
    of the event loop (e.g. the tracker's records of one batch, gathered): they go out
    together through :func:`publish_many`, each caller getting its own result (unless
    :func:`use_atomic_batches` turned batches off).
    """
    if (
        _batching["atomic"]
        and msg_id is not None
        and expect_last_subject_seq is None
        and not expected_errors
        and _atomic_stream(subject) is not None
    ):
        return await _coalescer(conn).publish(Outgoing(subject, payload, msg_id, headers))
    return await _publish_one(
        conn,
        subject,
        payload,
        msg_id=msg_id,
        headers=headers,
        expect_last_subject_seq=expect_last_subject_seq,
        expected_errors=expected_errors,
    )


async def _publish_one(
    conn: Connection,
    subject: str,
    payload: bytes,
    *,
    msg_id: str | None = None,
    headers: dict[str, str] | None = None,
    expect_last_subject_seq: int | None = None,
    expected_errors: frozenset[int] = frozenset(),
) -> Published:
    all_headers = dict(headers or {})
    if msg_id is not None:
        all_headers["Nats-Msg-Id"] = msg_id
    if expect_last_subject_seq is not None:
        all_headers[_EXPECTED_LAST_SUBJECT_SEQ] = str(expect_last_subject_seq)
    answer = _json(await conn.request(subject, payload, headers=all_headers or None), subject)
    code = _error_code(answer)
    if code is not None:
        if code in expected_errors:
            return Published(error=code)
        raise TransportError(f"publish to {subject}: JetStream error {code}")
    try:
        return Published(seq=int(answer["seq"]), duplicate=bool(answer.get("duplicate")))
    except (KeyError, TypeError, ValueError) as exc:
        raise TransportError(f"{subject}: malformed acknowledgement") from exc


async def publish_many(
    conn: Connection, messages: Sequence[Outgoing], *, atomic_min: int | None = None
) -> list[Published | Exception]:
    """Publish ``messages`` (all for one stream) at once; one result per message, in order.

    A result is the :class:`Published` acknowledgement or the exception :func:`publish`
    would have raised for that message. From ``atomic_min`` messages on (default
    :data:`ATOMIC_MIN`, or never when :func:`use_atomic_batches` turned batches off; ``0``:
    never) they are sent as atomic batches of at most :data:`ATOMIC_MAX`: stored all
    together or not at all. A batch the server refuses (one of its ids is a duplicate, the
    stream does not allow batches...) or whose answer is lost is published again one message
    at a time: every message has its ``Nats-Msg-Id``, so nothing the batch may have stored
    is stored twice and each message gets its own answer.
    """
    if not messages:
        return []
    if atomic_min is None:
        atomic_min = ATOMIC_MIN if _batching["atomic"] else 0
    if atomic_min <= 0 or len(messages) < atomic_min:
        return await _one_by_one(conn, messages)
    chunks = [messages[i : i + ATOMIC_MAX] for i in range(0, len(messages), ATOMIC_MAX)]
    slots = asyncio.Semaphore(_ATOMIC_IN_FLIGHT)

    async def send(chunk: Sequence[Outgoing]) -> list[Published | Exception]:
        async with slots:
            return await _atomic_or_not(conn, chunk)

    results: list[Published | Exception] = []
    for answer in await asyncio.gather(*(send(chunk) for chunk in chunks)):
        results.extend(answer)
    return results


async def _one_by_one(
    conn: Connection, messages: Sequence[Outgoing]
) -> list[Published | Exception]:
    answers = await asyncio.gather(
        *(
            _publish_one(conn, m.subject, m.payload, msg_id=m.msg_id, headers=m.headers)
            for m in messages
        ),
        return_exceptions=True,
    )
    results: list[Published | Exception] = []
    for answer in answers:
        if isinstance(answer, BaseException) and not isinstance(answer, Exception):
            raise answer  # cancellation and the like are not a publish's result
        results.append(answer)
    return results


async def _atomic_or_not(
    conn: Connection, messages: Sequence[Outgoing]
) -> list[Published | Exception]:
    try:
        return await _atomic(conn, messages)
    except TransportError:
        return await _one_by_one(conn, messages)


async def _atomic(conn: Connection, messages: Sequence[Outgoing]) -> list[Published | Exception]:
    """One atomic batch (``Nats-Batch-Id``; the last message commits it)."""
    batch_id = _nuid.next().decode()
    count = len(messages)

    def headers_of(m: Outgoing, number: int) -> dict[str, str]:
        headers = dict(m.headers or {})
        headers["Nats-Msg-Id"] = m.msg_id
        headers["Nats-Batch-Id"] = batch_id
        headers["Nats-Batch-Sequence"] = str(number)
        return headers

    for number, m in enumerate(messages[:-1], start=1):
        await conn.publish(m.subject, m.payload, headers=headers_of(m, number), confirm=False)
    last = messages[-1]
    headers = headers_of(last, count)
    headers["Nats-Batch-Commit"] = "1"
    answer = _json(await conn.request(last.subject, last.payload, headers=headers), last.subject)
    code = _error_code(answer)
    if code is not None:
        what = "duplicate id" if code == _ERR_BATCH_DUPLICATE else f"JetStream error {code}"
        raise TransportError(f"atomic batch to {last.subject} refused: {what}")
    try:
        last_seq, stored = int(answer["seq"]), int(answer.get("count", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise TransportError("atomic batch: malformed acknowledgement") from exc
    if stored != count:
        raise TransportError(f"atomic batch: {stored} of {count} messages acknowledged")
    return [Published(seq=last_seq - count + number) for number in range(1, count + 1)]


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching (``*``: one token, ``>``: the rest)."""
    want, have = pattern.split("."), subject.split(".")
    for index, part in enumerate(want):
        if part == ">":
            return len(have) > index
        if index >= len(have) or part not in ("*", have[index]):
            return False
    return len(have) == len(want)


@functools.lru_cache(maxsize=4096)
def _atomic_stream(subject: str) -> str | None:
    """The stream allowing atomic batches that ``subject`` belongs to, if any."""
    for spec in STREAMS:
        if spec.allow_atomic and any(_matches(p, subject) for p in spec.subjects):
            return spec.name
    return None


class _Coalescer:
    """Gathers the publishes of one turn of the event loop (see :func:`publish`)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: dict[str, list[tuple[Outgoing, asyncio.Future[Published]]]] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def publish(self, message: Outgoing) -> Published:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Published] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)
        stream = _atomic_stream(message.subject) or ""
        self._queue.setdefault(stream, []).append((message, future))
        return await future

    def _flush(self) -> None:
        queued, self._queue = self._queue, {}
        for batch in queued.values():
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Outgoing, asyncio.Future[Published]]]) -> None:
        try:
            results = await publish_many(self._conn, [m for m, _ in batch])
        except Exception as exc:  # noqa: BLE001 - every caller gets the failure
            results = [exc] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # the caller gave up (cancelled)
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


_coalescers: weakref.WeakKeyDictionary[Connection, _Coalescer] = weakref.WeakKeyDictionary()


def _coalescer(conn: Connection) -> _Coalescer:
    found = _coalescers.get(conn)
    if found is None:
        found = _coalescers[conn] = _Coalescer(conn)
    return found


def _b64(value: object) -> bytes:
    if not value:
        return b""
    try:
        return base64.b64decode(str(value), validate=True)
    except binascii.Error as exc:
        raise TransportError("malformed stored message") from exc


def _parse_headers(raw: bytes) -> dict[str, str]:
    """NATS headers (``NATS/1.0`` then ``Key: value`` lines) as a dict (last value wins)."""
    headers: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip()] = value.strip()
    return headers


async def get_message(conn: Connection, stream: str, seq: int) -> StoredMessage | None:
    """The message at ``seq`` of ``stream``, or ``None`` when there is none (or it was removed)."""
    subject = f"$JS.API.STREAM.MSG.GET.{stream}"
    answer = _json(await conn.request(subject, json.dumps({"seq": seq}).encode()), subject)
    code = _error_code(answer)
    if code == _ERR_NO_MESSAGE:
        return None
    if code is not None:
        raise TransportError(f"{subject}: JetStream error {code}")
    message = answer.get("message")
    if not isinstance(message, dict):
        raise TransportError(f"{subject}: malformed answer")
    return StoredMessage(
        seq=int(message.get("seq", 0)),
        subject=str(message.get("subject", "")),
        data=_b64(message.get("data")),
        headers=_parse_headers(_b64(message.get("hdrs"))),
    )


def _stored(msg: Msg) -> StoredMessage:
    headers = dict(msg.headers or {})
    try:
        seq = int(headers["Nats-Sequence"])
    except (KeyError, ValueError) as exc:
        raise TransportError("direct get: answer without a sequence") from exc
    return StoredMessage(
        seq=seq, subject=headers.get("Nats-Subject", ""), data=msg.data, headers=headers
    )


async def last_for_subject(conn: Connection, stream: str, subject: str) -> StoredMessage | None:
    """The last message stored on ``subject`` (the stream must allow direct gets)."""
    msg = await conn.request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"")
    status = (msg.headers or {}).get("Status")
    if status == "404":
        return None
    if status is not None:
        raise TransportError(f"direct get on {stream}: status {status}")
    return _stored(msg)


async def _answers(
    conn: Connection, stream: str, queue: asyncio.Queue[Msg], wait: float
) -> AsyncGenerator[Msg, None]:
    """The messages answering one batched direct get, until its end-of-batch status."""
    while True:
        try:
            async with asyncio.timeout(wait):
                msg = await queue.get()
        except TimeoutError as exc:
            raise TransportError(
                f"direct get on {stream}: no answer", reason=Reason.TIMEOUT
            ) from exc
        yield msg
        status = (msg.headers or {}).get("Status")
        if status is not None:
            return


async def read_stream(
    conn: Connection,
    stream: str,
    *,
    start: int = 1,
    batch: int = _READ_BATCH,
    wait: float = _READ_TIMEOUT,
) -> AsyncGenerator[StoredMessage, None]:
    """Every message of ``stream`` from sequence ``start`` on, in order (direct gets).

    Messages stored while reading may or may not be included. Sequences of removed messages
    are simply absent: callers that need contiguity check ``seq`` themselves.
    """
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    inbox = conn.nc.new_inbox()

    async def on_message(msg: Msg) -> None:
        """Queue the answers for the reader."""
        queue.put_nowait(msg)

    sub = await conn.subscribe(inbox, cb=on_message)
    try:
        next_seq, more = start, True
        while more:
            request = json.dumps({"seq": next_seq, "batch": batch}).encode()
            # confirmed: a user without direct gets learns it now, not at the timeout
            await conn.publish(f"$JS.API.DIRECT.GET.{stream}", request, reply=inbox)
            got, more = 0, False
            async for msg in _answers(conn, stream, queue, wait):
                headers = msg.headers or {}
                status = headers.get("Status")
                if status is None:
                    stored = _stored(msg)
                    next_seq, got = stored.seq + 1, got + 1
                    yield stored
                elif status == "204":  # end of this batch: are there more after it?
                    more = got > 0 and headers.get("Nats-Num-Pending", "0") != "0"
                elif status != "404":  # 404: nothing at or after next_seq
                    raise TransportError(f"direct get on {stream}: status {status}")
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
