"""Broker configuration: generated config and credentials, durability checks, provisioning,
directory changes with reload, the cluster generator and the ``relais broker`` commands.

Everything that depends on nats-server behaviour runs against a real server (port 0, store in
``tmp_path``, stopped in a finalizer).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import stat
import time
from dataclasses import replace
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from relais.broker_config import embedded
from relais.broker_config.accounts import (
    HUB_ACCOUNT,
    Service,
    partner_account,
    partner_identity,
)
from relais.broker_config.cluster import write_cluster_configs
from relais.broker_config.connection import (
    Connection,
    connect,
    require_sync_always,
    translate_error,
)
from relais.broker_config.directory import verify_directory
from relais.broker_config.nats_conf import (
    DEFAULT_MAX_PAYLOAD,
    GATEWAY_INBOX,
    ServerSettings,
    ServiceKeys,
    TlsSettings,
    build_config,
    check_config,
    ensure_seed,
    inbox_prefix,
    read_seed_public_key,
    write_config,
    write_seed,
)
from relais.broker_config.streams import (
    SERVICE_CONSUMERS,
    STREAMS,
    ConsumerSpec,
    consumers_for,
    provision,
)
from relais.cli import broker_cmd
from relais.schemas.domain import PartnerKind, Priority
from relais.schemas.envelope import MAX_ENVELOPE_BYTES
from relais.schemas.errors import (
    ConfigError,
    DirectoryError,
    PermissionDenied,
    Reason,
    TransportError,
)

PARTNERS = [("school-1", PartnerKind.SCHOOL), ("hotel-1", PartnerKind.HOTEL)]


def settings_for(tmp_path: Path, **changes: object) -> ServerSettings:
    return ServerSettings(
        store_dir=tmp_path / "store", ports_file_dir=tmp_path / "ports", **changes
    )


# -- configuration (no server) -----------------------------------------------------------------


def services_of(nkey_factory) -> ServiceKeys:
    return ServiceKeys(*(nkey_factory()[1] for _ in Service))


def test_partner_permissions_are_exact() -> None:
    identity = partner_identity("crip-93")
    assert identity.account == "PARTNER_crip-93"
    assert identity.inbox == "_INBOX_crip-93"
    user = identity.user("UKEY")
    assert user["permissions"]["subscribe"] == {"allow": ["_INBOX_crip-93.>"]}
    publish = user["permissions"]["publish"]["allow"]
    assert publish == list(identity.subjects)
    assert "ref.in.crip-93" in publish
    assert "ref.rcpt.crip-93" in publish
    for priority in Priority:
        consumer = f"out-crip-93-{priority.label}"
        assert f"$JS.API.CONSUMER.MSG.NEXT.DELIVERY.{consumer}" in publish
        assert f"$JS.API.CONSUMER.INFO.DELIVERY.{consumer}" in publish
        assert f"$JS.ACK.DELIVERY.{consumer}.*.*.*.*.*" in publish
        assert f"$JS.ACK.*.*.DELIVERY.{consumer}.*.*.*.*.*.*" in publish
    # the only open-ended subject reads the directory stream
    assert [s for s in publish if s.endswith(">")] == ["$JS.API.DIRECT.GET.DIRECTORY.>"]
    # ingress, receipts, $JS.API.INFO, the directory, and 4 subjects per own consumer
    assert len(publish) == 4 + 3 * 4


def test_users_only_for_active_partners_with_nkeys(tmp_path, directory_builder, nkey_factory):
    td = directory_builder(
        [("a-1", PartnerKind.SCHOOL), ("b-1", PartnerKind.HOTEL), ("c-1", PartnerKind.CRIP)],
        revoked=["b-1"],
        without_nkey=["c-1"],
    )
    services = services_of(nkey_factory)
    config = build_config(td.directory, services=services, settings=settings_for(tmp_path))
    accounts = config["accounts"]
    assert sorted(accounts) == sorted(
        ["SYS", HUB_ACCOUNT, "ROUTER", "TRACKER", "OPERATOR", partner_account("a-1")]
    )
    hub = accounts[HUB_ACCOUNT]
    assert [u["nkey"] for u in hub["users"]] == [services.admin]  # nobody else in the hub
    assert hub["jetstream"] == "enabled"
    (export,) = hub["exports"]
    assert export["service"] == ">"
    assert export["response_type"] == "stream"
    assert "accounts" not in export  # see accounts_block: only the generated imports cross
    for name, account in accounts.items():
        if name in ("SYS", HUB_ACCOUNT):
            continue
        assert "jetstream" not in account  # JetStream only in the hub
        (user,) = account["users"]
        imported = [i["service"]["subject"] for i in account["imports"]]
        assert {i["service"]["account"] for i in account["imports"]} == {HUB_ACCOUNT}
        assert imported == user["permissions"]["publish"]["allow"]
        assert account["limits"]["max_connections"] >= 1
    assert accounts[partner_account("a-1")]["users"][0]["nkey"] == td.directory.get("a-1").nats_nkey
    assert accounts["ROUTER"]["users"][0]["nkey"] == services.router
    assert config["system_account"] == "SYS"
    assert config["http"].startswith("127.0.0.1:")
    assert config["jetstream"]["sync_interval"] == "always"
    assert config["max_payload"] >= MAX_ENVELOPE_BYTES + 1024
    assert config["max_payload"] == DEFAULT_MAX_PAYLOAD


def test_partners_whose_keys_all_expired_get_no_user(tmp_path, directory_builder, nkey_factory):
    td = directory_builder(PARTNERS)
    services = services_of(nkey_factory)
    settings = settings_for(tmp_path)
    now = build_config(td.directory, services=services, settings=settings)
    assert partner_account("school-1") in now["accounts"]
    after = 2 * 365 * 86_400_000 + td.directory.get("school-1").keys[0].not_after_ms
    later = build_config(td.directory, services=services, settings=settings, at_ms=after)
    assert not any(name.startswith("PARTNER_") for name in later["accounts"])


def test_shared_or_invalid_nkeys_are_refused(tmp_path, directory_builder, nkey_factory):
    td = directory_builder(PARTNERS)
    school_key = td.directory.get("school-1").nats_nkey
    services = services_of(nkey_factory)
    settings = settings_for(tmp_path)
    with pytest.raises(ConfigError):
        build_config(td.directory, services=replace(services, router=school_key), settings=settings)
    with pytest.raises(ConfigError):
        build_config(None, services=replace(services, admin=services.operator), settings=settings)
    flipped = school_key[:10] + ("B" if school_key[10] != "B" else "C") + school_key[11:]
    for bad in ("", "U" + "A" * 55, "A" + school_key[1:], flipped):
        with pytest.raises(ConfigError):
            build_config(None, services=replace(services, tracker=bad), settings=settings)


def test_public_listener_needs_tls(tmp_path, nkey_factory) -> None:
    services = services_of(nkey_factory)
    with pytest.raises(ConfigError):
        build_config(None, services=services, settings=settings_for(tmp_path, host="192.0.2.10"))
    tls = TlsSettings(cert_file=tmp_path / "c.pem", key_file=tmp_path / "k.pem")
    config = build_config(
        None, services=services, settings=settings_for(tmp_path, host="192.0.2.10", tls=tls)
    )
    assert config["tls"] == {
        "cert_file": str(tmp_path / "c.pem"),
        "key_file": str(tmp_path / "k.pem"),
        "timeout": 5.0,
        "handshake_first": "500ms",  # TLS first for relais clients
    }
    assert config["http"].startswith("127.0.0.1:")  # monitoring stays on loopback


def test_config_file_is_private_and_accepted_by_nats_server(
    tmp_path, nkey_factory, directory_builder
):
    config = build_config(
        directory_builder(PARTNERS).directory,
        services=services_of(nkey_factory),
        settings=settings_for(tmp_path),
    )
    path = tmp_path / "nats-server.json"
    write_config(path, config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == config
    assert [p.name for p in tmp_path.iterdir()] == ["nats-server.json"]  # no temporary left
    check_config(path)  # nats-server parses the JSON form
    path.write_text('{"port": "not a port"}')
    with pytest.raises(ConfigError):
        check_config(path)


def test_seed_files(tmp_path, nkey_factory) -> None:
    seed, public = nkey_factory()
    path = tmp_path / "creds" / "a.nk"
    path.parent.mkdir()
    assert write_seed(path, seed) == public
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_seed_public_key(path) == public
    with pytest.raises(ConfigError):
        write_seed(path, seed)  # never overwritten
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError):
        read_seed_public_key(path)
    created = tmp_path / "new" / "gateway.nk"
    assert ensure_seed(created) == ensure_seed(created)
    assert stat.S_IMODE(created.stat().st_mode) == 0o600


def test_fsync_off_is_loud(tmp_path, nkey_factory) -> None:
    with structlog.testing.capture_logs() as logs:
        config = build_config(
            None,
            services=services_of(nkey_factory),
            settings=settings_for(tmp_path, sync_always=False),
        )
    assert "sync_interval" not in config["jetstream"]
    assert any(e["event"] == "broker.fsync_disabled" and e["log_level"] == "warning" for e in logs)


def test_consumer_specs() -> None:
    with pytest.raises(ConfigError):
        ConsumerSpec("DELIVERY", "x", "ref.out.x.FLASH", "", (1.0, 2.0), 2, 10)
    specs = consumers_for(None)
    assert specs == SERVICE_CONSUMERS
    assert {(s.stream, s.name) for s in specs} == {
        ("INGRESS", "router"),
        ("RECEIPTS", "tracker"),
        ("AUDIT", "tracker-audit"),
    }
    records = {s.name for s in STREAMS if s.records}
    assert records == {"INGRESS", "DELIVERY", "RECEIPTS", "AUDIT", "QUARANTINE", "DIRECTORY"}


def test_every_nats_error_is_translated() -> None:
    import nats.errors
    import nats.js.errors

    for module in (nats.errors, nats.js.errors):
        for name in dir(module):
            cls = getattr(module, name)
            if isinstance(cls, type) and issubclass(cls, Exception):
                try:
                    exc = cls()
                except TypeError:
                    continue
                error = translate_error(exc, "op")
                assert isinstance(error, TransportError), name
    assert translate_error(nats.errors.TimeoutError(), "x").reason is Reason.TIMEOUT
    assert isinstance(translate_error(nats.errors.AuthorizationError(), "x"), PermissionDenied)


def test_cluster_configs(tmp_path, directory_builder) -> None:
    td = directory_builder(PARTNERS)
    layout = write_cluster_configs(tmp_path / "cluster", directory=td.directory)
    assert [n.name for n in layout.nodes] == ["n1", "n2", "n3"]
    ports = set()
    for node in layout.nodes:
        config = json.loads(node.config_file.read_text())
        assert len(config["cluster"]["routes"]) == 3
        assert config["http"].startswith("127.0.0.1:")
        assert config["jetstream"]["sync_interval"] == "always"
        assert stat.S_IMODE(node.config_file.stat().st_mode) == 0o600
        ports.update({config["port"], config["cluster"]["listen"], config["http"]})
        check_config(node.config_file)
    assert len(ports) == 9
    again = write_cluster_configs(tmp_path / "cluster", directory=None)
    assert again.client_urls == layout.client_urls  # the layout is kept on re-runs
    with pytest.raises(ConfigError):
        write_cluster_configs(tmp_path / "cluster", nodes=5)


# -- against a real server ---------------------------------------------------------------------


async def test_monitoring_on_loopback_and_fsync_always(broker_factory, directory_builder):
    broker = await broker_factory(directory_builder(PARTNERS))
    varz = broker.varz()
    assert varz["http_host"] == "127.0.0.1"
    assert varz["jetstream"]["config"]["sync_always"] is True
    assert broker.monitor_url.startswith("http://127.0.0.1:")
    assert await require_sync_always(broker.monitor_url, allow_unsafe=False) is True
    for path in (broker.admin_creds, broker.operator_creds, *broker.partner_creds.values()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_require_sync_always_refuses_a_lax_server(broker_factory):
    broker = await broker_factory(None, sync_always=False)
    assert "sync_always" not in broker.varz()["jetstream"]["config"]  # omitted when false
    with pytest.raises(TransportError) as caught:
        await require_sync_always(broker.monitor_url, allow_unsafe=False)
    assert caught.value.reason is Reason.SERVER_NOT_DURABLE
    with structlog.testing.capture_logs() as logs:
        assert await require_sync_always(broker.monitor_url, allow_unsafe=True) is False
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "broker.not_durable_accepted"
    ]
    with pytest.raises(TransportError) as caught:
        await require_sync_always("http://127.0.0.1:9", allow_unsafe=False, max_wait=1.0)
    assert caught.value.reason is Reason.NOT_CONNECTED


async def test_provisioning_is_idempotent(broker_factory, directory_builder):
    td = directory_builder(PARTNERS)
    broker = await broker_factory(td)
    gateway = await broker.gateway()
    try:
        report = await provision(gateway.jetstream(), td.directory, limits=broker.storage)
        expected = len(STREAMS) + len(consumers_for(td.directory))
        assert (report.created, report.updated, report.conflicts, report.kept) == ([], [], [], [])
        assert len(report.unchanged) == expected == 9 + 3 + 2 * 3  # LEASES: the 9th stream
        for spec in STREAMS:
            config = (await gateway.api(f"$JS.API.STREAM.INFO.{spec.name}"))["config"]
            assert config["storage"] == "file"
            assert config["deny_delete"] is spec.records
            assert config["deny_purge"] is spec.records
            assert config.get("allow_atomic", False) is spec.allow_atomic
            assert config.get("allow_direct", False) is spec.allow_direct
            assert not config.get("allow_msg_ttl")
            assert not config.get("allow_msg_schedules")
            assert "subject_delete_marker_ttl" not in config
        consumer = await gateway.api("$JS.API.CONSUMER.INFO.DELIVERY.out-school-1-FLASH")
        assert consumer["config"]["filter_subject"] == "ref.out.school-1.FLASH"
        assert consumer["config"]["ack_policy"] == "explicit"
        assert consumer["config"]["ack_wait"] == consumer["config"]["backoff"][0]
    finally:
        await gateway.close()


async def test_provisioning_repairs_drift_and_reports_conflicts(broker_factory, directory_builder):
    td = directory_builder(PARTNERS)
    broker = await broker_factory(td)
    gateway = await broker.gateway()
    try:
        js = gateway.jetstream()
        info = await js.consumer_info("DELIVERY", "out-hotel-1-URGENT")
        info.config.max_ack_pending = 1
        await js.add_consumer("DELIVERY", info.config)
        quarantine = (await js.stream_info("QUARANTINE")).config
        quarantine.allow_msg_ttl = True  # cannot be turned off again
        await js.update_stream(quarantine)
        report = await provision(js, td.directory, limits=broker.storage)
        assert report.updated == ["DELIVERY/out-hotel-1-URGENT"]
        assert [name for name, _ in report.conflicts] == ["QUARANTINE"]
        info = await js.consumer_info("DELIVERY", "out-hotel-1-URGENT")
        assert info.config.max_ack_pending == 1000
    finally:
        await gateway.close()


async def test_max_deliveries_advisories_are_kept(broker_factory, directory_builder):
    """Advisories are fire-and-forget: the ADVISORIES stream is what keeps them."""
    broker = await broker_factory(directory_builder(PARTNERS))
    gateway = await broker.gateway()
    try:
        probe = {
            "name": "probe",
            "durable_name": "probe",
            "ack_policy": "explicit",
            "filter_subject": "ref.out.school-1.FLASH",
            "ack_wait": 200_000_000,
            "max_deliver": 2,
        }
        await gateway.api(
            "$JS.API.CONSUMER.CREATE.DELIVERY.probe", {"stream_name": "DELIVERY", "config": probe}
        )
        await gateway.js_publish("ref.out.school-1.FLASH", b"never acked")
        delivered = 0
        async with asyncio.timeout(10):
            while broker.stream_counts()["ADVISORIES"] == 0:
                delivered += len(await gateway.fetch("DELIVERY", "probe", 1, expires=0.3))
        assert delivered == 2
        record = await gateway.api("$JS.API.STREAM.MSG.GET.ADVISORIES", {"seq": 1})
        assert record["message"]["subject"] == (
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.DELIVERY.probe"
        )
    finally:
        await gateway.close()


async def test_directory_change_and_reload_lose_nothing(tmp_path, directory_builder):
    first = directory_builder(PARTNERS, serial=1)
    data_dir = tmp_path / "broker"
    creds = {}
    for pid, seed in first.seeds.items():
        creds[pid] = tmp_path / f"{pid}.nk"
        write_seed(creds[pid], seed)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(embedded.broker_down, data_dir)
        info, report = await embedded.broker_up(
            data_dir, directory=first.signed, root_public_key=first.root_public_key
        )
        assert "DELIVERY/out-hotel-1-FLASH" in report.created

        async def connected(pid: str, creds_file: Path, inbox: str | None = None) -> Connection:
            conn = await connect(
                info.client_url,
                creds=creds_file,
                inbox_prefix=inbox or inbox_prefix(pid),
                name=pid,
            )
            return await stack.enter_async_context(conn)

        school = await connected("school-1", creds["school-1"])
        hotel = await connected("hotel-1", creds["hotel-1"])
        gateway = await connected("gateway", data_dir / "creds" / "admin.nk", GATEWAY_INBOX)
        for n in range(20):
            await school.js_publish("ref.in.school-1", b"e", msg_id=f"s-{n}")
            await hotel.js_publish("ref.in.hotel-1", b"e", msg_id=f"h-{n}")
            await gateway.js_publish("ref.out.hotel-1.URGENT", b"copy", msg_id=f"c-{n}")
        before = await _counts(gateway)
        assert before["INGRESS"] == 40
        assert before["DELIVERY"] == 20

        second = directory_builder(
            [*PARTNERS, ("crip-93", PartnerKind.CRIP)],
            revoked=["hotel-1"],
            serial=2,
            root=first.root,
            seeds=first.seeds,
        )
        report = await embedded.broker_reload(
            data_dir, directory=second.signed, root_public_key=second.root_public_key
        )
        assert sorted(report.created) == sorted(f"DELIVERY/out-crip-93-{p.label}" for p in Priority)
        assert sorted(report.kept) == sorted(f"DELIVERY/out-hotel-1-{p.label}" for p in Priority)

        # the revoked partner is cut off and cannot come back
        with pytest.raises(TransportError):
            await hotel.js_publish("ref.in.hotel-1", b"late", msg_id="late", max_wait=2.0)
        with pytest.raises(PermissionDenied):
            await connect(
                info.client_url,
                creds=creds["hotel-1"],
                inbox_prefix=inbox_prefix("hotel-1"),
                name="h2",
                connect_timeout=5.0,
            )
        # the new partner works at once
        crip_creds = tmp_path / "crip-93.nk"
        write_seed(crip_creds, second.seeds["crip-93"])
        crip = await connected("crip-93", crip_creds)
        await crip.js_publish("ref.in.crip-93", b"e", msg_id="crip-0")
        assert await crip.fetch("DELIVERY", "out-crip-93-FLASH", 1, expires=0.2) == []
        await school.js_publish("ref.in.school-1", b"e", msg_id="s-after")  # untouched
        after = await _counts(gateway)
        assert after == {**before, "INGRESS": 42}
        pending = await gateway.api("$JS.API.CONSUMER.INFO.DELIVERY.out-hotel-1-URGENT")
        assert pending["num_pending"] == 20  # kept for the records

        with pytest.raises(DirectoryError) as caught:  # an older edition is refused
            await embedded.broker_reload(
                data_dir, directory=first.signed, root_public_key=first.root_public_key
            )
        assert caught.value.reason is Reason.DIRECTORY_ROLLBACK


async def test_revocation_ends_a_waiting_fetch_at_once(broker_factory, directory_builder):
    """A revoked agent blocked in a long fetch gets an error right away, not at its deadline."""
    first = directory_builder(PARTNERS)
    broker = await broker_factory(first)
    hotel = await broker.partner("hotel-1")
    gateway = await broker.gateway()
    try:
        await gateway.js_publish("ref.out.hotel-1.ROUTINE", b"copy", msg_id="c-1")
        before = broker.stream_counts()
        waiting = asyncio.create_task(hotel.fetch("DELIVERY", "out-hotel-1-FLASH", 1, expires=30))
        second = directory_builder(
            PARTNERS, revoked=["hotel-1"], serial=2, root=first.root, seeds=first.seeds
        )
        started = time.monotonic()
        await broker.reconfigure(second)
        with pytest.raises(TransportError) as caught:
            await asyncio.wait_for(waiting, 10)
        assert caught.value.reason is Reason.NOT_CONNECTED
        assert time.monotonic() - started < 10
        with pytest.raises(PermissionDenied):
            await broker.partner("hotel-1", connect_timeout=5.0)
        assert broker.stream_counts() == before
    finally:
        await hotel.close()
        await gateway.close()


async def _counts(gateway) -> dict[str, int]:
    return {
        spec.name: (await gateway.api(f"$JS.API.STREAM.INFO.{spec.name}"))["state"]["messages"]
        for spec in STREAMS
    }


# -- command line ------------------------------------------------------------------------------


def test_cli_up_status_down(tmp_path, directory_builder) -> None:
    td = directory_builder(PARTNERS)
    signed = tmp_path / "directory.json"
    signed.write_bytes(td.signed)
    root_key = base64.b64encode(td.root_public_key).decode()
    data_dir = tmp_path / "data"
    runner = CliRunner()
    up = runner.invoke(
        broker_cmd.app,
        [
            "up",
            "--data-dir",
            str(data_dir),
            "--directory",
            str(signed),
            "--root-public-key",
            root_key,
            "--json",
        ],
    )
    assert up.exit_code == 0, up.output
    try:
        started = json.loads(up.stdout)
        assert started["client_url"].startswith("nats://127.0.0.1:")
        assert started["monitor_url"].startswith("http://127.0.0.1:")
        assert started["sync_always"] is True
        assert verify_directory((data_dir / "directory.json").read_bytes(), td.root_public_key)

        again = runner.invoke(broker_cmd.app, ["up", "--data-dir", str(data_dir)])
        assert again.exit_code == 2
        assert "already running" in again.stderr

        status = runner.invoke(broker_cmd.app, ["status", "--data-dir", str(data_dir), "--json"])
        assert status.exit_code == 0, status.output
        report = json.loads(status.stdout)
        assert report["healthy"] is True
        assert report["sync_always"] is True
        assert {s["name"] for s in report["streams"]} == {s.name for s in STREAMS}
        names = {(c["stream"], c["name"]) for c in report["consumers"]}
        assert ("DELIVERY", "out-school-1-ROUTINE") in names
        text = runner.invoke(broker_cmd.app, ["status", "--data-dir", str(data_dir)])
        assert "fsync every write: yes" in text.stdout
    finally:
        down = runner.invoke(broker_cmd.app, ["down", "--data-dir", str(data_dir)])
    assert down.exit_code == 0, down.output
    assert "stopped" in down.stdout
    assert not embedded.is_alive(started["pid"])
    gone = runner.invoke(
        broker_cmd.app,
        [
            "status",
            "-s",
            started["client_url"],
            "--creds",
            str(data_dir / "creds" / "operator.nk"),
            "--timeout",
            "2",
        ],
    )
    assert gone.exit_code == 3
    assert "NOT_CONNECTED" in gone.stderr
    stopped = runner.invoke(broker_cmd.app, ["status", "--data-dir", str(data_dir)])
    assert stopped.exit_code == 3
    assert runner.invoke(broker_cmd.app, ["down", "--data-dir", str(data_dir)]).exit_code == 0


async def test_a_partner_whose_keys_expired_is_cut_off_at_reload(broker_factory, directory_builder):
    """The user of a partner goes away with its last valid key (at the next reload)."""
    from datetime import UTC, datetime, timedelta

    from relais.agents.keys import generate
    from relais.broker_config.directory import add_key, bump_serial, new_partner_key, revoke_key

    td = directory_builder(PARTNERS)
    now = datetime.now(UTC).replace(microsecond=0)
    brief = generate("hotel-1")
    short = new_partner_key(
        brief.sign_pk,
        brief.box_pk,
        not_before=now - timedelta(seconds=1),
        not_after=now + timedelta(minutes=1),
    )
    hotel = td.directory.get("hotel-1")
    directory = add_key(td.directory, "hotel-1", short)
    directory = revoke_key(directory, "hotel-1", hotel.keys[0].key_id)
    td = replace(td, directory=directory)
    broker = await broker_factory(td)
    conn = await broker.partner("hotel-1")  # its short key is valid: it has a user
    await conn.close()
    # the configuration a reload generates once that key has expired (the clock injected)
    later = short.not_after_ms + 60_000
    await broker.reconfigure(
        replace(td, directory=bump_serial(directory, issued_at=now)), at_ms=later
    )
    with pytest.raises(PermissionDenied):
        await broker.partner("hotel-1", connect_timeout=3.0)
    school = await broker.partner("school-1")  # the others keep theirs
    await school.close()


async def test_down_takes_an_absolute_path_for_a_broker_started_relative(
    tmp_path, directory_builder, monkeypatch
) -> None:
    """`broker down` names the data directory however it likes: relative or absolute."""
    td = directory_builder(PARTNERS)
    monkeypatch.chdir(tmp_path)
    await embedded.broker_up(
        Path("relative-data"), directory=td.signed, root_public_key=td.root_public_key
    )
    try:
        pid = embedded.broker_down((tmp_path / "relative-data").resolve())
    finally:
        embedded.broker_down(Path("relative-data"))
    assert pid is not None
    assert embedded.running_pid(tmp_path / "relative-data") is None
