"""A partner's private keys and their passphrase-encrypted key file.

:class:`PartnerKeys` holds one identity: an Ed25519 seed (signing) and an X25519 secret
(sealing to the partner). Its key id is :func:`relais.broker_config.directory.key_id_for`
of the two public keys, the id the signed directory lists. The partnership's root key uses
the same type and file format, with the partner id ``"root"``.

Key file (``relais-key/1``), a JSON object::

    {"format": "relais-key/1", "partner_id": "...", "key_id": "<16 hex>",
     "sign_pk": b64, "box_pk": b64, "kdf": "argon2id", "opslimit": int, "memlimit": int,
     "salt": b64(16), "nonce": b64(24), "ciphertext": b64(secretbox(seed || box_sk))}

The secretbox key is ``argon2id(passphrase, salt, opslimit, memlimit)`` (libsodium
``crypto_pwhash``, 32 bytes). Base64 is standard with padding. The public members are not
covered by the secretbox: on loading, the decrypted secrets must yield the recorded public
keys and key id, and the directory binds the key id to the partner.

Files are written atomically with mode 0600 from creation (never chmod-ed afterwards) and
are refused when they carry any group or other permission bit (``KEYFILE_PERMISSIONS``).
Other reasons: ``KEYFILE_BAD_PASSPHRASE`` (wrong passphrase or a tampered ciphertext: the
two cannot be told apart) and ``KEYFILE_MALFORMED`` (format, sizes, KDF limits outside
``[MIN, cap]``, secrets that do not match the public members).

Nothing here prints, logs or ``repr``-s a secret.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

import nkeys
from nacl.exceptions import CryptoError
from nacl.exceptions import RuntimeError as NaclRuntimeError
from nacl.exceptions import UnavailableError as NaclUnavailableError
from nacl.exceptions import ValueError as NaclValueError
from nacl.pwhash import argon2id
from nacl.secret import SecretBox

from relais.broker_config.directory import key_id_for
from relais.schemas import _crypto
from relais.schemas.domain import PARTNER_ID_RE
from relais.schemas.errors import ConfigError, KeyFileError, Reason

__all__ = [
    "KEY_FILE_FORMAT",
    "MAX_KEY_FILE_BYTES",
    "MAX_SECRET_FILE_BYTES",
    "MEMLIMIT_CAP",
    "MEMLIMIT_DEFAULT",
    "OPSLIMIT_CAP",
    "OPSLIMIT_DEFAULT",
    "PUBLIC_KEY_FORMAT",
    "ROOT_PARTNER_ID",
    "PartnerKeys",
    "PublicKey",
    "decrypt_key_file",
    "encrypt_key_file",
    "generate",
    "load_key_file",
    "nats_user_public",
    "nats_user_seed",
    "public_export",
    "read_public_key",
    "read_root_public_key",
    "read_secret_file",
    "write_atomic",
    "write_key_file",
    "write_public_key",
]

RandomSource = Callable[[int], bytes]

KEY_FILE_FORMAT: Final = "relais-key/1"
PUBLIC_KEY_FORMAT: Final = "relais-public-key/1"
ROOT_PARTNER_ID: Final = "root"
KDF_NAME: Final = "argon2id"
OPSLIMIT_DEFAULT: Final[int] = argon2id.OPSLIMIT_INTERACTIVE
MEMLIMIT_DEFAULT: Final[int] = argon2id.MEMLIMIT_INTERACTIVE
# Upper bounds accepted when loading: a hostile file must not make us spend minutes or
# gigabytes before the passphrase is even checked.
OPSLIMIT_CAP: Final = 16
MEMLIMIT_CAP: Final[int] = argon2id.MEMLIMIT_SENSITIVE
MAX_KEY_FILE_BYTES: Final = 16 * 1024
MAX_SECRET_FILE_BYTES: Final = 4096

_SEED_BYTES = 32
_SALT_BYTES: int = argon2id.SALTBYTES
_NONCE_BYTES: int = SecretBox.NONCE_SIZE
_SECRET_BYTES = 2 * _SEED_BYTES
_CIPHERTEXT_BYTES = _SECRET_BYTES + SecretBox.MACBYTES
_KEY_FILE_MEMBERS = frozenset(
    {
        "format",
        "partner_id",
        "key_id",
        "sign_pk",
        "box_pk",
        "kdf",
        "opslimit",
        "memlimit",
        "salt",
        "nonce",
        "ciphertext",
    }
)
_PUBLIC_MEMBERS = frozenset({"format", "partner_id", "key_id", "sign_pk", "box_pk"})


def _valid_partner_id(value: object) -> bool:
    # fullmatch: PARTNER_ID_RE ends with "$", which re.match lets through before a "\n".
    return isinstance(value, str) and PARTNER_ID_RE.fullmatch(value) is not None


class PartnerKeys:
    """A partner's private identity: Ed25519 signing key and X25519 sealing key.

    ``repr`` shows the partner id and key id only.
    """

    __slots__ = ("_box_pk", "_box_sk", "_key_id", "_partner_id", "_sign_pk", "_sign_sk")

    def __init__(self, partner_id: str, seed: bytes, box_sk: bytes) -> None:
        """Derive the public keys and key id from a 32-byte Ed25519 seed and X25519 secret."""
        if not _valid_partner_id(partner_id):
            raise ConfigError("invalid partner id")
        if len(seed) != _SEED_BYTES or len(box_sk) != _SEED_BYTES:
            raise ConfigError("secret keys must be 32 bytes")
        self._partner_id = partner_id
        self._sign_sk = _crypto.sign_secret_from_seed(seed)
        self._sign_pk = _crypto.sign_public_from_seed(seed)
        self._box_sk = bytes(box_sk)
        self._box_pk = _crypto.box_public_from_secret(box_sk)
        if _crypto.is_small_order(self._box_pk):  # impossible for a clamped scalar; cheap
            raise ConfigError("X25519 key of small order")
        self._key_id = key_id_for(self._sign_pk, self._box_pk)

    @classmethod
    def generate(cls, partner_id: str, *, random: RandomSource = os.urandom) -> PartnerKeys:
        """Fresh keys; ``random(32)`` is called for the seed, then for the X25519 secret."""
        return cls(partner_id, random(_SEED_BYTES), random(_SEED_BYTES))

    @property
    def partner_id(self) -> str:
        """The partner these keys belong to."""
        return self._partner_id

    @property
    def key_id(self) -> str:
        """The key id listed in the directory."""
        return self._key_id

    @property
    def sign_pk(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return self._sign_pk

    @property
    def sign_sk(self) -> bytes:
        """SECRET: the 64-byte libsodium Ed25519 secret key (seed || public key)."""
        return self._sign_sk

    @property
    def box_pk(self) -> bytes:
        """The 32-byte X25519 public key."""
        return self._box_pk

    @property
    def box_sk(self) -> bytes:
        """SECRET: the 32-byte X25519 secret key."""
        return self._box_sk

    def public(self) -> PublicKey:
        """The public half, as exported for ``relais directory add``."""
        return PublicKey(self._partner_id, self._key_id, self._sign_pk, self._box_pk)

    def __repr__(self) -> str:
        return f"PartnerKeys(partner_id={self._partner_id!r}, key_id={self._key_id!r})"

    def __getstate__(self) -> NoReturn:
        # Keep secrets out of pickles (caches, multiprocessing) by accident.
        raise TypeError("PartnerKeys cannot be pickled")


def generate(partner_id: str, *, random: RandomSource = os.urandom) -> PartnerKeys:
    """Fresh keys for ``partner_id`` (``random`` injectable for golden vectors)."""
    return PartnerKeys.generate(partner_id, random=random)


# -- public export -----------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(value: object, size: int, what: str) -> bytes:
    raw = b""
    if isinstance(value, str):
        with contextlib.suppress(binascii.Error):
            raw = base64.b64decode(value, validate=True)
    if len(raw) != size:
        raise KeyFileError(
            f"{what}: expected {size} bytes in base64", reason=Reason.KEYFILE_MALFORMED
        )
    return raw


@dataclass(frozen=True, slots=True)
class PublicKey:
    """The public half of a key pair: what the directory records."""

    partner_id: str
    key_id: str
    sign_pk: bytes
    box_pk: bytes

    def to_json(self) -> dict[str, str]:
        """The ``relais-public-key/1`` export object."""
        return {
            "format": PUBLIC_KEY_FORMAT,
            "partner_id": self.partner_id,
            "key_id": self.key_id,
            "sign_pk": _b64(self.sign_pk),
            "box_pk": _b64(self.box_pk),
        }

    @classmethod
    def from_json(cls, obj: object, *, format_: str = PUBLIC_KEY_FORMAT) -> PublicKey:
        """Validate public members (of an export, or of a key file with ``format_``)."""
        if not isinstance(obj, dict) or obj.get("format") != format_:
            raise KeyFileError("not a relais public key", reason=Reason.KEYFILE_MALFORMED)
        if format_ == PUBLIC_KEY_FORMAT and set(obj) != _PUBLIC_MEMBERS:
            raise KeyFileError("unexpected members", reason=Reason.KEYFILE_MALFORMED)
        if not _valid_partner_id(obj.get("partner_id")):
            raise KeyFileError("invalid partner id", reason=Reason.KEYFILE_MALFORMED)
        sign_pk = _unb64(obj.get("sign_pk"), 32, "sign_pk")
        box_pk = _unb64(obj.get("box_pk"), 32, "box_pk")
        if _crypto.is_small_order(box_pk):
            raise KeyFileError("X25519 key of small order", reason=Reason.SMALL_ORDER_KEY)
        if obj.get("key_id") != key_id_for(sign_pk, box_pk):
            raise KeyFileError("key id does not match the keys", reason=Reason.KEYFILE_MALFORMED)
        return cls(obj["partner_id"], obj["key_id"], sign_pk, box_pk)


def public_export(keys: PartnerKeys) -> dict[str, str]:
    """The public-key export object of ``keys`` (no secret in it)."""
    return keys.public().to_json()


def _json_object(data: bytes, cap: int) -> dict[str, Any]:
    if len(data) > cap:
        raise KeyFileError("file too large", reason=Reason.KEYFILE_MALFORMED)
    try:
        obj = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise KeyFileError("not a JSON document", reason=Reason.KEYFILE_MALFORMED) from exc
    if not isinstance(obj, dict):
        raise KeyFileError("not a JSON object", reason=Reason.KEYFILE_MALFORMED)
    return obj


def read_public_key(path: Path) -> PublicKey:
    """The public key in a public export or in a key file (no passphrase needed).

    The public members of a key file are not authenticated until it is decrypted: use this
    for files you control; the directory signature is what others rely on.
    """
    try:
        with Path(path).open("rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    obj = _json_object(data, MAX_KEY_FILE_BYTES)
    fmt = KEY_FILE_FORMAT if obj.get("format") == KEY_FILE_FORMAT else PUBLIC_KEY_FORMAT
    return PublicKey.from_json(obj, format_=fmt)


def read_secret_file(path: Path, what: str, *, min_bytes: int = 1) -> bytes:
    """The first line of a secret file (passphrase, token), refused when others may access it.

    ``what`` names the secret in error messages ("passphrase", "API token"); the secret
    itself never appears in them.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"the {what} file {path} is not a regular file")
        if mode & 0o077:
            raise ConfigError(
                f"the {what} file {path} is accessible to others"
                f" (mode {stat.S_IMODE(mode):04o}, must be 0600)"
            )
        data = os.read(fd, MAX_SECRET_FILE_BYTES + 1)
    finally:
        os.close(fd)
    secret = data.split(b"\n", 1)[0].removesuffix(b"\r")
    if len(secret) < min_bytes or len(data) > MAX_SECRET_FILE_BYTES:
        raise ConfigError(f"the {what} file {path} is too short or too large")
    return secret


def read_root_public_key(value: str) -> bytes:
    """The pinned root Ed25519 public key: base64 text, or a file (``.pub.json`` or base64)."""
    text = value
    path = Path(value)
    if path.is_file():
        try:
            with path.open("rb") as fh:
                data = fh.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read the root public key {path}: {exc.strerror}") from exc
        if len(data) > MAX_KEY_FILE_BYTES:
            raise ConfigError(f"{path} is too large for a public key")
        if data.lstrip().startswith(b"{"):
            return read_public_key(path).sign_pk
        text = data.decode("ascii", "replace").strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        raw = b""
    if len(raw) != 32:
        raise ConfigError("the root public key must be 32 bytes in base64")
    return raw


def nats_user_seed(random: RandomSource = os.urandom) -> bytes:
    """A new NATS user nkey seed (``SU...``): the partner's broker credential, kept 0600."""
    return bytes(nkeys.encode_seed(random(32), nkeys.PREFIX_BYTE_USER))


def nats_user_public(seed: bytes) -> str:
    """The public nkey (``U...``) of a NATS user seed: what the directory lists."""
    try:
        public = str(nkeys.from_seed(bytearray(seed.strip())).public_key.decode("ascii"))
    except (nkeys.NkeysError, ValueError) as exc:
        raise ConfigError("not a NATS user nkey seed") from exc
    if not public.startswith("U"):
        raise ConfigError("not a NATS user nkey seed")
    return public


# -- encrypted key file ------------------------------------------------------------------------


def _check_limits(opslimit: object, memlimit: object) -> tuple[int, int]:
    if (
        isinstance(opslimit, int)
        and isinstance(memlimit, int)
        and not isinstance(opslimit, bool)
        and not isinstance(memlimit, bool)
        and argon2id.OPSLIMIT_MIN <= opslimit <= OPSLIMIT_CAP
        and argon2id.MEMLIMIT_MIN <= memlimit <= MEMLIMIT_CAP
    ):
        return opslimit, memlimit
    raise KeyFileError("KDF limits out of range", reason=Reason.KEYFILE_MALFORMED)


def _derive(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    try:
        return bytes(
            argon2id.kdf(SecretBox.KEY_SIZE, passphrase, salt, opslimit=opslimit, memlimit=memlimit)
        )
    except (NaclValueError, NaclRuntimeError, NaclUnavailableError) as exc:
        raise KeyFileError("key derivation failed", reason=Reason.KEYFILE_MALFORMED) from exc


def encrypt_key_file(
    keys: PartnerKeys,
    passphrase: bytes,
    *,
    opslimit: int = OPSLIMIT_DEFAULT,
    memlimit: int = MEMLIMIT_DEFAULT,
    random: RandomSource = os.urandom,
) -> bytes:
    """The key file bytes for ``keys`` (``random`` supplies the salt, then the nonce)."""
    if not passphrase:
        raise ConfigError("empty passphrase")
    try:
        opslimit, memlimit = _check_limits(opslimit, memlimit)
    except KeyFileError as exc:
        raise ConfigError(f"KDF limits must lie in [MIN, {OPSLIMIT_CAP}/{MEMLIMIT_CAP}]") from exc
    salt, nonce = random(_SALT_BYTES), random(_NONCE_BYTES)
    box = SecretBox(_derive(passphrase, salt, opslimit, memlimit))
    secret = keys.sign_sk[:_SEED_BYTES] + keys.box_sk  # libsodium sk = seed || pk
    document = {
        "format": KEY_FILE_FORMAT,
        "partner_id": keys.partner_id,
        "key_id": keys.key_id,
        "sign_pk": _b64(keys.sign_pk),
        "box_pk": _b64(keys.box_pk),
        "kdf": KDF_NAME,
        "opslimit": opslimit,
        "memlimit": memlimit,
        "salt": _b64(salt),
        "nonce": _b64(nonce),
        "ciphertext": _b64(box.encrypt(secret, nonce).ciphertext),
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def decrypt_key_file(data: bytes, passphrase: bytes) -> PartnerKeys:
    """Parse and decrypt key file bytes (no permission check: see :func:`load_key_file`)."""
    obj = _json_object(data, MAX_KEY_FILE_BYTES)
    if set(obj) != _KEY_FILE_MEMBERS or obj["kdf"] != KDF_NAME:
        raise KeyFileError("not a relais key file", reason=Reason.KEYFILE_MALFORMED)
    public = PublicKey.from_json(obj, format_=KEY_FILE_FORMAT)
    opslimit, memlimit = _check_limits(obj["opslimit"], obj["memlimit"])
    salt = _unb64(obj["salt"], _SALT_BYTES, "salt")
    nonce = _unb64(obj["nonce"], _NONCE_BYTES, "nonce")
    ciphertext = _unb64(obj["ciphertext"], _CIPHERTEXT_BYTES, "ciphertext")
    box = SecretBox(_derive(passphrase, salt, opslimit, memlimit))
    try:
        secret = box.decrypt(ciphertext, nonce)
    except CryptoError as exc:
        raise KeyFileError(
            "wrong passphrase or damaged key file", reason=Reason.KEYFILE_BAD_PASSPHRASE
        ) from exc
    keys = PartnerKeys(public.partner_id, secret[:_SEED_BYTES], secret[_SEED_BYTES:])
    if not (
        _crypto.ct_equal(keys.sign_pk, public.sign_pk)
        and _crypto.ct_equal(keys.box_pk, public.box_pk)
        and keys.key_id == public.key_id
    ):
        raise KeyFileError("secrets do not match the public keys", reason=Reason.KEYFILE_MALFORMED)
    return keys


def _read_private(path: Path) -> bytes:
    """Read a file only if no group or other permission bit is set (checked on the open fd)."""
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang us; no effect on regular files.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise KeyFileError(
            f"cannot open key file {path}: {exc.strerror}", reason=Reason.KEYFILE_MALFORMED
        ) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError("key file is not a regular file", reason=Reason.KEYFILE_MALFORMED)
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"key file {path} is accessible to group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}, expected 0600)",
                reason=Reason.KEYFILE_PERMISSIONS,
            )
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)


def load_key_file(path: Path, passphrase: bytes) -> PartnerKeys:
    """Load a key file: permissions first, then format, KDF limits, decryption, consistency."""
    return decrypt_key_file(_read_private(Path(path)), passphrase)


# -- writing -----------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` atomically, the file created with ``mode`` from the start.

    A temporary file in the same directory is written and synced, then renamed over
    ``path`` (``overwrite``) or hard-linked to it (which fails if ``path`` exists, so a
    concurrent writer cannot be clobbered either). Raises :class:`ConfigError`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if overwrite:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_directory(path.parent)
    except FileExistsError as exc:
        raise ConfigError(f"refusing to overwrite {path}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_key_file(
    path: Path,
    keys: PartnerKeys,
    passphrase: bytes,
    *,
    opslimit: int = OPSLIMIT_DEFAULT,
    memlimit: int = MEMLIMIT_DEFAULT,
    random: RandomSource = os.urandom,
    overwrite: bool = False,
) -> None:
    """Encrypt ``keys`` with ``passphrase`` into a new 0600 key file at ``path``."""
    data = encrypt_key_file(keys, passphrase, opslimit=opslimit, memlimit=memlimit, random=random)
    write_atomic(Path(path), data, mode=0o600, overwrite=overwrite)


def write_public_key(path: Path, keys: PartnerKeys, *, overwrite: bool = False) -> None:
    """Write the public export of ``keys`` (mode 0644: it holds no secret)."""
    data = (json.dumps(public_export(keys), indent=2) + "\n").encode("utf-8")
    write_atomic(Path(path), data, mode=0o644, overwrite=overwrite)
