"""Two nodes, one ledger: `fs-consent serve` processes with their own names, data dirs and keys.

The ledger is the test PostgreSQL (``FS_CONSENT_TEST_DATABASE``, a database per test) or,
without one, one SQLite file both nodes open. Real processes, real TCP, the emulator.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import gevent
import gevent.subprocess
import pytest

from fs_consent.emulator import CallerScript, FreeSwitchEmulator
from fs_consent.runtime.server import RESTART_HANGUP_CAUSE
from fs_consent.store import ledger
from fs_consent.store.connection import close_database, open_database

from .. import harness
from .test_e2e_process import free_port, wait_for

postgresql = pytest.mark.skipif(not harness.SERVER_URL, reason="FS_CONSENT_TEST_DATABASE not set")


class Node:
    """One fs-consent node: its config file ([server] node, its data dir, the shared database)."""

    def __init__(self, root: Path, name: str, database: str, *, trusted: tuple[str, ...] = ()):
        self.name, self.database, self.port = name, database, free_port()
        self.data = root / name
        self.data.mkdir(mode=0o700, parents=True)
        self.config = root / f"{name}.toml"
        self.env = {**os.environ, "HOME": str(root), "FS_CONSENT_CONFIG": str(self.config), "XDG_DATA_HOME": ""}
        self.env.pop("FS_CONSENT_DATA_DIR", None)
        self.proc = None
        self.write_config(trusted)

    def write_config(self, trusted: tuple[str, ...] = ()) -> None:
        keys = ", ".join(f'"{k}"' for k in trusted)
        self.config.write_text(textwrap.dedent(f"""\
            [server]
            node = "{self.name}"
            listen = "127.0.0.1:{self.port}"
            drain_seconds = "3s"
            [storage]
            data_dir = "{self.data}"
            database = "{self.database}"
            [audit]
            trusted_keys = [{keys}]
            """))

    def start(self) -> None:
        self.proc = gevent.subprocess.Popen([sys.executable, "-m", "fs_consent.cli", "serve"], env=self.env,
                                            stderr=subprocess.PIPE, text=True)
        said = []
        with gevent.Timeout(30, AssertionError(f"{self.name} did not start: {said}")):
            for line in self.proc.stderr:
                said.append(line)
                if "fs-consent listening on" in line:
                    gevent.spawn(self.proc.stderr.read)  # keep the pipe drained
                    return
        raise AssertionError(f"{self.name} exited: {''.join(said)}")

    def stop(self, sig=signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = gevent.subprocess.run([sys.executable, "-m", "fs_consent.cli", *args], env=self.env,
                                     capture_output=True, text=True, timeout=120)
        if check:
            assert done.returncode == 0, done.stdout + done.stderr
        return done

    def emulator(self) -> FreeSwitchEmulator:
        return FreeSwitchEmulator("127.0.0.1", self.port, spool_dir=self.data / "spool", time_scale=0.05)

    def calls(self) -> list[dict]:
        return json.loads(self.cli("calls", "list", "--format", "json").stdout)

    def signing_key(self) -> str:
        return self.cli("keys", "signing-key").stdout.strip()


@pytest.fixture
def cluster(tmp_path):
    """Two nodes on one ledger; yields (a, b); kills what a test left running."""
    database = harness.TestDatabase()
    url = database.url or f"sqlite:///{tmp_path / 'shared' / 'ledger.db'}"
    nodes = (Node(tmp_path, "node-a", url), Node(tmp_path, "node-b", url))
    try:
        yield nodes
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()
        close_database()
        database.drop()


def rows(node: Node, call_uuid: str) -> dict:
    (row,) = [c for c in node.calls() if c["uuid"] == call_uuid]
    return row


def test_a_node_starting_leaves_the_other_nodes_live_calls_and_settles_only_its_own(cluster):
    a, b = cluster
    a.start()
    live = gevent.spawn(a.emulator().place_call, CallerScript(digits=[None], talk_seconds=4.0,
                                                              caller_number="0612340101"), timeout=60)
    wait_for(lambda: any((a.data / "spool").iterdir()), timeout=20)  # granted, recording on node-a
    wait_for(lambda: [c["recording_state"] for c in a.calls()] == ["recording"], timeout=20)

    b.start()  # its start-up recovery runs while node-a's call is live
    (row,) = b.calls()
    assert (row["node"], row["ended_at"], row["recording_state"]) == ("node-a", None, "recording")

    result = live.get(timeout=60)
    assert result.errors == [] and result.channel_vars["fs_consent"] == "granted"
    wait_for(lambda: rows(b, result.uuid)["recording_state"] == "sealed", timeout=20)
    row = rows(b, result.uuid)
    assert row["outcome"] == "granted" and row["hangup_cause"] != RESTART_HANGUP_CAUSE
    (recording,) = json.loads(b.cli("recordings", "list", "--format", "json").stdout)
    assert recording["node"] == "node-a"

    # node-a dies with a caller in its prompt; node-b restarting does not end that call, node-a's restart does
    cut = gevent.spawn(a.emulator().place_call, CallerScript(digits=[None], prompt_seconds=30.0,
                                                             caller_number="0612340102"), timeout=60)
    wait_for(lambda: len(b.calls()) == 2, timeout=20)
    a.stop(signal.SIGKILL)
    cut.get(timeout=60)
    assert b.stop() == 0
    b.start()
    open_call = [c for c in b.calls() if c["uuid"] != result.uuid]
    assert [(c["node"], c["outcome"], c["ended_at"]) for c in open_call] == [("node-a", None, None)]
    a.start()
    ended = rows(a, open_call[0]["uuid"])
    assert (ended["outcome"], ended["decided_by"], ended["hangup_cause"]) == ("error", "restart",
                                                                                RESTART_HANGUP_CAUSE)

    took = b.emulator().place_call(CallerScript(digits=["1"], caller_number="0612340103"), timeout=30)
    assert took.errors == []
    wait_for(lambda: len(b.calls()) == 3, timeout=20)
    by_node = json.loads(a.cli("calls", "list", "--node", "node-b", "--format", "json").stdout)
    assert [c["uuid"] for c in by_node] == [took.uuid]
    assert "node-b" in b.cli("calls", "show", took.uuid).stdout

    check = a.cli("check", check=False).stdout
    (line_a,) = [line for line in check.splitlines() if "node-a (this node)" in line]
    assert line_a.split()[:2] == ["ok", "node"] and "running since" in line_a and "last seen" in line_a
    (line_b,) = [line for line in check.splitlines() if " node-b " in line]
    assert "running since" in line_b and "not in [audit] trusted_keys" in line_b  # a's config trusts no b key
    assert a.stop() == 0 and b.stop() == 0
    check = a.cli("check", check=False).stdout
    assert any("node-b" in line and "stopped cleanly" in line for line in check.splitlines()), check


def test_calls_on_both_nodes_at_once_make_one_audit_chain_that_verifies_with_both_keys(cluster):
    a, b = cluster
    a.start()
    b.start()
    calls = [gevent.spawn(node.emulator().place_call, CallerScript(digits=[digit], caller_number=f"06123402{n:02d}"),
                          timeout=60)
             for n, (node, digit) in enumerate([(a, None), (b, None), (a, "1"), (b, "1")] * 4)]
    gevent.joinall(calls, raise_error=True)
    assert all(c.value.errors == [] for c in calls)
    wait_for(lambda: len(a.calls()) == 16 and all(c["ended_at"] for c in a.calls()), timeout=30)
    assert {c["node"] for c in a.calls()} == {"node-a", "node-b"}
    assert a.stop() == 0 and b.stop() == 0

    open_database(a.database, migrate=False)
    forks = ledger.database.execute_sql(
        "SELECT prev_hash, COUNT(*) FROM audit_entry GROUP BY prev_hash HAVING COUNT(*) > 1").fetchall()
    assert forks == []
    close_database()

    untrusted = a.cli("audit", "verify", check=False)
    assert untrusted.returncode == 1
    assert f"signed by node node-b's key {b.signing_key()}, not a trusted key" in untrusted.stdout
    assert "[audit] trusted_keys" in untrusted.stdout

    a.write_config(trusted=(b.signing_key(),))
    verified = a.cli("audit", "verify", check=False)
    assert verified.returncode == 0, verified.stdout
    assert verified.stdout.startswith("OK: ") and "the whole trail is signed" in verified.stdout
    assert "stopped cleanly" in verified.stdout


APPEND = """\
import sys, time
from pathlib import Path
from fs_consent.secure import keys
from fs_consent.store import audit, ledger, nodes
from fs_consent.store.connection import open_database

url, name, keys_dir, count = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
keys.ensure_keys(keys_dir)
key = keys.load_signing_key(keys_dir)
open_database(url)
nodes.register(name, version="test", signing_key=keys.signing_public_key(key))
print("ready", flush=True)
sys.stdin.readline()
for n in range(count):
    ledger.append_audit("server", "test.append", "node", name, n=n)
    if n % 25 == 24:
        audit.write_checkpoint(key, "server", "manual", name)
audit.write_checkpoint(key, "server", "manual", name)
"""


def test_two_processes_appending_at_once_never_fork_the_chain_and_each_signs_with_its_own_key(cluster, tmp_path):
    a, b = cluster
    a.cli("keys", "init")  # node-a's keys; node-a's ledger is made by the first open below
    procs = [gevent.subprocess.Popen([sys.executable, "-c", APPEND, node.database, node.name,
                                      str(node.data / "keys"), "150"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for node in (a, b)]
    assert [p.stdout.readline() for p in procs] == ["ready\n", "ready\n"]
    for p in procs:  # off together
        p.stdin.write("go\n")
        p.stdin.flush()
    outcomes = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _out, err in outcomes]

    open_database(a.database, migrate=False)
    entries = ledger.database.execute_sql("SELECT COUNT(*) FROM audit_entry WHERE action = 'test.append'"
                                          ).fetchone()[0]
    forks = ledger.database.execute_sql(
        "SELECT prev_hash, COUNT(*) FROM audit_entry GROUP BY prev_hash HAVING COUNT(*) > 1").fetchall()
    signers = {k for (k,) in ledger.database.execute_sql("SELECT DISTINCT public_key FROM audit_checkpoint")}
    close_database()
    assert entries == 300 and forks == []
    assert signers == {a.signing_key(), b.signing_key()}

    a.write_config(trusted=(b.signing_key(),))
    verified = a.cli("audit", "verify", "--server-state", "stopped", check=False)
    assert verified.returncode == 0, verified.stdout
    assert "checkpoints valid" in verified.stdout

    a.write_config()
    refused = a.cli("audit", "verify", "--server-state", "stopped", check=False)
    assert refused.returncode == 1
    assert "checkpoint-untrusted" in refused.stdout
    assert f"is signed by node node-b's key {b.signing_key()}, not a trusted key" in refused.stdout


PURGE = """\
import datetime as dt, sys
from pathlib import Path
from fs_consent.privacy.retention import Purge, Terms, purge_lock
from fs_consent.secure.vault import Vault
from fs_consent.store.connection import open_database

url, data = sys.argv[1], Path(sys.argv[2])
open_database(url)
(data / "store").mkdir(parents=True, exist_ok=True)
(data / "spool").mkdir(parents=True, exist_ok=True)

def progress(n):
    print("purging", flush=True)
    sys.stdin.readline()  # held here, in the middle of the run, until the test lets go

with purge_lock(data):
    Purge(vault=Vault(data / "store", [], workers=0), spool_dir=data / "spool",
          terms=Terms(dt.timedelta(days=60), dt.timedelta(days=365)), actor="alice", node="node-a",
          progress=progress, pause=False).run()
print("done", flush=True)
"""


@postgresql
def test_one_purge_at_a_time_across_nodes_and_the_refusal_names_the_node_running_it(cluster):
    a, b = cluster
    a.cli("keys", "init")
    b.cli("keys", "init")
    open_database(a.database)
    old = ledger.utcnow() - dt.timedelta(days=90)
    call = ledger.Call.create(uuid="old-call", instance="f" * 32, started_at=old, ended_at=old, outcome="granted",
                              consent_mode="opt-out", language="nl", prompt_id="consent-nl", prompt_version="1",
                              node="node-a")
    recording = uuid.uuid4().hex
    ledger.Recording.create(id=recording, call=call, state=ledger.FAILED, started_at=old, node="node-a")
    close_database()

    running = gevent.subprocess.Popen([sys.executable, "-c", PURGE, a.database, str(a.data)], env=a.env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
    assert running.stdout.readline() == "purging\n", running.stderr.read()
    refused = b.cli("purge", check=False)  # node-b, its own data dir and lock file, the same ledger
    assert refused.returncode == 1
    assert "another purge is running (purge #1, started " in refused.stderr
    assert "by alice on node node-a)" in refused.stderr

    running.stdin.write("\n")
    running.stdin.flush()
    out, err = running.communicate(timeout=60)
    assert running.returncode == 0 and out.strip().endswith("done"), err
    after = b.cli("purge")
    assert after.stdout.startswith("purge #2 ")
    open_database(a.database, migrate=False)
    assert [(r.seq, r.status, r.node) for r in ledger.PurgeRun.select().order_by(ledger.PurgeRun.seq)] == [
        (1, "done", "node-a"), (2, "done", "node-b")]
    assert ledger.Recording.get_by_id(recording).state == ledger.DELETED
