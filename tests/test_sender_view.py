"""The sender's view of its events, end to end: a real nats-server, the real gateway (router
and tracker) and real partner agents.

The sender submits through its agent; the router routes, the recipients' agents receive,
their partners act through their local APIs, and the tracker relays every step to the sender
as signed progress notices. What the sender sees is read where its information system reads
it: ``GET /v1/events/{id}`` (the ladder of each recipient, and the state derived from them),
``GET /v1/notices`` and the webhook calls a real local HTTP server receives. Three alerts: one
taken in charge, one declined by every recipient, one escalated at its 2 s deadline and taken
in charge by the fallback; and a danger declaration whose outcome reaches the school that
declared it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from relais.agents.api import create_app
from relais.agents.keys import write_atomic
from relais.agents.runtime import Agent
from relais.agents.webhooks import sign_webhook
from relais.broker_config.rules import default_rules, default_rules_text, load_rules, with_deadline
from relais.schemas.domain import EventType
from relais.schemas.registry import to_jsonable
from relais.schemas.samples import sample_event
from relais.schemas.statements import verify_statement

GEND = "gend-93-bobigny"
CRIP = "crip-93"
MARAUDE = "maraude-93"  # the outreach team: a recipient of every runaway alert of 93
PARQUET = "parquet-93-bobigny"
COORD = "coord-93"
SCHOOL = "college-93-jaures"
CANARY = "TEMOIN-CANARI-VUE-EXPEDITEUR"
SECRET = b"secret-de-webhook-vue-expediteur"
DEADLINE_S = 2


def alert() -> dict[str, Any]:
    # Not suspected, not in care: the CRIP and the outreach team; fallback parquet, coordination.
    return sample_event(
        EventType.RUNAWAY_ALERT, prostitution_suspected=False, in_care=False, canary=CANARY
    )


class Territory:
    """The gateway and the agents of a test, each agent with an HTTP client for its API."""

    def __init__(self, kit: Any, receiver: Any) -> None:
        self.kit = kit
        self.receiver = receiver
        self.agents: dict[str, Agent] = {}
        self.clients: dict[str, httpx.AsyncClient] = {}

    def webhook(self) -> dict[str, Any]:
        path = self.kit.root / "secrets" / "sender-webhook.secret"
        if not path.exists():
            path.parent.mkdir(mode=0o700, exist_ok=True)
            write_atomic(path, SECRET + b"\n")
        return {
            "webhook_url": self.receiver.url,
            "webhook_secret_file": path,
            "webhook_backoff_initial_seconds": 0.05,
            "webhook_backoff_max_seconds": 0.2,
        }

    async def event(self, partner: str, event_id: Any) -> dict[str, Any]:
        answer = await self.clients[partner].get(f"/v1/events/{event_id}")
        assert answer.status_code == 200
        return answer.json()

    async def received(self, partner: str, event_id: Any) -> bool:
        answer = await self.clients[partner].get(f"/v1/inbox/{event_id}")
        return answer.status_code == 200

    async def state(self, partner: str, event_id: Any, *states: str) -> dict[str, Any] | None:
        """The sender's view once its state is one of ``states`` (else ``None``)."""
        view = await self.event(partner, event_id)
        return view if view["state"] in states else None

    def hooked_steps(self) -> set[tuple[str, str, str]]:
        """``(event id, partner, state)`` of every step the webhook received, verified."""
        found = set()
        for call in self.receiver.delivered():
            expected = sign_webhook(SECRET, call["id"], int(call["timestamp"]), call["body"])
            assert call["signature"] == expected
            document = json.loads(call["body"])
            if document["type"] != "relais.progress_notice":
                continue
            assert call["id"] == document["data"]["notice_id"]
            for step in document["data"]["record"]["steps"]:
                found.add((step["event_id"], step["partner"], step["state"]))
        return found


@contextlib.asynccontextmanager
async def running(
    agent_kit: Any,
    territory: Any,
    gateway_runner: Any,
    receiver: Any,
    *,
    sender: str,
    partners: tuple[str, ...],
    rules_text: str | None = None,
) -> AsyncIterator[Territory]:
    """The router and tracker, then ``sender``'s agent (with the webhook) and ``partners``'."""
    kit = await agent_kit(territory)
    rules = load_rules(rules_text) if rules_text is not None else default_rules()
    await gateway_runner(kit.broker, territory, rules=rules)
    world = Territory(kit, receiver)
    async with contextlib.AsyncExitStack() as stack:
        for partner in (sender, *partners):
            overrides = world.webhook() if partner == sender else {}
            settings = kit.settings(partner, **overrides)
            agent = await stack.enter_async_context(Agent(settings, rules=rules))
            await kit.until(lambda a=agent: a.readiness().ready, what=f"{partner} ready")
            app = create_app(agent, token=kit.token(partner).encode())
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://agent",
                    headers={"Authorization": f"Bearer {kit.token(partner)}"},
                )
            )
            world.agents[partner], world.clients[partner] = agent, client
        yield world


async def submit(world: Territory, sender: str, event_type: str, record: dict[str, Any]) -> str:
    body = to_jsonable(record)
    answer = await world.clients[sender].post(f"/v1/events/{event_type}", json=body)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["event_id"])


def rungs(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["partner"]: r for r in view["ladder"]}


async def test_alerts_taken_in_charge_and_declined(
    agent_kit, demo_territory, gateway_runner, webhook_receiver
) -> None:
    async with running(
        agent_kit,
        demo_territory,
        gateway_runner,
        webhook_receiver,
        sender=GEND,
        partners=(CRIP, MARAUDE),
    ) as world:
        taken = await submit(world, GEND, "runaway_alert", alert())
        declined = await submit(world, GEND, "runaway_alert", alert())
        for partner in (CRIP, MARAUDE):
            for event_id in (taken, declined):
                await world.kit.until(
                    lambda p=partner, e=event_id: world.received(p, e), what=f"{partner} has it"
                )
        # before anyone acts, the sender already sees both copies delivered
        view = await world.kit.until(
            lambda: world.state(GEND, taken, "delivered"), what="delivered to every recipient"
        )
        assert {r["state"] for r in view["ladder"]} == {"delivered"}
        assert (await world.clients[CRIP].post(f"/v1/inbox/{taken}/take-charge")).status_code == 202
        for partner, reason in ((CRIP, "NOT_COMPETENT"), (MARAUDE, "OTHER_SERVICE_IN_CHARGE")):
            answer = await world.clients[partner].post(
                f"/v1/inbox/{declined}/decline", json={"reason": reason}
            )
            assert answer.status_code == 202

        view = await world.kit.until(
            lambda: world.state(GEND, taken, "taken_in_charge"), what="taken in charge"
        )
        crip, maraude = rungs(view)[CRIP], rungs(view)[MARAUDE]
        assert crip["state"] == "taken_in_charge"
        assert None not in (crip["routed_at"], crip["delivered_at"], crip["taken_in_charge_at"])
        assert (crip["declined_at"], crip["escalated_at"], crip["outcome"]) == (None, None, None)
        assert maraude["state"] == "delivered"  # it has it, and has not acted
        assert maraude["routed_at"] is not None
        assert maraude["taken_in_charge_at"] is None

        view = await world.kit.until(
            lambda: world.state(GEND, declined, "declined"), what="declined by every recipient"
        )
        assert {p: (r["state"], r["decline_reason"]) for p, r in rungs(view).items()} == {
            CRIP: ("declined", "NOT_COMPETENT"),
            MARAUDE: ("declined", "OTHER_SERVICE_IN_CHARGE"),
        }
        assert all(r["declined_at"] and r["delivered_at"] for r in view["ladder"])

        # the webhook got every step of both ladders, in signed progress notices
        ladders = {
            (taken, CRIP, "ROUTED"),
            (taken, CRIP, "DELIVERED"),
            (taken, CRIP, "TAKEN_IN_CHARGE"),
            (taken, MARAUDE, "ROUTED"),
            (taken, MARAUDE, "DELIVERED"),
            (declined, CRIP, "ROUTED"),
            (declined, CRIP, "DELIVERED"),
            (declined, CRIP, "DECLINED"),
            (declined, MARAUDE, "ROUTED"),
            (declined, MARAUDE, "DELIVERED"),
            (declined, MARAUDE, "DECLINED"),
        }
        await world.kit.until(lambda: ladders <= world.hooked_steps(), what="every step hooked")
        assert {s for s in world.hooked_steps() if s[0] in (taken, declined)} == ladders
        notices = (await world.clients[GEND].get("/v1/notices", params={"limit": 200})).json()
        listed = {
            (s["event_id"], s["partner"], s["state"])
            for n in notices["items"]
            if n["kind"] == "progress_notice"
            for s in n["record"]["steps"]
        }
        assert listed == ladders
        assert all(n["record"]["signer"] == "gateway" for n in notices["items"])
        reasons = {
            s["decline_reason"]
            for n in notices["items"]
            for s in n["record"]["steps"]
            if s["state"] == "DECLINED"
        }
        assert reasons == {"NOT_COMPETENT", "OTHER_SERVICE_IN_CHARGE"}
        # ids, codes and times: nothing of the alert's content travels back
        assert CANARY not in json.dumps(notices)
        assert all(CANARY.encode() not in c["body"] for c in webhook_receiver.calls)
        statements = [
            m
            for m in await world.kit.read_stream("DELIVERY")
            if m.subject.startswith("ref.out.gend")
        ]
        assert statements
        assert all(m.data[4] == 0x05 for m in statements)
        for msg in statements:
            notice = verify_statement(msg.data, keys=demo_territory.keys())
            assert notice.event_type is EventType.PROGRESS_NOTICE
            assert notice.record["sender"] == GEND
            assert msg.headers["Nats-Msg-Id"] == f"{notice.record['notice_id']}:{GEND}"


async def test_alert_escalated_then_taken_in_charge_by_the_fallback(
    agent_kit, demo_territory, gateway_runner, webhook_receiver
) -> None:
    short = with_deadline(default_rules_text(), "runaway-alert", DEADLINE_S)
    async with running(
        agent_kit,
        demo_territory,
        gateway_runner,
        webhook_receiver,
        sender=GEND,
        partners=(CRIP, MARAUDE, PARQUET, COORD),
        rules_text=short,
    ) as world:
        event_id = await submit(world, GEND, "runaway_alert", alert())
        # nobody takes it in charge: at its deadline it goes to the fallback recipients
        view = await world.kit.until(
            lambda: world.state(GEND, event_id, "escalated"), what="escalated"
        )
        await world.kit.until(lambda: world.received(PARQUET, event_id), what="parquet has it")
        answer = await world.clients[PARQUET].post(f"/v1/inbox/{event_id}/take-charge")
        assert answer.status_code == 202

        async def settled() -> dict[str, Any] | None:
            view = await world.state(GEND, event_id, "taken_in_charge")
            coord = rungs(view).get(COORD) if view else None
            return view if coord and coord["delivered_at"] else None

        view = await world.kit.until(settled, what="taken by the fallback, both fallbacks have it")
        ladder = rungs(view)
        assert [r["partner"] for r in view["ladder"]][:2] == [CRIP, MARAUDE]
        for partner in (CRIP, MARAUDE):
            rung = ladder[partner]
            assert rung["role"] == "recipient"
            assert rung["state"] == "delivered"
            assert rung["escalated_to"] == [COORD, PARQUET]
            assert rung["escalated_at"] is not None
            assert rung["delivered_at"] is not None
            assert rung["routed_at"] <= rung["escalated_at"]  # both on the gateway's clock
        parquet = ladder[PARQUET]
        assert parquet["role"] == "fallback"
        assert parquet["state"] == "taken_in_charge"
        assert parquet["routed_at"] == ladder[CRIP]["escalated_at"]  # released on escalation
        assert parquet["delivered_at"] is not None
        assert parquet["taken_in_charge_at"] is not None
        assert (ladder[COORD]["role"], ladder[COORD]["state"]) == ("fallback", "delivered")
        expected = {
            (event_id, CRIP, "ROUTED"),
            (event_id, CRIP, "DELIVERED"),
            (event_id, CRIP, "ESCALATED"),
            (event_id, MARAUDE, "ROUTED"),
            (event_id, MARAUDE, "DELIVERED"),
            (event_id, MARAUDE, "ESCALATED"),
            (event_id, PARQUET, "ROUTED"),
            (event_id, PARQUET, "DELIVERED"),
            (event_id, PARQUET, "TAKEN_IN_CHARGE"),
            (event_id, COORD, "ROUTED"),
            (event_id, COORD, "DELIVERED"),
        }
        await world.kit.until(lambda: expected <= world.hooked_steps(), what="the ladder hooked")
        types = {json.loads(c["body"])["type"] for c in webhook_receiver.delivered()}
        assert types == {"relais.progress_notice", "relais.escalation_notice"}
        hooked = [
            s
            for c in webhook_receiver.delivered()
            if json.loads(c["body"])["type"] == "relais.progress_notice"
            for s in json.loads(c["body"])["data"]["record"]["steps"]
            if s["state"] == "ESCALATED"
        ]
        assert {s["partner"] for s in hooked} == {CRIP, MARAUDE}
        assert all(s["escalated_to"] == [COORD, PARQUET] for s in hooked)


async def test_danger_declaration_outcome_reaches_the_declarant(
    agent_kit, demo_territory, gateway_runner, webhook_receiver
) -> None:
    async with running(
        agent_kit,
        demo_territory,
        gateway_runner,
        webhook_receiver,
        sender=SCHOOL,
        partners=(CRIP,),
    ) as world:
        record = sample_event(EventType.DANGER_DECLARATION, canary=CANARY)
        event_id = await submit(world, SCHOOL, "danger_declaration", record)
        await world.kit.until(lambda: world.received(CRIP, event_id), what="the CRIP has it")
        crip = world.clients[CRIP]
        early = await crip.post(
            f"/v1/inbox/{event_id}/conclude", json={"outcome": "NO_DANGER_FOUND"}
        )
        assert early.status_code == 409  # not taken in charge yet
        await world.agents[CRIP].take_charge(event_id, outcome="ASSESSMENT_UNDER_WAY")
        view = await world.kit.until(
            lambda: world.state(SCHOOL, event_id, "taken_in_charge"), what="assessment under way"
        )
        assert rungs(view)[CRIP]["outcome"] == "ASSESSMENT_UNDER_WAY"
        bad = await crip.post(f"/v1/inbox/{event_id}/conclude", json={"outcome": "PEUT-ETRE"})
        assert bad.status_code == 422
        concluded = await crip.post(
            f"/v1/inbox/{event_id}/conclude", json={"outcome": "SIGNALEMENT_TO_PARQUET"}
        )
        assert concluded.status_code == 202
        again = await crip.post(
            f"/v1/inbox/{event_id}/conclude", json={"outcome": "SIGNALEMENT_TO_PARQUET"}
        )
        assert again.status_code == 202  # the same decision again changes nothing
        other = await crip.post(
            f"/v1/inbox/{event_id}/conclude", json={"outcome": "NO_DANGER_FOUND"}
        )
        assert other.status_code == 409
        item = (await crip.get(f"/v1/inbox/{event_id}")).json()
        assert (item["state"], item["outcome"]) == ("taken_in_charge", "SIGNALEMENT_TO_PARQUET")

        view = await world.kit.until(
            lambda: world.state(SCHOOL, event_id, "concluded"),
            what="the outcome reaches the school",
        )
        rung = rungs(view)[CRIP]
        assert (rung["state"], rung["outcome"]) == ("concluded", "SIGNALEMENT_TO_PARQUET")
        assert rung["concluded_at"] is not None
        assert rung["taken_in_charge_at"] is not None
        steps = {
            (event_id, CRIP, state)
            for state in ("ROUTED", "DELIVERED", "TAKEN_IN_CHARGE", "CONCLUDED")
        }
        await world.kit.until(lambda: steps <= world.hooked_steps(), what="the outcome hooked")
        outcomes = {
            s["outcome"]
            for c in webhook_receiver.delivered()
            for s in json.loads(c["body"])["data"]["record"].get("steps", ())
            if s["state"] in ("TAKEN_IN_CHARGE", "CONCLUDED")
        }
        assert outcomes == {"ASSESSMENT_UNDER_WAY", "SIGNALEMENT_TO_PARQUET"}
        assert all(CANARY.encode() not in c["body"] for c in webhook_receiver.calls)
