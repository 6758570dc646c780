"""The helpdesk flow as a new user meets it (issue 14): one rule for the global keys on a screen that holds a
token, a re-enrolment by keys alone, the dashboard's arrows, and the texts for broken registrations."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from textual.errors import NoWidget
from textual.widget import Widget
from textual.widgets import Input

from core import enrol
from core.diagnostics import diagnose_token
from core.lab import Lab
from core.scan import ScannedToken, Workstation
from tests.test_enrol import object_ids
from tests.tokens import SOFTHSM_MODULE, USER_PIN, SoftHSM
from tests.tui_helpers import _certificate, _key, _snapshot, first_scan, fixed_app, run, wait_for
from tui.app import HelpdeskApp
from tui.screens.re_enrol import ReEnrolScreen
from tui.screens.trainer import TrainerScreen

SIZE = (80, 24)


def on_screen(widget: Widget) -> bool:
    """The widget is drawn where a person looks: the screen shows it at its own top-left cell."""
    region = widget.region
    if not region.area:
        return False
    try:
        found, _ = widget.screen.get_widget_at(region.x, region.y)
    except NoWidget:  # off the screen
        return False
    return found is widget or widget in found.ancestors_with_self


def focused_id(app: HelpdeskApp) -> str | None:
    return app.focused.id if app.focused is not None else None


def test_re_enrolment_by_keys_alone_and_no_global_key_acts_there(softhsm: SoftHSM, tmp_path: Path) -> None:
    serial = softhsm.init_token("IVANOV")
    softhsm.profile(serial, "01", common_name="Иванов Иван")
    lab = Lab(tmp_path / "lab", opencryptoki=False)  # not built: only the trainer's key is wanted
    keys: list[str] = []

    async def scenario() -> None:
        app = HelpdeskApp([SOFTHSM_MODULE], lab=lab, poll_seconds=0)
        async with app.run_test(size=SIZE) as pilot:

            async def press(key: str) -> None:
                keys.append(key)
                await pilot.press(key)

            await first_scan(pilot)
            # The app opens the screen as `e` does; the training CA is asked for (the lab's own tokens get it).
            token = app.selected_token()
            assert token is not None
            screen = ReEnrolScreen(
                token, lambda: app.modules_for_actions() or [], training_ca=True, training_ca_dir=tmp_path / "ca"
            )
            keys.append("e")
            app.push_screen(screen)
            await wait_for(pilot, lambda: app.screen is screen and focused_id(app) == "pin")
            for char in USER_PIN:  # typing the PIN is not counted
                await pilot.press(char)
            await press("enter")
            await wait_for(pilot, lambda: screen.phase == "key")

            # Logged in: the PIN field is gone from the screen and the Tab order, and locked.
            pin = screen.query_one("#pin", Input)
            assert pin.disabled and not screen.query_one("#step-login").display
            await wait_for(pilot, lambda: focused_id(app) == "generate" and on_screen(app.focused))
            for _ in range(6):
                await pilot.press("tab")
                assert app.focused is not pin
            screen.query_one("#generate").focus()

            # The global keys do nothing here: no trainer, no quit, no audit, no other action.
            for key in ("t", "a", "q", "r", "p", "x"):
                await pilot.press(key)
            await pilot.pause()
            assert app.screen is screen and app.is_running
            assert not any(isinstance(s, TrainerScreen) for s in app.screen_stack)
            assert app.check_action("quit", ()) is False and app.check_action("trainer", ()) is False
            assert pin.value == USER_PIN  # nothing typed reached the PIN

            await press("enter")  # generate
            await wait_for(pilot, lambda: screen.phase == "request" and screen.busy is None, timeout=60)
            await wait_for(pilot, lambda: focused_id(app) == "make-request" and on_screen(app.focused))
            await press("enter")  # the request, with the subject from the certificate on the token
            await wait_for(pilot, lambda: screen.phase == "import" and screen.busy is None, timeout=15)
            await wait_for(pilot, lambda: focused_id(app) == "training" and on_screen(app.focused))
            path = screen.query_one("#csr-path", Input)
            assert path.value.startswith("~/kaztoken-") and len(path.value) <= path.content_region.width  # whole
            await press("enter")  # the training CA issues it
            await wait_for(pilot, lambda: screen.phase == "remove" and screen.busy is None, timeout=15)
            await wait_for(pilot, lambda: focused_id(app) == "remove" and on_screen(app.focused))
            await press("enter")
            await wait_for(pilot, lambda: focused_id(app) == "remove-no" and on_screen(app.focused))
            assert "Remove these for good?" in str(screen.query_one("#old-list").render())
            await wait_for(pilot, lambda: on_screen(screen.query_one("#old-list")))
            await press("tab")
            await wait_for(pilot, lambda: focused_id(app) == "remove-yes" and on_screen(app.focused))
            await press("enter")
            await wait_for(pilot, lambda: screen.phase == "done", timeout=15)
            assert "complete" in screen.status_text
            await press("escape")
            await wait_for(pilot, lambda: app.screen is not screen)

    run(scenario())
    assert len(keys) <= 12, keys
    ids = object_ids(softhsm, serial, "cert")
    assert len(ids) == 1 and "01" not in ids


def test_arrows_move_the_selection_and_keep_it_on_screen() -> None:
    async def scenario() -> None:
        app = fixed_app(poll_seconds=0)
        async with app.run_test(size=SIZE) as pilot:
            await first_scan(pilot)
            panels = app.dashboard.panels
            assert len(panels) == 3
            for index in (1, 2, 2):
                await pilot.press("down")
                await pilot.pause()
                assert app.dashboard.selected() is panels[index] and on_screen(panels[index])
            for index in (1, 0, 0):
                await pilot.press("up")
                await pilot.pause()
                assert app.dashboard.selected() is panels[index] and on_screen(panels[index])

    run(scenario())


def test_keeping_half_pairs_is_not_offered(softhsm: SoftHSM, tmp_path: Path) -> None:
    serial = softhsm.init_token("IVANOV")
    softhsm.profile(serial, "01", common_name="Иванов Иван")
    softhsm.generate_key(serial, "0a")  # an earlier registration that never got its certificate
    workstation = Workstation([SOFTHSM_MODULE])
    modules = workstation.modules
    assert enrol.generate_key(modules, serial, pin=USER_PIN).ok
    assert enrol.make_request(modules, serial, pin=USER_PIN, subject="CN=Иванов Иван").ok
    assert enrol.issue_with_training_ca(modules, serial, pin=USER_PIN, term_days=365, directory=tmp_path / "ca").ok
    token = next(t for t in workstation.scan().tokens if t.snapshot.serial == serial)
    screen = ReEnrolScreen(token, lambda: workstation.modules)

    async def scenario() -> None:
        from tests.test_enrol_tui import EnrolApp

        app = EnrolApp(screen)
        async with app.run_test(size=(100, 40)) as pilot:
            await wait_for(pilot, lambda: app.screen is screen)
            screen.query_one("#pin", Input).value = USER_PIN
            await pilot.press("enter")
            await wait_for(pilot, lambda: screen.phase == "remove")
            assert not screen.query_one("#keep").display
            assert "half a pair" in str(screen.query_one("#old-list").render())

    try:
        run(scenario())
    finally:
        workstation.close()
    assert enrol.load_pending(serial) is not None  # still open: `e` comes back to step 5


def _token(**fields: Any) -> ScannedToken:
    snap = _snapshot("0A1B2C50", "SIDOROV", **fields)
    return ScannedToken(snap, tuple(diagnose_token(snap)))


def test_texts_for_broken_registrations() -> None:
    empty = _token().snapshot
    assert "no certificate on it yet" in str(enrol.key_step_text(empty))
    keyless = replace(_certificate("01", "Сидоров", 100), has_key=False)
    broken = _token(certificates=(keyless,))
    assert "cannot sign" in str(enrol.key_step_text(broken.snapshot))
    [finding] = [f for f in broken.findings if f.code == "registration-unfinished"]
    assert "cannot be finished" in finding.explanation and "must be finished" not in finding.explanation
    working = _token(certificates=(_certificate("01", "Сидоров", 100),), keys=(_key("01"),)).snapshot
    assert "keeps working" in str(enrol.key_step_text(working))
    expired = _token(certificates=(_certificate("01", "Сидоров", -3),), keys=(_key("01"),)).snapshot
    assert "cannot sign" in str(enrol.key_step_text(expired))


def test_worst_token_first_and_one_word_for_healthy() -> None:
    async def scenario() -> None:
        app = fixed_app(poll_seconds=0)
        async with app.run_test(size=SIZE) as pilot:
            await first_scan(pilot)
            panels = app.dashboard.panels
            ranks = [panel.token.rank for panel in panels]
            assert ranks == sorted(ranks) and ranks[0] == 0  # the locked token leads
            assert panels[0].token.snapshot.label == "IVANOV"
            assert app.dashboard.selected() is panels[0]
            text = "\n".join(str(panel.render()) for panel in panels)
            assert "Ready" not in text and "Healthy: nothing to fix." in text

    run(scenario())
    fresh = _token()  # named, no keys: the state before the customer's first registration
    assert fresh.healthy and [f.code for f in fresh.findings] == ["profile-empty"]
    from core.report import healthy_text

    assert "ready for the customer's first registration" in healthy_text(fresh)


def test_a_recent_wrong_pin_offers_what_a_helpdesk_does() -> None:
    from core.findings import Action
    from core.snapshot import PinState, PinStatus
    from tui.actions import fix_text

    token = _token(user_pin=PinState(PinStatus.COUNT_LOW, 7, 10))
    [finding] = [f for f in token.findings if f.code == "user-pin-count-low"]
    assert finding.action is Action.UNBLOCK and fix_text(finding.action)[0] == "u"
    assert "7 tries left" in finding.title
    assert "Check the PIN with the customer" in finding.explanation


def test_a_country_spelt_out_is_said_to_be_two_letters() -> None:
    import pytest

    from core.csr import SubjectError, parse_subject

    with pytest.raises(SubjectError) as refused:
        parse_subject("CN=Ivanov Ivan,O=Company,C=Kazakhstan")
    assert str(refused.value) == "The country is two letters (C=KZ), not «Kazakhstan»."
    assert parse_subject("CN=Ivanov Ivan,O=Company\\, Kazakhstan,C=KZ").rfc4514_string().endswith("C=KZ")


def test_check_boxes_and_radio_buttons_read_without_colour() -> None:
    from textual.widgets import Checkbox, RadioButton

    async def scenario() -> None:
        app = fixed_app(poll_seconds=0)
        async with app.run_test(size=SIZE) as pilot:
            await first_scan(pilot)
            fresh = next(panel for panel in app.dashboard.panels if not panel.token.snapshot.label)
            fresh.focus()
            await pilot.press("p")
            await wait_for(pilot, lambda: bool(app.screen.query(Checkbox)))
            box = app.screen.query_one(Checkbox)
            assert not box.value and "[ ]" in str(box.render())
            box.value = True
            await pilot.pause()
            assert "[X]" in str(box.render())
            await pilot.press("escape")
            await pilot.press("down", "c")
            await wait_for(pilot, lambda: bool(app.screen.query(RadioButton)))
            shown = {button.id: str(button.render()) for button in app.screen.query(RadioButton)}
            assert "(●)" in shown["role-user"] and "( )" in shown["role-admin"]

    run(scenario())


def test_the_language_chosen_with_f2_is_remembered(tmp_path: Path) -> None:
    from core.config import load_config, save_language
    from core.i18n import language

    settings = tmp_path / "config.toml"
    settings.write_text('# the helpdesk\'s settings\nmodules = ["/usr/lib/libkztpkcs11.so"]\n', encoding="utf-8")

    async def scenario() -> None:
        app = fixed_app(poll_seconds=0, config=load_config(settings))
        async with app.run_test(size=SIZE) as pilot:
            await first_scan(pilot)
            await pilot.press("f2")
            await pilot.pause()
            assert load_config(settings).config.language == language() != "en"

    run(scenario())
    text = settings.read_text(encoding="utf-8")
    assert "# the helpdesk's settings" in text and "libkztpkcs11" in text  # the rest kept as it was
    assert save_language("ru", settings) is None and save_language("en", settings) is None
    assert load_config(settings).config.language == "en"
    assert settings.read_text(encoding="utf-8").count("language") == 1
    broken = tmp_path / "broken.toml"
    broken.write_text("modules = [\n", encoding="utf-8")
    assert save_language("kk", broken) is not None and broken.read_text(encoding="utf-8") == "modules = [\n"


def test_palette_finds_by_the_customers_words_without_duplicates(tmp_path: Path) -> None:
    from textual.command import CommandList

    def options(app: HelpdeskApp) -> list[str]:
        found = []
        for command_list in app.screen.query(CommandList):
            found += [str(command_list.get_option_at_index(i).prompt) for i in range(command_list.option_count)]
        return found

    async def scenario() -> None:
        app = fixed_app(poll_seconds=0, lab=Lab(tmp_path / "lab", opencryptoki=False))
        async with app.run_test(size=(100, 40)) as pilot:
            await first_scan(pilot)
            await pilot.press("ctrl+p")
            await wait_for(pilot, lambda: len(options(app)) > 5)
            shown = options(app)
            assert sum("Quit" in prompt for prompt in shown) == 1, shown
            for query, expected in (
                ("0200040", "Unblock the user"),
                ("профиль", "Help"),
                ("Разблок", "Unblock the user"),
                ("Форматир", "Format the token"),
                ("train", "Trainer"),
            ):
                app.screen.query_one("Input").value = query
                await wait_for(pilot, lambda expected=expected: any(expected in p for p in options(app)))
            await pilot.press("escape")

    run(scenario())


def test_trainer_asks_before_resetting_every_token_audits_it_and_keeps_its_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from textual.widgets import DataTable

    from core import audit, simulator
    from tests.test_lab import _finalize_simulator

    monkeypatch.setenv(simulator.DIR_ENV, str(tmp_path / "lab" / "sim"))  # as tests/test_lab.py's `lab`
    lab = Lab(tmp_path / "lab", opencryptoki=False)

    async def scenario() -> None:
        app = fixed_app(poll_seconds=0, lab=lab)
        async with app.run_test(size=(100, 30)) as pilot:
            await first_scan(pilot)
            await pilot.press("t")
            await wait_for(pilot, lambda: isinstance(app.screen, TrainerScreen) and bool(app.screen.statuses))
            screen = app.screen
            await pilot.press("a")
            assert screen.asking_all and "Press a again" in str(screen.query_one("#trainer-detail").render())
            await pilot.press("down", "down")  # any other key is a no
            assert not screen.asking_all and not screen.busy and not audit.read()
            row = screen.query_one(DataTable).cursor_row
            assert row == 2
            await pilot.press("escape", "t")
            await wait_for(pilot, lambda: isinstance(app.screen, TrainerScreen) and app.screen is not screen)
            screen = app.screen
            assert screen.query_one(DataTable).cursor_row == row  # where the trainer left it

            await pilot.press("a", "a")
            await wait_for(pilot, lambda: not screen.busy, timeout=180)
            await pilot.press("escape")

    try:
        run(scenario())
    finally:
        _finalize_simulator()
    records = [(e.action, e.serial, e.outcome, e.reason) for e in audit.entries(audit.read())]
    assert records == [("lab-reset", "lab", "done", "all")], records


def test_the_lab_header_is_not_cut_at_80_columns(tmp_path: Path) -> None:
    from tui.widgets import HeaderBar

    async def scenario() -> None:
        app = fixed_app(poll_seconds=0, lab=Lab(tmp_path / "lab", opencryptoki=False))
        async with app.run_test(size=SIZE) as pilot:
            await first_scan(pilot)
            header = str(app.dashboard.query_one(HeaderBar).render())
            assert "LAB" in header and "Trainer" in header and "…" not in header, header

    run(scenario())


def test_help_renders_code_marks_and_no_empty_placeholder() -> None:
    from tui.render import help_body

    text = help_body().plain
    assert "`" not in text and "ag for aq" in text
    assert ": …." not in text and "(…)" not in text
    assert "does not work: <error>" in text and "certificate without its key" in text


def test_audit_rows_put_the_outcome_on_screen_and_no_empty_name() -> None:
    from core.audit import AuditEntry
    from tui.render import audit_detail, audit_row

    entry = AuditEntry("re-enrol", "0A1B2C3D", "done", label="")
    cells = [str(cell) for cell in audit_row(entry)]
    assert cells[1] == "✔ done" and cells[2] == "Re-enrol" and cells[3] == "0A1B2C3D"
    assert "«»" not in audit_detail(entry).plain


def test_scan_explain_wraps_to_the_width_with_its_indent() -> None:
    from core.report import render_text
    from tests.tui_helpers import fixed_result

    text = render_text(fixed_result(), explain=True, width=60)
    assert all(len(line) <= 60 for line in text.splitlines() if line.startswith("      ")), text
    assert len(max(render_text(fixed_result(), explain=True).splitlines(), key=len)) > 60  # piped: one line each


def test_audit_columns_are_as_wide_as_what_they_hold() -> None:
    from textual.widgets import DataTable

    from core import audit
    from core.audit import AuditEntry

    audit.append(AuditEntry("unblock", "0A1B2C40", "done", label="IVANOV"))

    async def scenario() -> None:
        app = fixed_app(poll_seconds=0)
        async with app.run_test(size=SIZE) as pilot:
            await first_scan(pilot)
            await pilot.press("a")
            await wait_for(pilot, lambda: bool(app.screen.query(DataTable)))
            columns = list(app.screen.query_one(DataTable).columns.values())
            assert columns[0].content_width >= len("2026-11-26 09:46")
            assert columns[3].content_width >= len("IVANOV · 0A1B2C40")

    run(scenario())


def test_the_cli_audit_table_speaks_the_language_and_keeps_the_command_name() -> None:
    from core.audit import AuditEntry
    from core.i18n import language, set_language
    from core.snapshot import PinStatus
    from tui.audit_table import audit_row

    before, ok = language(), PinStatus.OK.value  # a PIN's state, as the log keeps it
    entry = AuditEntry("re-enrol", "0A1B2C3D", "done", label="", role="user")
    entry = replace(entry, pin_before=ok, pin_after=ok)
    try:
        set_language("ru")
        cells = audit_row(entry)
        assert cells[2] == "Перевыпустить сертификат" and cells[3] == "готово", cells
        assert "user" not in cells[6] and "ok" not in cells[6], cells
        set_language("kk")
        assert _translated("re-enrol: {error}") == "re-enrol: {error}"  # the command's name, as typed
    finally:
        set_language(before)


def _translated(text: str) -> str:
    from core.i18n import _

    return _(text)


def test_a_toast_breaks_a_path_after_a_slash_never_inside_a_name() -> None:
    from tui.render import break_path

    path = "/root/.local/share/kaztoken-helpdesk/reports/kaztoken-KZ30DC765A6EC750-20261202-022906.md"
    lines = break_path(path, 36).splitlines()
    assert "".join(lines) == path and all(len(line) <= 36 for line in lines)
    assert all(line.endswith(("/", "-")) for line in lines[:-1]), lines
    assert lines[:2] == ["/root/.local/share/", "kaztoken-helpdesk/reports/"], lines


def test_the_header_behind_a_pin_form_follows_the_scans() -> None:
    """ "⟳ scanning…" is redrawn behind an open PIN form: it goes once the slow scans end (issue 14, point 17)."""
    import threading
    import time

    from tests.tui_helpers import FixedScanner
    from tui.widgets import HeaderBar

    slow = threading.Event()

    class SlowWhenAsked(FixedScanner):
        def scan(self, *, refresh: bool = False) -> Any:
            if slow.is_set():
                time.sleep(0.8)  # longer than the console's SLOW_SCAN_SECONDS: the header says it scans
            return super().scan(refresh=refresh)

    async def scenario() -> None:
        app = HelpdeskApp(scanner_factory=SlowWhenAsked, poll_seconds=0.2)
        async with app.run_test(size=(80, 24)) as pilot:
            await first_scan(pilot)
            await pilot.press("c")  # the first token's user PIN is locked: Unblock's form opens
            await wait_for(pilot, lambda: app.screen is not app.dashboard)
            header = app.dashboard.query_one(HeaderBar)
            slow.set()
            await wait_for(pilot, lambda: header.scanning and "scanning" in app.export_screenshot())
            slow.clear()
            await wait_for(pilot, lambda: not header.scanning and "scanning" not in app.export_screenshot())
            assert app.screen is not app.dashboard  # the form stayed open all along

    run(scenario())


def test_many_tokens_are_all_shown_worst_first_and_the_arrows_reach_the_last() -> None:
    """More tokens than fit on the screen: the first scan paints those on screen first and the rest right after
    (tui.dashboard); all of them end up in the scan's order (worst first), and the arrows go down to the last."""
    from tests.tui_helpers import FixedScanner, fixed_result

    base = fixed_result()
    snapshots = [
        _snapshot(
            f"0A1B{number:04X}", f"CLIENT{number:02d}", slot_id=number, certificates=(_certificate("01", "Ким", 400),)
        )
        for number in range(30)
    ]
    tokens = tuple(ScannedToken(snap, tuple(diagnose_token(snap))) for snap in snapshots)
    result = replace(base, tokens=(*base.tokens[1:2], *tokens))  # the locked one first, as core.scan orders them

    async def scenario() -> None:
        app = HelpdeskApp(scanner_factory=lambda: FixedScanner(result), poll_seconds=0)
        async with app.run_test(size=SIZE) as pilot:
            await first_scan(pilot)
            await wait_for(pilot, lambda: len(app.dashboard.panels) == len(result.tokens))
            assert [panel.key for panel in app.dashboard.panels] == [token.snapshot.key for token in result.tokens]
            assert app.dashboard.selected() is app.dashboard.panels[0]
            for _step in range(len(result.tokens)):
                await pilot.press("down")
            await pilot.pause()
            last = app.dashboard.panels[-1]
            assert app.dashboard.selected() is last and on_screen(last)

    run(scenario())
