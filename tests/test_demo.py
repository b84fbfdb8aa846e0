"""``relais demo``: the main job on the embedded default, run as a user runs it.

Every test runs the real command in a subprocess (its own nats-server, gateway and agents),
from a directory outside the repository, with ``TMPDIR`` pointing into the test's own
directory so that what the demo leaves behind (or not) can be seen.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BOUND = 120.0  # upper bound of a run, not a performance target
MEDICAL_ENTITLED = {"parquet-93-bobigny", "uaped-93-jean-verdier", "medref-93"}


def relais_command(python: Path | str = sys.executable) -> list[str]:
    """The ``relais`` console script of ``python``'s environment."""
    beside = Path(python).with_name("relais")
    return [str(beside)] if beside.exists() else [str(python), "-m", "relais.cli.app"]


def demo_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAIS_")}
    env["TMPDIR"] = str(tmp)
    env["COLUMNS"] = "160"
    return env


def nats_servers_under(path: Path) -> list[int]:
    """Live (non-zombie) nats-server processes whose command line mentions ``path``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"nats-server" in cmdline and str(path).encode() in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A working directory outside the repository, and a TMPDIR inside it, checked after."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "cwd").mkdir()
    try:
        yield tmp_path
    finally:
        leftovers = nats_servers_under(tmp_path)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        assert not leftovers, f"nats-server processes left running: {leftovers}"


def run_demo(root: Path, *args: str, python: Path | str = sys.executable) -> Any:
    return subprocess.run(
        [*relais_command(python), "demo", *args],
        cwd=root / "cwd",
        env=demo_env(root / "tmp"),
        capture_output=True,
        timeout=BOUND,
        check=False,
    )


def check_document(doc: dict[str, Any]) -> None:
    """The invariants the issue asks for, and the counts the scenario implies."""
    assert doc["ok"] is True, doc["failures"]
    assert doc["failures"] == []
    assert doc["unauthorized_section_reads"] == 0
    assert doc["entitled_sections_withheld"] == 0
    assert doc["lost"] == 0
    assert doc["misdelivered"] == 0
    assert doc["receipts_missing"] == 0
    assert doc["escalations"] >= 1
    assert doc["quarantined"] >= 1
    assert doc["audit"]["ok"] is True

    flows = doc["flows"]
    assert doc["events"] == len(flows) == 9
    assert doc["routed"] == 8
    assert [f["event_type"] for f in flows] == [
        "runaway_alert",
        "medical_referral",
        "danger_declaration",
        "lodging_suspicion_report",
        "judicial_requisition",
        "requisition_answer",
        "runaway_alert",
        "runaway_alert",
        "runaway_ended",
    ]
    # every recipient the rules give, and every fallback once escalated, holds the event
    expected = 0
    for flow in flows:
        if flow["state"] == "quarantined":
            assert flow["delivered"] == {}
            assert flow["released"] == {}
            continue
        assert sorted(flow["delivered"]) == sorted(flow["recipients"]), flow["step"]
        expected += len(flow["recipients"])
        if flow["escalation"] is not None:
            assert sorted(flow["released"]) == sorted(flow["fallback"])
            expected += len(flow["fallback"])
    assert doc["deliveries"] == expected == 23
    taken = sum(len(f["taken_in_charge"]) for f in flows)
    assert doc["taken_in_charge"] == taken == 7

    alert, medical, danger, lodging, requisition, answer, unanswered, forged, ended = flows
    assert alert["priority"] == "FLASH"
    assert alert["channel"] == "local HTTP API"
    assert {"crip-93", "ase-75", "ase-93"} <= set(alert["recipients"])  # guardian ASE of 75
    assert alert["state"] == "closed"
    assert alert["closed_by"] == ended["step"]
    assert list(alert["taken_in_charge"]) == ["crip-93"]
    assert danger["recipients"] == ["crip-93"]
    assert lodging["sender"] == "hotel-93-gare"
    assert "police-93-saint-denis" in lodging["recipients"]
    assert requisition["recipients"] == ["location-courte"]
    assert list(requisition["taken_in_charge"]) == ["location-courte"]
    assert answer["sender"] == "location-courte"
    assert answer["recipients"] == ["parquet-93-bobigny"]

    escalation = unanswered["escalation"]
    assert unanswered["state"] == "escalated"
    assert unanswered["priority"] == "FLASH"
    assert unanswered["taken_in_charge"] == {}
    assert escalation["released"] is True
    assert escalation["notice_to_sender"] is True
    assert sorted(escalation["fallback"]) == ["coord-93", "parquet-93-bobigny"]
    assert escalation["after_ms"] >= 1000 * doc["rules"]["runaway_alert_deadline_seconds"]

    assert forged["state"] == "quarantined"
    assert forged["quarantine"]["reason"] == "UNKNOWN_KEY"
    assert forged["quarantine"]["claimed_sender"] == "gend-93-bobigny"
    assert forged["quarantine"]["authenticated_sender"] == "hotel-93-gare"
    assert forged["quarantine"]["rejection_reason"] == "UNKNOWN_KEY"

    # one read per delivery; the medical section and its planted marker only where entitled
    reads = doc["reads"]
    assert len(reads) == doc["deliveries"]
    medical_reads = {r["partner"]: r for r in reads if r["step"] == medical["step"]}
    assert set(medical_reads) == set(medical["recipients"])
    for partner, read in medical_reads.items():
        entitled = partner in MEDICAL_ENTITLED
        assert ("medical" in read["opened"]) is entitled, partner
        assert read["canary_seen"] is entitled, partner
    assert medical_reads["crip-93"]["withheld"] == ["medical"]
    outreach = [r for r in reads if r["partner"] == "maraude-93"]
    assert outreach
    assert all(r["withheld"] == ["identity"] for r in outreach)


def test_demo_json(outside: Path) -> None:
    """``relais demo --json``: one JSON document, the invariants, nothing left behind."""
    result = run_demo(outside, "--json")
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    doc = json.loads(result.stdout)  # nothing else on stdout
    check_document(doc)
    assert doc["data_dir"] is None
    assert list((outside / "tmp").iterdir()) == []  # the temporary data directory is gone
    assert nats_servers_under(outside) == []


def test_demo_tables_and_kept_data_dir(outside: Path) -> None:
    """Without ``--json``: the flow table and what each recipient could read; ``--data-dir``
    keeps the data, and the broker is stopped all the same."""
    data = outside / "data"
    result = run_demo(outside, "--data-dir", str(data))
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()[-3000:] + out[-3000:]
    assert "what each recipient's agent could decrypt" in out
    assert "quarantined UNKNOWN_KEY" in out
    assert "ESCALATED" in out
    assert "every check passed" in out
    assert "TEMOIN-SECRET-MEDICAL" not in out + result.stderr.decode()  # never shown as content
    assert (data / "broker" / "store").is_dir()
    assert (data / "agents" / "crip-93" / "agent.sqlite3").is_file()
    assert not (data / "broker" / "nats-server.pid").exists()
    assert nats_servers_under(outside) == []
    again = run_demo(outside, "--json", "--data-dir", str(data))
    assert again.returncode == 2  # a directory holding data is not reused
    assert again.stdout == b""


def wait_for(check: Any, what: str, proc: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        assert proc.poll() is None, f"the demo exited ({proc.returncode}) before {what}"
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def read_until(proc: subprocess.Popen[bytes], marker: bytes) -> bytes:
    seen = b""
    assert proc.stdout is not None
    while marker not in seen:
        chunk = proc.stdout.readline()
        assert chunk, f"the demo's output ended before {marker!r}"
        seen += chunk
    return seen


@pytest.mark.parametrize("phase", ["starting", "playing"])
def test_sigint_stops_everything(outside: Path, phase: str) -> None:
    """Ctrl-C while the agents start, or in the middle of the scenario: exit 130, the
    nats-server stopped, the temporary data directory removed."""
    with subprocess.Popen(
        [*relais_command(), "demo"],
        cwd=outside / "cwd",
        env=demo_env(outside / "tmp"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            root = wait_for(
                lambda: next((outside / "tmp").glob("relais-demo-*"), None), "its data dir", proc
            )
            wait_for(lambda: (root / "broker" / "broker.json").exists(), "the broker", proc)
            server = int((root / "broker" / "nats-server.pid").read_text())
            assert nats_servers_under(outside) == [server]
            if phase == "starting":
                wait_for(lambda: (root / "agents").is_dir(), "the agents", proc)
            else:
                read_until(proc, b"what each recipient's agent could decrypt")
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=BOUND)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err.decode()[-3000:]
    assert b"interrupted" in err
    assert nats_servers_under(outside) == []
    assert not root.exists()


@pytest.mark.slow
def test_pip_install_in_a_new_environment(outside: Path) -> None:
    """README: ``pip install .`` in a fresh virtual environment, then ``relais demo --json``
    from a directory outside the repository."""
    source = outside / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", "venv", "build", "dist", ".git", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    venv = outside / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=BOUND)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr.decode()[-3000:]
    where = subprocess.run(
        [str(python), "-c", "import relais.cli.demo as m; print(m.__file__)"],
        cwd=outside / "cwd",
        capture_output=True,
        check=True,
        timeout=BOUND,
    )
    assert Path(where.stdout.decode().strip()).is_relative_to(venv)  # not the checkout
    result = run_demo(outside, "--json", python=python)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    doc = json.loads(result.stdout)
    check_document(doc)
    assert list((outside / "tmp").iterdir()) == []


def test_demo_rules_change_only_the_runaway_deadline() -> None:
    from relais.broker_config.rules import default_rules, load_rules
    from relais.cli._demo_world import demo_rules_text

    packaged, demo = default_rules(), load_rules(demo_rules_text(3))
    assert demo.version == packaged.version + 1
    for rule in packaged.rules:
        changed = demo.by_type[rule.event_type]
        if rule.id == "runaway-alert":
            assert changed.deadline_seconds == 3
            assert changed.model_copy(update={"deadline_seconds": 900}) == rule
        else:
            assert changed == rule
    assert demo.secrecy == packaged.secrecy


def test_read_check_counts_a_section_read_without_entitlement() -> None:
    """The check behind ``unauthorized_section_reads`` fails when a recipient's decrypted
    fields hold a section (or the planted marker) its kind is not entitled to."""
    import uuid

    from relais.agents.models import InboxItem, InboxState
    from relais.agents.territory import build_territory
    from relais.broker_config.rules import default_rules
    from relais.cli._demo_checks import check_read
    from relais.cli._demo_scenario import CANARY
    from relais.schemas.domain import EventType, Priority
    from relais.schemas.registry import default_registry

    directory, rules = build_territory().directory, default_rules()
    medical = default_registry().by_type(EventType.MEDICAL_REFERRAL).sections["medical"]
    marker = f"{CANARY}-medical"

    def read(partner: str, fields: dict[str, Any], opened: tuple[str, ...]) -> Any:
        item = InboxItem(
            seq=1,
            event_id=uuid.uuid4(),
            event_type=EventType.MEDICAL_REFERRAL,
            priority=Priority.URGENT,
            sender="hopital-93-avicenne",
            rule=None,
            escalation=None,
            received_at_ms=0,
            created_at_ms=0,
            state=InboxState.DELIVERED,
            decline_reason=None,
            fields=fields,
            opened_sections=opened,
            withheld_sections=(),
        )
        return check_read(2, partner, item, directory=directory, rules=rules, canary=marker)

    leaked = {medical.fields[0]: f"x {marker}"}
    assert read("crip-93", leaked, ("main",)).unauthorized == ("medical",)
    assert read("crip-93", {"free_text": marker}, ("main",)).unauthorized == ("medical",)
    assert read("crip-93", {}, ("main", "medical")).unauthorized == ("medical",)
    assert read("crip-93", {}, ("main",)).unauthorized == ()
    withheld = read("parquet-93-bobigny", {}, ("main",))
    assert withheld.missing == ("medical",)
    assert withheld.unauthorized == ()
    entitled = read("parquet-93-bobigny", leaked, ("main", "medical"))
    assert entitled.unauthorized == ()
    assert entitled.canary_seen is True
