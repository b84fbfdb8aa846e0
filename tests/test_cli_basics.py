"""The first operator commands: schemas check/list (``relais demo``: tests/test_demo.py)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from relais.cli.app import app

runner = CliRunner()


def test_schemas_check_passes_on_the_packaged_schemas() -> None:
    result = runner.invoke(app, ["schemas", "check", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"ok": True, "problems": []}


def test_schemas_list_json() -> None:
    result = runner.invoke(app, ["schemas", "list", "--json"])
    assert result.exit_code == 0
    rows = {r["event_type"]: r for r in json.loads(result.output)}
    assert rows["medical_referral"]["sections"] == ["main", "medical"]
    assert rows["danger_declaration"]["earlier_versions"] == [1]
    assert all(len(r["fingerprint"]) == 64 for r in rows.values())
