"""Nagios-style checks: one line of output, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

Like natscli's ``nats server check``: the line names the state and counts, then performance
data after ``|``; never an id or any content. Used by ``relais broker status --check`` (here)
and ``relais overdue --check`` (:mod:`relais.cli.ops_cmd`).
"""

from __future__ import annotations

import asyncio
from typing import Final, NoReturn

import typer

from relais.broker_config.connection import connect
from relais.broker_config.embedded import BrokerStatus, broker_status
from relais.broker_config.nats_conf import OPERATOR_INBOX
from relais.cli._common import BrokerTarget
from relais.schemas.errors import RelaisError

__all__ = [
    "NAGIOS_CRITICAL",
    "NAGIOS_OK",
    "NAGIOS_UNKNOWN",
    "NAGIOS_WARNING",
    "STORAGE_CRITICAL",
    "STORAGE_WARNING",
    "broker_check",
    "judge_broker",
]

NAGIOS_OK: Final = 0
NAGIOS_WARNING: Final = 1
NAGIOS_CRITICAL: Final = 2
NAGIOS_UNKNOWN: Final = 3
_WORDS: Final = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}
# Fractions of a stream's byte limit: records streams refuse new messages when full.
STORAGE_WARNING: Final = 0.8
STORAGE_CRITICAL: Final = 0.95


def judge_broker(status: BrokerStatus, usage: dict[str, float]) -> tuple[int, str]:
    """The exit code and the line for a broker's status and its streams' byte usage."""
    problems: list[tuple[int, str]] = []
    if status.healthy is False:
        problems.append((NAGIOS_CRITICAL, "unhealthy"))
    if status.sync_always is False:
        problems.append((NAGIOS_CRITICAL, "not fsyncing every write"))
    elif status.sync_always is None:
        problems.append((NAGIOS_WARNING, "fsync setting unknown (no monitoring URL)"))
    if not status.streams:
        problems.append((NAGIOS_CRITICAL, "no streams"))
    for name, fraction in sorted(usage.items()):
        if fraction >= STORAGE_CRITICAL:
            problems.append((NAGIOS_CRITICAL, f"{name} {fraction:.0%} of its limit"))
        elif fraction >= STORAGE_WARNING:
            problems.append((NAGIOS_WARNING, f"{name} {fraction:.0%} of its limit"))
    code = max((c for c, _ in problems), default=NAGIOS_OK)
    detail = "; ".join(text for _, text in problems) or "healthy, fsync always"
    fullest = max(usage.values(), default=0.0)
    perf = f"streams={len(status.streams)} storage_max={fullest:.3f}"
    return code, f"BROKER {_WORDS[code]} - {detail} | {perf}"


async def _usage(target: BrokerTarget, names: list[str], wait: float) -> dict[str, float]:
    conn = await connect(
        [target.url],
        creds=target.creds,
        inbox_prefix=OPERATOR_INBOX,
        name="relais-check",
        connect_timeout=wait,
    )
    try:
        usage = {}
        for name in names:
            info = await conn.api(f"$JS.API.STREAM.INFO.{name}")
            limit = int((info.get("config") or {}).get("max_bytes", -1))
            if limit > 0:
                usage[name] = int((info.get("state") or {}).get("bytes", 0)) / limit
        return usage
    finally:
        await conn.close()


def broker_check(target: BrokerTarget, monitor_url: str | None, wait: float) -> NoReturn:
    """Print the check line for the broker ``target`` names and exit with its code."""

    async def run() -> tuple[BrokerStatus, dict[str, float]]:
        status = await broker_status(
            target.url, creds=target.creds, monitor_url=monitor_url, max_wait=wait
        )
        usage = await _usage(target, [s.name for s in status.streams], wait)
        return status, usage

    try:
        status, usage = asyncio.run(run())
    except RelaisError as exc:
        typer.echo(f"BROKER CRITICAL - unreachable or refused ({exc.reason.value})")
        raise typer.Exit(NAGIOS_CRITICAL) from exc
    code, line = judge_broker(status, usage)
    typer.echo(line)
    raise typer.Exit(code)
