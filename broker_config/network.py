"""Where a broker listens, and its TLS: given once, recorded, reused by every restart.

``relais broker up --listen HOST:PORT --monitor-port PORT --tls-cert ... --tls-key ...``
records these settings in the data directory (``network.json``, 0600); an ``up`` without
them reuses what is recorded, and the ports the operating system chose at the first start
(when none were given) are recorded too, so that the client URL every agent and the gateway
were given stays valid across restarts. A client listener outside loopback is refused
without TLS: partners' traffic never crosses a network in clear.

Local tools (provisioning, ``status``) connect to ``127.0.0.1`` when the server listens on
a wildcard address (``0.0.0.0``, ``::``): the server's certificate must then also name
127.0.0.1 (``relais broker tls`` puts it in when asked, see docs/operations.md). With
``verify_clients`` (mutual TLS) they present the server's own certificate, which is made for
both ends (serverAuth and clientAuth).
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from relais.broker_config.connection import ClientTls
from relais.broker_config.nats_conf import TlsSettings, is_loopback, write_private_file
from relais.schemas.errors import ConfigError

__all__ = ["NetworkSettings", "local_host", "parse_listen"]

_WILDCARDS: Final = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - recognised, not bound here


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6; port 0: chosen by the system at first start)."""
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not sep or not host or not 0 <= port <= 65535:
        raise ConfigError(f"--listen HOST:PORT (e.g. 127.0.0.1:4222), not {value!r}")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(
                f"--listen takes an IP address (or localhost), not {host!r}"
            ) from None
    return host, port


def local_host(host: str) -> str:
    """The address a tool on the broker's own host connects to."""
    if host in _WILDCARDS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class NetworkSettings(BaseModel):
    """The client listener, the monitoring port and client TLS of one broker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=-1, ge=-1, le=65535)  # -1: chosen at the first start, then kept
    monitor_port: int = Field(default=-1, ge=-1, le=65535)
    tls: TlsSettings | None = None

    @classmethod
    def load(cls, path: Path) -> NetworkSettings | None:
        """What ``path`` records, ``None`` when nothing is (:class:`ConfigError` if damaged)."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is damaged") from exc

    def save(self, path: Path) -> None:
        """Record these settings (0600, atomically)."""
        data = json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
        write_private_file(path, data.encode())

    def merged(
        self,
        *,
        listen: tuple[str, int] | None = None,
        monitor_port: int | None = None,
        tls: TlsSettings | None = None,
    ) -> NetworkSettings:
        """These settings with what was given now (``None``: keep the recorded value)."""
        changes: dict[str, object] = {}
        if listen is not None:
            changes.update(host=listen[0], port=listen[1] or -1)
        if monitor_port is not None:
            changes["monitor_port"] = monitor_port or -1
        if tls is not None:
            changes["tls"] = tls
        try:
            merged = NetworkSettings.model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            raise ConfigError(f"invalid listen settings: {exc.errors()[0]['msg']}") from exc
        merged.check()
        return merged

    def check(self) -> None:
        """Refuse a listener outside loopback without TLS, and TLS files that are missing."""
        if not is_loopback(self.host) and self.tls is None:
            raise ConfigError(
                f"refusing to listen on {self.host}:{self.port} without TLS: outside loopback"
                " partners' traffic must be encrypted; give --tls-cert and --tls-key (and"
                " --tls-ca), e.g. made by relais broker tls"
            )
        if self.tls is not None:
            if self.tls.ca_file is None:
                raise ConfigError(
                    "TLS needs the partnership CA too (--tls-ca): tools verify with it"
                )
            for path in (self.tls.cert_file, self.tls.key_file, self.tls.ca_file):
                if path is not None and not path.is_file():
                    raise ConfigError(f"TLS file not found: {path}")

    def with_ports(self, client_port: int, monitor_port: int) -> NetworkSettings:
        """These settings with the ports the server really listens on."""
        return self.model_copy(update={"port": client_port, "monitor_port": monitor_port})

    def client_url(self, port: int | None = None) -> str:
        """The URL a tool on this host connects to (``tls://`` with TLS)."""
        scheme = "tls" if self.tls is not None else "nats"
        return f"{scheme}://{local_host(self.host)}:{self.port if port is None else port}"

    def client_tls(self) -> ClientTls | None:
        """How a tool on this host verifies the server (``None`` without TLS)."""
        if self.tls is None:
            return None
        if self.tls.ca_file is None:
            raise ConfigError("TLS without the partnership CA (--tls-ca): the tools cannot verify")
        if self.tls.verify_clients:
            return ClientTls(self.tls.ca_file, self.tls.cert_file, self.tls.key_file)
        return ClientTls(self.tls.ca_file)
