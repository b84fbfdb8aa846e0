"""JetStream calls of the gateway beyond :class:`~relais.broker_config.connection.Connection`.

* :func:`publish`: a stream publish whose refusal is an explicit value when it is expected
  (``Nats-Expected-Last-Subject-Sequence`` lost to another writer), never an exception to
  parse: the replay store and the audit checkpointer use it for "write only if nobody has";
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
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Final

from nats.aio.msg import Msg

from relais.broker_config.connection import Connection
from relais.schemas.errors import Reason, TransportError

__all__ = [
    "ERR_WRONG_LAST_SEQUENCE",
    "Published",
    "StoredMessage",
    "get_message",
    "last_for_subject",
    "publish",
    "read_stream",
]

# JetStream API error codes.
ERR_WRONG_LAST_SEQUENCE: Final = 10071
_ERR_NO_MESSAGE: Final = 10037
_EXPECTED_LAST_SUBJECT_SEQ: Final = "Nats-Expected-Last-Subject-Sequence"
_READ_BATCH: Final = 500
_READ_TIMEOUT: Final = 10.0


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
    """
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
