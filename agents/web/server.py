"""Serving the web interface with uvicorn, beside the agent's API, until the agent stops.

Loopback over HTTP by default; any other address only over HTTPS (the settings refuse it
otherwise), with the certificate chain and key files of the ``[web]`` section (the key file
refused when group or others may read it). Where it listens is written to
``<data_dir>/web.json`` (``{"url": ..., "pid": ...}``), as the API's address is to
``api.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import structlog
import uvicorn

from relais.agents.keys import write_atomic
from relais.agents.runtime import Agent
from relais.agents.web.app import create_web_app
from relais.agents.web.users import WebStore
from relais.schemas.errors import ConfigError, Reason

__all__ = ["serve_web"]

_STARTUP_POLL: Final = 0.02
_log = structlog.get_logger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the agent's handlers stop everything."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _check_key_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"cannot read the web TLS key file {path}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the web TLS key file {path} is readable by others (chmod 600)",
            reason=Reason.KEYFILE_PERMISSIONS,
        )


def _config(agent: Agent, app: object) -> uvicorn.Config:
    web = agent.settings.web
    tls: dict[str, str] = {}
    if web.tls_cert_file is not None and web.tls_key_file is not None:
        _check_key_file(web.tls_key_file)
        tls = {"ssl_certfile": str(web.tls_cert_file), "ssl_keyfile": str(web.tls_key_file)}
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=web.host,
        port=web.port,
        log_config=None,
        access_log=False,  # request lines would carry event ids next to client addresses
        lifespan="off",
        server_header=False,
        **tls,  # type: ignore[arg-type]
    )


async def serve_web(agent: Agent) -> None:
    """Serve the web interface of a started ``agent`` until ``agent.stopped`` is set."""
    settings = agent.settings
    store = await asyncio.to_thread(WebStore, settings.web_database)
    try:
        server = _Server(_config(agent, create_web_app(agent, store)))
        task = asyncio.create_task(server.serve())
        # uvicorn exposes its start only as a flag.
        while not server.started and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(_STARTUP_POLL)
        if not server.started:
            await asyncio.gather(task, return_exceptions=True)
            raise ConfigError("the web interface could not listen on its address")
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        scheme = "https" if settings.web.tls else "http"
        url = f"{scheme}://{host}:{port}"
        info = json.dumps({"url": url, "pid": os.getpid()}).encode() + b"\n"
        write_atomic(settings.web_info_file, info, mode=0o644, overwrite=True)
        _log.info("agent.web_listening", url=url)
        stopped = asyncio.create_task(agent.stopped.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        stopped.cancel()
        await task
    finally:
        with contextlib.suppress(OSError):
            settings.web_info_file.unlink()
        await asyncio.to_thread(store.close)
