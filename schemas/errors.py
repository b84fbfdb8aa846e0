"""The one error tree of relais.

Every failure raised by relais code derives from :class:`RelaisError`, carries a stable
machine-readable :class:`Reason` code and never carries content or personal data in its
message::

    RelaisError
    ├── SchemaError          bad schema files, unknown fingerprints, invalid event payloads
    │   └── PayloadError     an event that does not fit its schema (names the fields, not values)
    │       └── ContractError    (agents.validation) the API contract: field paths and codes
    ├── EnvelopeError        anything wrong with a sealed envelope or signed statement
    │                        (opaque message outside, precise reason code inside)
    ├── KeyFileError         private key files: permissions, passphrase, format
    ├── DirectoryError       the signed partner directory
    ├── RoutingError         the routing rules and their evaluation
    ├── TransportError       NATS: connection, permission, timeouts
    │   └── PermissionDenied a NATS permissions violation, surfaced from the async error callback
    ├── ConfigError          settings, broker configuration, CLI inputs
    └── StepTimeout          (cli demo kit) a step of the demonstration that did not happen

Foreign exceptions are translated at the boundary (``raise X from exc``) so callers only
need to catch ``RelaisError``.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ConfigError",
    "DirectoryError",
    "EnvelopeError",
    "KeyFileError",
    "PayloadError",
    "PermissionDenied",
    "Reason",
    "RelaisError",
    "RoutingError",
    "SchemaError",
    "TransportError",
]


class Reason(StrEnum):
    """Stable reason codes. They are recorded in quarantine and audit records: never rename."""

    # framing and caps (checked before any decoding work)
    OVERSIZE = "OVERSIZE"
    BAD_MAGIC = "BAD_MAGIC"
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    WRONG_KIND = "WRONG_KIND"
    TRUNCATED = "TRUNCATED"
    TRAILING_BYTES = "TRAILING_BYTES"
    VARINT_OVERLONG = "VARINT_OVERLONG"
    LENGTH_EXCEEDS_INPUT = "LENGTH_EXCEEDS_INPUT"
    FIELD_TOO_LARGE = "FIELD_TOO_LARGE"
    TOO_MANY_RECIPIENTS = "TOO_MANY_RECIPIENTS"
    TOO_MANY_SECTIONS = "TOO_MANY_SECTIONS"
    MALFORMED_HEADER = "MALFORMED_HEADER"
    SECTION_COUNT_MISMATCH = "SECTION_COUNT_MISMATCH"
    WRAP_COUNT_MISMATCH = "WRAP_COUNT_MISMATCH"
    UNSORTED_RECIPIENTS = "UNSORTED_RECIPIENTS"
    BAD_AUDIENCE = "BAD_AUDIENCE"
    # the partnership the signed bytes name is not the verifier's (replay across partnerships)
    WRONG_PARTNERSHIP = "WRONG_PARTNERSHIP"
    # identity and signatures
    UNKNOWN_SENDER = "UNKNOWN_SENDER"
    UNKNOWN_KEY = "UNKNOWN_KEY"
    REVOKED_KEY = "REVOKED_KEY"
    EXPIRED_KEY = "EXPIRED_KEY"
    KEY_NOT_YET_VALID = "KEY_NOT_YET_VALID"
    REVOKED_PARTNER = "REVOKED_PARTNER"
    NONCANONICAL_SIGNATURE = "NONCANONICAL_SIGNATURE"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    SMALL_ORDER_KEY = "SMALL_ORDER_KEY"
    # time
    EXPIRED = "EXPIRED"
    FROM_FUTURE = "FROM_FUTURE"
    STALE = "STALE"
    # content
    UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"
    SECTION_HASH_MISMATCH = "SECTION_HASH_MISMATCH"
    NOT_A_RECIPIENT = "NOT_A_RECIPIENT"
    UNWRAP_FAILED = "UNWRAP_FAILED"
    DECRYPT_FAILED = "DECRYPT_FAILED"
    COMMITMENT_MISMATCH = "COMMITMENT_MISMATCH"
    BODY_DECODE_FAILED = "BODY_DECODE_FAILED"
    # a signed Avro body in another than its one canonical encoding (boolean byte 2,
    # overlong varint, union or enum index out of range, array in several blocks...)
    NONCANONICAL_ENCODING = "NONCANONICAL_ENCODING"
    # more array items or map entries in one section than the cap (work bound)
    TOO_MANY_ITEMS = "TOO_MANY_ITEMS"
    ROUTING_MISMATCH = "ROUTING_MISMATCH"
    INVALID_PAYLOAD = "INVALID_PAYLOAD"
    # policy (router)
    SIGNER_NOT_INGRESS_IDENTITY = "SIGNER_NOT_INGRESS_IDENTITY"
    RECIPIENTS_NOT_RULES = "RECIPIENTS_NOT_RULES"
    AUDIENCE_NOT_ENTITLED = "AUDIENCE_NOT_ENTITLED"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    SENDER_NOT_ALLOWED = "SENDER_NOT_ALLOWED"
    DEPARTEMENT_NOT_RULES = "DEPARTEMENT_NOT_RULES"
    REPLAY = "REPLAY"
    PRIORITY_NOT_RULES = "PRIORITY_NOT_RULES"
    # audit log (relais audit verify)
    AUDIT_RECORD_MISSING = "AUDIT_RECORD_MISSING"
    AUDIT_RECORD_MALFORMED = "AUDIT_RECORD_MALFORMED"
    AUDIT_CHAIN_MISMATCH = "AUDIT_CHAIN_MISMATCH"
    AUDIT_CHECKPOINT_INVALID = "AUDIT_CHECKPOINT_INVALID"
    AUDIT_CHECKPOINT_DISCONTINUOUS = "AUDIT_CHECKPOINT_DISCONTINUOUS"
    AUDIT_ANCHOR_MISSING = "AUDIT_ANCHOR_MISSING"
    # directory
    DIRECTORY_BAD_SIGNATURE = "DIRECTORY_BAD_SIGNATURE"
    DIRECTORY_MALFORMED = "DIRECTORY_MALFORMED"
    DIRECTORY_ROLLBACK = "DIRECTORY_ROLLBACK"
    # the configuration edition is past its expires_at (held back, or not re-signed in time)
    DIRECTORY_EXPIRED = "DIRECTORY_EXPIRED"
    # sealed under an earlier edition whose recipients were right then: delivered to them,
    # the sender re-seals for the recipients the edition in force adds
    EDITION_CHANGED = "EDITION_CHANGED"
    # key files
    KEYFILE_PERMISSIONS = "KEYFILE_PERMISSIONS"
    KEYFILE_BAD_PASSPHRASE = "KEYFILE_BAD_PASSPHRASE"  # noqa: S105 - a reason code
    KEYFILE_MALFORMED = "KEYFILE_MALFORMED"
    # schemas
    SCHEMA_INVALID = "SCHEMA_INVALID"
    SCHEMA_LINT = "SCHEMA_LINT"
    SCHEMA_INCOMPATIBLE = "SCHEMA_INCOMPATIBLE"
    SCHEMA_CONFLICT = "SCHEMA_CONFLICT"
    # routing rules
    RULES_INVALID = "RULES_INVALID"
    NO_RULE = "NO_RULE"
    # transport
    PERMISSION_DENIED = "PERMISSION_DENIED"
    TIMEOUT = "TIMEOUT"
    NOT_CONNECTED = "NOT_CONNECTED"
    SERVER_NOT_DURABLE = "SERVER_NOT_DURABLE"
    BROKER_ERROR = "BROKER_ERROR"
    STORAGE_LIMIT = "STORAGE_LIMIT"  # a stream, or this partner's share of it, is full
    CONNECTION_LIMIT = "CONNECTION_LIMIT"  # this identity holds all the connections it may
    # configuration
    CONFIG_INVALID = "CONFIG_INVALID"
    # partner agent (local HTTP API, deliveries)
    SIGNER_NOT_GATEWAY = "SIGNER_NOT_GATEWAY"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    UNAUTHORIZED = "UNAUTHORIZED"
    UNKNOWN_EVENT = "UNKNOWN_EVENT"
    STATE_CONFLICT = "STATE_CONFLICT"
    NOT_READY = "NOT_READY"
    STORE_FAILED = "STORE_FAILED"


class RelaisError(Exception):
    """Root of every relais error. ``reason`` is stable; ``str()`` never holds content."""

    default_reason: Reason = Reason.CONFIG_INVALID

    def __init__(self, message: str, *, reason: Reason | None = None) -> None:
        super().__init__(message)
        self.reason: Reason = reason if reason is not None else self.default_reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason.value!r})"


class SchemaError(RelaisError):
    """A schema file or the schema registry is inconsistent, or a fingerprint is unknown."""

    default_reason = Reason.SCHEMA_INVALID


class PayloadError(SchemaError):
    """An event payload does not fit its schema. ``fields`` names the offending fields."""

    default_reason = Reason.INVALID_PAYLOAD

    def __init__(
        self, message: str, *, fields: tuple[str, ...] = (), reason: Reason | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.fields = fields


class EnvelopeError(RelaisError):
    """A sealed envelope or signed statement was rejected.

    The message is deliberately the same for every cause (nothing to learn from the outside);
    ``reason`` says precisely why, for quarantine records and tests.
    """

    default_reason = Reason.MALFORMED_HEADER
    OPAQUE_MESSAGE = "envelope rejected"

    def __init__(self, reason: Reason) -> None:
        super().__init__(self.OPAQUE_MESSAGE, reason=reason)


class KeyFileError(RelaisError):
    """A private key file is unreadable, badly protected or the passphrase is wrong."""

    default_reason = Reason.KEYFILE_MALFORMED


class DirectoryError(RelaisError):
    """The partner directory is malformed, badly signed, older than the one in use."""

    default_reason = Reason.DIRECTORY_MALFORMED


class RoutingError(RelaisError):
    """Routing rules are invalid or cannot be evaluated."""

    default_reason = Reason.RULES_INVALID


class TransportError(RelaisError):
    """NATS transport failure: not connected, timeout, server misconfigured."""

    default_reason = Reason.BROKER_ERROR


class PermissionDenied(TransportError):
    """NATS refused an operation for lack of permission (surfaced from ``error_cb``)."""

    default_reason = Reason.PERMISSION_DENIED


class ConfigError(RelaisError):
    """Invalid settings, broker configuration or command-line input."""

    default_reason = Reason.CONFIG_INVALID
