"""scripts/make-prompts and the texts it renders.

Every prompt becomes an 8 kHz mono 16-bit WAV. The consent question is heard before the
menu on every call, so at the script's own, natural rate each one lasts at most
MAX_CONSENT_SECONDS, and each still says the three things the privacy statement
"telefoniecentrale / opname telefoongesprekken" asks of the menu: the call is recorded
to help the caller better, which key to press (1 refuses; opt-in: 2 agrees), and where
to read the privacy statement.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "make-prompts"
PROMPTS = REPO / "freeswitch" / "prompts"
LANGUAGES = ("nl", "en")
CONSENT_PROMPTS = ("consent-nl", "consent-optin-nl", "consent-en", "consent-optin-en")
MAX_CONSENT_SECONDS = 12.0

needs_tools = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox are not installed (Debian: apt-get install espeak-ng sox)",
)


def load_script():
    """scripts/make-prompts as a module (it has no .py suffix): its parser and its settings."""
    loader = importlib.machinery.SourceFileLoader("make_prompts", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


make_prompts_module = load_script()


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
@pytest.mark.parametrize("name", CONSENT_PROMPTS)
def test_each_consent_question_lasts_at_most_12_seconds(rendered, name):
    # with the 5 s timeout a caller who presses nothing reaches the menu ~17 s after answer
    duration = float(soxi(rendered / f"{name}.wav", "-D"))
    assert duration <= MAX_CONSENT_SECONDS, f"{name}.wav lasts {duration:.2f} s"


@needs_tools
def test_the_consent_question_is_longer_than_the_confirmation(rendered):
    for lang in LANGUAGES:
        withdrawn = float(soxi(rendered / f"withdrawn-{lang}.wav", "-D"))
        for name in (f"consent-{lang}", f"consent-optin-{lang}"):
            assert float(soxi(rendered / f"{name}.wav", "-D")) > withdrawn, name


def test_the_prompts_are_rendered_at_a_natural_rate():
    # the time limit is met by the wording: a hurried voice is no way round it.
    # espeak-ng speaks 175 words a minute by default; much faster is hard to follow on a phone
    assert 140 <= make_prompts_module.SPEED <= 175
    result = make_prompts("--help")
    assert f"default {make_prompts_module.SPEED}" in result.stdout


# --- what the consent question says -----------------------------------------------------


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    parsed: dict[str, str] = {}
    for lang in LANGUAGES:
        parsed.update(make_prompts_module.parse_prompts(PROMPTS / f"{lang}.txt"))
    return parsed


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[str, str]:
    """The default refuse and grant digits, which the texts name."""
    from fs_consent.core.config import load_config

    home = tmp_path_factory.mktemp("home")
    consent = load_config(None, data_dir=home / "data", env={"HOME": str(home)}).consent
    return consent.refuse_digit, consent.grant_digit


#: per prompt: (recorded to help you better, the key to press, the pointer to the statement)
REQUIRED = {
    "consent-nl": ("om u beter te kunnen helpen", "Toets dan nu {refuse}.",
                   "privacyverklaring telefoniecentrale"),
    "consent-optin-nl": ("om u beter te kunnen helpen", "Toets dan nu {grant}.",
                         "privacyverklaring telefoniecentrale"),
    "consent-en": ("to help you better", "press {refuse} now", 'privacy statement "telefoniecentrale"'),
    "consent-optin-en": ("to help you better", "press {grant} now", 'privacy statement "telefoniecentrale"'),
}


@pytest.mark.parametrize("name", CONSENT_PROMPTS)
def test_each_consent_question_says_what_the_privacy_statement_asks(texts, digits, name):
    refuse, grant = digits
    helped, key, statement = REQUIRED[name]
    text = texts[name]
    assert helped in text, f"{name}: not why we record ({helped!r})"
    assert key.format(refuse=refuse, grant=grant) in text, f"{name}: not which key to press"
    assert statement in text, f"{name}: no pointer to the privacy statement"
    if "optin" not in name:  # in opt-out mode any other digit only replays the prompt
        named = set(re.findall(r"\b\d\b", text))
        assert named == {refuse}, f"{name} names digits {sorted(named)}"


#: sha256 of the consent texts (see consent_texts_digest) of each default prompt version.
#: Changed a text? Raise PROMPT_VERSION in fs_consent/core/config.py and the versions in
#: freeswitch/fs-consent.example.toml, and add a line here: the ledger tells the texts
#: a caller heard apart only by that version.
TEXTS_OF_VERSION = {
    "2026-12-01": "338416edabdc64223f1ffd1551b874257ec720378635cc300c8122ac61b4e02a",
}


def consent_texts_digest(texts: dict[str, str]) -> str:
    return hashlib.sha256("\n".join(f"[{n}] {texts[n]}" for n in CONSENT_PROMPTS).encode()).hexdigest()


def test_a_changed_text_gets_a_new_prompt_version(texts):
    from fs_consent.core.config import PROMPT_VERSION

    assert TEXTS_OF_VERSION.get(PROMPT_VERSION) == consent_texts_digest(texts), (
        f"the consent texts are not those of prompt version {PROMPT_VERSION}: raise the version")
    example = tomllib.loads((REPO / "freeswitch" / "fs-consent.example.toml").read_text(encoding="utf-8"))
    versions = {lang: p.get("version") for lang, p in example["consent"]["prompts"].items()}
    assert versions == {lang: PROMPT_VERSION for lang in LANGUAGES}


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
