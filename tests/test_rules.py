"""Routing table: every rule of the partnership and its invariants."""

from __future__ import annotations

import pytest

from relais.agents.territory import DEMO_PARTNERS, PartnerSpec, Territory, build_territory
from relais.broker_config.rules import (
    Decision,
    default_rules,
    default_rules_text,
    load_rules,
    with_deadline,
)
from relais.schemas.domain import EVENT_TYPES, EventType, PartnerKind, Priority
from relais.schemas.errors import Reason, RoutingError

# The demo territory (93) plus a second département (75) with its own services, so that
# "by the child's département" and "by the place of facts" give different partners.
PARIS = (
    PartnerSpec("crip-75", PartnerKind.CRIP, "CRIP de Paris", ("75",)),
    PartnerSpec("parquet-75-paris", PartnerKind.PARQUET, "Parquet de Paris", ("75",)),
    PartnerSpec(
        "police-75-brigade", PartnerKind.POLICE, "Brigade de protection des mineurs", ("75",)
    ),
    PartnerSpec("uaped-75-trousseau", PartnerKind.UAPED, "UAPED Trousseau", ("75",)),
    PartnerSpec("medref-75", PartnerKind.MEDECIN_REFERENT, "Médecin référent 75", ("75",)),
    PartnerSpec("maraude-75", PartnerKind.OUTREACH, "Maraude Paris", ("75",)),
    PartnerSpec("coord-75", PartnerKind.COORDINATION, "Coordination 75", ("75",)),
    PartnerSpec("hotel-75-nord", PartnerKind.HOTEL, "Hôtel du Nord", ("75",)),
)
NOT_MEDICAL = {
    PartnerKind.HOTEL,
    PartnerKind.RENTAL_PLATFORM,
    PartnerKind.SOCIAL_NETWORK,
    PartnerKind.SCHOOL,
    PartnerKind.ASSOCIATION,
    PartnerKind.OUTREACH,
}


@pytest.fixture(scope="module")
def territory() -> Territory:
    return build_territory((*DEMO_PARTNERS, *PARIS))


def decide(t: Territory, etype: EventType, sender: str, **routing: str) -> Decision:
    return default_rules().decide(etype, routing, sender=sender, directory=t.directory)


def kinds(t: Territory, ids: tuple[str, ...]) -> set[PartnerKind]:
    return {t.directory.get(i).kind for i in ids}  # type: ignore[union-attr]


def test_runaway_alert_not_in_care(territory: Territory) -> None:
    d = decide(
        territory,
        EventType.RUNAWAY_ALERT,
        "gend-93-bobigny",
        child_dept="93",
        facts_dept="93",
        in_care="false",
        prostitution_suspected="false",
    )
    assert d.rule_id == "runaway-alert"
    assert d.recipients == ("crip-93", "maraude-93")
    assert d.fallback == ("coord-93", "parquet-93-bobigny")
    assert d.priority is Priority.FLASH
    assert d.deadline_seconds == 900
    assert "maraude-93" not in d.audiences["identity"]  # coarse location only


def test_runaway_of_a_child_in_care_of_another_departement_reaches_both_ases(
    territory: Territory,
) -> None:
    d = decide(
        territory,
        EventType.RUNAWAY_ALERT,
        "police-93-saint-denis",
        child_dept="93",
        facts_dept="93",
        in_care="true",
        guardian_dept="75",
        prostitution_suspected="true",
    )
    assert d.recipients == ("ase-75", "ase-93", "crip-93", "maraude-93", "parquet-93-bobigny")
    assert d.fallback == ("coord-93",)  # the parquet is already a recipient
    assert set(d.audiences["identity"]) == {
        "ase-75",
        "ase-93",
        "crip-93",
        "parquet-93-bobigny",
        "coord-93",
    }


def test_police_and_parquet_by_place_of_facts_crip_by_child(territory: Territory) -> None:
    # a child of 93 whose runaway brought her to Paris
    d = decide(
        territory,
        EventType.RUNAWAY_ALERT,
        "gend-93-bobigny",
        child_dept="93",
        facts_dept="75",
        in_care="false",
        prostitution_suspected="true",
    )
    assert "crip-93" in d.recipients
    assert "crip-75" not in d.recipients
    assert "parquet-75-paris" in d.recipients
    assert "parquet-93-bobigny" not in d.recipients
    assert "maraude-75" in d.recipients
    lodging = decide(
        territory, EventType.LODGING_SUSPICION_REPORT, "hotel-75-nord", facts_dept="75"
    )
    assert lodging.recipients == ("police-75-brigade",)


def test_runaway_ended_reaches_the_declaring_service_and_closes_the_case(
    territory: Territory,
) -> None:
    d = decide(
        territory,
        EventType.RUNAWAY_ENDED,
        "hopital-93-avicenne",
        case_ref="019a79fb-ab4f-7b0c-b5db-50ccf1446bea",
        alert_sender="gend-93-bobigny",
        child_dept="93",
        facts_dept="93",
        in_care="true",
        guardian_dept="75",
        prostitution_suspected="false",
    )
    assert d.closes_case
    assert d.recipients == ("ase-75", "ase-93", "crip-93", "gend-93-bobigny", "maraude-93")


def test_danger_declaration_goes_to_the_crip_of_the_childs_departement(
    territory: Territory,
) -> None:
    d = decide(
        territory,
        EventType.DANGER_DECLARATION,
        "college-93-jaures",
        child_dept="75",
        facts_dept="93",
    )
    assert d.recipients == ("crip-75",)
    assert d.priority is Priority.URGENT
    assert d.sender_allowed


def test_every_signalement_copies_the_crip(territory: Territory) -> None:
    d = decide(territory, EventType.SIGNALEMENT, "assoc-93-agir", child_dept="93", facts_dept="75")
    assert d.recipients == ("crip-93", "parquet-75-paris")
    assert "copie obligatoire" in d.reasons["crip-93"]


def test_medical_referral_and_its_medical_section(territory: Territory) -> None:
    d = decide(
        territory,
        EventType.MEDICAL_REFERRAL,
        "hopital-93-avicenne",
        child_dept="93",
        facts_dept="93",
    )
    assert d.recipients == ("crip-93", "medref-93", "parquet-93-bobigny", "uaped-93-jean-verdier")
    assert d.audiences["medical"] == ("medref-93", "parquet-93-bobigny", "uaped-93-jean-verdier")
    assert "crip-93" not in d.audiences["medical"]


def test_medical_sections_never_reach_hotels_platforms_schools_or_associations(
    territory: Territory,
) -> None:
    entitled = set(default_rules().secrecy[next(iter(default_rules().secrecy))])
    assert not entitled & NOT_MEDICAL
    for etype in EVENT_TYPES:
        for sender in ("hopital-93-avicenne", "parquet-93-bobigny", "crip-93"):
            d = decide(
                territory,
                etype,
                sender,
                child_dept="93",
                facts_dept="93",
                in_care="true",
                guardian_dept="75",
                prostitution_suspected="true",
                addressed_to="hotel-93-gare",
                requester="parquet-93-bobigny",
                alert_sender="gend-93-bobigny",
                imminent="true",
            )
            assert not kinds(territory, d.audiences.get("medical", ())) & NOT_MEDICAL


def test_online_exploitation_imminent_is_flash(territory: Territory) -> None:
    d = decide(
        territory,
        EventType.ONLINE_EXPLOITATION_REPORT,
        "reseau-social",
        facts_dept="93",
        imminent="true",
    )
    assert d.recipients == ("cyber-ofmin", "parquet-93-bobigny")
    assert d.priority is Priority.FLASH
    calm = decide(
        territory,
        EventType.ONLINE_EXPLOITATION_REPORT,
        "reseau-social",
        child_dept="75",
        imminent="false",
    )
    assert calm.recipients == ("cyber-ofmin", "parquet-75-paris")
    assert calm.priority is Priority.URGENT


def test_online_report_without_any_departement_goes_to_triage(territory: Territory) -> None:
    d = decide(territory, EventType.ONLINE_EXPLOITATION_REPORT, "reseau-social", imminent="true")
    assert d.triage
    assert d.recipients == ("coord-75", "coord-93")  # the partnership's desks, not a broadcast
    assert kinds(territory, d.recipients) == {PartnerKind.COORDINATION}
    assert d.audiences == {}


def test_judicial_requisition_reaches_the_addressed_company_only(territory: Territory) -> None:
    d = decide(
        territory,
        EventType.JUDICIAL_REQUISITION,
        "parquet-93-bobigny",
        facts_dept="93",
        addressed_to="location-courte",
    )
    assert d.recipients == ("location-courte",)
    assert d.deadline_seconds == 172800
    # addressed to a partner that is not a company: nobody by rule, so triage
    odd = decide(
        territory,
        EventType.JUDICIAL_REQUISITION,
        "parquet-93-bobigny",
        facts_dept="93",
        addressed_to="crip-93",
    )
    assert odd.triage
    assert odd.recipients == ("coord-93",)


def test_requisition_answer_goes_back_to_the_requester_only(territory: Territory) -> None:
    d = decide(
        territory,
        EventType.REQUISITION_ANSWER,
        "location-courte",
        facts_dept="93",
        requester="parquet-93-bobigny",
    )
    assert d.recipients == ("parquet-93-bobigny",)


def test_care_orientation_goes_to_the_named_service(territory: Territory) -> None:
    d = decide(
        territory,
        EventType.CARE_ORIENTATION,
        "crip-93",
        child_dept="93",
        addressed_to="foyer-93-horizon",
    )
    assert d.recipients == ("foyer-93-horizon",)
    assert d.priority is Priority.ROUTINE


def test_sender_kind_must_be_allowed(territory: Territory) -> None:
    d = decide(
        territory,
        EventType.JUDICIAL_REQUISITION,
        "hotel-93-gare",
        facts_dept="93",
        addressed_to="location-courte",
    )
    assert not d.sender_allowed


def test_the_sender_is_never_its_own_recipient(territory: Territory) -> None:
    d = decide(territory, EventType.SIGNALEMENT, "crip-93", child_dept="93", facts_dept="93")
    assert "crip-93" not in d.recipients
    assert d.recipients == ("parquet-93-bobigny",)


def test_an_event_no_rule_covers_goes_to_triage(territory: Territory) -> None:
    text = (default_rules_text()).split("[[rules]]")[0]  # secrecy and triage, no rule at all
    rules = load_rules(text)
    d = rules.decide(
        EventType.DANGER_DECLARATION,
        {"child_dept": "93"},
        sender="college-93-jaures",
        directory=territory.directory,
    )
    assert d.triage
    assert d.recipients == ("coord-93",)
    assert "no rule" in d.reasons["coord-93"]


def test_explain_names_the_rule_and_the_reason_of_each_recipient(territory: Territory) -> None:
    d = decide(
        territory,
        EventType.MEDICAL_REFERRAL,
        "hopital-93-avicenne",
        child_dept="93",
        facts_dept="93",
    )
    rows = d.explain()
    assert {r["partner"] for r in rows} == set(d.recipients)
    assert all(r["why"] for r in rows)


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ("version = 1", "version = 0"),
        ('kind = "crip"', 'kind = "pompiers"'),
        ('territory = ["child_dept"]', 'territory = ["commune"]'),
        ('priority = "FLASH"', 'priority = "URGENTISSIME"'),
        ("deadline_seconds = 900\n", ""),  # fallback without a deadline
        ('id = "signalement"', 'id = "danger-declaration"'),
        ("[secrecy]\n", "[secrecy]\nunknown_class = []\n"),
    ],
)
def test_invalid_rules_are_refused(patch: str, needle: str) -> None:
    text = default_rules_text()
    assert patch in text
    with pytest.raises(RoutingError) as info:
        load_rules(text.replace(patch, needle, 1))
    assert info.value.reason is Reason.RULES_INVALID


def test_unreadable_rules_are_refused() -> None:
    with pytest.raises(RoutingError) as info:
        load_rules("version = [")
    assert info.value.reason is Reason.RULES_INVALID


def test_with_deadline_changes_one_rule_and_bumps_the_version() -> None:
    packaged = default_rules()
    changed = load_rules(with_deadline(default_rules_text(), "runaway-alert", 3))
    assert changed.version == packaged.version + 1
    assert changed.by_type[EventType.RUNAWAY_ALERT].deadline_seconds == 3
    for event_type, rule in packaged.by_type.items():
        if event_type is not EventType.RUNAWAY_ALERT:
            assert changed.by_type[event_type] == rule


@pytest.mark.parametrize("rule_id", ["pas-de-regle", "runaway-ended"])
def test_with_deadline_refuses_a_missing_rule_or_deadline(rule_id: str) -> None:
    with pytest.raises(RoutingError) as caught:
        with_deadline(default_rules_text(), rule_id, 3)
    assert caught.value.reason is Reason.RULES_INVALID


def test_triage_keeps_the_priority_deadline_and_fallback_of_the_rule(territory: Territory) -> None:
    # A département with no partner at all (a valid code): the runaway alert's rule finds
    # nobody, yet the alert stays FLASH with its deadline (the tracker escalates it), with
    # the coordination desks as its recipients.
    d = decide(
        territory,
        EventType.RUNAWAY_ALERT,
        "gend-93-bobigny",
        child_dept="2A",
        facts_dept="2A",
        in_care="false",
        prostitution_suspected="false",
    )
    assert d.triage
    assert d.priority is Priority.FLASH
    assert d.deadline_seconds == default_rules().by_type[EventType.RUNAWAY_ALERT].deadline_seconds
    assert kinds(territory, d.recipients) == {PartnerKind.COORDINATION}
    assert d.audiences == {}  # triage never receives secret sections
    # A rule without a deadline: triage is URGENT, without one, as before.
    none = decide(territory, EventType.DANGER_DECLARATION, "college-93-jaures", child_dept="2A")
    assert none.triage
    assert none.priority is Priority.URGENT
    assert none.deadline_seconds is None
    assert none.fallback == ()
