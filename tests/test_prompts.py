"""scripts/make-prompts: every prompt text becomes an 8 kHz mono 16-bit WAV of plausible length."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "make-prompts"
PROMPTS = REPO / "freeswitch" / "prompts"
LANGUAGES = ("nl", "en")

needs_tools = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox are not installed (Debian: apt-get install espeak-ng sox)",
)


def section_names(path: Path) -> list[str]:
    return re.findall(r"^\[([a-z0-9-]+)\]\s*$", path.read_text(encoding="utf-8"), flags=re.M)


def make_prompts(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300, env=env)


def soxi(path: Path, flag: str) -> str:
    return subprocess.run(["sox", "--i", flag, str(path)], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prompts")
    result = make_prompts("--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


@needs_tools
@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_prompt_is_an_8khz_mono_16bit_wav(rendered, lang):
    names = section_names(PROMPTS / f"{lang}.txt")
    assert {f"consent-{lang}", f"consent-optin-{lang}", f"withdrawn-{lang}"} <= set(names)
    for name in names:
        wav = rendered / f"{name}.wav"
        assert wav.is_file(), f"{name}.wav was not rendered"
        assert soxi(wav, "-t") == "wav"
        assert soxi(wav, "-r") == "8000", name
        assert soxi(wav, "-c") == "1", name
        assert soxi(wav, "-b") == "16", name
        assert soxi(wav, "-e") == "Signed Integer PCM", name
        duration = float(soxi(wav, "-D"))
        minimum = 2.0 if name.startswith("consent") else 0.5
        assert minimum < duration < 120, f"{name}.wav lasts {duration} s"
        assert wav.stat().st_mode & 0o777 == 0o644


@needs_tools
def test_the_consent_question_is_longer_than_the_confirmation(rendered):
    for lang in LANGUAGES:
        consent = float(soxi(rendered / f"consent-{lang}.wav", "-D"))
        withdrawn = float(soxi(rendered / f"withdrawn-{lang}.wav", "-D"))
        assert consent > 2 * withdrawn


@needs_tools
def test_only_the_asked_language_is_rendered_and_no_temp_files_remain(tmp_path):
    result = make_prompts("--lang", "en", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(f"{n}.wav" for n in section_names(PROMPTS / "en.txt"))
    assert "consent-en.wav" in result.stdout


@needs_tools
def test_a_malformed_prompt_file_is_named_with_its_line(tmp_path):
    (tmp_path / "nl.txt").write_text("# comment\nstray text\n[consent-nl]\nHallo.\n", encoding="utf-8")
    result = make_prompts("--lang", "nl", "--prompts", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "nl.txt:2: text before the first [name]" in result.stderr
    (tmp_path / "nl.txt").write_text("[consent-nl]\n# nothing\n", encoding="utf-8")
    result = make_prompts("--lang", "nl", "--prompts", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "prompt [consent-nl] has no text" in result.stderr


def test_missing_tools_give_a_clear_error(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = make_prompts("--out", str(tmp_path / "out"), env={"PATH": str(empty)})
    assert result.returncode == 2
    assert "espeak-ng and sox not found on PATH" in result.stderr
    assert "apt-get install espeak-ng sox" in result.stderr
    assert not (tmp_path / "out").exists()
