"""``fs-consent check``: is this installation ready to run? One line per check.

Where ``compliance`` asks whether the data keeps the privacy statement's promises,
``check`` asks whether the server can start and work: the configuration, the key files
and their modes, the directories, the database's schema version and, when
``[freeswitch] inbound`` is set, FreeSWITCH's inbound event socket. It changes nothing:
it creates no file, generates no key and never migrates the database.

Each check is a small function of the configuration returning one :class:`Check`:
``ok``, ``warn`` (works, but look: e.g. the spool is not on a tmpfs, or something is
created on the first start) or ``fail`` (the server would refuse to start, or would
run without doing its job).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from peewee import PeeweeException, SqliteDatabase
from playhouse.db_url import connect as connect_url

from .. import esl
from ..core.config import ConfigError, load_config
from ..secure import files, keys, spool
from ..secure.vault import probe_writable
from ..store import ledger, nodes
from ..store.migrations import SchemaError, read_schema_version

OK, WARN, FAIL = "ok", "warn", "fail"
ESL_TIMEOUT = 5.0  # seconds for the whole inbound event socket exchange
CONFIG_MODE_WITH_SECRET = 0o640  # root:fs-consent 0640 (docs/OPERATIONS.md)
MIN_FREE = {"store": 1 << 30, "spool": 256 << 20}  # bytes: 256 MiB is ~2 h of 8 kHz stereo
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")
STORE_PROBE_BYTES = 1 << 20  # the store must take this much (about 30 s of a stereo recording)
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str  # one line

    def row(self) -> dict:
        return {"status": self.status, "check": self.name, "detail": self.detail}


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


# --- configuration ---------------------------------------------------------------------


def check_config(config) -> Check:
    if config.config_file is None:
        return Check("config", OK, "no config file: the embedded defaults")
    return Check("config", OK, f"{config.config_file} is valid")


def config_secrets(config) -> list[str]:
    """The passwords the configuration holds, by key (never their values)."""
    held = []
    if config.freeswitch.password is not None:
        held.append("freeswitch.password")
    if urlsplit(config.storage.database).password is not None:
        held.append("storage.database")
    return held


def check_config_mode(config) -> Check | None:
    """A config file holding a password must not be readable by others (0640 at most)."""
    path = config.config_file
    if path is None:
        return None
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    secrets = config_secrets(config)
    if mode & 0o002:
        return Check("config", FAIL, f"{path} is writable by everyone (mode {mode:04o}); run: chmod o-w {path}")
    if secrets and mode & ~CONFIG_MODE_WITH_SECRET & 0o777:
        return Check("config", FAIL, f"{path} holds a password ({', '.join(secrets)}) but its mode is "
                                     f"{mode:04o}; run: chmod 640 {path}")
    held = f"holds {', '.join(secrets)}" if secrets else "holds no password"
    return Check("config", OK, f"{path} mode {mode:04o}, {held}")


# --- keys --------------------------------------------------------------------------------


def _keys_dir(config) -> Path:
    return Path(config.storage.keys_dir)


def check_keys_dir(config) -> Check:
    path = _keys_dir(config)
    if not path.exists():
        return Check("keys", WARN, f"{path} does not exist: the keys are generated on the first start "
                                   "(or by fs-consent keys init)")
    try:
        files.check_private_dir(path)
    except files.NotPrivate as exc:
        return Check("keys", FAIL, str(exc))
    return Check("keys", OK, f"{path} {_mode(path.stat())}")


def _recipients(keys_dir: Path) -> list[str] | None:
    """The recipients, or None when the file is unusable (its own check says why)."""
    try:
        return keys.load_recipients(keys_dir)
    except keys.KeyFileError:
        return None


def check_identity(config) -> Check | None:
    keys_dir = _keys_dir(config)
    if not keys_dir.is_dir():
        return None
    path = keys_dir / keys.IDENTITY_FILE
    if path.exists():
        try:
            keys.load_identity(keys_dir)
        except keys.KeyFileError as exc:
            return Check("keys", FAIL, str(exc))
        return Check("keys", OK, f"{keys.IDENTITY_FILE} {_mode(path.stat())}")
    if _recipients(keys_dir):
        return Check("keys", OK, f"{keys.IDENTITY_FILE} absent: a write-only server (identity kept offline); "
                                 f"recordings are sealed to {keys.RECIPIENTS_FILE}")
    if not (keys_dir / keys.RECIPIENTS_FILE).exists():
        return Check("keys", WARN, f"no {keys.IDENTITY_FILE} and no {keys.RECIPIENTS_FILE}: a key pair is "
                                   "generated on the first start")
    return Check("keys", WARN, f"{keys.IDENTITY_FILE} absent and {keys.RECIPIENTS_FILE} lists no usable key")


def check_recipients(config) -> Check | None:
    keys_dir = _keys_dir(config)
    if not keys_dir.is_dir():
        return None
    path = keys_dir / keys.RECIPIENTS_FILE
    has_identity = (keys_dir / keys.IDENTITY_FILE).exists()
    if not path.exists():
        source = f"from {keys.IDENTITY_FILE}" if has_identity else "with a new key pair"
        return Check("keys", WARN, f"{keys.RECIPIENTS_FILE} absent: written {source} on the first start")
    try:
        recipients = keys.load_recipients(keys_dir)
    except keys.KeyFileError as exc:
        return Check("keys", FAIL, str(exc))
    if not recipients:
        return Check("keys", FAIL, f"{path} lists no recipient: calls go on but nothing is recorded; "
                                   "add an age1... line")
    return Check("keys", OK, f"{keys.RECIPIENTS_FILE} {_mode(path.stat())}, {len(recipients)} recipient(s)")


def check_field_key(config) -> Check | None:
    keys_dir = _keys_dir(config)
    if not keys_dir.is_dir():
        return None
    path = keys_dir / keys.FIELD_KEY_FILE
    if not path.exists():
        if any((keys_dir / name).exists() for name in (keys.IDENTITY_FILE, keys.RECIPIENTS_FILE)):
            return Check("keys", FAIL, f"{path} is missing while the other keys exist: restore it from the "
                                       "backup (a new one would leave the ledger's protected fields unreadable)")
        return Check("keys", WARN, f"{keys.FIELD_KEY_FILE} absent: generated on the first start")
    try:
        keys.load_field_key(keys_dir)
    except keys.KeyFileError as exc:
        return Check("keys", FAIL, str(exc))
    return Check("keys", OK, f"{keys.FIELD_KEY_FILE} {_mode(path.stat())}")


def check_signing_key(config) -> Check | None:
    keys_dir = _keys_dir(config)
    if not keys_dir.is_dir():
        return None
    path = keys_dir / keys.SIGNING_KEY_FILE
    if not path.exists():
        return Check("keys", WARN, f"{keys.SIGNING_KEY_FILE} absent: generated on the first start "
                                   "(exports and audit checkpoints are signed with it)")
    try:
        keys.load_signing_key(keys_dir)
    except keys.KeyFileError as exc:
        return Check("keys", FAIL, str(exc))
    return Check("keys", OK, f"{keys.SIGNING_KEY_FILE} {_mode(path.stat())}")


# --- directories -------------------------------------------------------------------------


def check_data_dir(config) -> Check:
    path = Path(config.storage.data_dir)
    if not path.exists():
        return Check("data-dir", WARN, f"{path} does not exist: created on the first start")
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        return Check("data-dir", FAIL, f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        return Check("data-dir", FAIL, f"{path} is owned by uid {st.st_uid}, not by the user running "
                                       f"fs-consent (uid {os.geteuid()}); run: chown {os.geteuid()} {path}")
    if st.st_mode & 0o022:
        return Check("data-dir", FAIL, f"{path} is writable by group/others (mode {_mode(st)}); "
                                       f"run: chmod 700 {path}")
    if not os.access(path, os.W_OK | os.X_OK):
        return Check("data-dir", FAIL, f"{path} is not writable by this user")
    if st.st_mode & 0o077:  # each file in it is private; its names (recording ids) are not
        return Check("data-dir", WARN, f"{path} can be listed by group/others (mode {_mode(st)}); "
                                       f"run: chmod 700 {path}")
    return Check("data-dir", OK, f"{path} {_mode(st)}")


def check_store(config) -> Check:
    path = Path(config.storage.store_dir)
    if not path.exists():
        return Check("store", WARN, f"{path} does not exist: created on the first start")
    if not path.is_dir():
        return Check("store", FAIL, f"{path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        return Check("store", FAIL, f"{path} is not writable by this user: recordings could not be sealed")
    failed = probe_writable(path, STORE_PROBE_BYTES)
    if failed is not None:
        return Check("store", FAIL, f"{path} cannot take a recording ({errno.errorcode.get(failed.errno, 'error')}: "
                                    f"{failed.strerror}): recordings wait in the spool until it can")
    return Check("store", OK, f"{path} {_mode(path.stat())}, writable")


def check_spool(config) -> Check:
    path = Path(config.storage.spool_dir)
    if not path.exists():
        return Check("spool", WARN, f"{path} does not exist: created on the first start, on disk unless "
                                    "a tmpfs is mounted there")
    try:
        spool.prepare_spool(path)  # on an existing directory: checks only
    except spool.SpoolError as exc:
        return Check("spool", FAIL, str(exc))
    return Check("spool", OK, f"{path} {_mode(path.stat())}, writable")


def filesystem_type(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """The type of the filesystem ``path`` is on (``tmpfs``, ``ext4``...), None if unknown."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, found = -1, None
    for line in lines:
        # id parent dev root MOUNT-POINT options [optional...] - TYPE source superoptions
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])  # "\040" is a space
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:  # the longest match; a later mount over it wins
            best, found = len(point), right.split()[0]
    return found


def check_spool_memory(config) -> Check | None:
    path = Path(config.storage.spool_dir)
    if not path.is_dir():
        return None
    kind = filesystem_type(path)
    if kind in MEMORY_FILESYSTEMS:
        return Check("spool", OK, f"{path} is on {kind}: plaintext stays in RAM")
    return Check("spool", WARN, f"{path} is on {kind or 'an unknown filesystem'}, not tmpfs: plaintext "
                                "recordings reach the disk while their call lasts")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_free_space(config, min_free: Mapping[str, int] = MIN_FREE) -> Check:
    parts, low = [], []
    for name, path in (("store", config.storage.store_dir), ("spool", config.storage.spool_dir)):
        free = shutil.disk_usage(_nearest_existing(Path(path))).free
        parts.append(f"{name} {free / (1 << 30):.1f} GiB free")
        if free < min_free[name]:
            low.append(f"{name} has less than {min_free[name] >> 20} MiB")
    if low:
        return Check("disk", WARN, "; ".join(low) + " (" + ", ".join(parts) + ")")
    return Check("disk", OK, ", ".join(parts))


# --- the database ------------------------------------------------------------------------


def _shown_url(config) -> str:
    return dict(config.describe())["storage.database"]  # a password masked


def check_database(config) -> Check:
    """Reachable, and its schema version against this code's; read only (migrations run at start)."""

    url, shown = config.storage.database, _shown_url(config)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if not path.exists():
            return Check("database", WARN, f"{path} does not exist: created on the first start")
        db = SqliteDatabase(str(path), pragmas={"query_only": 1})  # check never writes
    else:
        db = connect_url(url)
    try:
        try:
            db.connect()
        except Exception as exc:  # noqa: BLE001 - each driver has its own; the first line says it
            return Check("database", FAIL, f"cannot connect to {shown}: {_first_line(exc)}")
        version = read_schema_version(db)
        tables = db.get_tables()
        limit = None if url.startswith("sqlite") else db.execute_sql("SHOW max_connections").fetchone()[0]
    except SchemaError as exc:
        return Check("database", FAIL, f"{shown}: {_first_line(exc)}")
    except (PeeweeException, ValueError) as exc:
        return Check("database", FAIL, f"cannot read {shown}: {_first_line(exc)}")
    finally:
        db.close()
    current = ledger.SCHEMA_VERSION
    if version is None:
        if tables:
            return Check("database", FAIL, f"{shown} has tables but no schema version: not an fs-consent ledger")
        return Check("database", WARN, f"{shown} is empty: the tables are created on the first start")
    if version > current:
        return Check("database", FAIL, f"{shown} has schema version {version}, newer than this fs-consent's "
                                       f"({current}); upgrade fs-consent")
    if version < current:
        return Check("database", WARN, f"{shown} has schema version {version} (this fs-consent: {current}): "
                                       "it will be upgraded on the next start")
    n = config.storage.pool_size
    pool = ""
    if limit is not None:
        pool = (f"; the server opens at most {n} connections (storage.pool_size: 1 writer, {n - 1} readers), "
                f"the PostgreSQL server allows {limit} in all")
    return Check("database", OK, f"{shown} schema version {version}{pool}")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _own_signing_key(config) -> str | None:
    try:
        return keys.signing_public_key(keys.load_signing_key(Path(config.storage.keys_dir)))
    except keys.KeyFileError:
        return None


def check_nodes(config) -> list[Check] | None:
    """One line per node the ledger has seen (schema 4): running, stopped or silent since its last
    sign of life; a warning when a node's checkpoints would not verify here (key not trusted)."""
    url = config.storage.database
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if not path.exists():
            return None
        db = SqliteDatabase(str(path), pragmas={"query_only": 1})
    else:
        db = connect_url(url)
    try:
        db.connect()
        if "node" not in db.get_tables() or (read_schema_version(db) or 0) < 4:
            return None
        with db.bind_ctx([ledger.Node]):
            seen = nodes.all_nodes()
    except (PeeweeException, SchemaError, ValueError):
        return None  # check_database says what is wrong with the database
    finally:
        db.close()
    this = config.server.node
    trusted = set(config.audit.trusted_keys) | {k for k in [_own_signing_key(config)] if k}
    now = ledger.utcnow()
    lines = []
    for node in seen:
        mine = " (this node)" if node.name == this else ""
        text = nodes.describe(node, now).replace(node.name, node.name + mine, 1)
        status = WARN if nodes.state(node, now) == "silent" else OK
        if node.signing_key and node.signing_key not in trusted:
            status = WARN
            text += (f"; its signing key {node.signing_key} is not in [audit] trusted_keys: `audit verify` here "
                     "fails on its checkpoints")
        elif not node.signing_key:
            status = WARN
            text += "; its signing key could not be read: it signs no checkpoints"
        lines.append(Check("node", status, text))
    if not any(node.name == this for node in seen):
        lines.append(Check("node", OK, f"this node ({this}) has not run on this ledger yet"))
    return lines


# --- FreeSWITCH's inbound event socket --------------------------------------------------


class EslCheckError(Exception):
    """The event socket did not let us in; the message says why (never the password)."""


def esl_login(host: str, port: int, password: str, timeout: float = ESL_TIMEOUT) -> None:
    """Connect, answer ``auth/request`` with ``auth <password>``, expect ``+OK accepted``, ``exit``.

    Raises EslCheckError. The whole exchange must finish within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    where = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise EslCheckError(f"no connection to {where} within {timeout:g}s") from None
    except OSError as exc:
        raise EslCheckError(f"cannot connect to {where}: {exc.strerror or exc} "
                            "(is mod_event_socket listening there?)") from None
    parser, backlog = esl.FrameParser(), []

    def receive(waiting_for: str) -> esl.Message:
        while not backlog:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EslCheckError(f"{where} sent no {waiting_for} within {timeout:g}s")
            sock.settimeout(remaining)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise EslCheckError(f"{where} sent no {waiting_for} within {timeout:g}s") from None
            if not data:
                raise EslCheckError(f"{where} closed the connection before its {waiting_for}")
            try:
                backlog.extend(parser.feed(data))
            except esl.ProtocolError as exc:
                raise EslCheckError(f"{where} does not speak the event socket protocol ({exc})") from None
        return backlog.pop(0)

    try:
        greeting = receive("auth/request")
        if greeting.content_type != "auth/request":  # text/rude-rejection: not in apply-inbound-acl
            raise EslCheckError(f"{where} greeted with {greeting.content_type or 'no Content-Type'!r}, "
                                "not auth/request: not FreeSWITCH's inbound event socket?")
        sock.sendall(esl.encode_command(f"auth {password}"))
        reply = receive("reply to auth")
        text = reply.reply_text or ""
        if text.startswith("-ERR"):
            raise EslCheckError(f"{where} rejected the password ([freeswitch] password) ({text})")
        if reply.content_type != "command/reply" or not text.startswith("+OK"):
            raise EslCheckError(f"{where} answered auth with {text or reply.content_type!r}")
        sock.sendall(esl.encode_command("exit"))
        try:  # FreeSWITCH says "+OK bye" and closes; we are done either way
            receive("reply to exit")
        except EslCheckError:
            pass
    except OSError as exc:
        raise EslCheckError(f"connection to {where} failed: {exc.strerror or exc}") from None
    finally:
        sock.close()


def check_freeswitch(config, timeout: float = ESL_TIMEOUT) -> Check:
    fs = config.freeswitch
    if fs.inbound is None:
        return Check("freeswitch", OK, "[freeswitch] inbound is not set: the event socket is not checked")
    if fs.password is None:
        return Check("freeswitch", FAIL, f"[freeswitch] inbound is {fs.inbound} but password is not set: "
                                         "set it to event_socket.conf.xml's password")
    try:
        esl_login(fs.inbound.host, fs.inbound.port, fs.password, timeout)
    except EslCheckError as exc:
        return Check("freeswitch", FAIL, str(exc))
    return Check("freeswitch", OK, f"the inbound event socket at {fs.inbound} accepted the password")


# --- all of them -------------------------------------------------------------------------

CHECKS: list[tuple[str, Callable[[object], Check | None]]] = [
    ("config", check_config),
    ("config", check_config_mode),
    ("keys", check_keys_dir),
    ("keys", check_identity),
    ("keys", check_recipients),
    ("keys", check_field_key),
    ("keys", check_signing_key),
    ("data-dir", check_data_dir),
    ("store", check_store),
    ("spool", check_spool),
    ("spool", check_spool_memory),
    ("disk", check_free_space),
    ("database", check_database),
    ("node", check_nodes),
    ("freeswitch", check_freeswitch),
]


def run_checks(config_path: Path | None = None, data_dir: Path | None = None, *,
               env: Mapping[str, str] = os.environ) -> Iterator[Check]:
    """Every check in order. A configuration that does not load is the only line."""
    try:
        config = load_config(config_path, data_dir=data_dir, env=env)
    except ConfigError as exc:
        yield Check("config", FAIL, str(exc))
        return
    for name, check in CHECKS:
        try:
            result = check(config)
        except Exception as exc:  # noqa: BLE001 - a check that cannot run proves nothing: a failure
            result = Check(name, FAIL, f"could not run: {type(exc).__name__}: {_first_line(exc)}")
        if isinstance(result, list):  # a line for each of several things (the nodes)
            yield from result
        elif result is not None:
            yield result
