"""The command line as operators and integrators expect it (natscli's conventions).

``relais`` runs as a subprocess (as an operator types it) against a real nats-server from
the conftest fixtures. Each expected failure prints exactly one line on stderr,
``error [CODE]: ...``, and exits with the documented code (docs/operations.md §9); quiet by
default (``-v`` info, ``-vv`` debug); ``--creds`` takes a NATS ``.creds`` file and ``--nkey``
a bare seed; saved contexts give every command its defaults; ``--json`` is a plain flag on
every command that prints; tables stay readable at 80 columns.
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from relais.broker_config.embedded import stop_process
from relais.cli import demo, ops_cmd
from relais.cli._demo_scenario import Flow as DemoFlow
from relais.cli.app import app
from relais.gateway.flows import Delivery, DeliveryState, Flow
from relais.schemas.domain import PartnerKind

BOUND = 120  # seconds: an upper bound for one command, never a performance target
CRIP, GEND = "crip-93", "gend-93-bobigny"
RELAIS = Path(sys.executable).with_name("relais")
# Commands that print no document of their own: services (their output is their log),
# documents that are JSON already, and commands of work that does not take --json yet.
NO_JSON = {
    ("agent", "run"),
    ("gateway", "run"),
    ("agent", "openapi"),
    ("schemas", "show"),
    ("schemas", "sample"),
    ("agent", "backup"),
    ("agent", "restore"),
    ("gateway", "backup"),
    ("gateway", "restore"),
    ("gateway", "redeliver"),
    ("agent", "users", "disable"),
}


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of an operator's shell with nothing relais or NATS set, and a
    private configuration directory (no context of the machine's user leaks in)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAIS_", "NATS_")) and k != "XDG_CONFIG_HOME"
    }
    env.update(XDG_CONFIG_HOME=str(tmp / "config"), COLUMNS="80", **extra)
    return env


def relais(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``relais ARGS`` as typed in a shell, stdout and stderr apart."""
    return subprocess.run(
        [str(RELAIS), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=BOUND,
        check=False,
    )


def one_error(result: subprocess.CompletedProcess[str], code: str, exit_code: int) -> str:
    """The single stderr line of a failure, checked: its code and the exit code."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error [{code}]: "), lines
    assert result.returncode == exit_code, (result.returncode, result.stderr)
    return lines[0]


def write_private(path: Path, text: str) -> Path:
    """A 0600 file (credentials are refused otherwise)."""
    path.write_text(text, encoding="ascii")
    path.chmod(0o600)
    return path


def creds_text(seed: str, jwt: str | None = None) -> str:
    """A NATS ``.creds`` file in natscli's layout."""
    head = f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n" if jwt else ""
    return f"{head}-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"


def closed_port() -> int:
    """A loopback port nobody listens on (chosen by the system, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory, broker_launcher: Any, directory_builder: Any
) -> Iterator[Any]:
    """One broker for the module: a CRIP and a gendarmerie enrolled, the operator's seed."""
    root = tmp_path_factory.mktemp("lab")
    built = directory_builder([(CRIP, PartnerKind.CRIP), (GEND, PartnerKind.GENDARMERIE)])
    broker = broker_launcher(root / "broker", built)
    signed = root / "directory.json"
    signed.write_bytes(built.signed)
    root_pub = root / "root.pub"
    import base64

    root_pub.write_text(base64.b64encode(built.root_public_key).decode() + "\n")
    try:
        yield type(
            "Lab",
            (),
            {"broker": broker, "root": root, "signed": signed, "root_pub": root_pub},
        )
    finally:
        stop_process(broker.server.pid)


# -- --version, help, --json --------------------------------------------------------------------


def test_version(tmp_path: Path) -> None:
    result = relais("--version", env=clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"relais {version('relais')}\n"


def _commands() -> list[tuple[tuple[str, ...], Any]]:
    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    found: list[tuple[tuple[str, ...], Any]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        lister = getattr(command, "list_commands", None)
        if lister is None:
            found.append((path, command))
            return
        for name in lister(ctx):
            walk(command.get_command(ctx, name), (*path, name))

    walk(root, ())
    return found


def test_every_command_that_prints_takes_json_as_a_plain_flag() -> None:
    commands = _commands()
    assert len(commands) > 30
    missing = [
        " ".join(path)
        for path, command in commands
        if path not in NO_JSON and not any("--json" in p.opts for p in command.params)
    ]
    assert missing == []
    for path, command in commands:
        for param in command.params:
            if "--json" in getattr(param, "opts", ()):
                assert param.is_flag, path  # --json true is not a thing


def test_help_shows_flags_without_a_type_and_arguments_in_capitals() -> None:
    runner = CliRunner()
    for path, _ in _commands():
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, (path, shown.output)
        assert "<bool>" not in shown.output, path
        usage = next(line for line in shown.output.splitlines() if "Usage:" in line)
        assert "{" not in usage, (path, usage)
    usage = runner.invoke(app, ["directory", "revoke", "--help"], env={"COLUMNS": "200"})
    assert "relais directory revoke [OPTIONS] PARTNER_ID" in usage.output


def test_editing_commands_print_json(tmp_path: Path) -> None:
    env = clean_env(tmp_path, PASS="une phrase de passe assez longue")
    root_key = tmp_path / "root.key"
    made = relais(
        "keys", "new", "root", "--out", root_key, "--passphrase-env", "PASS", "--json", env=env
    )
    assert made.returncode == 0, made.stderr
    keys = json.loads(made.stdout)
    # the root key file the docs pin: base64, beside the key file
    assert keys["root_public_key"] == str(tmp_path / "root.pub")
    crip = relais(
        "keys",
        "new",
        CRIP,
        "--out",
        tmp_path / "crip.key",
        "--passphrase-env",
        "PASS",
        "--json",
        env=env,
    )
    user = relais("keys", "nats-user", CRIP, "--out", tmp_path / "crip.creds", "--json", env=env)
    assert crip.returncode == 0, crip.stderr
    assert user.returncode == 0, user.stderr
    nkey = json.loads(user.stdout)["public_nkey"]
    work = tmp_path / "work.json"
    signed = tmp_path / "directory.json"
    steps = [
        (
            "directory",
            "init",
            "--partnership",
            "p-93",
            "--root-key",
            f"{root_key}.pub.json",
            "--out",
            work,
        ),
        (
            "directory",
            "add",
            CRIP,
            "--directory",
            work,
            "--kind",
            "crip",
            "--name",
            "CRIP",
            "--departement",
            "93",
            "--public-key",
            tmp_path / "crip.key.pub.json",
            "--nats-nkey",
            nkey,
        ),
        (
            "directory",
            "sign",
            "--directory",
            work,
            "--root-key",
            root_key,
            "--out",
            signed,
            "--passphrase-env",
            "PASS",
        ),
        ("directory", "verify", signed, "--root-public-key", tmp_path / "root.pub"),
        ("broker", "down", "--data-dir", tmp_path / "no-broker"),
    ]
    documents = []
    for step in steps:
        done = relais(*step, "--json", env=env)
        assert done.returncode == 0, (step, done.stderr)
        assert done.stderr == "", (step, done.stderr)
        documents.append(json.loads(done.stdout))
    assert documents[1]["added"] == CRIP
    assert documents[2]["serial"] == 1
    assert documents[3]["ok"] is True
    assert documents[4] == {"stopped": False, "pid": None}
    # .creds from keys nats-user: natscli's layout, the seed block only, 0600
    creds = (tmp_path / "crip.creds").read_text()
    assert "-----BEGIN USER NKEY SEED-----" in creds
    assert "JWT" not in creds
    assert stat.S_IMODE((tmp_path / "crip.creds").stat().st_mode) == 0o600


# -- failures: one line, the documented exit code ------------------------------------------------


def test_unreachable_broker_is_one_line_after_the_timeout(tmp_path: Path, lab: Any) -> None:
    env = clean_env(tmp_path)
    url = f"nats://127.0.0.1:{closed_port()}"
    result = relais(
        "flows", "-s", url, "--nkey", lab.broker.operator_creds, "--timeout", "1", env=env
    )
    line = one_error(result, "NOT_CONNECTED", 3)
    assert url in line
    assert "within 1 s" in line


def test_partner_credentials_for_an_operator_command(tmp_path: Path, lab: Any) -> None:
    env = clean_env(tmp_path)
    url = lab.broker.client_url
    result = relais("flows", "-s", url, "--nkey", lab.broker.partner_creds[CRIP], env=env)
    line = one_error(result, "PERMISSION_DENIED", 3)
    assert "are not the operator's credentials" in line


def test_unknown_credentials_for_an_operator_command(
    tmp_path: Path, lab: Any, nkey_factory: Any
) -> None:
    seed = write_private(tmp_path / "stranger.nk", nkey_factory()[0].decode() + "\n")
    result = relais("pending", "-s", lab.broker.client_url, "--nkey", seed, env=clean_env(tmp_path))
    assert "does not know the credentials" in one_error(result, "PERMISSION_DENIED", 3)


def test_trace_of_something_that_is_not_an_event_id(tmp_path: Path) -> None:
    result = relais("trace", "not-a-uuid", env=clean_env(tmp_path))
    one_error(result, "INVALID_EVENT_ID", 2)


def test_a_seed_file_is_not_taken_for_a_creds_file_and_back(tmp_path: Path, lab: Any) -> None:
    env = clean_env(tmp_path)
    seed = lab.broker.operator_creds.read_text().strip()
    as_creds = write_private(tmp_path / "operator.creds", creds_text(seed))
    result = relais("flows", "-s", lab.broker.client_url, "--nkey", as_creds, env=env)
    assert "give it with --creds" in one_error(result, "CONFIG_INVALID", 2)
    readable = tmp_path / "readable.creds"
    readable.write_text(creds_text(seed))
    readable.chmod(0o644)
    result = relais("flows", "-s", lab.broker.client_url, "--creds", readable, env=env)
    assert "0600" in one_error(result, "CONFIG_INVALID", 2)


# -- credentials, quiet output ------------------------------------------------------------------


def test_creds_files_nkeys_and_the_environment(tmp_path: Path, lab: Any) -> None:
    env = clean_env(tmp_path)
    url, seed_file = lab.broker.client_url, lab.broker.operator_creds
    seed = seed_file.read_text().strip()
    creds = write_private(tmp_path / "operator.creds", creds_text(seed))
    for given in (["--creds", creds], ["--nkey", seed_file]):
        result = relais("flows", "-s", url, *given, "--json", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""  # quiet: no [debug] nats.closed, no info
        assert json.loads(result.stdout)["flows"] == []
    by_env = relais("pending", "--json", env={**env, "NATS_URL": url, "NATS_CREDS": str(creds)})
    assert by_env.returncode == 0, by_env.stderr
    assert by_env.stderr == ""
    by_nkey = relais("pending", "--json", env={**env, "NATS_URL": url, "NATS_NKEY": str(seed_file)})
    assert by_nkey.returncode == 0, by_nkey.stderr
    assert by_nkey.stderr == ""
    # a bare seed given to --creds still works, with one deprecation line
    old = relais("flows", "-s", url, "--creds", seed_file, "--json", env=env)
    assert old.returncode == 0
    assert old.stderr.splitlines() == [
        f"warning: {seed_file} is a bare nkey seed: give it with --nkey"
        " (--creds is for .creds files)"
    ]
    # a .creds file with a user JWT authenticates by JWT, which a broker of static nkey
    # users (relais's) refuses: said as such, once
    jwt_creds = write_private(
        tmp_path / "jwt.creds", creds_text(seed, jwt="eyJ0eXAiOiJKV1QifQ.e30.c2ln")
    )
    refused = relais("flows", "-s", url, "--creds", jwt_creds, "--timeout", "2", env=env)
    assert "does not know the credentials" in one_error(refused, "PERMISSION_DENIED", 3)


def test_verbosity_levels(tmp_path: Path, lab: Any) -> None:
    env = clean_env(tmp_path)
    args = ("flows", "-s", lab.broker.client_url, "--nkey", lab.broker.operator_creds, "--json")
    quiet = relais(*args, env=env)
    debug = relais("-vv", *args, env=env)
    assert quiet.returncode == debug.returncode == 0
    assert quiet.stderr == ""
    events = [json.loads(line)["event"] for line in debug.stderr.splitlines()]  # JSON off a TTY
    assert "nats.closed" in events
    assert json.loads(debug.stdout) == json.loads(quiet.stdout) | {
        "now": json.loads(debug.stdout)["now"]
    }


# -- contexts ---------------------------------------------------------------------------------


def test_contexts_give_every_command_its_defaults(tmp_path: Path, lab: Any) -> None:
    env = clean_env(tmp_path)
    url, seed_file = lab.broker.client_url, lab.broker.operator_creds
    added = relais(
        "context",
        "add",
        "lab",
        "-s",
        url,
        "--nkey",
        seed_file,
        "--root-public-key",
        lab.root_pub,
        "--json",
        env=env,
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["selected"] is True  # the first one is selected
    saved = tmp_path / "config" / "relais" / "contexts.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert seed_file.read_text().strip() not in saved.read_text()  # paths, never a seed
    # no option at all: server, credentials and root key come from the context
    flows = relais("flows", "--directory", lab.signed, "--json", env=env)
    assert flows.returncode == 0, flows.stderr
    assert flows.stderr == ""
    verified = relais("directory", "verify", lab.signed, "--json", env=env)
    assert verified.returncode == 0
    assert json.loads(verified.stdout)["ok"] is True
    # another context, chosen per command; the environment and options win over it
    dead = f"nats://127.0.0.1:{closed_port()}"
    relais("context", "add", "dead", "-s", dead, "--nkey", seed_file, env=env)
    gone = relais("--context", "dead", "pending", "--timeout", "1", env=env)
    assert dead in one_error(gone, "NOT_CONNECTED", 3)
    assert relais("--context", "dead", "pending", "-s", url, env=env).returncode == 0
    assert relais("pending", env={**env, "RELAIS_CONTEXT": "dead", "NATS_URL": url}).returncode == 0
    listed = json.loads(relais("context", "ls", "--json", env=env).stdout)
    assert [(c["name"], c["selected"]) for c in listed["contexts"]] == [
        ("dead", False),
        ("lab", True),
    ]
    assert relais("context", "select", "dead", env=env).returncode == 0
    assert relais("pending", "--timeout", "1", env=env).returncode == 3
    assert relais("context", "rm", "dead", env=env).returncode == 0
    one_error(relais("context", "select", "dead", env=env), "CONFIG_INVALID", 2)
    one_error(relais("--context", "dead", "flows", env=env), "CONFIG_INVALID", 2)


# -- tables at 80 columns -------------------------------------------------------------------------


def _rendered(table: Any) -> str:
    out = io.StringIO()
    Console(file=out, width=80).print(table)
    return out.getvalue()


def test_operator_tables_fit_80_columns_without_cutting_ids() -> None:
    event_id = str(uuid.uuid4())
    partners = ("parquet-93-bobigny-mineurs", "crip-93", "uaped-93-jean-verdier")
    flow = Flow(
        event_id=event_id,
        event_type="online_exploitation_report",
        sender="gend-93-bobigny",
        priority="FLASH",
        departement="93",
        rule="r",
        routed_at=1_800_000_000_000,
        created_at=None,
        deadline_at=1_800_000_060_000,
        fallback=(),
        routing={},
        closes_case=None,
    )
    flow.deliveries = {
        p: Delivery(p, "recipient", None, None, DeliveryState.DELIVERED) for p in partners
    }
    text = _rendered(ops_cmd._flow_table("1 event", [flow], 1_800_000_120_000, late=True))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert event_id in text
    assert "…" not in text
    assert "late by 1m00s" in text


def test_the_demo_table_fits_80_columns_without_cutting_ids() -> None:
    flow = DemoFlow(
        step=7,
        title="t",
        event_type="runaway_alert",
        sender="police-93-saint-denis",
        channel="Python API",
        priority="FLASH",
        recipients=("crip-93", "parquet-93-bobigny"),
        fallback=("coord-93",),
        routed_ms=80,
        delivered={"crip-93": 151},
        escalation={"after_ms": 3038, "fallback": ["coord-93"], "notice_to_sender": True},
    )
    text = _rendered(demo._flow_table([flow]))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "escalated 3038" in text  # one line, not "escalated 3" then "038"
    for partner in ("police-93-saint-denis", "parquet-93-bobigny", "coord-93"):
        assert partner in text
    assert "…" not in text


# -- agent start-up failures ----------------------------------------------------------------------


async def test_agent_start_up_failures_are_one_line_each(
    tmp_path: Path, agent_kit: Any, demo_territory: Any
) -> None:
    kit = await agent_kit(demo_territory)
    env = clean_env(tmp_path)

    def run_agent(name: str, **overrides: Any) -> subprocess.CompletedProcess[str]:
        settings = kit.settings(GEND, data_dir=tmp_path / name, **overrides)
        config = tmp_path / f"{name}.json"
        config.write_text(json.dumps(settings.model_dump(mode="json")), encoding="utf-8")
        return relais("agent", "run", "--config", config, env=env)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_error(run_agent("port", api_port=port), "CONFIG_INVALID", 2)
    assert f"127.0.0.1:{port}" in line
    assert "api_port" in line
    short = write_private(tmp_path / "short.token", "court\n")
    assert "token" in one_error(run_agent("short", api_token_file=short), "CONFIG_INVALID", 2)
    readable = tmp_path / "readable.token"
    readable.write_text("un-jeton-assez-long-mais-lisible\n")
    readable.chmod(0o644)
    assert "0600" in one_error(run_agent("readable", api_token_file=readable), "CONFIG_INVALID", 2)
    # the CRIP's seed for the gendarmerie's agent: refused at once, not retried for ever
    other = run_agent("other", creds=kit.broker.partner_creds[CRIP])
    assert "own NATS seed file" in one_error(other, "PERMISSION_DENIED", 3)
