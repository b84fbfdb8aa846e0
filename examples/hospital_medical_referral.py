"""A hospital lifts medical secrecy (art. 226-14 CP) and refers a minor, with the Python API.

The emergency department of Avicenne submits a medical referral through
``Agent.submit``: the routing rules send it to the parquet and the CRIP (and the UAPED);
the fields marked ``"secrecy": "medical"`` in the schema (clinical findings, the examining
physician...) travel in their own section, whose key is wrapped only for the partners
entitled to medical secrecy. When a gateway runs, the example then reads the referral in
the CRIP's inbox and in the parquet's: the CRIP sees the referral without any medical field.

Run: ``python examples/hospital_medical_referral.py`` (needs nothing else running).
"""

from __future__ import annotations

import asyncio
import contextlib

from _demo import Demo

from relais.agents.runtime import Agent
from relais.schemas.domain import EventType
from relais.schemas.registry import default_registry
from relais.schemas.samples import sample_event

HOSPITAL = "hopital-93-avicenne"
READERS = ("crip-93", "parquet-93-bobigny")


async def read_as(demo: Demo, partner: str, event_id: object) -> None:
    """Start ``partner``'s agent, wait for the referral in its inbox, show what it reads."""
    medical = set(default_registry().by_type("medical_referral").sections["medical"].fields)
    async with Agent(demo.settings(partner)) as agent:
        for _ in range(300):
            item = await agent.inbox_item(event_id)
            if item is not None:
                seen = sorted(medical & item.fields.keys()) or "none"
                print(f"  {partner}: sections opened {list(item.opened_sections)},")
                print(f"    withheld {list(item.withheld_sections)}; medical fields read: {seen}")
                await agent.take_charge(event_id)
                return
            await asyncio.sleep(0.1)
        print(f"  {partner}: nothing received (is the gateway running?)")


async def main() -> None:
    with Demo() as demo:
        routed = demo.start_gateway()
        referral = sample_event(EventType.MEDICAL_REFERRAL)  # fictional, with medical fields
        async with Agent(demo.settings(HOSPITAL)) as hospital:
            sub = await hospital.submit(EventType.MEDICAL_REFERRAL, referral)
            print(f"referral {sub.event_id} accepted ({sub.priority.label}, rule {sub.rule})")
            print(f"  recipients: {', '.join(sub.recipients)}")
            for _ in range(300):
                sent = await hospital.sent_event(sub.event_id)
                if sent is not None and sent.state.value != "queued":
                    print(f"  state: {sent.state.value}")
                    break
                await asyncio.sleep(0.1)
        if routed:
            print("what each recipient reads:")
            for partner in READERS:
                with contextlib.suppress(TimeoutError):
                    await read_as(demo, partner, sub.event_id)


if __name__ == "__main__":
    asyncio.run(main())
