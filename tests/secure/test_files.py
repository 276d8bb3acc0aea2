"""The shared file helpers: private-file checks, O_EXCL 0600 creation, and who uses them."""

from __future__ import annotations

import os
import stat

import pytest

from fs_consent.secure import files
from fs_consent.secure.keys import KeyFileError
from fs_consent.store.writer import Journal


def test_check_private_accepts_0600_and_tighter(tmp_path):
    for mode in (0o600, 0o400):
        path = tmp_path / f"secret-{mode:o}"
        path.write_text("x")
        os.chmod(path, mode)
        files.check_private(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_check_private_refuses_looser_naming_the_file_and_the_fix(tmp_path, mode):
    path = tmp_path / "secret"
    path.write_text("x")
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match=rf"{path} is accessible by group/others \(mode {mode:04o}\); "
                                           rf"run: chmod 600 {path}"):
        files.check_private(path, error=KeyFileError)


def test_check_private_refuses_missing_and_not_regular(tmp_path):
    with pytest.raises(PermissionError, match="does not exist"):
        files.check_private(tmp_path / "absent")
    with pytest.raises(PermissionError, match="is not a regular file"):
        files.check_private(tmp_path)


def test_check_private_of_an_open_file_checks_the_file_not_the_name(tmp_path):
    path = tmp_path / "journal"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.chmod(path, 0o644)
        os.rename(path, tmp_path / "elsewhere")
        path.write_text("a private file now under the name")
        os.chmod(path, 0o600)
        with pytest.raises(PermissionError, match="mode 0644"):
            files.check_private(path, fd=fd)
    finally:
        os.close(fd)


def test_create_private_is_0600_whatever_the_umask_and_never_overwrites(tmp_path):
    path = tmp_path / "out"
    old = os.umask(0)
    try:
        os.close(files.create_private(path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        files.create_private(path)


def test_the_journal_refuses_a_file_others_can_read(tmp_path):
    path = tmp_path / "ledger.journal"
    path.write_text("")
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="accessible by group/others"):
        Journal(path)


def test_check_private_dir_wants_a_directory_only_we_can_reach(tmp_path):
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    os.chmod(keys_dir, 0o700)
    files.check_private_dir(keys_dir)
    os.chmod(keys_dir, 0o750)
    with pytest.raises(files.NotPrivate, match=rf"mode 0750\); run: chmod 700 {keys_dir}"):
        files.check_private_dir(keys_dir)
    (tmp_path / "file").write_text("")
    with pytest.raises(files.NotPrivate, match="is not a directory"):
        files.check_private_dir(tmp_path / "file")
