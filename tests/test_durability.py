"""Durability: every acknowledged publish survives crashes, exactly once.

* A single embedded server killed with SIGKILL and started again on the same data directory.
* A 3-node cluster on loopback with R3 streams whose stream leader is killed with SIGKILL
  (twice or more) while 5,000 sequence-numbered events are being published. The publisher
  does what an agent's outbox does: it retries every unacknowledged publish with the same
  ``Nats-Msg-Id`` until it is acknowledged.

Afterwards the stream is read back and the counts of lost (acknowledged but absent),
duplicated and unexpected events are printed; all must be zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from relais.broker_config import embedded
from relais.broker_config.cluster import ClusterLayout, write_cluster_configs
from relais.broker_config.connection import Connection, connect
from relais.broker_config.embedded import (
    provision_as_admin,
    spawn_server,
    start_server,
    stop_process,
    wait_ready,
)
from relais.broker_config.nats_conf import inbox_prefix, write_seed
from relais.schemas.domain import PartnerKind
from relais.schemas.errors import TransportError

PUBLISHER = "gend-1"


async def read_ids(gateway: Connection, stream: str, name: str) -> list[str]:
    """Every ``Nats-Msg-Id`` in ``stream``, read by a fresh durable consumer."""
    await gateway.api(
        f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
        {
            "stream_name": stream,
            "config": {"name": name, "durable_name": name, "ack_policy": "none"},
        },
    )
    ids: list[str] = []
    while True:
        batch = await gateway.fetch(stream, name, 500, expires=1.0)
        if not batch:
            break
        ids.extend((msg.headers or {}).get("Nats-Msg-Id", "") for msg in batch)
    return ids


def tally(acked: set[str], published: set[str], seen: list[str]) -> dict[str, int]:
    counts = Counter(seen)
    return {
        "lost": len(acked - counts.keys()),
        "duplicated": sum(1 for n in counts.values() if n > 1),
        "unexpected": len(counts.keys() - published),
    }


async def test_embedded_server_sigkill_loses_nothing(tmp_path, directory_builder) -> None:
    td = directory_builder([(PUBLISHER, PartnerKind.GENDARMERIE)])
    data_dir = tmp_path / "broker"
    creds = tmp_path / "gend.nk"
    write_seed(creds, td.seeds[PUBLISHER])
    published = {f"event-{n:04d}" for n in range(300)}
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(embedded.broker_down, data_dir)
        info, _ = await embedded.broker_up(
            data_dir, directory=td.signed, root_public_key=td.root_public_key
        )
        async with await connect(
            info.client_url, creds=creds, inbox_prefix=inbox_prefix(PUBLISHER), name="agent"
        ) as agent:
            acks = await asyncio.gather(
                *(
                    agent.js_publish(f"ref.in.{PUBLISHER}", b"e", msg_id=i)
                    for i in sorted(published)
                )
            )
            assert {a.seq for a in acks} == set(range(1, 301))
            os.kill(info.pid, signal.SIGKILL)
            await asyncio.to_thread(_wait_dead, info.pid)

        info, report = await embedded.broker_up(data_dir)  # same data dir, stored directory
        assert not report.created
        agent = await stack.enter_async_context(
            await connect(
                info.client_url, creds=creds, inbox_prefix=inbox_prefix(PUBLISHER), name="agent"
            )
        )
        again = await agent.js_publish(f"ref.in.{PUBLISHER}", b"e", msg_id="event-0007")
        assert again.duplicate  # the dedup window survived the crash too
        gateway = await stack.enter_async_context(
            await connect(
                info.client_url,
                creds=data_dir / "creds" / "admin.nk",
                inbox_prefix="_INBOX__admin",
                name="gw",
            )
        )
        seen = await read_ids(gateway, "INGRESS", "check")
        result = tally(published, published, seen)
        print(f"single server, SIGKILL: {len(seen)} read back, {result}")
        assert result == {"lost": 0, "duplicated": 0, "unexpected": 0}
        assert len(seen) == len(published)


def _wait_dead(pid: int) -> None:
    deadline = time.monotonic() + 10
    while embedded.is_alive(pid):
        assert time.monotonic() < deadline, "SIGKILL-ed server still alive"
        time.sleep(0.01)


# -- cluster -----------------------------------------------------------------------------------

TOTAL = 5_000
WINDOW = 200  # publishes in flight, like a busy outbox


@dataclass
class Cluster:
    layout: ClusterLayout
    pids: dict[str, int] = field(default_factory=dict)
    kills: list[tuple[str, int]] = field(default_factory=list)  # (node, acknowledged then)

    def start_all(self) -> None:
        # All nodes first: none is healthy before the JetStream meta group has a quorum.
        for node in self.layout.nodes:
            for stale in node.ports_dir.glob("*.ports"):
                stale.unlink()
            self.pids[node.name] = spawn_server(node.config_file, log_file=node.log_file)
        for node in self.layout.nodes:
            wait_ready(self.pids[node.name], ports_dir=node.ports_dir, timeout=60)

    def stop_all(self) -> None:
        for pid in self.pids.values():
            stop_process(pid, timeout=10)

    def kill(self, name: str, *, acked: int) -> None:
        os.kill(self.pids[name], signal.SIGKILL)
        _wait_dead(self.pids[name])
        self.kills.append((name, acked))

    def restart(self, name: str) -> None:
        node = self.layout.node(name)
        server = start_server(
            node.config_file, ports_dir=node.ports_dir, log_file=node.log_file, timeout=60
        )
        self.pids[name] = server.pid


class Acked:
    """Acknowledged event ids; ``reach(n)`` waits until there are ``n``."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self._marks: list[tuple[int, asyncio.Event]] = []

    def add(self, event_id: str) -> None:
        self.ids.add(event_id)
        for mark, reached in self._marks:
            if len(self.ids) >= mark:
                reached.set()

    async def reach(self, mark: int) -> None:
        reached = asyncio.Event()
        self._marks.append((mark, reached))
        if len(self.ids) < mark:
            await reached.wait()


class Gate:
    """Events from ``limit`` on wait: a kill must find the publisher busy, not finished."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._changed = asyncio.Condition()

    async def open_to(self, limit: int) -> None:
        async with self._changed:
            self.limit = limit
            self._changed.notify_all()

    async def enter(self, index: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: index < self.limit)


async def until(predicate, *, within: float, interval: float = 0.05) -> None:
    """Poll an async ``predicate`` (remote state: there is no event to wait on)."""
    async with asyncio.timeout(within):
        while True:
            if await predicate():
                return
            await asyncio.sleep(interval)


async def leader(gateway: Connection, stream: str) -> str | None:
    try:
        info = await gateway.api(f"$JS.API.STREAM.INFO.{stream}", max_wait=2.0)
    except TransportError:
        return None
    return (info.get("cluster") or {}).get("leader")


MARKS = (1000, 2500, 4000)  # acknowledged events at which the stream leader is killed
AHEAD = 300  # events the publisher may send beyond a mark before that kill has happened


async def chaos(cluster: Cluster, gateway: Connection, acked: Acked, gate: Gate) -> None:
    """At each mark: SIGKILL the INGRESS leader, wait for a new one, restart the node.

    Publishing goes on during the election and the restart, up to the next mark plus
    ``AHEAD``: so every kill hits a busy publisher, and never two nodes are down at once.
    """
    for n, mark in enumerate(MARKS):
        victim = await leader(gateway, "INGRESS")  # asked first: the kill must not lag
        assert victim is not None
        await acked.reach(mark)
        cluster.kill(victim, acked=len(acked.ids))

        async def elected(victim: str = victim) -> bool:
            return (await leader(gateway, "INGRESS")) not in (None, victim)

        await until(elected, within=60)
        await asyncio.to_thread(cluster.restart, victim)
        await gate.open_to(MARKS[n + 1] + AHEAD if n + 1 < len(MARKS) else TOTAL)


async def publish_all(agent: Connection, ids: list[str], acked: Acked, gate: Gate) -> int:
    """Publish every id until acknowledged, retrying with the same Nats-Msg-Id; retries."""
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for item in enumerate(ids):
        queue.put_nowait(item)
    retries = 0

    async def worker() -> None:
        nonlocal retries
        while len(acked.ids) < len(ids):
            try:
                index, event_id = queue.get_nowait()
            except asyncio.QueueEmpty:
                await asyncio.sleep(0.01)  # the rest is in flight
                continue
            await gate.enter(index)
            try:
                await agent.js_publish(
                    f"ref.in.{PUBLISHER}", event_id.encode(), msg_id=event_id, max_wait=2.0
                )
            except TransportError:
                retries += 1
                queue.put_nowait((index, event_id))  # not acknowledged: the outbox resends it
                await asyncio.sleep(0.05)
            else:
                acked.add(event_id)

    await asyncio.gather(*(worker() for _ in range(WINDOW)))
    return retries


def replica_counts(cluster: Cluster) -> dict[str, int | None]:
    counts: dict[str, int | None] = {}
    for node in cluster.layout.nodes:
        try:
            jsz = httpx.get(
                f"{node.monitor_url}/jsz", params={"streams": "true"}, timeout=2, trust_env=False
            ).json()
            streams = [s for a in jsz["account_details"] for s in a["stream_detail"]]
            counts[node.name] = next(
                s["state"]["messages"] for s in streams if s["name"] == "INGRESS"
            )
        except (httpx.HTTPError, KeyError, StopIteration, ValueError):
            counts[node.name] = None
    return counts


@pytest.mark.slow
async def test_cluster_leader_kills_lose_nothing(tmp_path: Path, directory_builder) -> None:
    td = directory_builder([(PUBLISHER, PartnerKind.GENDARMERIE)])
    layout = write_cluster_configs(tmp_path / "cluster", directory=td.directory)
    cluster = Cluster(layout)
    creds = tmp_path / "gend.nk"
    write_seed(creds, td.seeds[PUBLISHER])
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(asyncio.to_thread, cluster.stop_all)
        await asyncio.to_thread(cluster.start_all)
        report = await provision_as_admin(
            layout.client_urls,
            admin_creds=layout.admin_creds,
            monitor_url=layout.nodes[0].monitor_url,
            directory=td.directory,
            replicas=3,
        )
        assert "INGRESS" in report.created
        gateway = await stack.enter_async_context(
            await connect(
                layout.client_urls,
                creds=layout.admin_creds,
                inbox_prefix="_INBOX__admin",
                name="gw",
            )
        )
        ingress = await gateway.api("$JS.API.STREAM.INFO.INGRESS")
        assert ingress["config"]["num_replicas"] == 3
        assert len(ingress["cluster"]["replicas"]) == 2  # and the leader
        agent = await stack.enter_async_context(
            await connect(
                layout.client_urls,
                creds=creds,
                inbox_prefix=inbox_prefix(PUBLISHER),
                name="agent",
                request_timeout=2.0,
            )
        )
        ids = [f"event-{n:05d}" for n in range(TOTAL)]
        acked, gate = Acked(), Gate(MARKS[0] + AHEAD)
        started = time.monotonic()
        retries, _ = await asyncio.gather(
            publish_all(agent, ids, acked, gate), chaos(cluster, gateway, acked, gate)
        )
        elapsed = time.monotonic() - started
        assert len(cluster.kills) == 3
        assert all(count < TOTAL for _, count in cluster.kills)  # killed while publishing

        async def caught_up() -> bool:  # every replica holds every acknowledged event
            return set(replica_counts(cluster).values()) == {TOTAL}

        await until(caught_up, within=60)
        seen = await read_ids(gateway, "INGRESS", "check")
        result = tally(acked.ids, set(ids), seen)
        kills = ", ".join(f"{name} at {count}" for name, count in cluster.kills)
        print(
            f"3-node cluster, R3, leader SIGKILLs: {kills}; {len(acked.ids)} acknowledged in "
            f"{elapsed:.1f} s with {retries} retried publishes; {len(seen)} read back: {result}"
        )
        assert result == {"lost": 0, "duplicated": 0, "unexpected": 0}
        assert len(seen) == TOTAL
