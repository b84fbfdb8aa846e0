"""The signed partner directory: who is who in the partnership, and their public keys.

A signed directory file is one JSON object::

    {"format": "relais-directory/1", "root_key_id": "<16 hex>",
     "signature": "<base64>", "signed": {<directory object>}}

``signed`` holds ``format``, ``partnership``, ``serial``, ``issued_at``, ``expires_at``,
``root_key_id``, ``partners`` and ``rules`` (see :class:`Directory`, :class:`Partner`,
:class:`PartnerKey`), and ``retention`` (:class:`~relais.broker_config.retention.Retention`;
defaults when absent). The directory and the routing rules are one signed document, the
partnership's *configuration edition*: ``serial`` is the edition number, ``rules`` the text
of the routing rules file (TOML, validated by :mod:`relais.broker_config.edition`), and
``expires_at`` the end of the edition's validity, after which verifiers refuse it
(``DIRECTORY_EXPIRED``), so that an edition held back from the agents is detected.
Encodings:

* public keys and the signature: standard base64 (RFC 4648 section 4, with padding, no line
  breaks); public keys are 32 bytes, the signature 64;
* times: ISO 8601 UTC with second precision and a ``Z`` suffix, ``YYYY-MM-DDTHH:MM:SSZ``;
* the absent optional ``nats_nkey`` is ``null``; every other member is always present.

The signature is ``Ed25519(root_sk, "directory", canonical(signed))`` (see
:func:`relais.schemas._crypto.sign`), where ``canonical`` is
``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` encoded as
UTF-8. The directory holds only strings, integers, booleans, ``null``, lists and objects, so
this coincides with RFC 8785 (JCS). A verifier canonicalises the ``signed`` value *as
parsed*, so the whitespace and member order of the file do not matter.

Verification order (:func:`verify_directory`): size cap, strict JSON parse (duplicate members,
floats, ``NaN`` refused), outer structure and partner-count cap, signature against the
pinned root public key, rollback check on ``serial``, and only then the validation of the
document (ids, codes, key ids, small-order keys, uniqueness), and, given the verifier's
clock, the validity end. Reason codes: ``DIRECTORY_MALFORMED``, ``DIRECTORY_BAD_SIGNATURE``,
``DIRECTORY_ROLLBACK``, ``DIRECTORY_EXPIRED`` and ``SMALL_ORDER_KEY``.

A validated :class:`Directory` builds its lookup index once; :class:`DirectoryKeys` resolves
envelope keys from it. The editing helpers (:func:`add_partner`, :func:`revoke_key`, ...)
return new directories: models are immutable, and ``model_copy(update=...)`` must not be used
on them because it would skip validation and keep a stale index.
"""

from __future__ import annotations

import base64
import binascii
import gc
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from importlib import resources
from typing import Annotated, Any, Final, Literal, NoReturn, Protocol, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from relais.broker_config.retention import Retention
from relais.schemas import _crypto
from relais.schemas.domain import PARTNER_ID_RE, PartnerKind
from relais.schemas.errors import ConfigError, DirectoryError, EnvelopeError, Reason
from relais.schemas.strict_json import JsonLimits, check_bounds, loads_bounded

__all__ = [
    "DEFAULT_VALIDITY",
    "DEPARTEMENTS",
    "DIRECTORY_FORMAT",
    "MAX_DIRECTORY_BYTES",
    "MAX_KEYS_PER_PARTNER",
    "MAX_PARTNERS",
    "MAX_RULES_CHARS",
    "MAX_VALIDITY",
    "SIG_CONTEXT",
    "Directory",
    "DirectoryKeys",
    "DirectorySigner",
    "Partner",
    "PartnerKey",
    "add_key",
    "add_partner",
    "bump_serial",
    "canonical_json",
    "dump_directory",
    "format_utc",
    "is_valid_departement",
    "key_id_for",
    "new_directory",
    "new_partner",
    "new_partner_key",
    "packaged_rules_text",
    "parse_directory",
    "revoke_key",
    "revoke_partner",
    "sign_directory",
    "to_ms",
    "utc_now",
    "verify_directory",
    "with_rules",
]

DIRECTORY_FORMAT: Final = "relais-directory/1"
SIG_CONTEXT: Final = "directory"
MAX_DIRECTORY_BYTES: Final = 64 * 1024 * 1024
MAX_PARTNERS: Final = 100_000
MAX_KEYS_PER_PARTNER: Final = 16
MAX_NAME_CHARS: Final = 200
# Serials stay exact in every JSON implementation (IEEE doubles).
MAX_SERIAL: Final = 2**53 - 1
# An edition is valid this long unless said otherwise: re-signed every month at the latest
# (a partnership changes its directory every week), so a held-back edition is seen.
DEFAULT_VALIDITY: Final = timedelta(days=31)
MAX_VALIDITY: Final = timedelta(days=366)
MAX_RULES_CHARS: Final = 1024 * 1024

_KEY_ID_PREFIX = b"relais/1 key-id\x00"
_KEY_ID_PATTERN = r"^[0-9a-f]{16}$"
_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
_UTC_TEXT_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_NKEY_USER_RE = re.compile(r"U[A-Z2-7]{55}")
_NKEY_PREFIX_USER = 20 << 3  # nkeys PREFIX_BYTE_USER, the "U" of user public keys
_B32_TO_INT_DIGITS = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "0123456789abcdefghijklmnopqrstuv"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_OUTER_MEMBERS = frozenset({"format", "signed", "root_key_id", "signature"})
# Work caps before parsing. A partner is about 4 containers (itself, its départements, its
# keys, a key) and 20 values; the caps allow that on average for MAX_PARTNERS partners, so
# no document costs more to refuse than the largest directory costs to load (63 MiB of
# ``[{},{},...]``, 21 million objects, is refused by a byte count).
_LIMITS: Final = JsonLimits(
    max_bytes=MAX_DIRECTORY_BYTES,
    max_containers=64 + 4 * MAX_PARTNERS,
    max_values=4096 + 24 * MAX_PARTNERS,
    max_depth=None,  # the models fix the shape; the parser's own recursion limit is caught
)
# Members a *signed* edition must spell out (a working document may leave them to defaults).
_EDITION_MEMBERS = frozenset({"expires_at", "rules"})

# INSEE codes of the départements: 01-19, 21-95 (no 20 since 1976), 2A, 2B, and the
# overseas départements 971-974 and 976 (975, Saint-Pierre-et-Miquelon, is a collectivité).
DEPARTEMENTS: frozenset[str] = frozenset(
    [f"{n:02d}" for n in range(1, 96) if n != 20]
    + ["2A", "2B"]
    + [str(n) for n in (971, 972, 973, 974, 976)]
)


def key_id_for(sign_pk: bytes, box_pk: bytes) -> str:
    """The key id of a key pair: first 16 hex chars of SHA-256(label || sign_pk || box_pk)."""
    if len(sign_pk) != 32 or len(box_pk) != 32:
        raise ConfigError("public keys must be 32 bytes")
    return _crypto.sha256(_KEY_ID_PREFIX + sign_pk + box_pk).hex()[:16]


def is_valid_departement(code: str) -> bool:
    """True for an INSEE département code (``"01"``, ``"2A"``, ``"974"``...)."""
    return code in DEPARTEMENTS


def to_ms(moment: datetime) -> int:
    """Milliseconds since the Unix epoch of an aware datetime (integer arithmetic)."""
    return (moment - _EPOCH) // _ONE_MS


def utc_now() -> datetime:
    """The current UTC time, truncated to the second (the directory's precision)."""
    return datetime.now(UTC).replace(microsecond=0)


def packaged_rules_text() -> str:
    """The packaged routing rules (``broker_config/rules/partnership.toml``), which a new
    edition embeds unless given other rules."""
    return (resources.files("relais.broker_config") / "rules" / "partnership.toml").read_text(
        "utf-8"
    )


def canonical_json(value: object) -> bytes:
    """The canonical JSON bytes that directory signatures cover (see module docstring)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


# -- field types -------------------------------------------------------------------------------


def _utc_datetime(value: object) -> object:
    # Text is parsed here, so that strict validation then sees a datetime, and only the one
    # documented spelling passes; datetimes built in Python must be UTC with whole seconds.
    if isinstance(value, str):
        if not _UTC_TEXT_RE.fullmatch(value):
            raise PydanticCustomError("utc_datetime", "expected YYYY-MM-DDTHH:MM:SSZ")
        return datetime.fromisoformat(value)
    if isinstance(value, datetime):
        if value.utcoffset() != timedelta(0) or value.microsecond:
            raise PydanticCustomError("utc_datetime", "expected a UTC time with whole seconds")
        return value.astimezone(UTC)
    return value


def format_utc(value: datetime) -> str:
    """A time as the directory writes it: ``YYYY-MM-DDTHH:MM:SSZ``."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


UtcDatetime = Annotated[
    datetime,
    BeforeValidator(_utc_datetime),
    PlainSerializer(format_utc, return_type=str, when_used="json"),
]


def _check_departement(value: str) -> str:
    if value not in DEPARTEMENTS:
        raise PydanticCustomError("departement", "not an INSEE département code")
    return value


def _check_name(value: str) -> str:
    # isprintable() refuses control, format (bidi, zero-width) and separator characters
    # other than the plain space: names are shown to operators and must not hide anything.
    if not value.isprintable() or value != value.strip():
        raise PydanticCustomError("name", "unprintable characters or surrounding spaces")
    return value


def _check_nkey(value: str) -> str:
    if _NKEY_USER_RE.fullmatch(value):
        # base64.b32decode is pure Python and slow: map RFC 4648 base32 onto int()'s base-32
        # digits instead (56 characters are exactly 35 bytes).
        raw = int(value.translate(_B32_TO_INT_DIGITS), 32).to_bytes(35, "big")
        # nkeys checksum: CRC-16/XMODEM (binascii.crc_hqx from 0), little-endian.
        checksum = binascii.crc_hqx(raw[:-2], 0).to_bytes(2, "little")
        if raw[0] == _NKEY_PREFIX_USER and checksum == raw[-2:]:
            return value
    raise PydanticCustomError("nats_nkey", "not a NATS user public nkey")


PartnerId = Annotated[str, Field(pattern=PARTNER_ID_RE.pattern)]
KeyId = Annotated[str, Field(pattern=_KEY_ID_PATTERN)]
Departement = Annotated[str, AfterValidator(_check_departement)]
OrganisationName = Annotated[
    str, Field(min_length=1, max_length=MAX_NAME_CHARS), AfterValidator(_check_name)
]
NatsUserKey = Annotated[str, AfterValidator(_check_nkey)]
Base64Key = Annotated[str, Field(min_length=44, max_length=44)]


def _decode_key(text: str) -> bytes:
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        raw = b""
    # Re-encoding refuses non-canonical padding bits: one key, one spelling.
    if len(raw) != 32 or binascii.b2a_base64(raw, newline=False).decode("ascii") != text:
        raise PydanticCustomError("public_key", "expected 32 bytes in standard base64")
    return raw


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_M = TypeVar("_M", bound=_Frozen)


# -- models ------------------------------------------------------------------------------------


class PartnerKey(_Frozen):
    """One key pair of a partner: Ed25519 for signing, X25519 for sealing to the partner."""

    key_id: KeyId
    sign_pk: Base64Key
    box_pk: Base64Key
    not_before: UtcDatetime
    not_after: UtcDatetime
    revoked: bool = False

    @model_validator(mode="after")
    def _check_key(self) -> Self:
        sign_pk, box_pk = _decode_key(self.sign_pk), _decode_key(self.box_pk)
        if _crypto.is_small_order(box_pk):
            raise PydanticCustomError(Reason.SMALL_ORDER_KEY.value, "X25519 key of small order")
        if key_id_for(sign_pk, box_pk) != self.key_id:
            raise PydanticCustomError("key_id", "key id does not match the public keys")
        if self.not_after <= self.not_before:
            raise PydanticCustomError("validity", "not_after must be after not_before")
        return self

    # Derived values are cached on first use (cached_property: plain attribute speed
    # afterwards; pydantic private attributes would triple the validation time).
    @cached_property
    def sign_pk_bytes(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return base64.b64decode(self.sign_pk)

    @cached_property
    def box_pk_bytes(self) -> bytes:
        """The 32-byte X25519 public key."""
        return base64.b64decode(self.box_pk)

    @cached_property
    def not_before_ms(self) -> int:
        """Start of validity, milliseconds since the epoch (inclusive)."""
        return to_ms(self.not_before)

    @cached_property
    def not_after_ms(self) -> int:
        """End of validity, milliseconds since the epoch (inclusive)."""
        return to_ms(self.not_after)

    def valid_at(self, at_ms: int) -> bool:
        """True when the key is not revoked and ``not_before <= at_ms <= not_after``."""
        return not self.revoked and self.not_before_ms <= at_ms <= self.not_after_ms


class Partner(_Frozen):
    """A partner organisation: its id, kind, territorial competence and keys."""

    id: PartnerId
    kind: PartnerKind
    name: OrganisationName
    # Empty for partners without territorial competence (platforms, national units):
    # they are found with Directory.of_kind, never with Directory.find.
    departements: tuple[Departement, ...] = Field(default=(), max_length=len(DEPARTEMENTS))
    revoked: bool = False
    keys: tuple[PartnerKey, ...] = Field(default=(), max_length=MAX_KEYS_PER_PARTNER)
    nats_nkey: NatsUserKey | None = None

    @model_validator(mode="after")
    def _check_unique(self) -> Self:
        if len(set(self.departements)) != len(self.departements):
            raise PydanticCustomError("duplicate", "duplicate département")
        if len({k.key_id for k in self.keys}) != len(self.keys):
            raise PydanticCustomError("duplicate", "duplicate key id")
        return self

    @property
    def active(self) -> bool:
        """Not revoked and holding at least one key that is not revoked."""
        return not self.revoked and any(not k.revoked for k in self.keys)

    def key(self, key_id: str) -> PartnerKey | None:
        """The key with this id, revoked or not, or ``None``."""
        return next((k for k in self.keys if k.key_id == key_id), None)

    def valid_keys(self, at_ms: int) -> tuple[PartnerKey, ...]:
        """Keys valid at ``at_ms``, newest (latest ``not_before``) first."""
        valid = [k for k in self.keys if k.valid_at(at_ms)]
        valid.sort(key=lambda k: (k.not_before_ms, k.not_after_ms, k.key_id), reverse=True)
        return tuple(valid)


@dataclass(frozen=True, slots=True)
class _Index:
    by_id: dict[str, Partner]
    by_kind: dict[PartnerKind, tuple[Partner, ...]]
    by_kind_dep: dict[tuple[PartnerKind, str], tuple[Partner, ...]]


def _build_index(partners: Iterable[Partner]) -> _Index:
    by_id: dict[str, Partner] = {}
    key_ids: set[str] = set()
    for partner in partners:
        if partner.id in by_id:
            raise PydanticCustomError("duplicate", "duplicate partner id")
        by_id[partner.id] = partner
        for key in partner.keys:
            if key.key_id in key_ids:
                raise PydanticCustomError("duplicate", "key id used twice")
            key_ids.add(key.key_id)
    by_kind: defaultdict[PartnerKind, list[Partner]] = defaultdict(list)
    by_kind_dep: defaultdict[tuple[PartnerKind, str], list[Partner]] = defaultdict(list)
    for partner_id in sorted(by_id):
        partner = by_id[partner_id]
        if not partner.active:
            continue
        by_kind[partner.kind].append(partner)
        for dep in partner.departements:
            by_kind_dep[(partner.kind, dep)].append(partner)
    return _Index(
        by_id=by_id,
        by_kind={k: tuple(v) for k, v in by_kind.items()},
        by_kind_dep={k: tuple(v) for k, v in by_kind_dep.items()},
    )


class Directory(_Frozen):
    """One edition of the partnership's configuration (the ``signed`` object of the file):
    the directory of partners and the routing rules, valid until ``expires_at``."""

    format: Literal["relais-directory/1"] = DIRECTORY_FORMAT
    partnership: PartnerId
    serial: int = Field(ge=0, le=MAX_SERIAL)
    issued_at: UtcDatetime
    # None only in a working document or a Directory built in Python (then DEFAULT_VALIDITY
    # after issued_at); a signed edition always spells it out (checked by verify_directory).
    expires_at: UtcDatetime | None = None
    root_key_id: KeyId
    partners: tuple[Partner, ...] = Field(default=(), max_length=MAX_PARTNERS)
    # How long each store keeps what it holds (broker_config.retention); absent: defaults.
    retention: Retention = Field(default_factory=Retention)
    # The routing rules file's text (TOML), signed together with the partners it routes to.
    rules: str = Field(
        default_factory=packaged_rules_text, min_length=1, max_length=MAX_RULES_CHARS
    )

    @model_validator(mode="after")
    def _index_partners(self) -> Self:
        if not self.issued_at < self.valid_until <= self.issued_at + MAX_VALIDITY:
            raise PydanticCustomError(
                "validity", "expires_at must follow issued_at, by at most 366 days"
            )
        # Building the index is also the uniqueness check: do it now, once.
        _ = self._index
        return self

    @property
    def valid_until(self) -> datetime:
        """End of the edition's validity (``expires_at``, or its default)."""
        return self.expires_at or self.issued_at + DEFAULT_VALIDITY

    @cached_property
    def expires_at_ms(self) -> int:
        """End of the edition's validity, milliseconds since the epoch (inclusive)."""
        return to_ms(self.valid_until)

    def expired(self, at_ms: int) -> bool:
        """True when the edition is past its validity end at ``at_ms``."""
        return at_ms > self.expires_at_ms

    @cached_property
    def _index(self) -> _Index:
        return _build_index(self.partners)

    def get(self, partner_id: str) -> Partner | None:
        """The partner with this id (revoked or not), or ``None``. O(1)."""
        return self._index.by_id.get(partner_id)

    def find(
        self, kind: PartnerKind | str, departement: str, *, at_ms: int | None = None
    ) -> tuple[Partner, ...]:
        """Active partners of ``kind`` competent for ``departement``, sorted by id.

        Active: neither the partner nor all of its keys revoked. With ``at_ms``, only partners
        holding a key valid at that time.
        """
        try:
            found = self._index.by_kind_dep.get((PartnerKind(kind), departement), ())
        except ValueError:
            return ()
        return found if at_ms is None else tuple(p for p in found if p.valid_keys(at_ms))

    def of_kind(self, kind: PartnerKind | str, *, at_ms: int | None = None) -> tuple[Partner, ...]:
        """Active partners of ``kind``, whatever their départements, sorted by id."""
        try:
            found = self._index.by_kind.get(PartnerKind(kind), ())
        except ValueError:
            return ()
        return found if at_ms is None else tuple(p for p in found if p.valid_keys(at_ms))


# -- key resolution for envelopes --------------------------------------------------------------


class DirectoryKeys:
    """Public keys for the envelope code, from one verified :class:`Directory`.

    Implements ``relais.schemas.envelope.KeyResolver``; every failure is an
    :class:`EnvelopeError` with a precise reason code.
    """

    __slots__ = ("_directory",)

    def __init__(self, directory: Directory) -> None:
        self._directory = directory

    @property
    def directory(self) -> Directory:
        """The directory keys are resolved from."""
        return self._directory

    @property
    def partnership(self) -> str:
        """The partnership id every envelope and statement verified here must name."""
        return self._directory.partnership

    def _partner(self, partner_id: str) -> Partner:
        partner = self._directory.get(partner_id)
        if partner is None:
            raise EnvelopeError(Reason.UNKNOWN_SENDER)
        if partner.revoked:
            raise EnvelopeError(Reason.REVOKED_PARTNER)
        return partner

    def signing_key(self, partner_id: str, key_id: str, at_ms: int) -> bytes:
        """The 32-byte Ed25519 public key ``key_id`` of ``partner_id``, valid at ``at_ms``.

        Reasons: ``UNKNOWN_SENDER``, ``REVOKED_PARTNER``, ``UNKNOWN_KEY``, ``REVOKED_KEY``,
        ``KEY_NOT_YET_VALID`` (``at_ms < not_before``), ``EXPIRED_KEY`` (``at_ms > not_after``).
        """
        key = self._partner(partner_id).key(key_id)
        if key is None:
            raise EnvelopeError(Reason.UNKNOWN_KEY)
        if key.revoked:
            raise EnvelopeError(Reason.REVOKED_KEY)
        if at_ms < key.not_before_ms:
            raise EnvelopeError(Reason.KEY_NOT_YET_VALID)
        if at_ms > key.not_after_ms:
            raise EnvelopeError(Reason.EXPIRED_KEY)
        return key.sign_pk_bytes

    def box_key(self, partner_id: str, at_ms: int) -> tuple[str, bytes]:
        """``(key_id, X25519 public key)`` of the newest key of ``partner_id`` valid at ``at_ms``.

        Newest: latest ``not_before``, so during a rotation overlap the new key is used.
        When none is valid: ``UNKNOWN_KEY`` (no key at all), ``REVOKED_KEY`` (all revoked),
        ``KEY_NOT_YET_VALID`` (some unrevoked key starts later), else ``EXPIRED_KEY``.
        """
        partner = self._partner(partner_id)
        valid = partner.valid_keys(at_ms)
        if valid:
            return valid[0].key_id, valid[0].box_pk_bytes
        live = [k for k in partner.keys if not k.revoked]
        if not partner.keys:
            raise EnvelopeError(Reason.UNKNOWN_KEY)
        if not live:
            raise EnvelopeError(Reason.REVOKED_KEY)
        if any(at_ms < k.not_before_ms for k in live):
            raise EnvelopeError(Reason.KEY_NOT_YET_VALID)
        raise EnvelopeError(Reason.EXPIRED_KEY)

    def partner_kind(self, partner_id: str) -> PartnerKind:
        """The kind of ``partner_id`` (revoked or not); ``UNKNOWN_SENDER`` when unknown."""
        partner = self._directory.get(partner_id)
        if partner is None:
            raise EnvelopeError(Reason.UNKNOWN_SENDER)
        return partner.kind


# -- parsing, signing, verifying ---------------------------------------------------------------


def _invalid(exc: ValidationError) -> DirectoryError:
    # Locations and messages only: never the offending values.
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    reason = (
        Reason.SMALL_ORDER_KEY
        if any(e["type"] == Reason.SMALL_ORDER_KEY.value for e in errors)
        else Reason.DIRECTORY_MALFORMED
    )
    shown = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'directory'}: {e['msg']}" for e in errors[:3]
    )
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return DirectoryError(f"invalid directory: {shown}{more}", reason=reason)


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Loading builds a few hundred thousand acyclic objects; meanwhile the cyclic collector
    # would rescan the growing directory again and again (about 40% of the load time for
    # 40,000 partners). Collection is only deferred, and re-enabled if it was on.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _check_cost(data: bytes | str) -> bytes:
    """The document's bytes, refused before parsing when over the caps (``_LIMITS``)."""
    if isinstance(data, str):
        if len(data) > MAX_DIRECTORY_BYTES:
            _malformed("directory too large")
        try:
            data = data.encode("utf-8")
        except UnicodeError as exc:
            raise DirectoryError("not UTF-8", reason=Reason.DIRECTORY_MALFORMED) from exc
    check_bounds(data, _LIMITS, _malformed_error)
    return data


def parse_directory(data: bytes | str) -> Directory:
    """Validate an unsigned directory document (JSON of the ``signed`` object).

    Strict: no type coercion. For a signed file use :func:`verify_directory`. Refused before
    parsing when over the size, container or value caps (``DIRECTORY_MALFORMED``).
    """
    data = _check_cost(data)
    try:
        with _gc_paused():
            return Directory.model_validate_json(data, strict=True)
    except ValidationError as exc:
        raise _invalid(exc) from exc


def dump_directory(directory: Directory) -> bytes:
    """An unsigned directory as indented JSON (the CLI's working document)."""
    return (directory.model_dump_json(indent=2) + "\n").encode("utf-8")


class DirectorySigner(Protocol):
    """What signing needs from the root key (``relais.agents.keys.PartnerKeys``)."""

    @property
    def key_id(self) -> str:
        """The root key's id (the directory's ``root_key_id``)."""

    @property
    def sign_sk(self) -> bytes:
        """The root's 64-byte Ed25519 secret key."""


def sign_directory(directory: Directory, root: DirectorySigner) -> bytes:
    """The signed directory file (canonical JSON and a newline) for ``directory``.

    The root key must be the one the directory names (``root_key_id``).
    """
    if directory.root_key_id != root.key_id:
        raise DirectoryError(
            "the root key is not the directory's root key", reason=Reason.DIRECTORY_MALFORMED
        )
    signed = directory.model_dump(mode="json")
    # A signed edition always spells out its validity end, even when left to the default.
    signed["expires_at"] = format_utc(directory.valid_until)
    signature = _crypto.sign(root.sign_sk, SIG_CONTEXT, canonical_json(signed))
    document = {
        "format": DIRECTORY_FORMAT,
        "root_key_id": root.key_id,
        "signature": base64.b64encode(signature).decode("ascii"),
        "signed": signed,
    }
    return canonical_json(document) + b"\n"


def _malformed(message: str) -> NoReturn:
    raise DirectoryError(message, reason=Reason.DIRECTORY_MALFORMED)


def _malformed_error(why: str) -> DirectoryError:
    return DirectoryError(f"directory refused: {why}", reason=Reason.DIRECTORY_MALFORMED)


def _loads_strict(data: bytes) -> Any:
    # Caps before parsing, then strict JSON (duplicate members, floats, NaN refused).
    return loads_bounded(data, _LIMITS, _malformed_error)


def _parse_unverified(data: bytes) -> tuple[dict[str, Any], str, bytes]:
    """Structure of a signed file, before the signature is checked: nothing here is trusted."""
    if len(data) > MAX_DIRECTORY_BYTES:
        _malformed("directory too large")
    outer = _loads_strict(data)
    if not isinstance(outer, dict) or set(outer) != _OUTER_MEMBERS:
        _malformed("not a signed directory")
    if outer["format"] != DIRECTORY_FORMAT:
        _malformed("unsupported directory format")
    signed, root_key_id, signature = outer["signed"], outer["root_key_id"], outer["signature"]
    if not isinstance(signed, dict) or not isinstance(signature, str):
        _malformed("not a signed directory")
    if not isinstance(root_key_id, str) or not _KEY_ID_RE.fullmatch(root_key_id):
        _malformed("bad root key id")
    partners = signed.get("partners")
    if not isinstance(partners, list) or len(partners) > MAX_PARTNERS:
        _malformed("partners missing or too many")
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except ValueError:  # binascii.Error, and non-ASCII text (a bare ValueError)
        raw_signature = b""
    return signed, root_key_id, raw_signature


def verify_directory(
    data: bytes,
    root_public_key: bytes,
    *,
    min_serial: int | None = None,
    now_ms: int | None = None,
) -> Directory:
    """Verify a signed directory file against the pinned root public key, then validate it.

    ``min_serial``: the serial of the edition in use; an older edition is refused
    (``DIRECTORY_ROLLBACK``); the same serial is accepted. ``now_ms``: the verifier's clock;
    an edition past its ``expires_at`` is refused (``DIRECTORY_EXPIRED``).
    """
    if len(root_public_key) != 32:
        raise ConfigError("the root public key must be 32 bytes")
    with _gc_paused():
        signed, root_key_id, signature = _parse_unverified(data)
    try:
        message = canonical_json(signed)
    except (ValueError, UnicodeError) as exc:  # e.g. lone surrogates from \\ud800 escapes
        raise DirectoryError("not canonicalisable", reason=Reason.DIRECTORY_MALFORMED) from exc
    try:
        _crypto.verify(root_public_key, SIG_CONTEXT, message, signature)
    except EnvelopeError as exc:
        raise DirectoryError(
            "directory signature does not verify", reason=Reason.DIRECTORY_BAD_SIGNATURE
        ) from exc
    serial = signed.get("serial")
    if min_serial is not None and isinstance(serial, int) and serial < min_serial:
        raise DirectoryError(
            f"directory serial {serial} is older than {min_serial}",
            reason=Reason.DIRECTORY_ROLLBACK,
        )
    if not signed.keys() >= _EDITION_MEMBERS or signed["expires_at"] is None:
        _malformed("a signed edition names its validity end and its rules")
    directory = parse_directory(message)
    if directory.root_key_id != root_key_id:
        _malformed("root key ids differ")
    if now_ms is not None and directory.expired(now_ms):
        raise DirectoryError(
            f"directory edition {directory.serial} expired at {format_utc(directory.valid_until)}",
            reason=Reason.DIRECTORY_EXPIRED,
        )
    return directory


# -- editing helpers (for the CLI) -------------------------------------------------------------


def _existing(directory: Directory, partner_id: str) -> Partner:
    partner = directory.get(partner_id)
    if partner is None:
        raise ConfigError(f"no partner {partner_id!r} in the directory")
    return partner


def _replace_partner(directory: Directory, partner: Partner) -> Directory:
    partners = tuple(partner if p.id == partner.id else p for p in directory.partners)
    return _updated(directory, partners=partners)


def _updated(model: _M, **changes: Any) -> _M:
    """A validated copy of ``model`` with ``changes`` (never ``model_copy``: it skips both)."""
    # Not dict(model): Partner has a field named "keys", which dict() would call.
    fields = {name: getattr(model, name) for name in type(model).model_fields}
    try:
        return type(model).model_validate({**fields, **changes})
    except ValidationError as exc:
        raise _invalid(exc) from exc


def new_directory(
    partnership: str,
    root_key_id: str,
    *,
    issued_at: datetime | None = None,
    rules: str | None = None,
    valid_for: timedelta = DEFAULT_VALIDITY,
) -> Directory:
    """An empty directory at serial 0, with ``rules`` (default: the packaged rules)."""
    issued = issued_at or utc_now()
    try:
        return Directory(
            partnership=partnership,
            serial=0,
            issued_at=issued,
            expires_at=issued + valid_for,
            root_key_id=root_key_id,
            rules=packaged_rules_text() if rules is None else rules,
        )
    except ValidationError as exc:
        raise _invalid(exc) from exc


def new_partner_key(
    sign_pk: bytes, box_pk: bytes, *, not_before: datetime, not_after: datetime
) -> PartnerKey:
    """A directory key entry for two public keys (the key id is computed)."""
    try:
        return PartnerKey(
            key_id=key_id_for(sign_pk, box_pk),
            sign_pk=base64.b64encode(sign_pk).decode("ascii"),
            box_pk=base64.b64encode(box_pk).decode("ascii"),
            not_before=not_before,
            not_after=not_after,
        )
    except ValidationError as exc:
        raise _invalid(exc) from exc


def new_partner(
    partner_id: str,
    kind: PartnerKind,
    name: str,
    *,
    departements: Iterable[str] = (),
    keys: Iterable[PartnerKey] = (),
    nats_nkey: str | None = None,
) -> Partner:
    """A validated partner entry (``DirectoryError`` naming the invalid fields, not values)."""
    try:
        return Partner(
            id=partner_id,
            kind=kind,
            name=name,
            departements=tuple(departements),
            keys=tuple(keys),
            nats_nkey=nats_nkey,
        )
    except ValidationError as exc:
        raise _invalid(exc) from exc


def add_partner(directory: Directory, partner: Partner) -> Directory:
    """A new directory with ``partner`` added (partners kept sorted by id)."""
    if directory.get(partner.id) is not None:
        raise DirectoryError(
            f"partner {partner.id!r} already exists", reason=Reason.DIRECTORY_MALFORMED
        )
    partners = sorted((*directory.partners, partner), key=lambda p: p.id)
    return _updated(directory, partners=tuple(partners))


def add_key(directory: Directory, partner_id: str, key: PartnerKey) -> Directory:
    """A new directory where ``partner_id`` also holds ``key`` (e.g. for a rotation)."""
    partner = _existing(directory, partner_id)
    return _replace_partner(directory, _updated(partner, keys=(*partner.keys, key)))


def revoke_partner(directory: Directory, partner_id: str) -> Directory:
    """A new directory where ``partner_id`` is revoked (kept, so old events stay attributable)."""
    partner = _existing(directory, partner_id)
    return _replace_partner(directory, _updated(partner, revoked=True))


def revoke_key(directory: Directory, partner_id: str, key_id: str) -> Directory:
    """A new directory where key ``key_id`` of ``partner_id`` is revoked."""
    partner = _existing(directory, partner_id)
    if partner.key(key_id) is None:
        raise ConfigError(f"partner {partner_id!r} has no key {key_id!r}")
    keys = tuple(_updated(k, revoked=True) if k.key_id == key_id else k for k in partner.keys)
    return _replace_partner(directory, _updated(partner, keys=keys))


def bump_serial(
    directory: Directory,
    *,
    issued_at: datetime | None = None,
    valid_for: timedelta | None = None,
) -> Directory:
    """The next edition: serial + 1, a new ``issued_at`` (now by default) and a new validity
    end ``valid_for`` after it (default: as long as the previous edition's validity)."""
    if directory.serial >= MAX_SERIAL:
        raise DirectoryError("serial exhausted", reason=Reason.DIRECTORY_MALFORMED)
    issued = issued_at or utc_now()
    period = valid_for if valid_for is not None else directory.valid_until - directory.issued_at
    return _updated(
        directory, serial=directory.serial + 1, issued_at=issued, expires_at=issued + period
    )


def with_rules(directory: Directory, rules: str) -> Directory:
    """A new directory embedding the routing rules text ``rules`` (same serial: bump it)."""
    return _updated(directory, rules=rules)
