"""The audit trail beyond this terminal, on real servers: a PostgreSQL cluster and an rsyslogd of the test's own
(tests/servers.py), real actions on SoftHSM2 tokens, and the sinks stopped in the middle of them.

What must hold: an action never waits on a sink and always completes; every record reaches every sink (at least
once) and the table holds it once; the table and the syslog receiver hold exactly the local file's records; no
PIN is in any of them; what comes back from the table is shown as hostile.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import audit, delivery
from core.actions import Outcome, Role, change_pin
from core.config import Config, load_config
from core.scan import Workstation
from core.sinks import SINKS_ENV, Journald, Record, SinkDown, parse_sink, remote_sinks, rfc5424, sink_names
from tests.conftest import all_pins, used_pin
from tests.servers import PG_BIN, PostgreSQL, Rsyslog, wait_for
from tests.tokens import SOFTHSM_MODULE, USER_PIN, SoftHSM

REPO = Path(__file__).resolve().parent.parent
PINS = [used_pin(pin) for pin in ("Kokshe7au", "Sary4rqa", "Ertis9ok", "Shu7river", "Ili8river")]
WRONG = used_pin("N0tTheP1n")

needs_postgresql = pytest.mark.skipif(not PG_BIN, reason="PostgreSQL (Debian's postgresql) is not installed")
needs_rsyslog = pytest.mark.skipif(not os.path.exists("/usr/sbin/rsyslogd"), reason="rsyslog is not installed")


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture
def postgresql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgreSQL]:
    pgpass = tmp_path / "pgpass"
    monkeypatch.setenv("PGPASSFILE", str(pgpass))  # the libpq way: the password is in no setting, no URL
    server = PostgreSQL(pgpass)
    try:
        server.start()
        server.create_database()
        yield server
    finally:
        server.close()


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path / "rsyslog")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "audit.jsonl"
    monkeypatch.setenv(audit.AUDIT_ENV, str(path))
    return path


def local_records(path: Path) -> dict[tuple[str, str], dict]:
    """(id, kind) → the record as the local file holds it."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        data = json.loads(line)
        out[(data["id"], data["record"])] = audit.AuditEntry.from_dict(data).to_dict()
    return out


def assert_no_pin(text: str, where: str) -> None:
    for pin, origin in all_pins().items():
        assert not re.search(rf"(?<![A-Za-z0-9]){re.escape(pin)}(?![A-Za-z0-9])", text), f"{origin} in {where}"


def change_pins(softhsm: SoftHSM, serial: str, pins: list[str], start: str) -> list[Outcome]:
    """Real actions through core.actions: the user PIN changed along `pins`, then one wrong PIN."""
    modules = Workstation([SOFTHSM_MODULE]).modules
    outcomes, current = [], start
    for pin in pins:
        result = change_pin(modules, serial, role=Role.USER, current_pin=current, new_pin=pin, new_pin_again=pin)
        outcomes.append(result.outcome)
        current = pin
    result = change_pin(modules, serial, role=Role.USER, current_pin=WRONG, new_pin=PINS[0], new_pin_again=PINS[0])
    outcomes.append(result.outcome)
    return outcomes


# --- settings ---------------------------------------------------------------------------------------------------


def test_sinks_from_the_settings_and_the_environment(tmp_path: Path) -> None:
    settings = tmp_path / "config.toml"
    settings.write_text('[audit]\nsinks = ["file", "syslog", "postgresql://db.bank.kz/audit"]\n')
    loaded = load_config(settings)
    assert loaded.error is None
    assert sink_names(loaded.config, {}) == ["file", "syslog", "postgresql://db.bank.kz/audit"]
    environ = {SINKS_ENV: "file, syslog+tcp://siem.bank.kz:6514 ,journald"}
    assert sink_names(loaded.config, environ) == ["file", "syslog+tcp://siem.bank.kz:6514", "journald"]
    assert sink_names(Config(), {}) == ["file"]  # the embedded default: the local file only
    settings.write_text('[audit]\nsinks = "syslog"\n')
    assert load_config(settings).error  # a broken setting is said (config-broken), the defaults used


def test_a_password_in_the_settings_is_refused_and_unknown_sinks_are_named() -> None:
    sinks, problems = remote_sinks(
        ["file", "postgresql://clerk:s3cret@db/audit", "postgresql://db/audit?password=x", "smoke-signals"]
    )
    assert sinks == []
    assert [problem.name for problem in problems] == [  # said on screen: the password is not
        "postgresql://clerk:***@db/audit",
        "postgresql://db/audit?password=***",
        "smoke-signals",
    ]
    assert "s3cret" not in str(problems[0])
    assert "PGPASSFILE" in str(problems[0].text)
    for bad in ("syslog+tcp://siem", "syslog+unix://relative"):
        _sinks, problems = remote_sinks([bad])
        assert problems, bad


def test_an_rfc5424_message_carries_the_record_and_nothing_raw() -> None:
    entry = audit.AuditEntry(action="unblock", serial="0a1b", outcome="done", label='Evil"]\x1b[2J\n', host="br 12")
    message = rfc5424(Record(entry.id, "outcome", entry, 0)).decode("utf-8")
    assert message.startswith("<85>1 ")  # authpriv.notice: a done outcome
    header, rest = message.split(" [", 1)
    assert header.split(" ")[2] == "br_12"  # a header field has no space
    assert "\x1b" not in message and "\n" not in message
    assert 'label="Evil\\"\\]\\\\x1b[2J\\\\n"' in rest  # visible(), then RFC 5424's escapes for " ] and \
    data = json.loads(rest.split("] ", 1)[1].split("] ", 1)[-1])
    assert data == {**entry.to_dict(), "id": entry.id}  # the message is the record, exactly
    named = audit.AuditEntry(action="unblock", serial="0a1b", outcome="done", label="ИВАНОВ")
    assert 'label="ИВАНОВ"' in rfc5424(Record(named.id, "outcome", named, 0)).decode("utf-8")  # RFC 5424: UTF-8


def test_journald_native_fields(tmp_path: Path) -> None:
    """The journal's native protocol, received on a datagram socket of the test's (no journald runs here)."""
    path = tmp_path / "journal.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        entry = audit.AuditEntry(action="format", serial="77", outcome="done", label="two\nlines")
        Journald("journald", str(path)).send([Record(entry.id, "outcome", entry, 0)])
        datagram = receiver.recv(65536)
    fields, rest = {}, datagram
    while rest:
        name, rest = rest.split(b"\n", 1)
        (size,) = struct.unpack("<Q", rest[:8])
        fields[name.decode()] = rest[8 : 8 + size].decode()
        rest = rest[9 + size :]
    assert fields["KAZTOKEN_LABEL"] == "two\nlines"
    assert fields["KAZTOKEN_ID"] == entry.id
    assert fields["SYSLOG_IDENTIFIER"] == "kaztoken-helpdesk"
    with pytest.raises(SinkDown):
        Journald("journald", str(tmp_path / "none")).send([Record(entry.id, "outcome", entry, 0)])


def test_the_console_courier_backs_off_from_a_sink_that_is_down(spool: Path, tmp_path: Path) -> None:
    audit.append(audit.attempt("unblock", "42"), spool)
    now = [0.0]
    courier = delivery.Courier(
        delivery.Plan(spool, [parse_sink(f"syslog+unix://{tmp_path}/nobody.sock")], []), clock=lambda: now[0]
    )
    assert courier.due()
    courier.tick()  # down: never raises
    assert courier.last[0].error and courier.last[0].pending == 1
    assert not courier.due()
    now[0] += delivery.Courier.RETRY_SECONDS[0]
    assert courier.due()


# --- PostgreSQL -------------------------------------------------------------------------------------------------


@needs_postgresql
def test_postgresql_down_in_the_middle_of_actions(
    softhsm: SoftHSM, spool: Path, postgresql: PostgreSQL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SINKS_ENV, f"file,{postgresql.url}")
    plan = delivery.Plan.configured(Config())
    serial = softhsm.init_token("BRANCH-7")

    assert change_pins(softhsm, serial, PINS[:1], USER_PIN) == [Outcome.DONE, Outcome.WRONG_PIN]
    [status] = delivery.deliver_quietly(Config())  # what the CLI does after an action
    assert status.delivered_now == 4 and status.pending == 0
    assert len(postgresql.rows()) == 4

    postgresql.stop()
    outcomes = change_pins(softhsm, serial, PINS[1:4], PINS[0])
    assert outcomes == [Outcome.DONE] * 3 + [Outcome.WRONG_PIN]  # the actions complete with the table gone
    [status] = delivery.flush(plan)
    assert status.delivered_now == 0 and status.pending == 8 and status.error
    [status] = delivery.pending(plan)
    assert status.pending == 8

    postgresql.start()
    [status] = delivery.flush(plan)
    assert (status.delivered_now, status.pending, status.error) == (8, 0, None)
    [status] = delivery.flush(plan)
    assert status.delivered_now == 0

    # A deliverer that died after the table took a batch but before its offset was saved sends it all again:
    # the table still holds each record once.
    delivery.state_path(spool).unlink()
    [status] = delivery.flush(plan)
    assert status.delivered_now == 12
    rows = postgresql.rows()
    assert len(rows) == 12
    assert {(id_, kind): record for id_, kind, record in rows} == local_records(spool)
    assert_no_pin(json.dumps(rows), "the PostgreSQL table")


@needs_postgresql
def test_audit_source_reads_the_shared_table_as_hostile(
    softhsm: SoftHSM, spool: Path, postgresql: PostgreSQL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SINKS_ENV, postgresql.url)
    serial = softhsm.init_token("BRANCH-9")
    change_pins(softhsm, serial, PINS[:1], USER_PIN)
    # A label read from a token may hold what PostgreSQL cannot store (NUL, a lone surrogate): kept as escapes.
    odd = audit.AuditEntry(action="format", serial="0DD", outcome="done", label="A\x00B\udcff\x1b[31mC")
    audit.append(odd, spool)
    [status] = delivery.flush(delivery.Plan.configured(Config()))
    assert status.delivered_now == 5 and status.error is None
    [odd_row] = [record for id_, _kind, record in postgresql.rows() if id_ == odd.id]
    assert odd_row["label"] == "A\\x00B\\udcff\x1b[31mC"
    import psycopg

    with psycopg.connect(postgresql.url) as conn:  # what another terminal (or anyone with the table) could write
        hostile = {
            "id": "f" * 32,
            "record": "outcome",
            "action": "format",
            "serial": "EVIL",
            "outcome": "done",
            "label": "\x1b]52;c;aGk=\x07\u202eOK",
            "time": "2026-12-01T10:00:00+00:00",
            "operator": "mallory",
            "host": "branch-66",
        }
        conn.execute(
            "INSERT INTO kaztoken_audit (id, kind, time, operator, host, action, serial, record) "
            "VALUES (%s, 'outcome', %s, 'mallory', 'branch-66', 'format', 'EVIL', %s)",
            (hostile["id"], hostile["time"], psycopg.types.json.Jsonb(hostile)),
        )
        conn.execute(
            "INSERT INTO kaztoken_audit (id, kind, time, operator, host, action, serial, record) "
            "VALUES ('bad', 'outcome', now(), 'mallory', 'branch-66', 'format', 'EVIL', '[1, 2]')"
        )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tui.cli", "audit", "--source", postgresql.url, *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=os.environ.copy(),
            timeout=120,
            check=False,
        )

    mine = cli("--serial", serial, "--json")
    assert mine.returncode == 0, mine.stderr
    actions = [json.loads(line) for line in mine.stdout.splitlines()]
    assert [(a["action"], a["outcome"]) for a in actions] == [("change-pin", "wrong-pin"), ("change-pin", "done")]
    shown = cli("--host", "branch-66")
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\u202e" not in shown.stdout
    assert "\\x1b]52;c;aGk=\\x07\\u202eOK" in shown.stdout
    assert "malformed" in shown.stdout
    odd_shown = cli("--serial", "0DD")
    assert "A\\x00B\\udcff\\x1b[31mC" in odd_shown.stdout and "\x1b" not in odd_shown.stdout
    since = cli("--operator", "mallory", "--since", "2026-12-01T11:00", "--json")
    assert [json.loads(line).get("record") for line in since.stdout.splitlines()] == ["malformed"]
    refused = cli("--json", "--host", "x")
    assert refused.returncode == 0
    down = subprocess.run(
        [sys.executable, "-m", "tui.cli", "audit", "--source", "postgresql://u:pw@127.0.0.1/x"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert down.returncode == 2 and "PGPASSFILE" in down.stderr
    assert "u:***@" in down.stderr and ":pw@" not in down.stderr
    alone = audit_cli("--host", "branch-66")
    assert alone.returncode == 2 and "--source" in alone.stderr


# --- syslog -----------------------------------------------------------------------------------------------------


def cli_change_pin(serial: str, current: str, new: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", "change-pin", "--serial", serial, "--pin-stdin", "--module", SOFTHSM_MODULE],
        input=f"{current}\n{new}\n{new}\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        env=os.environ.copy(),
        timeout=120,
        start_new_session=True,
        check=False,
    )


def audit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", "audit", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=os.environ.copy(),
        timeout=120,
        check=False,
    )


def received(rsyslog: Rsyslog) -> dict[str, dict[tuple[str, str], dict]]:
    """input (imtcp, imuxsock) → (id, kind) → the record as received; a record received twice fails."""
    out: dict[str, dict[tuple[str, str], dict]] = {}
    for fields in rsyslog.lines():
        source, kind, _host, app, structured, message = fields
        data = json.loads(message)
        key = (data["id"], data["record"])
        assert key not in out.setdefault(source, {}), f"{key} received twice by {source}"
        assert kind == data["record"] and app == "kaztoken-helpdesk"
        assert f'id="{data["id"]}"' in structured
        out[source][key] = data
    return out


@needs_rsyslog
def test_syslog_receiver_down_in_the_middle_of_cli_actions(
    softhsm: SoftHSM, spool: Path, rsyslog: Rsyslog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SINKS_ENV, f"file,{rsyslog.tcp},{rsyslog.unix}")
    serial = softhsm.init_token("BRANCH-3")

    done = cli_change_pin(serial, USER_PIN, PINS[0])
    assert done.returncode == 0, done.stderr  # and the command delivered after the action
    wait_for(lambda: len(rsyslog.lines()) == 4, "the first action at the receiver")

    rsyslog.stop()
    for current, new in ((PINS[0], PINS[1]), (PINS[1], PINS[2]), (WRONG, PINS[3])):
        result = cli_change_pin(serial, current, new)
        assert result.returncode == (1 if current == WRONG else 0), result.stderr  # completes, receiver gone
    pending = audit_cli("--pending", "--json")
    assert [json.loads(line)["pending"] for line in pending.stdout.splitlines()] == [6, 6]
    text = audit_cli("--pending")
    assert "6 not received yet" in text.stdout
    flushed = audit_cli("--flush")
    assert flushed.returncode == 1 and "down:" in flushed.stdout

    rsyslog.start()
    flushed = audit_cli("--flush", "--json")
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr
    assert [json.loads(line)["delivered_now"] for line in flushed.stdout.splitlines()] == [6, 6]
    assert audit_cli("--flush", "--json").stdout.count('"delivered_now": 0') == 2
    local = local_records(spool)
    wait_for(lambda: len(rsyslog.lines()) == 2 * len(local), "every record at the receiver, over TCP and the socket")
    assert received(rsyslog) == {"imtcp": local, "imuxsock": local}
    assert_no_pin(rsyslog.out.read_text(encoding="utf-8"), "the syslog receiver's file")


# --- the console ------------------------------------------------------------------------------------------------


@needs_rsyslog
def test_the_console_delivers_in_the_background(spool: Path, rsyslog: Rsyslog, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records written while the console runs reach the receiver with nobody asking (its poll, a worker thread)."""
    from tests.tui_helpers import fixed_app, run
    from tests.tui_helpers import wait_for as ui_wait_for

    monkeypatch.setenv(SINKS_ENV, rsyslog.tcp)
    first = audit.attempt("unblock", "0a0a", role="user")
    audit.append(first, spool)

    async def scenario() -> None:
        app = fixed_app(poll_seconds=0.05)
        async with app.run_test() as pilot:
            await ui_wait_for(pilot, lambda: len(rsyslog.lines()) == 1, timeout=60)
            audit.append(audit.AuditEntry(action="unblock", serial="0a0a", outcome="done", id=first.id), spool)
            app._courier._next = 0  # the next poll, not the idle pause: what is tested is who delivers
            await ui_wait_for(pilot, lambda: len(rsyslog.lines()) == 2, timeout=60)

    run(scenario())
    assert received(rsyslog) == {"imtcp": local_records(spool)}


def test_a_hostile_state_file_means_from_the_start(spool: Path, tmp_path: Path) -> None:
    """The offsets are a convenience: anything odd in their file (a FIFO, junk, a negative offset) sends again
    from the start, which PostgreSQL stores once and syslog carries with the id. It never hangs, never skips."""
    audit.append(audit.attempt("unblock", "42"), spool)
    plan = delivery.Plan(spool, [parse_sink(f"syslog+unix://{tmp_path}/nobody.sock")], [])
    state = delivery.state_path(spool)
    os.mkfifo(state)
    assert delivery.pending(plan)[0].pending == 1
    state.unlink()
    for junk in (b"\x00\xff", b"[]", b'{"file": null, "sinks": {"x": {"offset": -5}}}'):
        state.write_bytes(junk)
        assert delivery.pending(plan)[0].pending == 1


@needs_rsyslog
def test_two_deliverers_at_once_and_a_rotated_file_send_each_record_once(
    spool: Path, rsyslog: Rsyslog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consoles sharing one audit file flush it at the same moment: the delivery lock lets one send, the other
    finds nothing left. The sinks come from the settings file here (no environment override)."""
    settings = tmp_path / "config.toml"
    settings.write_text(f'[audit]\nsinks = ["file", "{rsyslog.tcp}"]\n')
    monkeypatch.setenv("KAZTOKEN_HELPDESK_CONFIG", str(settings))
    for number in range(300):
        audit.append(audit.attempt("unblock", f"{number:04d}", role="user"), spool)
    flushers = [
        subprocess.Popen(
            [sys.executable, "-m", "tui.cli", "audit", "--flush", "--json"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=os.environ.copy(),
        )
        for _ in range(3)
    ]
    outputs = [flusher.communicate(timeout=120)[0] for flusher in flushers]
    assert sorted(json.loads(out)["delivered_now"] for out in outputs) == [0, 0, 300]
    wait_for(lambda: len(rsyslog.lines()) == 300, "300 records at the receiver")

    # The file is rotated (logrotate: renamed, a new one started): the new file is a new spool, sent from its start.
    spool.rename(spool.with_suffix(".jsonl.1"))
    audit.append(audit.attempt("format", "0NEW", role="admin"), spool)
    assert json.loads(audit_cli("--flush", "--json").stdout)["delivered_now"] == 1
    wait_for(lambda: len(rsyslog.lines()) == 301, "the rotated file's record")
    assert len(received(rsyslog)["imtcp"]) == 301


def test_a_full_syslog_socket_takes_part_of_a_batch_and_gets_the_rest_later(
    spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver that stops reading: its socket queue fills, the send times out mid-batch. The records it took
    are not sent again, the rest are, later: each arrives once."""
    monkeypatch.setattr("core.sinks.TIMEOUT", 0.2)
    path = tmp_path / "slow.sock"
    total = 60  # more than a socket queues (net.unix.max_dgram_qlen, 10 by default), fewer than a batch
    for number in range(total):
        audit.append(audit.attempt("unblock", f"{number:04d}"), spool)
    plan = delivery.Plan(spool, [parse_sink(f"syslog+unix://{path}")], [])
    got: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.setblocking(False)
        while True:
            [status] = delivery.flush(plan)
            while True:  # the receiver catches up with what its queue holds
                try:
                    got.append(receiver.recv(65536))
                except BlockingIOError:
                    break
            if status.pending == 0:
                break
            assert status.error and 0 < status.delivered_now < total  # part taken, not all, not none
    ids = [re.search(rb' id="([0-9a-f]+)"', datagram).group(1).decode() for datagram in got]
    assert sorted(ids) == sorted(key for key, _kind in local_records(spool))
