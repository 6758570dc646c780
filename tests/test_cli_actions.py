"""The four actions through the `kaztoken-helpdesk` command on real SoftHSM2 tokens, checked with OpenSC's
pkcs11-tool; every bad input; the audit command; the operator lock and the keyring from the command line.

End-to-end cases run the real command in a process of its own, with no controlling terminal (so nothing can
hang on a prompt) and the PINs piped in with --pin-stdin. Bad-input cases that need no second process call
`tui.cli.main` here with standard input replaced: the same code from argument parsing to exit status.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core import admin_pins, audit
from tests.conftest import MemoryKeyring, used_pin
from tests.tokens import SO_PIN, SOFTHSM_MODULE, USER_PIN, SoftHSM
from tui import cli, pin_input

REPO = Path(__file__).resolve().parent.parent
NEW_PIN = used_pin("Bayterek7x")
OTHER_PIN = used_pin("Qarag4ndy")
NEW_ADMIN_PIN = used_pin("Shymk3nt")
WRONG_PIN = used_pin("Wr0ngP1n")
MODULE = ("--module", SOFTHSM_MODULE)


# --- helpers ---------------------------------------------------------------------------------------------------


def lines(*pins: str) -> str:
    return "".join(f"{pin}\n" for pin in pins)


def run_cli(*args: str, stdin: str | bytes = "") -> subprocess.CompletedProcess[str]:
    """The real command in its own session: no controlling terminal, like a script under cron."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    done = subprocess.run(
        [sys.executable, "-m", "tui.cli", *args, *MODULE],
        input=data,
        capture_output=True,
        env=os.environ.copy(),
        cwd=REPO,
        timeout=60,
        start_new_session=True,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")
    )


def call_main(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str, stdin: str = ""
) -> tuple[int, str, str]:
    """`tui.cli.main` in this process with this standard input: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main([*args, *MODULE] if args[0] in cli.ACTIONS else list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_no_pin(text: str, *pins: str) -> None:
    for pin in {*pins, USER_PIN, SO_PIN, NEW_PIN, OTHER_PIN, NEW_ADMIN_PIN, WRONG_PIN} - {""}:
        assert pin not in text, "a PIN was printed"
    assert "Traceback" not in text


def user_pin_works(softhsm: SoftHSM, serial: str, pin: str) -> bool:
    return softhsm.tool(serial, "--login", "--pin", pin, "-O", check=False).returncode == 0


def so_pin_works(softhsm: SoftHSM, serial: str, pin: str) -> bool:
    # An SO login needs a read-write session; a PIN "change" to the same PIN is the harmless way to ask for one.
    args = ("--login", "--login-type", "so", "--so-pin", pin, "--change-pin", "--new-pin", pin)
    return softhsm.tool(serial, *args, check=False).returncode == 0


def token_label(softhsm: SoftHSM, serial: str) -> str:
    out = softhsm.tool(serial, "-L").stdout
    block = next(b for b in re.split(r"^Slot ", out, flags=re.M) if re.search(rf"serial num\s+:\s+{serial}\b", b))
    return re.search(r"token label\s+:[ \t]*(.*)", block).group(1).strip()


def objects(softhsm: SoftHSM, serial: str, pin: str) -> str:
    return softhsm.tool(serial, "--login", "--pin", pin, "-O").stdout


# --- each action, end to end -----------------------------------------------------------------------------------


def test_personalise_sets_name_and_user_pin(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("OLDNAME")
    done = run_cli(
        "personalise", "--serial", serial, "--label", "IVANOV", "--pin-stdin", stdin=lines(SO_PIN, *[NEW_PIN] * 2)
    )
    assert done.returncode == 0, done.stderr
    assert "Token personalised as «IVANOV»" in done.stdout
    assert "factory default" in done.stdout  # the admin PIN is still 87654321: said, as a warning
    assert "Admin PIN: before ok; after ok." in done.stdout
    assert "[profile-empty]" in done.stdout  # the findings after
    assert_no_pin(done.stdout + done.stderr)
    assert token_label(softhsm, serial) == "IVANOV"
    assert user_pin_works(softhsm, serial, NEW_PIN)
    assert not user_pin_works(softhsm, serial, USER_PIN)


def test_personalise_with_a_new_admin_pin(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("")
    stdin = lines(SO_PIN, NEW_ADMIN_PIN, NEW_ADMIN_PIN, NEW_PIN, NEW_PIN)
    done = run_cli(
        "personalise", "--serial", serial, "--label", "PETROV_2", "--new-admin-pin", "--pin-stdin", stdin=stdin
    )
    assert done.returncode == 0, done.stderr
    assert "factory default" not in done.stdout
    assert token_label(softhsm, serial) == "PETROV_2"
    assert so_pin_works(softhsm, serial, NEW_ADMIN_PIN)
    assert not so_pin_works(softhsm, serial, SO_PIN)
    assert user_pin_works(softhsm, serial, NEW_PIN)


def test_personalise_refuses_a_token_holding_keys(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("IVANOV")
    softhsm.generate_key(serial, "01")
    done = run_cli(
        "personalise", "--serial", serial, "--label", "OTHER", "--pin-stdin", stdin=lines(SO_PIN, *[NEW_PIN] * 2)
    )
    assert done.returncode == 1
    assert "holds keys or certificates" in done.stderr and not done.stdout
    assert token_label(softhsm, serial) == "IVANOV"
    assert "key-01" in objects(softhsm, serial, USER_PIN)


@pytest.mark.parametrize(
    ("role", "current", "check"), [("user", USER_PIN, user_pin_works), ("admin", SO_PIN, so_pin_works)]
)
def test_change_pin(softhsm: SoftHSM, role: str, current: str, check) -> None:
    serial = softhsm.init_token("IVANOV")
    done = run_cli(
        "change-pin", "--serial", serial, "--role", role, "--pin-stdin", stdin=lines(current, *[NEW_PIN] * 2)
    )
    assert done.returncode == 0, done.stderr
    assert f"The {role} PIN has been changed." in done.stdout
    assert_no_pin(done.stdout + done.stderr)
    assert check(softhsm, serial, NEW_PIN)
    assert not check(softhsm, serial, current)


def test_unblock_after_wrong_user_pins(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("IVANOV")
    softhsm.fail_login(serial)
    softhsm.fail_login(serial)
    assert "user pin count low" in softhsm.token_flags(serial).lower()
    done = run_cli("unblock", "--serial", serial, "--pin-stdin", stdin=lines(SO_PIN, NEW_PIN, NEW_PIN))
    assert done.returncode == 0, done.stderr
    assert "«PIN-код успешно разблокирован»" in done.stdout
    assert "count low" not in softhsm.token_flags(serial).lower()
    assert user_pin_works(softhsm, serial, NEW_PIN)
    assert not user_pin_works(softhsm, serial, USER_PIN)


def test_format_is_refused_during_an_unfinished_registration(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("IVANOV")
    softhsm.generate_key(serial, "0a")  # a key without its certificate
    done = run_cli("format", "--serial", serial, "--confirm", "IVANOV", "--pin-stdin", stdin=lines(SO_PIN))
    assert done.returncode == 1
    assert "registration is unfinished" in done.stderr
    assert "key-0a" in objects(softhsm, serial, USER_PIN)


def test_format_is_refused_with_a_wrong_confirmation(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("IVANOV")
    done = run_cli("format", "--serial", serial, "--confirm", "PETROV", "--pin-stdin", stdin=lines(SO_PIN))
    assert done.returncode == 1
    assert "To confirm, type the token's name or its serial exactly" in done.stderr
    assert token_label(softhsm, serial) == "IVANOV"
    assert "count low" not in softhsm.token_flags(serial).lower()  # the admin PIN was not even tried


def test_format_empties_the_token(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("IVANOV", pin=NEW_PIN)
    softhsm.generate_key(serial, "01", pin=NEW_PIN)
    softhsm.write_certificate(serial, _certificate_for(softhsm, serial), "01", pin=NEW_PIN)
    done = run_cli("format", "--serial", serial, "--confirm", "IVANOV", "--pin-stdin", stdin=lines(SO_PIN))
    assert done.returncode == 0, done.stderr
    assert "Token formatted" in done.stdout
    assert token_label(softhsm, serial) == ""
    assert user_pin_works(softhsm, serial, USER_PIN)  # the factory user PIN, as from new
    assert not user_pin_works(softhsm, serial, NEW_PIN)
    assert "Object" not in objects(softhsm, serial, USER_PIN)


def _certificate_for(softhsm: SoftHSM, serial: str):
    from tests.tokens import issue_certificate

    return issue_certificate(softhsm.public_key(serial, "01"), common_name="Иванов Иван", days_valid=365)


def test_format_by_serial_without_a_terminal_needs_confirm(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("")
    done = run_cli("format", "--serial", serial, "--pin-stdin", stdin=lines(SO_PIN))
    assert done.returncode == 2
    assert "give it with --confirm" in done.stderr
    done = run_cli("format", "--serial", serial, "--confirm", serial, "--pin-stdin", stdin=lines(SO_PIN))
    assert done.returncode == 0, done.stderr


def test_no_terminal_and_no_pin_stdin_is_a_usage_error(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("IVANOV")
    done = run_cli("unblock", "--serial", serial, stdin=lines(SO_PIN, NEW_PIN, NEW_PIN))
    assert done.returncode == 2
    assert "--pin-stdin" in done.stderr  # never read from standard input with the echo on instead
    assert user_pin_works(softhsm, serial, USER_PIN)


# --- every rule and every bad input ----------------------------------------------------------------------------

RULE_TEXT = {
    "length": "at least 8 characters",
    "ascii": "Latin letters, digits and signs only",
    "upper": "an upper-case Latin letter",
    "lower": "a lower-case Latin letter",
    "no-run": "no runs like 123 or abc",
    "max-length": "no longer than the token allows",
    "match": "both entries match",
}
LONG_PIN = used_pin("Ab9x" * 1024)  # 4 KiB on one line


@pytest.mark.parametrize(
    ("command", "pins", "rules"),
    [
        ("unblock", ["", ""], ["length", "upper", "lower", "match"]),
        ("unblock", [used_pin("Ab9x"), "Ab9x"], ["length"]),
        ("unblock", [used_pin("Pass123word"), "Pass123word"], ["no-run"]),
        ("unblock", [used_pin("Xyzabcq9Q"), "Xyzabcq9Q"], ["no-run"]),  # xyz and abc
        ("unblock", [used_pin("Qz678Qzqz"), "Qz678Qzqz"], ["no-run"]),
        ("unblock", [used_pin("alllower9x"), "alllower9x"], ["upper"]),
        ("unblock", [used_pin("ALLUPPER9X"), "ALLUPPER9X"], ["lower"]),
        ("unblock", [NEW_PIN, OTHER_PIN], ["match"]),
        ("unblock", [used_pin("Пароль9Ab"), "Пароль9Ab"], ["ascii"]),
        ("unblock", [LONG_PIN, LONG_PIN], ["max-length"]),
        ("change-pin", [NEW_PIN, OTHER_PIN], ["match"]),
        ("change-pin", [used_pin("Ab9x"), "Ab9x"], ["length"]),
        ("personalise", [NEW_PIN, OTHER_PIN], ["match"]),
        ("personalise", [used_pin("Pass123word"), "Pass123word"], ["no-run"]),
    ],
)
def test_a_new_pin_against_the_rules_is_refused_and_nothing_tried(
    softhsm: SoftHSM,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    pins: list[str],
    rules: list[str],
) -> None:
    serial = softhsm.init_token("IVANOV")
    first = USER_PIN if command == "change-pin" else SO_PIN
    extra = ["--label", "PETROV"] if command == "personalise" else []
    code, out, err = call_main(
        capsys, monkeypatch, command, "--serial", serial, *extra, "--pin-stdin", stdin=lines(first, *pins)
    )
    assert code == 2, err
    assert not out
    shown = {rule for rule, text in RULE_TEXT.items() if f"✖ {text}" in err}
    assert shown == set(rules), err
    assert_no_pin(err, *pins)
    assert "count low" not in softhsm.token_flags(serial).lower()  # no PIN try was spent
    assert user_pin_works(softhsm, serial, USER_PIN) and token_label(softhsm, serial) == "IVANOV"


@pytest.mark.parametrize(
    ("label", "rule"),
    [("", "a token name is needed"), ("Иванов", "Latin letters, digits, - and _ only"), ("A" * 33, "at most 32")],
)
def test_a_token_name_against_the_rules(
    softhsm: SoftHSM, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, label: str, rule: str
) -> None:
    serial = softhsm.init_token("IVANOV")
    stdin = lines(SO_PIN, NEW_PIN, NEW_PIN)
    code, _out, err = call_main(
        capsys, monkeypatch, "personalise", "--serial", serial, "--label", label, "--pin-stdin", stdin=stdin
    )
    assert code == 2
    assert "The token name does not meet the rules." in err and rule in err
    assert token_label(softhsm, serial) == "IVANOV"


def test_a_new_admin_pin_against_the_rules(
    softhsm: SoftHSM, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    serial = softhsm.init_token("IVANOV")
    stdin = lines(SO_PIN, NEW_ADMIN_PIN, OTHER_PIN, NEW_PIN, NEW_PIN)
    args = ("personalise", "--serial", serial, "--label", "PETROV", "--new-admin-pin", "--pin-stdin")
    code, _out, err = call_main(capsys, monkeypatch, *args, stdin=stdin)
    assert code == 2
    assert "The new admin PIN does not meet the rules." in err and "✖ both entries match" in err
    assert so_pin_works(softhsm, serial, SO_PIN)


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["unblock"], lines(SO_PIN), "Expected 3 PIN lines on standard input, got 1."),
        (["unblock"], "", "Expected 3 PIN lines on standard input, got 0."),
        (["personalise", "--label", "X", "--new-admin-pin"], lines(SO_PIN, NEW_PIN), "Expected 5 PIN lines"),
        (["change-pin"], lines(USER_PIN, NEW_PIN), "Expected 3 PIN lines on standard input, got 2."),
        (["format", "--confirm", "IVANOV"], "", "Expected 1 PIN lines on standard input, got 0."),
        (["unblock"], lines("", NEW_PIN, NEW_PIN), "The admin PIN is empty: nothing was tried."),
        (["format", "--confirm", "IVANOV"], "\n", "The admin PIN is empty: nothing was tried."),
        (["change-pin"], lines("", NEW_PIN, NEW_PIN), "The current user PIN is empty: nothing was tried."),
        (["change-pin"], lines(USER_PIN, USER_PIN, USER_PIN), "The new PIN is the same as the current one."),
    ],
)
def test_missing_or_empty_input_is_a_usage_error(
    softhsm: SoftHSM,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    stdin: str,
    message: str,
) -> None:
    serial = softhsm.init_token("IVANOV", pin=USER_PIN)
    if args[0] == "change-pin" and USER_PIN in stdin.split("\n")[1:]:
        # the same-PIN case needs a current PIN that meets the rules
        softhsm.tool(serial, "--login", "--pin", USER_PIN, "--change-pin", "--new-pin", NEW_PIN)
        stdin = lines(NEW_PIN, NEW_PIN, NEW_PIN)
    command, *rest = args
    code, out, err = call_main(capsys, monkeypatch, command, "--serial", serial, *rest, "--pin-stdin", stdin=stdin)
    assert code == 2
    assert message in err and not out
    assert_no_pin(err)
    assert "count low" not in softhsm.token_flags(serial).lower()


@pytest.mark.parametrize(
    ("args", "first", "message", "flag"),
    [
        (["unblock"], WRONG_PIN, "Wrong admin PIN.", "so pin count low"),
        (["change-pin"], WRONG_PIN, "Wrong user PIN.", "user pin count low"),
        (["change-pin", "--role", "admin"], WRONG_PIN, "Wrong admin PIN.", "so pin count low"),
        (["personalise", "--label", "PETROV"], WRONG_PIN, "Wrong admin PIN.", "so pin count low"),
    ],
)
def test_a_wrong_pin_spends_a_try_and_says_so(
    softhsm: SoftHSM,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    first: str,
    message: str,
    flag: str,
) -> None:
    serial = softhsm.init_token("IVANOV")
    command, *rest = args
    stdin = lines(first, NEW_PIN, NEW_PIN)
    code, out, err = call_main(capsys, monkeypatch, command, "--serial", serial, *rest, "--pin-stdin", stdin=stdin)
    assert code == 1
    assert err.startswith(message) and not out
    assert "before ok; after wrong PIN entered recently." in err
    assert_no_pin(err, first)
    assert flag in softhsm.token_flags(serial).lower()
    assert token_label(softhsm, serial) == "IVANOV"
    assert user_pin_works(softhsm, serial, USER_PIN)


@pytest.mark.parametrize(
    ("stdin", "said"),
    [
        (lines(SO_PIN, "Пароль9Ab", "Пароль9Ab").encode(), "The new user PIN does not meet the rules."),
        (lines(SO_PIN, LONG_PIN, LONG_PIN).encode(), "The new user PIN does not meet the rules."),
        (  # not UTF-8, and Windows line ends
            SO_PIN.encode() + b"\nAb9\xff\xfeXyzq\r\nAb9\xff\xfeXyzq\r\n",
            "A PIN read is not valid UTF-8 text",
        ),
    ],
    ids=["cyrillic", "4KiB", "not-utf8"],
)
def test_odd_bytes_on_standard_input_are_refused_cleanly(softhsm: SoftHSM, stdin: bytes, said: str) -> None:
    serial = softhsm.init_token("IVANOV")
    done = run_cli("unblock", "--serial", serial, "--pin-stdin", stdin=stdin)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr
    assert "0xff" not in done.stderr and "position" not in done.stderr
    assert_no_pin(done.stdout + done.stderr, "Пароль9Ab", LONG_PIN[:16], "Xyzq")
    assert "count low" not in softhsm.token_flags(serial).lower()


def test_pins_are_never_options_or_environment() -> None:
    """No option takes a PIN value: only flags and --serial/--label/--confirm/--role/--module take one."""
    parser = cli._parser()
    subparsers = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    for name in cli.ACTIONS:
        for action in subparsers.choices[name]._actions:
            takes_value = action.nargs != 0
            if takes_value and action.option_strings:
                assert not any("pin" in option for option in action.option_strings), action.option_strings
    for module in (cli, pin_input):
        source = Path(module.__file__).read_text()
        assert "os.environ" not in source and "getenv" not in source, f"{module.__name__} reads the environment"


# --- the terminal: prompts in the stdin order, no echo, Ctrl+C -------------------------------------------------


def test_terminal_prompts_come_in_the_documented_order(
    softhsm: SoftHSM, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    serial = softhsm.init_token("IVANOV")
    answers = iter([SO_PIN, NEW_ADMIN_PIN, NEW_ADMIN_PIN, NEW_PIN, NEW_PIN])
    prompts: list[str] = []
    monkeypatch.setattr(pin_input, "has_terminal", lambda: True)
    monkeypatch.setattr(pin_input, "_read_hidden", lambda prompt: prompts.append(prompt) or next(answers))
    code, _out, err = call_main(
        capsys, monkeypatch, "personalise", "--serial", serial, "--label", "PETROV", "--new-admin-pin"
    )
    assert code == 0, err
    assert prompts == [
        "Admin PIN: ",
        "New admin PIN: ",
        "New admin PIN again: ",
        "New user PIN: ",
        "New user PIN again: ",
    ]
    assert user_pin_works(softhsm, serial, NEW_PIN) and so_pin_works(softhsm, serial, NEW_ADMIN_PIN)


def test_ctrl_c_at_a_prompt(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """(Ctrl+D, and Ctrl+C on a real terminal: tests/test_input_checks.py.)"""

    def interrupted(prompt: str) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(pin_input, "has_terminal", lambda: True)
    monkeypatch.setattr(pin_input, "_read_hidden", interrupted)
    got, _out, err = call_main(capsys, monkeypatch, "change-pin", "--serial", "0000000000000001")
    assert got == cli.EXIT_INTERRUPTED
    assert "Traceback" not in err


def test_an_unexpected_error_is_one_line_without_the_pin(
    softhsm: SoftHSM, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.actions

    def broken(*_args: object, **kwargs: object) -> None:
        raise RuntimeError(f"driver fault near {kwargs['admin_pin']} and {kwargs['new_user_pin']}")

    monkeypatch.setattr(core.actions, "unblock", broken)
    serial = softhsm.init_token("IVANOV")
    code, out, err = call_main(
        capsys, monkeypatch, "unblock", "--serial", serial, "--pin-stdin", stdin=lines(SO_PIN, NEW_PIN, NEW_PIN)
    )
    assert code == cli.EXIT_TOOL_FAILED == 3 and not out
    assert err.count("\n") == 1 and err.startswith("Unexpected error (RuntimeError): driver fault near *** and ***")
    assert_no_pin(err)


# --- not found, busy ------------------------------------------------------------------------------------------


def test_no_such_token(softhsm: SoftHSM, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    softhsm.init_token("IVANOV")
    code, _out, err = call_main(
        capsys,
        monkeypatch,
        "unblock",
        "--serial",
        "00000000000000ff",
        "--pin-stdin",
        stdin=lines(SO_PIN, NEW_PIN, NEW_PIN),
    )
    assert code == 1
    assert "No token 00000000000000ff is connected" in err


def test_a_token_another_operator_holds_is_refused(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("IVANOV")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from core import operator_lock; operator_lock.acquire(sys.argv[1], 'test'); "
            "print('held', flush=True); sys.stdin.read()",
            serial,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        done = run_cli("unblock", "--serial", serial, "--pin-stdin", stdin=lines(SO_PIN, NEW_PIN, NEW_PIN))
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert done.returncode == 1
    assert "Another operator is working on this token" in done.stderr
    assert f"pid {holder.pid}, test" in done.stderr
    assert user_pin_works(softhsm, serial, USER_PIN)


# --- the audit command -----------------------------------------------------------------------------------------


def test_audit_shows_the_actions_newest_first_without_pins(
    softhsm: SoftHSM, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    serial = softhsm.init_token("IVANOV")
    other = softhsm.init_token("PETROV")
    assert (
        call_main(
            capsys, monkeypatch, "unblock", "--serial", serial, "--pin-stdin", stdin=lines(WRONG_PIN, NEW_PIN, NEW_PIN)
        )[0]
        == 1
    )
    assert (
        call_main(
            capsys, monkeypatch, "change-pin", "--serial", other, "--pin-stdin", stdin=lines(USER_PIN, NEW_PIN, NEW_PIN)
        )[0]
        == 0
    )
    code, out, _err = call_main(capsys, monkeypatch, "audit")
    assert code == 0
    header, newest, oldest = out.splitlines()
    assert header.split()[:4] == ["Time", "Operator", "Action", "Outcome"]
    # In words, in the reader's language (issue 14); --json below keeps the codes.
    assert "Change a PIN" in newest and "done" in newest and other in newest and "User PIN: ok → ok" in newest
    assert "Unblock the user PIN" in oldest and "wrong PIN" in oldest and serial in oldest
    assert "Admin PIN: ok → wrong PIN entered recently" in oldest, oldest
    code, out, _err = call_main(capsys, monkeypatch, "audit", "--json", "--serial", serial)
    (entry,) = [json.loads(line) for line in out.splitlines()]
    assert (entry["action"], entry["outcome"], entry["serial"], entry["label"]) == (
        "unblock",
        "wrong-pin",
        serial,
        "IVANOV",
    )
    code, out, _err = call_main(capsys, monkeypatch, "audit", "--json", "--limit", "1")
    assert [json.loads(line)["action"] for line in out.splitlines()] == ["change-pin"]
    assert_no_pin(out + audit.audit_path().read_text())


def test_audit_with_nothing_on_record(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["audit"]) == 0
    out, err = capsys.readouterr()
    assert not out and "No action on record" in err
    with pytest.raises(SystemExit) as usage:
        cli.main(["audit", "--limit", "0"])
    assert usage.value.code == 2


# --- the keyring -----------------------------------------------------------------------------------------------


def test_without_a_keyring_remember_still_acts_and_says_so(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("IVANOV")
    done = run_cli(
        "unblock", "--serial", serial, "--remember-admin-pin", "--pin-stdin", stdin=lines(SO_PIN, NEW_PIN, NEW_PIN)
    )
    assert done.returncode == 0, done.stderr
    assert "No keyring is available on this machine" in done.stdout
    assert user_pin_works(softhsm, serial, NEW_PIN)
    done = run_cli("unblock", "--serial", serial, "--keyring", "--pin-stdin", stdin=lines(OTHER_PIN, OTHER_PIN))
    assert done.returncode == 1
    assert "No keyring is available on this machine" in done.stderr
    assert user_pin_works(softhsm, serial, NEW_PIN)


def test_remember_then_use_the_keyring(
    softhsm: SoftHSM, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, memory_keyring: MemoryKeyring
) -> None:
    serial = softhsm.init_token("IVANOV")
    code, _out, err = call_main(
        capsys, monkeypatch, "unblock", "--serial", serial, "--keyring", "--pin-stdin", stdin=lines(NEW_PIN, NEW_PIN)
    )
    assert code == 1 and f"No admin PIN is remembered for token {serial}" in err
    code, out, err = call_main(
        capsys,
        monkeypatch,
        "unblock",
        "--serial",
        serial,
        "--remember-admin-pin",
        "--pin-stdin",
        stdin=lines(SO_PIN, NEW_PIN, NEW_PIN),
    )
    assert code == 0, err
    assert "The admin PIN is remembered in this computer's keyring" in out
    assert admin_pins.recall(serial) == SO_PIN
    # --keyring: the admin-PIN line is not read; the two lines are the new user PIN.
    code, out, err = call_main(
        capsys,
        monkeypatch,
        "unblock",
        "--serial",
        serial,
        "--keyring",
        "--pin-stdin",
        stdin=lines(OTHER_PIN, OTHER_PIN),
    )
    assert code == 0, err
    assert user_pin_works(softhsm, serial, OTHER_PIN)
    code, out, err = call_main(
        capsys, monkeypatch, "format", "--serial", serial, "--confirm", "IVANOV", "--keyring", "--pin-stdin"
    )
    assert code == 0, err
    assert token_label(softhsm, serial) == ""


def test_a_wrong_remembered_admin_pin_is_forgotten(
    softhsm: SoftHSM, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, memory_keyring: MemoryKeyring
) -> None:
    serial = softhsm.init_token("IVANOV")
    admin_pins.remember(serial, WRONG_PIN)
    code, out, err = call_main(
        capsys, monkeypatch, "unblock", "--serial", serial, "--keyring", "--pin-stdin", stdin=lines(NEW_PIN, NEW_PIN)
    )
    assert code == 1 and not out
    assert "Wrong admin PIN." in err and "has been forgotten" in err
    assert admin_pins.recall(serial) is None
    assert_no_pin(err)
    assert user_pin_works(softhsm, serial, USER_PIN)
