"""Routing rules: who is competent for an event, at which priority, with which deadline.

The rules are a declarative TOML text, validated with pydantic and versioned, signed by the
root key inside the partnership's configuration edition (the directory's ``rules`` member,
see :mod:`relais.broker_config.edition`; ``broker_config/rules/partnership.toml`` is what a
new edition embeds by default). The *same* code and the *same* edition run in two places: the
sender's agent computes the recipients before sealing, and the gateway's router checks that
the sealed recipients, priority and section audiences are exactly what the rules give for
the header's routing metadata. Rules only read routing metadata (codes), never content.

A rule lists *selectors*: a partner kind, found either by territory (the first routing key
among ``territory`` that the event carries, holding a département code) or by a partner id
carried in a routing key (``partner_from``), optionally only ``when`` some routing keys
hold some values. The sender is never a recipient of its own event. When no rule applies or
no partner is found, the event goes to human triage (the partnership's ``coordination``
desk), never to a broadcast. Triage never lowers what the event's type demands: when its
rule found nobody, the event keeps the rule's priority and deadline, and the rule's fallback
recipients (or else the partnership's own triage desk) are released on escalation, as for
any other event of that rule.

Secrecy policy: for each secrecy class, the partner kinds entitled to read such sections.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from relais.broker_config.directory import Directory, Partner, packaged_rules_text
from relais.schemas.domain import EVENT_TYPES, EventType, PartnerKind, Priority, SecrecyClass
from relais.schemas.errors import Reason, RoutingError

__all__ = [
    "Decision",
    "Rule",
    "RuleSet",
    "Selector",
    "default_rules",
    "default_rules_text",
    "load_rules",
    "with_deadline",
]

TRIAGE_RULE_ID = "triage"
_TERRITORY_KEYS = ("child_dept", "facts_dept", "guardian_dept")
_PARTNER_KEYS = ("addressed_to", "requester", "alert_sender")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Selector(_Model):
    """One kind of competent partner, and how to find it."""

    kind: PartnerKind | None = None
    territory: tuple[str, ...] = ()
    partner_from: str | None = None
    kinds_from: tuple[PartnerKind, ...] = ()
    when: dict[str, str] = Field(default_factory=dict)
    why: str = Field(min_length=3)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.partner_from is None) == (self.kind is None):
            raise ValueError("a selector has either a kind or partner_from")
        if self.partner_from is not None and self.partner_from not in _PARTNER_KEYS:
            raise ValueError(f"partner_from must be one of {_PARTNER_KEYS}")
        if self.partner_from is not None and self.territory:
            raise ValueError("partner_from and territory exclude each other")
        if any(k not in _TERRITORY_KEYS for k in self.territory):
            raise ValueError(f"territory keys must be among {_TERRITORY_KEYS}")
        return self

    def applies(self, routing: Mapping[str, str]) -> bool:
        """All ``when`` conditions hold."""
        return all(routing.get(k) == v for k, v in self.when.items())


class PriorityCase(_Model):
    """A priority that applies when routing keys hold given values."""

    when: dict[str, str]
    priority: Literal["FLASH", "URGENT", "ROUTINE"]


class Rule(_Model):
    """The routing of one event type."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    event_type: EventType
    senders: tuple[PartnerKind, ...] = Field(min_length=1)
    priority: Literal["FLASH", "URGENT", "ROUTINE"]
    priority_when: tuple[PriorityCase, ...] = ()
    deadline_seconds: int | None = Field(default=None, gt=0)
    recipients: tuple[Selector, ...] = Field(min_length=1)
    fallback: tuple[Selector, ...] = ()
    closes_case: bool = False
    why: str = Field(min_length=3)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.event_type not in EVENT_TYPES:
            raise ValueError("statements are not routed by rules")
        if self.fallback and self.deadline_seconds is None:
            raise ValueError("fallback recipients need a deadline")
        return self


class RuleSet(_Model):
    """A versioned set of rules and the secrecy policy."""

    version: int = Field(ge=1)
    partnership_rules: str = Field(min_length=3)
    secrecy: dict[SecrecyClass, tuple[PartnerKind, ...]]
    triage: tuple[Selector, ...] = Field(min_length=1)
    rules: tuple[Rule, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> Self:
        types = [r.event_type for r in self.rules]
        if len(types) != len(set(types)):
            raise ValueError("one rule per event type")
        ids = [r.id for r in self.rules]
        if len(ids) != len(set(ids)) or TRIAGE_RULE_ID in ids:
            raise ValueError("rule ids must be unique and not 'triage'")
        if set(self.secrecy) != set(SecrecyClass):
            raise ValueError("the secrecy policy must cover every secrecy class")
        return self

    @functools.cached_property
    def by_type(self) -> dict[EventType, Rule]:
        """Rules indexed by event type."""
        return {r.event_type: r for r in self.rules}

    def decide(
        self,
        event_type: EventType | str,
        routing: Mapping[str, str],
        *,
        sender: str,
        directory: Directory,
    ) -> Decision:
        """The routing decision for an event, from its routing metadata only."""
        rule = self.by_type.get(EventType(event_type))
        if rule is None:
            return self._triage(routing, sender, directory, f"no rule for {event_type}")
        recipients = _select(rule.recipients, routing, sender, directory)
        if not recipients:
            return self._triage(
                routing, sender, directory, f"rule {rule.id} found nobody", rule=rule
            )
        fallback = {
            pid: why
            for pid, why in _select(rule.fallback, routing, sender, directory).items()
            if pid not in recipients
        }
        return Decision(
            rule_id=rule.id,
            ruleset_version=self.version,
            recipients=tuple(sorted(recipients)),
            fallback=tuple(sorted(fallback)),
            priority=_priority(rule, routing),
            deadline_seconds=rule.deadline_seconds,
            departement=_departement(routing),
            audiences=self._audiences(recipients | fallback.keys(), directory),
            reasons={**fallback, **recipients},
            closes_case=rule.closes_case,
            sender_allowed=_sender_kind(sender, directory) in rule.senders,
        )

    def _triage(
        self,
        routing: Mapping[str, str],
        sender: str,
        directory: Directory,
        why: str,
        *,
        rule: Rule | None = None,
    ) -> Decision:
        found: dict[str, str] = {}
        later = list(self.triage)
        while later:  # the first selector that finds someone
            found = _select((later.pop(0),), routing, sender, directory)
            if found:
                break
        fallback: dict[str, str] = {}
        if rule is not None and rule.deadline_seconds is not None:
            # The type's deadline stands, so someone must be there to escalate to: the
            # rule's fallback, or else the next triage desks (the partnership's own).
            fallback = _select(rule.fallback, routing, sender, directory)
            if not fallback.keys() - found.keys():
                fallback = _select(tuple(later), routing, sender, directory)
            fallback = {p: w for p, w in fallback.items() if p not in found}
        return Decision(
            rule_id=TRIAGE_RULE_ID,
            ruleset_version=self.version,
            recipients=tuple(sorted(found)),
            fallback=tuple(sorted(fallback)),
            # Triage never lowers priority: the type's rule decides it and its deadline.
            priority=Priority.URGENT if rule is None else _priority(rule, routing),
            deadline_seconds=None if rule is None else rule.deadline_seconds,
            departement=_departement(routing),
            audiences={},  # triage never receives secret sections
            reasons={
                **{pid: f"{reason} ({why})" for pid, reason in fallback.items()},
                **{pid: f"{reason} ({why})" for pid, reason in found.items()},
            },
            closes_case=False,
            sender_allowed=True,
        )

    def _audiences(self, members: Any, directory: Directory) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for klass, kinds in self.secrecy.items():
            out[klass.value] = tuple(
                sorted(pid for pid in members if _kind(pid, directory) in kinds)
            )
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    """Who gets an event, why, at which priority and with which deadline."""

    rule_id: str
    ruleset_version: int
    recipients: tuple[str, ...]
    fallback: tuple[str, ...]
    priority: Priority
    deadline_seconds: int | None
    departement: str
    audiences: Mapping[str, tuple[str, ...]]
    reasons: Mapping[str, str] = field(default_factory=dict)
    closes_case: bool = False
    sender_allowed: bool = True

    @property
    def triage(self) -> bool:
        """No rule applied: the event goes to the coordination desk for a human decision."""
        return self.rule_id == TRIAGE_RULE_ID

    def explain(self) -> list[dict[str, str]]:
        """One row per recipient: partner, role (recipient / fallback) and why."""
        rows = [
            {"partner": p, "role": "recipient", "why": self.reasons.get(p, "")}
            for p in self.recipients
        ]
        rows += [
            {"partner": p, "role": "fallback", "why": self.reasons.get(p, "")}
            for p in self.fallback
        ]
        return rows


def _kind(partner_id: str, directory: Directory) -> PartnerKind | None:
    partner = directory.get(partner_id)
    return None if partner is None else partner.kind


def _sender_kind(sender: str, directory: Directory) -> PartnerKind | None:
    return _kind(sender, directory)


def _departement(routing: Mapping[str, str]) -> str:
    return routing.get("facts_dept") or routing.get("child_dept") or ""


def _priority(rule: Rule, routing: Mapping[str, str]) -> Priority:
    for case in rule.priority_when:
        if all(routing.get(k) == v for k, v in case.when.items()):
            return Priority[case.priority]
    return Priority[rule.priority]


def _select(
    selectors: tuple[Selector, ...], routing: Mapping[str, str], sender: str, directory: Directory
) -> dict[str, str]:
    """Partner id -> why, for every selector that applies."""
    found: dict[str, str] = {}
    for sel in selectors:
        if not sel.applies(routing):
            continue
        for partner in _candidates(sel, routing, directory):
            if partner.id != sender and partner.active:
                found.setdefault(partner.id, sel.why)
    return found


def _candidates(
    sel: Selector, routing: Mapping[str, str], directory: Directory
) -> tuple[Partner, ...]:
    if sel.partner_from is not None:
        partner = directory.get(routing.get(sel.partner_from, ""))
        if partner is None or (sel.kinds_from and partner.kind not in sel.kinds_from):
            return ()
        return (partner,)
    if sel.kind is None:  # excluded by Selector._check; kept for the type checker
        return ()
    if not sel.territory:
        return directory.of_kind(sel.kind)
    for key in sel.territory:
        dep = routing.get(key)
        if dep:
            return directory.find(sel.kind, dep)
    return ()


def load_rules(source: Path | str | bytes) -> RuleSet:
    """Parse and validate a rules file (raises ``RoutingError(RULES_INVALID)``)."""
    try:
        if isinstance(source, bytes):
            data = tomllib.loads(source.decode("utf-8"))
        elif isinstance(source, Path):
            data = tomllib.loads(source.read_text(encoding="utf-8"))
        else:
            data = tomllib.loads(source)
        return RuleSet.model_validate(data)
    except (OSError, UnicodeError, tomllib.TOMLDecodeError) as exc:
        raise RoutingError(
            f"rules unreadable: {type(exc).__name__}", reason=Reason.RULES_INVALID
        ) from exc
    except ValidationError as exc:
        where = "; ".join(
            ".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in exc.errors()
        )
        raise RoutingError(f"rules invalid: {where}", reason=Reason.RULES_INVALID) from exc


def default_rules_text() -> str:
    """The text of the packaged rules file of the partnership (what a new edition embeds)."""
    return packaged_rules_text()


@functools.cache
def default_rules() -> RuleSet:
    """The packaged rules of the partnership."""
    return load_rules(default_rules_text())


def with_deadline(text: str, rule_id: str, deadline_seconds: int) -> str:
    """Rules text with the take-in-charge deadline of rule ``rule_id`` changed.

    The version is bumped: the audit log records the rules version of every decision, and
    these are not the rules of ``text`` any more. For demonstrations and tests (a deadline
    of a few seconds); raises ``RoutingError(RULES_INVALID)`` when the rule has no deadline.
    """
    start = text.find(f'id = "{rule_id}"')
    end = text.find("[[rules]]", start)
    version = re.search(r"(?m)^version = (\d+)$", text)
    if start < 0 or version is None:
        raise RoutingError(f"no rule {rule_id} to change", reason=Reason.RULES_INVALID)
    end = len(text) if end < 0 else end
    block, count = re.subn(
        r"(?m)^deadline_seconds = \d+$",
        f"deadline_seconds = {deadline_seconds}",
        text[start:end],
        count=1,
    )
    if count != 1:
        raise RoutingError(f"rule {rule_id} has no deadline", reason=Reason.RULES_INVALID)
    text = text[:start] + block + text[end:]
    return re.sub(r"(?m)^version = (\d+)$", f"version = {int(version.group(1)) + 1}", text, count=1)
