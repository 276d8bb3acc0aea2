"""Shared fixtures: where the FreeSWITCH wire captures live; one emulator seed per run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fs_consent.emulator.chaos import ENV_CHAOS, ENV_SEED, WireChaos, random_seed

_REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/e2e/ (real processes, sockets and many calls) is ``slow``:
    ``pytest -m "not slow"`` (``tox -e quick``) is the fast local loop."""
    e2e = _REPO / "tests" / "e2e"
    for item in items:
        if e2e in item.path.parents:
            item.add_marker(pytest.mark.slow)


def pytest_configure(config: pytest.Config) -> None:
    """Every emulator in this run draws its wire disorder from one seed, shown in the header."""
    os.environ.setdefault(ENV_SEED, str(random_seed()))


def pytest_report_header(config: pytest.Config) -> str:
    chaos = WireChaos.from_env()
    if not chaos.enabled:
        return f"emulator: wire chaos off ({ENV_CHAOS}=0)"
    return (f"emulator: {chaos.describe()} (replay with {ENV_SEED}={chaos.seed}; "
            f"{ENV_CHAOS}=0 for the polite emulator)")


def find_captures_dir() -> Path | None:
    """``$FS_CONSENT_CAPTURES``, the repo's ``freeswitch/captures`` or the shared workplace copy."""
    candidates = [
        os.environ.get("FS_CONSENT_CAPTURES"),
        _REPO / "freeswitch" / "captures",
        _REPO.parent / "shared" / "freeswitch" / "captures",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "INDEX.md").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def captures_dir() -> Path:
    found = find_captures_dir()
    if found is None:
        pytest.fail("FreeSWITCH captures not found; set FS_CONSENT_CAPTURES")
    return found


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``rx_capture`` / ``tx_capture``: one test per capture file (path without suffix)."""
    root = find_captures_dir()
    for fixture, suffix in (("rx_capture", ".rx.bin"), ("tx_capture", ".tx.bin")):
        if fixture in metafunc.fixturenames:
            names = sorted(
                p.relative_to(root).as_posix()[: -len(suffix)] for p in root.rglob(f"*{suffix}")
            ) if root else ["captures-missing"]
            metafunc.parametrize(fixture, names)
