"""Shared set-up of the examples: a demo territory, the embedded broker, agents, a gateway.

Everything lives in a fresh temporary directory (or ``RELAIS_EXAMPLES_DIR``) and is torn
down at the end: the demo territory of Seine-Saint-Denis written with ``Territory.write``
(every partner's key file, its NATS seed, the signed directory), the embedded broker
started with ``relais broker up``, partner agents (``relais agent run --config``), and the
gateway (``relais gateway run --config``) when it is installed: without it, events are
published and stay on the ingress stream, nothing is routed.

Everything here is fictional: names, places, phone numbers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from relais.agents.keys import write_atomic
from relais.agents.logs import configure_logging
from relais.agents.settings import AgentSettings, load_settings
from relais.agents.territory import build_territory

__all__ = ["Demo"]

PASSPHRASE = b"phrase de passe de la demonstration"


def _relais() -> list[str]:
    """The ``relais`` command of this Python environment."""
    beside = Path(sys.executable).with_name("relais")
    return [str(beside)] if beside.exists() else [shutil.which("relais") or "relais"]


def _has_command(*args: str) -> bool:
    probe = subprocess.run([*_relais(), *args, "--help"], capture_output=True, check=False)
    return probe.returncode == 0


class Demo:
    """A demo territory, its broker, and the processes started for an example."""

    def __init__(self) -> None:
        configure_logging(level=logging.WARNING)  # agents run in this process too
        given = os.environ.get("RELAIS_EXAMPLES_DIR")
        self.root = Path(given) if given else Path(tempfile.mkdtemp(prefix="relais-demo-"))
        self.territory = build_territory()
        self.territory.write(self.root / "territory", passphrase=PASSPHRASE)
        write_atomic(self.root / "territory" / "passphrase", PASSPHRASE + b"\n", overwrite=True)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.broker: dict[str, Any] = {}

    def __enter__(self) -> Demo:
        t = self.root / "territory"
        up = subprocess.run(
            [*_relais(), "broker", "up", "--data-dir", str(self.root / "broker"), "--json",
             "--directory", str(t / "directory.json"), "--root-public-key", str(t / "root.pub")],
            capture_output=True, check=True,
        )  # fmt: skip
        self.broker = json.loads(up.stdout)
        print(f"broker up: {self.broker['client_url']} (data in {self.root})")
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.processes):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
        subprocess.run([*_relais(), "broker", "down", "--data-dir", str(self.root / "broker")],
                       capture_output=True, check=False)  # fmt: skip
        if "RELAIS_EXAMPLES_DIR" not in os.environ:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- agents ------------------------------------------------------------------------------

    def token(self, partner: str) -> str:
        """The local API token of ``partner``'s agent."""
        return f"jeton-de-demonstration-{partner}"

    def settings(self, partner: str, **extra: Any) -> AgentSettings:
        """Settings for ``partner``'s agent (also written to ``<root>/<partner>.json``)."""
        t = self.root / "territory"
        token = self.root / "secrets" / f"{partner}.token"
        token.parent.mkdir(mode=0o700, exist_ok=True)
        write_atomic(token, self.token(partner).encode() + b"\n", overwrite=True)
        values = {
            "partner_id": partner,
            "key_files": [str(t / "keys" / f"{partner}.key")],
            "passphrase_file": str(t / "passphrase"),
            "root_public_key": str(t / "root.pub"),
            "directory_file": str(t / "directory.json"),
            "nats_url": self.broker["client_url"],
            "creds": str(t / "creds" / f"{partner}.nk"),
            "data_dir": str(self.root / "agents" / partner),
            "api_token_file": str(token),
            "api_port": 0,
            **extra,
        }
        (self.root / f"{partner}.json").write_text(json.dumps(values))
        return load_settings(self.root / f"{partner}.json")

    def start_agent(self, partner: str, **extra: Any) -> str:
        """``relais agent run --config`` for ``partner``; the URL of its local API."""
        settings = self.settings(partner, **extra)
        command = [*_relais(), "agent", "run"] if _has_command("agent") else [
            sys.executable, "-m", "relais.cli.agent_cmd", "run",
        ]  # fmt: skip
        log = (self.root / f"{partner}.log").open("ab")
        proc = subprocess.Popen(
            [*command, "--config", str(self.root / f"{partner}.json")], stdout=log, stderr=log
        )
        self.processes.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                info = json.loads(settings.api_info_file.read_text())
                if info["pid"] == proc.pid:
                    return str(info["url"])
            if proc.poll() is not None:
                raise SystemExit(f"the {partner} agent stopped: see {self.root / partner}.log")
            time.sleep(0.05)
        raise SystemExit(f"the {partner} agent did not start")

    def client(self, url: str, partner: str) -> httpx.Client:
        """An HTTP client for an agent's local API."""
        headers = {"Authorization": f"Bearer {self.token(partner)}"}
        return httpx.Client(base_url=url, headers=headers, trust_env=False, timeout=10)

    # -- gateway -----------------------------------------------------------------------------

    def start_gateway(self) -> bool:
        """Start the gateway (router and tracker) if it is installed; True if started."""
        if _has_command("gateway"):
            command = [*_relais(), "gateway", "run"]
        elif importlib.util.find_spec("relais.gateway") is not None:
            command = [sys.executable, "-m", "relais.gateway"]  # the same, without the CLI
        else:
            print("(no gateway installed: events are published, not routed)")
            return False
        t = self.root / "territory"
        config = self.root / "gateway.toml"
        config.write_text(
            f'nats_url = "{self.broker["client_url"]}"\n'
            f'monitor_url = "{self.broker["monitor_url"]}"\n'
            f'router_creds = "{self.root / "broker" / "creds" / "router.nk"}"\n'
            f'tracker_creds = "{self.root / "broker" / "creds" / "tracker.nk"}"\n'
            f'key_file = "{t / "keys" / "gateway.key"}"\n'
            f'passphrase_file = "{t / "passphrase"}"\n'
            f'directory_file = "{t / "directory.json"}"\n'
            f'root_public_key = "{t / "root.pub"}"\n'
            f'data_dir = "{self.root / "gateway"}"\n'
        )
        log = (self.root / "gateway.log").open("ab")
        proc = subprocess.Popen([*command, "--config", str(config)], stdout=log, stderr=log)
        self.processes.append(proc)
        print("gateway started (router and tracker)")
        return True
