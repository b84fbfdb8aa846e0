"""Watch: the alerting rules, the gateway's watch gauges, and the Nagios-style checks.

* ``promtool check rules`` accepts ``deploy/prometheus/relais-rules.yml``, and the Grafana
  dashboard only uses metrics that the gateway or the agents export;
* against a real broker and gateway (router, tracker, checkpointer, keeper): a FLASH runaway
  alert nobody takes in charge passes its (1 s) deadline; the gateway's real ``/metrics`` is
  scraped over HTTP, and ``promtool test rules`` evaluates the ``RelaisFlashOverdue`` rule on
  the series of that scrape: it fires. ``relais overdue --check`` then exits 2 with one line
  that has the count and neither the event id nor any content;
* ``judge_broker`` maps health, fsync and storage to OK, WARNING and CRITICAL.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from relais.broker_config.embedded import BrokerStatus
from relais.broker_config.rules import default_rules_text, load_rules, with_deadline
from relais.broker_config.streams import StreamStatus
from relais.cli._checks import judge_broker
from relais.cli.app import app
from relais.gateway import metrics
from relais.gateway.keeper import Keeper, KeeperConfig
from relais.gateway.policy import Policy
from relais.gateway.service import publish_directory
from relais.schemas.domain import EventType
from relais.schemas.envelope import peek_header
from relais.schemas.samples import sample_event

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "relais-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "relais-dashboard.json"
GEND = "gend-93-bobigny"
CANARY = "TEMOIN-CANARI-VEILLE-13"
BOUND = 30.0
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (.ci/run installs Debian's prometheus)"
)


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    done = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def _exported_names() -> set[str]:
    """Every metric name the gateway and an agent expose (counters with ``_total``)."""
    from relais.agents.metrics import AgentMetrics

    names = set()
    for registry in (metrics.REGISTRY, AgentMetrics().registry):
        for family in registry.collect():
            names.add(family.name)
            names.add(family.name + "_total")
    return names


def test_dashboard_and_rules_use_exported_metrics() -> None:
    exported = _exported_names()
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = RULES.read_text(encoding="utf-8").splitlines()
    exprs.extend(line for line in rules if not line.lstrip().startswith("#"))
    used = {m for e in exprs for m in re.findall(r"\brelais_[a-z_]+", e)}
    assert used, "no relais metric referenced"
    assert used <= exported, sorted(used - exported)


def test_judge_broker() -> None:
    stream = StreamStatus("INGRESS", 1, 10, 1, 1, None)

    def status(**over: Any) -> BrokerStatus:
        values: dict[str, Any] = {
            "client_url": "nats://127.0.0.1:1",
            "monitor_url": "http://127.0.0.1:2",
            "healthy": True,
            "sync_always": True,
            "version": "2.15.1",
            "streams": (stream,),
        }
        values.update(over)
        return BrokerStatus(**values)

    assert judge_broker(status(), {"INGRESS": 0.1})[0] == 0
    assert judge_broker(status(sync_always=None), {})[0] == 1
    assert judge_broker(status(), {"INGRESS": 0.85})[0] == 1
    code, line = judge_broker(status(sync_always=False), {"INGRESS": 0.97})
    assert code == 2
    assert line.startswith("BROKER CRITICAL - ")
    assert "\n" not in line


def _scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def _promtool_test(tmp_path: Path, series: list[tuple[dict[str, str], float]]) -> Any:
    """``promtool test rules``: the scraped series, as a scrape every minute, must fire."""
    inputs = []
    for labels, value in series:
        selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        inputs.append(
            {
                "series": f"relais_tracker_overdue_events{{{selector}}}",
                "values": f"{value:g}x5",
            }
        )
    flash = max(v for labels, v in series if labels.get("priority") == "FLASH")
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [
                    {
                        "eval_time": "2m",
                        "alertname": "RelaisFlashOverdue",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical"},
                                "exp_annotations": {
                                    "summary": f"{flash:g} FLASH event(s) past their deadline,"
                                    " nobody took them in charge",
                                    "runbook": "relais overdue (then relais trace EVENT_ID);"
                                    " the fallback recipients were alerted",
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "overdue-test.yml"
    path.write_text(json.dumps(test), encoding="utf-8")  # JSON is YAML
    return subprocess.run(
        [str(PROMTOOL), "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )


@needs_promtool
async def test_overdue_alert_from_the_real_metrics(
    tmp_path, broker_factory, territory_directory, demo_territory, gateway_runner, sealer
) -> None:
    t = demo_territory
    broker = await broker_factory(territory_directory(t))
    rules = load_rules(with_deadline(default_rules_text(), "runaway-alert", 1))
    run = await gateway_runner(broker, t, rules=rules, checkpoint_seconds=0.5)
    policy = Policy(t.directory, rules)
    assert await publish_directory(run.conn, t.signed_directory, policy, t.root_public_key)
    keeper = Keeper(
        run.conn, run.store, lambda: policy, config=KeeperConfig(monitor_url=broker.monitor_url)
    )
    record = sample_event(
        EventType.RUNAWAY_ALERT, canary=CANARY, in_care=False, prostitution_suspected=False
    )
    envelope = sealer(t, EventType.RUNAWAY_ALERT, record, sender=GEND, rules=rules)
    event_id = str(peek_header(envelope).event_id)
    conn = await broker.partner(GEND)
    try:
        await conn.js_publish(f"ref.in.{GEND}", envelope, msg_id=event_id)
    finally:
        await conn.close()

    async def overdue() -> bool:
        await keeper.step()
        return metrics.TRACKER_OVERDUE.labels("FLASH")._value.get() >= 1

    deadline = asyncio.get_running_loop().time() + BOUND
    while not await overdue():
        assert asyncio.get_running_loop().time() < deadline, "the alert never became overdue"
        await asyncio.sleep(0.1)

    server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.REGISTRY)
    try:
        scraped = await asyncio.to_thread(_scrape, server.server_port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    series = scraped["relais_tracker_overdue_events"]
    assert any(labels.get("priority") == "FLASH" and v >= 1 for labels, v in series)
    assert scraped["relais_broker_sync_always"][0][1] == 1
    done = await asyncio.to_thread(_promtool_test, tmp_path, series)
    assert done.returncode == 0, done.stdout + done.stderr

    args = [
        "overdue",
        "--check",
        "-s",
        broker.client_url,
        "--creds",
        str(broker.operator_creds),
    ]
    env = {"RELAIS_SERVER": None, "NATS_URL": None, "RELAIS_CREDS": None}
    result = await asyncio.to_thread(CliRunner().invoke, app, args, env=env, prog_name="relais")
    assert result.exit_code == 2, result.output
    line = result.stdout.strip()
    assert line.startswith("OVERDUE CRITICAL - 1 overdue (FLASH=1 URGENT=0 ROUTINE=0)"), line
    assert "\n" not in line
    assert event_id not in result.output
    assert CANARY not in result.output
