"""Audit before acting (issue 12): an action whose attempt record cannot be written touches no token; an outcome
record that cannot be written is said loudly; the operator is the OS account; the reader survives any line.

The failing disks are real: a tiny tmpfs mounted in the test's own directory (full, or read-only), a directory
where the file should be, /dev/full. The token is a real SoftHSM2 token, checked afterwards with pkcs11-tool.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core import audit
from core.actions import Outcome
from tests.test_cli_actions import NEW_PIN, WRONG_PIN, lines, run_cli, user_pin_works
from tests.test_tui_actions import fill as fill_in
from tests.test_tui_actions import open_action, softhsm_app, status, submit
from tests.tokens import SO_PIN, USER_PIN, SoftHSM
from tests.tui_helpers import run
from tui import cli

PAGE = os.sysconf("SC_PAGE_SIZE")
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root and mount(8)"
)


def mount_tmpfs(where: Path, pages: int, *options: str) -> None:
    where.mkdir()
    size = f"size={pages * PAGE}"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join((size, *options)), "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of two pages at tmp_path/fs, unmounted at the end whatever happened."""
    where = tmp_path / "fs"
    mount_tmpfs(where, 2)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
        if os.path.ismount(where):
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> None:
    """Write a file until the filesystem says it is full."""
    with open(directory / "filler", "wb", buffering=0) as filler:
        chunk = b"\0" * PAGE
        while True:
            try:
                if filler.write(chunk) < len(chunk):
                    continue  # the next write says ENOSPC
            except OSError as error:
                assert error.errno == errno.ENOSPC
                return


def unblock(
    softhsm: SoftHSM, serial: str, audit_file: Path | str, admin_pin: str = SO_PIN, *extra: str
) -> subprocess.CompletedProcess[str]:
    os.environ[audit.AUDIT_ENV] = str(audit_file)  # restored by the monkeypatch of each test
    return run_cli("unblock", "--serial", serial, "--pin-stdin", *extra, stdin=lines(admin_pin, NEW_PIN, NEW_PIN))


def assert_untouched(softhsm: SoftHSM, serial: str) -> None:
    """pkcs11-tool's view: the user PIN is the old one, and no login (not even a wrong one) was tried."""
    assert "count low" not in softhsm.token_flags(serial)
    assert user_pin_works(softhsm, serial, USER_PIN)
    assert not user_pin_works(softhsm, serial, NEW_PIN)


def assert_refused(done: subprocess.CompletedProcess[str], path: Path | str) -> None:
    assert done.returncode == 1, done.stderr
    assert f"Cannot write the audit trail at {path}:" in done.stderr
    assert "Nothing was changed." in done.stderr
    assert "Traceback" not in done.stderr + done.stdout and "Unexpected error" not in done.stderr
    assert not done.stdout


# --- the attempt record cannot be written: nothing happens -----------------------------------------------------


@needs_root
@pytest.mark.parametrize("case", ["full", "read-only"])
def test_an_unwritable_audit_disk_refuses_the_action(
    softhsm: SoftHSM, tiny_fs: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    monkeypatch.setenv(audit.AUDIT_ENV, "")
    serial = softhsm.init_token("IVANOV")
    target = tiny_fs / "log" / "audit.jsonl"
    target.parent.mkdir()
    target.touch()
    if case == "full":
        fill(tiny_fs)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    # A wrong admin PIN would be seen (SO PIN count low) had any login been tried; the right one, had it acted.
    for admin_pin in (WRONG_PIN, SO_PIN):
        done = unblock(softhsm, serial, target, admin_pin)
        assert_refused(done, target)
        assert "No space left on device" in done.stderr if case == "full" else "Read-only" in done.stderr
    assert_untouched(softhsm, serial)
    assert target.read_bytes() == b""


@pytest.mark.parametrize("case", ["a directory", "/dev/full"])
def test_an_audit_path_that_is_no_file_refuses_the_action(
    softhsm: SoftHSM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    monkeypatch.setenv(audit.AUDIT_ENV, "")
    serial = softhsm.init_token("IVANOV")
    target = tmp_path if case == "a directory" else Path("/dev/full")
    for admin_pin in (WRONG_PIN, SO_PIN):
        assert_refused(unblock(softhsm, serial, target, admin_pin), target)
    assert_untouched(softhsm, serial)


def test_the_refusal_comes_before_any_other_check(softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-enrolment's steps share the frame: its login is refused too."""
    monkeypatch.setenv(audit.AUDIT_ENV, "/dev/full")
    serial = softhsm.init_token("IVANOV")
    done = run_cli("re-enrol", "--serial", serial, "--pin-stdin", "--training-ca", stdin=lines(WRONG_PIN))
    assert done.returncode == 1
    assert "Cannot write the audit trail at /dev/full" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert_untouched(softhsm, serial)


# --- the outcome record cannot be written: said loudly ---------------------------------------------------------


def room_for_the_attempt_only(fs: Path, serial: str) -> Path:
    """An audit file on the full `fs` whose last page has room for an unblock's attempt record and not for more
    (the attempt's length is known: fixed fields, an id and a time of fixed length)."""
    target = fs / "audit.jsonl"
    attempt = len(audit._line(audit.attempt("unblock", serial, role="admin")))
    room = 40  # after the attempt: far less than any outcome record
    target.write_bytes(b"#" * (PAGE - attempt - room - 1) + b"\n")
    fill(fs)
    return target


@needs_root
def test_an_outcome_that_cannot_be_recorded_is_said_loudly(
    softhsm: SoftHSM, tiny_fs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The disk has room for the attempt record and not for the outcome: the action happens, and says it is on
    no record. The audit file's last page is filled so that the attempt (whose length is known) just fits."""
    monkeypatch.setenv(audit.AUDIT_ENV, "")
    serial = softhsm.init_token("IVANOV")
    target = room_for_the_attempt_only(tiny_fs, serial)
    done = unblock(softhsm, serial, target)
    assert done.returncode == 0, done.stderr
    assert not done.stdout  # everything on stderr, where a script's operator looks for trouble
    assert "DONE, BUT NOT RECORDED: the audit trail at" in done.stderr and str(target) in done.stderr
    assert "No space left on device" in done.stderr
    assert "«PIN-код успешно разблокирован»" in done.stderr
    assert "Traceback" not in done.stderr and "Unexpected error" not in done.stderr
    assert user_pin_works(softhsm, serial, NEW_PIN)

    assert cli.main(["audit"]) == 0
    shown = capsys.readouterr().out  # the attempt stands alone: what a SIEM must see
    assert "no outcome recorded" in shown and serial in shown and "malformed" in shown
    (item, *rest) = audit.read(target)
    assert isinstance(item, audit.Malformed)  # the torn outcome line, after the attempt
    attempt_item = next(i for i in rest if isinstance(i, audit.AuditEntry))
    assert attempt_item.attempt_only and attempt_item.outcome is None and attempt_item.serial == serial
    text = target.read_text(errors="replace")
    assert NEW_PIN not in text and SO_PIN not in text


def test_attempt_and_outcome_share_an_id(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("IVANOV")
    done = run_cli("change-pin", "--serial", serial, "--pin-stdin", stdin=lines(USER_PIN, NEW_PIN, NEW_PIN))
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line) for line in audit.audit_path().read_text().splitlines())
    assert (first["record"], second["record"]) == ("attempt", "outcome")
    assert first["id"] == second["id"] and len(first["id"]) == 32
    assert "outcome" not in first and "label" not in first  # nothing known yet before the token is read
    assert second["outcome"] == "done"
    (entry,) = audit.read()
    assert entry.id == first["id"] and entry.outcome == "done"


def test_an_action_on_a_token_named_by_its_id_is_one_entry(softhsm: SoftHSM) -> None:
    """The attempt names the token as the operator did (its id); the outcome by its serial: still one action."""
    serial = softhsm.init_token("IVANOV")
    (token,) = json.loads(run_cli("scan", "--json").stdout)["tokens"]
    done = run_cli("change-pin", "--token", token["token_id"], "--pin-stdin", stdin=lines(USER_PIN, NEW_PIN, NEW_PIN))
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line) for line in audit.audit_path().read_text().splitlines())
    assert (first["serial"], second["serial"]) == (token["token_id"], serial)
    (entry,) = audit.read()
    assert (entry.serial, entry.outcome, entry.id) == (serial, "done", first["id"])


@needs_root
def test_the_console_says_it_loudly_too(softhsm: SoftHSM, tiny_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serial = softhsm.init_token("IVANOV")
    monkeypatch.setenv(audit.AUDIT_ENV, str(room_for_the_attempt_only(tiny_fs, serial)))

    async def scenario() -> None:
        app = softhsm_app()
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_action(pilot, serial, "u")
            fill_in(screen, admin_pin=SO_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN)
            await submit(pilot, screen)
            assert screen.result is not None and screen.result.ok and not screen.result.recorded
            shown = status(screen)
            assert shown.startswith("✖ DONE, BUT NOT RECORDED: the audit trail at"), shown
            assert "«PIN-код успешно разблокирован»" in shown

    run(scenario())
    assert user_pin_works(softhsm, serial, NEW_PIN)


def test_the_console_refuses_when_the_audit_cannot_be_written(
    softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    serial = softhsm.init_token("IVANOV")
    monkeypatch.setenv(audit.AUDIT_ENV, "/dev/full")

    async def scenario() -> None:
        app = softhsm_app()
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_action(pilot, serial, "u")
            fill_in(screen, admin_pin=WRONG_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN)
            await submit(pilot, screen)
            assert screen.result is not None and screen.result.outcome is Outcome.REFUSED
            assert "Cannot write the audit trail at /dev/full: not a regular file. Nothing was changed." in status(
                screen
            )

    run(scenario())
    assert_untouched(softhsm, serial)


# --- the operator is the OS's, never the environment's ---------------------------------------------------------


def test_logname_does_not_change_the_operator(softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    for variable in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(variable, "someone")
    assert audit.operator() == me
    serial = softhsm.init_token("IVANOV")
    done = run_cli("change-pin", "--serial", serial, "--pin-stdin", stdin=lines(USER_PIN, NEW_PIN, NEW_PIN))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in audit.audit_path().read_text().splitlines()]
    assert [record["operator"] for record in records] == [me, me]
    assert all(entry.operator == me for entry in audit.entries(audit.read()))


# --- reading a damaged or forged file --------------------------------------------------------------------------

SERIAL = "0A1B2C40"
GOOD = {
    "action": "unblock",
    "serial": SERIAL,
    "label": "IVANOV",
    "module": "/usr/lib/libkztpkcs11.so",
    "role": "admin",
    "time": "2025-01-02T03:04:05+00:00",
    "operator": "aigerim",
    "host": "branch-7",
}


def record(**changes: object) -> bytes:
    data = {**GOOD, "outcome": "done", **changes}
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode() + b"\n"


def damaged_file(path: Path) -> None:
    path.write_bytes(
        b"".join(
            (
                record(),  # 1: written before attempts were recorded (no id): an outcome of its own
                record(time=5),  # 2
                record(operator=None),  # 3: missing
                record(time="yesterday"),  # 4
                b"not json at all\n",  # 5
                b"\xff\xfe\x00\x1b[2J\x07 junk\n",  # 6
                b"[" * 50_000 + b"\n",  # 7: deep
                b"[1, 2]\n",  # 8
                record(tries_after=True),  # 9
                record(findings_after="user-pin-locked"),  # 10
                record(record="attempt", id="a" * 32, outcome=None),  # 11: its outcome follows
                record(record="attempt", id="b" * 32, outcome=None, serial="DEADBEEF"),  # 12: no outcome ever
                b"\n",  # blank: skipped
                record(record="outcome", id="a" * 32, outcome="wrong-pin"),  # 14
                record(record="verdict"),  # 15
                b"x" * (audit.MAX_LINE * 3),  # 16: huge, without an end of line
            )
        )
    )


def test_the_reader_shows_malformed_lines_as_such(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    damaged_file(path)
    items = audit.read(path)
    malformed = {item.line: item.why.english for item in items if isinstance(item, audit.Malformed)}
    assert malformed == {
        16: "the line is too long to be a record",
        15: "unknown kind of record",
        10: "the field findings_after is not a list of codes",
        9: "the field tries_after is not a whole number",
        8: "not a JSON object",
        7: "the line is not JSON",
        6: "the line is not UTF-8 text",
        5: "the line is not JSON",
        4: "its time is not a time",
        3: "the field operator is missing",
        2: "the field time is not text",
    }
    records = [item for item in items if isinstance(item, audit.AuditEntry)]
    assert [(r.serial, r.outcome, r.record) for r in records] == [
        (SERIAL, "wrong-pin", "outcome"),  # the pair, shown once, as its outcome
        ("DEADBEEF", None, "attempt"),  # the attempt that never ended
        (SERIAL, "done", "outcome"),
    ]
    assert len(audit.read(path, limit=3)) == 3


def test_the_audit_command_on_a_damaged_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    damaged_file(path)
    os.environ[audit.AUDIT_ENV] = str(path)
    try:
        assert cli.main(["audit"]) == 0
        text, err = capsys.readouterr()
        assert cli.main(["audit", "--json"]) == 0
        as_json, _err = capsys.readouterr()
        assert cli.main(["audit", "--serial", "DEADBEEF"]) == 0
        one, _err = capsys.readouterr()
    finally:
        del os.environ[audit.AUDIT_ENV]
    assert not err and "Traceback" not in text
    assert "line 2: the field time is not text" in text and "line 6: the line is not UTF-8 text" in text
    assert "no outcome recorded" in text and "aigerim@branch-7" in text
    assert "None" not in text and f"{datetime.now(UTC):%Y-%m-%d}" not in text  # nothing made up
    assert "\x1b" not in text and "\x07" not in text and len(text) < 10_000  # the junk itself is never shown
    documents = [json.loads(line) for line in as_json.splitlines()]
    assert sum(d["record"] == "malformed" for d in documents) == 11
    assert {"record": "malformed", "line": 2, "problem": "the field time is not text"} in documents
    assert {d.get("outcome") for d in documents if d["record"] != "malformed"} == {"done", "wrong-pin", None}
    assert "DEADBEEF" in one and SERIAL not in one and "malformed" in one


@pytest.mark.parametrize("path", ["/dev/zero", "fifo"])
def test_an_audit_file_that_is_no_file_is_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], path: str
) -> None:
    if path == "fifo":
        path = str(tmp_path / "fifo")
        os.mkfifo(path)  # nobody writes: reading it would hang
    os.environ[audit.AUDIT_ENV] = path
    try:
        assert cli.main(["audit"]) == 1
    finally:
        del os.environ[audit.AUDIT_ENV]
    out, err = capsys.readouterr()
    assert not out and f"Cannot read the audit trail at {path}: not a regular file." in err


def test_the_console_audit_screen_on_a_damaged_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from textual.widgets import DataTable

    from tests.tui_helpers import fixed_app, wait_for
    from tui.screens.audit import AuditScreen

    path = tmp_path / "audit.jsonl"
    damaged_file(path)
    monkeypatch.setenv(audit.AUDIT_ENV, str(path))

    async def scenario() -> None:
        app = fixed_app(poll_seconds=0)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.result is not None)
            await pilot.press("a")
            await wait_for(pilot, lambda: isinstance(app.screen, AuditScreen))
            table = app.screen.query_one(DataTable)
            assert table.row_count == 14
            rows = [[str(cell) for cell in table.get_row_at(index)] for index in range(table.row_count)]
            # Time, Outcome, Action, Token, Operator, Findings: the outcome second (what matters first at 80 columns)
            assert rows[0][1] == "✖ malformed" and [rows[0][i] for i in (0, 2, 3, 4)] == ["", "", "", ""]
            assert "line 16 of the file is malformed" in rows[0][5]
            unfinished = next(row for row in rows if "DEADBEEF" in row[3])
            assert unfinished[1] == "⚠ no outcome recorded"
            for index in range(table.row_count):  # every row's detail, malformed or not, without a crash
                table.move_cursor(row=index)
                await pilot.pause()
            detail = str(app.screen.query_one("#audit-detail").render())
            assert "Outcome" in detail and "None" not in detail

    run(scenario())
