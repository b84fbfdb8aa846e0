"""A NATS connection for relais components: permission denials surfaced, every wait bounded.

nats-py reports a permissions violation asynchronously, through ``error_cb``, as an error
whose text is the server's message lower-cased (``nats: permissions violation for publish to
"<subject>"``); the operation that caused it just never gets an answer. :class:`Connection`
always installs ``error_cb``, ``disconnected_cb``, ``reconnected_cb`` and ``closed_cb``, and
matches each denial with the operations waiting on that subject:

* requests (:meth:`Connection.request`, :meth:`Connection.js_publish`, :meth:`Connection.api`)
  and pulls (:meth:`Connection.fetch`) fail with :class:`PermissionDenied` as soon as the
  denial arrives (one round trip), else with :class:`TransportError` (``TIMEOUT``) at their
  deadline;
* :meth:`Connection.publish` and :meth:`Connection.subscribe` flush: the server answers the
  PING after the message or subscription, so a denial is known when the flush returns (this
  needs the queued commands written before the PING, which nats-py 2.16's ``flush()`` does
  not ensure: see ``_round_trip``);
* denials nobody waited for (a fire-and-forget ack) are raised by the next
  :meth:`Connection.flush`.

All nats-py exceptions are translated to :class:`TransportError` (``raise ... from exc``)
by :func:`translate_error`.

Replies come back on one wildcard subscription below the connection's inbox prefix (the
only subjects a partner may subscribe to are ``_INBOX_<id>.>``). :meth:`Connection.fetch`
is a lean pull: one request to ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`` per batch,
messages buffered per consumer, and no new request while an earlier one can still deliver.
Pulled messages arrive with their stream subject (not the reply subject), so they are routed
by their ack subject. Measured with batches of 200 and fire-and-forget acks: about 11 µs of
client CPU per message against 35 µs for nats-py's ``pull_subscribe_bind().fetch()``.

Subjects in nats-py's denial messages are lower-cased: a denial is matched to waiting
operations case-insensitively, and reported with the subject the caller used.

A gateway connection must also call :func:`require_sync_always` on the server's monitoring
endpoint. Nothing here logs payloads.

TLS (:class:`ClientTls`): the server's certificate is verified against the partnership CA
(``ca_file``; host name or IP address checked), a client certificate is presented when one
is configured (mutual TLS), and the handshake comes first (the server is configured with
``handshake_first``): nothing is sent or read in plaintext, so a server that does not speak
TLS is refused rather than used without it. Without an explicit ``tls``, :func:`connect`
takes natscli's environment variables ``NATS_CA``, ``NATS_CERT`` and ``NATS_KEY`` (what the
operator's CLI uses against a broker with TLS). A certificate that does not verify ends
``connect`` at once with :class:`TransportError` (``NOT_CONNECTED``), saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import nats.errors
import nkeys
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header
from nats.js.client import JetStreamContext
from nats.js.errors import APIError
from nats.nuid import NUID

from relais.broker_config.nats_conf import read_private_file, read_seed_public_key
from relais.schemas.errors import ConfigError, PermissionDenied, Reason, TransportError

__all__ = [
    "STORAGE_LIMIT_CODES",
    "ClientTls",
    "Connection",
    "Denial",
    "PubAck",
    "UserCredentials",
    "connect",
    "is_creds_file",
    "read_user_credentials",
    "require_sync_always",
    "translate_error",
]

_DENIAL_RE = re.compile(
    r'permissions violation for (publish|subscription)(?: with reply of| to) "([^"]*)"',
    re.IGNORECASE,
)
_AUTH_VIOLATION = "authorization violation"
# nats-server's refusals of one connection too many (account limit, or the server's own)
_CONNECTION_LIMIT_TEXTS = ("maximum account active connections exceeded", "maximum connections")
_PULL_GRACE = 2.0  # beyond a pull's own expiry before the server is presumed gone
_MAX_DENIALS_KEPT = 100
_MAX_FETCH_BATCH = 10_000
_MAX_CREDS_FILE_BYTES = 16 * 1024
_ACK: Final = b"+ACK"
_NAK: Final = b"-NAK"
_TERM: Final = b"+TERM"
_WPI: Final = b"+WPI"
# JetStream's "maximum messages/bytes (per subject) exceeded" (discard: new): a full stream or
# a partner over its share of one (broker_config.streams.StorageLimits).
STORAGE_LIMIT_CODES: Final = frozenset({10077})

_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Denial:
    """A permissions violation reported by the server (subject as nats-py reports it)."""

    operation: str  # "publish" or "subscription"
    subject: str


@dataclass(frozen=True, slots=True)
class PubAck:
    """JetStream's acknowledgement of a stored message."""

    stream: str
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class ClientTls:
    """How a client verifies the broker (``ca_file``) and, for mutual TLS, proves itself."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("a TLS client certificate and its key go together")

    @classmethod
    def from_environment(cls) -> ClientTls | None:
        """natscli's ``NATS_CA`` (and ``NATS_CERT``/``NATS_KEY``), or ``None`` when unset."""
        ca = os.environ.get("NATS_CA")
        if not ca:
            return None
        cert, key = os.environ.get("NATS_CERT"), os.environ.get("NATS_KEY")
        return cls(Path(ca), Path(cert) if cert else None, Path(key) if key else None)

    def context(self) -> ssl.SSLContext:
        """An :class:`ssl.SSLContext` trusting only the CA (TLS 1.2 at least, names checked)."""
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
            if self.cert_file is not None and self.key_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS files ({self.ca_file}...): {exc}") from exc
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def translate_error(exc: BaseException, what: str) -> TransportError:
    """The relais error for a nats-py exception raised while doing ``what``."""
    if isinstance(exc, nats.errors.AuthorizationError):
        return PermissionDenied(f"{what}: authorization violation")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TransportError(
            f"{what}: the broker's TLS certificate does not verify against the CA"
            f" ({exc.verify_message})",
            reason=Reason.NOT_CONNECTED,
        )
    if isinstance(exc, ssl.SSLError):
        return TransportError(f"{what}: TLS refused ({exc.reason})", reason=Reason.NOT_CONNECTED)
    if isinstance(exc, TimeoutError):  # nats.errors.TimeoutError is one too
        return TransportError(f"{what}: timeout", reason=Reason.TIMEOUT)
    if isinstance(exc, nats.errors.NoRespondersError):
        return TransportError(f"{what}: no responders", reason=Reason.BROKER_ERROR)
    if isinstance(exc, APIError):
        code, description = getattr(exc, "err_code", None), getattr(exc, "description", "")
        reason = Reason.STORAGE_LIMIT if code in STORAGE_LIMIT_CODES else Reason.BROKER_ERROR
        return TransportError(f"{what}: JetStream error {code}: {description}", reason=reason)
    not_connected = (
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionReconnectingError,
        nats.errors.ConnectionDrainingError,
        nats.errors.StaleConnectionError,
        nats.errors.NoServersError,
        nats.errors.OutboundBufferLimitError,
        OSError,
    )
    if isinstance(exc, not_connected):
        return TransportError(f"{what}: not connected", reason=Reason.NOT_CONNECTED)
    return TransportError(f"{what}: {type(exc).__name__}", reason=Reason.BROKER_ERROR)


def _status(msg: Msg) -> tuple[str, str] | None:
    """``(code, description)`` of a server status message, ``None`` for a real message."""
    headers = msg.headers
    if not headers or msg.data or "Status" not in headers:
        return None
    return headers["Status"], str(headers.get(Header.DESCRIPTION, ""))


@dataclass(slots=True, eq=False)
class _Pull:
    """Client-side state of one consumer's pulls."""

    api_subject: str
    buffer: deque[Msg] = field(default_factory=deque)
    # request token -> [messages still expected, deadline (loop time)]
    open: dict[str, list[float]] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    error: TransportError | None = None

    def take(self, batch: int) -> list[Msg]:
        count = min(batch, len(self.buffer))
        return [self.buffer.popleft() for _ in range(count)]

    def end_all(self, error: TransportError | None = None) -> None:
        self.open.clear()
        if error is not None:
            self.error = error
        self.wake.set()

    def on_message(self, msg: Msg) -> None:
        self.buffer.append(msg)
        # Messages do not say which request they answer: count them against the oldest.
        for token, request in self.open.items():
            request[0] -= 1
            if request[0] <= 0:
                del self.open[token]
            break
        self.wake.set()

    def on_status(self, token: str, code: str, description: str) -> None:
        if code == "100":
            return  # idle heartbeat
        self.open.pop(token, None)
        transient = code in ("404", "408") or (
            code == "409" and not description.startswith(("Consumer Deleted", "Consumer is"))
        )
        if not transient:
            self.error = TransportError(
                f"pull refused: {code} {description}", reason=Reason.BROKER_ERROR
            )
        self.wake.set()


class Connection:
    """One authenticated NATS connection (build it with :func:`connect`)."""

    def __init__(self, *, inbox_prefix: str, name: str, request_timeout: float) -> None:
        self._nc = NATS()
        self._name = name
        self._inbox = inbox_prefix
        self._mux = f"{inbox_prefix}.{NUID().next().decode()}"
        self._timeout = request_timeout
        self._tokens = itertools.count(1)
        self._responses: dict[str, asyncio.Future[Msg]] = {}
        # (operation, lower-cased subject) -> [(future, subject as the caller wrote it)]
        self._waiters: dict[tuple[str, str], list[tuple[asyncio.Future[Any], str]]] = {}
        self._pulls: dict[str, _Pull] = {}  # key: stream.consumer
        self._pulls_by_subject: dict[str, _Pull] = {}  # key: lower-cased API subject
        self._denials: deque[Denial] = deque(maxlen=_MAX_DENIALS_KEPT)
        self._unclaimed: list[Denial] = []
        self._auth_failed: asyncio.Future[None] | None = None
        self._limit_refused = False
        self._tls_refused: ssl.SSLError | None = None
        self._mux_sub: Subscription | None = None
        self._closing = False
        self._closer: asyncio.Task[None] | None = None

    # -- properties --------------------------------------------------------------------------

    @property
    def nc(self) -> NATS:
        """The underlying nats-py client (its errors are not translated)."""
        return self._nc

    @property
    def is_connected(self) -> bool:
        """True while connected to a server."""
        return bool(self._nc.is_connected)

    @property
    def is_closed(self) -> bool:
        """True once closed (by :meth:`close`, or after the server refused the user)."""
        return bool(self._nc.is_closed)

    @property
    def denials(self) -> tuple[Denial, ...]:
        """The last permission denials reported on this connection (oldest first)."""
        return tuple(self._denials)

    def jetstream(self, *, timeout: float | None = None) -> JetStreamContext:
        """nats-py's JetStream context (for :func:`relais.broker_config.streams.provision`)."""
        return self._nc.jetstream(timeout=timeout or self._timeout)

    # -- callbacks ---------------------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        text = str(exc)
        if isinstance(exc, ssl.SSLError) and self._auth_failed is not None:
            # A certificate that does not verify will not verify on the next attempt either:
            # connect() says so now instead of retrying until its deadline.
            self._tls_refused = exc
            if not self._auth_failed.done():
                self._auth_failed.set_result(None)
            return
        match = _DENIAL_RE.search(text)
        if match:
            self._denied(Denial(match.group(1).lower(), match.group(2)))
            return
        if any(t in text.lower() for t in _CONNECTION_LIMIT_TEXTS):
            # One connection too many for this identity: retrying within connect() cannot
            # help; connect() raises CONNECTION_LIMIT (after it, nats-py reconnects by itself).
            self._limit_refused = True
            if self._auth_failed is not None and not self._auth_failed.done():
                self._auth_failed.set_result(None)
                return
        if _AUTH_VIOLATION in text.lower() or isinstance(exc, nats.errors.AuthorizationError):
            if self._auth_failed is not None:  # connecting: connect() raises PermissionDenied
                if not self._auth_failed.done():
                    self._auth_failed.set_result(None)
                return
            # Refused on a reconnection: the user was removed (partner revoked). Retrying
            # cannot help, and nats-py 2.16 leaks the socket of every refused attempt: close,
            # and let the component's supervisor decide.
            _log.error("nats.authorization_violation", connection=self._name, action="closing")
            if self._closer is None and not self._closing:
                self._closer = asyncio.get_running_loop().create_task(self.close())
            return
        # While connecting, each refused attempt is an error here; connect() reports the
        # outcome once, at its deadline: one line, not one warning per attempt.
        log = _log.debug if self._auth_failed is not None else _log.warning
        log("nats.error", connection=self._name, error=type(exc).__name__)

    def _denied(self, denial: Denial) -> None:
        self._denials.append(denial)
        claimed = False
        for future, subject in self._waiters.pop((denial.operation, denial.subject.lower()), []):
            if not future.done():
                future.set_exception(self._denied_error(Denial(denial.operation, subject)))
                claimed = True
        pull = self._pulls_by_subject.get(denial.subject.lower())
        if denial.operation == "publish" and pull is not None and pull.open:
            pull.end_all(self._denied_error(Denial(denial.operation, pull.api_subject)))
            claimed = True
        # A claimed denial is raised to its caller, who reports it: logged here only once
        # nobody waited for it (a command prints one line, not a warning and an error).
        log = _log.debug if claimed else _log.warning
        log(
            "nats.permission_denied",
            connection=self._name,
            operation=denial.operation,
            subject=denial.subject,
        )
        if not claimed:
            self._unclaimed.append(denial)

    @staticmethod
    def _denied_error(denial: Denial) -> PermissionDenied:
        return PermissionDenied(f'permission denied: {denial.operation} to "{denial.subject}"')

    async def _on_disconnected(self) -> None:
        if not self._closing:
            _log.warning("nats.disconnected", connection=self._name)
        # Answers and pulled messages for the lost connection will not come: fail the waiting
        # operations now rather than at their deadlines (a JetStream publish is retried with
        # the same Nats-Msg-Id, a fetch asks again).
        self._fail_pending(TransportError("disconnected", reason=Reason.NOT_CONNECTED))

    async def _on_reconnected(self) -> None:
        _log.info("nats.reconnected", connection=self._name)

    async def _on_closed(self) -> None:
        _log.debug("nats.closed", connection=self._name)
        self._fail_pending(TransportError("connection closed", reason=Reason.NOT_CONNECTED))

    def _fail_pending(self, error: TransportError) -> None:
        for future in self._responses.values():
            if not future.done():
                future.set_exception(error)
        self._responses.clear()
        for pull in self._pulls.values():
            if pull.open:
                pull.end_all(error)

    async def _on_mux(self, msg: Msg) -> None:
        # JetStream delivers pulled messages with their stream subject, not the reply subject
        # they were asked for: they are told apart by their ack subject.
        if msg.reply.startswith("$JS.ACK."):
            tokens = msg.reply.split(".")
            stream, consumer = (tokens[2], tokens[3]) if len(tokens) == 9 else tokens[4:6]
            pull = self._pulls.get(f"{stream}.{consumer}")
            if pull is not None:
                pull.on_message(msg)
            return
        kind, _, rest = msg.subject[len(self._mux) + 1 :].partition(".")
        if kind == "r":
            future = self._responses.pop(rest, None)
            if future is None or future.done():
                return
            status = _status(msg)
            if status is not None and status[0] == "503":
                future.set_exception(TransportError("no responders", reason=Reason.BROKER_ERROR))
            else:
                future.set_result(msg)
        elif kind == "p":
            key, _, token = rest.rpartition(".")
            pull = self._pulls.get(key)
            status = _status(msg)
            if pull is not None and status is not None:
                pull.on_status(token, *status)

    # -- connection --------------------------------------------------------------------------

    async def _open(
        self, servers: list[str], auth: dict[str, Any], *, connect_timeout: float, **options: Any
    ) -> None:
        loop = asyncio.get_running_loop()
        self._auth_failed = loop.create_future()
        task = asyncio.ensure_future(
            self._nc.connect(
                servers=servers,
                name=self._name,
                inbox_prefix=self._inbox,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                closed_cb=self._on_closed,
                allow_reconnect=True,
                connect_timeout=max(1, round(connect_timeout)),
                **auth,
                **options,
            )
        )
        try:
            done, _ = await asyncio.wait(
                {task, self._auth_failed},
                timeout=connect_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except asyncio.CancelledError:
            # asyncio.wait leaves the connect running: it would connect later, unowned.
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            with contextlib.suppress(nats.errors.Error):
                await self._nc.close()
            raise
        auth_failed = self._auth_failed.done()
        self._auth_failed.cancel()
        self._auth_failed = None
        if task in done and task.exception() is None and not auth_failed:
            return
        exc = task.exception() if task in done else None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self._closing = True  # never connected: its closing is not a disconnection to report
        with contextlib.suppress(nats.errors.Error):
            await self._nc.close()
        if auth_failed and self._tls_refused is not None:
            raise translate_error(self._tls_refused, f"{self._name}: connect")
        if auth_failed and self._limit_refused:
            raise TransportError(
                f"{self._name}: too many connections for this identity",
                reason=Reason.CONNECTION_LIMIT,
            )
        if auth_failed:
            raise PermissionDenied(f"{self._name}: authorization violation (unknown user?)")
        if exc is None:
            raise TransportError(
                f"{self._name}: cannot connect within {connect_timeout} s",
                reason=Reason.NOT_CONNECTED,
            )
        raise translate_error(exc, f"{self._name}: connect") from exc

    async def close(self) -> None:
        """Close now (no drain; what is still queued is written first by nats-py)."""
        self._closing = True
        closer, self._closer = self._closer, None
        if closer is not None and closer is not asyncio.current_task():
            await asyncio.gather(closer, return_exceptions=True)
        nc = self._nc
        if not nc.is_closed:
            if nc.is_reconnecting:
                # nats-py 2.16 would write what it buffered while reconnecting to a transport
                # that may be dead, and stop half-way through close(). Nothing buffered for a
                # lost connection can be delivered once we close anyway.
                nc._pending, nc._pending_data_size = [], 0
            try:
                await nc.close()
            except nats.errors.Error as exc:
                raise translate_error(exc, "close") from exc
            except OSError:
                # The connection was lost meanwhile; nats-py stopped before closing it.
                if nc._transport is not None:
                    nc._transport.close()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # nats-py 2.16: closing while it reconnects can let the cancelled close
                # waiter of an abandoned transport escape close(); the client is closed all
                # the same, but its closed callback was skipped.
                _log.debug("nats.close_interrupted", connection=self._name)
        self._fail_pending(TransportError("connection closed", reason=Reason.NOT_CONNECTED))

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- waiting -----------------------------------------------------------------------------

    def _watch(self, operation: str, subject: str) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((operation, subject.lower()), []).append((future, subject))
        return future

    def _unwatch(self, operation: str, subject: str, future: asyncio.Future[Any]) -> None:
        key = (operation, subject.lower())
        waiting = self._waiters.get(key)
        if waiting is not None:
            waiting[:] = [entry for entry in waiting if entry[0] is not future]
            if not waiting:
                del self._waiters[key]
        if future.done() and not future.cancelled():
            future.exception()  # retrieved: never "exception was never retrieved"
        future.cancel()

    async def _round_trip(self) -> None:
        # nats-py 2.16 writes its PING straight to the socket, ahead of the commands still
        # queued for its flusher task, so a plain flush() can return before the server has
        # seen them. Push the queue out first: then the PONG really follows them.
        try:
            await self._nc._flush_pending(force_flush=True)
            await self._nc.flush(timeout=max(1, round(self._timeout)))
        except (nats.errors.Error, TimeoutError) as exc:
            raise translate_error(exc, "flush") from exc

    async def _flush_checked(self, watched: asyncio.Future[Any]) -> None:
        await self._round_trip()
        if watched.done() and not watched.cancelled():
            denied = watched.exception()
            if denied is not None:
                raise denied

    async def flush(self) -> None:
        """Round trip to the server; raises :class:`PermissionDenied` for unclaimed denials."""
        await self._round_trip()
        if self._unclaimed:
            denial, self._unclaimed = self._unclaimed[0], []
            raise self._denied_error(denial)

    # -- core operations ---------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        reply: str = "",
        confirm: bool = True,
    ) -> None:
        """Core publish. ``confirm``: flush and raise :class:`PermissionDenied` if refused."""
        watched = self._watch("publish", subject) if confirm else None
        try:
            await self._nc.publish(subject, payload, reply=reply, headers=headers)
            if watched is not None:
                await self._flush_checked(watched)
        except nats.errors.Error as exc:
            raise translate_error(exc, f"publish to {subject}") from exc
        finally:
            if watched is not None:
                self._unwatch("publish", subject, watched)

    async def subscribe(
        self,
        subject: str,
        *,
        queue: str = "",
        cb: Callable[[Msg], Awaitable[None]] | None = None,
    ) -> Subscription:
        """Subscribe (flushed: a denied subscription raises :class:`PermissionDenied`)."""
        watched = self._watch("subscription", subject)
        try:
            sub = await self._nc.subscribe(subject, queue=queue, cb=cb)
            try:
                await self._flush_checked(watched)
            except PermissionDenied:
                await sub.unsubscribe()
                raise
            return sub
        except nats.errors.Error as exc:
            raise translate_error(exc, f"subscribe to {subject}") from exc
        finally:
            self._unwatch("subscription", subject, watched)

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        max_wait: float | None = None,
    ) -> Msg:
        """Request/reply with a deadline; a denied publish raises :class:`PermissionDenied`."""
        token = str(next(self._tokens))
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._responses[token] = future
        watched = self._watch("publish", subject)
        # The denial and the answer race to whichever comes first.
        watched.add_done_callback(lambda w: _forward_failure(w, future))
        try:
            await self._nc.publish(
                subject, payload, reply=f"{self._mux}.r.{token}", headers=headers
            )
            async with asyncio.timeout(max_wait or self._timeout):
                return await future
        except TimeoutError as exc:
            raise TransportError(f"no answer from {subject}", reason=Reason.TIMEOUT) from exc
        except nats.errors.Error as exc:
            raise translate_error(exc, f"request to {subject}") from exc
        finally:
            self._responses.pop(token, None)
            self._unwatch("publish", subject, watched)

    async def api(
        self, subject: str, body: dict[str, Any] | None = None, *, max_wait: float | None = None
    ) -> dict[str, Any]:
        """A JetStream API call (``$JS.API...``): the decoded answer, API errors raised."""
        payload = json.dumps(body).encode() if body is not None else b""
        return _answer(await self.request(subject, payload, max_wait=max_wait), subject)

    async def js_publish(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str | None = None,
        headers: dict[str, str] | None = None,
        max_wait: float | None = None,
    ) -> PubAck:
        """Publish to a stream and wait for its acknowledgement (dedup on ``msg_id``)."""
        all_headers = dict(headers or {})
        if msg_id is not None:
            all_headers["Nats-Msg-Id"] = msg_id
        msg = await self.request(subject, payload, headers=all_headers or None, max_wait=max_wait)
        answer = _answer(msg, subject)
        try:
            return PubAck(str(answer["stream"]), int(answer["seq"]), bool(answer.get("duplicate")))
        except (KeyError, TypeError, ValueError) as exc:
            raise TransportError(f"{subject}: malformed acknowledgement") from exc

    # -- pulls -------------------------------------------------------------------------------

    def _pull(self, stream: str, consumer: str) -> _Pull:
        key = f"{stream}.{consumer}"
        pull = self._pulls.get(key)
        if pull is None:
            pull = _Pull(api_subject=f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}")
            self._pulls[key] = pull
            self._pulls_by_subject[pull.api_subject.lower()] = pull
        return pull

    async def fetch(
        self, stream: str, consumer: str, batch: int = 1, *, expires: float = 1.0
    ) -> list[Msg]:
        """Up to ``batch`` messages of a durable pull consumer, waiting at most ``expires``.

        Returns as soon as at least one message is there; ``[]`` when none came in time.
        Raises :class:`PermissionDenied` for a consumer this user may not pull from.
        """
        if not 1 <= batch <= _MAX_FETCH_BATCH or expires <= 0:
            raise ConfigError("fetch: batch must be in 1..10000 and expires positive")
        pull = self._pull(stream, consumer)
        if not pull.buffer:
            loop = asyncio.get_running_loop()
            now = loop.time()
            for token in [t for t, (_, deadline) in pull.open.items() if deadline < now]:
                del pull.open[token]
            if not pull.open:
                token = str(next(self._tokens))
                pull.open[token] = [batch, now + expires + _PULL_GRACE]
                request = {"batch": batch, "expires": int(expires * 1e9)}
                try:
                    await self._nc.publish(
                        pull.api_subject,
                        json.dumps(request).encode(),
                        reply=f"{self._mux}.p.{stream}.{consumer}.{token}",
                    )
                except nats.errors.Error as exc:
                    pull.open.pop(token, None)
                    raise translate_error(exc, f"fetch from {consumer}") from exc
            await self._wait_pull(pull)
        return pull.take(batch)

    async def _wait_pull(self, pull: _Pull) -> None:
        loop = asyncio.get_running_loop()
        while not pull.buffer:
            if pull.error is not None:
                error, pull.error = pull.error, None
                raise error
            if not pull.open:
                return
            remaining = min(deadline for _, deadline in pull.open.values()) - loop.time()
            if remaining <= 0:
                pull.open.clear()
                raise TransportError(
                    f"no answer to a pull on {pull.api_subject}", reason=Reason.TIMEOUT
                )
            pull.wake.clear()
            try:
                async with asyncio.timeout(remaining):
                    await pull.wake.wait()
            except TimeoutError:
                continue

    # -- acknowledgements --------------------------------------------------------------------

    async def _reply(self, msg: Msg, payload: bytes, confirm: bool) -> None:
        if not msg.reply or not msg.reply.startswith("$JS.ACK."):
            raise TransportError("not a JetStream message", reason=Reason.BROKER_ERROR)
        if confirm:
            await self.request(msg.reply, payload)  # the server answers once it has the ack
        else:
            await self.publish(msg.reply, payload, confirm=False)

    async def ack(self, msg: Msg, *, confirm: bool = False) -> None:
        """Acknowledge; ``confirm`` waits for the server to have recorded it (one round trip)."""
        await self._reply(msg, _ACK, confirm)

    async def nak(self, msg: Msg, *, delay: float | None = None, confirm: bool = False) -> None:
        """Ask for redelivery, after ``delay`` seconds if given (else per the backoff)."""
        payload = (
            _NAK
            if delay is None
            else _NAK + b" " + json.dumps({"delay": int(delay * 1e9)}).encode()
        )
        await self._reply(msg, payload, confirm)

    async def term(self, msg: Msg, *, confirm: bool = False) -> None:
        """Never redeliver this message (it stays in the stream)."""
        await self._reply(msg, _TERM, confirm)

    async def in_progress(self, msg: Msg) -> None:
        """Reset the ack timer of a message still being worked on."""
        await self._reply(msg, _WPI, False)


def _answer(msg: Msg, subject: str) -> dict[str, Any]:
    """The JSON object of a JetStream answer; its ``error`` raised as TransportError."""
    try:
        answer = json.loads(msg.data)
    except ValueError as exc:
        raise TransportError(f"{subject}: malformed answer") from exc
    if not isinstance(answer, dict):
        raise TransportError(f"{subject}: malformed answer")
    error = answer.get("error")
    if error:
        code = error.get("err_code") if isinstance(error, dict) else None
        reason = Reason.STORAGE_LIMIT if code in STORAGE_LIMIT_CODES else Reason.BROKER_ERROR
        raise TransportError(f"{subject}: JetStream error {code}", reason=reason)
    return answer


def _forward_failure(watched: asyncio.Future[Any], target: asyncio.Future[Msg]) -> None:
    if watched.cancelled() or target.done():
        return
    exc = watched.exception()
    if exc is not None:
        target.set_exception(exc)


@dataclass(frozen=True, slots=True)
class UserCredentials:
    """What a NATS ``.creds`` file holds: the user's seed, and whether it has a user JWT."""

    public_key: str
    has_jwt: bool
    seed: str = field(repr=False)


_CREDS_BLOCK_RE: Final = re.compile(
    r"-{3,}BEGIN (NATS USER JWT|USER NKEY SEED)-{3,}\s*\n\s*(\S+)\s*\n\s*-{3,}END \1-{3,}"
)
_SEED_BLOCK: Final = "BEGIN USER NKEY SEED"


def _read_private(path: Path) -> str:
    """A small credential file's text, refusing one that group or others may access."""
    data = read_private_file(
        path, max_bytes=_MAX_CREDS_FILE_BYTES, too_large="is too large for a credential file"
    )
    return data.decode("ascii", "replace")


def is_creds_file(path: Path) -> bool:
    """True for a NATS ``.creds`` file (it has a seed block), False for anything else."""
    return _SEED_BLOCK in _read_private(path)


def read_user_credentials(path: Path) -> UserCredentials:
    """Read a NATS ``.creds`` file (natscli's format), refusing one group or others may read.

    The file must hold a ``USER NKEY SEED`` block; a ``NATS USER JWT`` block is optional:
    relais's generated broker authenticates users by nkey, so its ``.creds`` files carry
    the seed block only (a bare seed file is :func:`read_seed_public_key`'s).
    """
    blocks = {m.group(1): m.group(2) for m in _CREDS_BLOCK_RE.finditer(_read_private(path))}
    seed = blocks.get("USER NKEY SEED")
    if seed is None:
        raise ConfigError(f"{path} is not a NATS .creds file (no USER NKEY SEED block)")
    try:
        public = nkeys.from_seed(bytearray(seed.encode())).public_key.decode()
    except (nkeys.ErrInvalidSeed, nkeys.ErrInvalidPrefixByte, ValueError) as exc:
        raise ConfigError(f"{path}: its seed block is not a NATS user nkey seed") from exc
    if not public.startswith("U"):
        raise ConfigError(f"{path}: its seed block is not a NATS user nkey seed")
    return UserCredentials(public, "NATS USER JWT" in blocks, seed)


def _auth_options(creds: Path) -> dict[str, Any]:
    """nats-py's options for a bare seed file or a ``.creds`` file (checked first)."""
    if not is_creds_file(creds):
        read_seed_public_key(creds)
        return {"nkeys_seed": str(creds)}
    read = read_user_credentials(creds)
    if read.has_jwt:  # JWT authentication (a broker in operator mode)
        return {"user_credentials": str(creds)}
    # nats-py reads a .creds file only with a JWT (without one it loops for ever looking for
    # it): a seed-only file authenticates by nkey, as a seed file does.
    return {"nkeys_seed_str": read.seed}


async def connect(
    servers: str | Sequence[str],
    *,
    creds: Path,
    inbox_prefix: str,
    name: str,
    connect_timeout: float = 10.0,
    request_timeout: float = 5.0,
    max_reconnect_attempts: int = -1,
    reconnect_time_wait: float = 0.5,
    tls: ClientTls | None = None,
) -> Connection:
    """Connect with ``creds``, a user nkey seed file or a NATS ``.creds`` file (see
    :func:`read_user_credentials`), and return a :class:`Connection`.

    ``creds`` must be mode 0600 (:class:`ConfigError` otherwise). ``inbox_prefix`` must be the
    one the user may subscribe to (``_INBOX_<partner id>``, ``_INBOX__gateway``...): the reply
    subscription is checked at once and a wrong prefix raises :class:`PermissionDenied`, as
    does an unknown or revoked user. Unreachable servers raise :class:`TransportError`
    (``NOT_CONNECTED``) after ``connect_timeout`` seconds; once connected, reconnection is
    automatic (forever by default). ``tls``: verify the broker against the partnership CA
    (default: :meth:`ClientTls.from_environment`; see the module docstring).
    """
    auth = _auth_options(creds)
    tls = tls or ClientTls.from_environment()
    if tls is not None:
        auth = {**auth, "tls": tls.context(), "tls_handshake_first": True}
    urls = [servers] if isinstance(servers, str) else list(servers)
    conn = Connection(inbox_prefix=inbox_prefix, name=name, request_timeout=request_timeout)
    await conn._open(
        urls,
        auth,
        connect_timeout=connect_timeout,
        max_reconnect_attempts=max_reconnect_attempts,
        reconnect_time_wait=reconnect_time_wait,
    )
    try:
        conn._mux_sub = await conn.subscribe(f"{conn._mux}.>", cb=conn._on_mux)
    except BaseException:
        await conn.close()
        raise
    return conn


async def require_sync_always(
    monitor_url: str, *, allow_unsafe: bool, max_wait: float = 5.0
) -> bool:
    """Refuse a server that does not fsync every write (``/varz`` ``sync_always``).

    Returns ``True`` for a durable server. With ``allow_unsafe`` (the explicit development
    flag) a server that is not, or cannot be shown to be, durable is accepted with a warning
    and ``False`` is returned; otherwise :class:`TransportError` is raised (``SERVER_NOT_DURABLE``,
    or ``NOT_CONNECTED`` when the monitoring endpoint cannot be read). Monitoring listens on
    127.0.0.1: run this on a node's host (or through a local tunnel).
    """
    url = f"{monitor_url.rstrip('/')}/varz"
    try:
        async with httpx.AsyncClient(timeout=max_wait, trust_env=False) as client:
            response = await client.get(url)
            response.raise_for_status()
            varz = response.json()
        config = (varz.get("jetstream") or {}).get("config") or {}
        durable = config.get("sync_always") is True
        problem, reason = "does not report sync_always", Reason.SERVER_NOT_DURABLE
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        durable, problem, reason = (
            False,
            f"monitoring unreadable ({type(exc).__name__})",
            Reason.NOT_CONNECTED,
        )
    if durable:
        return True
    if allow_unsafe:
        _log.warning("broker.not_durable_accepted", monitor=monitor_url, problem=problem)
        return False
    raise TransportError(
        f"refusing the broker: {problem}; acknowledged writes could be lost", reason=reason
    )
