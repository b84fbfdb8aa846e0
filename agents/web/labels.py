"""French wording of the web interface: event types, states, fields and choices.

The schemas document their fields in English (the wire contract is shared with the
partners' developers); the people who use the interface are French professionals, so every
label they read is French, in the wording of the domain (information préoccupante,
signalement, fugue, prise en charge). A field or symbol missing here falls back to a
readable form of its name, and a symbol to the description its schema gives.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = [
    "ACTION_LABELS",
    "DECLINE_LABELS",
    "EVENT_LABELS",
    "PRIORITY_LABELS",
    "ROLE_LABELS",
    "SECTION_LABELS",
    "SENT_STATE_LABELS",
    "STATE_LABELS",
    "STEP_LABELS",
    "field_label",
    "symbol_descriptions",
    "symbol_label",
]

EVENT_LABELS: Final = {
    "runaway_alert": "Fugue : alerte de disparition d'un mineur",
    "runaway_ended": "Fin de fugue : mineur retrouvé",
    "danger_declaration": "Information préoccupante",
    "signalement": "Signalement au procureur de la République",
    "medical_referral": "Signalement médical (secret levé, art. 226-14 CP)",
    "lodging_suspicion_report": "Signalement d'un hébergement suspect",
    "online_exploitation_report": "Signalement d'exploitation en ligne",
    "judicial_requisition": "Réquisition judiciaire",
    "requisition_answer": "Réponse à une réquisition",
    "care_orientation": "Orientation vers un accueil ou un soin",
}
PRIORITY_LABELS: Final = {"FLASH": "FLASH", "URGENT": "Urgent", "ROUTINE": "Ordinaire"}
STATE_LABELS: Final = {
    "delivered": "Reçu, à prendre en charge",
    "taken_in_charge": "Pris en charge",
    "declined": "Décliné",
}
SENT_STATE_LABELS: Final = {
    "queued": "En attente d'envoi (hors ligne)",
    "published": "Transmis au partenariat",
    "rejected": "Rejeté par la passerelle",
    "escalated": "Escaladé : délai de prise en charge dépassé",
    "routed": "Acheminé aux destinataires",
    "delivered": "Reçu par les destinataires",
    "declined": "Décliné par les destinataires",
    "taken_in_charge": "Pris en charge",
    "concluded": "Suite donnée",
}
STEP_LABELS: Final = {
    "routed": "Acheminé",
    "delivered": "Reçu par le destinataire",
    "taken_in_charge": "Pris en charge",
    "declined": "Décliné",
    "escalated": "Escaladé",
    "concluded": "Suite donnée",
    "pending": "En attente",
}
DECLINE_LABELS: Final = {
    "NOT_COMPETENT": "Service non compétent",
    "DUPLICATE": "Situation déjà connue (doublon)",
    "INSUFFICIENT_INFORMATION": "Informations insuffisantes pour agir",
    "OTHER_SERVICE_IN_CHARGE": "Un autre service suit déjà la situation",
}
SECTION_LABELS: Final = {
    "main": "Informations transmises",
    "identity": "Identité et localisation précise",
    "medical": "Partie médicale (secret médical)",
}
ROLE_LABELS: Final = {
    "reader": "Lecture",
    "case_officer": "Chargé de situation",
    "admin": "Administrateur",
}
ACTION_LABELS: Final = {
    "open": "Ouverture",
    "take_charge": "Prise en charge",
    "decline": "Refus",
}

_FIELDS: Final = {
    "child_dept": "Département de l'enfant",
    "facts_dept": "Département des faits",
    "in_care": "Enfant confié à l'ASE",
    "guardian_dept": "Département de l'ASE gardienne",
    "prostitution_suspected": "Prostitution ou exploitation sexuelle suspectée",
    "child": "Enfant concerné",
    "last_name": "Nom de famille",
    "first_names": "Prénoms",
    "birth_date": "Date de naissance",
    "apparent_age": "Âge apparent (ans)",
    "approximate_age": "Âge approximatif (ans)",
    "sex": "Sexe",
    "birth_place": "Lieu de naissance",
    "phone_number": "Téléphone",
    "aliases": "Surnoms et pseudonymes (un par ligne)",
    "qualification": "Qualification",
    "declared_by": "Déclarée par",
    "declared_at": "Déclarée le",
    "missing_since": "Absent depuis le",
    "last_seen_commune": "Commune où l'enfant a été vu (code INSEE)",
    "last_seen_place": "Lieu précis où l'enfant a été vu",
    "physical_description": "Description physique et tenue",
    "fpr_status": "Inscription au fichier des personnes recherchées",
    "fpr_reference": "Référence FPR",
    "previous_runaways_12_months": "Fugues connues dans les 12 derniers mois",
    "parents_informed": "Titulaires de l'autorité parentale informés",
    "parents_not_informed_reason": "Motif de non-information des parents",
    "legal_basis": "Fondement juridique",
    "indicators": "Indicateurs de prostitution observés",
    "risk_level": "Niveau de danger évalué",
    "circumstances": "Circonstances",
    "case_ref": "Référence de l'alerte",
    "alert_sender": "Service ayant déclaré la fugue",
    "found_at": "Retrouvé le",
    "found_commune": "Commune où l'enfant a été retrouvé (code INSEE)",
    "end_kind": "Fin de la fugue",
    "current_location": "Où se trouve l'enfant",
    "fpr_deletion_requested": "Radiation du FPR demandée",
    "return_interview_proposed": "Entretien de retour proposé",
    "return_interview_service": "Service chargé de l'entretien de retour",
    "medical_examination_advised": "Examen médical conseillé",
    "observations": "Observations",
    "schooling": "Scolarité",
    "reporter_name": "Nom du professionnel qui transmet",
    "reporter_role": "Fonction du professionnel",
    "reporter_function": "Fonction du professionnel",
    "reporter_phone": "Téléphone du professionnel",
    "facts_known_since": "Faits connus depuis le",
    "danger_kinds": "Nature du danger",
    "facts_summary": "Exposé des faits",
    "child_words": "Paroles de l'enfant (rapportées telles quelles)",
    "other_minors_concerned": "D'autres mineurs sont concernés",
    "child_informed": "L'enfant est informé de la transmission",
    "suspected_offences": "Infractions suspectées",
    "suspects": "Personnes mises en cause",
    "name": "Nom",
    "vehicle": "Véhicule",
    "description": "Description",
    "protection_order_requested": "Ordonnance de placement provisoire demandée",
    "prior_information_preoccupante": "Information préoccupante antérieure",
    "crip_reference": "Référence CRIP",
    "care_setting": "Lieu de prise en charge",
    "seen_at": "Examiné le",
    "hospitalised": "Hospitalisé",
    "discharge_planned_at": "Sortie prévue le",
    "forensic_examination_requested": "Examen médico-légal demandé",
    "referral_summary": "Résumé du signalement",
    "clinical_findings": "Constatations cliniques",
    "injuries": "Lésions",
    "body_region": "Région du corps",
    "kind": "Nature",
    "estimated_age_days": "Ancienneté estimée (jours)",
    "sti_tests": "Dépistages IST",
    "infection": "Infection",
    "result": "Résultat",
    "sampled_on": "Prélevé le",
    "pregnancy_test": "Test de grossesse",
    "toxicology": "Toxicologie",
    "substance": "Substance",
    "post_exposure_prophylaxis": "Traitement post-exposition",
    "psychiatric_assessment": "Évaluation psychiatrique",
    "suicidal_risk": "Risque suicidaire",
    "total_incapacity_days": "ITT (jours)",
    "physician_conclusions": "Conclusions du médecin",
    "examining_physician": "Médecin examinateur",
    "physician_rpps": "Numéro RPPS du médecin",
    "establishment_kind": "Type d'établissement",
    "establishment_name": "Nom de l'établissement",
    "address": "Adresse",
    "commune": "Commune (code INSEE)",
    "listing_ref": "Référence de l'annonce",
    "booking_ref": "Référence de la réservation",
    "check_in": "Arrivée le",
    "check_out": "Départ le",
    "booking_channel": "Canal de réservation",
    "payment_method": "Moyen de paiement",
    "booking_holder_name": "Nom du titulaire de la réservation",
    "booking_holder_phone": "Téléphone du titulaire de la réservation",
    "minors_observed": "Mineurs observés",
    "name_given": "Prénom ou nom donné",
    "observed_signs": "Signes observés",
    "observed_at": "Observé le",
    "still_on_site": "Encore sur place",
    "cctv_retained": "Images de vidéosurveillance conservées",
    "staff_contact_phone": "Téléphone du personnel à rappeler",
    "imminent": "Danger imminent",
    "platform_report_id": "Référence du signalement de la plateforme",
    "content_kinds": "Nature des contenus",
    "detection_method": "Mode de détection",
    "detected_at": "Détecté le",
    "minor_account": "Compte du mineur",
    "platform_user_id": "Identifiant sur la plateforme",
    "handle": "Pseudonyme",
    "display_name": "Nom affiché",
    "declared_age": "Âge déclaré",
    "created_at": "Créé le",
    "last_ip_country": "Pays de la dernière connexion",
    "suspect_accounts": "Comptes suspects",
    "evidence_urls": "Adresses des contenus (une par ligne)",
    "content_preserved": "Contenus conservés",
    "preserved_until": "Conservés jusqu'au",
    "content_removed": "Contenus retirés",
    "addressed_to": "Destinataire de la réquisition",
    "cpp_article": "Article du code de procédure pénale",
    "procedure_ref": "Référence de la procédure",
    "issuing_officer": "Officier requérant",
    "issuing_unit": "Service requérant",
    "authorising_magistrate": "Magistrat ayant autorisé",
    "requested_data": "Données demandées",
    "subject_identifiers": "Identifiants visés (un par ligne)",
    "period_start": "Début de la période",
    "period_end": "Fin de la période",
    "answer_deadline": "Réponse attendue avant le",
    "non_disclosure": "Interdiction d'informer la personne visée",
    "details": "Précisions",
    "requester": "Service requérant",
    "status": "Statut de la réponse",
    "answered_at": "Répondu le",
    "items": "Éléments de réponse",
    "data_kind": "Nature des données",
    "content_text": "Contenu",
    "media_type": "Type de fichier",
    "sha256_hex": "Empreinte SHA-256",
    "responder_name": "Nom du répondant",
    "responder_function": "Fonction du répondant",
    "remarks": "Remarques",
    "orientation_kind": "Type d'orientation",
    "legal_framework": "Cadre de la prise en charge",
    "requested_start": "Début souhaité le",
    "distance_placement": "Éloignement géographique",
    "child_agrees": "L'enfant est d'accord",
    "parental_authority_agrees": "Les titulaires de l'autorité parentale sont d'accord",
    "referent_name": "Référent de la situation",
    "referent_phone": "Téléphone du référent",
    "needs_summary": "Besoins de l'enfant",
}

_SYMBOLS: Final = {
    "Sex": {"FEMALE": "Féminin", "MALE": "Masculin", "UNKNOWN": "Non connu"},
    "RiskLevel": {
        "LOW": "Faible : à évaluer, pas de danger actuel identifié",
        "MODERATE": "Modéré : évaluation nécessaire sous quelques jours",
        "HIGH": "Élevé : danger grave, action sous 24 heures",
        "IMMEDIATE": "Immédiat : l'enfant est en danger maintenant",
    },
    "DisappearanceQualification": {
        "RUNAWAY": "Fugue",
        "WORRYING_DISAPPEARANCE": "Disparition inquiétante (art. 74-1 CPP)",
    },
    "Declarant": {
        "PARENT_OR_GUARDIAN": "Titulaire de l'autorité parentale ou tuteur",
        "PLACEMENT_ESTABLISHMENT": "Établissement de placement (foyer, MECS)",
        "FOSTER_CARER": "Assistant familial",
        "SCHOOL": "Établissement scolaire",
        "THIRD_PARTY": "Autre personne ou service",
    },
    "FprStatus": {
        "REGISTERED": "Inscrit au FPR",
        "REQUESTED": "Inscription demandée",
        "NOT_REGISTERED": "Non inscrit",
    },
    "ParentsNotInformedReason": {
        "CONTRARY_TO_CHILD_INTEREST": "Contraire à l'intérêt de l'enfant",
        "PARENT_SUSPECTED_INVOLVED": "Un parent est suspecté d'être impliqué",
        "PARENTS_UNREACHABLE": "Parents injoignables",
        "JUDICIAL_INVESTIGATION_SECRECY": "Secret de l'enquête demandé",
        "PARENTAL_AUTHORITY_DELEGATED": "Autorité parentale retirée ou déléguée",
        "TO_BE_INFORMED_BY_RECIPIENT": "Le destinataire les informera",
    },
    "DeclineReason": DECLINE_LABELS,
    "TestResult": {
        "POSITIVE": "Positif",
        "NEGATIVE": "Négatif",
        "PENDING": "En attente",
        "NOT_DONE": "Non réalisé",
    },
}
_SYMBOLS_RE: Final = re.compile(r"Symbols:\s*(.*)$", re.S)


def _humanise(name: str) -> str:
    text = name.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def field_label(name: str) -> str:
    """The French label of a field (its last path component)."""
    leaf = name.rsplit(".", 1)[-1]
    return _FIELDS.get(leaf, _humanise(leaf))


def symbol_descriptions(enum: dict[str, Any]) -> dict[str, str]:
    """``symbol -> description`` as the enum's doc gives them (``Symbols: A: ...; B: ...``)."""
    found = _SYMBOLS_RE.search(str(enum.get("doc", "")))
    if found is None:
        return {}
    out: dict[str, str] = {}
    symbols = set(enum.get("symbols", ()))
    for part in found.group(1).split(";"):
        name, sep, text = part.strip().partition(":")
        if sep and name.strip() in symbols:
            out[name.strip()] = text.strip().rstrip(".")
    return out


def symbol_label(enum: dict[str, Any], symbol: str) -> str:
    """The label of one choice of an enum: French when known, else the schema's words."""
    known = _SYMBOLS.get(str(enum.get("name", "")), {})
    if symbol in known:
        return known[symbol]
    described = symbol_descriptions(enum).get(symbol)
    if described:
        return described[:1].upper() + described[1:]
    return _humanise(symbol.lower())
