"""``relais agent backup|restore`` and ``relais gateway backup|restore|redeliver``.

Backups are directories (:mod:`relais.agents.backup`): a consistent SQLite snapshot taken
with the online backup API while the service runs, the key files as they are (encrypted),
a manifest with the database's SHA-256. Restores refuse to run over a live store.

Restoring an agent from an older backup, then recovering what it received since::

    relais agent restore --config agent.toml --from /backups/crip-93/2026-12-01
    relais gateway redeliver --config gateway.toml --creds admin.nk --partner crip-93  # hub

``agent restore`` first asks the broker, with the agent's own credential, how far each of
its delivery consumers was acknowledged (the last state of the agent, now lost) and stores
it in the restored database; ``gateway redeliver`` recreates the partner's three delivery
consumers, so the broker delivers again everything DELIVERY still holds for it. The agent
drops what it has by event id, and stores what it lost without sending its ``DELIVERED``
receipt or its webhook a second time when the lost state had acknowledged it (sequence at
or below the recorded floor); what came later is handled as new. ``--offline`` restores
without asking the broker (then a redelivered event the lost state had handled gets its
receipt and webhook again: the tracker and Standard Webhooks receivers drop it by id).

The outbox of the backup may hold events the lost state had published since: they are
published again with the same ``Nats-Msg-Id`` (the event id), which the broker drops within
its duplicate window (2 h); later, the router's replay store refuses them (``REPLAY``, 8
days), and after that their age (``STALE``): a recipient never receives an event twice.

Exit codes: 0 done; 1 a check failed; 2 usage, invalid settings or a live store;
3 the broker could not be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated

import nats.errors
import typer
from nats.js.errors import NotFoundError

from relais.agents.backup import (
    held_lock,
    read_manifest,
    restore_database,
    restore_extra,
    restore_keys,
    write_backup,
)
from relais.agents.settings import AgentSettings
from relais.agents.settings import load_settings as load_agent_settings
from relais.agents.store import AgentStore
from relais.broker_config.connection import Connection, connect, translate_error
from relais.broker_config.nats_conf import GATEWAY_INBOX, delivery_consumer_name, inbox_prefix
from relais.broker_config.streams import partner_consumers
from relais.cli._common import EXIT_USAGE, fail, reported_errors
from relais.gateway.settings import load_settings as load_gateway_settings
from relais.gateway.tracker_store import lock_path
from relais.schemas.domain import Priority
from relais.schemas.errors import ConfigError

__all__ = ["acked_floors", "redeliver", "register"]

ConfigOption = Annotated[Path, typer.Option("--config", help="Settings file.", dir_okay=False)]
OutputOption = Annotated[
    Path, typer.Option("--output", "-o", help="Backup directory to create (absent or empty).")
]
FromOption = Annotated[
    Path, typer.Option("--from", help="Backup directory to restore.", file_okay=False)
]


def _settings_file(config: Path) -> None:
    if not config.is_file():
        fail("CONFIG_INVALID", f"no settings file {config}", EXIT_USAGE)


# -- agent -------------------------------------------------------------------------------------


def agent_backup(config: ConfigOption, output: OutputOption) -> None:
    """Back up the agent's database (consistent snapshot) and its encrypted key files."""
    _settings_file(config)
    with reported_errors():
        s = load_agent_settings(config)
        manifest = write_backup(
            output,
            role="agent",
            partner=s.partner_id,
            database=s.database,
            keys=list(s.key_files),
        )
    typer.echo(f"backup of agent {manifest.partner} written to {output} ({manifest.sha256[:16]})")


async def acked_floors(settings: AgentSettings) -> dict[int, int]:
    """Per priority, the last DELIVERY sequence acknowledged on the agent's consumers."""
    conn = await connect(
        settings.servers,
        creds=settings.creds,
        inbox_prefix=inbox_prefix(settings.partner_id),
        name=f"{settings.partner_id}-restore",
    )
    try:
        floors = {}
        for priority in Priority:
            name = delivery_consumer_name(settings.partner_id, priority)
            info = await conn.api(f"$JS.API.CONSUMER.INFO.DELIVERY.{name}")
            floors[int(priority)] = int((info.get("ack_floor") or {}).get("stream_seq", 0))
        return floors
    finally:
        await conn.close()


def agent_restore(
    config: ConfigOption,
    source: FromOption,
    offline: Annotated[
        bool, typer.Option("--offline", help="Do not ask the broker for the acknowledged floor.")
    ] = False,
) -> None:
    """Restore the agent's database from a backup (the agent must be stopped)."""
    _settings_file(config)
    with reported_errors():
        s = load_agent_settings(config)
        manifest = read_manifest(source, role="agent", partner=s.partner_id)
        with held_lock(s.data_dir / "agent.lock", "an agent"):
            floors = {} if offline else asyncio.run(acked_floors(s))
            aside = restore_database(source, manifest, s.database)
            store = AgentStore(s.database)
            try:
                store.set_restored(floors)
            finally:
                store.close()
            keys = restore_keys(source, manifest, list(s.key_files))
    typer.echo(f"agent {s.partner_id} restored from {source}")
    if aside is not None:
        typer.echo(f"the database it replaced was moved to {aside}")
    for key in keys:
        typer.echo(f"key file put back: {key}")
    typer.echo(f"next, at the hub: relais gateway redeliver --creds ADMIN --partner {s.partner_id}")


# -- gateway -----------------------------------------------------------------------------------


def gateway_backup(config: ConfigOption, output: OutputOption) -> None:
    """Back up the tracker's database, the audit anchor and the (encrypted) gateway key."""
    _settings_file(config)
    with reported_errors():
        s = load_gateway_settings(config)
        manifest = write_backup(
            output,
            role="gateway",
            partner="gateway",
            database=s.database,
            keys=[s.key_file],
            extra=[s.data_dir / "audit-anchor.json"],
        )
    typer.echo(f"backup of the gateway written to {output} ({manifest.sha256[:16]})")


def gateway_restore(config: ConfigOption, source: FromOption) -> None:
    """Restore the tracker's database from a backup (the tracker must be stopped)."""
    _settings_file(config)
    with reported_errors():
        s = load_gateway_settings(config)
        manifest = read_manifest(source, role="gateway", partner="gateway")
        with held_lock(lock_path(s.database), "a tracker"):
            aside = restore_database(source, manifest, s.database)
            keys = restore_keys(source, manifest, [s.key_file])
            extra = restore_extra(source, manifest, s.data_dir)
    typer.echo(f"gateway restored from {source}")
    if aside is not None:
        typer.echo(f"the database it replaced was moved to {aside}")
    for path in (*keys, *extra):
        typer.echo(f"put back: {path}")


async def redeliver(conn: Connection, partner: str) -> list[str]:
    """Recreate ``partner``'s delivery consumers: DELIVERY is delivered again from its start."""
    js = conn.jetstream()
    names = []
    for spec in partner_consumers(partner):
        try:
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(spec.stream, spec.name)
            await js.add_consumer(spec.stream, spec.config())
        except nats.errors.Error as exc:
            raise translate_error(exc, f"consumer {spec.name}") from exc
        names.append(spec.name)
    return names


def gateway_redeliver(
    config: ConfigOption,
    partner: Annotated[str, typer.Option("--partner", help="The partner whose agent restored.")],
    creds: Annotated[
        Path,
        typer.Option("--creds", help="The broker's administrator credential (admin.nk)."),
    ],
) -> None:
    """Deliver again to a restored agent everything DELIVERY still holds for it."""
    _settings_file(config)
    with reported_errors():
        s = load_gateway_settings(config)

        async def run() -> list[str]:
            conn = await connect(
                s.servers, creds=creds, inbox_prefix=GATEWAY_INBOX, name="redeliver"
            )
            try:
                return await redeliver(conn, partner)
            finally:
                await conn.close()

        if not partner:
            raise ConfigError("--partner is required")
        names = asyncio.run(run())
    typer.echo(f"recreated {', '.join(names)}: the agent receives DELIVERY again, by event id")


def register(agent_app: typer.Typer, gateway_app: typer.Typer) -> None:
    """Add the backup commands to ``relais agent`` and ``relais gateway``."""
    agent_app.command("backup")(agent_backup)
    agent_app.command("restore")(agent_restore)
    gateway_app.command("backup")(gateway_backup)
    gateway_app.command("restore")(gateway_restore)
    gateway_app.command("redeliver")(gateway_redeliver)
