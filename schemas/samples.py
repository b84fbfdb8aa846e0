"""Realistic and entirely fictional sample events, for tests, the demo and benchmarks.

Every person, phone number, place of facts and reference below is invented; names are drawn
from short lists of common French names. A sample is a record of the *current* schema of its
event type, in the shape decoding returns (``datetime`` in UTC at millisecond precision,
``date``, ``uuid.UUID``), so ``decode(encode(sample)) == sample``.

``canary``, when given, is a marker string written into the main free-text field of the
event and into a medical field when the type has one; privacy tests look for it wherever it
must not appear (routing metadata, headers, logs, audit records). In the medical field it is
followed by ``-medical``, so a test can also tell the medical copy from the other one (a
recipient without medical entitlement sees ``canary`` but never ``canary + "-medical"``).
Statements (receipt, rejection, escalation notice) hold no free text and ignore it.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relais.schemas.domain import EventType

__all__ = ["SAMPLE_EPOCH", "sample_event"]

#: Reference instant of every sample (times are drawn shortly before it).
SAMPLE_EPOCH = dt.datetime(2025, 11, 14, 22, 30, tzinfo=dt.UTC)

_FIRST_FEMALE = ("Léa", "Inès", "Manon", "Chloé", "Jade", "Camille", "Yasmine", "Louna", "Maëlys")
_FIRST_MALE = ("Lucas", "Nathan", "Rayan", "Enzo", "Hugo", "Yanis", "Théo", "Adam", "Kylian")
_LAST = (
    "Martin", "Bernard", "Dubois", "Moreau", "Laurent", "Girard", "Lefèvre", "Mercier",
    "Benali", "Traoré", "Nguyen", "Da Silva", "Rousseau", "Fontaine",
)  # fmt: skip
# (name, function, ReporterRole symbol)
_PROFESSIONALS = (
    ("Claire Vasseur", "assistante sociale scolaire", "SCHOOL_SOCIAL_WORKER"),
    ("Samir Haddad", "éducateur spécialisé, prévention spécialisée", "EDUCATOR"),
    ("Dr Anne Keller", "pédiatre, UAPED", "PHYSICIAN"),
    ("Julie Marchand", "infirmière scolaire", "SCHOOL_NURSE"),
)
# A few real INSEE commune codes per département; elsewhere a plausible code is made up.
_COMMUNES: dict[str, tuple[tuple[str, str], ...]] = {
    "93": (("93066", "Saint-Denis"), ("93008", "Bobigny"), ("93048", "Montreuil")),
    "75": (("75056", "Paris"),),
    "13": (("13055", "Marseille"),),
    "69": (("69123", "Lyon"),),
    "2A": (("2A004", "Ajaccio"),),
    "974": (("97411", "Saint-Denis (La Réunion)"),),
}
# Phone numbers from the ranges ARCEP reserves for works of fiction (01 99 00, 06 39 98).
_OFFICE_PHONE = "+33199001234"
_PLACES = ("gare routière", "centre commercial", "abords du lycée", "parc municipal", "gare RER")

# Partner ids of the demo territory (Seine-Saint-Denis), used when the caller gives none.
_DEMO = {
    "addressed_to_requisition": "hotel-93-gare",
    "addressed_to_orientation": "foyer-93-horizon",
    "requester": "parquet-93-bobigny",
    "alert_sender": "gend-93-bobigny",
    "crip": "crip-93",
    "school": "college-93-jaures",
}


@dataclass(slots=True)
class _Ctx:
    """The caller's choices and the random source, shared by the builders."""

    rng: random.Random
    child_dept: str
    facts_dept: str
    in_care: bool
    guardian_dept: str | None
    prostitution_suspected: bool
    addressed_to: str | None
    requester: str | None
    case_ref: uuid.UUID | None
    alert_sender: str | None
    imminent: bool
    canary: str | None
    sex: str = "FEMALE"

    def text(self, base: str, suffix: str = "") -> str:
        return base if self.canary is None else f"{base} {self.canary}{suffix}"

    def before(self, minutes_max: int, minutes_min: int = 0) -> dt.datetime:
        minutes = self.rng.randint(minutes_min, minutes_max)
        millis = self.rng.randrange(0, 60_000)
        return SAMPLE_EPOCH - dt.timedelta(minutes=minutes, milliseconds=millis)

    def commune(self, dept: str) -> tuple[str, str]:
        known = _COMMUNES.get(dept)
        if known:
            return self.rng.choice(known)
        digits = 2 if len(dept) == 3 else 3
        return f"{dept}{self.rng.randrange(1, 10**digits):0{digits}d}", "centre-ville"

    def uuid7(self) -> uuid.UUID:
        ms = int(self.before(60 * 24 * 3).timestamp() * 1000)
        value = (ms << 80) | (0x7 << 76) | (self.rng.getrandbits(12) << 64)
        value |= (0b10 << 62) | self.rng.getrandbits(62)
        return uuid.UUID(int=value)

    def phone(self) -> str:
        return f"+3363998{self.rng.randrange(10**4):04d}"

    def g(self, feminine: str, masculine: str) -> str:
        """The word agreeing with the child's sex."""
        return feminine if self.sex == "FEMALE" else masculine

    def child(self) -> dict[str, Any]:
        first = _FIRST_FEMALE if self.sex == "FEMALE" else _FIRST_MALE
        age_days = self.rng.randint(12 * 365 + 40, 17 * 365 + 300)
        return {
            "last_name": self.rng.choice(_LAST),
            "first_names": " ".join(self.rng.sample(first, 2)),
            "birth_date": SAMPLE_EPOCH.date() - dt.timedelta(days=age_days),
            "apparent_age": None,
            "sex": self.sex,
            "birth_place": self.rng.choice(("Bondy", "Paris 18e", "Créteil", "Lille")),
            "phone_number": self.phone(),
            "aliases": [
                f"{self.rng.choice(('lili', 'jaja', 'nana', 'titi'))}_{self.rng.randint(10, 99)}"
            ],
        }

    def geo(self, *, child: bool = True, facts: bool = True, care: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if child:
            out["child_dept"] = self.child_dept
        if facts:
            out["facts_dept"] = self.facts_dept
        if care:
            out["in_care"] = self.in_care
            out["guardian_dept"] = self.guardian_dept
        return out

    def indicators(self) -> list[str]:
        if not self.prostitution_suspected:
            return self.rng.sample(["SCHOOL_DROPOUT", "REPEATED_RUNAWAYS", "NIGHT_ABSENCES"], 1)
        pool = [
            "REPEATED_RUNAWAYS", "UNEXPLAINED_MONEY_OR_GIFTS", "NEW_PHONE_OR_SIM",
            "OLDER_ENTOURAGE", "HOTEL_OR_SHORT_LET_STAYS", "ONLINE_ADS",
            "SEXUALISED_ONLINE_PRESENCE", "SCHOOL_DROPOUT", "SIGNS_OF_VIOLENCE",
        ]  # fmt: skip
        return sorted(self.rng.sample(pool, self.rng.randint(2, 5)), key=pool.index)

    def risk(self) -> str:
        return self.rng.choice(
            ("HIGH", "IMMEDIATE") if self.prostitution_suspected else ("LOW", "MODERATE")
        )

    def parents(self) -> dict[str, Any]:
        if self.in_care or self.rng.random() < 0.5:
            # for a child in care, the guardian service informs the parents
            reason = "TO_BE_INFORMED_BY_RECIPIENT" if self.in_care else "CONTRARY_TO_CHILD_INTEREST"
            return {"parents_informed": False, "parents_not_informed_reason": reason}
        return {"parents_informed": True, "parents_not_informed_reason": None}


# -- events ------------------------------------------------------------------------------------


def _runaway_alert(c: _Ctx) -> dict[str, Any]:
    missing = c.before(60 * 30, 60 * 6)
    code, town = c.commune(c.facts_dept)
    registered = c.rng.random() < 0.7
    return {
        **c.geo(),
        "prostitution_suspected": c.prostitution_suspected,
        "child": c.child(),
        "qualification": "RUNAWAY",
        "declared_by": "PLACEMENT_ESTABLISHMENT" if c.in_care else "PARENT_OR_GUARDIAN",
        "declared_at": c.before(60 * 5, 30),
        "missing_since": missing,
        "last_seen_commune": code,
        "last_seen_place": f"{town}, {c.rng.choice(_PLACES)}",
        "physical_description": "1m60, cheveux bruns attachés, doudoune noire, baskets blanches.",
        "fpr_status": "REGISTERED" if registered else "REQUESTED",
        "fpr_reference": f"FPR-{c.rng.randrange(10**9, 10**10)}" if registered else None,
        "previous_runaways_12_months": c.rng.randint(1, 6),
        **c.parents(),
        "legal_basis": "CPP_74_1",
        "indicators": c.indicators(),
        "risk_level": c.risk(),
        "circumstances": c.text(
            f"{c.g('Partie', 'Parti')} après le repas du soir sans ses affaires. "
            "Aurait rejoint un groupe de jeunes majeurs rencontrés sur un réseau social ; "
            "a évoqué un « appart » en ville."
        ),
    }


def _runaway_ended(c: _Ctx) -> dict[str, Any]:
    code, _town = c.commune(c.facts_dept)
    return {
        "case_ref": c.case_ref or c.uuid7(),
        "alert_sender": c.alert_sender or _DEMO["alert_sender"],
        **c.geo(),
        "prostitution_suspected": c.prostitution_suspected,
        "child": c.child(),
        "found_at": c.before(120, 10),
        "found_commune": code,
        "end_kind": c.rng.choice(
            ("FOUND_BY_POLICE", "RETURNED_SPONTANEOUSLY", "FOUND_BY_OUTREACH")
        ),
        "current_location": "PLACEMENT_HOME" if c.in_care else "FAMILY_HOME",
        "fpr_deletion_requested": True,
        "return_interview_proposed": True,
        "return_interview_service": _DEMO["crip"],
        "medical_examination_advised": c.prostitution_suspected,
        "legal_basis": "CASF_L226_2_2",
        "indicators": c.indicators(),
        "risk_level": c.risk(),
        "observations": c.text(
            f"{c.g('Retrouvée', 'Retrouvé')} dans un hôtel près de la gare avec deux adultes, "
            f"{c.g('fatiguée', 'fatigué')}, un téléphone neuf en sa possession. "
            "Accepte un entretien de retour."
        ),
    }


def _danger_declaration(c: _Ctx) -> dict[str, Any]:
    name, _function, role = c.rng.choice(_PROFESSIONALS)
    return {
        **c.geo(),
        "prostitution_suspected": c.prostitution_suspected,
        "child": c.child(),
        "schooling": "IRREGULAR_ATTENDANCE",
        "reporter_name": name,
        "reporter_role": role,
        "reporter_phone": _OFFICE_PHONE,
        "facts_known_since": SAMPLE_EPOCH.date() - dt.timedelta(days=c.rng.randint(3, 40)),
        "danger_kinds": ["SEXUAL_EXPLOITATION", "RUNAWAY"]
        if c.prostitution_suspected
        else ["EDUCATION_COMPROMISED"],
        "facts_summary": c.text(
            "Absences répétées depuis la rentrée, nouveaux vêtements de marque, "
            f"{c.g('attendue', 'attendu')} à la sortie du collège par un homme d'une vingtaine "
            "d'années en voiture."
        ),
        "child_words": "« Il m'a dit que je lui devais de l'argent. »",
        "other_minors_concerned": c.rng.random() < 0.3,
        **c.parents(),
        "legal_basis": "CASF_L226_2_1",
        "indicators": c.indicators(),
        "risk_level": c.risk(),
        "child_informed": True,
    }


def _signalement(c: _Ctx) -> dict[str, Any]:
    name, role, _symbol = c.rng.choice(_PROFESSIONALS)
    suspect = {
        "name": "« Momo »",
        "approximate_age": c.rng.randint(19, 30),
        "phone_number": c.phone(),
        "vehicle": "berline grise, plaque partielle GH-4",
        "description": f"Vient chercher {c.g('la', 'le')} mineur{c.g('e', '')} le soir, "
        "paie téléphone et chambres d'hôtel.",
    }
    return {
        **c.geo(),
        "prostitution_suspected": c.prostitution_suspected,
        "child": c.child(),
        "suspected_offences": ["PROCURING_OF_MINOR", "SOLICITING_MINOR"]
        if c.prostitution_suspected
        else ["VIOLENCE"],
        "suspects": [suspect] if c.prostitution_suspected else [],
        "facts_summary": c.text(
            f"{c.g('La mineure', 'Le mineur')} indique avoir été {c.g('conduite', 'conduit')} "
            "à plusieurs reprises dans des hôtels et des appartements loués pour y rencontrer "
            "des adultes contre rémunération."
        ),
        "child_words": None,
        "protection_order_requested": c.prostitution_suspected,
        "prior_information_preoccupante": True,
        "crip_reference": f"IP-{c.child_dept}-2025-{c.rng.randint(100, 9999):04d}",
        "reporter_name": name,
        "reporter_function": role,
        **c.parents(),
        "legal_basis": "CASF_L226_4",
        "indicators": c.indicators(),
        "risk_level": c.risk(),
    }


def _medical_referral(c: _Ctx) -> dict[str, Any]:
    return {
        **c.geo(),
        "prostitution_suspected": c.prostitution_suspected,
        "child": c.child(),
        "care_setting": "UAPED",
        "seen_at": c.before(60 * 8, 60),
        "hospitalised": True,
        "discharge_planned_at": SAMPLE_EPOCH + dt.timedelta(days=2),
        "forensic_examination_requested": True,
        "referral_summary": c.text(
            f"{c.g('Adolescente accueillie', 'Adolescent accueilli')} aux urgences puis à "
            "l'UAPED, en sécurité dans le service ; mise à l'abri nécessaire à la sortie."
        ),
        **c.parents(),
        "legal_basis": "CP_226_14",
        "indicators": c.indicators(),
        "risk_level": c.risk(),
        **_medical_section(c),
    }


def _medical_section(c: _Ctx) -> dict[str, Any]:
    sampled = SAMPLE_EPOCH.date()
    return {
        "clinical_findings": c.text(
            f"{c.g('Patiente consciente, orientée', 'Patient conscient, orienté')}, asthénique. "
            "Ecchymoses d'âges différents aux avant-bras et aux cuisses.",
            "-medical",
        ),
        "injuries": [
            {
                "body_region": "UPPER_LIMB",
                "kind": "BRUISE",
                "estimated_age_days": c.rng.randint(2, 7),
                "description": "Ecchymoses en bande de l'avant-bras gauche, 4 x 2 cm.",
            }
        ],
        "sti_tests": [
            {"infection": "HIV", "result": "PENDING", "sampled_on": sampled},
            {"infection": "CHLAMYDIA", "result": "POSITIVE", "sampled_on": sampled},
        ],
        "pregnancy_test": "NEGATIVE" if c.sex == "FEMALE" else "NOT_DONE",
        "toxicology": [{"substance": "CANNABIS", "result": "POSITIVE"}],
        "post_exposure_prophylaxis": True,
        "psychiatric_assessment": "État de stress post-traumatique probable.",
        "suicidal_risk": "MODERATE",
        "total_incapacity_days": c.rng.randint(2, 10),
        "physician_conclusions": "Constatations compatibles avec les violences sexuelles décrites.",
        "examining_physician": "Dr Anne Keller",
        "physician_rpps": f"10{c.rng.randrange(10**8, 10**9)}",
    }


def _lodging_suspicion_report(c: _Ctx) -> dict[str, Any]:
    code, town = c.commune(c.facts_dept)
    check_in = c.before(60 * 20, 60 * 2)
    return {
        "facts_dept": c.facts_dept,
        "prostitution_suspected": c.prostitution_suspected,
        "establishment_kind": "HOTEL",
        "establishment_name": "Hôtel de la Gare",
        "address": f"12 rue de la Gare, {town}",
        "commune": code,
        "listing_ref": None,
        "booking_ref": f"BK{c.rng.randrange(10**6, 10**7)}",
        "check_in": check_in,
        "check_out": check_in + dt.timedelta(days=2),
        "booking_channel": "ONLINE_TRAVEL_AGENCY",
        "payment_method": "PREPAID_CARD",
        "booking_holder_name": f"{c.rng.choice(_LAST)} {c.rng.choice(_FIRST_MALE)}",
        "booking_holder_phone": c.phone(),
        "minors_observed": [
            {
                "apparent_age": c.rng.randint(14, 17),
                "sex": "FEMALE",
                "name_given": None,
                "description": "Jeune fille très maquillée, semble épuisée, n'a pas de bagage.",
            }
        ],
        "observed_signs": [
            "MINOR_WITH_UNRELATED_ADULT",
            "FREQUENT_VISITORS",
            "CASH_OR_PREPAID_PAYMENT",
        ],
        "observed_at": c.before(60, 5),
        "still_on_site": True,
        "cctv_retained": True,
        "staff_contact_phone": _OFFICE_PHONE,
        "legal_basis": "CP_434_3",
        "description": c.text(
            "Chambre réservée par un homme qui ne dort pas sur place ; passages d'hommes "
            "différents toutes les heures depuis 18 h."
        ),
    }


def _online_exploitation_report(c: _Ctx) -> dict[str, Any]:
    minor = {
        "platform_user_id": f"u{c.rng.getrandbits(48):012x}",
        "handle": f"@{c.rng.choice(('lili', 'jaja', 'nana'))}_{c.rng.randint(10, 99)}",
        "display_name": None,
        "declared_age": 18,
        "created_at": c.before(60 * 24 * 90, 60 * 24 * 10),
        "last_ip_country": "FR",
    }
    suspect = {
        **minor,
        "platform_user_id": f"u{c.rng.getrandbits(48):012x}",
        "handle": "@vip_plans_93",
        "declared_age": None,
    }
    return {
        "child_dept": c.child_dept,
        "facts_dept": c.facts_dept,
        "imminent": c.imminent,
        "prostitution_suspected": c.prostitution_suspected,
        "platform_report_id": f"TS-{c.rng.randrange(10**8, 10**9)}",
        "content_kinds": ["PROSTITUTION_AD", "SEXUALISED_SELF_IMAGE"],
        "detection_method": "AUTOMATED_DETECTION",
        "detected_at": c.before(180, 5),
        "minor_account": minor,
        "suspect_accounts": [suspect],
        "child": c.child(),
        "evidence_urls": [f"https://example.invalid/p/{c.rng.getrandbits(40):010x}"],
        "content_preserved": True,
        "preserved_until": SAMPLE_EPOCH.date() + dt.timedelta(days=365),
        "content_removed": True,
        "legal_basis": "DSA_ART18",
        "description": c.text(
            "Annonce proposant des « rendez-vous » avec photos d'une adolescente, publiée par "
            "un compte qui en gère plusieurs ; rendez-vous annoncé ce soir."
        ),
    }


def _judicial_requisition(c: _Ctx) -> dict[str, Any]:
    end = c.before(60 * 24, 60)
    return {
        "addressed_to": c.addressed_to or _DEMO["addressed_to_requisition"],
        "facts_dept": c.facts_dept,
        "cpp_article": "CPP_77_1_1",
        "legal_basis": "CPP_REQUISITION",
        "procedure_ref": f"2025/{c.rng.randint(1000, 99999):05d}",
        "issuing_officer": "Capitaine Hélène Roux, OPJ",
        "issuing_unit": "Brigade de protection des familles",
        "authorising_magistrate": "Magistrat référent, parquet des mineurs",
        "requested_data": ["BOOKING_RECORDS", "PAYMENT_DETAILS", "CCTV_FOOTAGE"],
        "subject_identifiers": [f"BK{c.rng.randrange(10**6, 10**7)}"],
        "period_start": end - dt.timedelta(days=30),
        "period_end": end,
        "answer_deadline": SAMPLE_EPOCH + dt.timedelta(days=3),
        "non_disclosure": True,
        "details": c.text(
            "Communiquer l'ensemble des réservations liées à cette référence, les moyens de "
            "paiement et les enregistrements vidéo disponibles du hall."
        ),
    }


def _requisition_answer(c: _Ctx) -> dict[str, Any]:
    return {
        "case_ref": c.case_ref or c.uuid7(),
        "requester": c.requester or _DEMO["requester"],
        "facts_dept": c.facts_dept,
        "procedure_ref": f"2025/{c.rng.randint(1000, 99999):05d}",
        "status": "PARTIAL",
        "answered_at": c.before(60, 1),
        "items": [
            {
                "data_kind": "BOOKING_RECORDS",
                "description": "Réservations sur la période",
                "content_text": "3 réservations, chambres 12 et 14, 2 nuits chacune.",
                "attachment": b"%PDF-1.7 fictional",
                "media_type": "application/pdf",
                "sha256_hex": None,
            }
        ],
        "responder_name": "Service juridique",
        "responder_function": "Réponses aux réquisitions judiciaires",
        "remarks": c.text("Les enregistrements vidéo sont conservés 30 jours : déjà effacés."),
    }


def _care_orientation(c: _Ctx) -> dict[str, Any]:
    return {
        "addressed_to": c.addressed_to or _DEMO["addressed_to_orientation"],
        **c.geo(facts=False),
        "prostitution_suspected": c.prostitution_suspected,
        "child": c.child(),
        "orientation_kind": "SECURE_DISTANT_ACCOMMODATION"
        if c.prostitution_suspected
        else "EMERGENCY_SHELTER",
        "legal_framework": "PROVISIONAL_PLACEMENT_ORDER",
        "legal_basis": "CASF_L226_2_2",
        "requested_start": SAMPLE_EPOCH.date() + dt.timedelta(days=1),
        "distance_placement": c.prostitution_suspected,
        "child_agrees": True,
        "parental_authority_agrees": None,
        "referent_name": "Karim Belkacem",
        "referent_phone": _OFFICE_PHONE,
        **c.parents(),
        "risk_level": c.risk(),
        "needs_summary": c.text(
            "Besoin d'un accueil sécurisé hors du département, suivi psychotraumatique, "
            "rescolarisation à organiser."
        ),
    }


# -- statements --------------------------------------------------------------------------------


def _receipt(c: _Ctx) -> dict[str, Any]:
    first = c.case_ref or c.uuid7()
    return {
        "recipient": c.addressed_to or _DEMO["crip"],
        "entries": [
            {
                "event_id": first,
                "state": "DELIVERED",
                "decline_reason": None,
                "outcome": None,
                "at": c.before(30, 20),
            },
            {
                "event_id": first,
                "state": "TAKEN_IN_CHARGE",
                "decline_reason": None,
                "outcome": None,
                "at": c.before(10),
            },
            {
                "event_id": c.uuid7(),
                "state": "DECLINED",
                "decline_reason": "NOT_COMPETENT",
                "outcome": None,
                "at": c.before(5),
            },
        ],
    }


def _rejection(c: _Ctx) -> dict[str, Any]:
    return {
        "rejection_id": c.uuid7(),
        "event_id": c.case_ref or c.uuid7(),
        "sender": c.alert_sender or _DEMO["school"],
        "reason_code": "RECIPIENTS_NOT_RULES",
        "ingress_sequence": c.rng.randrange(1, 10**6),
        "rejected_at": c.before(5),
    }


def _escalation_notice(c: _Ctx) -> dict[str, Any]:
    deadline = c.before(30, 5)
    return {
        "notice_id": c.uuid7(),
        "event_id": c.case_ref or c.uuid7(),
        "event_type": EventType.RUNAWAY_ALERT.value,
        "rule_id": f"runaway-flash-{c.child_dept.lower()}",
        "deadline": deadline,
        "escalated_at": deadline + dt.timedelta(seconds=c.rng.randint(1, 60)),
        "overdue_recipients": [_DEMO["crip"]],
        "fallback_recipients": [_DEMO["requester"]],
        "sender": c.alert_sender or _DEMO["alert_sender"],
    }


def _progress_notice(c: _Ctx) -> dict[str, Any]:
    event_id = c.case_ref or c.uuid7()
    routed = c.before(30, 20)
    step = {
        "event_id": event_id,
        "event_type": EventType.DANGER_DECLARATION.value,
        "partner": c.addressed_to or _DEMO["crip"],
        "role": "RECIPIENT",
        "decline_reason": None,
        "outcome": None,
        "escalated_to": [],
    }
    return {
        "notice_id": c.uuid7(),
        "sender": c.alert_sender or _DEMO["school"],
        "steps": [
            step | {"state": "ROUTED", "at": routed},
            step | {"state": "DELIVERED", "at": routed + dt.timedelta(milliseconds=40)},
            step | {"state": "TAKEN_IN_CHARGE", "at": c.before(10, 5)},
            step | {"state": "CONCLUDED", "outcome": "NO_DANGER_FOUND", "at": c.before(4)},
        ],
        "issued_at": SAMPLE_EPOCH,
    }


_BUILDERS: dict[EventType, Callable[[_Ctx], dict[str, Any]]] = {
    EventType.RUNAWAY_ALERT: _runaway_alert,
    EventType.RUNAWAY_ENDED: _runaway_ended,
    EventType.DANGER_DECLARATION: _danger_declaration,
    EventType.SIGNALEMENT: _signalement,
    EventType.MEDICAL_REFERRAL: _medical_referral,
    EventType.LODGING_SUSPICION_REPORT: _lodging_suspicion_report,
    EventType.ONLINE_EXPLOITATION_REPORT: _online_exploitation_report,
    EventType.JUDICIAL_REQUISITION: _judicial_requisition,
    EventType.REQUISITION_ANSWER: _requisition_answer,
    EventType.CARE_ORIENTATION: _care_orientation,
    EventType.RECEIPT: _receipt,
    EventType.REJECTION: _rejection,
    EventType.ESCALATION_NOTICE: _escalation_notice,
    EventType.PROGRESS_NOTICE: _progress_notice,
}


def sample_event(
    event_type: EventType | str,
    *,
    child_dept: str = "93",
    facts_dept: str | None = None,
    in_care: bool = False,
    guardian_dept: str | None = None,
    prostitution_suspected: bool = True,
    addressed_to: str | None = None,
    requester: str | None = None,
    case_ref: uuid.UUID | str | None = None,
    alert_sender: str | None = None,
    imminent: bool = False,
    canary: str | None = None,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """A valid, fictional record of the current schema of ``event_type``.

    ``facts_dept`` defaults to ``child_dept``; ``guardian_dept`` defaults to ``child_dept``
    for a child ``in_care`` (and stays ``None`` otherwise unless given). Parameters a type has
    no field for are ignored; ``addressed_to`` also names a receipt's recipient,
    ``alert_sender`` a rejection's or escalation's sender, and ``case_ref`` the event a
    statement is about. Give ``rng`` for a deterministic sample.
    """
    builder = _BUILDERS[EventType(event_type)]
    rng = rng if rng is not None else random.Random()  # noqa: S311 - fictional data, not secrets
    ctx = _Ctx(
        rng=rng,
        child_dept=child_dept,
        facts_dept=facts_dept if facts_dept is not None else child_dept,
        in_care=in_care,
        guardian_dept=guardian_dept if guardian_dept is not None or not in_care else child_dept,
        prostitution_suspected=prostitution_suspected,
        addressed_to=addressed_to,
        requester=requester,
        case_ref=uuid.UUID(str(case_ref)) if case_ref is not None else None,
        alert_sender=alert_sender,
        imminent=imminent,
        canary=canary,
        sex=rng.choice(("FEMALE", "FEMALE", "FEMALE", "MALE")),
    )
    return builder(ctx)
