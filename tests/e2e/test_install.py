"""scripts/install and scripts/uninstall, run into a throwaway root (--root): files, modes,
units, idempotence, keys, and the units' validity (systemd-analyze verify)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fs_consent.core.config import load_config
from fs_consent.secure import spool

from ..freeswitch.test_freeswitch_kit import unit_settings  # one parser for every unit file

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "scripts" / "install"
UNINSTALL = REPO / "scripts" / "uninstall"
MOUNT_UNIT = "run-fs\\x2dconsent-spool.mount"
UNIT_DIR = "etc/systemd/system"


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FS_CONSENT_")}


def run(script: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                            timeout=300, env=clean_env())
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def install(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(INSTALL, "--root", str(root), "--no-venv", *args, check=check)


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under root: type, mode, and content hash + mtime (files) or target (links)."""
    listing = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = path.relative_to(root).as_posix()
        if stat.S_ISLNK(st.st_mode):
            listing[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            listing[rel] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            listing[rel] = ("file", stat.S_IMODE(st.st_mode), digest, st.st_mtime_ns)
    return listing


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def installed(root) -> tuple[Path, str]:
    return root, install(root).stdout


def stub_fs_consent(root: Path) -> None:
    """Stand in for the virtualenv: /opt/fs-consent/bin/fs-consent runs this checkout's CLI."""
    stub = root / "opt/fs-consent/bin/fs-consent"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; from fs_consent.cli import main; "
                    f"sys.argv[0] = \"fs-consent\"; sys.exit(main())' \"$@\"\n", encoding="utf-8")
    stub.chmod(0o755)


# --- what it installs ------------------------------------------------------------------


def test_install_creates_the_layout_with_its_modes(installed):
    root, out = installed
    expected = {
        "etc/fs-consent": 0o750,
        "etc/fs-consent/config.toml": 0o640,
        "etc/fs-consent/config.example.toml": 0o644,
        "var/lib/fs-consent": 0o700,
        "usr/local/sbin/fs-consent": 0o755,
        f"{UNIT_DIR}/fs-consent.service": 0o644,
        f"{UNIT_DIR}/fs-consent-purge.service": 0o644,
        f"{UNIT_DIR}/fs-consent-purge.timer": 0o644,
        f"{UNIT_DIR}/fs-consent-listen.service": 0o644,
        f"{UNIT_DIR}/{MOUNT_UNIT}": 0o644,
    }
    for rel, want in expected.items():
        assert (root / rel).exists(), rel
        assert mode(root / rel) == want, f"{rel}: {mode(root / rel):o}"
    assert not (root / "opt/fs-consent").exists()  # --no-venv
    assert "Keys: not created" in out and "fs-consent keys init" in out


def test_units_are_the_repository_units_and_enabled(installed):
    root, _ = installed
    for name in ("fs-consent.service", "fs-consent-purge.service", "fs-consent-purge.timer",
                 "fs-consent-listen.service"):
        assert (root / UNIT_DIR / name).read_bytes() == (REPO / "scripts" / name).read_bytes()
    wants = {
        "multi-user.target.wants/fs-consent.service": "/etc/systemd/system/fs-consent.service",
        "timers.target.wants/fs-consent-purge.timer": "/etc/systemd/system/fs-consent-purge.timer",
    }
    for link, target in wants.items():
        assert os.readlink(root / UNIT_DIR / link) == target
    # the mount is pulled in by the service, not enabled on its own
    assert not list((root / UNIT_DIR).glob("*.wants/*.mount"))
    # the listening room runs only where the identity is: installed, not enabled
    assert not list((root / UNIT_DIR).glob("*.wants/fs-consent-listen.service"))


def test_accounts_are_listed_not_created_under_a_root(installed):
    root, out = installed
    lines = [ln for ln in (root / "fs-consent-accounts.txt").read_text().splitlines() if not ln.startswith("#")]
    assert lines == [
        "group fs-consent system",
        "user fs-consent system group=fs-consent home=/var/lib/fs-consent shell=/usr/sbin/nologin",
        "member fs-consent freeswitch",
    ]
    assert "accounts not created" in out


def test_default_config_loads_and_points_at_the_data_dir_and_the_spool(installed):
    root, _ = installed
    config = load_config(root / "etc/fs-consent/config.toml", env={})
    assert config.storage.data_dir == Path("/var/lib/fs-consent")
    assert config.storage.spool_dir == Path("/run/fs-consent/spool")
    assert config.storage.keys_dir == Path("/var/lib/fs-consent/keys")
    assert str(config.server.listen) == "127.0.0.1:8040"
    example = root / "etc/fs-consent/config.example.toml"
    assert example.read_bytes() == (REPO / "freeswitch/fs-consent.example.toml").read_bytes()


def test_wrapper_runs_the_cli_as_the_service_user_with_the_service_config(installed):
    root, _ = installed
    text = (root / "usr/local/sbin/fs-consent").read_text()
    assert "runuser -u fs-consent --" in text
    assert "FS_CONSENT_DATA_DIR=/var/lib/fs-consent" in text
    assert "FS_CONSENT_CONFIG=/etc/fs-consent/config.toml" in text
    assert "/opt/fs-consent/bin/fs-consent" in text


def test_spool_mount_is_a_private_tmpfs_shared_with_freeswitch(installed):
    root, _ = installed
    unit = unit_settings(root / UNIT_DIR / MOUNT_UNIT)
    mount = unit["Mount"]
    assert mount["Where"] == ["/run/fs-consent/spool"]
    assert mount["Type"] == ["tmpfs"] and mount["What"] == ["tmpfs"]
    options = mount["Options"][0].split(",")
    for option in ("mode=2770", "uid=fs-consent", "gid=freeswitch", "size=25%", "nosuid", "nodev", "noexec"):
        assert option in options
    assert not re.search(r"@[A-Z_]+@", (root / UNIT_DIR / MOUNT_UNIT).read_text())  # all filled in
    escape = shutil.which("systemd-escape")
    if escape:
        name = subprocess.run([escape, "-p", "--suffix=mount", "/run/fs-consent/spool"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert name == MOUNT_UNIT


def test_spool_options_follow_the_command_line(root):
    install(root, "--freeswitch-group", "voip", "--spool-size", "2G", "--spool-noswap")
    options = unit_settings(root / UNIT_DIR / MOUNT_UNIT)["Mount"]["Options"][0].split(",")
    assert "gid=voip" in options and "size=2G" in options and "noswap" in options
    assert "member fs-consent voip" in (root / "fs-consent-accounts.txt").read_text()


def test_the_service_requires_the_spool_mount_and_may_write_there():
    service = unit_settings(REPO / "scripts/fs-consent.service")
    assert service["Unit"]["RequiresMountsFor"] == ["/run/fs-consent/spool"]
    assert "-/run/fs-consent/spool" in service["Service"]["ReadWritePaths"][-1].split()
    assert service["Service"]["Type"] == ["notify"]
    assert service["Service"]["NotifyAccess"] == ["main"]
    assert service["Service"]["WatchdogSec"] == ["30s"]


def test_the_spool_as_mounted_is_accepted_by_the_server(tmp_path):
    # the tmpfs root: owner fs-consent, group FreeSWITCH's, mode 2770
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    spool_dir.chmod(0o2770)
    assert mode(spool_dir) == 0o2770
    spool.prepare_spool(spool_dir)  # no SpoolError
    assert mode(spool_dir) == 0o2770  # and left as it is


# --- idempotence -----------------------------------------------------------------------


def test_a_second_run_changes_nothing(installed):
    root, _ = installed
    before = tree(root)
    out = install(root).stdout
    assert tree(root) == before
    assert "Nothing changed" in out


def test_the_config_is_never_overwritten(installed):
    root, _ = installed
    config = root / "etc/fs-consent/config.toml"
    config.write_text('[server]\nlisten = "127.0.0.1:9000"\n', encoding="utf-8")
    install(root)
    assert config.read_text(encoding="utf-8") == '[server]\nlisten = "127.0.0.1:9000"\n'


def test_a_rerun_repairs_modes_and_updates_changed_units(installed):
    root, _ = installed
    (root / "var/lib/fs-consent").chmod(0o755)
    service = root / UNIT_DIR / "fs-consent.service"
    service.write_text("[Service]\nExecStart=/bin/false\n", encoding="utf-8")
    (root / UNIT_DIR / "multi-user.target.wants/fs-consent.service").unlink()
    out = install(root).stdout
    assert mode(root / "var/lib/fs-consent") == 0o700
    assert service.read_bytes() == (REPO / "scripts/fs-consent.service").read_bytes()
    assert (root / UNIT_DIR / "multi-user.target.wants/fs-consent.service").is_symlink()
    assert "chmod    /var/lib/fs-consent (0700)" in out
    assert "updated  /etc/systemd/system/fs-consent.service" in out
    assert "3 change(s) made" in out


def test_keys_are_created_once_when_fs_consent_is_installed(root):
    stub_fs_consent(root)
    out = install(root).stdout
    keys = root / "var/lib/fs-consent/keys"
    assert mode(keys) == 0o700
    assert mode(keys / "identity.txt") == 0o600
    assert mode(keys / "field.key") == 0o600
    assert mode(keys / "signing.key") == 0o600
    assert (keys / "recipients.txt").read_text().strip().splitlines()[-1].startswith("age1")
    assert "generated a new age identity" in out
    before = tree(root)
    out = install(root).stdout
    assert "keys     all present" in out and "Nothing changed" in out
    assert tree(root) == before


def test_a_write_only_server_does_not_grow_a_new_identity(root):
    stub_fs_consent(root)
    install(root)
    keys = root / "var/lib/fs-consent/keys"
    (keys / "identity.txt").unlink()  # moved offline; recipients.txt stays
    install(root)
    assert not (keys / "identity.txt").exists()


def test_recipients_option_makes_a_write_only_server_from_the_start(root, tmp_path):
    import pyrage

    public = str(pyrage.x25519.Identity.generate().to_public())
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(f"# the offline key\n{public}\n", encoding="utf-8")
    stub_fs_consent(root)
    out = install(root, "--recipients", str(recipients)).stdout
    keys = root / "var/lib/fs-consent/keys"
    assert not (keys / "identity.txt").exists()
    assert (keys / "recipients.txt").read_bytes() == recipients.read_bytes()
    assert mode(keys / "recipients.txt") == 0o644
    assert (keys / "field.key").exists() and (keys / "signing.key").exists()
    assert "generated a new age identity" not in out
    before = tree(root)
    assert "Nothing changed" in install(root, "--recipients", str(recipients)).stdout
    assert tree(root) == before


def test_recipients_option_refuses_a_secret_key(root, tmp_path):
    import pyrage

    secret = tmp_path / "identity.txt"
    secret.write_text(f"{pyrage.x25519.Identity.generate()}\n", encoding="utf-8")
    result = install(root, "--recipients", str(secret), check=False)
    assert result.returncode == 2
    assert "holds a secret key" in result.stderr
    assert not root.exists()


# --- the units are valid ---------------------------------------------------------------


def test_installed_units_pass_systemd_analyze_verify(installed, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    root, _ = installed
    # verify checks that ExecStart exists: point copies at an executable that does
    units = tmp_path / "units"
    units.mkdir()
    for unit in (root / UNIT_DIR).iterdir():
        if unit.is_file():
            text = unit.read_text(encoding="utf-8").replace("/opt/fs-consent/bin/fs-consent", sys.executable)
            (units / unit.name).write_text(text, encoding="utf-8")
    names = sorted(p.name for p in units.iterdir())
    assert names == sorted(["fs-consent.service", "fs-consent-purge.service", "fs-consent-purge.timer",
                            "fs-consent-listen.service", MOUNT_UNIT])
    result = subprocess.run([analyze, "verify", *map(str, sorted(units.iterdir()))],
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    complaints = [line for line in output.splitlines() if any(name in line for name in names)]
    assert result.returncode == 0 and not complaints, output


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--spool-size", "lots"], "--spool-size"),
    (["--freeswitch-group", "Bad Group"], "not a group name"),
    (["--frobnicate"], "unknown option"),
])
def test_bad_options_are_refused(root, args, message):
    result = install(root, *args, check=False)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_source_that_is_no_checkout_is_refused(root, tmp_path):
    result = install(root, "--source", str(tmp_path), check=False)
    assert result.returncode == 2
    assert "is not an fs-consent checkout" in result.stderr
    assert not root.exists() or not any(root.iterdir())


def test_a_real_install_needs_root():
    if os.geteuid() != 0:
        result = run(INSTALL, "--no-venv", check=False)
    elif shutil.which("setpriv"):
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 "bash", str(INSTALL), "--no-venv"],
                                capture_output=True, text=True, timeout=60, env=clean_env())
    else:
        pytest.skip("running as root without setpriv")
    assert result.returncode == 2
    assert "run as root" in result.stderr


# --- uninstall ---------------------------------------------------------------------------


def test_uninstall_keeps_the_data_by_default(root):
    stub_fs_consent(root)
    install(root)
    out = run(UNINSTALL, "--root", str(root)).stdout
    assert not (root / UNIT_DIR / "fs-consent.service").exists()
    assert not (root / UNIT_DIR / MOUNT_UNIT).exists()
    assert not (root / UNIT_DIR / "multi-user.target.wants").exists()
    assert not (root / "opt/fs-consent").exists()
    assert not (root / "usr/local/sbin/fs-consent").exists()
    assert (root / "var/lib/fs-consent/keys/identity.txt").exists()
    assert (root / "etc/fs-consent/config.toml").exists()
    assert "Kept /var/lib/fs-consent /etc/fs-consent" in out


def test_uninstall_purge_data_removes_everything(root):
    install(root)
    run(UNINSTALL, "--root", str(root), "--purge-data")
    left = [p for p in root.rglob("*") if not p.is_dir()]
    assert left == []


def test_install_after_uninstall_brings_back_the_same_installation(installed):
    root, _ = installed
    before = {k: v[:3] for k, v in tree(root).items()}  # without mtimes
    run(UNINSTALL, "--root", str(root))
    install(root)
    assert {k: v[:3] for k, v in tree(root).items()} == before


# --- with the virtualenv (slow, needs the package index) ---------------------------------


@pytest.mark.slow
def test_install_creates_the_virtualenv(root):
    if os.environ.get("FS_CONSENT_TEST_NETWORK") != "1":
        pytest.skip("creates a virtualenv from the package index: set FS_CONSENT_TEST_NETWORK=1")
    result = subprocess.run(["bash", str(INSTALL), "--root", str(root),
                             "--python", getattr(sys, "_base_executable", sys.executable)],
                            capture_output=True, text=True, timeout=900, env=clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert (root / "opt/fs-consent/bin/fs-consent").exists()
    assert (root / "var/lib/fs-consent/keys/recipients.txt").exists()
    assert "generated a new age identity" in result.stdout
