"""The gateway's settings: one object, from a TOML file and ``RELAIS_GATEWAY_*`` variables.

Example ``gateway.toml`` (relative paths are relative to the file)::

    nats_url = "nats://127.0.0.1:4222"        # several: comma-separated
    monitor_url = "http://127.0.0.1:8222"     # to check that the server fsyncs every write
    router_creds = "creds/router.nk"          # the router role's NATS nkey seed (0600)
    tracker_creds = "creds/tracker.nk"        # the tracker role's (tracker, audit, directory)
    # tls_ca_file = "tls/ca.crt"              # the partnership CA: the broker is verified
    # tls_client_cert_file = "tls/gateway.crt"  # for a broker with mutual TLS (key 0600)
    # tls_client_key_file = "tls/gateway.key"
    key_file = "keys/gateway.key"             # the gateway's signing key (relais-key/1)
    passphrase_file = "keys/gateway.pass"     # its passphrase, first line (0600)
    directory_file = "directory.json"         # the signed directory in force
    root_public_key = "root.pub"              # pinned root key: base64 or a file holding it
    data_dir = "var/gateway"                  # the tracker's SQLite database
    # rules_file = "rules.toml"               # default: the packaged partnership rules
    # max_age_seconds = 604800                # older events are refused (STALE)
    # allow_unsafe_no_fsync = false           # development only

Each role connects with its own credential, which lets it do only what that role needs; the
broker's administrator credential (``creds/admin.nk``) is never given to the gateway. A process
running only the router needs only ``router_creds``, and likewise for the tracker.

Values given to :func:`load_settings` override environment variables, which override the
defaults.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Final

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from relais.broker_config.connection import ClientTls
from relais.schemas.errors import ConfigError

__all__ = [
    "GatewaySettings",
    "load_settings",
]

_DAY: Final = 86_400.0
_PATH_FIELDS: Final = (
    "router_creds",
    "tracker_creds",
    "tls_ca_file",
    "tls_client_cert_file",
    "tls_client_key_file",
    "key_file",
    "passphrase_file",
    "directory_file",
    "rules_file",
    "data_dir",
)


class GatewaySettings(BaseSettings):
    """Everything the gateway service needs (see the module docstring)."""

    model_config = SettingsConfigDict(env_prefix="RELAIS_GATEWAY_", extra="forbid", frozen=True)

    nats_url: str = "nats://127.0.0.1:4222"
    monitor_url: str = "http://127.0.0.1:8222"
    router_creds: Path | None = None
    tracker_creds: Path | None = None
    tls_ca_file: Path | None = None
    tls_client_cert_file: Path | None = None
    tls_client_key_file: Path | None = None
    key_file: Path
    passphrase_file: Path
    directory_file: Path
    root_public_key: str = Field(min_length=1)
    rules_file: Path | None = None
    data_dir: Path
    max_age_seconds: float = Field(default=7 * _DAY, gt=0)
    skew_seconds: float = Field(default=300.0, ge=0, le=3600)
    escalation_tick_seconds: float = Field(default=0.5, gt=0, le=5)
    checkpoint_every_records: int = Field(default=1000, ge=1)
    checkpoint_interval_seconds: float = Field(default=10.0, gt=0)
    router_batch: int = Field(default=100, ge=1, le=1000)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    allow_unsafe_no_fsync: bool = False

    @property
    def broker_tls(self) -> ClientTls | None:
        """TLS to the broker (``None``: as the URLs and ``NATS_CA`` say)."""
        if self.tls_ca_file is None:
            return None
        return ClientTls(self.tls_ca_file, self.tls_client_cert_file, self.tls_client_key_file)

    @property
    def servers(self) -> list[str]:
        """The NATS server URLs."""
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    @property
    def database(self) -> Path:
        """The tracker's SQLite database."""
        return self.data_dir / "tracker.sqlite3"


def load_settings(path: Path | None = None, **overrides: Any) -> GatewaySettings:
    """Settings from a TOML file (relative paths resolved against it), then the environment."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read the gateway settings {path}") from exc
        base = path.resolve().parent
        for name in _PATH_FIELDS:
            if isinstance(values.get(name), str):
                values[name] = base / values[name]
        key = values.get("root_public_key")
        if isinstance(key, str) and (base / key).is_file():
            values["root_public_key"] = str(base / key)
    values.update(overrides)
    try:
        return GatewaySettings(**values)
    except ValidationError as exc:
        where = "; ".join(
            ".".join(str(p) for p in e["loc"]) + f": {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigError(f"invalid gateway settings: {where}") from exc
