"""Running an agent as a service: the runtime, its local HTTP API and, when enabled, its web
interface (:mod:`relais.agents.web`) in one event loop.

:func:`serve` starts the :class:`~relais.agents.runtime.Agent`, then uvicorn on the
configured address (port 0: chosen by the system), writes where it listens to
``<data_dir>/api.json`` (``{"url": ..., "pid": ...}``, for scripts and tests; the web
interface's to ``web.json``), and runs
until SIGTERM or SIGINT, or until a background task of the agent fails. The agent stops
cleanly afterwards: nothing accepted is lost in any case, since every accepted event is in
the outbox before it is answered.

Before anything starts, what retrying cannot fix is checked, so that each such failure is
one error and nothing else: the API token file (size and mode), the API address (bound
here, then handed to uvicorn: a port already taken is reported as such), and the NATS
credentials (one connection: a broker that refuses them stops the agent; a broker that
cannot be reached does not, the agent connects later).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import Coroutine, Iterator
from typing import Any, Final

import structlog
import uvicorn

from relais.agents.api import create_app
from relais.agents.keys import write_atomic
from relais.agents.runtime import Agent
from relais.agents.settings import AgentSettings, read_api_token
from relais.agents.web.server import serve_web
from relais.broker_config.connection import connect
from relais.broker_config.nats_conf import inbox_prefix
from relais.schemas.errors import ConfigError, PermissionDenied, TransportError

__all__ = ["serve"]

_STARTUP_POLL: Final = 0.02
_CHECK_CONNECT_SECONDS: Final = (
    2.0  # a refusal is one round trip; a broker away is waited for later
)
_log = structlog.get_logger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the agent's handlers stop both, in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would re-raise a captured SIGTERM once it stops, killing the process
        # before the agent has closed its database and connection.
        yield


async def serve(settings: AgentSettings, *, passphrase: bytes | None = None) -> None:
    """Run the agent (and its API when enabled) until SIGTERM/SIGINT or a failure."""
    token = None
    if settings.api_enabled and settings.api_token_file is not None:
        token = read_api_token(settings.api_token_file)
    api_socket = _bind_api(settings) if token is not None else None
    try:
        await _check_credentials(settings)
    except BaseException:
        if api_socket is not None:
            api_socket.close()
        raise
    agent = Agent(settings, passphrase=passphrase)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stopped.set)
    try:
        await agent.start()
        servers = []
        if token is not None and api_socket is not None:
            servers.append(_serve_api(agent, settings, token, api_socket))
        if settings.web.enabled:
            servers.append(serve_web(agent))
        await _run_servers(agent, servers)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(OSError):
            settings.api_info_file.unlink()
        if api_socket is not None:
            api_socket.close()  # uvicorn closed its server; the socket may never have served
        await agent.stop()


def _bind_api(settings: AgentSettings) -> socket.socket:
    """The API's listening address, bound now: a port already taken is one clear error."""
    host, port = settings.api_host, settings.api_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} for the agent API ({exc.strerror}): stop what"
            " holds that port or choose another api_port"
        ) from exc
    return sock


async def _check_credentials(settings: AgentSettings) -> None:
    """Stop now if the broker refuses the agent's credentials: retrying cannot fix them."""
    try:
        conn = await connect(
            settings.servers,
            creds=settings.creds,
            inbox_prefix=inbox_prefix(settings.partner_id),
            name=settings.partner_id,
            connect_timeout=min(settings.connect_timeout_seconds, _CHECK_CONNECT_SECONDS),
            request_timeout=min(settings.request_timeout_seconds, _CHECK_CONNECT_SECONDS),
            max_reconnect_attempts=0,
            tls=settings.broker_tls,
        )
    except PermissionDenied as exc:
        raise PermissionDenied(
            f"the broker refuses {settings.creds} as {settings.partner_id}'s credentials"
            f" ({exc}): give this partner's own NATS seed file (creds), enrolled in the"
            " directory the broker runs"
        ) from exc
    except TransportError:
        return  # the broker is away: the agent starts without it and connects later
    await conn.close()


async def _run_servers(agent: Agent, servers: list[Coroutine[Any, Any, None]]) -> None:
    """Run the API and the web interface until the agent stops; one failing stops all."""
    tasks = [asyncio.create_task(s) for s in servers]
    tasks.append(asyncio.create_task(agent.stopped.wait()))  # type: ignore[arg-type]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        agent.stopped.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _serve_api(
    agent: Agent, settings: AgentSettings, token: bytes, sock: socket.socket
) -> None:
    app = create_app(agent, token=token, max_body=settings.max_body_bytes)
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    # uvicorn exposes its start only as a flag.
    while not server.started and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(_STARTUP_POLL)
    if server.started:
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        url = f"http://{host}:{port}"
        info = json.dumps({"url": url, "pid": os.getpid()}).encode() + b"\n"
        write_atomic(settings.api_info_file, info, mode=0o644, overwrite=True)
        _log.info("agent.api_listening", url=url)
    stopped = asyncio.create_task(agent.stopped.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopped.cancel()
    await task
