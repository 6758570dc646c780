"""No PIN used by the tests appears in any file the app wrote: settings, reports, audit, locks, screenshots.

The check over the whole suite runs when the session ends (`pytest_sessionfinish` in conftest.py, which fails
the run and names the file). The tests here check the check itself, and scan what exists when they run.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from core import audit, logs, operator_lock
from core.actions import Outcome, Role, change_pin, unblock
from core.scan import Workstation
from tests import conftest
from tests.conftest import all_pins, app_written_files, literal_pins, pins_written, used_pin
from tests.tokens import SO_PIN, SOFTHSM_MODULE, USER_PIN, SoftHSM


def test_the_pins_looked_for() -> None:
    pins = all_pins()
    assert {USER_PIN, SO_PIN, "11223344", "23456789", "00000000"} <= set(pins)  # tokens.py, ock.py
    assert literal_pins()["Bayterek7x"].startswith("tests/test_cli_actions.py:")
    assert "0000000000000000" not in pins  # a serial, which the audit rightly holds
    assert not any("-" in pin for pin in literal_pins())  # key labels such as key-01 show in reports


def test_registered_pins_are_looked_for(request: pytest.FixtureRequest) -> None:
    pin = used_pin("Zh3ti-Su!")  # a hyphen: not picked up as a literal, so registered
    assert pin in all_pins()
    # The conftest pytest loaded (whose session hook does the final check) is the module the tests import.
    plugins = [
        p for p in request.config.pluginmanager.get_plugins() if getattr(p, "__file__", None) == conftest.__file__
    ]
    assert plugins == [conftest]


def test_no_pin_in_any_file_the_app_wrote_so_far(tmp_path_factory: pytest.TempPathFactory) -> None:
    leaks = pins_written(tmp_path_factory.getbasetemp())
    assert not leaks, "\n".join(f"{path}: the PIN from {origin}" for path, origin in leaks)


def test_the_check_reads_the_app_files_and_finds_a_pin(
    tmp_path_factory: pytest.TempPathFactory, isolated_user_dirs: Path
) -> None:
    basetemp = tmp_path_factory.getbasetemp()
    with operator_lock.holding("0123456789abcdef", "test"):  # a lock file in the session's lock dir
        pass
    log = audit.audit_path().parent / "leak.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    files = app_written_files(basetemp)
    assert any(path.parent.name == "locks" for path in files)
    assert any(path.parent.name == "screenshots" for path in files)
    try:
        for text in ('{"pin": "S3cret<&>x"}', "<text>S3cret&lt;&amp;&gt;x</text>", "typed S3cret<&>x\n"):
            log.write_text(text, encoding="utf-8")
            assert pins_written(basetemp, {"S3cret<&>x": "here"}) == [(log, "here")], text
        # Only a whole word counts: a serial made of zeros is not the PIN 00000000.
        log.write_text('{"serial": "0000000000000000"}')
        assert pins_written(basetemp, {"00000000": "here"}) == []
    finally:
        log.unlink()  # the session-end check must not find this planted one


def _derived(pin: str) -> set[str]:
    """A PIN and what could stand for it in a log: its encodings and common digests."""
    raw = pin.encode()
    return {
        pin,
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode(),
        hashlib.sha256(raw).hexdigest(),
        hashlib.sha1(raw).hexdigest(),
        hashlib.md5(raw).hexdigest(),
    }


def test_the_program_log_holds_no_pin(softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real actions on SoftHSM2, logged (core.logs) as the CLI and the console log them: the log tells the
    operation, the CKR names and the outcome, and holds no PIN nor anything derived from one, also when an
    unexpected error carries a PIN in its message."""
    serial = softhsm.init_token("IVANOV")
    wrong = used_pin("Lg-Wr0ng7x")  # a hyphen: registered for the session-end check too
    new_pin = "L0gNewPin"
    path = logs.setup()
    assert path is not None and path.parent == audit.audit_path().parent
    try:
        modules = Workstation([SOFTHSM_MODULE]).modules
        refused = change_pin(modules, serial, role=Role.USER, current_pin=wrong, new_pin=new_pin, new_pin_again=new_pin)
        assert refused.outcome is Outcome.WRONG_PIN, refused.message
        done = change_pin(modules, serial, role=Role.USER, current_pin=USER_PIN, new_pin=new_pin, new_pin_again=new_pin)
        assert done.ok, done.message

        def broken(*args: object) -> None:
            raise RuntimeError(f"the library choked on {args!r}")  # the PINs are in the message

        monkeypatch.setattr(modules[0].raw, "init_pin", broken)
        unblocked = "Unbl0ckKz"
        failed = unblock(modules, serial, admin_pin=SO_PIN, new_user_pin=unblocked, new_user_pin_again=unblocked)
        assert failed.outcome is Outcome.FAILED
    finally:
        logs.stop()
    text = path.read_text(encoding="utf-8")
    assert "start action=change-pin" in text and "outcome=wrong-pin" in text
    assert "C_Login CKU_USER -> CKR_PIN_INCORRECT" in text and "C_SetPIN -> CKR_OK" in text
    assert "outcome=done" in text
    assert "unexpected error action=unblock" in text and "builtins.RuntimeError" in text and "broken" in text
    assert "choked on (" not in text  # the message stays out: only the type and the frames
    for pin in (wrong, new_pin, unblocked, USER_PIN, SO_PIN):
        leaked = [form for form in _derived(pin) if form in text]
        assert not leaked, f"{pin!r} is in the log as {leaked}"


def test_the_front_ends_errors_reach_the_log_file_and_a_quiet_run_leaves_none() -> None:
    """tui's loggers write to the same file as core's; nothing logged, no file made (a scan leaves no trace)."""
    from tui.errors import log_unexpected

    path = logs.setup()
    try:
        assert not path.exists()
        typed = "".join(reversed("Kz9-quoted"))  # not in this file's source, which the frames show
        try:
            raise ValueError(f"what was typed: {typed}")
        except ValueError as error:
            log_unexpected(error, "a test")
    finally:
        logs.stop()
    text = path.read_text(encoding="utf-8")
    assert "unexpected ValueError in a test" in text and typed not in text
