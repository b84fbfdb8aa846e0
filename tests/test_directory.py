"""The signed partner directory, key resolution for envelopes and ``relais directory``."""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import shlex
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import nacl.signing
import nkeys
import pytest
from nacl.pwhash import argon2id
from pydantic import ValidationError
from typer.testing import CliRunner

from relais.agents.keys import PartnerKeys, generate, write_key_file
from relais.broker_config import directory as dmod
from relais.broker_config.directory import (
    DEPARTEMENTS,
    Directory,
    DirectoryKeys,
    Partner,
    PartnerKey,
    add_key,
    add_partner,
    bump_serial,
    canonical_json,
    new_directory,
    new_partner,
    new_partner_key,
    parse_directory,
    revoke_key,
    revoke_partner,
    sign_directory,
    to_ms,
    verify_directory,
)
from relais.cli import directory_cmd, keys_cmd
from relais.schemas import _crypto
from relais.schemas.domain import PartnerKind
from relais.schemas.envelope import KeyResolver
from relais.schemas.errors import ConfigError, DirectoryError, EnvelopeError, Reason

T0 = datetime(2025, 1, 1, tzinfo=UTC)
YEAR = timedelta(days=365)
SMALL_ORDER_POINT = bytes(32)


def det_random(label: str) -> Callable[[int], bytes]:
    counter = [0]

    def random(size: int) -> bytes:
        counter[0] += 1
        return hashlib.sha256(f"{label}/{counter[0]}".encode()).digest()[:size]

    return random


def keys_of(partner_id: str, label: str = "") -> PartnerKeys:
    return generate(partner_id, random=det_random(partner_id + label))


def entry(
    keys: PartnerKeys, *, start: datetime = T0, length: timedelta = YEAR, revoked: bool = False
) -> PartnerKey:
    key = new_partner_key(keys.sign_pk, keys.box_pk, not_before=start, not_after=start + length)
    return PartnerKey.model_validate({**dict(key), "revoked": revoked}) if revoked else key


@pytest.fixture(scope="module")
def root() -> PartnerKeys:
    return keys_of("root")


@pytest.fixture(scope="module")
def partners_keys() -> dict[str, PartnerKeys]:
    return {pid: keys_of(pid) for pid in ("crip-93", "gend-bobigny", "uaped-avicenne", "ase-93")}


@pytest.fixture(scope="module")
def directory(root: PartnerKeys, partners_keys: dict[str, PartnerKeys]) -> Directory:
    d = new_directory("pilot-93", root.key_id, issued_at=T0)
    spec = [
        ("crip-93", PartnerKind.CRIP, "CRIP de la Seine-Saint-Denis", ["93"]),
        ("gend-bobigny", PartnerKind.GENDARMERIE, "Brigade de gendarmerie de Bobigny", ["93"]),
        ("uaped-avicenne", PartnerKind.UAPED, "UAPED Hôpital Avicenne", ["93", "95"]),
        ("ase-93", PartnerKind.ASE, "Aide sociale à l'enfance 93", ["93"]),
    ]
    for pid, kind, name, deps in spec:
        partner = new_partner(pid, kind, name, departements=deps, keys=[entry(partners_keys[pid])])
        d = add_partner(d, partner)
    return bump_serial(d, issued_at=T0)


@pytest.fixture(scope="module")
def signed(directory: Directory, root: PartnerKeys) -> bytes:
    return sign_directory(directory, root)


def reason_of(excinfo: pytest.ExceptionInfo[Any]) -> Reason:
    return excinfo.value.reason  # type: ignore[no-any-return]


def resign(document: dict[str, Any], root: PartnerKeys, context: str = "directory") -> bytes:
    """Sign ``document["signed"]`` as given, bypassing the model (hostile or odd content)."""
    signature = _crypto.sign(root.sign_sk, context, canonical_json(document["signed"]))
    document = {**document, "signature": base64.b64encode(signature).decode()}
    return canonical_json(document)


# -- sign / verify -------------------------------------------------------------------------------


def test_round_trip(signed: bytes, directory: Directory, root: PartnerKeys) -> None:
    verified = verify_directory(signed, root.sign_pk)
    assert verified == directory
    assert verified.serial == 1
    crip = verified.get("crip-93")
    assert crip is not None
    assert crip.kind is PartnerKind.CRIP
    assert [p.id for p in verified.partners] == sorted(p.id for p in verified.partners)


def test_signed_file_format_is_as_documented(signed: bytes, root: PartnerKeys) -> None:
    document = json.loads(signed)
    assert set(document) == {"format", "signed", "root_key_id", "signature"}
    assert document["format"] == "relais-directory/1" == document["signed"]["format"]
    assert document["root_key_id"] == root.key_id == document["signed"]["root_key_id"]
    assert signed == canonical_json(document) + b"\n"
    message = json.dumps(
        document["signed"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    nacl.signing.VerifyKey(root.sign_pk).verify(
        b"relais/1 sig:directory\x00" + message, base64.b64decode(document["signature"])
    )
    key = document["signed"]["partners"][0]["keys"][0]
    assert key["not_before"] == "2025-01-01T00:00:00Z"
    assert len(base64.b64decode(key["sign_pk"], validate=True)) == 32
    assert "Hôpital" in signed.decode("utf-8")  # no ASCII escaping


def test_layout_of_the_file_does_not_matter(signed: bytes, root: PartnerKeys) -> None:
    pretty = json.dumps(json.loads(signed), indent=3, ensure_ascii=True).encode()
    assert verify_directory(pretty, root.sign_pk).serial == 1


def _replace_first(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data
    return data.replace(old, new, 1)


def _edit(signed: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    document = json.loads(signed)
    change(document)
    return json.dumps(document).encode()


def _flip_signature(document: dict[str, Any]) -> None:
    raw = bytearray(base64.b64decode(document["signature"]))
    raw[10] ^= 0x04
    document["signature"] = base64.b64encode(bytes(raw)).decode()


def _swap_key(document: dict[str, Any]) -> None:
    other = keys_of("gend-bobigny", "attacker")
    key = document["signed"]["partners"][1]["keys"][0]
    key["box_pk"] = base64.b64encode(other.box_pk).decode()
    key["sign_pk"] = base64.b64encode(other.sign_pk).decode()
    key["key_id"] = other.key_id


def _add_partner(document: dict[str, Any]) -> None:
    intruder = dict(document["signed"]["partners"][0])
    intruder["id"] = "zz-intruder"
    intruder["keys"] = []
    document["signed"]["partners"].append(intruder)


TAMPERINGS: dict[str, Callable[[bytes], bytes]] = {
    "name byte": lambda s: _replace_first(s, b"Bobigny", b"Bobignz"),
    "key byte": lambda s: _edit(
        s,
        lambda d: d["signed"]["partners"][0]["keys"][0].update(
            sign_pk=base64.b64encode(bytes(32)).decode()
        ),
    ),
    "key swapped": lambda s: _edit(s, _swap_key),
    "serial": lambda s: _edit(s, lambda d: d["signed"].update(serial=d["signed"]["serial"] + 1)),
    "revocation lifted or set": lambda s: _edit(
        s, lambda d: d["signed"]["partners"][0].update(revoked=True)
    ),
    "signature": lambda s: _edit(s, _flip_signature),
    "partner added": lambda s: _edit(s, _add_partner),
    "partner removed": lambda s: _edit(s, lambda d: d["signed"]["partners"].pop()),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS), ids=list(TAMPERINGS))
def test_tampering_detected(signed: bytes, root: PartnerKeys, tampering: str) -> None:
    forged = TAMPERINGS[tampering](signed)
    assert forged != signed
    with pytest.raises(DirectoryError) as excinfo:
        verify_directory(forged, root.sign_pk)
    assert reason_of(excinfo) is Reason.DIRECTORY_BAD_SIGNATURE


def test_wrong_root_key(signed: bytes) -> None:
    with pytest.raises(DirectoryError) as excinfo:
        verify_directory(signed, keys_of("root", "other").sign_pk)
    assert reason_of(excinfo) is Reason.DIRECTORY_BAD_SIGNATURE


def test_signed_by_a_partner_key_refused(directory: Directory, signed: bytes) -> None:
    impostor = keys_of("crip-93")
    document = json.loads(signed)
    with pytest.raises(DirectoryError) as excinfo:
        verify_directory(resign(document, impostor), keys_of("root").sign_pk)
    assert reason_of(excinfo) is Reason.DIRECTORY_BAD_SIGNATURE


def test_rollback(signed: bytes, root: PartnerKeys) -> None:
    assert verify_directory(signed, root.sign_pk, min_serial=1).serial == 1  # same edition
    assert verify_directory(signed, root.sign_pk, min_serial=0).serial == 1
    with pytest.raises(DirectoryError) as excinfo:
        verify_directory(signed, root.sign_pk, min_serial=2)
    assert reason_of(excinfo) is Reason.DIRECTORY_ROLLBACK


def test_rollback_is_only_judged_on_a_verified_serial(signed: bytes, root: PartnerKeys) -> None:
    forged = _edit(signed, lambda d: d["signed"].update(serial=0))
    with pytest.raises(DirectoryError) as excinfo:
        verify_directory(forged, root.sign_pk, min_serial=5)
    assert reason_of(excinfo) is Reason.DIRECTORY_BAD_SIGNATURE


def test_domain_separation(signed: bytes, root: PartnerKeys) -> None:
    document = json.loads(signed)
    as_event = resign(document, root, context="event")
    with pytest.raises(DirectoryError) as excinfo:
        verify_directory(as_event, root.sign_pk)
    assert reason_of(excinfo) is Reason.DIRECTORY_BAD_SIGNATURE
    # and the other way round: a directory signature is no event signature
    message = canonical_json(document["signed"])
    signature = base64.b64decode(document["signature"])
    with pytest.raises(EnvelopeError):
        _crypto.verify(root.sign_pk, "event", message, signature)
    assert resign(document, root) + b"\n" == signed  # same bytes, context "directory"


def test_signature_checked_before_validation(signed: bytes, root: PartnerKeys) -> None:
    def invalidate(d: dict[str, Any]) -> None:
        d["signed"]["partners"][0]["departements"] = ["20"]

    unsigned_garbage = _edit(signed, invalidate)
    with pytest.raises(DirectoryError) as excinfo:
        verify_directory(unsigned_garbage, root.sign_pk)
    assert reason_of(excinfo) is Reason.DIRECTORY_BAD_SIGNATURE
    document = json.loads(unsigned_garbage)
    with pytest.raises(DirectoryError) as excinfo:
        verify_directory(resign(document, root), root.sign_pk)
    assert reason_of(excinfo) is Reason.DIRECTORY_MALFORMED


def test_small_order_box_key_refused(signed: bytes, root: PartnerKeys) -> None:
    document = json.loads(signed)
    key = document["signed"]["partners"][0]["keys"][0]
    sign_pk = base64.b64decode(key["sign_pk"])
    key["box_pk"] = base64.b64encode(SMALL_ORDER_POINT).decode()
    key["key_id"] = dmod.key_id_for(sign_pk, SMALL_ORDER_POINT)
    with pytest.raises(DirectoryError) as excinfo:
        verify_directory(resign(document, root), root.sign_pk)
    assert reason_of(excinfo) is Reason.SMALL_ORDER_KEY
    with pytest.raises(DirectoryError) as excinfo:
        new_partner_key(sign_pk, SMALL_ORDER_POINT, not_before=T0, not_after=T0 + YEAR)
    assert reason_of(excinfo) is Reason.SMALL_ORDER_KEY


def test_key_id_must_match_the_keys(signed: bytes, root: PartnerKeys) -> None:
    document = json.loads(signed)
    document["signed"]["partners"][0]["keys"][0]["key_id"] = "0123456789abcdef"
    with pytest.raises(DirectoryError) as excinfo:
        verify_directory(resign(document, root), root.sign_pk)
    assert reason_of(excinfo) is Reason.DIRECTORY_MALFORMED


def test_duplicate_partner_ids_refused(
    directory: Directory, signed: bytes, root: PartnerKeys
) -> None:
    document = json.loads(signed)
    partners = document["signed"]["partners"]
    twin = {**partners[1], "id": partners[0]["id"], "keys": []}
    partners.insert(1, twin)
    with pytest.raises(DirectoryError) as excinfo:
        verify_directory(resign(document, root), root.sign_pk)
    assert reason_of(excinfo) is Reason.DIRECTORY_MALFORMED
    with pytest.raises(DirectoryError):
        add_partner(directory, directory.partners[0])
    with pytest.raises(ValidationError):
        Directory(
            partnership="pilot-93",
            serial=1,
            issued_at=T0,
            root_key_id=directory.root_key_id,
            partners=(directory.partners[0], directory.partners[0]),
        )


def test_duplicate_key_ids_refused(signed: bytes, root: PartnerKeys) -> None:
    document = json.loads(signed)
    partners = document["signed"]["partners"]
    partners[1]["keys"] = list(partners[0]["keys"])  # same key under two partners
    with pytest.raises(DirectoryError) as excinfo:
        verify_directory(resign(document, root), root.sign_pk)
    assert reason_of(excinfo) is Reason.DIRECTORY_MALFORMED
    partners[1]["keys"] = []
    partners[0]["keys"] = partners[0]["keys"] * 2  # twice under one partner
    with pytest.raises(DirectoryError):
        verify_directory(resign(document, root), root.sign_pk)


def _outer(signed: bytes) -> dict[str, Any]:
    return json.loads(signed)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "make",
    [
        lambda s: b"not json",
        lambda s: b"[]",
        lambda s: s[:-40],
        lambda s: b"\xef\xbb\xbf" + s,  # BOM
        lambda s: s.replace(b'"format":"relais-directory/1"', b'"format":"relais-directory/2"', 1),
        lambda s: json.dumps({**_outer(s), "extra": 1}).encode(),
        lambda s: json.dumps({k: v for k, v in _outer(s).items() if k != "root_key_id"}).encode(),
        lambda s: json.dumps({**_outer(s), "root_key_id": "ROOT"}).encode(),
        lambda s: json.dumps({**_outer(s), "signed": []}).encode(),
        lambda s: s.replace(b'{"format"', b'{"format":"x","format"', 1),  # duplicate member
        lambda s: s.replace(b'"serial":1', b'"serial":1.0', 1),
        lambda s: s.replace(b'"serial":1', b'"serial":NaN', 1),
        lambda s: b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_malformed_files_refused(signed: bytes, root: PartnerKeys, make: Any) -> None:
    with pytest.raises(DirectoryError) as excinfo:
        verify_directory(make(signed), root.sign_pk)
    assert reason_of(excinfo) is Reason.DIRECTORY_MALFORMED


def test_size_and_count_caps(
    signed: bytes, root: PartnerKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dmod, "MAX_PARTNERS", 2)
    with pytest.raises(DirectoryError) as excinfo:
        verify_directory(signed, root.sign_pk)
    assert reason_of(excinfo) is Reason.DIRECTORY_MALFORMED
    monkeypatch.setattr(dmod, "MAX_DIRECTORY_BYTES", 100)
    with pytest.raises(DirectoryError):
        verify_directory(signed, root.sign_pk)


def test_garbage_collection_is_restored(signed: bytes, root: PartnerKeys) -> None:
    verify_directory(signed, root.sign_pk)
    with pytest.raises(DirectoryError):
        verify_directory(signed, keys_of("root", "other").sign_pk)
    with pytest.raises(DirectoryError):
        parse_directory(b"{}")
    assert gc.isenabled()


def test_root_public_key_length_checked(signed: bytes) -> None:
    with pytest.raises(ConfigError):
        verify_directory(signed, b"short")


def test_signing_requires_the_named_root(directory: Directory) -> None:
    with pytest.raises(DirectoryError):
        sign_directory(directory, keys_of("root", "other"))


# -- validation of fields ------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["01", "19", "21", "95", "2A", "2B", "971", "974", "976"])
def test_valid_departements(code: str) -> None:
    assert dmod.is_valid_departement(code)
    assert new_partner("crip-x", PartnerKind.CRIP, "CRIP", departements=[code]).departements


@pytest.mark.parametrize(
    "code", ["00", "20", "96", "99", "970", "977", "2C", "2a", "1", "9", "093", " 93", "93\n"]
)
def test_invalid_departements(code: str) -> None:
    assert not dmod.is_valid_departement(code)
    with pytest.raises(DirectoryError):
        new_partner("crip-x", PartnerKind.CRIP, "CRIP", departements=[code])


def test_departement_list() -> None:
    # 01-19, 21-95, 2A, 2B: 96 metropolitan codes; 971-974 and 976: 5 overseas départements
    assert len(DEPARTEMENTS) == 101
    assert "975" not in DEPARTEMENTS  # Saint-Pierre-et-Miquelon is a collectivité


@pytest.mark.parametrize("partner_id", ["Crip-93", "crip_93", "-crip", "crip-", "ab", "crip-93\n"])
def test_invalid_partner_ids(partner_id: str) -> None:
    with pytest.raises(DirectoryError):
        new_partner(partner_id, PartnerKind.CRIP, "CRIP")


@pytest.mark.parametrize(
    "name", ["", " leading", "trailing ", "line\nbreak", "bidi \u202eevil", "zero\u200bwidth"]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(DirectoryError):
        new_partner("crip-x", PartnerKind.CRIP, name)


def _nkey(prefix: int) -> str:
    seed = nkeys.encode_seed(bytes(nacl.signing.SigningKey.generate()), prefix)
    return str(nkeys.from_seed(seed).public_key.decode())


def test_nats_nkey() -> None:
    user = _nkey(nkeys.PREFIX_BYTE_USER)
    assert new_partner("crip-x", PartnerKind.CRIP, "CRIP", nats_nkey=user).nats_nkey == user
    account = _nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    corrupted = user[:-1] + ("A" if user[-1] != "A" else "B")
    for bad in (account, corrupted, user.lower(), "U" + "A" * 10):
        with pytest.raises(DirectoryError):
            new_partner("crip-x", PartnerKind.CRIP, "CRIP", nats_nkey=bad)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2025, 1, 1),  # naive
        datetime(2025, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
        datetime(2025, 1, 1, 0, 0, 0, 500, tzinfo=UTC),
    ],
)
def test_times_must_be_utc_whole_seconds(moment: datetime) -> None:
    keys = keys_of("crip-93")
    with pytest.raises(DirectoryError):
        new_partner_key(keys.sign_pk, keys.box_pk, not_before=moment, not_after=T0 + YEAR)


@pytest.mark.parametrize(
    "text", ["2025-01-01T00:00:00+00:00", "2025-01-01T00:00:00.000Z", "2025-01-01 00:00:00Z", "x"]
)
def test_only_the_z_spelling_is_accepted(directory: Directory, text: str) -> None:
    document = json.loads(dmod.dump_directory(directory))
    document["issued_at"] = text
    with pytest.raises(DirectoryError):
        parse_directory(json.dumps(document))


def test_validity_must_be_a_positive_interval() -> None:
    keys = keys_of("crip-93")
    with pytest.raises(DirectoryError):
        new_partner_key(keys.sign_pk, keys.box_pk, not_before=T0, not_after=T0)


def test_working_document_round_trip(directory: Directory) -> None:
    assert parse_directory(dmod.dump_directory(directory)) == directory


def test_working_document_is_strict(directory: Directory) -> None:
    document = json.loads(dmod.dump_directory(directory))
    document["serial"] = "1"
    with pytest.raises(DirectoryError):
        parse_directory(json.dumps(document))


def test_errors_do_not_echo_values(directory: Directory) -> None:
    document = json.loads(dmod.dump_directory(directory))
    document["partners"][0]["name"] = "Secret\x07Name"
    with pytest.raises(DirectoryError) as excinfo:
        parse_directory(json.dumps(document))
    assert "Secret" not in str(excinfo.value)
    assert "partners.0.name" in str(excinfo.value)


# -- key resolution ------------------------------------------------------------------------------


def ms(moment: datetime) -> int:
    return to_ms(moment)


@pytest.fixture(scope="module")
def rotation(root: PartnerKeys) -> tuple[DirectoryKeys, dict[str, PartnerKeys]]:
    k = {
        "old": keys_of("crip-93", "old"),
        "new": keys_of("crip-93", "new"),
        "revoked": keys_of("crip-93", "revoked"),
        "future": keys_of("gend-bobigny", "future"),
        "expired": keys_of("ase-93", "expired"),
        "gone": keys_of("pjj-93", "gone"),
        "banned": keys_of("hotel-x", "banned"),
    }
    d = new_directory("pilot-93", root.key_id, issued_at=T0)
    partners = [
        new_partner(
            "crip-93",
            PartnerKind.CRIP,
            "CRIP 93",
            departements=["93"],
            keys=[
                entry(k["old"], start=T0, length=YEAR),
                # rotation: the new key starts before the old one ends
                entry(k["new"], start=T0 + timedelta(days=300), length=YEAR),
                entry(k["revoked"], start=T0, length=3 * YEAR, revoked=True),
            ],
        ),
        new_partner(
            "gend-bobigny",
            PartnerKind.GENDARMERIE,
            "Brigade",
            departements=["93"],
            keys=[entry(k["future"], start=T0 + YEAR)],
        ),
        new_partner(
            "ase-93", PartnerKind.ASE, "ASE", departements=["93"], keys=[entry(k["expired"])]
        ),
        new_partner(
            "pjj-93",
            PartnerKind.PJJ,
            "PJJ",
            departements=["93"],
            keys=[entry(k["gone"], revoked=True)],
        ),
        new_partner("hotel-x", PartnerKind.HOTEL, "Hôtel", keys=[entry(k["banned"])]),
        new_partner("empty-93", PartnerKind.OUTREACH, "Maraude", departements=["93"]),
    ]
    for partner in partners:
        d = add_partner(d, partner)
    d = revoke_partner(d, "hotel-x")
    verified = verify_directory(sign_directory(d, root), root.sign_pk)
    return DirectoryKeys(verified), k


def test_directory_keys_is_a_key_resolver(
    rotation: tuple[DirectoryKeys, dict[str, PartnerKeys]],
) -> None:
    resolver: KeyResolver = rotation[0]
    assert resolver.signing_key("crip-93", rotation[1]["old"].key_id, ms(T0)) == (
        rotation[1]["old"].sign_pk
    )


@pytest.mark.parametrize(
    ("partner_id", "key", "at", "reason"),
    [
        ("nobody", "old", T0, Reason.UNKNOWN_SENDER),
        ("crip-93", "future", T0, Reason.UNKNOWN_KEY),  # another partner's key
        ("crip-93", "revoked", T0 + timedelta(days=10), Reason.REVOKED_KEY),
        ("hotel-x", "banned", T0 + timedelta(days=10), Reason.REVOKED_PARTNER),
        ("crip-93", "old", T0 + YEAR + timedelta(milliseconds=1), Reason.EXPIRED_KEY),
        ("gend-bobigny", "future", T0 + YEAR - timedelta(milliseconds=1), Reason.KEY_NOT_YET_VALID),
        ("crip-93", "old", T0 - timedelta(milliseconds=1), Reason.KEY_NOT_YET_VALID),
    ],
)
def test_signing_key_reasons(
    rotation: tuple[DirectoryKeys, dict[str, PartnerKeys]],
    partner_id: str,
    key: str,
    at: datetime,
    reason: Reason,
) -> None:
    resolver, k = rotation
    with pytest.raises(EnvelopeError) as excinfo:
        resolver.signing_key(partner_id, k[key].key_id, ms(at))
    assert reason_of(excinfo) is reason
    assert str(excinfo.value) == EnvelopeError.OPAQUE_MESSAGE


def test_signing_key_validity_bounds_are_inclusive(
    rotation: tuple[DirectoryKeys, dict[str, PartnerKeys]],
) -> None:
    resolver, k = rotation
    for at in (T0, T0 + YEAR):
        assert resolver.signing_key("crip-93", k["old"].key_id, ms(at)) == k["old"].sign_pk


def test_box_key_picks_the_newest_valid_key_during_rotation(
    rotation: tuple[DirectoryKeys, dict[str, PartnerKeys]],
) -> None:
    resolver, k = rotation
    before = resolver.box_key("crip-93", ms(T0 + timedelta(days=100)))
    assert before == (k["old"].key_id, k["old"].box_pk)
    overlap = ms(T0 + timedelta(days=320))
    assert resolver.box_key("crip-93", overlap) == (k["new"].key_id, k["new"].box_pk)
    # during the overlap, events signed with the old key still verify
    assert resolver.signing_key("crip-93", k["old"].key_id, overlap) == k["old"].sign_pk
    after = resolver.box_key("crip-93", ms(T0 + timedelta(days=400)))
    assert after == (k["new"].key_id, k["new"].box_pk)


@pytest.mark.parametrize(
    ("partner_id", "at", "reason"),
    [
        ("nobody", T0, Reason.UNKNOWN_SENDER),
        ("hotel-x", T0, Reason.REVOKED_PARTNER),
        ("empty-93", T0, Reason.UNKNOWN_KEY),
        ("pjj-93", T0, Reason.REVOKED_KEY),
        ("gend-bobigny", T0, Reason.KEY_NOT_YET_VALID),
        ("ase-93", T0 + 2 * YEAR, Reason.EXPIRED_KEY),
        ("crip-93", T0 + 3 * YEAR, Reason.EXPIRED_KEY),
    ],
)
def test_box_key_reasons(
    rotation: tuple[DirectoryKeys, dict[str, PartnerKeys]],
    partner_id: str,
    at: datetime,
    reason: Reason,
) -> None:
    with pytest.raises(EnvelopeError) as excinfo:
        rotation[0].box_key(partner_id, ms(at))
    assert reason_of(excinfo) is reason


def test_partner_kind(rotation: tuple[DirectoryKeys, dict[str, PartnerKeys]]) -> None:
    resolver = rotation[0]
    assert resolver.partner_kind("crip-93") is PartnerKind.CRIP
    assert resolver.partner_kind("hotel-x") is PartnerKind.HOTEL  # revoked, still known
    with pytest.raises(EnvelopeError) as excinfo:
        resolver.partner_kind("nobody")
    assert reason_of(excinfo) is Reason.UNKNOWN_SENDER


def test_find_and_of_kind_skip_inactive_partners(
    rotation: tuple[DirectoryKeys, dict[str, PartnerKeys]],
) -> None:
    d = rotation[0].directory
    assert [p.id for p in d.find(PartnerKind.CRIP, "93")] == ["crip-93"]
    assert d.find("crip", "93") == d.find(PartnerKind.CRIP, "93")
    assert d.find(PartnerKind.PJJ, "93") == ()  # its only key is revoked
    assert d.find(PartnerKind.OUTREACH, "93") == ()  # no key at all
    assert d.of_kind(PartnerKind.HOTEL) == ()  # revoked partner
    assert d.get("hotel-x") is not None  # but still known
    assert d.find("no-such-kind", "93") == ()
    assert d.find(PartnerKind.CRIP, "75") == ()
    assert [p.id for p in d.find(PartnerKind.ASE, "93")] == ["ase-93"]
    assert d.find(PartnerKind.ASE, "93", at_ms=ms(T0 + 2 * YEAR)) == ()  # key expired by then
    assert d.of_kind(PartnerKind.GENDARMERIE, at_ms=ms(T0)) == ()  # key not yet valid


# -- editing helpers -----------------------------------------------------------------------------


def test_editing_helpers(directory: Directory, root: PartnerKeys) -> None:
    crip = directory.get("crip-93")
    assert crip is not None
    assert not crip.revoked
    newer = keys_of("crip-93", "rotated")
    rotated = add_key(directory, "crip-93", entry(newer, start=T0 + timedelta(days=200)))
    rotated_crip = rotated.get("crip-93")
    assert rotated_crip is not None
    assert len(rotated_crip.keys) == 2
    assert directory.get("crip-93") == crip  # the original is untouched
    revoked = revoke_partner(rotated, "gend-bobigny")
    assert revoked.find(PartnerKind.GENDARMERIE, "93") == ()  # the index follows
    assert directory.find(PartnerKind.GENDARMERIE, "93") != ()
    key_revoked = revoke_key(revoked, "crip-93", newer.key_id)
    revoked_key = key_revoked.get("crip-93")
    assert revoked_key is not None
    assert revoked_key.key(newer.key_id) is not None
    assert revoked_key.key(newer.key_id).revoked  # type: ignore[union-attr]
    bumped = bump_serial(key_revoked, issued_at=T0 + timedelta(days=1))
    assert bumped.serial == directory.serial + 1
    assert verify_directory(sign_directory(bumped, root), root.sign_pk) == bumped
    with pytest.raises(ConfigError):
        revoke_partner(directory, "nobody")
    with pytest.raises(ConfigError):
        revoke_key(directory, "crip-93", "0123456789abcdef")
    with pytest.raises(ConfigError):
        add_key(directory, "nobody", entry(newer))
    with pytest.raises(DirectoryError):  # the same key twice
        add_key(rotated, "crip-93", entry(newer, start=T0 + timedelta(days=200)))


# -- 40,000 partners -----------------------------------------------------------------------------


def _fake_public_key(label: str) -> bytes:
    # Random-looking 32-byte strings stand in for public keys: generating 40,000 real key
    # pairs would only slow the test down; small-order points are skipped.
    raw = hashlib.sha256(label.encode()).digest()
    return raw if not _crypto.is_small_order(raw) else hashlib.sha256(raw).digest()


@pytest.fixture(scope="module")
def big(root: PartnerKeys) -> tuple[Directory, list[Partner]]:
    kinds = list(PartnerKind)
    codes = sorted(DEPARTEMENTS)
    partners = []
    for i in range(40_000):
        key = new_partner_key(
            _fake_public_key(f"s{i}"),
            _fake_public_key(f"b{i}"),
            not_before=T0,
            not_after=T0 + YEAR,
        )
        if i % 11 == 0:
            key = PartnerKey.model_validate({**dict(key), "revoked": True})
        deps = (codes[i % len(codes)], codes[(i * 7 + 3) % len(codes)])
        partners.append(
            Partner(
                id=f"p{i:05d}",
                kind=kinds[(i * 3) % len(kinds)],
                name=f"Organisation {i}",
                departements=tuple(dict.fromkeys(deps)),
                revoked=i % 7 == 0,
                keys=(key,),
            )
        )
    d = Directory(
        partnership="national",
        serial=42,
        issued_at=T0,
        root_key_id=root.key_id,
        partners=tuple(reversed(partners)),
    )
    verified = verify_directory(sign_directory(d, root), root.sign_pk, min_serial=42)
    return verified, partners


def test_find_on_40000_partners(big: tuple[Directory, list[Partner]]) -> None:
    directory, partners = big
    assert len(directory.partners) == 40_000
    expected: dict[tuple[PartnerKind, str], list[str]] = {}
    for p in partners:
        if p.revoked or all(k.revoked for k in p.keys):
            continue
        for dep in p.departements:
            expected.setdefault((p.kind, dep), []).append(p.id)
    for kind in PartnerKind:
        for dep in sorted(DEPARTEMENTS):
            found = directory.find(kind, dep)
            assert [p.id for p in found] == sorted(expected.get((kind, dep), []))
    assert sum(len(v) for v in expected.values()) > 40_000  # most partners have 2 codes
    crips = directory.of_kind(PartnerKind.CRIP)
    assert [p.id for p in crips] == sorted(
        p.id
        for p in partners
        if p.kind is PartnerKind.CRIP and not p.revoked and not p.keys[0].revoked
    )
    for p in partners[::997]:
        assert directory.get(p.id) == p
    resolver = DirectoryKeys(directory)
    active = next(p for p in partners if not p.revoked and not p.keys[0].revoked)
    assert resolver.box_key(active.id, ms(T0)) == (
        active.keys[0].key_id,
        active.keys[0].box_pk_bytes,
    )


# -- relais directory (end to end) ---------------------------------------------------------------


class Cli:
    """Runs ``relais keys ...`` / ``relais directory ...`` command lines in a tmp dir."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.runner = CliRunner()
        self.pw = tmp / "passphrase"
        self.pw.write_bytes(b"a sufficiently long passphrase\n")
        self.pw.chmod(0o600)

    def __call__(self, command: str) -> Any:
        group, *args = shlex.split(command)
        app = {"keys": keys_cmd.app, "directory": directory_cmd.app}[group]
        return self.runner.invoke(app, args)

    def new_key(self, partner_id: str, name: str) -> Path:
        out = self.tmp / name
        ok(self(f"keys new {partner_id} --out {out} --passphrase-file {self.pw}"))
        return out


def ok(result: Any) -> Any:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def test_cli_end_to_end(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    root_key = cli.new_key("root", "root.key")
    root_pub = f"{root_key}.pub.json"
    gend_key = cli.new_key("gend-bobigny", "gend.key")
    crip_key = cli.new_key("crip-93", "crip.key")
    work, signed = tmp_path / "directory.json", tmp_path / "directory.signed.json"
    sign = f"directory sign --directory {work} --root-key {root_key} --out {signed}"
    sign += f" --passphrase-file {cli.pw}"
    check = f"{signed} --root-public-key {root_pub}"

    ok(cli(f"directory init --partnership pilot-93 --root-key {root_pub} --out {work}"))
    nkey = _nkey(nkeys.PREFIX_BYTE_USER)
    ok(
        cli(
            f"directory add --directory {work} --partner-id gend-bobigny --kind gendarmerie"
            f" --name 'Brigade de gendarmerie de Bobigny' --departement 93"
            f" --public-key {gend_key}.pub.json --nats-nkey {nkey}"
        )
    )
    ok(
        cli(
            f"directory add --directory {work} --partner-id crip-93 --kind crip"
            f" --name 'CRIP de la Seine-Saint-Denis' --departement 93 --departement 95"
            f" --public-key {crip_key}.pub.json --valid-days 30"
        )
    )
    assert "serial 1" in ok(cli(sign)).stdout
    first_edition = signed.read_bytes()

    summary = json.loads(ok(cli(f"directory verify {check} --json")).stdout)
    assert summary["ok"] is True
    assert (summary["serial"], summary["partners"]) == (1, 2)
    root_b64 = json.loads(Path(root_pub).read_text())["sign_pk"]
    verified = ok(cli(f"directory verify {signed} --root-public-key {root_b64}"))
    assert "serial 1" in verified.stdout

    shown = ok(cli(f"directory show {check}")).stdout
    assert "gend-bobigny  gendarmerie  93  Brigade de gendarmerie de Bobigny" in shown
    assert "crip-93  crip  93,95" in shown
    for pub in (f"{gend_key}.pub.json", f"{crip_key}.pub.json"):
        export = json.loads(Path(pub).read_text())
        assert export["key_id"] in shown
        assert export["sign_pk"] not in shown
        assert export["box_pk"] not in shown
    listing = json.loads(
        ok(cli(f"directory show {check} --json --kind crip --departement 95")).stdout
    )
    assert [p["id"] for p in listing["partners"]] == ["crip-93"]
    assert listing["partners"][0]["departements"] == ["93", "95"]

    # revoke a partner, re-sign: a new edition
    ok(cli(f"directory revoke --directory {work} gend-bobigny"))
    assert "serial 2" in ok(cli(sign)).stdout
    shown = ok(cli(f"directory show {check} --json")).stdout
    gend = next(p for p in json.loads(shown)["partners"] if p["id"] == "gend-bobigny")
    assert gend["revoked"] is True
    ok(cli(f"directory verify {check} --min-serial 2"))
    old = tmp_path / "old.json"
    old.write_bytes(first_edition)
    rollback = cli(f"directory verify {old} --root-public-key {root_pub} --min-serial 2")
    assert rollback.exit_code == 1
    assert "DIRECTORY_ROLLBACK" in rollback.stderr

    # revoke a key, rotate with add-key
    crip_id = json.loads(Path(f"{crip_key}.pub.json").read_text())["key_id"]
    ok(cli(f"directory revoke --directory {work} crip-93 --key-id {crip_id}"))
    crip_next = cli.new_key("crip-93", "crip-next.key")
    ok(cli(f"directory add-key --directory {work} crip-93 --public-key {crip_next}.pub.json"))
    ok(cli(sign))
    final = json.loads(ok(cli(f"directory show {check} --json")).stdout)
    assert final["serial"] == 3
    crip = next(p for p in final["partners"] if p["id"] == "crip-93")
    assert [(k["key_id"] == crip_id, k["revoked"]) for k in crip["keys"]] == [
        (True, True),
        (False, False),
    ]


def test_cli_failures(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    root_key = cli.new_key("root", "root.key")
    other_root = cli.new_key("root", "other-root.key")
    gend_key = cli.new_key("gend-bobigny", "gend.key")
    work, signed = tmp_path / "d.json", tmp_path / "d.signed.json"
    init = f"directory init --partnership p-93 --root-key {root_key} --out {work}"
    ok(cli(init))
    again = cli(init)
    assert again.exit_code == 2
    assert "refusing to overwrite" in again.stderr

    add = f"directory add --directory {work} --public-key {gend_key}.pub.json --departement 93"
    mismatch = cli(f"{add} --partner-id crip-93 --kind crip --name CRIP")
    assert mismatch.exit_code == 2
    assert "gend-bobigny" in mismatch.stderr
    assert cli(f"{add} --partner-id gend-bobigny --kind martian --name X").exit_code == 2
    bad_name = cli(f"{add} --partner-id gend-bobigny --kind gendarmerie --name ' padded '")
    assert bad_name.exit_code == 1
    assert "DIRECTORY_MALFORMED" in bad_name.stderr
    ok(cli(f"{add} --partner-id gend-bobigny --kind gendarmerie --name Brigade"))
    assert cli(f"{add} --partner-id gend-bobigny --kind gendarmerie --name Brigade").exit_code == 1

    sign = f"directory sign --directory {work} --out {signed} --passphrase-file"
    wrong_root = cli(f"{sign} {cli.pw} --root-key {other_root}")
    assert wrong_root.exit_code == 1
    assert not signed.exists()
    bad_pw = tmp_path / "bad-pw"
    bad_pw.write_text("not the passphrase at all\n")
    bad_pw.chmod(0o600)
    wrong_pw = cli(f"{sign} {bad_pw} --root-key {root_key}")
    assert wrong_pw.exit_code == 1
    assert "KEYFILE_BAD_PASSPHRASE" in wrong_pw.stderr
    assert json.loads(work.read_text())["serial"] == 0  # nothing bumped on failure
    ok(cli(f"{sign} {cli.pw} --root-key {root_key}"))

    for command in ("verify", "show"):
        failed = cli(f"directory {command} {signed} --root-public-key {other_root}.pub.json")
        assert failed.exit_code == 1
        assert failed.stderr.startswith("error [DIRECTORY_BAD_SIGNATURE]")
        assert failed.stdout == ""
    assert cli(f"directory verify {signed} --root-public-key not-base64!").exit_code == 2
    absent = tmp_path / "absent.json"
    assert cli(f"directory verify {absent} --root-public-key {root_key}.pub.json").exit_code == 2
    unknown = cli(f"directory revoke --directory {work} nobody")
    assert unknown.exit_code == 2
    assert "nobody" in unknown.stderr
    bad_dep = cli(f"directory show {signed} --root-public-key {root_key}.pub.json --departement 20")
    assert bad_dep.exit_code == 2


def test_cli_key_files_need_owner_only_permissions(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    root_key = tmp_path / "root.key"
    fast: dict[str, Any] = {"opslimit": argon2id.OPSLIMIT_MIN, "memlimit": argon2id.MEMLIMIT_MIN}
    write_key_file(root_key, generate("root"), b"a sufficiently long passphrase", **fast)
    work = tmp_path / "d.json"
    ok(cli(f"directory init --partnership p-93 --root-key {root_key} --out {work}"))
    root_key.chmod(0o640)
    result = cli(
        f"directory sign --directory {work} --root-key {root_key} --out {tmp_path / 's.json'}"
        f" --passphrase-file {cli.pw}"
    )
    assert result.exit_code == 1
    assert "KEYFILE_PERMISSIONS" in result.stderr
