"""Agent settings, secrets, key rotation choices, the OpenAPI document and its check.

No broker here: settings files and environment variables, the permission checks of secret
files, which key signs during a rotation, and ``relais agent openapi [--check]``.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from relais.agents.keyring import Keyring
from relais.agents.keys import PartnerKeys, read_root_public_key, write_atomic
from relais.agents.settings import (
    load_settings,
    read_api_token,
    read_webhook_secret,
)
from relais.broker_config.directory import (
    add_key,
    new_partner_key,
    revoke_key,
    revoke_partner,
    utc_now,
)
from relais.cli.agent_cmd import app, render_openapi
from relais.schemas.errors import ConfigError, EnvelopeError, Reason

ROOT = Path(__file__).resolve().parent.parent
TOML = """
partner_id = "crip-93"
key_files = ["keys/crip-93.key", "keys/crip-93-2026.key"]
passphrase_file = "keys/pass"
root_public_key = "root.pub"
directory_file = "directory.json"
creds = "creds/crip-93.nk"
data_dir = "var"
api_token_file = "token"
webhook_url = "https://si.crip93.example/relais"
webhook_secret_file = "webhook.secret"
"""


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("RELAIS_AGENT_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_toml_file_relative_paths_and_env_precedence(tmp_path, clean_env) -> None:
    (tmp_path / "root.pub").write_text("AAAA\n")
    config = tmp_path / "agent.toml"
    config.write_text(TOML)
    settings = load_settings(config)
    assert settings.partner_id == "crip-93"
    assert settings.key_files == (tmp_path / "keys/crip-93.key", tmp_path / "keys/crip-93-2026.key")
    assert settings.data_dir == tmp_path / "var"
    assert settings.root_public_key == str(tmp_path / "root.pub")
    assert settings.api_host == "127.0.0.1"
    assert settings.database == tmp_path / "var" / "agent.sqlite3"
    clean_env.setenv("RELAIS_AGENT_FETCH_BATCH", "8")
    clean_env.setenv("RELAIS_AGENT_KEY_FILES", '["/etc/relais/a.key"]')
    from_env = load_settings(config)
    assert from_env.fetch_batch == 8  # the environment overrides the file
    assert from_env.key_files == (Path("/etc/relais/a.key"),)
    assert load_settings(config, fetch_batch=3).fetch_batch == 3  # explicit values win
    as_json = tmp_path / "agent.json"
    as_json.write_text(json.dumps({**_toml_values(), "nats_url": "nats://a:4222, nats://b:4222"}))
    assert load_settings(as_json).servers == ["nats://a:4222", "nats://b:4222"]


def _toml_values() -> dict[str, Any]:
    import tomllib

    return tomllib.loads(TOML)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"api_host": "0.0.0.0"}, "loopback"),  # noqa: S104 - the value refused
        ({"webhook_url": None}, "go together"),
        ({"webhook_url": "ftp://x/y"}, "http"),
        ({"api_token_file": None}, "api_token_file"),
        ({"partner_id": "CRIP 93"}, "partner_id"),
        ({"fetch_batch": 0}, "fetch_batch"),
        ({"unknown_option": 1}, "unknown_option"),
    ],
)
def test_invalid_settings_are_refused(tmp_path, clean_env, change, where) -> None:
    values = {**_toml_values(), **change}
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({k: v for k, v in values.items() if v is not None}))
    with pytest.raises(ConfigError, match=where):
        load_settings(config)
    remote = {**_toml_values(), "api_host": "10.1.2.3", "api_allow_remote": True}
    config.write_text(json.dumps(remote))
    assert load_settings(config).api_host == "10.1.2.3"


def test_secret_files(tmp_path) -> None:
    token = tmp_path / "token"
    write_atomic(token, b"0123456789abcdef-token\n")
    assert read_api_token(token) == b"0123456789abcdef-token"
    token.chmod(0o640)
    with pytest.raises(ConfigError, match="0600"):
        read_api_token(token)
    short = tmp_path / "short"
    write_atomic(short, b"court\n")
    with pytest.raises(ConfigError, match="too short"):
        read_api_token(short)
    standard = tmp_path / "whsec"
    write_atomic(standard, b"whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
    assert read_webhook_secret(standard) == b"0123456789abcdef0123456789abcdef"
    raw = tmp_path / "raw"
    write_atomic(raw, b"un secret de webhook assez long\n")
    assert read_webhook_secret(raw) == b"un secret de webhook assez long"
    with pytest.raises(ConfigError):
        read_root_public_key("pas une clé")


def test_signing_key_during_a_rotation(demo_territory) -> None:
    directory = demo_territory.directory
    old = demo_territory.identities["crip-93"]
    new = PartnerKeys.generate("crip-93")
    now = utc_now()
    entry = new_partner_key(
        new.sign_pk,
        new.box_pk,
        not_before=now - timedelta(hours=1),
        not_after=now + timedelta(days=9),
    )
    rotated = add_key(directory, "crip-93", entry)
    keyring = Keyring([old, new])
    at = int(now.timestamp() * 1000)
    assert keyring.signer(directory, at) is old  # the new key is not listed yet
    assert keyring.signer(rotated, at) is new  # the newest listed key signs
    assert Keyring([old]).signer(rotated, at) is old  # still valid while both are listed
    with pytest.raises(EnvelopeError) as excinfo:
        Keyring([old]).signer(revoke_key(directory, "crip-93", old.key_id), at)
    assert excinfo.value.reason is Reason.UNKNOWN_KEY
    with pytest.raises(EnvelopeError) as excinfo:
        keyring.signer(revoke_partner(directory, "crip-93"), at)
    assert excinfo.value.reason is Reason.REVOKED_PARTNER
    with pytest.raises(ConfigError):
        Keyring([old, demo_territory.identities["ase-93"]])
    assert "sign" not in repr(keyring)


def test_openapi_document_is_committed_and_checked(tmp_path) -> None:
    committed = ROOT / "docs" / "openapi.json"
    assert json.loads(committed.read_text(encoding="utf-8")) == json.loads(render_openapi())
    runner = CliRunner()
    ok = runner.invoke(app, ["openapi", "--check", str(committed)])
    assert ok.exit_code == 0, ok.output
    document = json.loads(render_openapi())
    paths = document["paths"]
    # one path per event type a partner submits (its body's own schema), then the rest
    per_type = {p for p in paths if p.startswith("/v1/events/") and "{" not in p}
    assert {p.removeprefix("/v1/events/") for p in per_type} == {
        "runaway_alert",
        "runaway_ended",
        "danger_declaration",
        "signalement",
        "medical_referral",
        "lodging_suspicion_report",
        "online_exploitation_report",
        "judicial_requisition",
        "requisition_answer",
        "care_orientation",
    }
    assert set(paths) - per_type == {
        "/v1/events/{event_id}",
        "/v1/inbox",
        "/v1/inbox/{event_id}",
        "/v1/inbox/{event_id}/take-charge",
        "/v1/inbox/{event_id}/decline",
        "/v1/inbox/{event_id}/conclude",
        "/v1/notices",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    assert paths["/v1/inbox"]["get"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in paths["/healthz"]["get"]
    document["info"]["version"] = "0.0.0"
    stale = tmp_path / "openapi.json"
    stale.write_text(json.dumps(document))
    failed = runner.invoke(app, ["openapi", "--check", str(stale)])
    assert failed.exit_code == 1
    printed = runner.invoke(app, ["openapi"])
    assert json.loads(printed.stdout) == json.loads(render_openapi())
