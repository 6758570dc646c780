"""Input that can never be right is refused before the token is asked (issue 12, items 6, 8, 9 and 12).

- A current PIN that cannot be the token's (outside its length bounds, not printable ASCII, not UTF-8) is refused
  by the command (exit 2, nothing tried) and by the console's forms, on real SoftHSM2 tokens and on openCryptoki's
  soft token, which really counts tries: `pkcs11-tool -L`'s flags and a right PIN that still works are the
  witnesses. No message tells anything about what was typed (no byte, position or length).
- PINs typed at a real terminal (a pty that is the command's controlling terminal): no echo, invalid UTF-8
  refused cleanly, Ctrl+D and Ctrl+C.
- The settings file: /dev/zero, a FIFO, a directory, an oversize file, deep nesting, an unknown language; `--help`
  and `--version` always work, every other command reports `config-broken`. The real command, with a timeout.
- re-enrol checks first: no subject and no certificate to take one from, files to import or write; a finished
  re-enrolment is not continued.
- Exit status 3 for a fault of the tool; `scan --report` that cannot be written keeps the findings' status.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import select
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from core import audit, enrol
from core.policy import current_pin_fits, pin_length_bounds
from tests import ock
from tests.tokens import SO_PIN, SOFTHSM_MODULE, USER_PIN, SoftHSM
from tests.tui_helpers import run
from tui import cli
from tui.app import HelpdeskApp
from tui.screens.pin_form import ActionScreen

REPO = Path(__file__).resolve().parent.parent
NEW_PIN = "Bayterek7x"
TIMEOUT = 120  # a guard against a hang (the FIFO case), never a measure


def run_command(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command in a session of its own (no controlling terminal)."""
    done = subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        input=stdin,
        capture_output=True,
        env=env or os.environ.copy(),
        cwd=REPO,
        timeout=TIMEOUT,
        start_new_session=True,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")
    )


def so_pin_works(softhsm: SoftHSM, serial: str, pin: str) -> bool:
    args = ("--login", "--login-type", "so", "--so-pin", pin, "--change-pin", "--new-pin", pin)
    return softhsm.tool(serial, *args, check=False).returncode == 0


def user_pin_works(softhsm: SoftHSM, serial: str, pin: str) -> bool:
    return softhsm.tool(serial, "--login", "--pin", pin, "-O", check=False).returncode == 0


def says_nothing_of_the_input(text: str, *typed: str) -> None:
    assert "Traceback" not in text
    assert "0x" not in text and "position" not in text and "byte" not in text
    for value in typed:
        assert value not in text


# --- the rule (core.policy) ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pin", "bounds", "fits"),
    [
        ("Kazt0ken", (4, 8), True),
        ("Kazt0ken1", (4, 8), False),  # longer than the token allows
        ("abc", (4, 8), False),
        ("with space~!", (4, 255), True),  # every printable ASCII character may be in a PIN
        ("Пароль12", (4, 255), False),
        ("Abc\x1b[2J9", (4, 255), False),
        ("Abcd\ufffd9", (4, 255), False),  # what errors="replace" would have made of a stray byte
        ("Abcd\udcff9", (4, 255), False),  # what surrogateescape would have made of it
        ("", (None, None), False),
        ("x" * 300, (None, None), True),  # no bounds known: the token judges the length
        ("Kazt0ken1", (0, 0), True),  # a token's nonsense bounds are not believed
        ("Kazt0ken1", (8, 4), True),
        ("Kazt0ken1", (4, 2**64 - 1), True),  # CK_UNAVAILABLE_INFORMATION
    ],
)
def test_which_pins_can_be_a_tokens(pin: str, bounds: tuple[int | None, int | None], fits: bool) -> None:
    assert current_pin_fits(pin, min_length=bounds[0], max_length=bounds[1]) is fits


def test_length_bounds_are_believed_only_when_plausible() -> None:
    assert pin_length_bounds(4, 255) == (4, 255)
    assert pin_length_bounds(None, 8) == (None, 8)
    assert pin_length_bounds(9, 8) == (None, None)
    assert pin_length_bounds(-1, 2**32 - 1) == (None, None)


# --- the command on SoftHSM2 --------------------------------------------------------------------------------------

LONG_ADMIN_PIN = "Adm1n" * 60  # 300 characters, over SoftHSM2's 255


@pytest.mark.parametrize(
    ("args", "stdin", "said", "typed"),
    [
        (["unblock"], f"{LONG_ADMIN_PIN}\n{NEW_PIN}\n{NEW_PIN}\n".encode(), "This cannot be the admin PIN", "Adm1n"),
        (["change-pin", "--role", "admin"], f"Пароль12\n{NEW_PIN}\n{NEW_PIN}\n".encode(), "cannot be", "Пароль"),
        (["change-pin"], f"Abc\x1b[2J9\n{NEW_PIN}\n{NEW_PIN}\n".encode(), "cannot be the current user PIN", "Abc"),
        (["format", "--confirm", "IVANOV"], b"8765\xff321\n", "not valid UTF-8", "8765"),
        (["personalise", "--label", "PETROV"], b"87654321\xfe\n" + f"{NEW_PIN}\n{NEW_PIN}\n".encode(), "UTF-8", ""),
    ],
    ids=["too-long", "cyrillic", "escape", "not-utf8", "not-utf8-personalise"],
)
def test_a_pin_that_cannot_be_the_tokens_spends_no_try(
    softhsm: SoftHSM, args: list[str], stdin: bytes, said: str, typed: str
) -> None:
    serial = softhsm.init_token("IVANOV")
    command, *rest = args
    done = run_command(command, "--serial", serial, *rest, "--pin-stdin", "--module", SOFTHSM_MODULE, stdin=stdin)
    assert done.returncode == cli.EXIT_BAD_INPUT, done.stdout + done.stderr
    assert said in done.stderr and ("Nothing was sent" in done.stderr or "nothing was tried" in done.stderr)
    says_nothing_of_the_input(done.stdout + done.stderr, *([typed] if typed else []), "300", "\x1b")
    flags = softhsm.token_flags(serial).lower()
    assert "count low" not in flags and "final" not in flags and "locked" not in flags, flags
    assert so_pin_works(softhsm, serial, SO_PIN) and user_pin_works(softhsm, serial, USER_PIN)
    for entry in audit.read():  # the length check is core's: its refusal is on record, and says nothing more
        assert entry.outcome not in ("done", "wrong-pin") and not re.search(r"\d", entry.reason or ""), entry


# --- PINs typed at a real terminal --------------------------------------------------------------------------------


class Terminal:
    """The command on a pty that is its controlling terminal, as at an SSH session."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.master, self.slave = os.openpty()
        self.output = b""

        def controlling_terminal() -> None:  # runs in the child, after setsid (start_new_session)
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.process = subprocess.Popen(
            [sys.executable, "-m", "tui.cli", *args],
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            cwd=REPO,
            env=env,
            start_new_session=True,
            preexec_fn=controlling_terminal,  # no threads of ours run here
        )

    def _read(self, wait: float) -> bool:
        ready, _w, _x = select.select([self.master], [], [], wait)
        if not ready:
            return False
        with contextlib.suppress(OSError):
            self.output += os.read(self.master, 65536)
        return True

    def expect(self, text: str) -> None:
        while text.encode() not in self.output:
            assert self.process.poll() is None or self._read(0), self.output.decode("utf-8", "replace")
            self._read(1.0)

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def finish(self) -> tuple[int, str, bool]:
        """(exit status, everything shown, whether the echo is on again)."""
        code = self.process.wait(timeout=TIMEOUT)
        while self._read(0.1):
            pass
        echo = bool(termios.tcgetattr(self.slave)[3] & termios.ECHO)
        os.close(self.slave)
        os.close(self.master)
        return code, self.output.decode("utf-8", "replace"), echo


@pytest.fixture
def terminal_env(softhsm: SoftHSM) -> dict[str, str]:
    return {**softhsm.env, "TERM": "dumb"}


def test_pins_typed_at_the_terminal_are_not_echoed(softhsm: SoftHSM, terminal_env: dict[str, str]) -> None:
    serial = softhsm.init_token("IVANOV")
    term = Terminal("change-pin", "--serial", serial, "--module", SOFTHSM_MODULE, env=terminal_env)
    for prompt, pin in (("Current user PIN: ", USER_PIN), ("New user PIN: ", NEW_PIN), ("again: ", NEW_PIN)):
        term.expect(prompt)
        term.type(pin.encode() + b"\n")
    code, shown, echo = term.finish()
    assert code == cli.EXIT_DONE, shown
    assert USER_PIN not in shown and NEW_PIN not in shown and echo
    assert user_pin_works(softhsm, serial, NEW_PIN)


@pytest.mark.parametrize(
    ("typed", "code", "said"),
    [
        (b"Ab9\xff\xfeXyzq\n", cli.EXIT_BAD_INPUT, "not valid UTF-8"),  # the issue's "byte 0xff in position 7"
        (b"\x04", cli.EXIT_BAD_INPUT, "Cancelled"),  # Ctrl+D
        (b"Ab9\x03", cli.EXIT_INTERRUPTED, ""),  # Ctrl+C halfway
    ],
    ids=["not-utf8", "ctrl-d", "ctrl-c"],
)
def test_odd_terminal_input_is_refused_and_the_echo_comes_back(
    softhsm: SoftHSM, terminal_env: dict[str, str], typed: bytes, code: int, said: str
) -> None:
    serial = softhsm.init_token("IVANOV")
    term = Terminal("change-pin", "--serial", serial, "--module", SOFTHSM_MODULE, env=terminal_env)
    term.expect("Current user PIN: ")
    term.type(typed)
    got, shown, echo = term.finish()
    assert got == code, shown
    assert said in shown and echo
    says_nothing_of_the_input(shown, "Ab9", "Xyzq")
    assert "count low" not in softhsm.token_flags(serial).lower()


# --- the console's forms ------------------------------------------------------------------------------------------


def _status(screen: ActionScreen) -> str:
    return str(screen.query_one("#status").render())


@pytest.mark.parametrize(
    ("key", "fields", "field"),
    [
        ("c", {"current_pin": "Пароль12", "new_pin": NEW_PIN, "new_pin_again": NEW_PIN}, "current_pin"),
        ("u", {"admin_pin": LONG_ADMIN_PIN, "new_pin": NEW_PIN, "new_pin_again": NEW_PIN}, "admin_pin"),
        ("f", {"confirmation": "IVANOV", "admin_pin": "876\t54321"}, "admin_pin"),
    ],
    ids=["change-pin", "unblock", "format"],
)
def test_the_console_refuses_it_on_the_field(softhsm: SoftHSM, key: str, fields: dict[str, str], field: str) -> None:
    serial = softhsm.init_token("IVANOV")

    async def scenario() -> None:
        from tests.test_tui_actions import open_action  # the dashboard → action screen path those tests use

        app = HelpdeskApp([SOFTHSM_MODULE], poll_seconds=0)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_action(pilot, serial, key)
            for field_id, value in fields.items():
                screen.query_one(f"#{field_id}", Input).value = value
            screen.inputs()[-1].focus()
            await pilot.press("enter")
            await pilot.pause()
            assert screen.result is None and not screen.working  # nothing went to the token
            assert "cannot be the" in _status(screen) and "no try was spent" in _status(screen)
            assert screen.focused is screen.query_one(f"#{field}", Input)
            says_nothing_of_the_input(_status(screen), "300", "Пароль")

    run(scenario())
    assert not audit.read()
    assert "count low" not in softhsm.token_flags(serial).lower()
    assert so_pin_works(softhsm, serial, SO_PIN) and user_pin_works(softhsm, serial, USER_PIN)


# --- openCryptoki, which counts -----------------------------------------------------------------------------------


@pytest.fixture
def ock_token() -> Iterator[str]:
    """openCryptoki's soft token, personalised (SO PIN ock.SO_PIN, user PIN ock.USER_PIN, 4..8 characters)."""
    reason = ock.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with ock.exclusive_here():
        try:
            ock.factory_reset()
            ock.personalise()
        except (ock.OckError, OSError, subprocess.SubprocessError) as error:
            pytest.skip(f"openCryptoki's soft token cannot be used here: {error}")
        try:
            serial = re.search(r"serial num\s+:\s+(\S+)", ock.listed().text).group(1)
            yield serial
        finally:
            ock.factory_reset()


def test_opencryptoki_spends_no_try_on_a_pin_that_cannot_be_its(ock_token: str) -> None:
    module = ("--module", ock.OCK_MODULE, "--pin-stdin")
    cases = [  # each would reach C_Login without the check: 8 bytes, or over openCryptoki's 8
        (["unblock"], f"{ock.SO_PIN}9\nVorota7x\nVorota7x\n".encode()),
        (["change-pin", "--role", "admin"], "112233ä\nVorota7x\nVorota7x\n".encode()),
        (["change-pin"], b"1234567\xff\nVorota7x\nVorota7x\n"),
        (["change-pin"], b"123\n" + b"Vorota7x\nVorota7x\n"),  # under its 4
    ]
    for args, stdin in cases:
        done = run_command(args[0], "--serial", ock_token, *args[1:], *module, stdin=stdin)
        assert done.returncode == cli.EXIT_BAD_INPUT, done.stdout + done.stderr
        says_nothing_of_the_input(done.stdout + done.stderr, "112233", "1234567")
    flags = ock.listed().flags
    assert not {"user PIN count low", "SO PIN count low", "final user PIN try", "final SO PIN try"} & flags, flags
    # And the right PINs still work at the first go (a count left low would show above).
    assert ock.so_login(ock.SO_PIN) == "CKR_OK" and ock.user_login(ock.USER_PIN) == "CKR_OK"


# --- the settings file --------------------------------------------------------------------------------------------


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


SETTINGS: dict[str, Any] = {
    "dev-zero": lambda tmp: Path("/dev/zero"),
    "fifo": lambda tmp: _fifo(tmp / "config.toml"),
    "directory": lambda tmp: tmp,
    "oversize": lambda tmp: _write(tmp / "config.toml", "# " + "x" * (64 * 1024) + "\n"),
    "nested": lambda tmp: _write(tmp / "config.toml", "modules = " + "[" * 5000 + "]" * 5000 + "\n"),
    "nested-tables": lambda tmp: _write(tmp / "config.toml", "x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n"),
    "not-utf8": lambda tmp: _write_bytes(tmp / "config.toml", b'language = "\xff"\n'),
    "unknown-language": lambda tmp: _write(tmp / "config.toml", 'language = "xx"\n'),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(SETTINGS))
def test_a_bad_settings_file_never_stops_the_command(tmp_path: Path, case: str) -> None:
    env = {**os.environ, "KAZTOKEN_HELPDESK_CONFIG": str(SETTINGS[case](tmp_path))}
    version = run_command("--version", env=env)
    assert version.returncode == 0 and "kaztoken-helpdesk" in version.stdout, version.stderr
    helped = run_command("--help", env=env)
    assert helped.returncode == 0 and "usage" in helped.stdout, helped.stderr
    scanned = run_command("scan", "--json", "--module", str(tmp_path / "no-such-library.so"), env=env)
    assert "Traceback" not in scanned.stderr and "RecursionError" not in scanned.stderr
    document = json.loads(scanned.stdout)
    assert document["config"]["error"], document["config"]
    assert "config-broken" in [finding["code"] for finding in document["findings"]]
    if case == "unknown-language":
        assert "'language'" in document["config"]["error"]
    if case in ("dev-zero", "fifo", "directory"):
        assert document["config"]["error"] == "not a regular file"
    if case == "oversize":
        assert "64 KiB" in document["config"]["error"]


def test_a_good_settings_file_still_sets_the_language(tmp_path: Path) -> None:
    config = _write(tmp_path / "config.toml", 'language = "ru"\n')
    env = {**os.environ, "KAZTOKEN_HELPDESK_CONFIG": str(config)}
    scanned = run_command("scan", "--module", str(tmp_path / "no-such-library.so"), env=env)
    assert re.search("[А-Яа-я]", scanned.stdout), scanned.stdout


# --- re-enrol checks first ----------------------------------------------------------------------------------------


def re_enrol(softhsm: SoftHSM, *args: str, stdin: str = USER_PIN + "\n") -> subprocess.CompletedProcess[str]:
    return run_command(
        "re-enrol", "--module", SOFTHSM_MODULE, "--pin-stdin", *args, stdin=stdin.encode(), env=softhsm.env
    )


def objects(softhsm: SoftHSM, serial: str) -> list[str]:
    listing = softhsm.tool(serial, "--login", "--pin", USER_PIN, "--list-objects").stdout
    return re.findall(r"^(Certificate|Private Key|Public Key) Object", listing, flags=re.M)


def steps_on_record(serial: str) -> list[str]:
    return [entry.reason or "" for entry in reversed(audit.read()) if entry.serial == serial]


def test_re_enrol_without_a_subject_makes_no_key_pair(softhsm: SoftHSM, tmp_path: Path) -> None:
    serial = softhsm.init_token("EMPTY")  # no certificate to take the subject from
    done = re_enrol(softhsm, "--serial", serial, "--csr-out", str(tmp_path / "req.pem"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--subject" in done.stderr
    assert objects(softhsm, serial) == []
    assert not enrol.pending_path(serial).exists() and not (tmp_path / "req.pem").exists()
    assert steps_on_record(serial) == ["login"]  # only the look; no keygen
    assert "registration-unfinished" not in run_command("scan", "--module", SOFTHSM_MODULE, env=softhsm.env).stdout


@pytest.mark.parametrize("case", ["directory", "fifo", "garbage", "dev-zero", "csr-out-under-a-file"])
def test_re_enrol_checks_its_files_before_the_token(softhsm: SoftHSM, tmp_path: Path, case: str) -> None:
    serial = softhsm.init_token("IVANOV")
    softhsm.profile(serial, "01", common_name="Ivanov Ivan")
    if case == "csr-out-under-a-file":
        _write(tmp_path / "file", "")
        args = ["--csr-out", str(tmp_path / "file" / "req.pem")]
    else:
        source = {
            "directory": lambda: tmp_path,
            "fifo": lambda: _fifo(tmp_path / "answer.p7b"),
            "garbage": lambda: _write(tmp_path / "answer.cer", "garbage"),
            "dev-zero": lambda: Path("/dev/zero"),
        }[case]()
        args = ["--import", str(source)]
    done = re_enrol(softhsm, "--serial", serial, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert steps_on_record(serial) == []  # not even a login
    assert objects(softhsm, serial).count("Private Key") == 1


def test_a_finished_re_enrolment_is_not_continued(softhsm: SoftHSM, tmp_path: Path) -> None:
    serial = softhsm.init_token("IVANOV")
    softhsm.profile(serial, "01", common_name="Ivanov Ivan")
    ca = ("--training-ca", "--training-ca-dir", str(tmp_path / "ca"))
    first = re_enrol(softhsm, "--serial", serial, *ca)
    assert first.returncode == 0, first.stdout + first.stderr
    after_first = sorted(objects(softhsm, serial))
    assert after_first.count("Certificate") == 2

    again = re_enrol(softhsm, "--serial", serial, *ca)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "is finished" in again.stdout and "--remove-old" in again.stdout
    assert sorted(objects(softhsm, serial)) == after_first  # no second key pair, no second certificate
    csr = re_enrol(softhsm, "--serial", serial, "--csr-out", str(tmp_path / "req.pem"))
    assert csr.returncode == 1 and not (tmp_path / "req.pem").exists()
    assert steps_on_record(serial).count("keygen") == 1

    removed = re_enrol(softhsm, "--serial", serial, *ca, "--remove-old", "--yes")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert sorted(objects(softhsm, serial)) == ["Certificate", "Private Key", "Public Key"]
    assert not enrol.pending_path(serial).exists()


# --- exit status ----------------------------------------------------------------------------------------------------


def test_a_report_that_cannot_be_written_keeps_the_findings_status(softhsm: SoftHSM, tmp_path: Path) -> None:
    module = ("--module", SOFTHSM_MODULE)
    no_token = run_command("scan", *module, "--report", str(tmp_path), env=softhsm.env)  # a directory
    assert no_token.returncode == cli.EXIT_FAILED, no_token.stderr  # no-token is an error: 1 wins
    assert "Could not write the report" in no_token.stderr and "no-token" in no_token.stdout

    softhsm.init_token("IVANOV")
    healthy = run_command("scan", *module, "--report", str(tmp_path), env=softhsm.env)
    assert healthy.returncode == cli.EXIT_BAD_INPUT, healthy.stdout + healthy.stderr
    assert "Could not write the report" in healthy.stderr
    written = run_command("scan", *module, "--report", str(tmp_path / "r.md"), env=softhsm.env)
    assert written.returncode == cli.EXIT_DONE and (tmp_path / "r.md").exists()


def test_a_fault_of_the_tool_exits_3_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.scan

    def broken(*_args: Any, **_kwargs: Any) -> None:
        "Abc\xff".encode("ascii")  # a codec's message names a character and its position

    monkeypatch.setattr(core.scan, "scan", broken)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code = cli.main(["scan", "--module", SOFTHSM_MODULE])
    _out, err = capsys.readouterr()
    assert code == cli.EXIT_TOOL_FAILED == 3
    assert err.count("\n") == 1 and "UnicodeEncodeError" in err
    says_nothing_of_the_input(err, "Abc")


def test_a_console_crash_is_one_line_without_the_locals(capfd: pytest.CaptureFixture[str]) -> None:
    """Textual's own crash report is a traceback with the locals, where a typed PIN may be: never shown."""
    from tests.tui_helpers import fixed_app

    app = fixed_app(poll_seconds=0)

    async def scenario() -> None:
        async with app.run_test(size=(80, 24)) as pilot:

            def fault() -> None:
                typed_pin = USER_PIN  # a local, as in a form's handler
                raise RuntimeError("kaput" if typed_pin else "")

            app.call_later(fault)
            await pilot.pause()

    with pytest.raises(RuntimeError):  # Pilot hands the app's exception on to the test
        run(scenario())
    err = capfd.readouterr().err
    assert "The console failed unexpectedly (RuntimeError): kaput." in err
    assert "Traceback" not in err and USER_PIN not in err and "typed_pin" not in err
    assert app._exception is not None  # what tui.app.run turns into exit status 3


def test_re_enrolment_refuses_it_too(softhsm: SoftHSM) -> None:
    """core.enrol's login (every step) and the re-enrolment screen: a user PIN that cannot be the token's."""
    from core.actions import Outcome
    from core.scan import Workstation
    from tests.test_enrol_tui import EnrolApp, scanned, type_into
    from tui.screens.re_enrol import ReEnrolScreen

    serial = softhsm.init_token("IVANOV")
    workstation = Workstation([SOFTHSM_MODULE])
    try:
        refused = enrol.inspect(workstation.modules, serial, pin="x" * 300)
        assert refused.outcome is Outcome.POLICY and refused.field == "pin"
        assert "Nothing was sent" in refused.message and "300" not in refused.message
        screen = ReEnrolScreen(scanned(workstation, serial), lambda: workstation.modules)

        async def scenario() -> None:
            app = EnrolApp(screen)
            async with app.run_test(size=(100, 40)) as pilot:
                await type_into(pilot, screen, "#pin", "Пароль12")
                await pilot.press("enter")
                await pilot.pause()
                assert "cannot be the user PIN" in screen.status_text and screen.last is None
                assert screen.focused is screen.query_one("#pin", Input)

        run(scenario())
    finally:
        workstation.close()
    outcomes = {entry.outcome for entry in audit.read()}
    assert "policy" in outcomes and not outcomes & {"done", "wrong-pin"}  # core's refusal; the screen sent nothing
    assert "count low" not in softhsm.token_flags(serial).lower() and user_pin_works(softhsm, serial, USER_PIN)
