"""Decrypted values as rows for the event page: French labels, choices, dates, yes/no.

Every value becomes text or nested rows; the templates escape all of it (Jinja2
autoescape), so a field holding markup is shown as the characters it holds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from relais.agents.web.forms import named_types, paris, resolve
from relais.agents.web.labels import field_label, symbol_label
from relais.schemas.registry import EventSchema

__all__ = ["Row", "format_ms", "section_rows"]

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Row:
    """One labelled value; ``rows`` for a record, ``items`` for a list."""

    label: str
    text: str = ""
    rows: tuple[Row, ...] = ()
    items: tuple[tuple[Row, ...] | str, ...] = field(default=())


def format_ms(ms: int | None) -> str:
    """Unix milliseconds as Paris time, ``03/12/2026 14:05``."""
    if ms is None:
        return "—"
    moment = (_EPOCH + dt.timedelta(milliseconds=ms)).astimezone(paris())
    return moment.strftime("%d/%m/%Y %H:%M")


def _text(value: Any, ftype: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "Oui" if value else "Non"
    if isinstance(value, dt.datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return stamp.astimezone(paris()).strftime("%d/%m/%Y %H:%M")
    if isinstance(value, dt.date):
        return value.strftime("%d/%m/%Y")
    if isinstance(value, bytes):
        return f"(fichier de {len(value)} octets)"
    if isinstance(ftype, dict) and ftype.get("type") == "enum" and isinstance(value, str):
        return symbol_label(ftype, value)
    return str(value)


def _branch(value: Any, ftype: Any) -> Any:
    """The branch of a union that a decoded value belongs to."""
    if not isinstance(ftype, list):
        return ftype
    others = [b for b in ftype if b != "null"]
    if len(others) == 1:
        return others[0]
    for b in others:
        if isinstance(b, dict) and b.get("type") == "record" and isinstance(value, Mapping):
            return b
    return others[0] if others else "null"


def _row(name: str, value: Any, ftype: Any, names: Mapping[str, Any]) -> Row:
    ftype = _branch(value, resolve(ftype, names))
    label = field_label(name)
    if isinstance(ftype, dict) and ftype.get("type") == "record" and isinstance(value, Mapping):
        return Row(label, rows=_record_rows(value, ftype, names))
    if isinstance(ftype, dict) and ftype.get("type") == "array" and isinstance(value, list):
        items_type = resolve(ftype["items"], names)
        if not value:
            return Row(label, text="—")
        out: list[tuple[Row, ...] | str] = []
        for item in value:
            sub = _branch(item, items_type)
            if isinstance(sub, dict) and sub.get("type") == "record":
                out.append(_record_rows(item, sub, names))
            else:
                out.append(_text(item, sub))
        return Row(label, items=tuple(out))
    return Row(label, text=_text(value, ftype))


def _record_rows(
    value: Mapping[str, Any], ftype: Mapping[str, Any], names: Mapping[str, Any]
) -> tuple[Row, ...]:
    return tuple(
        _row(f["name"], value.get(f["name"]), f["type"], names)
        for f in ftype["fields"]
        if f["name"] in value
    )


def section_rows(schema: EventSchema, fields: Mapping[str, Any], section: str) -> tuple[Row, ...]:
    """The rows of one opened section, in schema order."""
    wanted = set(schema.sections[section].fields) if section in schema.sections else set()
    names = named_types(schema.raw)
    return tuple(
        _row(f["name"], fields[f["name"]], f["type"], names)
        for f in schema.raw["fields"]
        if f["name"] in wanted and f["name"] in fields
    )
