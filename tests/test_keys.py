"""Partner key pairs, encrypted key files and ``relais keys``."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import nkeys
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl import bindings as sodium
from nacl.pwhash import argon2id
from typer.testing import CliRunner

from relais.agents.keys import (
    KEY_FILE_FORMAT,
    PartnerKeys,
    PublicKey,
    decrypt_key_file,
    encrypt_key_file,
    generate,
    load_key_file,
    nats_user_public,
    public_export,
    read_public_key,
    write_key_file,
    write_public_key,
)
from relais.broker_config.directory import key_id_for
from relais.cli import keys_cmd
from relais.schemas import _crypto
from relais.schemas.envelope import LocalIdentity
from relais.schemas.errors import ConfigError, KeyFileError, Reason

FAST: dict[str, Any] = {"opslimit": argon2id.OPSLIMIT_MIN, "memlimit": argon2id.MEMLIMIT_MIN}
PASSPHRASE = b"correct horse battery staple"

# Golden vector: fixed secrets, salt and nonce, minimal KDF limits.
GOLDEN_SEED = bytes(range(32))
GOLDEN_BOX_SK = bytes(range(32, 64))
GOLDEN_KEY_ID = "e3627db1cc2a74c0"
GOLDEN_PASSPHRASE = b"golden vector passphrase"
GOLDEN_SALT = bytes(range(100, 116))
GOLDEN_NONCE = bytes(range(200, 224))
GOLDEN_FILE = {
    "format": "relais-key/1",
    "partner_id": "crip-93",
    "key_id": "e3627db1cc2a74c0",
    "sign_pk": "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=",
    "box_pk": "NYBy1jZYgNGu6jKa35EhODhR7SGijjt16WXQ0s0WYlQ=",
    "kdf": "argon2id",
    "opslimit": 1,
    "memlimit": 8192,
    "salt": "ZGVmZ2hpamtsbW5vcHFycw==",
    "nonce": "yMnKy8zNzs/Q0dLT1NXW19jZ2tvc3d7f",
    "ciphertext": (
        "NtO/kmSeQCHxYPXAlxqGkiyJr6xmUe1IPbtcerknZS1to+4ex5N+"
        "NtMbMm8k9BrTq0y38o+bXK2kjxGEjSpXJnv4keDPHZFFFipyVoxnk1Q="
    ),
}


def counter_random(label: str):
    """Deterministic randomness for reproducible keys."""
    state = {"n": 0}

    def random(size: int) -> bytes:
        state["n"] += 1
        return hashlib.sha256(f"{label}/{state['n']}".encode()).digest()[:size]

    return random


@pytest.fixture
def keys() -> PartnerKeys:
    return generate("crip-93", random=counter_random("crip-93"))


@pytest.fixture
def key_file(tmp_path: Path, keys: PartnerKeys) -> Path:
    path = tmp_path / "crip-93.key"
    write_key_file(path, keys, PASSPHRASE, **FAST)
    return path


def reason_of(excinfo: pytest.ExceptionInfo[BaseException]) -> Reason:
    return excinfo.value.reason  # type: ignore[attr-defined,no-any-return]


# -- key pairs and key ids ----------------------------------------------------------------------


def test_golden_key_id_matches_an_independent_derivation() -> None:
    keys = PartnerKeys("crip-93", GOLDEN_SEED, GOLDEN_BOX_SK)
    sign_pk = (
        Ed25519PrivateKey.from_private_bytes(GOLDEN_SEED)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    box_pk = (
        X25519PrivateKey.from_private_bytes(GOLDEN_BOX_SK)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    expected = hashlib.sha256(b"relais/1 key-id\x00" + sign_pk + box_pk).hexdigest()[:16]
    assert keys.sign_pk == sign_pk
    assert keys.box_pk == box_pk
    assert keys.key_id == expected == GOLDEN_KEY_ID == key_id_for(sign_pk, box_pk)
    assert keys.sign_sk == GOLDEN_SEED + sign_pk  # libsodium layout
    assert keys.box_sk == GOLDEN_BOX_SK


def test_generate_uses_the_injected_randomness() -> None:
    a = generate("crip-93", random=counter_random("x"))
    b = PartnerKeys.generate("crip-93", random=counter_random("x"))
    c = generate("crip-93")
    assert a.key_id == b.key_id != c.key_id
    assert a.sign_sk == b.sign_sk
    assert a.box_sk == b.box_sk


@pytest.mark.parametrize("partner_id", ["Crip-93", "a", "crip_93", "-crip", "crip-93\n", ""])
def test_invalid_partner_id_refused(partner_id: str) -> None:
    with pytest.raises(ConfigError):
        generate(partner_id)


def test_keys_sign_and_unwrap(keys: PartnerKeys) -> None:
    identity: LocalIdentity = keys  # what the envelope code expects of a local identity
    assert identity.partner_id == "crip-93"
    signature = _crypto.sign(keys.sign_sk, "event", b"message")
    _crypto.verify(keys.sign_pk, "event", b"message", signature)
    wrapped = _crypto.wrap_key(bytes(32), keys.box_pk, os.urandom)
    assert _crypto.unwrap_key(wrapped, keys.box_pk, keys.box_sk) == bytes(32)


def test_repr_and_str_hold_no_secret(keys: PartnerKeys) -> None:
    shown = repr(keys) + str(keys) + f"{keys}" + repr([keys])
    assert "crip-93" in shown
    assert keys.key_id in shown
    seed, box_sk = keys.sign_sk[:32], keys.box_sk
    for secret in (seed, box_sk, keys.sign_sk):
        for text in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)):
            assert text not in shown
            assert text[:12] not in shown


def test_keys_cannot_be_pickled(keys: PartnerKeys) -> None:
    with pytest.raises(TypeError):
        pickle.dumps(keys)


# -- key files -----------------------------------------------------------------------------------


def test_golden_key_file_decrypts() -> None:
    data = json.dumps(GOLDEN_FILE).encode()
    keys = decrypt_key_file(data, GOLDEN_PASSPHRASE)
    assert keys.key_id == GOLDEN_KEY_ID
    assert keys.sign_sk[:32] == GOLDEN_SEED
    assert keys.box_sk == GOLDEN_BOX_SK
    # The KDF parameters mean what they say: an independent argon2id (1 lane) agrees.
    kdf_key = Argon2id(
        salt=GOLDEN_SALT, length=32, iterations=1, lanes=1, memory_cost=8192 // 1024
    ).derive(GOLDEN_PASSPHRASE)
    ciphertext = base64.b64decode(GOLDEN_FILE["ciphertext"])  # type: ignore[arg-type]
    opened = sodium.crypto_secretbox_open(ciphertext, GOLDEN_NONCE, kdf_key)
    assert opened == GOLDEN_SEED + GOLDEN_BOX_SK


def test_golden_key_file_is_reproducible() -> None:
    keys = PartnerKeys("crip-93", GOLDEN_SEED, GOLDEN_BOX_SK)
    chunks = iter([GOLDEN_SALT, GOLDEN_NONCE])
    data = encrypt_key_file(keys, GOLDEN_PASSPHRASE, **FAST, random=lambda n: next(chunks))
    assert json.loads(data) == GOLDEN_FILE


def test_round_trip(key_file: Path, keys: PartnerKeys) -> None:
    loaded = load_key_file(key_file, PASSPHRASE)
    assert (loaded.partner_id, loaded.key_id) == (keys.partner_id, keys.key_id)
    assert loaded.sign_sk == keys.sign_sk
    assert loaded.box_sk == keys.box_sk
    document = json.loads(key_file.read_text())
    assert document["format"] == KEY_FILE_FORMAT
    assert (document["opslimit"], document["memlimit"]) == (FAST["opslimit"], FAST["memlimit"])


def test_default_limits_are_interactive(tmp_path: Path, keys: PartnerKeys) -> None:
    document = json.loads(encrypt_key_file(keys, PASSPHRASE))
    assert document["opslimit"] == argon2id.OPSLIMIT_INTERACTIVE
    assert document["memlimit"] == argon2id.MEMLIMIT_INTERACTIVE


def test_root_key_uses_the_same_format(tmp_path: Path) -> None:
    root = generate("root")
    path = tmp_path / "root.key"
    write_key_file(path, root, PASSPHRASE, **FAST)
    assert load_key_file(path, PASSPHRASE).key_id == root.key_id


def test_key_file_is_0600_from_creation_even_with_a_permissive_umask(
    tmp_path: Path, keys: PartnerKeys
) -> None:
    previous = os.umask(0)
    try:
        path = tmp_path / "k.key"
        write_key_file(path, keys, PASSPHRASE, **FAST)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["k.key"]  # no temporary file left
    assert load_key_file(path, PASSPHRASE).key_id == keys.key_id


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o606, 0o620, 0o602, 0o610])
def test_group_or_world_access_refused(key_file: Path, mode: int) -> None:
    key_file.chmod(mode)
    with pytest.raises(KeyFileError) as excinfo:
        load_key_file(key_file, PASSPHRASE)
    assert reason_of(excinfo) is Reason.KEYFILE_PERMISSIONS
    assert PASSPHRASE.decode() not in str(excinfo.value)


def test_owner_only_modes_accepted(key_file: Path) -> None:
    key_file.chmod(0o400)
    assert load_key_file(key_file, PASSPHRASE).partner_id == "crip-93"


def test_wrong_passphrase(key_file: Path) -> None:
    with pytest.raises(KeyFileError) as excinfo:
        load_key_file(key_file, b"not the passphrase")
    assert reason_of(excinfo) is Reason.KEYFILE_BAD_PASSPHRASE


def _tamper(path: Path, **changes: object) -> None:
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


def _flip(b64: str, index: int = 0) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("member", ["ciphertext", "nonce", "salt"])
def test_tampered_secret_part_refused(key_file: Path, member: str) -> None:
    document = json.loads(key_file.read_text())
    _tamper(key_file, **{member: _flip(document[member], 5)})
    with pytest.raises(KeyFileError) as excinfo:
        load_key_file(key_file, PASSPHRASE)
    assert reason_of(excinfo) is Reason.KEYFILE_BAD_PASSPHRASE


def test_public_members_must_match_the_secrets(key_file: Path) -> None:
    other = generate("crip-93")
    _tamper(
        key_file,
        sign_pk=base64.b64encode(other.sign_pk).decode(),
        box_pk=base64.b64encode(other.box_pk).decode(),
        key_id=other.key_id,
    )
    with pytest.raises(KeyFileError) as excinfo:
        load_key_file(key_file, PASSPHRASE)
    assert reason_of(excinfo) is Reason.KEYFILE_MALFORMED


def test_key_id_must_match(key_file: Path) -> None:
    _tamper(key_file, key_id="0123456789abcdef")
    with pytest.raises(KeyFileError) as excinfo:
        load_key_file(key_file, PASSPHRASE)
    assert reason_of(excinfo) is Reason.KEYFILE_MALFORMED


@pytest.mark.parametrize(
    "changes",
    [
        {"opslimit": argon2id.OPSLIMIT_MIN - 1},
        {"memlimit": argon2id.MEMLIMIT_MIN - 1},
        {"memlimit": 1024},
        {"opslimit": 1000},  # above the cap: a hostile file must not stall the loader
        {"memlimit": argon2id.MEMLIMIT_SENSITIVE * 2},
        {"opslimit": True},
        {"opslimit": "2"},
    ],
)
def test_kdf_limits_out_of_range_refused(key_file: Path, changes: dict[str, object]) -> None:
    _tamper(key_file, **changes)
    with pytest.raises(KeyFileError) as excinfo:
        load_key_file(key_file, PASSPHRASE)
    assert reason_of(excinfo) is Reason.KEYFILE_MALFORMED


def test_writing_with_limits_below_min_refused(keys: PartnerKeys) -> None:
    with pytest.raises(ConfigError):
        encrypt_key_file(keys, PASSPHRASE, opslimit=0, memlimit=argon2id.MEMLIMIT_MIN)
    with pytest.raises(ConfigError):
        encrypt_key_file(keys, PASSPHRASE, opslimit=1, memlimit=argon2id.MEMLIMIT_MIN - 1)
    with pytest.raises(ConfigError):
        encrypt_key_file(keys, b"", **FAST)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        "{}",
        json.dumps({**GOLDEN_FILE, "extra": 1}),
        json.dumps({k: v for k, v in GOLDEN_FILE.items() if k != "salt"}),
        json.dumps({**GOLDEN_FILE, "format": "relais-key/2"}),
        json.dumps({**GOLDEN_FILE, "kdf": "scrypt"}),
        json.dumps({**GOLDEN_FILE, "salt": "***"}),
        json.dumps({**GOLDEN_FILE, "nonce": base64.b64encode(bytes(12)).decode()}),
        json.dumps({**GOLDEN_FILE, "partner_id": "Not An Id"}),
        "x" * 20_000,
    ],
)
def test_malformed_key_files_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as excinfo:
        load_key_file(path, GOLDEN_PASSPHRASE)
    assert reason_of(excinfo) is Reason.KEYFILE_MALFORMED


def test_missing_file_and_directory_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError):
        load_key_file(tmp_path / "absent.key", PASSPHRASE)
    directory = tmp_path / "d"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyFileError):
        load_key_file(directory, PASSPHRASE)


def test_never_overwrites(key_file: Path, keys: PartnerKeys) -> None:
    before = key_file.read_bytes()
    with pytest.raises(ConfigError):
        write_key_file(key_file, generate("crip-93"), PASSPHRASE, **FAST)
    assert key_file.read_bytes() == before
    assert sorted(p.name for p in key_file.parent.iterdir()) == [key_file.name]


# -- public export -------------------------------------------------------------------------------


def test_public_export_round_trip(tmp_path: Path, keys: PartnerKeys, key_file: Path) -> None:
    export = public_export(keys)
    assert set(export) == {"format", "partner_id", "key_id", "sign_pk", "box_pk"}
    assert PublicKey.from_json(export) == keys.public()
    path = tmp_path / "crip-93.pub.json"
    write_public_key(path, keys)
    assert read_public_key(path) == keys.public()
    assert read_public_key(key_file) == keys.public()  # public half of a key file
    text = path.read_text()
    for secret in (keys.sign_sk[:32], keys.box_sk):
        assert base64.b64encode(secret).decode() not in text


def test_public_export_checks_key_id_and_small_order(keys: PartnerKeys) -> None:
    export = public_export(keys)
    with pytest.raises(KeyFileError) as excinfo:
        PublicKey.from_json({**export, "key_id": "0" * 16})
    assert reason_of(excinfo) is Reason.KEYFILE_MALFORMED
    small = bytes(32)
    forged = {
        **export,
        "box_pk": base64.b64encode(small).decode(),
        "key_id": key_id_for(keys.sign_pk, small),
    }
    with pytest.raises(KeyFileError) as excinfo:
        PublicKey.from_json(forged)
    assert reason_of(excinfo) is Reason.SMALL_ORDER_KEY


# -- relais keys new -----------------------------------------------------------------------------


@pytest.fixture
def passphrase_file(tmp_path: Path) -> Path:
    path = tmp_path / "passphrase"
    path.write_bytes(PASSPHRASE + b"\n")
    path.chmod(0o600)
    return path


def test_cli_keys_new(tmp_path: Path, passphrase_file: Path) -> None:
    out = tmp_path / "gend.key"
    result = CliRunner().invoke(
        keys_cmd.app,
        ["new", "gend-bobigny", "--out", str(out), "--passphrase-file", str(passphrase_file)],
    )
    assert result.exit_code == 0, result.output
    keys = load_key_file(out, PASSPHRASE)  # trailing newline of the file is not part of it
    assert f"key id: {keys.key_id}" in result.stdout
    assert f"{out}.pub.json" in result.stdout
    assert read_public_key(Path(f"{out}.pub.json")) == keys.public()
    assert out.stat().st_mode & 0o777 == 0o600
    for secret in (keys.sign_sk[:32], keys.box_sk, keys.sign_sk):
        assert base64.b64encode(secret).decode() not in result.output
        assert secret.hex() not in result.output


def test_cli_keys_new_prompts_with_confirmation(tmp_path: Path) -> None:
    out = tmp_path / "k.key"
    runner = CliRunner()
    mismatch = runner.invoke(
        keys_cmd.app, ["new", "ase-93", "--out", str(out)], input="first passphrase\nsecond one\n"
    )
    assert mismatch.exit_code != 0
    assert not out.exists()
    ok = runner.invoke(
        keys_cmd.app,
        ["new", "ase-93", "--out", str(out)],
        input="a long passphrase\na long passphrase\n",
    )
    assert ok.exit_code == 0, ok.output
    assert load_key_file(out, b"a long passphrase").partner_id == "ase-93"


def test_cli_keys_new_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAIS_TEST_PASSPHRASE", "from the environment")
    out = tmp_path / "k.key"
    result = CliRunner().invoke(
        keys_cmd.app,
        ["new", "ase-93", "--out", str(out), "--passphrase-env", "RELAIS_TEST_PASSPHRASE"],
    )
    assert result.exit_code == 0, result.output
    assert load_key_file(out, b"from the environment").partner_id == "ase-93"


def test_cli_keys_new_refuses_overwrite(key_file: Path, passphrase_file: Path) -> None:
    before = key_file.read_bytes()
    result = CliRunner().invoke(
        keys_cmd.app,
        ["new", "crip-93", "--out", str(key_file), "--passphrase-file", str(passphrase_file)],
    )
    assert result.exit_code == 2
    assert "refusing to overwrite" in result.stderr
    assert key_file.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "mode", "content"),
    [
        (["Bad Id"], 0o600, PASSPHRASE),
        (["crip-93"], 0o644, PASSPHRASE),  # passphrase file readable by others
        (["crip-93"], 0o600, b"short"),
        (["crip-93"], 0o600, b""),
    ],
)
def test_cli_keys_new_usage_errors(
    tmp_path: Path, args: list[str], mode: int, content: bytes
) -> None:
    secret = tmp_path / "pw"
    secret.write_bytes(content)
    secret.chmod(mode)
    out = tmp_path / "k.key"
    result = CliRunner().invoke(
        keys_cmd.app, ["new", *args, "--out", str(out), "--passphrase-file", str(secret)]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error [CONFIG_INVALID]")
    assert not out.exists()


# -- relais keys nats-user -----------------------------------------------------------------------


def test_cli_keys_nats_user(tmp_path: Path) -> None:
    out = tmp_path / "creds" / "crip-93.nk"
    out.parent.mkdir()
    result = CliRunner().invoke(keys_cmd.app, ["nats-user", "crip-93", "--out", str(out)])
    assert result.exit_code == 0, result.output
    seed = out.read_bytes().strip()
    assert seed.startswith(b"SU")
    assert out.stat().st_mode & 0o777 == 0o600
    public = nats_user_public(seed)
    assert f"public nkey: {public}" in result.stdout
    assert seed.decode() not in result.output  # the seed is never printed
    assert public == nkeys.from_seed(bytearray(seed)).public_key.decode()
    assert public.startswith("U")
    again = CliRunner().invoke(keys_cmd.app, ["nats-user", "crip-93", "--out", str(out)])
    assert again.exit_code == 2
    assert out.read_bytes().strip() == seed  # never overwritten
    bad = CliRunner().invoke(keys_cmd.app, ["nats-user", "Pas Un Id", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("seed", [b"", b"SUNOTASEED", b"SA" + b"A" * 56])
def test_nats_user_public_refuses_what_is_not_a_user_seed(seed: bytes) -> None:
    with pytest.raises(ConfigError):
        nats_user_public(seed)


def test_nats_user_public_refuses_an_account_seed() -> None:
    account_seed = bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT))
    with pytest.raises(ConfigError):
        nats_user_public(account_seed)
