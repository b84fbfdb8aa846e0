"""The agent's web interface in a real headless Chromium, against a real territory.

One territory for the module: a real nats-server (``broker_launcher``), the real gateway
(``relais gateway run``) and seven real agents (``relais agent run``, each a process, four
of them serving their web interface on loopback), people created with ``relais agent users
add``. Chromium comes from the system's package manager (``/usr/bin/chromium``, installed
by ``.ci/run``) and is driven by Playwright; no browser is downloaded. The routing rules are
the packaged ones plus one selector: the specialised association also receives medical
referrals, without their medical section (it is not entitled to it), so that a person of a
partner that receives a medical referral but may not read its medical part can be shown.

Screenshots of the inbox and of an opened event are written to ``docs/screenshots/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from playwright.sync_api import sync_playwright

from relais.agents.territory import GATEWAY_ID, build_territory
from relais.broker_config.embedded import stop_process
from relais.broker_config.rules import default_rules_text
from relais.schemas.domain import EventType
from relais.schemas.registry import to_jsonable
from relais.schemas.samples import sample_event

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
PASSPHRASE = b"phrase de passe des tests web"
GEND, CRIP, SCHOOL, HOTEL = "gend-93-bobigny", "crip-93", "college-93-jaures", "hotel-93-gare"
POLICE, HOSPITAL, ASSOC = "police-93-saint-denis", "hopital-93-avicenne", "assoc-93-agir"
AGENTS = (GEND, CRIP, SCHOOL, HOTEL, POLICE, HOSPITAL, ASSOC)
WEB = (CRIP, SCHOOL, HOTEL, ASSOC)
MARKUP = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'
BOUND = 30.0
ASSOCIATION_SELECTOR = """  [[rules.recipients]]
  kind = "association"
  territory = ["child_dept"]
  why = "association spécialisée qui accompagne l'enfant (sans la partie médicale)"
"""
# (partner, username, role, extra options)
PEOPLE = [
    (CRIP, "c.martin", "case_officer", []),
    (CRIP, "a.bernard", "admin", []),
    (SCHOOL, "s.petit", "case_officer", ["--no-totp"]),
    (SCHOOL, "victime", "reader", ["--no-totp"]),
    (HOTEL, "accueil", "case_officer", ["--no-totp"]),
    (ASSOC, "l.robert", "reader", ["--no-totp"]),
]

SCRIPT_ERRORS: list[str] = []  # errors and console errors of every page, none expected

pytestmark = pytest.mark.timeout(180)


def relais(*args: str) -> list[str]:
    return [sys.executable, "-c", "from relais.cli.app import main; main()", *args]


def until(check: Any, what: str, bound: float = BOUND) -> Any:
    deadline = time.monotonic() + bound
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def rules_for_tests(packaged: str) -> str:
    marker = 'why = "CRIP du département de l\'enfant (sans la partie médicale)"\n'
    assert marker in packaged
    return packaged.replace(marker, marker + ASSOCIATION_SELECTOR, 1)


@dataclass
class Person:
    partner: str
    username: str
    role: str
    password: str
    totp_secret: str | None

    def code(self) -> str:
        return pyotp.TOTP(self.totp_secret).now() if self.totp_secret else ""


@dataclass
class World:
    root: Path
    territory: Any
    web_url: dict[str, str] = field(default_factory=dict)
    api_url: dict[str, str] = field(default_factory=dict)
    people: dict[str, Person] = field(default_factory=dict)
    broker: Any = None

    def token(self, partner: str) -> str:
        return f"jeton-api-{partner}-0123456789abcdef"

    def api(self, partner: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url[partner],
            headers={"Authorization": f"Bearer {self.token(partner)}"},
            timeout=10.0,
        )

    def post_event(self, partner: str, event_type: EventType, record: dict[str, Any]) -> str:
        with self.api(partner) as client:
            answer = client.post(f"/v1/events/{event_type.value}", json=to_jsonable(record))
        assert answer.status_code == 202, answer.text
        return str(answer.json()["event_id"])

    def in_inbox(self, partner: str, event_id: str) -> bool:
        with self.api(partner) as client:
            return client.get(f"/v1/inbox/{event_id}").status_code == 200

    def config(self, partner: str) -> Path:
        return self.root / "agents" / f"{partner}.toml"


def _write_territory(root: Path) -> Any:
    territory = build_territory()
    territory.write(root / "territory", passphrase=PASSPHRASE, opslimit=1, memlimit=8192)
    secrets_dir = root / "secrets"
    secrets_dir.mkdir(mode=0o700)
    (secrets_dir / "passphrase").write_bytes(PASSPHRASE + b"\n")
    (secrets_dir / "passphrase").chmod(0o600)
    (root / "rules.toml").write_text(rules_for_tests(default_rules_text()), encoding="utf-8")
    return territory


def _agent_config(world: World, partner: str) -> Path:
    t = world.root / "territory"
    token = world.root / "secrets" / f"{partner}.token"
    token.write_text(world.token(partner) + "\n")
    token.chmod(0o600)
    lines = [
        f'partner_id = "{partner}"',
        f'key_files = ["{t / "keys" / f"{partner}.key"}"]',
        f'passphrase_file = "{world.root / "secrets" / "passphrase"}"',
        f'root_public_key = "{t / "root.pub"}"',
        f'directory_file = "{t / "directory.json"}"',
        f'nats_url = "{world.broker.client_url}"',
        f'creds = "{t / "creds" / f"{partner}.nk"}"',
        f'data_dir = "{world.root / "agents" / partner}"',
        f'rules_file = "{world.root / "rules.toml"}"',
        f'api_token_file = "{token}"',
        "api_port = 0",
    ]
    if partner in WEB:
        lines += ["", "[web]", "enabled = true", "port = 0", "inbox_poll_seconds = 1"]
    path = world.config(partner)
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _gateway_config(world: World) -> Path:
    t, b = world.root / "territory", world.broker
    lines = [
        f'nats_url = "{b.client_url}"',
        f'monitor_url = "{b.monitor_url}"',
        f'router_creds = "{b.router_creds}"',
        f'tracker_creds = "{b.tracker_creds}"',
        f'key_file = "{t / "keys" / f"{GATEWAY_ID}.key"}"',
        f'passphrase_file = "{world.root / "secrets" / "passphrase"}"',
        f'directory_file = "{t / "directory.json"}"',
        f'root_public_key = "{t / "root.pub"}"',
        f'rules_file = "{world.root / "rules.toml"}"',
        f'data_dir = "{world.root / "gateway"}"',
        "escalation_tick_seconds = 0.2",
    ]
    path = world.root / "gateway.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _spawn(world: World, name: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (world.root / "logs" / f"{name}.log").open("wb") as log:  # the child keeps its copy
        return subprocess.Popen(relais(*args), stdout=log, stderr=subprocess.STDOUT, env=env)


def _add_people(world: World) -> None:
    procs = []
    for partner, username, role, extra in PEOPLE:
        password = f"mot-de-passe-{username}-2026"
        pw_file = world.root / "secrets" / f"{username}.pw"
        pw_file.write_text(password + "\n")
        pw_file.chmod(0o600)
        args = ["agent", "users", "add", "--config", str(world.config(partner)), username]
        args += ["--role", role, "--password-file", str(pw_file), "--json", *extra]
        proc = subprocess.Popen(relais(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append((partner, username, role, password, proc))
    for partner, username, role, password, proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        doc = json.loads(out)
        assert doc["password"] is None  # given, never echoed
        world.people[username] = Person(partner, username, role, password, doc["totp_secret"])


def _read_url(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text())["url"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, broker_launcher: Any, territory_directory: Any):
    root = tmp_path_factory.mktemp("web")
    (root / "logs").mkdir()
    world = World(root=root, territory=_write_territory(root))
    world.broker = broker_launcher(root / "broker", territory_directory(world.territory))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for partner in AGENTS:
            _agent_config(world, partner)
        _add_people(world)
        procs.append(
            _spawn(world, "gateway", "gateway", "run", "--config", str(_gateway_config(world)))
        )
        for partner in AGENTS:
            procs.append(
                _spawn(world, partner, "agent", "run", "--config", str(world.config(partner)))
            )
        for partner in AGENTS:
            data = root / "agents" / partner
            world.api_url[partner] = until(
                lambda d=data: _read_url(d / "api.json"), f"{partner} API"
            )
            if partner in WEB:
                world.web_url[partner] = until(
                    lambda d=data: _read_url(d / "web.json"), f"{partner} web"
                )

        def ready(partner: str) -> bool:
            with contextlib.suppress(httpx.HTTPError), world.api(partner) as client:
                return client.get("/readyz").status_code == 200
            return False

        for partner in AGENTS:
            until(lambda p=partner: ready(p), f"{partner} ready")
        yield world
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        stop_process(world.broker.server.pid)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():  # a failure, not a skip: CI installs it (.ci/run)
        pytest.fail(f"no Chromium at {CHROMIUM}: install it (apt-get install chromium)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def sessions(world: World, browser: Any) -> Iterator[dict[str, Any]]:
    """One logged-in page per person (each logs in once: a TOTP code is accepted once)."""
    pages: dict[str, Any] = {}
    contexts = []

    def login(username: str) -> Any:
        if username not in pages:
            person = world.people[username]
            context = browser.new_context(locale="fr-FR", viewport={"width": 1200, "height": 900})
            contexts.append(context)
            page = context.new_page()
            page.on("pageerror", lambda exc: SCRIPT_ERRORS.append(str(exc)))
            page.on("console", console_error)
            page.goto(world.web_url[person.partner] + "/inbox")
            assert page.url.endswith("/login")  # no session: the login page
            page.fill("#username", person.username)
            page.fill("#password", person.password)
            page.fill("#code", person.code())
            page.click("button[type=submit]")
            page.wait_for_url("**/inbox")
            pages[username] = page
        return pages[username]

    yield login  # type: ignore[misc]
    for context in contexts:
        context.close()


def console_error(message: Any) -> None:
    # A form refused for its fields is answered 422 by design; anything else is a fault.
    if message.type == "error" and "status of 422" not in message.text:
        SCRIPT_ERRORS.append(message.text)


def wait_row(page: Any, event_id: str) -> Any:
    row = page.locator(f'#inbox-rows tr[data-event-id="{event_id}"]')
    row.wait_for(timeout=BOUND * 1000)
    assert not SCRIPT_ERRORS
    return row


# -- the four scenarios ------------------------------------------------------------------------


def test_runaway_alert_taken_in_charge_in_the_browser(world: World, sessions: Any) -> None:
    # An URGENT event first, so that "at the top" means something.
    declaration = world.post_event(
        SCHOOL, EventType.DANGER_DECLARATION, sample_event(EventType.DANGER_DECLARATION)
    )
    until(lambda: world.in_inbox(CRIP, declaration), "the declaration at the CRIP")
    page = sessions("c.martin")
    page.goto(world.web_url[CRIP] + "/inbox")
    wait_row(page, declaration)
    alert = sample_event(EventType.RUNAWAY_ALERT)
    event_id = world.post_event(GEND, EventType.RUNAWAY_ALERT, alert)
    row = wait_row(page, event_id)  # appears without a reload
    first = page.locator("#inbox-rows tr").first
    assert first.get_attribute("data-event-id") == event_id
    assert "FLASH" in first.inner_text()
    deadline = row.locator(".deadline")
    page.wait_for_function(
        "el => el.textContent.startsWith('reste')", arg=deadline.element_handle()
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "inbox.png"))
    row.locator("a").click()
    page.wait_for_url(f"**/events/{event_id}")
    identity = page.locator("#section-identity")
    assert alert["child"]["last_name"] in identity.inner_text()
    page.screenshot(path=str(SCREENSHOTS / "event.png"), full_page=False)
    page.click("#take-charge")
    page.locator("#done").wait_for()
    assert page.locator("#state").inner_text().startswith("Pris en charge")

    def sender_sees_it() -> Any:
        with world.api(GEND) as client:
            body = client.get(f"/v1/events/{event_id}").json()
        return body if body.get("state") == "taken_in_charge" else None

    body = until(sender_sees_it, "the gendarmerie to see the alert taken in charge")
    rungs = {r["partner"]: r for r in body["ladder"]}
    assert rungs[CRIP]["state"] == "taken_in_charge"


def _fill(page: Any, values: dict[str, Any]) -> None:
    for name, value in values.items():
        field = page.locator(f'[name="{name}"]').first
        tag = field.evaluate("el => el.tagName + ':' + (el.type || '')")
        if tag.startswith("SELECT"):
            field.select_option(value)
        elif tag == "INPUT:checkbox":
            for v in value:
                page.check(f'[name="{name}"][value="{v}"]')
        else:
            field.fill(value)


DECLARATION_FORM = {
    "child_dept": "93",
    "facts_dept": "93",
    "in_care": "false",
    "prostitution_suspected": "true",
    "child.last_name": "Moreau",
    "child.first_names": "Inès",
    "child.birth_date": "2011-04-02",
    "child.sex": "FEMALE",
    "schooling": "IRREGULAR_ATTENDANCE",
    "reporter_name": "Sophie Petit",
    "reporter_role": "SCHOOL_SOCIAL_WORKER",
    "danger_kinds": ["SEXUAL_EXPLOITATION"],
    "other_minors_concerned": "false",
    "parents_informed": "true",
    "legal_basis": "CASF_L226_2_1",
    "risk_level": "HIGH",
}


def test_school_composes_a_danger_declaration(world: World, sessions: Any) -> None:
    page = sessions("s.petit")
    page.goto(world.web_url[SCHOOL] + "/compose/danger_declaration")
    assert page.locator('input[name="child.birth_date"]').get_attribute("type") == "date"
    _fill(page, DECLARATION_FORM)
    page.click("#preview")  # facts_summary left empty: the error is next to its field
    page.locator("#error-facts_summary").wait_for()
    assert page.locator('[data-field="child.last_name"] input').input_value() == "Moreau"
    _fill(page, {"facts_summary": MARKUP})
    page.click("#preview")
    recipients = page.locator("#recipients")
    recipients.wait_for()
    assert page.locator(f'#recipients li[data-partner="{CRIP}"]').count() == 1
    assert "CRIP de la Seine-Saint-Denis" in recipients.inner_text()
    page.click("#send")
    page.wait_for_url("**/sent/*")
    event_id = page.url.rsplit("/", 1)[1]
    assert CRIP in page.locator("#recipients").inner_html()
    crip = sessions("c.martin")
    crip.goto(world.web_url[CRIP] + "/inbox")
    wait_row(crip, event_id)
    # The markup is shown as text and nothing of it runs (checked in the browser).
    crip.goto(world.web_url[CRIP] + f"/events/{event_id}")
    main = crip.locator("#section-main")
    assert MARKUP in main.inner_text()
    assert main.locator("img, script").count() == 0
    assert crip.evaluate("window.__pwned") is None


LODGING_FORM = {
    "facts_dept": "93",
    "prostitution_suspected": "true",
    "establishment_kind": "HOTEL",
    "establishment_name": "Hôtel de la Gare",
    "address": "3 rue de la Gare",
    "commune": "93066",
    "check_in": "2026-12-01T22:30",
    "booking_channel": "WALK_IN",
    "payment_method": "CASH",
    "minors_observed.0.apparent_age": "15",
    "minors_observed.0.sex": "FEMALE",
    "minors_observed.0.description": "Jeune fille, veste rouge, accompagnée d'un adulte",
    "observed_signs": ["MINOR_WITH_UNRELATED_ADULT", "FREQUENT_VISITORS"],
    "observed_at": "2026-12-01T23:00",
    "still_on_site": "true",
    "cctv_retained": "true",
    "legal_basis": "CP_434_3",
    "description": "Plusieurs allées et venues d'adultes dans la nuit.",
}


def test_hotel_sends_a_lodging_report_and_sees_it_delivered(world: World, sessions: Any) -> None:
    page = sessions("accueil")
    page.goto(world.web_url[HOTEL] + "/compose/lodging_suspicion_report")
    assert page.locator('input[name="check_in"]').get_attribute("type") == "datetime-local"
    _fill(page, LODGING_FORM)
    page.click("#preview")
    page.locator("#recipients").wait_for()
    for partner in (POLICE, GEND):
        assert page.locator(f'#recipients li[data-partner="{partner}"]').count() == 1
    page.click("#send")
    page.wait_for_url("**/sent/*")
    event_id = page.url.rsplit("/", 1)[1]

    def delivered_to_both() -> bool:
        page.reload()
        states = {
            p: page.locator(f'#recipients tr[data-partner="{p}"] .step-state').inner_text()
            for p in (POLICE, GEND)
        }
        return all(s.startswith("Reçu") for s in states.values())

    until(delivered_to_both, "the hotel to see its report delivered")
    assert world.in_inbox(POLICE, event_id)
    assert world.in_inbox(GEND, event_id)


def test_association_reader_cannot_read_medical_nor_administer(world: World, sessions: Any) -> None:
    referral = sample_event(EventType.MEDICAL_REFERRAL)
    event_id = world.post_event(HOSPITAL, EventType.MEDICAL_REFERRAL, referral)
    page = sessions("l.robert")
    page.goto(world.web_url[ASSOC] + "/inbox")
    wait_row(page, event_id).locator("a").click()
    page.wait_for_url(f"**/events/{event_id}")
    page.locator("#withheld-medical").wait_for()
    assert page.locator("#section-medical").count() == 0
    assert referral["clinical_findings"] not in page.content()
    assert page.locator("#take-charge").count() == 0  # a reader does not decide
    for path in ("/admin", "/admin/access-log.jsonl", "/compose", "/sent"):
        answer = page.goto(world.web_url[ASSOC] + path)
        assert answer is not None, path
        assert answer.status == 403, path


# -- security ----------------------------------------------------------------------------------

PAGES = [
    ("GET", "/"),
    ("GET", "/inbox"),
    ("GET", "/inbox.json"),
    ("GET", "/events/0190c1a4-7a3e-7c55-8c9a-3b9f1f2e4d10"),
    ("POST", "/events/0190c1a4-7a3e-7c55-8c9a-3b9f1f2e4d10/take-charge"),
    ("POST", "/events/0190c1a4-7a3e-7c55-8c9a-3b9f1f2e4d10/decline"),
    ("GET", "/compose"),
    ("GET", "/compose/danger_declaration"),
    ("POST", "/compose/danger_declaration"),
    ("GET", "/sent"),
    ("GET", "/sent/0190c1a4-7a3e-7c55-8c9a-3b9f1f2e4d10"),
    ("GET", "/admin"),
    ("GET", "/admin/access-log.jsonl"),
]


def test_every_page_without_a_session_redirects_to_the_login(world: World) -> None:
    with httpx.Client(base_url=world.web_url[CRIP]) as client:
        for method, path in PAGES:
            answer = client.request(method, path, data={"csrf": "x"})
            assert answer.status_code == 303, path
            assert answer.headers["location"] in ("/login", "/inbox"), path
        login = client.get("/login")
        assert login.status_code == 200
        csp = login.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert login.headers["cache-control"] == "no-store"
        assert login.headers["x-content-type-options"] == "nosniff"
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def test_forms_without_their_csrf_token_are_refused(world: World) -> None:
    person = world.people["s.petit"]
    with httpx.Client(base_url=world.web_url[SCHOOL]) as client:
        client.get("/login")
        form = {"username": person.username, "password": person.password, "code": ""}
        assert client.post("/login", data=form).status_code == 403  # no token
        token = _csrf(client.get("/login").text)
        answer = client.post("/login", data={**form, "csrf": token})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/inbox"
        compose = client.get("/compose/danger_declaration")
        token = _csrf(compose.text)
        form_id = re.search(r'name="form_id" value="([0-9a-f]+)"', compose.text).group(1)
        post = {"form_id": form_id, "action": "preview", "child_dept": "93"}
        assert client.post("/compose/danger_declaration", data=post).status_code == 403
        bad = {**post, "csrf": token[:-2] + "xx"}
        assert client.post("/compose/danger_declaration", data=bad).status_code == 403
        assert client.post("/logout", data={}).status_code == 403
        good = client.post("/compose/danger_declaration", data={**post, "csrf": token})
        assert good.status_code == 422  # checked, then refused for its missing fields
        assert "Champ obligatoire" in good.text


def test_five_wrong_passwords_lock_the_account(world: World) -> None:
    person = world.people["victime"]
    with httpx.Client(base_url=world.web_url[SCHOOL]) as client:
        for _ in range(5):
            token = _csrf(client.get("/login").text)
            wrong = {"username": person.username, "password": "pas-le-bon-mot-de-passe"}
            answer = client.post("/login", data={**wrong, "csrf": token})
            assert answer.status_code == 401
            assert "incorrect" in answer.text
        token = _csrf(client.get("/login").text)
        right = {"username": person.username, "password": person.password, "csrf": token}
        answer = client.post("/login", data=right)
        assert answer.status_code == 401
        assert "verrouillé" in answer.text
    listed = subprocess.run(
        relais("agent", "users", "list", "--config", str(world.config(SCHOOL)), "--json"),
        capture_output=True,
        check=True,
    )
    state = {p["username"]: p for p in json.loads(listed.stdout)}
    assert state["victime"]["state"] == "locked"
    db = sqlite3.connect(world.root / "agents" / SCHOOL / "web.sqlite3")
    with contextlib.closing(db):
        outcomes = [
            r[0] for r in db.execute("SELECT outcome FROM login_log WHERE username = 'victime'")
        ]
        assert outcomes == ["bad_password"] * 5 + ["locked"]
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM login_log")


def test_access_log_has_one_line_per_opening_and_no_content(world: World, sessions: Any) -> None:
    alert = sample_event(EventType.RUNAWAY_ALERT, in_care=False)
    event_id = world.post_event(GEND, EventType.RUNAWAY_ALERT, alert)
    until(lambda: world.in_inbox(CRIP, event_id), "the alert at the CRIP")
    officer = sessions("c.martin")
    for _ in range(2):
        answer = officer.goto(world.web_url[CRIP] + f"/events/{event_id}")
        assert answer is not None
        assert answer.headers["cache-control"] == "no-store"
    admin = sessions("a.bernard")
    admin.goto(world.web_url[CRIP] + "/admin")
    assert "c.martin" in admin.locator("#access-log").inner_text()
    assert admin.locator("#broker").inner_text() == "connecté"
    export = admin.context.request.get(world.web_url[CRIP] + "/admin/access-log.jsonl")
    assert export.status == 200
    lines = [json.loads(line) for line in export.text().splitlines()]
    mine = [e for e in lines if e["event_id"] == event_id]
    assert [(e["username"], e["action"]) for e in mine] == [("c.martin", "open")] * 2
    assert mine[0]["sections"] == ["main", "identity"]
    secrets_of_the_child = (alert["child"]["last_name"], alert["circumstances"])
    raw = (world.root / "agents" / CRIP / "web.sqlite3").read_bytes()
    for text in secrets_of_the_child:
        assert text not in export.text()
        assert text.encode() not in raw


# -- settings (no browser) ---------------------------------------------------------------------


def test_web_settings_loopback_unless_tls(tmp_path: Path) -> None:
    from relais.agents.settings import WebSettings, load_settings
    from relais.schemas.errors import ConfigError

    assert WebSettings().enabled is False
    with pytest.raises(ValueError, match="only with TLS"):
        WebSettings(enabled=True, host="192.0.2.10")
    with pytest.raises(ValueError, match="go together"):
        WebSettings(tls_cert_file=tmp_path / "c.pem")
    served = WebSettings(
        host="192.0.2.10", tls_cert_file=tmp_path / "c", tls_key_file=tmp_path / "k"
    )
    assert served.tls
    base = [
        'partner_id = "crip-93"',
        'key_files = ["k.key"]',
        'root_public_key = "AAAA"',
        'directory_file = "d.json"',
        'creds = "c.nk"',
        'data_dir = "var"',
        "api_enabled = false",
    ]
    config = tmp_path / "agent.toml"
    tls = [
        "[web]",
        'host = "192.0.2.10"',
        'tls_cert_file = "tls/c.pem"',
        'tls_key_file = "tls/k.pem"',
    ]
    config.write_text("\n".join([*base, *tls]) + "\n")
    settings = load_settings(config)
    assert settings.web.tls_key_file == tmp_path / "tls" / "k.pem"  # relative to the file
    config.write_text("\n".join([*base, "[web]", 'host = "192.0.2.10"']) + "\n")
    with pytest.raises(ConfigError, match="only with TLS"):
        load_settings(config)
