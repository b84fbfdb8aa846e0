"""The hub on real hosts: addresses kept across restarts, TLS, a cluster from the CLI, units.

Real nats-servers on loopback, driven by the ``relais broker`` commands. Ports a test must
name are found free by binding port 0 and closing the socket. The cluster test runs the
lines of the rehearsal block of docs/operations.md, as an operator would type them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from relais.broker_config.cluster import read_layout
from relais.broker_config.connection import ClientTls, connect
from relais.broker_config.embedded import running_pid, spawn_server, stop_process, wait_ready
from relais.broker_config.nats_conf import inbox_prefix, write_seed
from relais.cli import broker_cmd
from relais.schemas.domain import PartnerKind
from relais.schemas.errors import TransportError

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = ROOT / "docs" / "operations.md"
UNITS = ROOT / "deploy" / "systemd"
PARTNER = "crip-93"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def relais_broker(*args: str | Path) -> Any:
    return CliRunner().invoke(broker_cmd.app, [str(a) for a in args])


def ok_json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def directory_files(tmp_path: Path, td: Any) -> tuple[Path, Path]:
    signed, root = tmp_path / "directory.json", tmp_path / "root.pub"
    signed.write_bytes(td.signed)
    root.write_text(base64.b64encode(td.root_public_key).decode() + "\n")
    return signed, root


# -- addresses ---------------------------------------------------------------------------------


def test_listen_address_is_kept_across_restarts(tmp_path) -> None:
    data = tmp_path / "broker"
    port, monitor = free_port(), free_port()
    first = ok_json(
        relais_broker(
            "up", "--data-dir", data, "--listen", f"127.0.0.1:{port}",
            "--monitor-port", str(monitor), "--json",
        )
    )  # fmt: skip
    try:
        assert first["client_url"] == f"nats://127.0.0.1:{port}"
        assert first["monitor_url"] == f"http://127.0.0.1:{monitor}"
        ok_json(relais_broker("down", "--data-dir", data, "--json"))
        again = ok_json(relais_broker("up", "--data-dir", data, "--json"))  # no flags: reused
        assert (again["client_url"], again["monitor_url"]) == (
            first["client_url"],
            first["monitor_url"],
        )
        assert again["pid"] != first["pid"]
        status = ok_json(relais_broker("status", "--data-dir", data, "--json"))
        assert status["healthy"] is True
    finally:
        relais_broker("down", "--data-dir", data)


def test_ports_chosen_at_the_first_start_are_kept(tmp_path) -> None:
    data = tmp_path / "broker"
    first = ok_json(relais_broker("up", "--data-dir", data, "--json"))
    try:
        relais_broker("down", "--data-dir", data)
        again = ok_json(relais_broker("up", "--data-dir", data, "--json"))
        assert again["client_url"] == first["client_url"]
    finally:
        relais_broker("down", "--data-dir", data)


def test_listener_outside_loopback_without_tls_is_refused(tmp_path) -> None:
    data = tmp_path / "broker"
    port = free_port()
    result = relais_broker("up", "--data-dir", data, "--listen", f"0.0.0.0:{port}")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error [CONFIG_INVALID]: refusing to listen on 0.0.0.0")
    assert "without TLS" in lines[0]
    assert running_pid(data) is None
    assert not (data / "network.json").exists()  # nothing recorded for the next start


# -- TLS ---------------------------------------------------------------------------------------


def make_pki(out: Path) -> None:
    made = ok_json(
        relais_broker(
            "tls", "--out", out, "--server", "n1=127.0.0.1,localhost", "--client", PARTNER,
            "--json",
        )
    )  # fmt: skip
    assert made["created"] == ["ca", "n1", PARTNER]
    for key in ("ca.key", "n1.key", f"{PARTNER}.key"):
        assert (out / key).stat().st_mode & 0o077 == 0


async def try_partner(url: str, seed: Path, tls: ClientTls | None) -> str:
    try:
        conn = await connect(
            url,
            creds=seed,
            inbox_prefix=inbox_prefix(PARTNER),
            name=PARTNER,
            connect_timeout=5.0,
            tls=tls,
        )
    except TransportError as exc:
        return f"refused ({exc.reason.value}): {exc}"
    try:
        assert conn.is_connected
        await conn.flush()
        return "connected"
    finally:
        await conn.close()


def test_agent_connects_with_the_partnership_ca_and_refuses_another(
    tmp_path, directory_builder, monkeypatch
) -> None:
    monkeypatch.delenv("NATS_CA", raising=False)
    ours, theirs = tmp_path / "tls", tmp_path / "other-tls"
    make_pki(ours)
    make_pki(theirs)  # another CA, certificates with the same names
    td = directory_builder([(PARTNER, PartnerKind.CRIP)])
    signed, root = directory_files(tmp_path, td)
    seed = tmp_path / "crip-93.nk"
    write_seed(seed, td.seeds[PARTNER])
    data = tmp_path / "broker"
    started = ok_json(
        relais_broker(
            "up", "--data-dir", data, "--listen", f"0.0.0.0:{free_port()}",
            "--tls-cert", ours / "n1.crt", "--tls-key", ours / "n1.key",
            "--tls-ca", ours / "ca.crt", "--tls-verify-clients",
            "--directory", signed, "--root-public-key", root, "--json",
        )
    )  # fmt: skip
    try:
        url = started["client_url"]
        assert url.startswith("tls://127.0.0.1:")

        def client(ca: Path, cert_dir: Path) -> ClientTls:
            return ClientTls(ca, cert_dir / f"{PARTNER}.crt", cert_dir / f"{PARTNER}.key")

        async def attempts() -> dict[str, str]:
            return {
                "ours": await try_partner(url, seed, client(ours / "ca.crt", ours)),
                "server of another CA": await try_partner(
                    url, seed, client(theirs / "ca.crt", ours)
                ),
                "client of another CA": await try_partner(
                    url, seed, client(ours / "ca.crt", theirs)
                ),
                "no TLS": await try_partner(url, seed, None),
            }

        outcome = asyncio.run(attempts())
        assert outcome["ours"] == "connected"
        assert "does not verify against the CA" in outcome["server of another CA"]
        for name in ("client of another CA", "no TLS"):
            assert outcome[name].startswith("refused (NOT_CONNECTED)"), name
        # the operator's CLI: the CA recorded with the data directory
        status = ok_json(relais_broker("status", "--data-dir", data, "--json"))
        assert status["healthy"] is True
        ok_json(relais_broker("down", "--data-dir", data, "--json"))
        again = ok_json(relais_broker("up", "--data-dir", data, "--json"))
        assert again["client_url"] == url  # TLS and address kept
        assert asyncio.run(try_partner(url, seed, client(ours / "ca.crt", ours))) == "connected"
    finally:
        relais_broker("down", "--data-dir", data)


# -- service units -----------------------------------------------------------------------------


def test_service_units_pass_systemd_analyze(tmp_path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    bin_dir = Path(sys.executable).parent  # relais and nats-server, as in /opt/relais/bin
    instances = {
        "relais-broker@.service": "relais-broker@n1.service",
        "relais-agent@.service": f"relais-agent@{PARTNER}.service",
        "relais-router.service": "relais-router.service",
        "relais-tracker.service": "relais-tracker.service",
    }
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(instances)
    checked = []
    for source, instance in instances.items():
        text = (UNITS / source).read_text()
        assert re.search(r"^Restart=(on-failure|always)$", text, re.MULTILINE), source
        if "broker" not in source:
            assert re.search(r"^LoadCredential=passphrase:", text, re.MULTILINE), source
            assert "PASSPHRASE_FILE=%d/passphrase" in text, source
        (tmp_path / instance).write_text(text.replace("/opt/relais/bin", str(bin_dir)))
        checked.append(str(tmp_path / instance))
    done = subprocess.run(
        [analyze, "verify", "--man=no", *checked], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "nknown" not in done.stderr, done.stderr  # an unknown section or key is ignored


# -- a cluster from the CLI, as docs/operations.md writes it -----------------------------------


def rehearsal_lines() -> list[str]:
    text = OPERATIONS.read_text()
    block = text.split("<!-- rehearsal:begin -->", 1)[1].split("<!-- rehearsal:end -->", 1)[0]
    lines = [line.strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("```")]


def await_healthy_replicas(cluster: Path, *, bound: float = 30.0) -> dict[str, Any]:
    """``broker status --cluster`` until every stream has its 3 replicas current."""
    deadline = time.monotonic() + bound
    while True:
        status = ok_json(relais_broker("status", "--cluster", cluster, "--json"))
        if status["replicas"] and all(r["healthy"] for r in status["replicas"]):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"replicas not current: {status['replicas']}")
        time.sleep(0.2)  # remote state, polled within the bound


@pytest.mark.slow
def test_cluster_written_started_provisioned_and_reloaded_from_the_cli(
    tmp_path, directory_builder, monkeypatch
) -> None:
    monkeypatch.delenv("NATS_CA", raising=False)
    etc = tmp_path
    first = directory_builder([("gend-93", PartnerKind.GENDARMERIE)])
    directory_files(etc, first)
    second = None
    outputs: dict[str, list[Any]] = {}
    pids: list[int] = []
    starting: list[Any] = []
    try:
        for line in rehearsal_lines():
            if line.startswith("#"):
                if "new edition" in line:  # enrol the partner, same root, next serial
                    second = directory_builder(
                        [("gend-93", PartnerKind.GENDARMERIE), (PARTNER, PartnerKind.CRIP)],
                        root=first.root,
                        seeds=first.seeds,
                        serial=2,
                    )
                    directory_files(etc, second)
                continue
            args = shlex.split(line.replace("$ETC", str(etc)))
            if args[0] == "nats-server":
                assert args[1] == "-c"
                node = next(
                    n for n in read_layout(etc / "cluster").nodes if str(n.config_file) == args[2]
                )
                # a node is healthy once the cluster has a quorum: wait when all are started
                pids.append(spawn_server(Path(args[2]), log_file=node.log_file))
                starting.append(node)
                continue
            if starting:
                for node, pid in zip(starting, pids[-len(starting) :], strict=True):
                    wait_ready(pid, ports_dir=node.ports_dir)
                starting.clear()
            assert args[:2] == ["relais", "broker"], line
            outputs.setdefault(args[2], []).append(ok_json(relais_broker(*args[2:], "--json")))
            if args[2] == "status":
                outputs["status"][-1] = await_healthy_replicas(etc / "cluster")
        assert len(pids) == 3
        provisioned = outputs["provision"][0]
        assert provisioned["replicas"] == 3
        assert "INGRESS" in provisioned["created"]
        before, after = outputs["status"]
        for status in (before, after):
            streams = {r["stream"]: r for r in status["replicas"]}
            assert streams["INGRESS"]["replicas_wanted"] == 3
            assert {r["node"] for r in streams["INGRESS"]["replicas"]} == {"n1", "n2", "n3"}
            assert sum(r["leader"] for r in streams["AUDIT"]["replicas"]) == 1
        reloaded = outputs["reload"][0]
        assert reloaded["reloaded"] == ["n1", "n2", "n3"]
        assert reloaded["elsewhere"] == []
        assert f"DELIVERY/out-{PARTNER}-FLASH" in reloaded["created"]
        layout = read_layout(etc / "cluster")
        assert all(url.startswith("tls://127.0.0.1:") for url in layout.client_urls)
        assert second is not None
        seed = tmp_path / "crip-93.nk"
        write_seed(seed, second.seeds[PARTNER])
        # the partner enrolled by the reload reaches every node, over TLS
        tls = ClientTls(etc / "tls" / "ca.crt")
        for url in layout.client_urls:
            assert asyncio.run(try_partner(url, seed, tls)) == "connected"
        (etc / "old.json").write_bytes(first.signed)
        stale = relais_broker(
            "reload", "--cluster", etc / "cluster", "--directory", etc / "old.json",
            "--root-public-key", etc / "root.pub",
        )  # fmt: skip
        assert stale.exit_code != 0  # an older edition is refused
        assert "DIRECTORY_ROLLBACK" in stale.stderr, stale.stderr
    finally:
        for pid in pids:
            stop_process(pid)
