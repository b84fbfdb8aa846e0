"""Negative vectors of the signed directory and of the edition it is (§6, §9.2).
:func:`directory_vectors` returns the vector dicts ``generate.py`` writes."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from forge import NOW_MS, Drbg, World, flip, resign_directory, vector

from relais.agents.keys import PartnerKeys
from relais.broker_config.directory import canonical_json, key_id_for
from relais.schemas import _crypto

_SMALL_ORDER_X25519 = bytes.fromhex(
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"
)
_MALFORMED = "DIRECTORY_MALFORMED"
_BAD_SIGNATURE = "DIRECTORY_BAD_SIGNATURE"
_OTHER_KEY = "0123456789abcdef"

Change = Callable[[dict[str, Any]], object]


class Directories:
    """Collects directory vectors made from the edition in force."""

    def __init__(self, world: World) -> None:
        self.root = world.root
        self.signed = world.signed_directory
        self.doc = json.loads(self.signed)
        self.expires = world.directory.expires_at_ms
        self.out: list[dict[str, Any]] = []

    def add(self, vid: str, data: bytes, expected: str, why: str, **more: Any) -> None:
        """A vector of given bytes (``check``: ``verify`` unless said)."""
        check = more.pop("check", "verify")
        more.setdefault("now_ms", NOW_MS)
        self.out.append(vector(f"directory/{vid}", "directory", check, data, expected, why, **more))

    def outer(self, vid: str, expected: str, why: str, **members: Any) -> None:
        """The file with outer members replaced (``None``: removed), ``signed`` untouched."""
        doc = {k: v for k, v in {**self.doc, **members}.items() if v is not None}
        self.add(vid, canonical_json(doc), expected, why)

    def edited(self, *changes: Change) -> dict[str, Any]:
        """A copy of the document with ``changes`` applied (not signed again)."""
        copy = json.loads(self.signed)
        for change in changes:
            change(copy)
        return copy

    def resigned(self, vid: str, change: Change, expected: str, why: str, **more: Any) -> None:
        """The document with ``change`` applied, signed again by the root."""
        self.add(vid, resign_directory(self.edited(change), self.root), expected, why, **more)


def directory_vectors(world: World) -> list[dict[str, Any]]:
    """Every refusal of a signed directory file, in the order of §9.2."""
    d = Directories(world)
    d.add("accepted", d.signed, "OK", "the edition in force (serial 7)", min_serial=7)
    for group in (_parsing, _outer, _signature, _edition, _model, _order):
        group(d)
    return d.out


def _parsing(d: Directories) -> None:
    signed = d.signed
    duplicate = signed.replace(b'{"format"', b'{"format":"relais-directory/1","format"', 1)
    brackets = {"to": 64 + 4 * 100_000 + 1, "byte": 0x5B}
    float_serial = resign_directory(d.edited(lambda x: x["signed"].update(serial=7.0)), d.root)
    d.add("not-json", b"{" + signed, _MALFORMED, "not JSON")
    d.add("not-utf8", signed[:-2] + b"\xff}", _MALFORMED, "a byte that is not UTF-8")
    d.add("duplicate-member", duplicate, _MALFORMED, "member format twice")
    d.add("float-serial", float_serial, _MALFORMED, "serial 7.0 (a float), signed")
    d.add("nan", signed.replace(b'"serial":7', b'"serial":NaN', 1), _MALFORMED, "NaN")
    d.add(
        "containers-over-cap", b"[", _MALFORMED, "400065 brackets, refused unparsed", pad=brackets
    )


def _outer(d: Directories) -> None:
    d.outer("outer-members", _MALFORMED, "no outer root_key_id", root_key_id=None)
    d.outer(
        "outer-format", _MALFORMED, "outer format relais-directory/2", format="relais-directory/2"
    )
    d.outer("root-key-id-shape", _MALFORMED, "outer root_key_id not 16 hex", root_key_id="ABC")


def _signature(d: Directories) -> None:
    doc, root = d.doc, d.root
    flipped = base64.b64encode(flip(0)(base64.b64decode(doc["signature"]))).decode()
    short = base64.b64encode(bytes(63)).decode()
    under_event = _crypto.sign(root.sign_sk, "event", canonical_json(doc["signed"]))
    other = PartnerKeys.generate("root", random=Drbg("negative directory/other-root"))
    d.outer("signature-flipped", _BAD_SIGNATURE, "one bit flipped", signature=flipped)
    d.outer(
        "signature-not-ascii", _BAD_SIGNATURE, "not ASCII", signature="é" + doc["signature"][1:]
    )
    d.outer("signature-short", _BAD_SIGNATURE, "a 63-byte signature", signature=short)
    d.outer("event-context", _BAD_SIGNATURE, "signed under context event",
            signature=base64.b64encode(under_event).decode())  # fmt: skip
    changed = d.signed.replace(b'"serial":7', b'"serial":8', 1)
    d.add("member-changed", changed, _BAD_SIGNATURE, "serial changed after signing")
    d.add("other-root", resign_directory(doc, other), _BAD_SIGNATURE, "signed by another root")


def _edition(d: Directories) -> None:
    d.add("rollback", d.signed, "DIRECTORY_ROLLBACK", "serial 7 when 8 is in use", min_serial=8)
    d.add("expired", d.signed, "DIRECTORY_EXPIRED", "1 ms after expires_at", now_ms=d.expires + 1)
    d.add("at-expiry", d.signed, "OK", "at expires_at exactly: still valid", now_ms=d.expires)
    d.resigned("no-expiry", lambda x: x["signed"].pop("expires_at"), _MALFORMED,
               "a signed edition without expires_at")  # fmt: skip
    d.resigned("no-rules", lambda x: x["signed"].pop("rules"), _MALFORMED,
               "a signed edition without rules")  # fmt: skip
    d.resigned("rules-invalid", lambda x: x["signed"].update(rules="version = 'x'\n"),
               "RULES_INVALID", "the edition embeds rules that do not validate",
               check="edition")  # fmt: skip


def _model(d: Directories) -> None:
    d.resigned("root-key-ids-differ", lambda x: x["signed"].update(root_key_id=_OTHER_KEY),
               _MALFORMED, "inner root_key_id differs from the outer one")  # fmt: skip
    d.resigned("key-id-not-of-keys", _bad_key_id, _MALFORMED, "a key id not KEYID of its keys")
    d.resigned("unknown-member", lambda x: x["signed"].update(extra=1), _MALFORMED,
               "an unknown member in signed")  # fmt: skip
    d.resigned("time-spelling", lambda x: x["signed"].update(issued_at="2025-11-14T22:00:00+00:00"),
               _MALFORMED, "issued_at with +00:00 in place of Z")  # fmt: skip
    d.resigned("small-order-box-key", _small_order, "SMALL_ORDER_KEY",
               "a partner's X25519 key of small order (its key id matches)")  # fmt: skip


def _order(d: Directories) -> None:
    """Two faults each: the earlier check of §9.2 decides."""
    late = d.expires + 1
    unsigned = canonical_json(d.edited(_bad_key_id))
    older = resign_directory(d.edited(lambda x: x["signed"].update(serial=6), _bad_key_id), d.root)
    bad_model = resign_directory(d.edited(_bad_key_id), d.root)
    d.add("order/signature-before-model", unsigned, _BAD_SIGNATURE, "a bad key id, not signed",
          faults=2)  # fmt: skip
    d.add("order/rollback-before-model", older, "DIRECTORY_ROLLBACK", "serial 6 and a bad key id",
          min_serial=7, faults=2)  # fmt: skip
    d.add("order/model-before-expiry", bad_model, _MALFORMED, "a bad key id, and expired",
          now_ms=late, faults=2)  # fmt: skip
    d.add("order/rollback-before-expiry", d.signed, "DIRECTORY_ROLLBACK", "older and expired",
          min_serial=8, now_ms=late, faults=2)  # fmt: skip


def _first_key(doc: dict[str, Any]) -> dict[str, Any]:
    key: dict[str, Any] = doc["signed"]["partners"][0]["keys"][0]
    return key


def _bad_key_id(doc: dict[str, Any]) -> None:
    _first_key(doc).update(key_id=_OTHER_KEY)


def _small_order(doc: dict[str, Any]) -> None:
    key = _first_key(doc)
    sign_pk = base64.b64decode(key["sign_pk"])
    key.update(
        box_pk=base64.b64encode(_SMALL_ORDER_X25519).decode(),
        key_id=key_id_for(sign_pk, _SMALL_ORDER_X25519),
    )
