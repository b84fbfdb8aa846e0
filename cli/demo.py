"""``relais demo``: show the partnership at work on the embedded default.

This first stage seals a hospital's medical referral for the CRIP, the parquet and the
UAPED of a demo territory and opens it as each of them (and as a hotel that is not a
recipient), showing who can read which section. Nothing leaves the process.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from relais.agents.territory import build_territory
from relais.schemas.domain import EventType, Priority
from relais.schemas.envelope import Recipient, open_envelope, seal, verify_envelope
from relais.schemas.errors import EnvelopeError
from relais.schemas.samples import sample_event

__all__ = ["demo"]

_CANARY = "TEMOIN-SECRET-MEDICAL"
_SENDER = "hopital-93-avicenne"
_RECIPIENTS = ("crip-93", "parquet-93-bobigny", "uaped-93-jean-verdier")
_MEDICAL = ("parquet-93-bobigny", "uaped-93-jean-verdier")
_OUTSIDER = "hotel-93-gare"


def demo(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Seal a medical referral and open it as each partner: only the entitled read the secret."""
    territory = build_territory()
    keys = territory.keys()
    record = sample_event(EventType.MEDICAL_REFERRAL, canary=_CANARY)
    envelope = seal(
        EventType.MEDICAL_REFERRAL,
        record,
        sender=territory.identities[_SENDER],
        recipients=[
            Recipient(p, territory.identities[p].key_id, territory.identities[p].box_pk)
            for p in _RECIPIENTS
        ],
        departement="93",
        priority=Priority.URGENT,
        audiences={"medical": _MEDICAL},
    )
    header = verify_envelope(envelope, keys=keys).header
    rows: list[dict[str, Any]] = []
    unauthorized = 0
    for who in (*_RECIPIENTS, _OUTSIDER):
        try:
            opened = open_envelope(envelope, recipient=territory.identities[who], keys=keys)
        except EnvelopeError as exc:
            rows.append({"partner": who, "opened": [], "withheld": [], "refused": exc.reason.value})
            continue
        sees_secret = f"{_CANARY}-medical" in repr(opened.fields)
        if sees_secret and who not in _MEDICAL:
            unauthorized += 1
        rows.append(
            {
                "partner": who,
                "opened": list(opened.opened_sections),
                "withheld": list(opened.withheld_sections),
                "reads_medical_section": sees_secret,
            }
        )
    result = {
        "event_id": str(header.event_id),
        "event_type": header.event_type.value,
        "envelope_bytes": len(envelope),
        "sender": header.sender,
        "routing": dict(header.routing),
        "reads": rows,
        "unauthorized_section_reads": unauthorized,
    }
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _print(result)
    raise typer.Exit(0 if unauthorized == 0 else 1)


def _print(result: dict[str, Any]) -> None:
    console = Console()
    console.print(
        f"[bold]{result['event_type']}[/] {result['event_id']} from {result['sender']}"
        f" ({result['envelope_bytes']} bytes, routing {result['routing']})"
    )
    table = Table("partner", "sections opened", "sections withheld", "outcome")
    for row in result["reads"]:
        outcome = row.get("refused") or (
            "reads the medical section" if row["reads_medical_section"] else "main section only"
        )
        table.add_row(row["partner"], ", ".join(row["opened"]), ", ".join(row["withheld"]), outcome)
    console.print(table)
    console.print(f"unauthorized section reads: {result['unauthorized_section_reads']}")
