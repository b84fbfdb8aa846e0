"""The agent's NATS connection, opened in the background and kept open.

The agent must start, accept events and serve its inbox while the broker is away: the
connection is opened by a background task that retries with backoff (stamina) until it
succeeds; once connected, nats-py reconnects by itself. Users of the link wait for it with
:meth:`Link.connected`, which returns only a connection that is up.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Final

import stamina
import structlog

from relais.broker_config.connection import ClientTls, Connection, connect
from relais.broker_config.nats_conf import inbox_prefix
from relais.schemas.errors import ConfigError, Reason, TransportError

__all__ = ["Link"]

_POLL_SECONDS: Final = 0.05
_log = structlog.get_logger(__name__)


class Link:
    """A partner's authenticated connection (inbox prefix ``_INBOX_<id>``)."""

    def __init__(
        self,
        partner_id: str,
        servers: list[str],
        creds: Path,
        *,
        connect_timeout: float,
        request_timeout: float,
        tls: ClientTls | None = None,
    ) -> None:
        """Describe the connection to open (nothing happens before :meth:`run`)."""
        self._partner_id = partner_id
        self._servers = servers
        self._creds = creds
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._tls = tls
        self._conn: Connection | None = None

    @property
    def conn(self) -> Connection | None:
        """The connection once opened (it may be reconnecting)."""
        return self._conn

    @property
    def is_connected(self) -> bool:
        """True while connected to a server."""
        return self._conn is not None and self._conn.is_connected

    async def run(self, stop: asyncio.Event) -> None:
        """Open the connection (retrying forever), reopen it if it gets closed, until stop."""
        while not stop.is_set():
            if self._conn is None or self._conn.is_closed:
                self._conn = await self._open()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def _open(self) -> Connection:
        async for attempt in stamina.retry_context(
            on=TransportError,
            attempts=None,
            timeout=None,
            wait_initial=0.2,
            wait_max=5.0,
            wait_jitter=0.5,
        ):
            with attempt:
                try:
                    conn = await connect(
                        self._servers,
                        creds=self._creds,
                        inbox_prefix=inbox_prefix(self._partner_id),
                        name=self._partner_id,
                        connect_timeout=self._connect_timeout,
                        request_timeout=self._request_timeout,
                        tls=self._tls,
                    )
                except ConfigError:
                    raise  # bad creds file: retrying cannot help
                _log.info("agent.connected", partner=self._partner_id)
                return conn
        raise TransportError("unreachable")  # pragma: no cover - the loop above never ends

    async def connected(self, stop: asyncio.Event | None = None) -> Connection:
        """Wait until the connection is up and return it (cancelled by the caller's stop)."""
        while True:
            conn = self._conn
            if conn is not None and conn.is_connected:
                return conn
            if stop is not None and stop.is_set():
                raise TransportError("agent stopping")
            await asyncio.sleep(_POLL_SECONDS)

    def require(self) -> Connection:
        """The connection if it is up now, else ``TransportError(NOT_CONNECTED)``."""
        conn = self._conn
        if conn is None or not conn.is_connected:
            raise TransportError("not connected to the broker", reason=Reason.NOT_CONNECTED)
        return conn

    async def close(self) -> None:
        """Close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(TransportError):
                await conn.close()
