"""Operator views: what flows where, what is late, what was escalated or refused. Never content.

Top-level commands of ``relais`` (mounted by :func:`register`): ``flows``, ``trace``,
``pending``, ``overdue``, ``partners``, ``quarantine`` and ``stats``. Each connects as the
read-only ``operator`` NATS user, reads the audit log (metadata only, direct gets) and folds
it with :class:`relais.gateway.flows.FlowBook`; ``partners`` also reads the delivery
consumers' counters. Partner kinds and names come from the signed directory (the last
edition on ``ref.dir``, or ``--directory FILE``), verified against the pinned root key;
``partners`` and ``stats`` need it, the other views use it when the key is given.

Broker options as in :mod:`relais.cli._common`: ``-s/--server`` (``RELAIS_SERVER``, then
``NATS_URL``), ``--creds`` (``RELAIS_CREDS``), or ``--data-dir`` of an embedded broker;
``--root-public-key`` (``RELAIS_ROOT_PUBLIC_KEY``). ``--json`` prints one JSON document on
stdout (times in Unix milliseconds); tables otherwise, with progress on stderr while the audit
log is read (on a terminal only). ``stats`` shows every count between 1 and 4 as ``"<5"``.

Exit codes: 0 success; 1 not found (``trace`` of an id the log never saw) or a directory that
does not verify; 2 usage (bad option, no broker given); 3 the broker could not be reached or
refused.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from relais.agents.keys import read_root_public_key
from relais.broker_config.directory import Directory, Partner
from relais.cli._checks import NAGIOS_CRITICAL, NAGIOS_OK, NAGIOS_UNKNOWN, NAGIOS_WARNING
from relais.cli._common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    BrokerTarget,
    CredsOption,
    DataDirOption,
    DirectoryFileOption,
    JsonOption,
    NkeyOption,
    RootKeyOption,
    ServerOption,
    TimeoutOption,
    broker_target,
    connect_operator,
    fail,
    load_directory,
    logs_to_stderr,
    read_directory_file,
    reported_errors,
)
from relais.gateway.flows import (
    Flow,
    FlowBook,
    QuarantineEntry,
    Stats,
    Trace,
    iso_utc,
    read_audit_records,
    read_backlog,
)
from relais.schemas.domain import EVENT_TYPES, PartnerKind, Priority
from relais.schemas.errors import ConfigError, Reason, RelaisError

__all__ = [
    "flows",
    "overdue",
    "partners",
    "pending",
    "quarantine",
    "register",
    "stats",
    "trace",
]

_DURATION_RE: Final = re.compile(r"([0-9]{1,9})([smhdw])")
_UNIT_MS: Final = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_EVENT_TYPE_NAMES: Final = tuple(sorted(t.value for t in EVENT_TYPES))


# -s, --creds, --nkey, --data-dir, --timeout as a command received them
_BrokerOptions = tuple[str | None, Path | None, Path | None, Path | None, float]


class By(StrEnum):
    """The breakdowns of ``relais stats``."""

    TYPE = "type"
    DEPARTEMENT = "departement"
    MONTH = "month"


# -- completion --------------------------------------------------------------------------------


def _complete_type(incomplete: str) -> list[str]:
    return [name for name in _EVENT_TYPE_NAMES if name.startswith(incomplete)]


def _complete_reason(incomplete: str) -> list[str]:
    return [r.value for r in Reason if r.value.startswith(incomplete.upper())]


TypeOption = Annotated[
    str | None,
    typer.Option("--type", help="Only this event type.", autocompletion=_complete_type),
]


# -- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Loaded:
    book: FlowBook
    directory: Directory | None
    backlog: dict[str, dict[str, int]]
    unreadable: int
    now_ms: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@contextmanager
def _progress() -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr while the audit log is read (terminals only)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    columns = (TextColumn("reading the audit log"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("audit", total=None)

        def update(done: int, total: int) -> None:
            """Move the bar."""
            progress.update(task, completed=done, total=total)

        yield update


async def _load_async(
    target: BrokerTarget,
    *,
    wait: float,
    root: bytes | None,
    signed_directory: bytes | None,
    backlog: bool,
    progress: Callable[[int, int], None] | None,
) -> _Loaded:
    conn = await connect_operator(target, wait=wait, name="relais-ops")
    try:
        directory = None
        if root is not None:
            directory = await load_directory(conn, signed_directory, root)
        snapshot = await read_audit_records(conn, progress)
        queued = await read_backlog(conn) if backlog else {}
    finally:
        await conn.close()
    book = FlowBook.from_records(snapshot.records, directory)
    return _Loaded(book, directory, queued, snapshot.malformed + book.ignored, _now_ms())


def _load(
    ctx: typer.Context,
    broker: _BrokerOptions,
    root_key: str | None,
    directory_file: Path | None,
    *,
    need_directory: str | None = None,
    backlog: bool = False,
) -> _Loaded:
    """Read the audit log (and directory, backlog) from the broker the options name.

    ``broker``: ``(server, creds, nkey, data_dir, timeout)`` as the command received them.
    """
    if directory_file is not None and root_key is None:
        raise ConfigError("--directory needs --root-public-key (or RELAIS_ROOT_PUBLIC_KEY)")
    if need_directory is not None and root_key is None:
        raise ConfigError(
            f"{need_directory} needs the signed directory: give --root-public-key"
            " (or RELAIS_ROOT_PUBLIC_KEY)"
        )
    root = read_root_public_key(root_key) if root_key is not None else None
    signed = read_directory_file(directory_file)
    server, creds, nkey, data_dir, wait = broker
    target = broker_target(ctx, server, creds, data_dir, nkey=nkey)
    with _progress() as progress:
        loaded = asyncio.run(
            _load_async(
                target,
                wait=wait,
                root=root,
                signed_directory=signed,
                backlog=backlog,
                progress=progress,
            )
        )
    if loaded.unreadable:
        typer.echo(
            f"warning: {loaded.unreadable} audit record(s) could not be read"
            " (run relais audit verify)",
            err=True,
        )
    return loaded


# -- output ------------------------------------------------------------------------------------


def _console() -> Console:
    # Piped: COLUMNS if set, else 80 (rich's default); the tables fold rather than cut.
    return Console()


def _emit(document: dict[str, Any]) -> None:
    typer.echo(json.dumps(document))


def _when(ms: int | None) -> str:
    return "-" if ms is None else iso_utc(ms).replace("T", " ")


def _duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    seconds = abs(ms) // 1000
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _recipients_cell(flow: Flow) -> str:
    return "\n".join(
        f"{d.partner}{'*' if d.role == 'fallback' else ''}: {d.state.value.lower()}"
        for _, d in sorted(flow.deliveries.items())
    )


def _table(*columns: str, title: str | None = None) -> Table:
    """A table that stays readable at 80 columns: nothing is ever cut (``overflow="fold"``);
    ids are never wrapped at a hyphen, only folded when they cannot fit at all."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _timing(flow: Flow, now_ms: int, late: bool) -> str:
    if late:
        return f"late by {_duration(now_ms - (flow.deadline_at or now_ms))}"
    if flow.first_taken_at is not None:
        return f"taken after {_duration(flow.first_taken_at - flow.routed_at)}"
    if flow.deadline_at is not None:
        return f"due {_when(flow.deadline_at)}"
    return "-"


def _flow_table(title: str, rows: list[Flow], now_ms: int, *, late: bool = False) -> Table:
    # Three columns, a few lines per event: the event id (36 characters) stays whole at 80.
    table = _table("event / type / status", "sender / when", "recipients (* fallback)", title=title)
    table.columns[0].no_wrap = True
    for flow in rows:
        status = flow.status.value + (" (escalated)" if flow.escalation and flow.taken else "")
        table.add_row(
            f"{flow.event_id}\n{flow.event_type}\n{status}",
            f"{flow.sender}\n{flow.priority} dép. {flow.departement or '-'}\n"
            f"routed {_when(flow.routed_at)}\n{_timing(flow, now_ms, late)}",
            _recipients_cell(flow),
        )
    return table


# -- flows, trace ------------------------------------------------------------------------------


def _check_type(event_type: str | None) -> None:
    if event_type is not None and event_type not in _EVENT_TYPE_NAMES:
        raise ConfigError(f"not an event type: {event_type} ({', '.join(_EVENT_TYPE_NAMES)})")


def _since_ms(text: str | None, now_ms: int) -> int | None:
    """``30m``, ``12h``, ``7d``, ``2w`` ago, or an ISO 8601 date or time (UTC if naive)."""
    if text is None:
        return None
    duration = _DURATION_RE.fullmatch(text.strip())
    if duration:
        return now_ms - int(duration.group(1)) * _UNIT_MS[duration.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ConfigError("--since takes 30m, 12h, 7d, 2w or an ISO 8601 date/time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def flows(
    ctx: typer.Context,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=0, help="Newest N events (0: all).")
    ] = 50,
    event_type: TypeOption = None,
    partner: Annotated[
        str | None, typer.Option("--partner", help="Only events this partner sent or received.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Routed since: 30m, 12h, 7d, or an ISO date.")
    ] = None,
    server: ServerOption = None,
    creds: CredsOption = None,
    nkey: NkeyOption = None,
    data_dir: DataDirOption = None,
    root_public_key: RootKeyOption = None,
    directory: DirectoryFileOption = None,
    timeout: TimeoutOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Recent events: type, sender, recipients and their states, priority, delays."""
    logs_to_stderr()
    with reported_errors():
        _check_type(event_type)
        since_ms = _since_ms(since, _now_ms())
        loaded = _load(ctx, (server, creds, nkey, data_dir, timeout), root_public_key, directory)
    found = loaded.book.flows(event_type=event_type, partner=partner, since_ms=since_ms)
    shown = found[:limit] if limit else found
    quarantined = len(loaded.book.quarantine())
    if as_json:
        _emit(
            {
                "now": loaded.now_ms,
                "total": len(found),
                "quarantined": quarantined,
                "flows": [f.to_json() for f in shown],
            }
        )
        return
    console = _console()
    title = f"{len(shown)} of {len(found)} events, newest first"
    console.print(_flow_table(title, shown, loaded.now_ms))
    if quarantined:
        console.print(f"{quarantined} refused event(s): relais quarantine")


def _parse_event_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        # Not CONFIG_INVALID: nothing is wrong with the configuration, the argument is.
        fail(
            "INVALID_EVENT_ID",
            f"not an event id: {text[:40]!r}; give a UUID as relais flows shows it",
            EXIT_USAGE,
        )


def _print_trace(found: Trace) -> None:
    console = _console()
    flow = found.flow
    if flow is not None:
        console.print(
            f"[bold]{flow.event_type}[/] {found.event_id} from {flow.sender}: {flow.priority},"
            f" département {flow.departement or '-'}, rule {flow.rule or '-'},"
            f" status {flow.status.value}"
        )
        if flow.routing:
            console.print("routing: " + ", ".join(f"{k}={v}" for k, v in flow.routing.items()))
    else:
        console.print(f"{found.event_id}: refused, never routed")
    table = _table("time (UTC)", "step", "partner", "detail")
    for step in found.steps:
        table.add_row(_when(step.at), step.step, step.partner or "", step.detail)
    console.print(table)


def trace(
    ctx: typer.Context,
    event_id: Annotated[str, typer.Argument(help="The event id (UUID).")],
    server: ServerOption = None,
    creds: CredsOption = None,
    nkey: NkeyOption = None,
    data_dir: DataDirOption = None,
    root_public_key: RootKeyOption = None,
    directory: DirectoryFileOption = None,
    timeout: TimeoutOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """The path of one event: published, routed, delivered, taken in charge, escalated."""
    logs_to_stderr()
    with reported_errors():
        wanted = _parse_event_id(event_id)
        loaded = _load(ctx, (server, creds, nkey, data_dir, timeout), root_public_key, directory)
    found = loaded.book.trace(wanted)
    if found is None:
        fail("EVENT_NOT_FOUND", f"the audit log has no record of event {wanted}", EXIT_FAILURE)
    if as_json:
        _emit(found.to_json())
    else:
        _print_trace(found)


# -- pending, overdue --------------------------------------------------------------------------


def pending(
    ctx: typer.Context,
    server: ServerOption = None,
    creds: CredsOption = None,
    nkey: NkeyOption = None,
    data_dir: DataDirOption = None,
    root_public_key: RootKeyOption = None,
    directory: DirectoryFileOption = None,
    timeout: TimeoutOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Events nobody took in charge yet whose deadline (if any) has not passed."""
    logs_to_stderr()
    with reported_errors():
        loaded = _load(ctx, (server, creds, nkey, data_dir, timeout), root_public_key, directory)
    now = loaded.now_ms
    rows = loaded.book.pending(now)
    if as_json:
        _emit(
            {
                "now": now,
                "pending": [
                    {
                        **f.to_json(),
                        "remaining_ms": None if f.deadline_at is None else f.deadline_at - now,
                    }
                    for f in rows
                ],
            }
        )
        return
    _console().print(_flow_table(f"{len(rows)} pending, most urgent first", rows, now))


def overdue(
    ctx: typer.Context,
    server: ServerOption = None,
    creds: CredsOption = None,
    nkey: NkeyOption = None,
    data_dir: DataDirOption = None,
    root_public_key: RootKeyOption = None,
    directory: DirectoryFileOption = None,
    timeout: TimeoutOption = 10.0,
    as_json: JsonOption = False,
    check: CheckOption = False,
) -> None:
    """Events past their deadline that nobody took in charge, escalated or not."""
    logs_to_stderr()
    if check:
        _overdue_check(ctx, (server, creds, nkey, data_dir, timeout), root_public_key, directory)
    with reported_errors():
        loaded = _load(ctx, (server, creds, nkey, data_dir, timeout), root_public_key, directory)
    now = loaded.now_ms
    rows = loaded.book.overdue(now)
    if as_json:
        _emit(
            {
                "now": now,
                "overdue": [{**f.to_json(), "late_ms": now - (f.deadline_at or now)} for f in rows],
            }
        )
        return
    title = f"{len(rows)} overdue, {sum(1 for f in rows if f.escalation)} escalated"
    _console().print(_flow_table(title, rows, now, late=True))


CheckOption = Annotated[
    bool,
    typer.Option(
        "--check",
        help="Nagios-style: one line, exit 0 none, 1 only non-FLASH overdue, 2 FLASH overdue"
        " (3 UNKNOWN: the audit log could not be read).",
    ),
]


def _overdue_check(
    ctx: typer.Context,
    broker: _BrokerOptions,
    root_key: str | None,
    directory_file: Path | None,
) -> NoReturn:
    """One status line with counts only (never an id or content), and the Nagios exit code."""
    try:
        loaded = _load(ctx, broker, root_key, directory_file)
    except RelaisError as exc:
        typer.echo(f"OVERDUE UNKNOWN - {exc.reason.value}")
        raise typer.Exit(NAGIOS_UNKNOWN) from exc
    rows = loaded.book.overdue(loaded.now_ms)
    by_priority = Counter(f.priority for f in rows)
    flash = by_priority.get("FLASH", 0)
    escalated = sum(1 for f in rows if f.escalation)
    code, word = (
        (NAGIOS_CRITICAL, "CRITICAL")
        if flash
        else (NAGIOS_WARNING, "WARNING")
        if rows
        else (NAGIOS_OK, "OK")
    )
    counts = " ".join(f"{p}={by_priority.get(p, 0)}" for p in ("FLASH", "URGENT", "ROUTINE"))
    typer.echo(
        f"OVERDUE {word} - {len(rows)} overdue ({counts}), {escalated} escalated"
        f" | overdue={len(rows)} flash={flash} escalated={escalated}"
    )
    raise typer.Exit(code)


# -- partners, quarantine ----------------------------------------------------------------------


def _partner_row(
    partner: Partner, loaded: _Loaded, awaiting: dict[str, int], late: dict[str, int]
) -> dict[str, Any]:
    queued = loaded.backlog.get(partner.id, {})
    return {
        "partner": partner.id,
        "kind": partner.kind.value,
        "name": partner.name,
        "departements": list(partner.departements),
        "revoked": partner.revoked,
        "queued": {p.label: queued.get(p.label, 0) for p in Priority},
        "awaiting_decision": awaiting.get(partner.id, 0),
        "overdue": late.get(partner.id, 0),
    }


def partners(
    ctx: typer.Context,
    kind: Annotated[
        PartnerKind | None, typer.Option("--kind", help="Only partners of this kind.")
    ] = None,
    departement: Annotated[
        str | None, typer.Option("--departement", help="Only partners competent for it.")
    ] = None,
    server: ServerOption = None,
    creds: CredsOption = None,
    nkey: NkeyOption = None,
    data_dir: DataDirOption = None,
    root_public_key: RootKeyOption = None,
    directory: DirectoryFileOption = None,
    timeout: TimeoutOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Partners of the directory, their queues at the broker and what awaits their decision."""
    logs_to_stderr()
    with reported_errors():
        loaded = _load(
            ctx,
            (server, creds, nkey, data_dir, timeout),
            root_public_key,
            directory,
            need_directory="partners",
            backlog=True,
        )
    if loaded.directory is None:  # need_directory made sure of it
        raise typer.Exit(EXIT_FAILURE)
    late: dict[str, int] = {}
    for flow in loaded.book.overdue(loaded.now_ms):
        for partner_id in flow.waiting:
            late[partner_id] = late.get(partner_id, 0) + 1
    awaiting = loaded.book.awaiting_by_partner()
    rows = [
        _partner_row(p, loaded, awaiting, late)
        for p in sorted(loaded.directory.partners, key=lambda p: p.id)
        if (kind is None or p.kind is kind)
        and (departement is None or departement in p.departements)
    ]
    if as_json:
        _emit({"now": loaded.now_ms, "partnership": loaded.directory.partnership, "partners": rows})
        return
    columns = ("partner", "kind", "dép.", "queued F/U/R", "awaiting", "overdue", "name")
    title = f"{loaded.directory.partnership}: {len(rows)} partners"
    table = _table(*columns, title=title)
    table.columns[0].no_wrap = True
    for row in rows:
        queued = "/".join(str(row["queued"][p.label]) for p in Priority)
        table.add_row(
            row["partner"] + (" (revoked)" if row["revoked"] else ""),
            row["kind"],
            ",".join(row["departements"]) or "-",
            queued,
            str(row["awaiting_decision"]),
            str(row["overdue"]),
            row["name"],
        )
    _console().print(table)


def _quarantine_table(rows: list[QuarantineEntry]) -> Table:
    # Two lines per event, as in the flow tables: the event id stays whole at 80 columns.
    columns = ("event / type", "reason", "sender / claimed", "time (UTC) / ingress seq")
    table = _table(*columns, title=f"{len(rows)} refused events, newest first")
    table.columns[0].no_wrap = True
    for q in rows:
        table.add_row(
            f"{q.event_id or '-'}\n{q.event_type or '-'}",
            q.reason,
            f"{q.sender}\n{q.claimed_sender or '-'}",
            f"{_when(q.at)}\n{q.ingress_seq or '-'}",
        )
    return table


def quarantine(
    ctx: typer.Context,
    reason: Annotated[
        str | None,
        typer.Option("--reason", help="Only this reason code.", autocompletion=_complete_reason),
    ] = None,
    server: ServerOption = None,
    creds: CredsOption = None,
    nkey: NkeyOption = None,
    data_dir: DataDirOption = None,
    root_public_key: RootKeyOption = None,
    directory: DirectoryFileOption = None,
    timeout: TimeoutOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Refused events with their reason codes (the refused bytes are never read)."""
    logs_to_stderr()
    with reported_errors():
        if reason is not None and reason not in Reason.__members__:
            raise ConfigError(f"not a reason code: {reason}")
        loaded = _load(ctx, (server, creds, nkey, data_dir, timeout), root_public_key, directory)
    rows = loaded.book.quarantine(reason=reason)
    counts: dict[str, int] = {}
    for q in rows:
        counts[q.reason] = counts.get(q.reason, 0) + 1
    if as_json:
        _emit(
            {
                "now": loaded.now_ms,
                "by_reason": dict(sorted(counts.items())),
                "quarantined": [q.to_json() for q in rows],
            }
        )
        return
    console = _console()
    console.print(_quarantine_table(rows))
    if counts:
        console.print("by reason: " + ", ".join(f"{r} {n}" for r, n in sorted(counts.items())))


# -- stats -------------------------------------------------------------------------------------


def _stats_document(result: Stats, by: list[By], now_ms: int) -> dict[str, Any]:
    full = result.to_json()
    document = {k: full[k] for k in ("events", "escalated", "quarantined")}
    for choice in by:
        key = f"by_{choice.value}"
        document[key] = full[key]
    document["delays"] = full["delays"]
    return {"now": now_ms, **document}


def _print_stats(document: dict[str, Any]) -> None:
    console = _console()
    console.print(
        f"events {document['events']}, escalated {document['escalated']},"
        f" refused {document['quarantined']} (counts 1 to 4 shown as <5)"
    )
    for by in By:
        key = f"by_{by.value}"
        if key in document:
            table = _table(by.value, "events", title=f"by {by.value}")
            for name, count in document[key].items():
                table.add_row(name, str(count))
            console.print(table)
    columns = ("partner kind", "samples", "median", "90th percentile")
    table = _table(*columns, title="take-in-charge delays")
    for kind, d in document["delays"].items():
        table.add_row(kind, str(d["samples"]), _duration(d["median_ms"]), _duration(d["p90_ms"]))
    console.print(table)


def stats(
    ctx: typer.Context,
    by: Annotated[
        list[By] | None,
        typer.Option("--by", help="Breakdowns to show (repeat; default: all three)."),
    ] = None,
    server: ServerOption = None,
    creds: CredsOption = None,
    nkey: NkeyOption = None,
    data_dir: DataDirOption = None,
    root_public_key: RootKeyOption = None,
    directory: DirectoryFileOption = None,
    timeout: TimeoutOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Counts by type, département and month; take-in-charge delays by partner kind (<5 rule)."""
    logs_to_stderr()
    with reported_errors():
        loaded = _load(
            ctx,
            (server, creds, nkey, data_dir, timeout),
            root_public_key,
            directory,
            need_directory="stats",
        )
    document = _stats_document(loaded.book.stats(), by or list(By), loaded.now_ms)
    if as_json:
        _emit(document)
    else:
        _print_stats(document)


_COMMANDS: Final = (
    ("flows", flows),
    ("trace", trace),
    ("pending", pending),
    ("overdue", overdue),
    ("partners", partners),
    ("quarantine", quarantine),
    ("stats", stats),
)


def register(app: typer.Typer) -> None:
    """Mount the operator views as top-level commands of ``app``."""
    for name, command in _COMMANDS:
        app.command(name)(command)
