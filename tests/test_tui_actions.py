"""The action screens driven through Textual's Pilot on real SoftHSM2 tokens: personalise, change a PIN, unblock,
format and the audit log. Every change is checked afterwards with OpenSC's pkcs11-tool, never with the console.

SoftHSM2 does not count PIN tries, so "tries left" is not known here (tests/test_actions_opencryptoki.py covers
the counting in core); the screens' handling of a wrong PIN is the same either way.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Checkbox, DataTable, Input, RadioButton

from core import admin_pins, audit, operator_lock
from core.actions import Action, ActionResult, Outcome, Text
from core.config import Config, LoadedConfig
from core.findings import Finding, worst_first
from core.scan import Workstation
from tests.conftest import MemoryKeyring
from tests.tokens import SO_PIN, SOFTHSM_MODULE, USER_PIN, SoftHSM
from tests.tui_helpers import fixed_app, notices, run, screen_text, until_scanned, wait_for
from tui.app import HelpdeskApp
from tui.screens.audit import AuditScreen
from tui.screens.change_pin import ChangePinScreen
from tui.screens.details import DetailsScreen
from tui.screens.format import FormatScreen
from tui.screens.personalise import PersonaliseScreen
from tui.screens.pin_form import ActionScreen, RulesPanel
from tui.screens.unblock import UnblockScreen

SIZE = (80, 24)
NEW_PIN = "Kazt0ken"
NEW_ADMIN_PIN = "Admin9Xy"
WRONG_PIN = "Wr0ngPin"
PINS = (USER_PIN, SO_PIN, NEW_PIN, NEW_ADMIN_PIN, WRONG_PIN)
LOCKED_TOKEN = "0A1B2C40"  # IVANOV of the fixed scan (tests/tui_helpers.py): locked, so unblock is offered


# --- helpers -------------------------------------------------------------------------------------------------


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


def softhsm_app(**kwargs: Any) -> HelpdeskApp:
    return HelpdeskApp([SOFTHSM_MODULE], poll_seconds=0, **kwargs)


async def open_action(pilot: Pilot[Any], serial: str, key: str) -> ActionScreen:
    """Select the token with this serial on the dashboard, press the action's key, return its screen."""
    app = pilot.app
    assert isinstance(app, HelpdeskApp)
    await wait_for(pilot, lambda: any(p.token.snapshot.serial == serial for p in app.dashboard.panels))
    await wait_for(pilot, lambda: not app.loading_modules)  # loaded after the first paint, in a worker
    panel = next(p for p in app.dashboard.panels if p.token.snapshot.serial == serial)
    panel.focus()
    await pilot.press(key)
    await wait_for(pilot, lambda: isinstance(app.screen, ActionScreen))
    assert isinstance(app.screen, ActionScreen)
    return app.screen


def fill(screen: ActionScreen, **values: str) -> None:
    for field_id, value in values.items():
        screen.query_one(f"#{field_id}", Input).value = value


async def submit(pilot: Pilot[Any], screen: ActionScreen) -> None:
    """Enter on the last field, then wait for the token's answer."""
    before = screen.result
    screen.inputs()[-1].focus()
    await pilot.press("enter")
    await wait_for(pilot, lambda: not screen.working and screen.result is not before)


def status(screen: ActionScreen) -> str:
    return str(screen.query_one("#status").render())


def assert_no_pin_shown(app: HelpdeskApp) -> None:
    shown = screen_text(app) + "\n".join(notices(app))
    for pin in PINS:
        assert pin not in shown


def rule_marks(screen: ActionScreen) -> dict[str, bool]:
    return {check.rule: check.ok for check in screen.query_one(RulesPanel).checks}


# --- personalise -------------------------------------------------------------------------------------------------


def test_personalise_a_fresh_token_with_the_rules_ticked_as_typed(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("")

    async def scenario() -> None:
        app = softhsm_app()
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_action(pilot, serial, "p")
            assert isinstance(screen, PersonaliseScreen)
            assert screen.focused is screen.query_one("#label", Input)
            await pilot.press(*"IVANOV", "enter")  # Enter moves on to the next field
            assert screen.focused is screen.query_one("#admin_pin", Input)
            await pilot.press(*SO_PIN)
            # The typed admin PIN is the factory default: said beside it, without showing it.
            assert "factory default" in str(screen.query_one("#admin_pin-hint").render())
            await pilot.press("tab", *"kaz")
            marks = rule_marks(screen)
            assert not marks["length"] and not marks["upper"] and marks["lower"] and not marks["match"]
            await pilot.press("backspace", "backspace", "backspace", *NEW_PIN)
            marks = rule_marks(screen)
            assert all(ok for rule, ok in marks.items() if rule != "match") and not marks["match"]
            assert "meets the rules" in str(screen.query_one("#new_pin-hint").render())
            await pilot.press("tab", *NEW_PIN)
            assert screen.inputs()[-1].id == "new_pin_again"  # the hidden new admin PIN pair does not count
            assert all(rule_marks(screen).values())
            assert "matches" in str(screen.query_one("#new_pin_again-hint").render())
            assert_no_pin_shown(app)

            await pilot.press("enter")  # on the last field: submits
            await wait_for(pilot, lambda: screen.result is not None and not screen.working)
            assert screen.result is not None and screen.result.ok, status(screen)
            text = status(screen)
            assert "personalised as «IVANOV»" in text and "factory default" in text  # core's warning
            assert "User PIN now" in str(screen.query_one("#state-line").render())
            assert not screen.query_one("#form").display  # only Close is left
            assert_no_pin_shown(app)
            await pilot.press("escape")
            assert not isinstance(app.screen, ActionScreen)
            assert not operator_lock._held  # the screen let go of the token
            await wait_for(pilot, lambda: "IVANOV" in [p.token.snapshot.label for p in app.dashboard.panels])

    run(scenario())
    assert token_label(softhsm, serial) == "IVANOV"
    assert user_pin_works(softhsm, serial, NEW_PIN)
    assert not user_pin_works(softhsm, serial, USER_PIN)


def test_personalise_with_a_new_admin_pin_and_a_refused_token(softhsm: SoftHSM) -> None:
    fresh = softhsm.init_token("")
    holder = softhsm.init_token("HOLDER")
    softhsm.profile(holder)

    async def scenario() -> None:
        app = softhsm_app()
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_action(pilot, holder, "p")
            assert "holds keys or certificates" in screen_text(app)
            assert not screen.query(Input)  # nothing to type: only Close
            await pilot.press("escape")

            screen = await open_action(pilot, fresh, "p")
            fill(screen, label="PETROV", admin_pin=SO_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN)
            screen.query_one("#change-admin", Checkbox).value = True
            await pilot.pause()
            assert screen.query_one("#new-admin").display
            assert "factory default" not in str(screen.query_one("#admin_pin-hint").render())
            fill(screen, new_admin_pin=NEW_ADMIN_PIN, new_admin_pin_again=NEW_ADMIN_PIN)
            await submit(pilot, screen)
            assert screen.result is not None and screen.result.ok, status(screen)
            assert "factory default" not in status(screen)
            assert "admin PIN was changed" in status(screen)  # said, as the new name in the header is
            assert "PETROV" in str(screen.query_one("#token-line").render())

    run(scenario())
    assert token_label(softhsm, holder) == "HOLDER" and user_pin_works(softhsm, holder, USER_PIN)
    assert token_label(softhsm, fresh) == "PETROV"
    assert so_pin_works(softhsm, fresh, NEW_ADMIN_PIN) and not so_pin_works(softhsm, fresh, SO_PIN)


# --- change PIN ----------------------------------------------------------------------------------------------


def test_change_the_user_pin_then_the_admin_pin(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("IVANOV")

    async def scenario() -> None:
        app = softhsm_app()
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_action(pilot, serial, "c")
            assert isinstance(screen, ChangePinScreen)
            fill(screen, current_pin=USER_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN)
            await submit(pilot, screen)
            assert screen.result is not None and screen.result.ok, status(screen)
            assert "The user PIN has been changed" in status(screen)
            await pilot.press("escape")

            screen = await open_action(pilot, serial, "c")
            await pilot.click("#role-admin")
            assert screen.query_one("#role-admin", RadioButton).value
            assert "Admin PIN" in str(screen.query_one("#state-line").render())
            fill(screen, current_pin=SO_PIN, new_pin=NEW_ADMIN_PIN, new_pin_again=NEW_ADMIN_PIN)
            await submit(pilot, screen)
            assert screen.result is not None and screen.result.ok, status(screen)
            assert "The admin PIN has been changed" in status(screen)
            assert_no_pin_shown(app)

    run(scenario())
    assert user_pin_works(softhsm, serial, NEW_PIN) and not user_pin_works(softhsm, serial, USER_PIN)
    assert so_pin_works(softhsm, serial, NEW_ADMIN_PIN) and not so_pin_works(softhsm, serial, SO_PIN)


def test_policy_is_checked_before_the_token_is_asked(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("IVANOV")

    async def scenario() -> None:
        app = softhsm_app()
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_action(pilot, serial, "c")
            fill(screen, current_pin=USER_PIN, new_pin="abc12345", new_pin_again="abc12345")
            screen.query_one("#new_pin_again", Input).focus()
            await pilot.press("enter")
            await pilot.pause()
            assert screen.result is None  # nothing was sent to the token
            assert "does not meet the rules. Not met: an upper-case" in status(screen)
            assert screen.focused is screen.query_one("#new_pin", Input)
            assert screen.query_one("#current_pin", Input).value == USER_PIN  # nothing typed is lost
            fill(screen, new_pin=NEW_PIN, new_pin_again=NEW_PIN)
            await pilot.pause()
            assert "does not meet" not in status(screen)  # fixed: the message goes

    run(scenario())
    assert not audit.read()  # and no attempt on record
    assert user_pin_works(softhsm, serial, USER_PIN)


# --- unblock ---------------------------------------------------------------------------------------------------


def test_unblock_after_a_wrong_admin_pin_keeps_the_rest(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("IVANOV")

    async def scenario() -> None:
        app = softhsm_app()
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_action(pilot, serial, "u")
            assert isinstance(screen, UnblockScreen)
            assert "Admin PIN: ok" in str(screen.query_one("#state-line").render())  # the state before
            fill(screen, admin_pin=WRONG_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN)
            await submit(pilot, screen)
            assert screen.result is not None and screen.result.outcome == "wrong-pin"
            assert "Wrong admin PIN" in status(screen)
            assert "Admin PIN now" in str(screen.query_one("#state-line").render())  # and after
            admin = screen.query_one("#admin_pin", Input)
            assert admin.value == "" and screen.focused is admin  # only the rejected PIN is cleared
            assert screen.query_one("#new_pin", Input).value == NEW_PIN
            assert screen.query_one("#new_pin_again", Input).value == NEW_PIN

            await pilot.press(*SO_PIN)
            await submit(pilot, screen)
            assert screen.result is not None and screen.result.ok, status(screen)
            assert "«PIN-код успешно разблокирован»" in status(screen)
            assert "factory default" in status(screen)
            assert_no_pin_shown(app)

    run(scenario())
    assert user_pin_works(softhsm, serial, NEW_PIN) and not user_pin_works(softhsm, serial, USER_PIN)
    outcomes = [(entry.action, entry.outcome) for entry in audit.read()]
    assert outcomes == [("unblock", "done"), ("unblock", "wrong-pin")]


def test_change_pin_on_a_locked_user_pin_opens_unblock() -> None:
    async def scenario() -> None:
        app = fixed_app(poll_seconds=0)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_action(pilot, LOCKED_TOKEN, "c")
            assert isinstance(screen, UnblockScreen)
            assert "cannot be changed, only unblocked" in screen_text(app)
            assert "User PIN: locked (0 of 10 tries left)" in str(screen.query_one("#state-line").render())
            # The fixed scan has no modules to act with: said, not crashed.
            fill(screen, admin_pin=SO_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN)
            screen.inputs()[-1].focus()
            await pilot.press("enter")
            await pilot.pause()
            assert "still loading the driver" in status(screen)
            await pilot.press("q")  # the dashboard's keys are off while a form is open
            assert app.is_running and isinstance(app.screen, UnblockScreen)

    run(scenario())


def test_token_pulled_out_is_a_message_and_the_dashboard_follows(
    softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    serial = softhsm.init_token("IVANOV")

    def pulled_mid_action(modules: Any, serial: str, **_pins: Any) -> ActionResult:
        # What core answers when the token goes between its reads (SoftHSM2 cannot be pulled mid-call).
        snapshot = next(token.snapshot for token in Workstation([SOFTHSM_MODULE]).scan().tokens)
        text = Text("The token was pulled out during the action: plug it back in and check its state.")
        return ActionResult(Action.UNBLOCK, Outcome.TOKEN_GONE, serial, "IVANOV", texts=(text,), before=snapshot)

    async def scenario() -> None:
        app = softhsm_app()
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_action(pilot, serial, "u")
            fill(screen, admin_pin=SO_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN)
            with monkeypatch.context() as patch:
                patch.setattr("tui.screens.unblock.unblock", pulled_mid_action)
                await submit(pilot, screen)
            assert "pulled out during the action" in status(screen) and "state is unknown" in status(screen)
            assert screen.query_one("#new_pin", Input).value == NEW_PIN  # to try again once it is back

            for directory in softhsm.tokens.iterdir():  # now really gone
                shutil.rmtree(directory)
            await submit(pilot, screen)
            assert screen.result is not None and screen.result.outcome is Outcome.NOT_FOUND
            assert "is connected (its serial or its id)" in status(screen)
            await pilot.press("escape")
            await wait_for(pilot, lambda: not app.dashboard.panels)  # the rescan after the attempt

    run(scenario())


def test_actions_from_the_details_screen() -> None:
    async def scenario() -> None:
        app = fixed_app(poll_seconds=0)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: len(app.dashboard.panels) == 3)
            app.dashboard.panels[2].focus()  # PETROV
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, DetailsScreen))
            await pilot.press("f")
            await wait_for(pilot, lambda: isinstance(app.screen, FormatScreen))
            assert "«PETROV»" in screen_text(app)
            await pilot.press("escape")
            assert isinstance(app.screen, DetailsScreen)

    run(scenario())


def test_unblock_comes_first_among_the_fixes() -> None:
    findings = [Finding.of("registration-unfinished", detail="d"), Finding.of("user-pin-locked")]
    assert [finding.code for finding in worst_first(findings)] == [
        "user-pin-locked",
        "registration-unfinished",
    ]


# --- format ----------------------------------------------------------------------------------------------------


def test_format_refused_during_a_registration_then_confirmed_by_label(softhsm: SoftHSM) -> None:
    unfinished = softhsm.init_token("SIDOROV")
    softhsm.generate_key(unfinished, "0a")  # a key without its certificate
    serial = softhsm.init_token("KOZLOVA")
    softhsm.profile(serial, common_name="Козлова Анна")

    async def scenario() -> None:
        app = softhsm_app()
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_action(pilot, unfinished, "f")
            assert isinstance(screen, FormatScreen)
            assert "registration is unfinished" in screen_text(app) and not screen.query(Input)
            await pilot.press("escape")

            screen = await open_action(pilot, serial, "f")
            assert "«Козлова Анна»" in screen_text(app)  # what will be lost, by name
            assert "admin PIN stays as it is" in screen_text(app)  # and what is not reset
            ok = screen.query_one("#ok", Button)
            assert ok.disabled
            await pilot.press(*"KOZLOV")
            assert ok.disabled and "not the name" in str(screen.query_one("#confirmation-hint").render())
            await pilot.press("A")
            assert not ok.disabled
            fill(screen, admin_pin=SO_PIN)
            await submit(pilot, screen)
            assert screen.result is not None and screen.result.ok, status(screen)
            assert "Token formatted" in status(screen) and "admin PIN is unchanged" in status(screen)

    run(scenario())
    assert token_label(softhsm, unfinished) == "SIDOROV"
    objects = softhsm.tool(unfinished, "--login", "--pin", USER_PIN, "-O").stdout
    assert "Private Key Object" in objects  # the unfinished registration is untouched
    assert token_label(softhsm, serial) == ""
    objects = softhsm.tool(serial, "--login", "--pin", USER_PIN, "-O").stdout  # the factory user PIN
    assert "Certificate Object" not in objects and "Key Object" not in objects


# --- one operator per token ------------------------------------------------------------------------------------


def test_a_token_held_by_another_console_is_refused_with_who(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("IVANOV")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from core import operator_lock\n"
            f"operator_lock.acquire({serial!r}, 'unblock')\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"

        async def scenario() -> None:
            app = softhsm_app()
            async with app.run_test(size=SIZE) as pilot:
                await wait_for(pilot, lambda: bool(app.dashboard.panels))
                app.dashboard.panels[0].focus()
                await pilot.press("u")
                await wait_for(pilot, lambda: bool(notices(app)))
                assert not isinstance(app.screen, ActionScreen)
                (notice,) = notices(app)
                assert "Another operator is working on this token" in notice and f"pid {holder.pid}" in notice

        run(scenario())
    finally:
        holder.kill()
        holder.wait()


# --- the keyring -----------------------------------------------------------------------------------------------


def remembering() -> LoadedConfig:
    return LoadedConfig(path=Path("/nonexistent/config.toml"), config=Config(remember_admin_pins=True))


def test_remembered_admin_pin_is_offered_and_used(softhsm: SoftHSM, memory_keyring: MemoryKeyring) -> None:
    serial = softhsm.init_token("IVANOV")

    async def scenario() -> None:
        app = softhsm_app(config=remembering())
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_action(pilot, serial, "u")
            fill(screen, admin_pin=SO_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN)
            screen.query_one("#remember", Checkbox).value = True
            await submit(pilot, screen)
            assert screen.result is not None and screen.result.ok, status(screen)
            assert "remembered in this computer's keyring" in status(screen)
            await pilot.press("escape")

            screen = await open_action(pilot, serial, "c")
            await pilot.press("escape")  # change PIN never asks for the admin PIN via the keyring
            screen = await open_action(pilot, serial, "u")
            assert "the remembered one is used" in str(screen.query_one("#admin_pin-hint").render())
            fill(screen, new_pin="Astana9x", new_pin_again="Astana9x")  # the admin PIN left empty
            await submit(pilot, screen)
            assert screen.result is not None and screen.result.ok, status(screen)
            assert_no_pin_shown(app)

    run(scenario())
    assert admin_pins.recall(serial) == SO_PIN
    assert user_pin_works(softhsm, serial, "Astana9x")


def test_no_keyring_is_said_plainly() -> None:
    async def scenario() -> None:
        app = fixed_app(poll_seconds=0, config=remembering())
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_action(pilot, LOCKED_TOKEN, "u")
            assert not screen.query("#remember")
            assert "No OS keyring on this computer" in screen_text(app)

    run(scenario())


# --- the audit log ---------------------------------------------------------------------------------------------


def test_audit_screen_lists_entries_newest_first() -> None:
    for outcome in ("wrong-pin", "done"):
        audit.append(
            audit.AuditEntry(
                action="unblock",
                outcome=outcome,
                serial="0A1B2C40",
                label="IVANOV",
                module="/usr/lib/libkztpkcs11.so",
                role="admin",
                findings_before=("user-pin-locked",),
                findings_after=() if outcome == "done" else ("user-pin-locked",),
                pin_before="locked",
                pin_after="ok" if outcome == "done" else "locked",
            )
        )

    async def scenario() -> None:
        app = fixed_app(poll_seconds=0)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.result is not None)
            await pilot.press("a")
            await wait_for(pilot, lambda: isinstance(app.screen, AuditScreen))
            table = app.screen.query_one(DataTable)
            assert table.row_count == 2
            first = [str(cell) for cell in table.get_row_at(0)]
            assert "IVANOV · 0A1B2C40" in first and "✔ done" in first and "user-pin-locked → —" in first
            assert "wrong PIN" in str(table.get_row_at(1)[1])  # the outcome second, in words: on screen at 80 columns
            detail = str(app.screen.query_one("#audit-detail").render())
            assert "Admin PIN  locked → ok" in detail
            await pilot.press("u")  # no token to act on from here
            assert isinstance(app.screen, AuditScreen)
            await pilot.press("escape")
            assert not isinstance(app.screen, AuditScreen)

    run(scenario())


# --- snapshots: fixed tokens, nothing typed that could differ -------------------------------------------------


async def _press(pilot: Pilot[Any], *keys: str) -> None:
    await until_scanned(lambda app: app.dashboard.selected() is not None)(pilot)
    await pilot.press(*keys)
    await pilot.pause(0.2)


def test_snapshot_unblock_offered_for_a_locked_pin(snap_compare) -> None:
    async def before(pilot: Pilot[Any]) -> None:
        await _press(pilot, "c", *WRONG_PIN)  # the locked token leads the dashboard: worst first

    assert snap_compare(fixed_app(poll_seconds=0), terminal_size=SIZE, run_before=before)


def test_snapshot_personalise(snap_compare) -> None:
    async def before(pilot: Pilot[Any]) -> None:
        await _press(pilot, "down", "p", *"IVANOV", "tab", *SO_PIN, "tab", *NEW_PIN)  # typed, and masked

    assert snap_compare(fixed_app(poll_seconds=0), terminal_size=SIZE, run_before=before)
