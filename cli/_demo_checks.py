"""The checks of ``relais demo``, pure: what a recipient decrypted against its entitlement,
and which invariants of the run fail.

:func:`check_read` compares the fields one recipient's agent decrypted of one event with
what the secrecy policy of the rules entitles the recipient's kind to: a secret section read
without entitlement is *unauthorized*, an entitled one not readable is *missing*. A marker
planted in the medical fields (``canary``) is looked for in the decrypted fields as well, so
a medical value that leaked into another field would be caught too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from relais.agents.models import InboxItem
from relais.broker_config.directory import Directory
from relais.broker_config.rules import RuleSet
from relais.schemas.registry import MAIN_SECTION, default_registry

__all__ = ["Read", "check_read", "failed_checks"]

_MUST_BE_ZERO = (
    "unauthorized_section_reads",
    "entitled_sections_withheld",
    "lost",
    "misdelivered",
    "unreadable",
    "receipts_missing",
)
_MUST_HAPPEN = ("escalations", "quarantined", "closed")


@dataclass(frozen=True, slots=True)
class Read:
    """What one recipient's agent decrypted of one event (section and field names only)."""

    step: int
    event_type: str
    partner: str
    kind: str
    opened: tuple[str, ...]
    withheld: tuple[str, ...]
    entitled: tuple[str, ...]  # secret sections this partner's kind may read
    secret_fields: dict[str, tuple[str, ...]]  # secret section -> fields decrypted
    canary_seen: bool | None  # the medical marker in the decrypted fields (if planted)
    unauthorized: tuple[str, ...]  # secret sections read without entitlement
    missing: tuple[str, ...]  # entitled secret sections not readable

    def to_json(self) -> dict[str, Any]:
        """The read as JSON."""
        out = asdict(self)
        out["secret_fields"] = {k: list(v) for k, v in self.secret_fields.items()}
        return out


def check_read(
    step: int,
    partner: str,
    item: InboxItem,
    *,
    directory: Directory,
    rules: RuleSet,
    canary: str | None = None,
) -> Read:
    """Compare what ``partner`` decrypted of ``item`` with what its kind is entitled to."""
    member = directory.get(partner)
    kind = member.kind if member is not None else None
    entitled = sorted(klass.value for klass, kinds in rules.secrecy.items() if kind in kinds)
    schema = default_registry().by_type(item.event_type)
    secret: dict[str, tuple[str, ...]] = {}
    unauthorized: list[str] = []
    missing: list[str] = []
    for name, section in schema.sections.items():
        if name == MAIN_SECTION:
            continue
        fields = tuple(f for f in section.fields if f in item.fields)
        if name in item.opened_sections or fields:
            secret[name] = fields
            if name not in entitled:
                unauthorized.append(name)
        elif name in entitled:
            missing.append(name)
    seen = None if canary is None else canary in repr(item.fields)
    if seen and "medical" not in entitled and "medical" not in unauthorized:
        unauthorized.append("medical")
    if seen is False and "medical" in entitled and "medical" not in missing:
        missing.append("medical")
    return Read(
        step=step,
        event_type=item.event_type.value,
        partner=partner,
        kind=kind.value if kind is not None else "?",
        opened=item.opened_sections,
        withheld=item.withheld_sections,
        entitled=tuple(entitled),
        secret_fields=secret,
        canary_seen=seen,
        unauthorized=tuple(unauthorized),
        missing=tuple(missing),
    )


def failed_checks(
    counts: Mapping[str, int], audit: Mapping[str, Any], problems: list[str]
) -> list[str]:
    """The invariants that do not hold, each as a sentence (with the problems met)."""
    failures = list(problems)
    failures += [f"{key} = {counts[key]} (must be 0)" for key in _MUST_BE_ZERO if counts[key]]
    failures += [f"{key} = 0 (must be at least 1)" for key in _MUST_HAPPEN if counts[key] < 1]
    if not audit["ok"]:
        failures.append(f"the audit log does not verify: {audit['problem']}")
    return failures
