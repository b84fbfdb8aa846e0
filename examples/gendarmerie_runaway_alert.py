"""A gendarmerie records system declares a runaway through its agent's local HTTP API.

The brigade of Bobigny registers a runaway (fugue) of a minor in care; its records system
POSTs the alert as JSON to the agent on loopback, with the FPR registration as the
``Idempotency-Key`` (a retry after a timeout answers the same event, and queues nothing
new). The agent validates it against the Avro schema, computes the recipients from the
routing rules (CRIP, guardian ASE, parquet since prostitution is suspected, the outreach
team with the coarse location only), seals it and answers ``202`` once it is durable; it is
published in the background and then routed by the gateway (if one runs).

Run: ``python examples/gendarmerie_runaway_alert.py`` (needs nothing else running).
"""

from __future__ import annotations

import datetime as dt
import time

from _demo import Demo

GENDARMERIE = "gend-93-bobigny"


def runaway_alert() -> dict[str, object]:
    """The alert as the records system sends it (JSON, ISO dates; fictional)."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return {
        "child_dept": "93",
        "facts_dept": "93",
        "in_care": True,
        "guardian_dept": "75",
        "prostitution_suspected": True,
        "child": {
            "last_name": "Martin",
            "first_names": "Léa Camille",
            "birth_date": "2010-03-14",
            "sex": "FEMALE",
            "aliases": ["lili93"],
        },
        "qualification": "RUNAWAY",
        "declared_by": "PLACEMENT_ESTABLISHMENT",
        "declared_at": now.isoformat(),
        "missing_since": (now - dt.timedelta(hours=6)).isoformat(),
        "last_seen_commune": "93066",
        "last_seen_place": "gare routière",
        "physical_description": "1 m 60, cheveux bruns, doudoune noire, sac à dos rose",
        "fpr_status": "REQUESTED",
        "previous_runaways_12_months": 3,
        "parents_informed": False,
        "parents_not_informed_reason": "PARENTAL_AUTHORITY_DELEGATED",
        "legal_basis": "CPP_74_1",
        "indicators": ["REPEATED_RUNAWAYS", "OLDER_ENTOURAGE", "HOTEL_OR_SHORT_LET_STAYS"],
        "risk_level": "HIGH",
        "circumstances": "Partie du foyer après un appel; vue montant dans une voiture.",
    }


def main() -> None:
    with Demo() as demo:
        routed = demo.start_gateway()
        url = demo.start_agent(GENDARMERIE)
        with demo.client(url, GENDARMERIE) as api:
            alert = runaway_alert()
            headers = {"Idempotency-Key": "FPR-93-2025-004211"}
            answer = api.post("/v1/events/runaway_alert", json=alert, headers=headers)
            answer.raise_for_status()
            sent = answer.json()
            print(f"202 Accepted: event {sent['event_id']} ({sent['priority']})")
            print(f"  recipients: {', '.join(sent['recipients'])}")
            print(f"  released to {', '.join(sent['fallback'])} if not taken in charge in time")
            again = api.post("/v1/events/runaway_alert", json=alert, headers=headers)
            print(f"same Idempotency-Key again: same event {again.json()['event_id']}")
            broken = {**alert, "risk_level": "EXTREME"}
            refused = api.post("/v1/events/runaway_alert", json=broken)
            problem = refused.json()
            print(f"invalid alert: {refused.status_code} {problem['reason']}, fields:",
                  [e["field"] for e in problem["errors"]])  # fmt: skip
            deadline = time.monotonic() + 30
            state = {}
            while time.monotonic() < deadline:
                state = api.get(f"/v1/events/{sent['event_id']}").json()
                if state["state"] != "queued":
                    break
                time.sleep(0.1)
            print(f"state: {state['state']} (published at {state['published_at']})")
        if routed:
            print("the gateway routes it to each recipient's FLASH subject")


if __name__ == "__main__":
    main()
