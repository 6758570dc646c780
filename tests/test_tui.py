"""The console driven through Textual's Pilot: navigation, hot-plug on real SoftHSM2 tokens, the workstation
states, reports, and snapshots of the screens whose text does not change between runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from textual.command import CommandList

from core.scan import ScanResult
from tests.tokens import SO_PIN, SOFTHSM_MODULE, USER_PIN, SoftHSM
from tests.tui_helpers import (
    FixedScanner,
    first_scan,
    fixed_app,
    notices,
    run,
    screen_text,
    until_scanned,
    wait_for,
)
from tui.app import HelpdeskApp
from tui.screens.details import DetailsScreen
from tui.screens.help import HelpScreen
from tui.ticket import reports_dir
from tui.widgets import WorkstationPanel

NO_DRIVER = "/nonexistent/libkztpkcs11.so"
SIZE = (80, 24)


def labels(app: HelpdeskApp) -> list[str]:
    return [panel.token.snapshot.display_label for panel in app.dashboard.panels]


def focused_label(app: HelpdeskApp) -> str | None:
    panel = app.dashboard.selected()
    return panel.token.snapshot.display_label if panel else None


def test_navigation_details_help_and_back(softhsm: SoftHSM) -> None:
    softhsm.init_token("ALPHA")
    softhsm.init_token("BRAVO")

    async def scenario() -> None:
        app = HelpdeskApp([SOFTHSM_MODULE])
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: len(labels(app)) == 2)
            order = labels(app)
            await wait_for(pilot, lambda: focused_label(app) == order[0])
            await pilot.press("down")
            assert focused_label(app) == order[1]
            await pilot.press("up")
            assert focused_label(app) == order[0]
            await pilot.press("tab")
            assert focused_label(app) == order[1]

            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, DetailsScreen))
            text = screen_text(app)
            assert f"«{order[1]}»" in text and "Token flags" in text and "Objects (keys)" in text
            await pilot.press("escape")
            assert not isinstance(app.screen, DetailsScreen)
            assert focused_label(app) == order[1]  # the selection survives the round trip

            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            help_text = screen_text(app)
            assert (
                "0200040" in help_text
                and "11 characters" in help_text
                and "ag for aq" in help_text
                and "`" not in help_text
            )
            assert "user-pin-locked" in help_text  # every finding of the catalogue is explained
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)

    run(scenario())


def test_every_action_key_opens_its_screen() -> None:
    from tui.screens.pin_form import ActionScreen
    from tui.screens.re_enrol import ReEnrolScreen

    async def scenario() -> None:
        app = fixed_app(poll_seconds=0)
        async with app.run_test(size=SIZE) as pilot:
            await first_scan(pilot)
            for key in "pcufe":
                await pilot.press(key)
                await wait_for(pilot, lambda: isinstance(app.screen, ActionScreen | ReEnrolScreen))
                await pilot.press("escape")
                await wait_for(pilot, lambda: isinstance(app.screen, type(app.dashboard)))
            assert not notices(app)

    run(scenario())


def test_palette_runs_actions_by_name() -> None:
    async def scenario() -> None:
        app = fixed_app(poll_seconds=0)
        async with app.run_test(size=SIZE) as pilot:
            await first_scan(pilot)
            await pilot.press("ctrl+p")
            await pilot.press(*"help")
            await wait_for(pilot, lambda: any(list_.option_count for list_ in app.screen.query(CommandList)))
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))

    run(scenario())


def test_report_for_selected_token_has_no_pin(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("REPORTED")
    softhsm.profile(serial)

    async def scenario() -> Path:
        app = HelpdeskApp([SOFTHSM_MODULE])
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: labels(app) == ["REPORTED"] and focused_label(app) == "REPORTED")
            await pilot.press("x")
            await pilot.pause()
            assert app.last_report is not None
            assert any(str(app.last_report) in text.replace("\n", "") for text in notices(app))  # broken after a "/"
            return app.last_report

    path = Path(__import__("asyncio").run(scenario()))
    assert path.parent == reports_dir() and path.exists()
    text = path.read_text(encoding="utf-8")
    assert "REPORTED" in text and serial in text
    assert USER_PIN not in text and SO_PIN not in text


def test_hot_plug_token_appears_and_goes(softhsm: SoftHSM) -> None:
    softhsm.init_token("FIRST")

    async def scenario() -> None:
        import asyncio

        app = HelpdeskApp([SOFTHSM_MODULE])
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: labels(app) == ["FIRST"])
            before = set(softhsm.tokens.iterdir())
            # softhsm2-util in a thread: the console must go on answering while the token is "plugged in".
            await asyncio.to_thread(softhsm.init_token, "PLUGGED")
            (added,) = set(softhsm.tokens.iterdir()) - before
            await wait_for(pilot, lambda: "PLUGGED" in labels(app), timeout=5)
            # Pulling it out: its directory goes; the panel must go too, without a keypress.
            shutil.rmtree(added)
            await wait_for(pilot, lambda: labels(app) == ["FIRST"], timeout=5)
            assert focused_label(app) == "FIRST"

    run(scenario())


def test_no_driver_state() -> None:
    async def scenario() -> None:
        app = HelpdeskApp([NO_DRIVER])
        async with app.run_test(size=SIZE) as pilot:
            await first_scan(pilot)
            panel = app.dashboard.query_one(WorkstationPanel)
            assert panel.display
            text = screen_text(app)
            assert "KAZTOKEN driver not installed" in text and NO_DRIVER in text and "file not found" in text
            assert not app.dashboard.panels
            await pilot.press("x")  # a ticket report works without any token: it documents the workstation
            await pilot.pause()
            assert app.last_report is not None and app.last_report.name.startswith("kaztoken-workstation-")

    run(scenario())


def test_no_token_state(softhsm: SoftHSM) -> None:
    async def scenario() -> None:
        app = HelpdeskApp([SOFTHSM_MODULE])
        async with app.run_test(size=SIZE) as pilot:
            await first_scan(pilot)
            text = screen_text(app)
            assert "No token plugged in" in text and "Plug the KAZTOKEN in" in text
            assert "before the token is first plugged in" in text

    run(scenario())


def test_module_error_becomes_a_message() -> None:
    class Exploding:
        def scan(self, *, refresh: bool = False) -> ScanResult:
            raise RuntimeError("C_GetSlotList exploded")

    async def scenario() -> None:
        app = HelpdeskApp(scanner_factory=Exploding, poll_seconds=0.1)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: bool(notices(app)))
            await pilot.pause(0.3)  # several polls fail meanwhile: said once, not every time
            assert len(notices(app)) == 1 and "C_GetSlotList exploded" in notices(app)[0]
            await pilot.press("question_mark")  # and the console still answers
            assert isinstance(app.screen, HelpScreen)

    run(scenario())


def test_wide_terminal_shows_two_columns() -> None:
    async def scenario() -> None:
        app = fixed_app(poll_seconds=0)
        async with app.run_test(size=(170, 40)) as pilot:
            await first_scan(pilot)
            first, second, third = app.dashboard.panels
            assert first.region.y == second.region.y and second.region.x > first.region.x
            assert third.region.y > first.region.y
            await pilot.press("right")
            assert app.dashboard.selected() is second
            await pilot.press("left", "down")
            assert app.dashboard.selected() is third

    run(scenario())


# --- snapshots: only screens whose every character is the same on each run ---------------------------------


def test_snapshot_dashboard_fixed_tokens(snap_compare) -> None:
    assert snap_compare(fixed_app(poll_seconds=0), terminal_size=SIZE, run_before=until_scanned())


def test_snapshot_dashboard_wide(snap_compare) -> None:
    assert snap_compare(fixed_app(poll_seconds=0), terminal_size=(170, 30), run_before=until_scanned())


def test_snapshot_no_driver(snap_compare) -> None:
    assert snap_compare(HelpdeskApp([NO_DRIVER], poll_seconds=0), terminal_size=SIZE, run_before=until_scanned())


def test_snapshot_no_token(snap_compare, softhsm: SoftHSM) -> None:
    assert snap_compare(HelpdeskApp([SOFTHSM_MODULE], poll_seconds=0), terminal_size=SIZE, run_before=until_scanned())


def test_snapshot_no_color(snap_compare, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(fixed_app(poll_seconds=0), terminal_size=SIZE, run_before=until_scanned())


def test_fixed_scanner_is_deterministic() -> None:
    assert FixedScanner().scan().to_dict()["summary"] == {"tokens": 3, "error": 1, "warning": 2, "info": 1}, (
        "fixed tokens changed: update the snapshots"
    )
