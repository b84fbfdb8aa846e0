"""The CRIP's case system receives new danger declarations by webhook.

The CRIP's agent runs with a ``webhook_url``: each event delivered to it is stored sealed in
its inbox, acknowledged with a signed ``DELIVERED`` receipt, then POSTed (decrypted) to the
case system with Standard Webhooks headers. The case system below checks the signature
(HMAC-SHA256 of ``id.timestamp.body`` with the shared secret), deduplicates on
``webhook-id``, opens a case, and tells the agent it takes the declaration in charge (which
sends the signed ``TAKEN_IN_CHARGE`` receipt the tracker waits for). A school's social
worker sends the declaration through its own agent (Python API).

Routing needs the gateway: without it the declaration stays on the school's ingress.

Run: ``python examples/crip_webhook_receiver.py`` (needs nothing else running).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.server
import json
import queue
import threading
from typing import Any, ClassVar

from _demo import Demo

from relais.agents.keys import write_atomic
from relais.agents.runtime import Agent
from relais.schemas.domain import EventType
from relais.schemas.samples import sample_event

CRIP = "crip-93"
SCHOOL = "college-93-jaures"
SECRET = base64.b64encode(b"secret partage CRIP / agent relais").decode()


class CaseSystem(http.server.BaseHTTPRequestHandler):
    """The CRIP's case management system (its webhook endpoint)."""

    received: ClassVar[queue.Queue[dict[str, Any]]] = queue.Queue()
    seen: ClassVar[set[str]] = set()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        webhook_id = self.headers["webhook-id"]
        signed = f"{webhook_id}.{self.headers['webhook-timestamp']}.".encode() + body
        mac = hmac.new(base64.b64decode(SECRET), signed, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(mac).decode()
        if not hmac.compare_digest(expected, self.headers["webhook-signature"]):
            self.send_response(401)
        else:
            if webhook_id not in self.seen:  # a retried call carries the same id
                self.seen.add(webhook_id)
                self.received.put(json.loads(body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CaseSystem)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/relais"
    with Demo() as demo:
        secret = demo.root / "secrets" / "webhook.secret"
        secret.parent.mkdir(mode=0o700, exist_ok=True)
        write_atomic(secret, f"whsec_{SECRET}\n".encode(), overwrite=True)
        routed = demo.start_gateway()
        url = demo.start_agent(CRIP, webhook_url=hook, webhook_secret_file=str(secret))
        async with Agent(demo.settings(SCHOOL)) as school:
            declaration = sample_event(EventType.DANGER_DECLARATION)
            sub = await school.submit(EventType.DANGER_DECLARATION, declaration)
            print(f"school: declaration {sub.event_id} sent to {', '.join(sub.recipients)}")
            try:
                document = await asyncio.to_thread(CaseSystem.received.get, True, 30)
            except queue.Empty:
                print("no webhook: " + ("" if routed else "no gateway routes events"))
                return
            data = document["data"]
            fields = data["fields"]
            print(f"case system: {document['type']} {data['event_id']} ({data['priority']})")
            print(f"  from {data['sender']}, risk {fields['risk_level']},"
                  f" dangers {', '.join(fields['danger_kinds'])}")  # fmt: skip
            with demo.client(url, CRIP) as api:
                taken = api.post(f"/v1/inbox/{data['event_id']}/take-charge")
                print(f"  case opened; take-charge: {taken.status_code} {taken.json()['state']}")
    server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
