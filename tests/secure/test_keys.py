"""Key files: generation, age-keygen interoperability, permission and format checks."""

import base64
import os
import stat
import subprocess
from pathlib import Path

import pytest

from fs_consent.secure import files, keys
from fs_consent.secure.keys import KeyFileError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def age_keygen(path: Path) -> str:
    """Run the real age-keygen; return the public key of the identity it wrote."""
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_ensure_keys_creates_private_files_and_announces_once(tmp_path):
    keys_dir = tmp_path / "data" / "keys"
    messages = keys.ensure_keys(keys_dir)
    assert mode(keys_dir) == 0o700
    assert mode(keys_dir.parent) == 0o700  # the data dir it made holds the database too
    assert mode(keys_dir / keys.IDENTITY_FILE) == 0o600
    assert mode(keys_dir / keys.FIELD_KEY_FILE) == 0o600
    assert mode(keys_dir / keys.RECIPIENTS_FILE) == 0o644
    assert mode(keys_dir / keys.SIGNING_KEY_FILE) == 0o600
    assert len(messages) == 4
    public = keys.signing_public_key(keys.load_signing_key(keys_dir))
    assert any(public in m for m in messages)  # announced once, for the police to pin
    assert any("generated a new age identity at" in m and "back it up or move it offline" in m
               for m in messages)
    before = {p.name: p.read_bytes() for p in keys_dir.iterdir()}
    assert keys.ensure_keys(keys_dir) == []
    assert {p.name: p.read_bytes() for p in keys_dir.iterdir()} == before


def test_generated_identity_is_age_keygen_format(tmp_path):
    keys_dir = tmp_path / "keys"
    created = keys.init_keys(keys_dir)
    lines = (keys_dir / keys.IDENTITY_FILE).read_text().splitlines()
    assert lines[0].startswith("# created: ")
    assert lines[1] == f"# public key: {created.public_key}"
    assert lines[2].startswith("AGE-SECRET-KEY-1")
    # the real tool derives the same public key from our file
    assert subprocess.run(["age-keygen", "-y", str(keys_dir / keys.IDENTITY_FILE)], check=True,
                          capture_output=True, text=True).stdout.strip() == created.public_key
    assert keys.load_recipients(keys_dir) == [created.public_key]
    assert str(keys.load_identity(keys_dir).to_public()) == created.public_key
    assert len(keys.load_field_key(keys_dir)) == 64


def test_identity_from_age_keygen_loads(tmp_path):
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o700)
    public = age_keygen(keys_dir / keys.IDENTITY_FILE)
    assert str(keys.load_identity(keys_dir).to_public()) == public
    elsewhere = tmp_path / "offline.txt"
    other_public = age_keygen(elsewhere)
    assert str(keys.load_identity(keys_dir, elsewhere).to_public()) == other_public


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_loose_identity_refused_naming_the_file(tmp_path, bad_mode):
    keys_dir = tmp_path / "keys"
    keys.init_keys(keys_dir)
    identity = keys_dir / keys.IDENTITY_FILE
    os.chmod(identity, bad_mode)
    with pytest.raises(KeyFileError) as err:
        keys.load_identity(keys_dir)
    assert str(identity) in str(err.value)
    assert f"mode {bad_mode:04o}" in str(err.value)
    assert f"chmod 600 {identity}" in str(err.value)


def test_read_only_identity_accepted(tmp_path):
    keys_dir = tmp_path / "keys"
    keys.init_keys(keys_dir)
    os.chmod(keys_dir / keys.IDENTITY_FILE, 0o400)
    keys.load_identity(keys_dir)


def test_loose_field_key_refused(tmp_path):
    keys_dir = tmp_path / "keys"
    keys.init_keys(keys_dir)
    os.chmod(keys_dir / keys.FIELD_KEY_FILE, 0o644)
    with pytest.raises(KeyFileError, match="field.key is accessible by group/others"):
        keys.load_field_key(keys_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_private_file_of_another_user_refused(tmp_path):
    path = tmp_path / "identity.txt"
    path.write_text("x")
    os.chmod(path, 0o600)
    os.chown(path, 12345, -1)
    with pytest.raises(KeyFileError, match="owned by uid 12345"):
        files.check_private(path, error=KeyFileError)


@pytest.mark.parametrize("content, problem", [
    ("bm90IGVub3VnaA==\n", "holds 10 bytes; expected 64"),
    ("not base64 at all!\n", "is not valid base64"),
])
def test_malformed_field_key_refused(tmp_path, content, problem):
    keys_dir = tmp_path / "keys"
    keys.init_keys(keys_dir)
    (keys_dir / keys.FIELD_KEY_FILE).write_text(content)
    with pytest.raises(KeyFileError, match=problem):
        keys.load_field_key(keys_dir)


def test_missing_key_files(tmp_path):
    with pytest.raises(KeyFileError, match="no age identity at"):
        keys.load_identity(tmp_path)
    with pytest.raises(KeyFileError, match="field.key does not exist"):
        keys.load_field_key(tmp_path)
    assert keys.load_recipients(tmp_path) == []


def test_recipients_bad_line_named_by_number_not_content(tmp_path):
    one, two = age_keygen(tmp_path / "a.txt"), age_keygen(tmp_path / "b.txt")
    secret = (tmp_path / "a.txt").read_text().splitlines()[-1]
    (tmp_path / keys.RECIPIENTS_FILE).write_text(f"# auditors\n{one}\n\n  {two}  \n{secret}\n")
    with pytest.raises(KeyFileError) as err:
        keys.load_recipients(tmp_path)
    assert "recipients.txt: line 5 is not an age X25519 recipient" in str(err.value)
    assert secret not in str(err.value)
    (tmp_path / keys.RECIPIENTS_FILE).write_text(f"# auditors\n{one}\n\n  {two}  \n{one}\n")
    assert keys.load_recipients(tmp_path) == [one, two]


def test_recipients_writable_by_others_refused(tmp_path):
    keys.init_keys(tmp_path / "keys")
    os.chmod(tmp_path / "keys" / keys.RECIPIENTS_FILE, 0o664)
    with pytest.raises(KeyFileError, match="writable by group/others"):
        keys.load_recipients(tmp_path / "keys")


def test_two_identities_in_one_file_refused(tmp_path):
    age_keygen(tmp_path / "a.txt")
    age_keygen(tmp_path / "b.txt")
    identity = tmp_path / keys.IDENTITY_FILE
    identity.write_text((tmp_path / "a.txt").read_text() + (tmp_path / "b.txt").read_text())
    os.chmod(identity, 0o600)
    with pytest.raises(KeyFileError, match="exactly one age identity, found 2"):
        keys.load_identity(tmp_path)


def test_write_only_server_gets_no_local_identity(tmp_path):
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o700)
    offline = age_keygen(tmp_path / "offline-identity.txt")
    (keys_dir / keys.RECIPIENTS_FILE).write_text(f"{offline}\n")
    messages = keys.ensure_keys(keys_dir)
    assert not (keys_dir / keys.IDENTITY_FILE).exists()
    assert sorted(p.name for p in keys_dir.iterdir()) == [keys.FIELD_KEY_FILE, keys.RECIPIENTS_FILE,
                                                          keys.SIGNING_KEY_FILE]
    assert len(messages) == 2 and "personal-field key" in messages[0]
    assert keys.load_recipients(keys_dir) == [offline]


def test_recipients_written_for_existing_identity(tmp_path):
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o700)
    public = age_keygen(keys_dir / keys.IDENTITY_FILE)
    identity_text = (keys_dir / keys.IDENTITY_FILE).read_text()
    created = keys.init_keys(keys_dir)
    assert [p.name for p in created.created] == [keys.RECIPIENTS_FILE, keys.FIELD_KEY_FILE, keys.SIGNING_KEY_FILE]
    assert keys.load_recipients(keys_dir) == [public]
    assert (keys_dir / keys.IDENTITY_FILE).read_text() == identity_text


def test_empty_recipients_without_identity_is_an_error_for_init_not_for_the_server(tmp_path):
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o700)
    (keys_dir / keys.RECIPIENTS_FILE).write_text("# nobody yet\n")
    with pytest.raises(KeyFileError, match="lists no recipient and there is no identity"):
        keys.init_keys(keys_dir)
    # the server still starts (and records nothing): only the field key is made, no identity
    field_message, _signing_message = keys.ensure_keys(keys_dir)
    assert "field" in field_message
    assert sorted(p.name for p in keys_dir.iterdir()) == [keys.FIELD_KEY_FILE, keys.RECIPIENTS_FILE,
                                                          keys.SIGNING_KEY_FILE]
    assert keys.ensure_keys(keys_dir) == []


def test_force_rotates_identity_keeping_the_old_one_and_the_field_key(tmp_path):
    keys_dir = tmp_path / "keys"
    first = keys.init_keys(keys_dir)
    old_identity = (keys_dir / keys.IDENTITY_FILE).read_text()
    field_key = (keys_dir / keys.FIELD_KEY_FILE).read_bytes()
    auditor = age_keygen(tmp_path / "auditor.txt")
    with open(keys_dir / keys.RECIPIENTS_FILE, "a") as f:
        f.write(f"# auditor\n{auditor}\n")

    second = keys.init_keys(keys_dir, force=True)
    assert second.public_key != first.public_key
    assert second.replaced_identity.read_text() == old_identity
    assert mode(second.replaced_identity) == 0o600
    assert keys.load_recipients(keys_dir) == [second.public_key, auditor]
    assert (keys_dir / keys.FIELD_KEY_FILE).read_bytes() == field_key
    assert mode(keys_dir / keys.IDENTITY_FILE) == 0o600
    assert mode(keys_dir / keys.RECIPIENTS_FILE) == 0o644
    assert any("kept the previous identity" in line for line in second.describe())


def test_field_key_is_64_random_bytes_base64(tmp_path):
    keys.init_keys(tmp_path / "a")
    keys.init_keys(tmp_path / "b")
    a = base64.b64decode((tmp_path / "a" / keys.FIELD_KEY_FILE).read_text())
    b = keys.load_field_key(tmp_path / "b")
    assert len(a) == len(b) == 64 and a != b


def test_signing_key_is_private_and_refused_when_loose(tmp_path):
    keys_dir = tmp_path / "keys"
    keys.init_keys(keys_dir)
    key = keys.load_signing_key(keys_dir)
    signature = key.sign(b"manifest")
    key.public_key().verify(signature, b"manifest")  # raises if wrong
    assert keys.signing_public_key(key).startswith("ed25519:")
    (keys_dir / keys.SIGNING_KEY_FILE).chmod(0o640)
    with pytest.raises(KeyFileError, match="signing.key"):
        keys.load_signing_key(keys_dir)
