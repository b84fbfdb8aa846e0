"""Shared vocabulary of the wire contract: partner kinds, priorities, event types, ids.

These are codes, never free text: they may appear in subjects, headers, logs and audit
records.
"""

from __future__ import annotations

import re
from enum import IntEnum, StrEnum

__all__ = [
    "EVENT_TYPES",
    "PARTNER_ID_RE",
    "ROUTING_VALUE_RE",
    "STATEMENT_TYPES",
    "EventType",
    "PartnerKind",
    "Priority",
    "SecrecyClass",
    "is_valid_partner_id",
]


class PartnerKind(StrEnum):
    """The kinds of partners of a territorial partnership."""

    SCHOOL = "school"  # établissement scolaire (service social)
    HOSPITAL = "hospital"
    UAPED = "uaped"  # unité d'accueil pédiatrique enfants en danger
    MEDECIN_REFERENT = "medecin_referent"  # médecin référent protection de l'enfance
    GENDARMERIE = "gendarmerie"
    POLICE = "police"
    POLICE_CYBER = "police_cyber"  # unité cyber / OFMIN
    CRIP = "crip"  # cellule de recueil des informations préoccupantes
    ASE = "ase"  # aide sociale à l'enfance (service gardien)
    PARQUET = "parquet"  # magistrat référent
    HOTEL = "hotel"
    RENTAL_PLATFORM = "rental_platform"
    SOCIAL_NETWORK = "social_network"
    ASSOCIATION = "association"
    OUTREACH = "outreach"  # équipe de prévention spécialisée (maraudes)
    PJJ = "pjj"  # protection judiciaire de la jeunesse
    CARE_SERVICE = "care_service"  # accueil, hébergement, foyer, soin
    COORDINATION = "coordination"  # cellule de coordination: triage humain
    GATEWAY = "gateway"  # the partnership's hub (router, tracker, audit)


class Priority(IntEnum):
    """Delivery priority. Lower value is served first."""

    FLASH = 0
    URGENT = 1
    ROUTINE = 2

    @property
    def label(self) -> str:
        """The name used in subjects and consumer names."""
        return self.name


class SecrecyClass(StrEnum):
    """Secrecy classes a schema field can be marked with (``"secrecy": "medical"``)."""

    MEDICAL = "medical"  # art. 226-14 CP: clinical findings, only for entitled partners
    IDENTITY = "identity"  # who the child is and exactly where: not for street outreach teams


class EventType(StrEnum):
    """Event types of the domain, as bound in the envelope header."""

    RUNAWAY_ALERT = "runaway_alert"
    RUNAWAY_ENDED = "runaway_ended"
    DANGER_DECLARATION = "danger_declaration"
    SIGNALEMENT = "signalement"
    MEDICAL_REFERRAL = "medical_referral"
    LODGING_SUSPICION_REPORT = "lodging_suspicion_report"
    ONLINE_EXPLOITATION_REPORT = "online_exploitation_report"
    JUDICIAL_REQUISITION = "judicial_requisition"
    REQUISITION_ANSWER = "requisition_answer"
    CARE_ORIENTATION = "care_orientation"
    # signed statements (cleartext metadata, signed, never sealed)
    RECEIPT = "receipt"
    REJECTION = "rejection"
    ESCALATION_NOTICE = "escalation_notice"
    PROGRESS_NOTICE = "progress_notice"


STATEMENT_TYPES: frozenset[EventType] = frozenset(
    {
        EventType.RECEIPT,
        EventType.REJECTION,
        EventType.ESCALATION_NOTICE,
        EventType.PROGRESS_NOTICE,
    }
)
EVENT_TYPES: frozenset[EventType] = frozenset(EventType) - STATEMENT_TYPES

# Use both patterns with ``fullmatch``: Python's ``match`` lets ``$`` accept a trailing
# newline. The anchors stay for pydantic ``pattern=`` (Rust regex, where ``$`` is strict).
# Partner ids are NATS subject tokens and consumer-name parts: lowercase, digits, '-' only.
PARTNER_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,62}[a-z0-9])$")
# Routing metadata values: ids, codes, enums, booleans. No spaces, so no free text.
ROUTING_VALUE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def is_valid_partner_id(value: str) -> bool:
    """True when ``value`` can be used as a partner id (and thus in subjects)."""
    return PARTNER_ID_RE.fullmatch(value) is not None
