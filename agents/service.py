"""Running an agent as a service: the runtime and its local HTTP API in one event loop.

:func:`serve` starts the :class:`~relais.agents.runtime.Agent`, then uvicorn on the
configured address (port 0: chosen by the system), writes where it listens to
``<data_dir>/api.json`` (``{"url": ..., "pid": ...}``, for scripts and tests), and runs
until SIGTERM or SIGINT, or until a background task of the agent fails. The agent stops
cleanly afterwards: nothing accepted is lost in any case, since every accepted event is in
the outbox before it is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Iterator
from typing import Final

import structlog
import uvicorn

from relais.agents.api import create_app
from relais.agents.keys import write_atomic
from relais.agents.runtime import Agent
from relais.agents.settings import AgentSettings, read_api_token

__all__ = ["serve"]

_STARTUP_POLL: Final = 0.02
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
    agent = Agent(settings, passphrase=passphrase)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stopped.set)
    try:
        await agent.start()
        if settings.api_enabled and settings.api_token_file is not None:
            token = read_api_token(settings.api_token_file)
            await _serve_api(agent, settings, token)
        else:
            await agent.stopped.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(OSError):
            settings.api_info_file.unlink()
        await agent.stop()


async def _serve_api(agent: Agent, settings: AgentSettings, token: bytes) -> None:
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
    task = asyncio.create_task(server.serve())
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
