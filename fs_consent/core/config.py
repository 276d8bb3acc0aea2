"""Configuration: embedded defaults, a TOML file, the environment, command-line overrides.

Precedence, lowest first: the defaults below < the config file (``path``, else
``$FS_CONSENT_CONFIG``) < ``$FS_CONSENT_DATA_DIR`` < the ``data_dir``/``listen``
arguments of :func:`load_config` (the CLI's options). Every value is validated here;
an error names the key. Unknown keys are errors, so a typo cannot pass silently.

Relative paths in the config file resolve against the file's directory; a data dir from
the environment or the command line resolves against the current directory. Prompt
files are FreeSWITCH's business (it may run on another host), so they are passed on as
written: a relative sound path is relative to FreeSWITCH's ``sound_prefix``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import difflib
import ipaddress
import os
import pwd
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple
from urllib.parse import urlsplit

from fs_consent.core.durations import format_duration, parse_duration

__all__ = [
    "AuditConfig",
    "Config",
    "ConfigError",
    "ConsentConfig",
    "FreeSwitchConfig",
    "ListenAddress",
    "LoggingConfig",
    "MenuConfig",
    "RecordingConfig",
    "RetentionConfig",
    "ServerConfig",
    "StorageConfig",
    "default_data_dir",
    "load_config",
    "parse_duration",
]

LANGUAGES = ("nl", "en")
SOUNDS_DIR = "/usr/share/freeswitch/sounds/fs-consent"
DATABASE_SCHEMES = ("sqlite", "postgres", "postgresql", "postgresext", "postgresqlext", "psycopg3")
ENV_CONFIG = "FS_CONSENT_CONFIG"
ENV_DATA_DIR = "FS_CONSENT_DATA_DIR"
MIN_BACKLOG = 1024  # server.backlog's default is max(server.max_calls, this)
MAX_BACKLOG = 65535


class ConfigError(Exception):
    """A configuration problem; the message names the key (or the file) at fault."""


class ListenAddress(NamedTuple):
    """A parsed ``HOST:PORT``; usable directly as a socket address. Port 0 picks a free port."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ServerConfig:
    listen: ListenAddress
    allowed_peers: tuple[Network, ...]
    max_calls: int
    drain_seconds: float
    handshake_timeout: float
    backlog: int  # listen(2) backlog; default max(max_calls, 1024), capped by net.core.somaxconn
    node: str = ""  # this node's name in a cluster (on every call and recording); default the host name


@dataclass(frozen=True)
class StorageConfig:
    data_dir: Path
    spool_dir: Path
    store_dir: Path
    keys_dir: Path
    database: str
    seal_workers: int
    # PostgreSQL: the most connections the server opens to the ledger: one for the writer, the
    # rest shared by pool_size - 1 reader threads (the call path's reads: objection look-ups);
    # SQLite has one writer and one reader thread whatever it says
    pool_size: int


@dataclass(frozen=True)
class ConsentConfig:
    mode: str
    refuse_digit: str
    grant_digit: str
    timeout: float
    tries: int
    language: str
    # language -> {"file": playable, "id": text id, "version": text version}, read-only;
    # the ledger records id and version with each consent decision
    prompts: Mapping[str, Mapping[str, str]]
    withdraw_sequence: str
    agent_withdraw_key: str
    aggression_key: str  # the agent dials *<key> to flag aggression: the recording is held
    callback_window: float  # seconds; 0 disables
    confirm_withdrawal: bool
    confirmation_prompts: Mapping[str, str]  # language -> playable (read-only mapping)
    objection_prompt: str  # a number that objects (art. 21): "skip" the consent prompt or "play" it


@dataclass(frozen=True)
class MenuConfig:
    app: str
    arg: str


@dataclass(frozen=True)
class RecordingConfig:
    stereo: bool
    bridge_only: bool
    mask_on_hold: bool
    #: the channel variable naming who took the call (e.g. mod_callcenter's ``cc_agent``);
    #: "": the bridged leg's destination number (the extension dialed)
    staff_variable: str
    #: the channel variable naming the route (queue, department) the call took; "": none
    route_variable: str


@dataclass(frozen=True)
class LoggingConfig:
    level: str
    format: str  # "kv" (key=value) or "json": one line per record (logs.py)


@dataclass(frozen=True)
class FreeSwitchConfig:
    """FreeSWITCH's inbound event socket, for ``fs-consent check`` only (None: not set)."""

    inbound: ListenAddress | None
    password: str | None  # a secret: the config file must then not be world-readable


@dataclass(frozen=True)
class RetentionConfig:
    """Terms in seconds, at least a day each (the statement: 60 days and one year)."""

    recordings: float
    call_records: float


@dataclass(frozen=True)
class AuditConfig:
    """When the server signs the audit trail's head (audit.py) and where it witnesses it."""

    checkpoint_every_entries: int  # a checkpoint is due after this many new entries...
    checkpoint_every: float  # ... or this many seconds after the last one, if anything is new
    checkpoint_grace: float  # how late a due checkpoint may be before `audit verify` fails
    witness_file: Path | None  # each checkpoint's head is appended here too (None: not kept)
    # the other nodes' signing keys (ed25519:<base64>, `fs-consent keys signing-key` on each):
    # `audit verify` trusts checkpoints signed by these and by this node's own key
    trusted_keys: tuple[str, ...] = ()


_AUDIT_DEFAULTS = AuditConfig(1000, 300.0, 60.0, None)


@dataclass(frozen=True)
class ListenConfig:
    """The listening room (``fs-consent listen``, fs_consent/listen): a small web app on its own address."""

    address: ListenAddress  # default 127.0.0.1:8480, behind the reverse proxy
    # peers whose X-Forwarded-For / -Proto and user_header are believed; () = none (direct access)
    trusted_proxies: tuple[Network, ...]
    user_header: str | None  # e.g. X-Remote-User: the proxy's signed-in user (only from trusted_proxies)
    session_lifetime: float  # seconds a sign-in lasts at most
    idle_timeout: float  # seconds without a request before a session ends
    lockout_after: int  # bad passwords in a row that lock an account...
    lockout_for: float  # ... for this long
    signin_per_minute: int  # sign-in attempts one address may make per minute
    language: str  # the default language of the pages (nl, en); ?lang= and Accept-Language override


_LISTEN_DEFAULTS = ListenConfig(ListenAddress("127.0.0.1", 8480), (), None, 8 * 3600.0, 1800.0, 10, 900.0, 20, "nl")


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    storage: StorageConfig
    consent: ConsentConfig
    menu: MenuConfig
    recording: RecordingConfig
    logging: LoggingConfig
    retention: RetentionConfig
    freeswitch: FreeSwitchConfig
    audit: AuditConfig = _AUDIT_DEFAULTS
    listen: ListenConfig = _LISTEN_DEFAULTS
    config_file: Path | None = None  # the file that was read, if any

    def describe(self) -> list[tuple[str, str]]:
        """Every effective key and its value as text (database passwords masked)."""
        rows = []
        for name, key in _KEYS.items():
            value: object = self
            for part in name.split("."):
                value = value[part] if isinstance(value, Mapping) else getattr(value, part)
            rows.append((name, key.show(value)))
        return rows


def default_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_DATA_HOME/fs-consent``, else ``~/.local/share/fs-consent``."""
    xdg = env.get("XDG_DATA_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec says to ignore a relative value
        return Path(xdg) / "fs-consent"
    home = env.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
    return Path(home) / ".local" / "share" / "fs-consent"


def load_config(
    path: Path | None = None,
    *,
    data_dir: Path | None = None,
    listen: str | None = None,
    env: Mapping[str, str] = os.environ,
) -> Config:
    """Build the effective configuration; raises ConfigError naming the bad key."""
    values: dict[str, object] = {}
    config_file = None
    origin = ""
    if path is None and env.get(ENV_CONFIG):
        path, origin = Path(env[ENV_CONFIG]), f" (from {ENV_CONFIG})"
    if path is not None:
        config_file = Path(path).expanduser().absolute()
        _walk(_read_toml(config_file, origin), _SCHEMA, "", config_file.parent, values)

    cwd = Path.cwd()
    overrides = [
        ("storage.data_dir", env.get(ENV_DATA_DIR) or None, ENV_DATA_DIR),
        ("storage.data_dir", None if data_dir is None else str(data_dir), "the command line"),
        ("server.listen", listen, "the command line"),
    ]
    for name, raw, source in overrides:
        if raw is not None:
            values[name] = _parse(name, raw, cwd, source)

    effective_data_dir = values.setdefault("storage.data_dir", default_data_dir(env))
    for name, key in _KEYS.items():
        if name not in values:
            default = key.default(effective_data_dir) if callable(key.default) else key.default
            values[name] = _parse(name, default, cwd, "the defaults")
    config = _build(values)
    return replace(config, config_file=config_file)


# --- the schema -------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    parse: Callable[[object, Path], object]  # (raw value, base dir) -> value, or ValueError
    default: object  # a raw value, or a function of the effective data dir
    show: Callable[[object], str] = str


def _leaves(table: dict, prefix: str = ""):
    for name, entry in table.items():
        if isinstance(entry, dict):
            yield from _leaves(entry, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", entry


def _read_toml(path: Path, origin: str) -> dict:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path}{origin} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}{origin}: cannot read it ({exc.strerror})") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def _walk(raw: dict, schema: dict, prefix: str, base: Path, values: dict[str, object]) -> None:
    for name, value in raw.items():
        dotted = prefix + name
        if name not in schema:
            close = difflib.get_close_matches(name, list(schema), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"config key {dotted}: unknown key{hint}")
        entry = schema[name]
        if isinstance(entry, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted}: expected a table [{dotted}]")
            _walk(value, entry, dotted + ".", base, values)
        else:
            values[dotted] = _parse(dotted, value, base, None)


def _parse(name: str, raw: object, base: Path, origin: str | None) -> object:
    try:
        return _KEYS[name].parse(raw, base)
    except ValueError as exc:
        where = f" (from {origin})" if origin else ""
        raise ConfigError(f"config key {name}{where}: {exc}") from None


def _build(v: dict[str, object]) -> Config:
    def section(cls, name):
        return cls(**{field: v[f"{name}.{field}"] for field in cls.__dataclass_fields__})

    consent = {field: v.get(f"consent.{field}") for field in ConsentConfig.__dataclass_fields__}
    consent["prompts"] = MappingProxyType(
        {
            lang: MappingProxyType({k: v[f"consent.prompts.{lang}.{k}"] for k in _PROMPT_FIELDS})
            for lang in LANGUAGES
        }
    )
    consent["confirmation_prompts"] = MappingProxyType(
        {lang: v[f"consent.confirmation_prompts.{lang}"] for lang in LANGUAGES}
    )
    if consent["grant_digit"] == consent["refuse_digit"]:
        raise ConfigError(
            "config key consent.grant_digit: must differ from consent.refuse_digit "
            f"(both are {consent['refuse_digit']!r})"
        )
    if consent["aggression_key"] == consent["agent_withdraw_key"]:
        raise ConfigError(
            "config key consent.aggression_key: must differ from consent.agent_withdraw_key "
            f"(both are {consent['agent_withdraw_key']!r})"
        )
    if v["listen.user_header"] and not v["listen.trusted_proxies"]:
        raise ConfigError(
            "config key listen.user_header: needs listen.trusted_proxies, the reverse proxies' addresses "
            "(the header is believed only from them)"
        )
    if v["server.backlog"] is None:  # the default follows max_calls: a burst of calls must fit
        v = {**v, "server.backlog": max(v["server.max_calls"], MIN_BACKLOG)}
    return Config(
        server=section(ServerConfig, "server"),
        storage=section(StorageConfig, "storage"),
        consent=ConsentConfig(**consent),
        menu=section(MenuConfig, "menu"),
        recording=section(RecordingConfig, "recording"),
        logging=section(LoggingConfig, "logging"),
        retention=section(RetentionConfig, "retention"),
        freeswitch=section(FreeSwitchConfig, "freeswitch"),
        audit=section(AuditConfig, "audit"),
        listen=section(ListenConfig, "listen"),
    )


# --- value parsers: (raw, base dir) -> value; ValueError says what was expected -----


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _string(raw: object, expected: str) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected {expected}, got {_brief(raw)}")
    return raw


def _integer(low: int, high: int):
    def parse(raw, base):
        if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {_brief(raw)}")
        return raw

    return parse


def _backlog(raw, base):
    """The listen backlog; None (the default) becomes max(max_calls, MIN_BACKLOG) in ``_build``."""
    return None if raw is None else _integer(1, MAX_BACKLOG)(raw, base)


def _duration(low: float, high: float | None):
    def parse(raw, base):
        seconds = parse_duration(raw)
        if seconds < low or (high is not None and seconds > high):
            if high is None:
                span = f"of at least {format_duration(low)}"
            else:
                span = f"from {format_duration(low)} to {format_duration(high)}"
            raise ValueError(f"expected a duration {span}, got {_brief(raw)}")
        return seconds

    return parse


def _term(raw, base) -> float:
    """A retention term: a duration like 60d, 12w or 1y, at least one day."""
    try:
        seconds = parse_duration(raw)
    except ValueError:
        raise ValueError(f"expected a retention term like 60d, 12w or 1y, got {_brief(raw)}") from None
    if seconds < 86400:
        raise ValueError(f"a retention term must be at least 1d, got {_brief(raw)}")
    return seconds


def _boolean(raw, base) -> bool:
    if not isinstance(raw, bool):
        raise ValueError(f"expected true or false, got {_brief(raw)}")
    return raw


def _choice(*options: str):
    def parse(raw, base):
        text = _string(raw, "one of " + ", ".join(options)).lower()
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {_brief(raw)}")
        return text

    return parse


def _digit(raw, base) -> str:
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= 9:
        return str(raw)
    if isinstance(raw, str) and len(raw) == 1 and raw in "0123456789":
        return raw
    raise ValueError(f'expected one digit 0-9, like "1", got {_brief(raw)}')


def _dtmf_sequence(raw, base) -> str:
    text = _string(raw, 'a key sequence like "*1"')
    if not re.fullmatch(r"[0-9*#]{1,4}", text):
        raise ValueError(f'expected 1 to 4 keys from 0-9, * and #, like "*1", got {_brief(raw)}')
    return text


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _playable(raw, base) -> str:
    text = _string(raw, "a FreeSWITCH playable (a sound file, phrase:..., tone_stream://...)")
    if not text or _CONTROL.search(text):
        raise ValueError(
            f"expected a FreeSWITCH playable without control characters, got {_brief(raw)}"
        )
    return text


def _prompt_file(raw, base) -> str:
    text = _playable(raw, base)
    if re.search(r"\s", text):
        raise ValueError(
            "must not contain spaces: it is one space-separated argument of "
            f"play_and_get_digits, got {_brief(raw)}"
        )
    return text


def _label(raw, base) -> str:
    if isinstance(raw, datetime.date):  # version = 2026-11-01 written without quotes
        raw = raw.isoformat()
    text = _string(raw, 'a label like "consent-nl" or "2026-11-01"')
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", text):
        raise ValueError(
            f"expected up to 64 letters, digits and . _ : - (no spaces), got {_brief(raw)}"
        )
    return text


def _app_name(raw, base) -> str:
    text = _string(raw, "a FreeSWITCH application name like execute_extension")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", text):
        raise ValueError(
            f"expected a FreeSWITCH application name like execute_extension, got {_brief(raw)}"
        )
    return text


def _app_arg(raw, base) -> str:
    text = _string(raw, 'an application argument like "menu XML default"')
    if _CONTROL.search(text):
        raise ValueError(
            "must not contain control characters (a line break would corrupt the ESL message)"
        )
    return text


_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _channel_variable(raw, base) -> str:
    """A FreeSWITCH channel variable's name (``cc_agent``), or "" for none."""
    text = _string(raw, 'a channel variable name like "cc_agent", or "" for none')
    if text and not _VARIABLE.fullmatch(text):
        raise ValueError(
            "expected a channel variable name: up to 64 letters, digits and _, not starting with a "
            f"digit (like \"cc_agent\"; without \"variable_\" or ${{}}), got {_brief(raw)}"
        )
    if text.startswith("variable_"):
        raise ValueError(f'name the variable without the "variable_" prefix of the event header, got {_brief(raw)}')
    return text


def _path(raw, base) -> Path:
    if isinstance(raw, Path):
        raw = str(raw)
    text = _string(raw, "a directory path")
    if not text or "\x00" in text:
        raise ValueError(f"expected a directory path, got {_brief(raw)}")
    return Path(os.path.normpath(base / Path(text).expanduser()))


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _listen(raw, base) -> ListenAddress:
    expected = f"expected HOST:PORT like 127.0.0.1:8040 or [::1]:8040, got {_brief(raw)}"
    text = _string(raw, "HOST:PORT like 127.0.0.1:8040 or [::1]:8040")
    bracketed = re.fullmatch(r"\[([^\]]+)\]:(\d{1,5})", text)
    if bracketed:
        host, port = bracketed.groups()
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(expected) from None
    else:
        match = re.fullmatch(r"([^:\[\]]+):(\d{1,5})", text)
        if match is None:
            if text.count(":") > 1:
                raise ValueError(
                    f"IPv6 addresses need brackets, like [::1]:8040, got {_brief(raw)}"
                )
            raise ValueError(expected)
        host, port = match.groups()
        if re.fullmatch(r"[\d.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(expected) from None
        elif not _HOSTNAME.fullmatch(host):
            raise ValueError(expected)
    if int(port) > 65535:
        raise ValueError(f"port must be 0 to 65535, got {_brief(raw)}")
    return ListenAddress(host, int(port))


def parse_address(text: str) -> ListenAddress:
    """``HOST:PORT`` from the command line (ValueError says what was expected)."""
    return _listen(text, None)


def _peers(raw, base) -> tuple[Network, ...]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(
            'expected a list of IP addresses or networks like ["127.0.0.1", "10.0.0.0/8"], '
            f"got {_brief(raw)}"
        )
    networks = []
    for item in raw:
        text = _string(item, "an IP address or network like 10.0.0.0/8")
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(
                    f"expected an IP address or network like 10.0.0.0/8, got {_brief(item)}"
                ) from None
            hint = f"did you mean {str(loose)!r}?"
            raise ValueError(f"{_brief(item)} has host bits set; {hint}") from None
    return tuple(networks)


def _optional_peers(raw, base) -> tuple[Network, ...]:
    """Like ``_peers``, but an empty list is allowed (none trusted)."""
    return () if raw == [] else _peers(raw, base)


_HEADER = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")


def _header_name(raw, base) -> str | None:
    """An HTTP header name like X-Remote-User; "" means not used."""
    text = _string(raw, 'an HTTP header name like "X-Remote-User", or "" for none')
    if text == "":
        return None
    if not _HEADER.fullmatch(text):
        raise ValueError(f'expected an HTTP header name like "X-Remote-User", got {_brief(raw)}')
    if text.lower() in ("cookie", "host", "authorization", "x-forwarded-for", "x-forwarded-proto"):
        raise ValueError(f"{text} is not a header a proxy sets for the signed-in user")
    return text


def _show_peers(networks: tuple[Network, ...]) -> str:
    if not networks:
        return "(none)"
    return ", ".join(
        str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n) for n in networks
    )


def _database(raw, base) -> str:
    text = _string(raw, "a database URL")
    scheme, sep, _ = text.partition("://")
    if not sep:
        raise ValueError(
            "expected a database URL like sqlite:////var/lib/fs-consent/ledger.db "
            "or postgresql://fs_consent@dbhost/fs_consent"
        )  # the value itself is not shown: it may hold a password
    if scheme.removesuffix("+pool") not in DATABASE_SCHEMES:
        raise ValueError(
            f"unsupported database scheme {scheme[:30]!r} "
            f"(use one of {', '.join(DATABASE_SCHEMES)})"
        )
    if scheme.startswith("sqlite"):
        parts = urlsplit(text)
        database = parts.path[1:]
        if database and database != ":memory:" and not os.path.isabs(database):
            query = f"?{parts.query}" if parts.query else ""
            text = f"{scheme}:///{os.path.normpath(base / database)}{query}"
    return text


def _show_database(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _optional_address(raw, base) -> ListenAddress | None:
    """``HOST:PORT`` of a service we connect to; "" means not configured."""
    if raw == "":
        return None
    address = _listen(raw, base)
    if address.port == 0:
        raise ValueError(f"port must be 1 to 65535, got {_brief(raw)}")
    return address


def _secret(raw, base) -> str | None:
    """A password; "" means not set. Never echoed in an error message."""
    if not isinstance(raw, str):
        raise ValueError("expected a password in quotes")
    if _CONTROL.search(raw) or raw != raw.strip():
        raise ValueError("must be one line without control characters or surrounding spaces")
    return raw or None


def _optional_path(raw, base) -> Path | None:
    """A file path; "" means not configured."""
    if raw == "":
        return None
    if not isinstance(raw, str) or "\x00" in raw:
        raise ValueError(f'expected a file path, or "" for none, got {_brief(raw)}')
    return _path(raw, base)


_NODE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _node(raw, base) -> str:
    """A node's name: stored on its calls and recordings, shown by `calls list` and `check`."""
    expected = "1 to 64 letters, digits, '.', '_' or '-' (a node name like \"fs1\")"
    text = _string(raw, expected)
    if not _NODE.fullmatch(text):
        raise ValueError(f"expected {expected}, got {_brief(raw)}")
    return text


def _default_node(_data_dir) -> str:
    return socket.gethostname()


def _signing_keys(raw, base) -> tuple[str, ...]:
    """A list of Ed25519 public keys as `fs-consent keys signing-key` prints them."""
    if not isinstance(raw, list):
        raise ValueError(f'expected a list of keys like ["ed25519:..."], got {_brief(raw)}')
    keys = []
    for item in raw:
        text = _string(item, "a key like ed25519:<base64> (fs-consent keys signing-key prints it)").strip()
        prefix, _, b64 = text.partition(":")
        try:
            ok = prefix == "ed25519" and len(base64.b64decode(b64, validate=True)) == 32
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"expected an Ed25519 public key as `fs-consent keys signing-key` prints it "
                             f"(ed25519:<base64 of 32 bytes>), got {_brief(item)}")
        if text not in keys:
            keys.append(text)
    return tuple(keys)


def _show_keys(keys: tuple[str, ...]) -> str:
    return ", ".join(keys) if keys else "(none)"


def _show_optional(value: object) -> str:
    return "(not set)" if value is None else str(value)


def _show_secret(value: str | None) -> str:
    return "(not set)" if value is None else "***"


_PROMPT_FIELDS = ("file", "id", "version")


#: The version of the consent texts in freeswitch/prompts/*.txt, stored with every decision:
#: raise it whenever those texts change (tests/freeswitch/test_prompts.py holds it to the texts).
#: 2026-11-01: the first texts (~30 s); 2026-12-01: the short texts (at most 12 s).
PROMPT_VERSION = "2026-12-01"


def _prompt(lang: str) -> dict[str, _Key]:
    return {
        "file": _Key(_prompt_file, f"{SOUNDS_DIR}/consent-{lang}.wav"),
        "id": _Key(_label, f"consent-{lang}"),
        "version": _Key(_label, PROMPT_VERSION),
    }


def _show_bool(value: bool) -> str:
    return "true" if value else "false"


_SCHEMA: dict = {
    "server": {
        "listen": _Key(_listen, "127.0.0.1:8040"),
        "allowed_peers": _Key(_peers, ["127.0.0.1", "::1"], _show_peers),
        "max_calls": _Key(_integer(1, 100_000), 2000),
        "drain_seconds": _Key(_duration(0, 3600), 30.0, format_duration),
        "handshake_timeout": _Key(_duration(0.1, 60), 5.0, format_duration),
        "backlog": _Key(_backlog, None),
        "node": _Key(_node, _default_node),
    },
    "storage": {
        "data_dir": _Key(_path, None),  # default: default_data_dir()
        "spool_dir": _Key(_path, lambda data_dir: data_dir / "spool"),
        "store_dir": _Key(_path, lambda data_dir: data_dir / "store"),
        "keys_dir": _Key(_path, lambda data_dir: data_dir / "keys"),
        "database": _Key(
            _database, lambda data_dir: f"sqlite:///{data_dir}/ledger.db", _show_database
        ),
        "seal_workers": _Key(_integer(1, 64), 2),
        "pool_size": _Key(_integer(2, 64), 4),
    },
    "consent": {
        "mode": _Key(_choice("opt-out", "opt-in"), "opt-out"),
        "refuse_digit": _Key(_digit, "1"),
        "grant_digit": _Key(_digit, "2"),
        "timeout": _Key(_duration(1, 60), "5s", format_duration),
        "tries": _Key(_integer(1, 5), 2),
        "language": _Key(_choice(*LANGUAGES), "nl"),
        "prompts": {lang: _prompt(lang) for lang in LANGUAGES},
        "withdraw_sequence": _Key(_dtmf_sequence, "*1"),
        "agent_withdraw_key": _Key(_digit, "2"),
        "aggression_key": _Key(_digit, "3"),
        "callback_window": _Key(_duration(0, None), "24h", format_duration),
        "confirm_withdrawal": _Key(_boolean, True, _show_bool),
        "confirmation_prompts": {
            lang: _Key(_playable, f"{SOUNDS_DIR}/withdrawn-{lang}.wav") for lang in LANGUAGES
        },
        "objection_prompt": _Key(_choice("skip", "play"), "skip"),
    },
    "menu": {
        "app": _Key(_app_name, "execute_extension"),
        "arg": _Key(_app_arg, "menu XML default"),
    },
    "recording": {
        "stereo": _Key(_boolean, True, _show_bool),
        "bridge_only": _Key(_boolean, True, _show_bool),
        "mask_on_hold": _Key(_boolean, True, _show_bool),
        "staff_variable": _Key(_channel_variable, "", lambda v: v or "(none: the bridged leg's destination number)"),
        "route_variable": _Key(_channel_variable, "fs_consent_route", lambda v: v or "(none)"),
    },
    "logging": {
        "level": _Key(_choice("debug", "info", "warning", "error"), "info"),
        "format": _Key(_choice("kv", "json"), "kv"),
    },
    "retention": {
        "recordings": _Key(_term, "60d", format_duration),
        "call_records": _Key(_term, "365d", format_duration),
    },
    "freeswitch": {
        "inbound": _Key(_optional_address, "", _show_optional),
        "password": _Key(_secret, "", _show_secret),
    },
    "audit": {
        "checkpoint_every_entries": _Key(_integer(1, 1_000_000), 1000),
        "checkpoint_every": _Key(_duration(1, 86400), "5m", format_duration),
        "checkpoint_grace": _Key(_duration(0, 86400), "1m", format_duration),
        "witness_file": _Key(_optional_path, "", _show_optional),
        "trusted_keys": _Key(_signing_keys, [], _show_keys),
    },
    "listen": {
        "address": _Key(_listen, "127.0.0.1:8480"),
        "trusted_proxies": _Key(_optional_peers, [], _show_peers),
        "user_header": _Key(_header_name, "", _show_optional),
        "session_lifetime": _Key(_duration(60, 7 * 86400), "8h", format_duration),
        "idle_timeout": _Key(_duration(60, 86400), "30m", format_duration),
        "lockout_after": _Key(_integer(3, 100), 10),
        "lockout_for": _Key(_duration(60, 86400), "15m", format_duration),
        "signin_per_minute": _Key(_integer(1, 1000), 20),
        "language": _Key(_choice(*LANGUAGES), "nl"),
    },
}

_KEYS: dict[str, _Key] = dict(_leaves(_SCHEMA))
