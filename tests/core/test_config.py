import base64
import dataclasses
import ipaddress
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fs_consent.core.config import ConfigError, ListenAddress, default_data_dir, load_config
from fs_consent.core.durations import format_duration, parse_duration

EXAMPLE = Path(__file__).resolve().parents[2] / "freeswitch" / "fs-consent.example.toml"


@pytest.fixture
def env(tmp_path):
    """An environment with nothing of the real one: HOME in the test's tmp dir."""
    return {"HOME": str(tmp_path / "home")}


def write(tmp_path, text, name="fs-consent.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def load_text(tmp_path, env, text):
    return load_config(write(tmp_path, text), env=env)


# --- defaults and precedence ------------------------------------------------------


def test_defaults_without_any_file(tmp_path, env):
    config = load_config(env=env)
    data = tmp_path / "home" / ".local" / "share" / "fs-consent"
    assert config.config_file is None
    assert config.server.listen == ListenAddress("127.0.0.1", 8040)
    assert config.server.allowed_peers == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert (config.server.max_calls, config.server.drain_seconds) == (2000, 30.0)
    assert config.server.handshake_timeout == 5.0
    assert config.server.backlog == 2000  # max(max_calls, 1024)
    storage = config.storage
    assert storage.data_dir == data
    assert (storage.spool_dir, storage.store_dir, storage.keys_dir) == (
        data / "spool",
        data / "store",
        data / "keys",
    )
    assert storage.database == f"sqlite:///{data}/ledger.db"
    assert storage.seal_workers == 2
    assert storage.pool_size == 4  # a writer and three readers: a few connections per node on a shared PostgreSQL
    consent = config.consent
    assert (consent.mode, consent.refuse_digit, consent.grant_digit) == ("opt-out", "1", "2")
    assert (consent.timeout, consent.tries, consent.language) == (5.0, 2, "nl")
    assert consent.prompts["nl"] == {
        "file": "/usr/share/freeswitch/sounds/fs-consent/consent-nl.wav",
        "id": "consent-nl",
        "version": "2026-12-01",
    }
    assert consent.prompts["en"]["id"] == "consent-en"
    assert (consent.withdraw_sequence, consent.agent_withdraw_key) == ("*1", "2")
    assert consent.callback_window == 24 * 3600
    assert consent.confirm_withdrawal is True
    assert set(consent.confirmation_prompts) == {"nl", "en"}
    assert (config.menu.app, config.menu.arg) == ("execute_extension", "menu XML default")
    assert config.recording == type(config.recording)(True, True, True, "", "fs_consent_route")
    assert config.logging.level == "info"


@pytest.mark.parametrize("text, backlog", [
    ("[server]\nmax_calls = 4", 1024),  # a small max_calls still gets room for a burst
    ("[server]\nmax_calls = 5000", 5000),  # a large one: every call it may take fits the queue
    ("[server]\nmax_calls = 4\nbacklog = 16", 16),  # an explicit value is taken as it is
    ("[server]\nbacklog = 65535", 65535),
])
def test_backlog_defaults_to_max_calls_or_1024(tmp_path, env, text, backlog):
    config = load_text(tmp_path, env, text)
    assert config.server.backlog == backlog
    assert ("server.backlog", str(backlog)) in config.describe()


def test_config_is_immutable(env):
    config = load_config(env=env)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.consent.mode = "opt-in"
    with pytest.raises(TypeError):
        config.consent.prompts["nl"]["file"] = "x.wav"


def test_default_data_dir_follows_xdg(tmp_path):
    assert default_data_dir({"XDG_DATA_HOME": "/srv/data", "HOME": "/h"}) == Path(
        "/srv/data/fs-consent"
    )
    # the XDG spec says a relative XDG_DATA_HOME is ignored
    assert default_data_dir({"XDG_DATA_HOME": "rel", "HOME": "/h"}) == Path(
        "/h/.local/share/fs-consent"
    )
    assert default_data_dir({"HOME": "/h"}) == Path("/h/.local/share/fs-consent")


def test_precedence_defaults_file_env_cli(tmp_path, env):
    path = write(tmp_path, '[storage]\ndata_dir = "/from/file"\n[server]\nlisten = "10.0.0.1:9000"\n')
    assert load_config(path, env=env).storage.data_dir == Path("/from/file")
    env["FS_CONSENT_DATA_DIR"] = "/from/env"
    config = load_config(path, env=env)
    assert config.storage.data_dir == Path("/from/env")
    assert config.storage.spool_dir == Path("/from/env/spool")  # derived from the effective one
    assert str(config.server.listen) == "10.0.0.1:9000"
    config = load_config(path, data_dir=Path("/from/cli"), listen="[::1]:7000", env=env)
    assert config.storage.data_dir == Path("/from/cli")
    assert config.storage.database == "sqlite:////from/cli/ledger.db"
    assert config.server.listen == ListenAddress("::1", 7000)


def test_env_names_the_config_file_and_an_explicit_path_wins(tmp_path, env):
    env["FS_CONSENT_CONFIG"] = str(write(tmp_path, "[consent]\ntries = 3\n", "a.toml"))
    assert load_config(env=env).consent.tries == 3
    assert load_config(env=env).config_file == tmp_path / "a.toml"
    explicit = write(tmp_path, "[consent]\ntries = 4\n", "b.toml")
    assert load_config(explicit, env=env).consent.tries == 4


def test_missing_config_file_named_explicitly_is_an_error(tmp_path, env):
    with pytest.raises(ConfigError, match=r"config file .*nope\.toml does not exist"):
        load_config(tmp_path / "nope.toml", env=env)
    env["FS_CONSENT_CONFIG"] = str(tmp_path / "gone.toml")
    with pytest.raises(ConfigError, match=r"gone\.toml \(from FS_CONSENT_CONFIG\) does not exist"):
        load_config(env=env)


def test_relative_paths_resolve_against_the_config_file(tmp_path, env, monkeypatch):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    path = write(
        conf_dir,
        '[storage]\ndata_dir = "data"\nspool_dir = "../run/spool"\n'
        'database = "sqlite:///db/ledger.db?timeout=5"\n',
    )
    storage = load_config(path, env=env).storage
    assert storage.data_dir == conf_dir / "data"
    assert storage.spool_dir == tmp_path / "run" / "spool"
    assert storage.store_dir == conf_dir / "data" / "store"
    assert storage.database == f"sqlite:///{conf_dir}/db/ledger.db?timeout=5"


def test_data_dir_from_env_and_cli_resolves_against_cwd(tmp_path, env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env["FS_CONSENT_DATA_DIR"] = "envdata"
    assert load_config(env=env).storage.data_dir == tmp_path / "envdata"
    assert load_config(data_dir=Path("clidata"), env=env).storage.data_dir == tmp_path / "clidata"


def test_friendly_forms_are_accepted(tmp_path, env):
    config = load_text(
        tmp_path,
        env,
        """
[server]
listen = "localhost:0"
allowed_peers = ["10.0.0.0/8", "fd00::/8", "192.0.2.7"]
drain_seconds = "2m"
[storage]
database = "postgresql://fs:secret@db.example/fs_consent"
[consent]
mode = "Opt-In"
refuse_digit = 9
grant_digit = 0
timeout = "1500ms"
withdraw_sequence = "#9*"
callback_window = 0
[consent.prompts.nl]
file = "phrase:fs_consent_nl"
version = 2027-01-15
[consent.confirmation_prompts]
en = "say:en number pronounced 12"
[menu]
app = "transfer"
arg = ""
[logging]
level = "DEBUG"
""",
    )
    assert config.server.listen == ListenAddress("localhost", 0)
    assert config.server.allowed_peers[2] == ipaddress.ip_network("192.0.2.7/32")
    assert config.server.drain_seconds == 120.0
    assert config.consent.mode == "opt-in"
    assert (config.consent.refuse_digit, config.consent.grant_digit) == ("9", "0")
    assert config.consent.timeout == 1.5
    assert config.consent.callback_window == 0
    assert config.consent.prompts["nl"] == {
        "file": "phrase:fs_consent_nl",
        "id": "consent-nl",  # the rest of the table keeps its defaults
        "version": "2027-01-15",
    }
    assert config.consent.confirmation_prompts["en"] == "say:en number pronounced 12"
    assert config.logging.level == "debug"
    assert ("storage.database", "postgresql://fs:***@db.example/fs_consent") in config.describe()


# --- errors name the key ----------------------------------------------------------


def test_bad_duration_message(tmp_path, env):
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, env, '[consent]\ntimeout = "abc"\n')
    assert str(caught.value) == (
        "config key consent.timeout: expected a duration like 5s or 1500ms, got 'abc'"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ('[consent]\ntimout = "5s"', r"^config key consent\.timout: unknown key \(did you mean consent\.timeout\?\)$"),
        ("[sever]\nmax_calls = 1", r"^config key sever: unknown key \(did you mean server\?\)$"),
        ('[consent.prompts.de]\nfile = "x.wav"', r"^config key consent\.prompts\.de: unknown key$"),
        ("[consent.prompts.nl]\nlanguage = 'nl'", r"^config key consent\.prompts\.nl\.language: unknown key"),
        ("server = 1", r"^config key server: expected a table \[server\]$"),
        ('[consent]\ntimeout = "90s"', r"^config key consent\.timeout: expected a duration from 1s to 1m, got '90s'$"),
        ('[consent]\ntimeout = "-5s"', r"^config key consent\.timeout: expected a duration like"),
        ("[consent]\ntimeout = true", r"^config key consent\.timeout: expected a duration"),
        ("[consent]\ntries = 0", r"^config key consent\.tries: expected a whole number from 1 to 5, got 0$"),
        ("[consent]\ntries = 6", r"^config key consent\.tries: "),
        ("[consent]\ntries = true", r"^config key consent\.tries: "),
        ("[consent]\ntries = 2.0", r"^config key consent\.tries: "),
        ('[server]\nmax_calls = "10"', r"^config key server\.max_calls: "),
        ('[server]\nlisten = "::1:8040"', r"^config key server\.listen: IPv6 addresses need brackets"),
        ('[server]\nlisten = "localhost"', r"^config key server\.listen: expected HOST:PORT"),
        ('[server]\nlisten = "host:99999"', r"^config key server\.listen: port must be 0 to 65535"),
        ('[server]\nlisten = "[nope]:80"', r"^config key server\.listen: expected HOST:PORT"),
        ('[server]\nlisten = "300.1.1.1:80"', r"^config key server\.listen: expected HOST:PORT"),
        ('[server]\nlisten = "bad_host!:80"', r"^config key server\.listen: expected HOST:PORT"),
        ('[server]\nallowed_peers = ["10.0.0.1/8"]', r"^config key server\.allowed_peers: '10\.0\.0\.1/8' has host bits set; did you mean '10\.0\.0\.0/8'\?$"),
        ('[server]\nallowed_peers = ["frontdoor"]', r"^config key server\.allowed_peers: expected an IP address or network"),
        ("[server]\nallowed_peers = []", r"^config key server\.allowed_peers: expected a list"),
        ('[server]\nallowed_peers = "127.0.0.1"', r"^config key server\.allowed_peers: expected a list"),
        ("[server]\nhandshake_timeout = 0", r"^config key server\.handshake_timeout: expected a duration from 100ms to 1m"),
        ("[server]\nbacklog = 0", r"^config key server\.backlog: expected a whole number from 1 to 65535, got 0$"),
        ("[server]\nbacklog = 65536", r"^config key server\.backlog: expected a whole number from 1 to 65535"),
        ('[server]\nbacklog = "1024"', r"^config key server\.backlog: expected a whole number"),
        ("[server]\nbacklog = true", r"^config key server\.backlog: expected a whole number"),
        ("[server]\nbacklog = 1024.0", r"^config key server\.backlog: expected a whole number"),
        ('[storage]\ndatabase = "mysql://u@h/db"', r"^config key storage\.database: unsupported database scheme 'mysql'"),
        ('[storage]\ndatabase = "ledger.db"', r"^config key storage\.database: expected a database URL"),
        ('[storage]\ndata_dir = ""', r"^config key storage\.data_dir: expected a directory path"),
        ("[storage]\nseal_workers = 0", r"^config key storage\.seal_workers: "),
        ("[storage]\npool_size = 1", r"^config key storage\.pool_size: expected a whole number from 2 to 64, got 1$"),
        ("[storage]\npool_size = 65", r"^config key storage\.pool_size: expected a whole number from 2 to 64"),
        ('[storage]\npool_size = "4"', r"^config key storage\.pool_size: expected a whole number"),
        ('[consent]\nmode = "opt_out"', r"^config key consent\.mode: expected one of opt-out, opt-in, got 'opt_out'$"),
        ('[consent]\nrefuse_digit = "12"', r"^config key consent\.refuse_digit: expected one digit 0-9"),
        ('[consent]\nrefuse_digit = "*"', r"^config key consent\.refuse_digit: "),
        ('[consent]\ngrant_digit = "1"', r"^config key consent\.grant_digit: must differ from consent\.refuse_digit \(both are '1'\)$"),
        ('[consent]\nwithdraw_sequence = "*1234"', r"^config key consent\.withdraw_sequence: expected 1 to 4 keys"),
        ('[consent]\nwithdraw_sequence = ""', r"^config key consent\.withdraw_sequence: "),
        ("[consent]\nwithdraw_sequence = 21", r"^config key consent\.withdraw_sequence: "),
        ('[consent]\nagent_withdraw_key = "#"', r"^config key consent\.agent_withdraw_key: "),
        ('[consent]\nlanguage = "de"', r"^config key consent\.language: expected one of nl, en"),
        ('[consent]\ncallback_window = "soon"', r"^config key consent\.callback_window: "),
        ('[consent]\nconfirm_withdrawal = "yes"', r"^config key consent\.confirm_withdrawal: expected true or false"),
        ('[consent.prompts.en]\nfile = "my prompt.wav"', r"^config key consent\.prompts\.en\.file: must not contain spaces"),
        ('[consent.prompts.en]\nfile = ""', r"^config key consent\.prompts\.en\.file: "),
        ('[consent.prompts.en]\nid = "consent en"', r"^config key consent\.prompts\.en\.id: "),
        ('[consent.confirmation_prompts]\nnl = "a.wav\\nexit"', r"^config key consent\.confirmation_prompts\.nl: "),
        ('[menu]\napp = "execute extension"', r"^config key menu\.app: "),
        ('[menu]\narg = "menu XML default\\nsendmsg"', r"^config key menu\.arg: must not contain control characters"),
        ('[recording]\nstereo = "yes"', r"^config key recording\.stereo: expected true or false"),
        ('[recording]\nstaff_variable = "${cc_agent}"', r"^config key recording\.staff_variable: expected a channel variable name"),
        ('[recording]\nstaff_variable = "cc agent"', r"^config key recording\.staff_variable: expected a channel variable name"),
        ('[recording]\nstaff_variable = "1agent"', r"^config key recording\.staff_variable: expected a channel variable name"),
        ('[recording]\nstaff_variable = "variable_cc_agent"', r"^config key recording\.staff_variable: name the variable without the \"variable_\" prefix"),
        ("[recording]\nstaff_variable = 1", r"^config key recording\.staff_variable: expected a channel variable name like \"cc_agent\""),
        ('[recording]\nroute_variable = "queue-name"', r"^config key recording\.route_variable: expected a channel variable name"),
        (f'[recording]\nroute_variable = "{"q" * 65}"', r"^config key recording\.route_variable: "),
        ('[logging]\nlevel = "verbose"', r"^config key logging\.level: "),
    ],
)
def test_bad_values_name_the_key(tmp_path, env, text, message):
    with pytest.raises(ConfigError, match=message):
        load_text(tmp_path, env, text + "\n")


def test_database_password_is_not_shown_in_errors(tmp_path, env):
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, env, '[storage]\ndatabase = "oracle://u:hunter2@h/db"\n')
    assert "hunter2" not in str(caught.value)


def test_bad_override_names_its_source(tmp_path, env):
    with pytest.raises(ConfigError, match=r"^config key server\.listen \(from the command line\): "):
        load_config(listen="nonsense", env=env)
    env["FS_CONSENT_DATA_DIR"] = "bad\x00dir"
    with pytest.raises(ConfigError, match=r"^config key storage\.data_dir \(from FS_CONSENT_DATA_DIR\): "):
        load_config(env=env)


def test_toml_syntax_error_names_the_file(tmp_path, env):
    with pytest.raises(ConfigError, match=r"config file .*fs-consent\.toml: .*line 2"):
        load_text(tmp_path, env, "[server]\nlisten = \n")


def test_unreadable_file(tmp_path, env):
    with pytest.raises(ConfigError, match=r"cannot read it"):
        load_config(tmp_path, env=env)  # a directory
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[menu]\narg = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"not UTF-8"):
        load_config(path, env=env)


# --- describe and the example file ------------------------------------------------


def test_describe_lists_every_key(env):
    rows = load_config(env=env).describe()
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)) == 61  # 50, [recording]'s staff and route variables, the 9 of [listen]
    shown = dict(rows)
    assert shown["server.listen"] == "127.0.0.1:8040"
    assert shown["server.allowed_peers"] == "127.0.0.1, ::1"
    assert shown["consent.timeout"] == "5s"
    assert shown["consent.callback_window"] == "1d"
    assert shown["consent.prompts.en.version"] == "2026-12-01"
    assert shown["recording.stereo"] == "true"
    assert shown["storage.database"].startswith("sqlite:////")
    assert all(isinstance(value, str) for _, value in rows)


def test_example_file_equals_the_defaults(env):
    from_example = load_config(EXAMPLE, env=env)
    assert from_example.config_file == EXAMPLE
    assert dataclasses.replace(from_example, config_file=None) == load_config(env=env)


def test_example_file_mentions_every_key(env):
    """Keys left commented out (derived defaults) count: uncomment them and compare."""
    text = re.sub(r"(?m)^# ?([a-z_]+ = )", r"\1", EXAMPLE.read_text())

    def keys(table, prefix=""):
        for name, value in table.items():
            if isinstance(value, dict):
                yield from keys(value, f"{prefix}{name}.")
            else:
                yield prefix + name

    described = [name for name, _ in load_config(env=env).describe()]
    assert sorted(keys(tomllib.loads(text))) == sorted(described)


def test_example_file_comments_every_key():
    lines = EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"#? ?[a-z_]+ = ", line) and not line.startswith(("nl =", "en =")):
            above = lines[number - 1]
            assert above.startswith("#"), f"no comment above line {number + 1}: {line}"


# --- durations --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("5s", 5.0),
        ("1500ms", 1.5),
        ("10m", 600.0),
        ("24h", 86400.0),
        ("60d", 60 * 86400.0),
        ("12w", 84 * 86400.0),
        ("1y", 365 * 86400.0),
        ("2.5s", 2.5),
        (" 3 s ", 3.0),
        ("7", 7.0),
        (7, 7.0),
        (0.25, 0.25),
        ("0", 0.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "5 seconds", "-1s", "1h30m", "1e3s", True, None, float("inf"), "s"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="expected a duration like 5s or 1500ms"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**12) | st.integers(0, 10**6).map(lambda n: n * 86_400_000))
def test_format_duration_round_trips(milliseconds):
    seconds = milliseconds / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-12, abs=1e-9)


# --- nodes: [server] node and [audit] trusted_keys ------------------------------------------


def test_a_node_is_named_by_the_host_name_unless_the_config_names_it(tmp_path, env):
    import socket

    assert load_config(env=env).server.node == socket.gethostname()
    assert load_text(tmp_path, env, '[server]\nnode = "fs-2.example_A"\n').server.node == "fs-2.example_A"


@pytest.mark.parametrize("value", ['""', '"fs 1"', '"fs/1"', f'"{"n" * 65}"', "1", '"ü"'])
def test_a_bad_node_name_is_refused_naming_the_key(tmp_path, env, value):
    with pytest.raises(ConfigError, match=r"^config key server\.node: expected 1 to 64 letters, digits"):
        load_text(tmp_path, env, f"[server]\nnode = {value}\n")


def test_trusted_keys_are_ed25519_keys_as_keys_signing_key_prints_them(tmp_path, env):
    key = "ed25519:" + base64.b64encode(bytes(range(32))).decode()  # 32 bytes, as an Ed25519 public key
    config = load_text(tmp_path, env, f'[audit]\ntrusted_keys = ["{key}", "{key}"]\n')
    assert config.audit.trusted_keys == (key,)
    assert dict(config.describe())["audit.trusted_keys"] == key
    assert load_config(env=env).audit.trusted_keys == ()
    for bad in ('["ed25519:short"]', '["age1qqqq"]', '"ed25519:x"'):
        with pytest.raises(ConfigError, match=r"^config key audit\.trusted_keys: expected"):
            load_text(tmp_path, env, f"[audit]\ntrusted_keys = {bad}\n")


def test_staff_and_route_variables(tmp_path, env):
    config = load_text(tmp_path, env, '[recording]\nstaff_variable = "cc_agent"\nroute_variable = ""\n')
    assert (config.recording.staff_variable, config.recording.route_variable) == ("cc_agent", "")
    shown = dict(config.describe())
    assert shown["recording.staff_variable"] == "cc_agent"
    assert shown["recording.route_variable"] == "(none)"
