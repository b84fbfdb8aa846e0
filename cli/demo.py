"""``relais demo``: the partnership at work on the embedded default, nothing else needed.

Starts the embedded broker in a temporary data directory (or ``--data-dir``), creates the
demo territory, starts the gateway and the partners' agents in this process
(:mod:`relais.cli._demo_world`) and plays the scenario of :mod:`relais.cli._demo_scenario`:
a FLASH runaway alert delivered and taken in charge, a medical referral whose medical
section only the entitled partners read, a danger declaration, a hotel's suspicion report,
a judicial requisition and its answer, an alert nobody answers (escalated at its deadline),
a forged event (quarantined), and the end of the first runaway (its case closed).

Output: a flow table as the scenario goes (operator's view: ids, parties, states, delays;
never content), and for two events what each recipient's agent could decrypt. ``--json``:
one JSON document on stdout instead (counts, ``flows``, ``reads``, ``failures``). Logs go
to stderr, warnings only unless ``--verbose``.

Exit codes: 0 every check passed; 1 a check failed (an unauthorized read, a lost or
misdelivered event, no escalation or quarantine, an audit log that does not verify...);
2 usage (``--data-dir`` not empty); 3 the broker could not be started or reached; 130 on
Ctrl-C (143 on SIGTERM), after everything started was stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from relais.agents.logs import configure_logging
from relais.broker_config.embedded import broker_down
from relais.cli._common import EXIT_FAILURE, EXIT_USAGE, JsonOption, fail, reported_errors
from relais.cli._demo_checks import Read
from relais.cli._demo_scenario import (
    API_PARTNER,
    DEADLINE_SECONDS,
    PARTNERS,
    Flow,
    Scenario,
)
from relais.cli._demo_world import World, running_world

__all__ = ["demo"]

_EXIT_SIGNAL_BASE = 128


# -- showing it ----------------------------------------------------------------------------------


class _Quiet:
    """``--json``: nothing on stdout until the document."""

    def started(self, world: World) -> None:
        """Nothing to show."""

    def finished(self) -> None:
        """Nothing to show."""

    def changed(self, flows: Sequence[Flow]) -> None:
        """Nothing to show."""

    def reads(self, flow: Flow, rows: Sequence[Read]) -> None:
        """Nothing to show."""


class _Screen:
    """The flow table, redrawn as flows move on (on a terminal; else printed at the end)."""

    def __init__(self, console: Console, *, kept: bool) -> None:
        self.console = console
        self.kept = kept  # the data directory stays after the demo (--data-dir)
        self.flows: Sequence[Flow] = ()
        self.live: Live | None = None

    def started(self, world: World) -> None:
        """Say what runs, then show the table as it grows."""
        broker = world.broker.client_url if world.broker is not None else "?"
        self.console.print(
            f"[bold]relais demo[/]: embedded broker {broker}, gateway (router, tracker, audit"
            f" log), {len(world.agents)} partner agents; runaway alerts must be taken in"
            f" charge within {DEADLINE_SECONDS} s."
            + (f" Data: {world.root}" if self.kept else "")  # a temporary one is removed
        )
        if self.console.is_terminal:
            self.live = Live(console=self.console, auto_refresh=False, transient=False)
            self.live.start()

    def finished(self) -> None:
        """The table in its final state."""
        if self.live is not None:
            self.live.update(_flow_table(self.flows), refresh=True)
            self.live.stop()
            self.live = None
        else:
            self.console.print(_flow_table(self.flows))

    def changed(self, flows: Sequence[Flow]) -> None:
        """Redraw the table."""
        self.flows = flows
        if self.live is not None:
            self.live.update(_flow_table(flows), refresh=True)

    def reads(self, flow: Flow, rows: Sequence[Read]) -> None:
        """Print what each recipient could read (above the table on a terminal)."""
        self.console.print(_reads_table(flow, rows))


def _ms(value: int | None) -> str:
    # No thousands separator: a space would let "escalated 3 038" wrap inside the number.
    return "" if value is None else str(value)


def _delays(flow: Flow) -> str:
    parts = []
    if flow.routed_ms is not None:
        parts.append(f"routed {_ms(flow.routed_ms)}")
    if flow.delivered:
        parts.append(f"delivered ≤{_ms(max(flow.delivered.values()))}")
    if flow.taken_in_charge:
        parts.append(f"taken {_ms(min(flow.taken_in_charge.values()))}")
    if flow.escalation is not None:
        parts.append(f"escalated {_ms(flow.escalation['after_ms'])}")
    if flow.released:
        parts.append(f"released ≤{_ms(max(flow.released.values()))}")
    return "\n".join(parts)


def _outcome(flow: Flow) -> str:
    if flow.quarantine is not None:
        q = flow.quarantine
        lines = [f"[bold red]quarantined[/] [red]{q['reason']}[/]"]
        if q["rejection_reason"]:
            lines.append(f"signed rejection to {flow.sender} ({q['rejection_reason']})")
        return "\n".join(lines)
    lines = []
    if flow.recipients:
        count = f"{len(flow.delivered)}/{len(flow.recipients)}"
        lines.append(f"[green]delivered {count}[/]" if flow.delivered else "routed")
    if flow.taken_in_charge:
        lines.append(f"[green]taken in charge[/] by {', '.join(flow.taken_in_charge)}")
    if flow.escalation is not None:
        fallback = ", ".join(flow.escalation["fallback"])
        lines.append(f"[bold yellow]ESCALATED[/] after {DEADLINE_SECONDS} s → {fallback}")
        if flow.escalation["notice_to_sender"]:
            lines.append(f"escalation notice to {flow.sender}")
    if flow.closed_by is not None:
        lines.append(f"[cyan]case closed[/] by #{flow.closed_by}")
    if flow.waiting:
        lines.append(f"[dim]… {flow.waiting}[/]")
    return "\n".join(lines) or "[dim]published[/]"


def _parties(flow: Flow) -> str:
    # One partner id per line: the column never wraps inside an id.
    if flow.claimed_sender is not None:
        claimed = "\n".join(flow.recipients)
        return f"{flow.sender}\n[dim](as {flow.claimed_sender})[/] →\n[dim]{claimed}[/]"
    text = f"{flow.sender} →\n" + "\n".join(flow.recipients)
    if flow.fallback:
        text += "\n[dim]fallback:[/]\n" + "\n".join(f"[dim]{p}[/]" for p in flow.fallback)
    return text


def _flow_table(flows: Sequence[Flow]) -> Table:
    # Readable at 80 columns: nothing is cut (overflow="fold"), ids wrap between partners,
    # and each delay ("escalated 3038") stays on one line.
    table = Table(
        title="relais demo: flows (operator's view, no content)",
        expand=False,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("event", overflow="fold")
    table.add_column("sender → recipients", no_wrap=True, overflow="fold")
    table.add_column("outcome", overflow="fold")
    table.add_column("ms", justify="right", no_wrap=True)
    for flow in flows:
        table.add_row(
            str(flow.step),
            f"{flow.event_type}\n{flow.priority or ''}\n[dim]{flow.channel}[/]",
            _parties(flow),
            _outcome(flow),
            _delays(flow),
        )
    return table


def _reads_table(flow: Flow, rows: Sequence[Read]) -> Table:
    table = Table(
        title=f"#{flow.step} {flow.event_type}: what each recipient's agent could decrypt",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("recipient", no_wrap=True, overflow="fold")  # ids whole
    for column in ("kind", "sections opened", "withheld", "secret fields read"):
        table.add_column(column, overflow="fold")
    with_canary = any(r.canary_seen is not None for r in rows)
    if with_canary:
        table.add_column("medical marker", overflow="fold")
    for row in rows:
        secret = "; ".join(
            f"{name}: {', '.join(fields[:3])}{'…' if len(fields) > 3 else ''}"
            for name, fields in row.secret_fields.items()
        )
        cells = [
            row.partner,
            row.kind,
            ", ".join(row.opened),
            ", ".join(row.withheld) or "—",
            secret or "—",
        ]
        if with_canary:
            cells.append("[green]read[/]" if row.canary_seen else "not readable")
        if row.unauthorized:
            cells[0] = f"[bold red]{row.partner} UNAUTHORIZED {', '.join(row.unauthorized)}[/]"
        table.add_row(*cells)
    return table


def _summary(result: dict[str, Any], console: Console) -> None:
    audit = result["audit"]
    console.print(
        f"{result['events']} events ({result['routed']} routed, {result['quarantined']}"
        f" quarantined), {result['deliveries']} deliveries, {result['taken_in_charge']} taken"
        f" in charge, {result['escalations']} escalated, {result['closed']} case closed."
    )
    console.print(
        f"unauthorized section reads: {result['unauthorized_section_reads']}, lost:"
        f" {result['lost']}, misdelivered: {result['misdelivered']}; audit log"
        f" {'verified' if audit['ok'] else 'NOT verified'} ({audit['records']} records,"
        f" signed checkpoints: {audit['checkpoints']}). {result['elapsed_ms'] / 1000:.1f} s"
    )
    if result["ok"]:
        console.print("[bold green]every check passed[/]")
    for failure in result["failures"]:
        console.print(f"[bold red]FAILED[/] {failure}")


# -- running it ----------------------------------------------------------------------------------


@dataclass
class _Outcome:
    result: dict[str, Any] | None = None
    signal: int | None = None


async def _play(root: Path, reporter: _Quiet | _Screen) -> dict[str, Any]:
    started = time.monotonic()
    async with running_world(
        root, partners=PARTNERS, api_partner=API_PARTNER, deadline_seconds=DEADLINE_SECONDS
    ) as world:
        setup_ms = int((time.monotonic() - started) * 1000)
        scenario = Scenario(world, reporter)
        reporter.started(world)
        try:
            await scenario.play()
            result = await scenario.result()
        finally:
            reporter.finished()
    return {
        **result,
        "setup_ms": setup_ms,
        "elapsed_ms": int((time.monotonic() - started) * 1000),
    }


async def _main(root: Path, reporter: _Quiet | _Screen) -> _Outcome:
    """Play in a task that SIGINT/SIGTERM cancel: everything started is stopped on the way out."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(_play(root, reporter))
    received: list[int] = []

    def on_signal(sig: int) -> None:
        if not received:  # a second Ctrl-C does not cut the clean-up short
            received.append(sig)
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return _Outcome(result=await task)
    except asyncio.CancelledError:
        if not received:
            raise
        return _Outcome(signal=received[0])
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _data_dir(given: Path | None) -> Path:
    if given is None:
        return Path(tempfile.mkdtemp(prefix="relais-demo-"))
    if given.exists() and (not given.is_dir() or any(given.iterdir())):
        fail("CONFIG_INVALID", f"{given} is not an empty directory", EXIT_USAGE)
    return given


def demo(
    as_json: JsonOption = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Keep everything (territory, broker, agents, gateway) in this new or empty"
            " directory; default: a temporary one, removed at the end.",
            file_okay=False,
        ),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Log every event handled (stderr).", metavar=""),
    ] = False,
) -> None:
    """Play the partnership at work on the embedded broker: routing, secrecy, escalation."""
    root = _data_dir(data_dir)
    # Warnings only, unless -v here or relais -v / -vv (which also gives debug).
    configure_logging(level=logging.INFO if verbose else None)
    reporter: _Quiet | _Screen = (
        _Quiet() if as_json else _Screen(Console(), kept=data_dir is not None)
    )
    outcome = _Outcome(signal=signal.SIGINT)
    try:
        with reported_errors():
            outcome = asyncio.run(_main(root, reporter))
    except KeyboardInterrupt:
        pass  # before the event loop handled signals: nothing of the world is running yet
    finally:
        with contextlib.suppress(Exception):
            broker_down(root / "broker")  # already stopped, unless something went very wrong
        if data_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    if outcome.signal is not None:
        typer.echo("interrupted: everything the demo started is stopped", err=True)
        raise typer.Exit(_EXIT_SIGNAL_BASE + outcome.signal)
    result = outcome.result or {}
    result["data_dir"] = str(root) if data_dir is not None else None
    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False))
    else:
        _summary(result, Console())
    if not result.get("ok"):
        for failure in result.get("failures", []):
            typer.echo(f"error [DEMO_CHECK_FAILED]: {failure}", err=True)
        raise typer.Exit(EXIT_FAILURE)
