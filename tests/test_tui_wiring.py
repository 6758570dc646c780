"""The console's wiring (issue 17): the context screens read, the one worker helper and its error handling, the
language signal, and which screen binds the console's keys. No PKCS#11: a fixed scan."""

from __future__ import annotations

import logging

import pytest
from textual.app import App
from textual.command import CommandList

from core.i18n import set_language
from tests.tui_helpers import first_scan, fixed_app, notices, run, wait_for
from tui import workers
from tui.actions import ACTIONS
from tui.app import HelpdeskApp
from tui.context import ConsoleContext, console_of
from tui.screens.help import HelpScreen
from tui.screens.pin_form import ActionScreen
from tui.workers import ReportsWorkers

SIZE = (80, 24)


class _WorkingApp(ReportsWorkers, App[int]):
    pass


def test_a_worker_hands_its_result_to_done_on_the_ui_thread() -> None:
    got: list[int] = []

    async def scenario() -> None:
        app = _WorkingApp()
        async with app.run_test() as pilot:
            workers.in_thread(app, lambda: 6 * 7, got.append, failed=lambda line: got.append(-1), group="test")
            await wait_for(pilot, lambda: bool(got))

    run(scenario())
    assert got == [42]


def test_an_unexpected_error_is_logged_and_said_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    said: list[str] = []
    secret = "0000-not-a-pin"

    def job() -> None:
        typed = secret  # a local, as a typed PIN would be: never in the line nor the log
        raise RuntimeError(f"driver {typed[:0]}kaput".upper())  # its text, made at run time: not in the source

    async def scenario() -> None:
        app = _WorkingApp()
        async with app.run_test() as pilot:
            workers.in_thread(app, job, lambda _none: said.append("done?"), failed=said.append, group="test")
            await wait_for(pilot, lambda: bool(said))

    with caplog.at_level(logging.ERROR, logger="tui.errors"):
        run(scenario())
    assert said == ["RuntimeError: DRIVER KAPUT"]  # on screen as before
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "unexpected RuntimeError in worker test" in logged and "in job" in logged  # the frames, to fix it
    assert "KAPUT" not in logged and secret not in logged  # never its text nor a value: either may quote a PIN


def test_a_repeated_error_is_on_record_once(caplog: pytest.LogCaptureFixture) -> None:
    said: list[str] = []

    def job() -> None:
        raise RuntimeError("the same every time")

    async def scenario() -> None:
        app = _WorkingApp()
        async with app.run_test() as pilot:
            for count in (1, 2, 3):  # as a poll would, one after the other
                workers.in_thread(app, job, lambda _none: None, failed=said.append, group="poll")
                await wait_for(pilot, lambda count=count: len(said) == count)

    with caplog.at_level(logging.ERROR, logger="tui.errors"):
        run(scenario())
    assert len(said) == 3  # each caller is told
    assert len([record for record in caplog.records if "RuntimeError in worker poll" in record.getMessage()]) == 1


def test_without_its_own_failed_the_error_is_notified(caplog: pytest.LogCaptureFixture) -> None:
    def job() -> None:
        "Abc\xff".encode("ascii")  # its message names what the codec worked on: not shown

    async def scenario() -> None:
        app = _WorkingApp()
        async with app.run_test() as pilot:
            workers.in_thread(app, job, lambda _none: None, group="test")
            await wait_for(pilot, lambda: bool(notices(app)))  # type: ignore[arg-type]
            assert notices(app) == ["Unexpected error: UnicodeEncodeError"]  # type: ignore[arg-type]

    with caplog.at_level(logging.ERROR, logger="tui.errors"):
        run(scenario())
    assert "UnicodeEncodeError" in caplog.text and "position" not in caplog.text and "ordinal" not in caplog.text


def test_a_screen_of_another_app_gets_an_empty_context() -> None:
    async def scenario() -> None:
        app = _WorkingApp()
        async with app.run_test():
            context = console_of(app)
            assert context.lab is None and context.result is None and context.modules_for_actions() is None
            assert context.language_changed is None and not context.settings.remember_admin_pins
            context.rescan()  # nothing to rescan: does nothing

    run(scenario())


def test_the_console_keeps_its_context_current() -> None:
    async def scenario() -> None:
        app = fixed_app(poll_seconds=0)
        async with app.run_test(size=SIZE) as pilot:
            await first_scan(pilot)
            context = console_of(app)
            assert isinstance(context, ConsoleContext) and context is app.context
            assert context.result is app.result is not None
            assert context.settings.language == "en"

    run(scenario())


def options(app: HelpdeskApp) -> list[str]:
    found: list[str] = []
    for command_list in app.screen.query(CommandList):
        found += [str(command_list.get_option_at_index(i).prompt) for i in range(command_list.option_count)]
    return found


def test_over_an_action_form_the_palette_offers_only_the_language() -> None:
    async def scenario() -> None:
        app = fixed_app(poll_seconds=0)
        async with app.run_test(size=SIZE) as pilot:
            await first_scan(pilot)
            await pilot.press("p")
            await wait_for(pilot, lambda: isinstance(app.screen, ActionScreen))
            await pilot.press("ctrl+p")
            await wait_for(pilot, lambda: bool(options(app)))
            shown = "\n".join(options(app))
            assert "Switch the language" in shown
            assert not [action.name for action in ACTIONS if action.id != "language" and action.name in shown], shown

    run(scenario())


def test_the_help_screen_has_no_token_keys_and_follows_the_language() -> None:
    async def scenario() -> None:
        app = fixed_app(poll_seconds=0)
        async with app.run_test(size=SIZE) as pilot:
            await first_scan(pilot)
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            help_screen = app.screen
            title = str(help_screen.query_one("#help-title").render())
            await pilot.press("p")  # a token key: the help screen shows no token, so it has none
            await pilot.pause()
            assert app.screen is help_screen
            await pilot.press("f2")  # the signal: the help screen redraws itself
            await pilot.pause()
            assert str(help_screen.query_one("#help-title").render()) != title

    try:
        run(scenario())
    finally:
        set_language("en")


def test_the_console_turns_the_collector_on_once_its_first_scan_is_shown() -> None:
    """tui.entry keeps the collector off while the command starts; the console turns it on again (with what
    exists then frozen) once its first scan is on screen."""
    import gc

    from tui import entry

    async def scenario() -> None:
        app = fixed_app(poll_seconds=0)
        async with app.run_test(size=SIZE) as pilot:
            await first_scan(pilot)
            await wait_for(pilot, gc.isenabled)

    gc.disable()
    try:
        run(scenario())
        assert gc.isenabled() and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.enable()
        entry._runs_on = False
