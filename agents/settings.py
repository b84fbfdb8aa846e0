"""A partner agent's settings: one object, from a TOML or JSON file and ``RELAIS_AGENT_*``.

Example ``agent.toml`` (relative paths are relative to the file)::

    partner_id = "crip-93"
    key_files = ["keys/crip-93.key"]        # several during a key rotation (old and new)
    passphrase_file = "keys/crip-93.pass"   # first line, mode 0600; absent: prompted
    root_public_key = "root.pub"            # pinned root key: base64, or a file holding it
    directory_file = "directory.json"       # the signed directory to start with
    nats_url = "nats://127.0.0.1:4222"      # several: comma-separated
    creds = "creds/crip-93.nk"              # the partner's NATS user nkey seed (0600)
    # tls_ca_file = "tls/ca.crt"            # the partnership CA: the broker is verified
    # tls_client_cert_file = "tls/crip-93.crt"   # for a broker with mutual TLS
    # tls_client_key_file = "tls/crip-93.key"    #   (0600)
    data_dir = "var/crip-93"                # SQLite outbox and inbox, directory cache
    api_host = "127.0.0.1"                  # loopback unless api_allow_remote = true
    api_port = 8470                         # 0: chosen by the system (see data_dir/api.json)
    api_token_file = "secrets/api.token"    # bearer token of the local API (0600)
    # webhook_url = "http://127.0.0.1:9000/relais"
    # webhook_secret_file = "secrets/webhook.secret"   # "whsec_<base64>" or raw text (0600)
    # rules_file = "rules.toml"             # default: the packaged partnership rules

    [web]                                   # the web interface for people (off by default)
    enabled = true
    host = "127.0.0.1"                      # any other address only with TLS:
    port = 8471                             # 0: chosen by the system (see data_dir/web.json)
    # tls_cert_file = "tls/agent.crt"       # PEM certificate chain
    # tls_key_file = "tls/agent.key"        # PEM private key (0600)
    idle_timeout_seconds = 900              # a session unused this long ends

Precedence: values given to :func:`load_settings` override environment variables
(``RELAIS_AGENT_PARTNER_ID``, ``RELAIS_AGENT_KEY_FILES='["a.key","b.key"]'``...), which
override the file, which overrides the defaults. Secrets never sit in the settings
themselves: the passphrase, the API token and the webhook secret are read from files that
group and others cannot access (:func:`relais.agents.keys.read_secret_file`).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Final, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from relais.agents.keys import read_secret_file
from relais.broker_config.connection import ClientTls
from relais.schemas.domain import PARTNER_ID_RE
from relais.schemas.errors import ConfigError

__all__ = [
    "AgentSettings",
    "WebSettings",
    "load_settings",
    "read_api_token",
    "read_webhook_secret",
]

_DAY: Final = 86_400.0
_MIN_TOKEN_BYTES: Final = 16
_PATH_FIELDS: Final = (
    "passphrase_file",
    "directory_file",
    "creds",
    "tls_ca_file",
    "tls_client_cert_file",
    "tls_client_key_file",
    "data_dir",
    "api_token_file",
    "webhook_secret_file",
    "rules_file",
)
_WEBHOOK_SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a format prefix, not a secret
# Values read from the settings file by load_settings, for the file source below.
_FILE_VALUES: ContextVar[dict[str, Any] | None] = ContextVar(
    "relais_agent_file_values", default=None
)


class _FileSource(PydanticBaseSettingsSource):
    """The settings file, below the environment in precedence."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        values = _FILE_VALUES.get() or {}
        return values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_VALUES.get() or {})


class WebSettings(BaseModel):
    """The ``[web]`` section: the agent's web interface for the partner's staff."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8471, ge=0, le=65535)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    idle_timeout_seconds: float = Field(default=900.0, ge=60, le=8 * 3600)
    session_max_seconds: float = Field(default=12 * 3600.0, ge=300, le=_DAY)
    max_failed_logins: int = Field(default=5, ge=3, le=10)
    inbox_poll_seconds: float = Field(default=5.0, ge=1, le=300)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("web tls_cert_file and tls_key_file go together")
        if not _is_loopback(self.host) and not self.tls:
            raise ValueError("the web interface listens beyond loopback only with TLS")
        return self

    @property
    def tls(self) -> bool:
        """Served over HTTPS (certificate and key files given)."""
        return self.tls_cert_file is not None and self.tls_key_file is not None


class AgentSettings(BaseSettings):
    """Everything a partner agent needs (see the module docstring)."""

    model_config = SettingsConfigDict(env_prefix="RELAIS_AGENT_", extra="forbid", frozen=True)

    partner_id: str = Field(pattern=PARTNER_ID_RE.pattern)
    key_files: tuple[Path, ...] = Field(min_length=1, max_length=8)
    passphrase_file: Path | None = None
    root_public_key: str = Field(min_length=1)
    directory_file: Path
    nats_url: str = "nats://127.0.0.1:4222"
    creds: Path
    # TLS to the broker: its certificate verified against the partnership CA
    tls_ca_file: Path | None = None
    tls_client_cert_file: Path | None = None
    tls_client_key_file: Path | None = None
    data_dir: Path
    rules_file: Path | None = None
    # local HTTP API
    api_enabled: bool = True
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8470, ge=0, le=65535)
    api_token_file: Path | None = None
    api_allow_remote: bool = False
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=1024 * 1024)
    # webhook delivery to the partner's system
    webhook_url: str | None = None
    webhook_secret_file: Path | None = None
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    webhook_concurrency: int = Field(default=4, ge=1, le=32)
    webhook_backoff_initial_seconds: float = Field(default=1.0, gt=0, le=600)
    webhook_backoff_max_seconds: float = Field(default=300.0, gt=0, le=86_400)
    webhook_give_up_seconds: float = Field(default=7 * _DAY, gt=0)
    # transport
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    request_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    directory_poll_seconds: float = Field(default=30.0, gt=0, le=86_400)
    fetch_batch: int = Field(default=32, ge=1, le=256)
    pull_expires_seconds: float = Field(default=5.0, gt=0, le=60)
    publish_window: int = Field(default=64, ge=1, le=1000)
    publish_backoff_max_seconds: float = Field(default=5.0, gt=0, le=300)
    # A delivery refused for a reason a newer directory, key file or software version could
    # cure (unknown sender, key or schema) is retried this many times before it is dropped.
    retry_deliveries: int = Field(default=10, ge=1, le=1000)
    retry_delay_seconds: float = Field(default=60.0, gt=0, le=3600)
    # events
    event_ttl_seconds: float = Field(default=14 * _DAY, gt=60, le=90 * _DAY)
    # the web interface for people (agents/web)
    web: WebSettings = Field(default_factory=WebSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Explicit values, then the environment, then the settings file."""
        return (init_settings, env_settings, _FileSource(settings_cls))

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.api_enabled and self.api_token_file is None:
            raise ValueError("api_token_file is required when the API is enabled")
        if not self.api_allow_remote and not _is_loopback(self.api_host):
            raise ValueError("api_host must be a loopback address unless api_allow_remote")
        if (self.webhook_url is None) != (self.webhook_secret_file is None):
            raise ValueError("webhook_url and webhook_secret_file go together")
        if self.webhook_url is not None:
            parts = urlsplit(self.webhook_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("webhook_url must be an http(s) URL")
        if self.webhook_backoff_max_seconds < self.webhook_backoff_initial_seconds:
            raise ValueError("webhook backoff: the maximum is below the initial delay")
        if (self.tls_client_cert_file is None) != (self.tls_client_key_file is None):
            raise ValueError("tls_client_cert_file and tls_client_key_file go together")
        if self.tls_client_cert_file is not None and self.tls_ca_file is None:
            raise ValueError("a TLS client certificate needs tls_ca_file")
        return self

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
        """The agent's SQLite database (outbox, inbox, receipts, webhooks)."""
        return self.data_dir / "agent.sqlite3"

    @property
    def directory_cache(self) -> Path:
        """The newest directory edition seen, kept across restarts (rollback protection)."""
        return self.data_dir / "directory.json"

    @property
    def api_info_file(self) -> Path:
        """Where the running agent writes the address its API listens on."""
        return self.data_dir / "api.json"

    @property
    def web_database(self) -> Path:
        """The web interface's SQLite database (people, login attempts, access log)."""
        return self.data_dir / "web.sqlite3"

    @property
    def web_info_file(self) -> Path:
        """Where the running agent writes the address its web interface listens on."""
        return self.data_dir / "web.json"


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_file_values(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, UnicodeError, ValueError) as exc:  # TOMLDecodeError is a ValueError
        raise ConfigError(f"cannot read the agent settings {path}: {type(exc).__name__}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"the agent settings {path} must hold one object")
    base = path.resolve().parent
    for name in _PATH_FIELDS:
        if isinstance(values.get(name), str):
            values[name] = base / values[name]
    if isinstance(values.get("key_files"), list):
        values["key_files"] = [base / p if isinstance(p, str) else p for p in values["key_files"]]
    web = values.get("web")
    if isinstance(web, dict):
        for name in ("tls_cert_file", "tls_key_file"):
            if isinstance(web.get(name), str):
                web[name] = base / web[name]
    key = values.get("root_public_key")
    if isinstance(key, str) and (base / key).is_file():
        values["root_public_key"] = str(base / key)
    return values


def load_settings(path: Path | None = None, **overrides: Any) -> AgentSettings:
    """Settings from a TOML or JSON file (``.json``), the environment and ``overrides``."""
    values = _read_file_values(path) if path is not None else {}
    token = _FILE_VALUES.set(values)
    try:
        return AgentSettings(**overrides)
    except ValidationError as exc:
        where = "; ".join(
            ".".join(str(p) for p in e["loc"]) + f": {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigError(f"invalid agent settings: {where}") from exc
    finally:
        _FILE_VALUES.reset(token)


def read_api_token(path: Path) -> bytes:
    """The local API's bearer token (at least 16 bytes)."""
    return read_secret_file(path, "API token", min_bytes=_MIN_TOKEN_BYTES)


def read_webhook_secret(path: Path) -> bytes:
    """The webhook signing key: ``whsec_<base64>`` (Standard Webhooks) or raw text."""
    text = read_secret_file(path, "webhook secret", min_bytes=_MIN_TOKEN_BYTES)
    if text.startswith(_WEBHOOK_SECRET_PREFIX.encode()):
        try:
            key = base64.b64decode(text[len(_WEBHOOK_SECRET_PREFIX) :], validate=True)
        except ValueError as exc:
            raise ConfigError(f"the webhook secret file {path} is not valid base64") from exc
        if len(key) < _MIN_TOKEN_BYTES:
            raise ConfigError(f"the webhook secret in {path} is shorter than 16 bytes")
        return key
    return text
