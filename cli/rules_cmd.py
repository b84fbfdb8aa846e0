"""``relais rules``: explain the routing rules ("which rule sent this event to whom, and why").

``explain`` evaluates the rules on routing metadata (codes only, as a sender's header
carries them) against a signed directory (``--directory FILE``, else the last edition on
``ref.dir`` of the broker given by ``-s``/``--creds`` or ``--data-dir``, read as the operator),
verified first against the pinned root key (``--root-public-key``, ``RELAIS_ROOT_PUBLIC_KEY``),
with the routing rules *that edition embeds* (the rules agents and the router apply), and
shows the edition, the rule, priority, deadline, département, every recipient and fallback
recipient with the reason, and who may read each secret section. ``--rules FILE`` explains
with a draft rules file instead, before it is signed into an edition.

Exit codes: 0 success; 1 the directory or the rules do not verify; 2 usage; 3 the broker
could not be reached or refused. Errors are one line on stderr: ``error [REASON]: message``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from relais.agents.keys import read_root_public_key
from relais.broker_config.directory import Directory, to_ms, utc_now, verify_directory
from relais.broker_config.edition import rules_of
from relais.broker_config.rules import Decision, load_rules
from relais.cli._common import (
    BrokerTarget,
    CredsOption,
    DataDirOption,
    JsonOption,
    NkeyOption,
    ServerOption,
    TimeoutOption,
    broker_target,
    connect_operator,
    load_directory,
    logs_to_stderr,
    read_directory_file,
    reported_errors,
)
from relais.schemas.domain import EVENT_TYPES, ROUTING_VALUE_RE, EventType
from relais.schemas.errors import ConfigError

__all__ = ["app", "decision_json"]

app = typer.Typer(no_args_is_help=True, help="The routing rules of the partnership.")


@app.callback()
def _rules() -> None:
    """The routing rules of the partnership."""
    logs_to_stderr()


def _routing(pairs: list[str]) -> dict[str, str]:
    routing: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not ROUTING_VALUE_RE.fullmatch(key) or not ROUTING_VALUE_RE.fullmatch(value):
            raise ConfigError("--routing takes key=value (codes: letters, digits, _ . : -)")
        routing[key] = value
    return routing


def decision_json(decision: Decision) -> dict[str, Any]:
    """A JSON-able explanation of a routing decision."""
    return {
        "rule": f"{decision.rule_id}@{decision.ruleset_version}",
        "triage": decision.triage,
        "sender_allowed": decision.sender_allowed,
        "priority": decision.priority.label,
        "deadline_seconds": decision.deadline_seconds,
        "departement": decision.departement,
        "closes_case": decision.closes_case,
        "recipients": decision.explain(),
        "audiences": {k: list(v) for k, v in sorted(decision.audiences.items())},
    }


def _complete_type(incomplete: str) -> list[str]:
    return sorted(t.value for t in EVENT_TYPES if t.value.startswith(incomplete))


async def _directory_from_broker(target: BrokerTarget, root: bytes, wait: float) -> Directory:
    conn = await connect_operator(target, wait=wait, name="relais-rules")
    try:
        return await load_directory(conn, None, root)
    finally:
        await conn.close()


@app.command("explain")
def explain(
    ctx: typer.Context,
    event_type: Annotated[
        str,
        typer.Option(
            "--type", help="Event type, e.g. runaway_alert.", autocompletion=_complete_type
        ),
    ],
    sender: Annotated[str, typer.Option("--sender", help="Partner id of the sender.")],
    root_public_key: Annotated[
        str,
        typer.Option(
            "--root-public-key",
            envvar="RELAIS_ROOT_PUBLIC_KEY",
            show_envvar=True,
            help="Pinned root public key: base64 or a file.",
        ),
    ],
    directory: Annotated[
        Path | None,
        typer.Option(
            "--directory",
            help="Signed directory file (default: the last edition on ref.dir of the broker).",
            dir_okay=False,
        ),
    ] = None,
    routing: Annotated[
        list[str] | None, typer.Option("--routing", help="Routing metadata key=value.")
    ] = None,
    rules_file: Annotated[
        Path | None,
        typer.Option(
            "--rules",
            help="A draft rules file (default: the rules the edition embeds).",
            dir_okay=False,
        ),
    ] = None,
    server: ServerOption = None,
    creds: CredsOption = None,
    nkey: NkeyOption = None,
    data_dir: DataDirOption = None,
    timeout: TimeoutOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Which rule sends an event to whom, and why."""
    with reported_errors():
        if event_type not in {t.value for t in EVENT_TYPES}:
            raise ConfigError(f"not an event type: {event_type}")
        root = read_root_public_key(root_public_key)
        signed = read_directory_file(directory)
        if signed is not None:
            verified = verify_directory(signed, root, now_ms=to_ms(utc_now()))
        else:
            target = broker_target(ctx, server, creds, data_dir, nkey=nkey)
            verified = asyncio.run(_directory_from_broker(target, root, timeout))
        rules = load_rules(rules_file) if rules_file is not None else rules_of(verified)
        decision = rules.decide(
            EventType(event_type), _routing(routing or []), sender=sender, directory=verified
        )
    result = {"edition": verified.serial, **decision_json(decision)}
    if as_json:
        typer.echo(json.dumps(result))
        return
    _print(result, event_type, sender)


def _print(result: dict[str, Any], event_type: str, sender: str) -> None:
    console = Console()
    deadline = result["deadline_seconds"]
    console.print(
        f"[bold]{event_type}[/] from {sender}: edition {result['edition']}, rule {result['rule']}"
        f"{' (human triage)' if result['triage'] else ''}, priority {result['priority']},"
        f" département {result['departement'] or '-'},"
        f" deadline {f'{deadline} s' if deadline else 'none'}"
    )
    if not result["sender_allowed"]:
        console.print("[red]this sender's kind may not send this event type[/]")
    table = Table("partner", "role", "why")
    for row in result["recipients"]:
        table.add_row(row["partner"], row["role"], row["why"])
    console.print(table)
    for klass, partners in result["audiences"].items():
        console.print(f"{klass} sections: {', '.join(partners) or 'nobody'}")
