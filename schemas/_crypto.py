"""HAZMAT: the raw cryptographic primitives of relais, and nothing else.

Do not call these functions from outside :mod:`relais.schemas` (or the key-file module):
they do no policy checks, take raw keys and return raw bytes. The safe recipes are
:func:`relais.schemas.envelope.seal` / :func:`relais.schemas.envelope.open_envelope` and
:mod:`relais.schemas.statements`.

Primitives (all from libsodium through PyNaCl):

* signatures: Ed25519 over ``b"relais/1 sig:" + context + b"\\x00" + message``; the
  context makes an event signature useless as a receipt, directory or checkpoint signature;
  ``S`` must be canonical (``S < L``), checked explicitly for a precise reason code;
* key wrapping: the libsodium X25519 sealed box (``crypto_box_seal``), built here from its
  parts so that tests and golden vectors can inject the ephemeral key;
* content encryption: XChaCha20-Poly1305 (IETF), 24-byte random nonce;
* hashes: SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from nacl import bindings as _sodium
from nacl.exceptions import CryptoError

from relais.schemas.errors import EnvelopeError, Reason

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "SIG_BYTES",
    "WRAP_BYTES",
    "RandomSource",
    "aead_decrypt",
    "aead_encrypt",
    "box_public_from_secret",
    "commitment",
    "ct_equal",
    "is_small_order",
    "sha256",
    "sign",
    "sign_public_from_seed",
    "sign_secret_from_seed",
    "unwrap_key",
    "verify",
    "wrap_key",
]

RandomSource = Callable[[int], bytes]

KEY_BYTES = 32
NONCE_BYTES = 24
SIG_BYTES = 64
_TAG_BYTES = 16
WRAP_BYTES = 32 + 16 + 32  # ephemeral public key, Poly1305 tag, wrapped 32-byte key
_SIG_PREFIX = b"relais/1 sig:"
_COMMIT_PREFIX = b"relais/1 commit\x00"

# Order of the Ed25519 base point: a canonical signature has S < L.
_ED25519_L = 2**252 + 27742317777372353535851937790883648493

# Curve25519 points of small order (libsodium's blocklist), compared with bit 255 cleared.
_SMALL_ORDER = frozenset(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


def sha256(data: bytes) -> bytes:
    """SHA-256 digest."""
    return hashlib.sha256(data).digest()


def ct_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(a, b)


def _signed_message(context: str, message: bytes) -> bytes:
    return _SIG_PREFIX + context.encode("ascii") + b"\x00" + message


def sign_secret_from_seed(seed: bytes) -> bytes:
    """The 64-byte libsodium Ed25519 secret key for a 32-byte seed."""
    _pk, sk = _sodium.crypto_sign_seed_keypair(seed)
    return bytes(sk)


def sign_public_from_seed(seed: bytes) -> bytes:
    """The 32-byte Ed25519 public key for a 32-byte seed."""
    pk, _sk = _sodium.crypto_sign_seed_keypair(seed)
    return bytes(pk)


def box_public_from_secret(secret: bytes) -> bytes:
    """The X25519 public key for a 32-byte secret."""
    return bytes(_sodium.crypto_scalarmult_base(secret))


def sign(secret_key: bytes, context: str, message: bytes) -> bytes:
    """Ed25519 signature of ``message`` under the domain-separation ``context``."""
    signed = _sodium.crypto_sign(_signed_message(context, message), secret_key)
    return bytes(signed[:SIG_BYTES])


def verify(public_key: bytes, context: str, message: bytes, signature: bytes) -> None:
    """Verify an Ed25519 signature; raise ``EnvelopeError`` with a precise reason."""
    if len(signature) != SIG_BYTES or len(public_key) != 32:
        raise EnvelopeError(Reason.BAD_SIGNATURE)
    if int.from_bytes(signature[32:], "little") >= _ED25519_L:
        raise EnvelopeError(Reason.NONCANONICAL_SIGNATURE)
    try:
        _sodium.crypto_sign_open(signature + _signed_message(context, message), public_key)
    except (CryptoError, ValueError) as exc:
        raise EnvelopeError(Reason.BAD_SIGNATURE) from exc


def is_small_order(public_key: bytes) -> bool:
    """True for X25519 public keys of small order (they yield a predictable secret)."""
    if len(public_key) != 32:
        return True
    return public_key[:31] + bytes([public_key[31] & 0x7F]) in _SMALL_ORDER


def wrap_key(key: bytes, recipient_box_pk: bytes, random: RandomSource) -> bytes:
    """Sealed-box ``key`` to ``recipient_box_pk`` (libsodium ``crypto_box_seal`` format).

    ``random(32)`` supplies the ephemeral secret, so vectors can be reproduced.
    """
    if is_small_order(recipient_box_pk):
        raise EnvelopeError(Reason.SMALL_ORDER_KEY)
    eph_sk = random(32)
    eph_pk = bytes(_sodium.crypto_scalarmult_base(eph_sk))
    nonce = hashlib.blake2b(eph_pk + recipient_box_pk, digest_size=NONCE_BYTES).digest()
    try:
        boxed = _sodium.crypto_box_easy(key, nonce, recipient_box_pk, eph_sk)
    except CryptoError as exc:  # all-zero shared secret
        raise EnvelopeError(Reason.SMALL_ORDER_KEY) from exc
    return eph_pk + bytes(boxed)


def unwrap_key(wrap: bytes, box_pk: bytes, box_sk: bytes) -> bytes:
    """Open a sealed-box wrapped key; raise ``EnvelopeError`` on any failure."""
    if len(wrap) != WRAP_BYTES:
        raise EnvelopeError(Reason.UNWRAP_FAILED)
    if is_small_order(wrap[:32]):
        raise EnvelopeError(Reason.SMALL_ORDER_KEY)
    try:
        key = _sodium.crypto_box_seal_open(wrap, box_pk, box_sk)
    except (CryptoError, ValueError, TypeError) as exc:
        raise EnvelopeError(Reason.UNWRAP_FAILED) from exc
    if len(key) != KEY_BYTES:
        raise EnvelopeError(Reason.UNWRAP_FAILED)
    return bytes(key)


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """XChaCha20-Poly1305 encryption (ciphertext || 16-byte tag)."""
    return bytes(_sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key))


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """XChaCha20-Poly1305 decryption; raise ``EnvelopeError(DECRYPT_FAILED)``."""
    if len(ciphertext) < _TAG_BYTES:  # PyNaCl raises a bare ValueError below the tag size
        raise EnvelopeError(Reason.DECRYPT_FAILED)
    try:
        return bytes(
            _sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, nonce, key)
        )
    except (CryptoError, ValueError, TypeError) as exc:
        raise EnvelopeError(Reason.DECRYPT_FAILED) from exc


def commitment(key: bytes, plaintext: bytes) -> bytes:
    """Key-and-plaintext commitment: SHA-256(prefix || key || plaintext).

    Keyed by the secret content key, so it reveals nothing about a guessable plaintext to
    whoever sees the header, while binding the ciphertext to exactly one (key, plaintext).
    """
    return hashlib.sha256(_COMMIT_PREFIX + key + plaintext).digest()
