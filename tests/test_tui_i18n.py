"""The console in kk, ru and en (issue 7): the language key redraws every screen in place, and no screen overflows
at 80×24 in any of the three languages.

Every screen is a scenario: the keys and typing that lead there from the dashboard of a fixed scan (no PKCS#11,
the same text on every run). A screen switched to a language must show exactly what the same screen shows when
the console starts in that language, and keep what was typed, the focus and the selection. Tests that need a
known translation fail with "the ru catalogue has no translation for …" while the catalogue lacks it.
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, Checkbox, DataTable, Input, RadioButton, Select, Static
from textual.widgets._footer import FooterKey

from core import audit
from core.actions import Action, ActionResult, Outcome, Role, Text, tries_text
from core.config import Config, LoadedConfig
from core.diagnostics import diagnose_token, diagnose_workstation
from core.findings import CATALOGUE
from core.i18n import N_, language, set_language
from core.lab import LAB_SO_PIN, LAB_USER_PIN, Lab
from core.lab import SCENARIOS as SCENARIOS_OF_LAB
from core.modules import ModuleReport
from core.scan import ScannedToken, ScanResult
from core.snapshot import KeyInfo, PinState, PinStatus
from tests.test_i18n import ENGLISH_WORD, QUOTED, pseudo_language, require  # noqa: F401 (a fixture)
from tests.tui_helpers import FIXED_NOW, MODULE, FixedScanner, _snapshot, first_scan, fixed_result, run, wait_for
from tui.app import HelpdeskApp
from tui.screens.pin_form import ActionScreen
from tui.screens.re_enrol import ReEnrolScreen
from tui.screens.trainer import TrainerScreen

SIZE = (80, 24)
LANGUAGE_KEY = "f2"
NEW_PIN = "Kazt0ken"  # typed into masked fields; never shown
ADMIN_PIN = "Adm1nPin"


# --- the screens ---------------------------------------------------------------------------------------------------


def scan_result(tokens: bool = True, *, driver: bool = True) -> ScanResult:
    """The fixed scan (tests/tui_helpers.py) and SIDOROV, mid-registration (a key without its certificate)."""
    if not tokens:
        module = MODULE if driver else ModuleReport("/nonexistent/libkztpkcs11.so", "option", False, False, True)
        return ScanResult(
            FIXED_NOW,
            LoadedConfig(Path("/nonexistent/config.toml"), Config()),
            (module,),
            (),
            tuple(diagnose_workstation([module], [])),
        )
    base = fixed_result()
    sidorov = _snapshot("0A1B2C42", "SIDOROV", keys=(KeyInfo("0a", "key-0a", "private", "rsa", 2048, False),))
    return ScanResult(
        base.taken_at,
        base.config,
        base.modules,
        (*base.tokens, ScannedToken(sidorov, tuple(diagnose_token(sidorov)))),
        base.findings,
    )


Steps = Callable[[HelpdeskApp, Pilot[Any]], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: Steps
    known: tuple[str, ...]  # message ids (no placeholders) this screen shows: their translation must appear
    tokens: bool = True
    driver: bool = True
    lab: bool = False
    wait: Callable[[HelpdeskApp], bool] = field(default=lambda app: True)  # what the screen loads by itself


async def nothing(app: HelpdeskApp, pilot: Pilot[Any]) -> None:
    return None


async def select(app: HelpdeskApp, pilot: Pilot[Any], label: str) -> None:
    panel = next(panel for panel in app.dashboard.panels if panel.token.snapshot.label == label)
    panel.focus()
    await pilot.pause()


def opened(label: str, key: str, fill: dict[str, str] | None = None, *then: str) -> Steps:
    """Select the token (by name), press the key, fill the fields in order (the last keeps the focus, as after
    typing), then press the keys in `then`."""

    async def steps(app: HelpdeskApp, pilot: Pilot[Any]) -> None:
        if label:
            await select(app, pilot, label)
        await pilot.press(key)
        await pilot.pause()
        for field_id, value in (fill or {}).items():
            field = app.screen.query_one(f"#{field_id}", Input)
            field.focus()
            field.value = value
        await pilot.pause()
        if then:
            await pilot.press(*then)
            await pilot.pause()

    return steps


UNBLOCK_FIELDS = {"admin_pin": ADMIN_PIN, "new_pin": NEW_PIN, "new_pin_again": NEW_PIN}


async def personalise(app: HelpdeskApp, pilot: Pilot[Any]) -> None:
    await select(app, pilot, "")  # the fresh token; the worst (locked) one leads the dashboard
    await opened("", "p", {"label": "SIDOROVA", "admin_pin": ADMIN_PIN, "new_pin": NEW_PIN})(app, pilot)
    app.screen.query_one("#change-admin", Checkbox).value = True  # the new admin PIN pair shows too
    await pilot.pause()
    field = app.screen.query_one("#new_pin_again", Input)
    field.focus()
    field.value = "Kazt"


def answered(outcome: Outcome) -> Steps:
    """Typed, then the core's answer as the worker would post it: the result lines, drawn from message ids."""

    async def steps(app: HelpdeskApp, pilot: Pilot[Any]) -> None:
        await opened("IVANOV", "u", UNBLOCK_FIELDS)(app, pilot)
        screen = app.screen
        assert isinstance(screen, ActionScreen)
        before = screen.snapshot
        if outcome is Outcome.DONE:
            done = N_("«PIN-код успешно разблокирован»: the user PIN is unblocked and set to the new one.")
            texts: tuple[Text | None, ...] = (Text(done),)
            after = replace(before, user_pin=PinState(PinStatus.OK, 10, 10))
        else:
            # The role's name as a Text of its own: translated when shown, like the rest.
            wrong = Text(N_("Wrong {pin}."), {"pin": Text(N_("admin PIN"))})
            texts, after = (wrong, tries_text(PinState(PinStatus.COUNT_LOW, 2, 10))), before
        default = N_("The admin PIN is still the factory default: anyone can unblock or format this token. Change it.")
        result = ActionResult(
            Action.UNBLOCK,
            outcome,
            before.serial,
            before.label,
            Role.ADMIN,
            texts=tuple(text for text in texts if text is not None),
            warnings=(Text(default),),
            field="admin_pin",
            before=before,
            after=after,
        )
        screen.post_message(ActionScreen.Finished(result))
        await wait_for(pilot, lambda: screen.result is result)

    return steps


async def re_enrol(app: HelpdeskApp, pilot: Pilot[Any]) -> None:
    """The PIN typed and Enter: the login step runs in its worker and answers (no module here: not found)."""
    await opened("PETROV", "e", {"pin": NEW_PIN}, "enter")(app, pilot)
    screen = app.screen
    assert isinstance(screen, ReEnrolScreen)
    await wait_for(pilot, lambda: screen.last is not None and screen.busy is None)


def write_audit() -> None:
    for outcome in ("wrong-pin", "done"):
        audit.append(
            audit.AuditEntry(
                action="unblock",
                outcome=outcome,
                serial="0A1B2C40",
                label="IVANOV",
                module=MODULE.path,
                role="admin",
                findings_before=("user-pin-locked",),
                findings_after=() if outcome == "done" else ("user-pin-locked",),
                pin_before="locked",
                pin_after="ok" if outcome == "done" else "locked",
                tries_before=3,
                tries_after=2 if outcome != "done" else 3,
            )
        )


SCENARIOS = (
    Scenario("dashboard", nothing, ("Healthy: nothing to fix.", "Language")),
    Scenario("no-driver", nothing, ("This computer",), tokens=False, driver=False),
    Scenario("no-token", nothing, ("No token plugged in", "Plug the KAZTOKEN in."), tokens=False),
    Scenario("details", opened("IVANOV", "enter"), ("Findings", "Objects (keys)", "User PIN locked")),
    Scenario(
        "help",
        opened("", "question_mark"),
        ("Findings, worst first, and what to say", "The OTP card PIN: 11 characters, all upper case (Caps Lock!)."),
    ),
    Scenario("audit", opened("", "a"), ("Findings before → after", "When")),
    Scenario("personalise", personalise, ("Token name", "Also set a new admin PIN", "Repeat it")),
    Scenario("personalise-refused", opened("PETROV", "p"), ("Close", "Esc: close")),
    Scenario(
        "change-pin", opened("PETROV", "c", {"current_pin": NEW_PIN, "new_pin": "Kaz"}), ("Which PIN", "Current PIN")
    ),
    Scenario(
        "change-pin-locked",
        opened("IVANOV", "c"),
        ("The user PIN is locked: it cannot be changed, only unblocked with the admin PIN.",),
    ),
    Scenario(
        "unblock",
        # Enter on the last field: the fixed scan has no modules, so the screen says it is loading the driver.
        opened("IVANOV", "u", UNBLOCK_FIELDS, "enter"),
        ("The console is still loading the driver: wait for the first scan, then try again.", "Unblock the user PIN"),
    ),
    Scenario("unblock-wrong-pin", answered(Outcome.WRONG_PIN), ("Esc: cancel",)),
    Scenario("unblock-done", answered(Outcome.DONE), ("Close", "Esc: close")),
    Scenario("format", opened("PETROV", "f", {"confirmation": "PETR"}), ("Confirmation", "not the name or serial yet")),
    Scenario("format-refused", opened("SIDOROV", "f"), ("Close",)),
    Scenario("re-enrol", re_enrol, ("Log in", "Key type", "Generate key pair")),
    Scenario(
        "trainer",
        opened("", "t"),
        ("Scenario", "Reset all"),
        lab=True,
        wait=lambda app: isinstance(app.screen, TrainerScreen) and bool(app.screen.statuses),
    ),
)
BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    """An empty lab (nothing built): the trainer's menu lists its scenarios as not built."""
    return Lab(tmp_path / "lab", opencryptoki=False)


@pytest.fixture(autouse=True)
def audit_entries() -> None:
    write_audit()  # each test has its own XDG dirs (conftest), so its own audit log


def make_app(scenario: Scenario, lab: Lab) -> HelpdeskApp:
    result = scan_result(scenario.tokens, driver=scenario.driver)
    return HelpdeskApp(scanner_factory=lambda: FixedScanner(result), poll_seconds=0, lab=lab if scenario.lab else None)


async def open_scenario(app: HelpdeskApp, pilot: Pilot[Any], scenario: Scenario) -> None:
    await first_scan(pilot)
    if scenario.tokens:
        await wait_for(pilot, lambda: app.dashboard.selected() is not None)
    await scenario.steps(app, pilot)
    await wait_for(pilot, lambda: scenario.wait(app))
    await pilot.pause(0.1)


# --- what a screen shows -----------------------------------------------------------------------------------------


def _name(widget: Widget) -> str:
    return f"{type(widget).__name__}#{widget.id}" if widget.id else type(widget).__name__


def _notification(widget: Widget) -> bool:
    return any(type(node).__name__ in ("ToastRack", "Tooltip") for node in widget.ancestors_with_self)


def shown_texts(screen: Screen[Any]) -> list[tuple[str, str]]:
    """Every text of the screen, hidden parts included (they show later, in the language of the moment): the
    Statics' content, border titles, labels of buttons and checkboxes, placeholders, choices, table headings and
    cells, the Footer's keys. Not what was typed (see `typed_values`) nor notifications (said once)."""
    texts: list[tuple[str, str]] = []
    for widget in screen.walk_children(with_self=True):
        if not isinstance(widget, Widget) or _notification(widget):
            continue
        name = _name(widget)
        for attribute in ("border_title", "border_subtitle"):
            if getattr(widget, attribute, None):
                texts.append((f"{name}.{attribute}", str(getattr(widget, attribute))))
        if isinstance(widget, Button | Checkbox | RadioButton):
            texts.append((name, str(widget.label)))
        elif isinstance(widget, Input):
            texts.append((f"{name}.placeholder", str(widget.placeholder)))
        elif isinstance(widget, Static):
            texts.append((name, str(widget.render())))
        elif isinstance(widget, Select):
            texts.append((f"{name}.options", " | ".join(str(prompt) for prompt, _value in widget._options)))
        elif isinstance(widget, DataTable):
            texts.append((f"{name}.columns", " | ".join(str(column.label) for column in widget.columns.values())))
            for row in range(widget.row_count):
                texts.append((f"{name}.row{row}", " | ".join(str(cell) for cell in widget.get_row_at(row))))
        elif isinstance(widget, FooterKey):
            texts.append((name, f"{widget.key_display} {widget.description}"))
    return texts


def typed_values(screen: Screen[Any]) -> list[tuple[str | None, int]]:
    """Each field and a hash of what is in it: compared, never printed (PINs)."""
    return [(field.id, hash(field.value)) for field in screen.query(Input)]


def state(app: HelpdeskApp) -> tuple[object, ...]:
    """What a language switch must leave alone: the screen, what is typed, the focus, checkboxes, selections."""
    screen = app.screen
    checks = [(box.id, box.value) for box in screen.query(Checkbox).results()] + [
        (radio.id, radio.value) for radio in screen.query(RadioButton).results()
    ]
    tables = [(table.id, table.cursor_row) for table in screen.query(DataTable)]
    selected = app.dashboard.selected()
    return (
        type(screen).__name__,
        typed_values(screen),
        screen.focused.id if screen.focused else None,
        checks,
        tables,
        selected.key if selected else None,
        len(app.screen_stack),
    )


def as_text(texts: list[tuple[str, str]]) -> str:
    return "\n".join(text for _name, text in texts)


def differences(got: list[tuple[str, str]], want: list[tuple[str, str]]) -> str:
    lines = [
        f"  {g[0]}: {g[1]!r}\n  {'':>{len(g[0])}}  fresh: {w[1]!r}" for g, w in zip(got, want, strict=False) if g != w
    ]
    if len(got) != len(want):
        lines.append(f"  {len(got)} texts, a fresh screen has {len(want)}")
    return "\n".join(lines[:8])


async def fresh_texts(scenario: Scenario, lab: Lab, lang: str) -> list[tuple[str, str]]:
    """The screen as the console shows it when it starts in `lang` (as `--lang` or the settings would start it)."""
    set_language(lang)
    app = make_app(scenario, lab)
    async with app.run_test(size=SIZE) as pilot:
        await open_scenario(app, pilot, scenario)
        return await settled_texts(pilot, app)


async def settled_texts(pilot: Pilot[Any], app: HelpdeskApp) -> list[tuple[str, str]]:
    """The screen's texts once two looks in a row agree: under load the Footer can gain its last key a frame
    after the rest of the screen."""
    texts = shown_texts(app.screen)
    for _ in range(100):
        await pilot.pause(0.05)
        again = shown_texts(app.screen)
        if again == texts:
            return texts
        texts = again
    return texts


# --- the language key ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BY_NAME))
def test_language_key_redraws_the_screen_in_place(name: str, lab: Lab) -> None:
    """The key cycles en → kk → ru → en. After each press what was typed, the focus, the ticks and the selection
    are still there; in ru (two switches in) the screen is the one a console started in ru shows, and back in
    English it is the one it started with: nothing is left in another language."""
    scenario = BY_NAME[name]

    async def scenario_run() -> None:
        fresh = {"ru": await fresh_texts(scenario, lab, "ru")}
        set_language("en")
        app = make_app(scenario, lab)
        async with app.run_test(size=SIZE) as pilot:
            await open_scenario(app, pilot, scenario)
            kept, fresh["en"] = state(app), await settled_texts(pilot, app)  # started in English: as it starts
            for lang in ("kk", "ru", "en"):  # the order the key cycles through, from English
                await pilot.press(LANGUAGE_KEY)
                await pilot.pause()
                assert language() == lang
                assert state(app) == kept, f"{name}: the switch to {lang} lost what was typed, focused or selected"
                texts = await settled_texts(pilot, app)
                if lang == "kk":
                    kazakh = as_text(texts)
                    continue
                assert texts == fresh[lang], (
                    f"{name} switched to {lang} is not what the console shows when it starts in {lang}:\n"
                    + differences(texts, fresh[lang])
                )
        for lang, text in (("kk", kazakh), ("ru", as_text(fresh["ru"]))):
            for msgid in scenario.known:
                assert require(msgid, lang) in text, f"{name} in {lang}: {require(msgid, lang)!r} not shown"

    run(scenario_run())


def test_the_language_key_is_in_the_footer_in_every_language() -> None:
    async def scenario_run() -> None:
        app = make_app(BY_NAME["dashboard"], Lab(Path("/nonexistent"), opencryptoki=False))
        async with app.run_test(size=SIZE) as pilot:
            await first_scan(pilot)
            for lang in ("kk", "ru", "en"):
                await pilot.press(LANGUAGE_KEY)
                await pilot.pause()
                footer = {key.key: key.description for key in app.screen.query(FooterKey)}
                assert footer.get(LANGUAGE_KEY) == require("Language", lang)

    run(scenario_run())


# --- nothing left in English ---------------------------------------------------------------------------------------


def data_words(app: HelpdeskApp) -> set[str]:
    """Words that are data, not text: what the tokens, modules, audit log and lab hold, codes, names."""
    result = app.result
    assert result is not None
    data: list[object] = [token.snapshot.to_dict() for token in result.tokens]
    data += [report.to_dict() for report in result.modules]
    data += [entry.to_dict() for entry in audit.read()]
    data += [[item.id, str(item.stack), LAB_USER_PIN, LAB_SO_PIN] for item in SCENARIOS_OF_LAB]
    data += [list(CATALOGUE), socket.gethostname(), getpass.getuser(), "KAZTOKEN", "LAB", "esc", "CN", "UTC"]
    return {word.lower() for word in ENGLISH_WORD.findall(json.dumps(data, ensure_ascii=False, default=str))}


@pytest.mark.parametrize("name", list(BY_NAME))
def test_no_english_left_in_another_language(name: str, lab: Lab, pseudo_language: str) -> None:  # noqa: F811
    """Every word a screen shows comes from the catalogue or is data: in the pseudo-language no English is left,
    neither at start nor after the language key."""
    scenario = BY_NAME[name]

    async def scenario_run() -> None:
        set_language(pseudo_language)
        app = make_app(scenario, lab)
        async with app.run_test(size=SIZE) as pilot:
            await open_scenario(app, pilot, scenario)
            allowed = data_words(app)
            left = {
                f"{widget}: {word!r} in {text[:70]!r}"
                for widget, text in shown_texts(app.screen)
                for word in ENGLISH_WORD.findall(QUOTED.sub(" ", text))  # «…»: the customer's Russian, names
                if word.lower() not in allowed
            }
            assert not left, f"{name}: English not looked up in the catalogue:\n  " + "\n  ".join(sorted(left))

    run(scenario_run())


# --- 80×24 ---------------------------------------------------------------------------------------------------------


def _scrolls(widget: Widget) -> tuple[bool, bool]:
    """Whether a widget scrolls its content (sideways, down): then what it holds may go past its edges that way."""
    styles = widget.styles
    return styles.overflow_x in ("auto", "scroll"), styles.overflow_y in ("auto", "scroll")


def overflows(screen: Screen[Any]) -> list[str]:
    """What is cut off on this screen. Something overflows when:
    1. a widget sticks out past its container's right or bottom edge, where the container does not scroll that
       way, or out of the screen;
    2. a container that scrolls (the Footer, a VerticalScroll, a dialog) has more than its width to show:
       something is hidden past the right edge, or a sideways scrollbar appears. Scrolling down is fine (help,
       details, a dialog taller than the terminal). A DataTable may scroll sideways: its cells are data of any
       length, and the line under it spells the highlighted row out;
    3. a text needs more lines than its widget has (a one-line title that wraps, a fixed-height row);
    4. a border title or subtitle is longer than its border (it would be cut with "…");
    5. an input's placeholder is longer than the input.
    Hidden widgets do not count; notifications neither (they come and go)."""
    problems: list[str] = []
    for widget in screen.walk_children():
        if isinstance(widget, Widget) and not _notification(widget) and widget.region.area:
            for check in (_outside, _too_narrow, _text_cut, _titles_cut, _placeholder_cut):
                problems += check(widget, screen)
    return problems


def _outside(widget: Widget, screen: Screen[Any]) -> list[str]:
    """Rule 1: out of the screen, or out of a container that does not scroll that way."""
    name, region, parent = _name(widget), widget.region, widget.parent
    problems = []
    if not screen.region.contains_region(region) and not _inside_scrolling(widget):
        problems.append(f"{name} {region} is off the {screen.region.width}×{screen.region.height} screen")
    if isinstance(parent, Widget) and parent is not screen and parent.region.area:
        sideways, down = _scrolls(parent)
        box = parent.content_region
        if not sideways and region.right > box.right:
            problems.append(f"{name} ends at column {region.right}, past its {_name(parent)} ({box.right})")
        if not down and not _inside_scrolling(parent) and region.bottom > box.bottom:
            problems.append(f"{name} ends at row {region.bottom}, past its {_name(parent)} ({box.bottom})")
    return problems


def _too_narrow(widget: Widget, screen: Screen[Any]) -> list[str]:
    """Rule 2: a scrolling container with more than its width to show (a DataTable may)."""
    if any(_scrolls(widget)) and not isinstance(widget, DataTable) and widget.max_scroll_x > 0:
        return [f"{_name(widget)} is {widget.max_scroll_x} column(s) too narrow for what it holds"]
    return []


def _text_cut(widget: Widget, screen: Screen[Any]) -> list[str]:
    """Rule 3: a text with more lines than its widget has room for."""
    size = widget.content_region.size
    if not isinstance(widget, Static) or not size.width or _scrolls(widget)[1]:
        return []
    needed = widget.get_content_height(size, screen.size, size.width)
    if needed > size.height:
        return [f"{_name(widget)} needs {needed} line(s), has {size.height}: {str(widget.render())[:60]!r}…"]
    return []


def _titles_cut(widget: Widget, screen: Screen[Any]) -> list[str]:
    """Rule 4: a border title or subtitle longer than the border."""
    problems = []
    for attribute in ("border_title", "border_subtitle"):
        title = str(getattr(widget, attribute, None) or "")
        if title and cell_len(title) > widget.region.width - 4:
            problems.append(f"{_name(widget)}'s {attribute} ({cell_len(title)} columns) is cut: {title!r}")
    return problems


def _placeholder_cut(widget: Widget, screen: Screen[Any]) -> list[str]:
    """Rule 5: an input's placeholder longer than the input."""
    if isinstance(widget, Input) and cell_len(widget.placeholder) > widget.content_region.width:
        return [f"{_name(widget)}'s placeholder is cut: {widget.placeholder!r}"]
    return []


def _inside_scrolling(widget: Widget) -> bool:
    """Inside a container that scrolls down: may be below the visible part."""
    return any(_scrolls(node)[1] for node in widget.ancestors if isinstance(node, Widget))


@pytest.mark.parametrize("name", list(BY_NAME))
def test_no_screen_overflows_at_80x24(name: str, lab: Lab) -> None:
    """Every screen fits 80×24 in each language, whichever turns out the longest (see `overflows` for what
    fitting means). The languages are reached with the key: the test above shows a switched screen is the one a
    console started in that language shows."""
    scenario = BY_NAME[name]

    async def scenario_run() -> None:
        set_language("en")
        app = make_app(scenario, lab)
        found = []
        async with app.run_test(size=SIZE) as pilot:
            await open_scenario(app, pilot, scenario)
            for lang in ("kk", "ru", "en"):
                await pilot.press(LANGUAGE_KEY)
                await pilot.pause()
                found += [f"{lang}: {problem}" for problem in overflows(app.screen)]
        assert not found, f"{name} overflows 80×24:\n  " + "\n  ".join(found)

    run(scenario_run())


def test_overflow_check_sees_a_cut_text() -> None:
    """The check itself: a one-line title too long for 80 columns, a Footer label too long, are reported."""
    from textual.app import App, ComposeResult
    from textual.widgets import Footer

    class Cramped(App[None]):
        BINDINGS = [(key, f"bell_{key}", "x" * 12) for key in "abcdefgh"]  # noqa: RUF012

        def compose(self) -> ComposeResult:
            yield Static("word " * 20, classes="title")
            yield Footer(compact=True)

        CSS = ".title { height: 1; }"

    async def scenario_run() -> None:
        app = Cramped()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            problems = "\n".join(overflows(app.screen))
            assert "needs 2 line(s), has 1" in problems
            assert "Footer" in problems

    run(scenario_run())
