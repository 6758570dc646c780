"""The console: a dashboard of every connected token, kept current by a background scan every second.

No PKCS#11 call runs on the UI thread. Loading the modules and every scan happen in one exclusive thread
worker (group "scan"); its result comes back as a message and the dashboard is repainted from it, so keys are
answered at once even while a slow token is being read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

import platformdirs
from pkcs11.exceptions import PKCS11Error
from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.command import CommandPalette
from textual.containers import Container, VerticalScroll
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState, get_current_worker

from core import operator_lock
from core.config import APP_NAME, LoadedConfig, load_config, save_language
from core.delivery import Courier, Plan
from core.i18n import N_, _, next_language, set_language
from core.i18n import language as language_now
from core.modules import Module
from core.report import ticket_report
from core.scan import ScannedToken, ScanResult, Workstation
from core.snapshot import PinStatus
from core.untrusted import file_part, visible
from tui import lang, render
from tui.actions import BY_ID, TOKEN_ACTIONS, action_bindings, retranslate_bindings, translate_bindings
from tui.commands import ActionsProvider
from tui.screens.audit import AuditScreen
from tui.screens.change_pin import ChangePinScreen
from tui.screens.details import DetailsScreen
from tui.screens.format import FormatScreen
from tui.screens.help import HelpScreen
from tui.screens.personalise import PersonaliseScreen
from tui.screens.pin_form import ActionScreen
from tui.screens.re_enrol import ReEnrolScreen
from tui.screens.trainer import TrainerScreen
from tui.screens.unblock import UnblockScreen
from tui.widgets import HeaderBar, TokenPanel, WorkstationPanel

if TYPE_CHECKING:
    from core.lab import Lab


class Scanner(Protocol):
    """What the console needs from core.scan.Workstation (tests may hand in a fixed one)."""

    def scan(self, *, refresh: bool = False) -> ScanResult: ...


class ScanDone(Message):
    def __init__(self, result: ScanResult) -> None:
        super().__init__()
        self.result = result


class ScanFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


def reports_dir() -> Path:
    return platformdirs.user_data_path(APP_NAME) / "reports"


def report_path(token: ScannedToken | None) -> Path:
    """Where the `x` key writes a token's ticket report: named after its serial, which the token chose, so only
    its letters, digits, - and _ make the name, and the file is in the reports directory whatever it said."""
    if token is None:
        name = "workstation"
    else:
        name = file_part(token.snapshot.serial, fallback="") or f"slot-{token.snapshot.slot_id}"
    return reports_dir() / f"kaztoken-{name}-{datetime.now():%Y%m%d-%H%M%S}.md"


class Dashboard(Screen[None]):
    """The main screen: header, the workstation panel when something is wrong, one panel per token."""

    def compose(self) -> ComposeResult:
        header = HeaderBar(id="header")
        header.scanning = True  # the first scan starts with the console
        header.lab = getattr(self.app, "lab", None) is not None
        yield header
        # Not focusable itself: the focus is always on a panel, so the arrows select rather than scroll.
        with VerticalScroll(id="main", can_focus=False):
            yield WorkstationPanel()
            yield lang.tr(Static(id="placeholder"), N_("Looking for tokens…"))
            yield Container(id="tokens")
        yield Footer(compact=True, show_command_palette=False)

    @property
    def panels(self) -> list[TokenPanel]:
        return list(self.query_one("#tokens").query_children(TokenPanel))

    @property
    def columns(self) -> int:
        return 2 if self.has_class("-wide") else 1

    def selected(self) -> TokenPanel | None:
        return self.focused if isinstance(self.focused, TokenPanel) else None

    def show(self, result: ScanResult) -> None:
        """Repaint from a scan: panels keep their place and focus across rescans; only changes repaint."""
        self._paint_header(result)
        self.query_one(WorkstationPanel).show(result)
        self.query_one("#placeholder").display = False
        grid = self.query_one("#tokens")
        existing = {panel.key: panel for panel in self.panels}
        wanted = {token.snapshot.key for token in result.tokens}
        focused = self.selected()
        focus_index = self.panels.index(focused) if focused else 0
        for key, panel in existing.items():
            if key not in wanted:
                panel.remove()
        previous: TokenPanel | None = None
        for token in result.tokens:  # worst first already (core.scan)
            panel = existing.get(token.snapshot.key)
            if panel is not None:
                panel.show(token)
                placed = grid.children.index(panel) == (grid.children.index(previous) + 1 if previous else 0)
                if not placed:  # its severity changed: it moves, the focus with it
                    grid.move_child(panel, after=previous) if previous else grid.move_child(panel, before=0)
            else:
                panel = TokenPanel(token)
                if previous is None:
                    grid.mount(panel, before=0) if grid.children else grid.mount(panel)
                else:
                    grid.mount(panel, after=previous)
            previous = panel
        if focused is None or focused.key not in wanted:
            self.call_after_refresh(self._refocus, focus_index)

    def _paint_header(self, result: ScanResult) -> None:
        header = self.query_one(HeaderBar)
        header.modules_text = render.modules_line(result.modules)
        header.summary = _("tokens: {count}").format(count=len(result.tokens))

    def retranslate(self) -> None:
        """The language changed: the header, the workstation panel and every token panel, drawn again in place."""
        result = getattr(self.app, "result", None)
        if result is not None:
            self._paint_header(result)
        self.query_one(HeaderBar).refresh()
        self.query_one(WorkstationPanel).retranslate(result)
        for panel in self.panels:
            panel.retranslate()

    def _refocus(self, index: int) -> None:
        panels = [panel for panel in self.panels if panel.is_attached and not panel._closing]
        if panels and self.selected() is None:
            self.set_focus(panels[min(index, len(panels) - 1)])

    def move(self, step: int) -> None:
        panels = self.panels
        if not panels:
            return
        current = self.selected()
        index = panels.index(current) + step if current in panels else 0
        self.set_focus(panels[max(0, min(index, len(panels) - 1))])


class HelpdeskApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "KAZTOKEN helpdesk"
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]] | None] = [(0, "-narrow"), (160, "-wide")]
    COMMANDS = App.COMMANDS | {ActionsProvider}
    BINDINGS: ClassVar[list[BindingType]] = [
        *action_bindings(),
        # Lab mode only (see check_action); said in the header's LAB mark, the Footer has no room left at 80 columns.
        Binding("t", "trainer", N_("Trainer"), id="trainer", show=False),
    ]

    POLL_SECONDS = 1.0
    SLOW_SCAN_SECONDS = 0.5  # a background poll shows "scanning…" only when it takes longer than this
    HANGUP_GRACE_SECONDS = 2.0  # after a hang-up, leave this long later even if the shutdown hangs on the dead tty

    def _fatal_error(self) -> None:
        """An unexpected error: one line on leaving, never Textual's traceback, whose locals may hold typed PINs."""
        import sys

        from rich.text import Text as RichText

        from tui.cli import unexpected_detail

        error = sys.exc_info()[1] or self._exception
        detail = unexpected_detail(error) if error is not None else ""
        line = _("The console failed unexpectedly ({kind}){detail}.").format(
            kind=type(error).__name__, detail=f": {detail}" if detail else ""
        )
        self.bell()
        self._exit_renderables.append(RichText(line))
        self._close_messages_no_wait()

    def __init__(
        self,
        modules: Sequence[str] = (),
        *,
        config: LoadedConfig | None = None,
        scanner_factory: Callable[[], Scanner] | None = None,
        poll_seconds: float | None = None,
        lab: Lab | None = None,
        library_timeout: float | None = None,
    ) -> None:
        super().__init__()
        translate_bindings(self)
        self.lab = lab
        if lab is not None:
            self.title = f"{self.TITLE} · LAB"
        self.modules = list(modules)
        self.config = config
        self._scanner_factory = scanner_factory or (
            lambda: Workstation(self.modules, config=self.config, timeout=library_timeout)
        )
        self._scanner: Scanner | None = None
        self._action_modules: list[Module] | None = None
        self.leave_for_sure = False  # `run` sets it: a test's Pilot must not be ended by the exit watchdog
        self._scan_lock = threading.Lock()  # one scan at a time, even when `r` replaces a running one
        self._scan_worker: Worker[None] | None = None
        self._scan_generation = 0
        self._last_error: str | None = None
        self.poll_seconds = self.POLL_SECONDS if poll_seconds is None else poll_seconds
        self.result: ScanResult | None = None
        self.last_report: Path | None = None
        self._courier = Courier(Plan.configured((config or load_config()).config))  # the audit's sinks

    # --- lifecycle -----------------------------------------------------------------------------------------

    def get_default_screen(self) -> Dashboard:
        return Dashboard()

    @property
    def dashboard(self) -> Dashboard:
        screen = self.screen_stack[0]
        assert isinstance(screen, Dashboard)
        return screen

    def on_mount(self) -> None:
        self.start_scan(manual=True)
        if self.poll_seconds > 0:
            self.set_interval(self.poll_seconds, self._poll)
        # The SSH link dropped: the terminal is gone, leave quietly instead of dying mid-write.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, self._hang_up)
            loop.add_signal_handler(signal.SIGTERM, self.exit)

    def _hang_up(self) -> None:
        """The terminal is gone. Its pty is dead, and the shutdown's last writes (restoring the terminal modes)
        would block on it forever: point the standard streams at /dev/null first, then leave as usual."""
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_RDWR)
            for stream in (0, 1, 2):
                os.dup2(devnull, stream)
        # Textual's driver can still hang in its shutdown on a vanished pty (its writer queue, seen in about
        # one hang-up in three): leave for sure after a grace period. Nothing is lost; a scan never writes.
        watchdog = threading.Timer(self.HANGUP_GRACE_SECONDS, os._exit, args=(128 + signal.SIGHUP,))
        watchdog.daemon = True
        watchdog.start()
        self.exit()

    def release(self) -> None:
        """Let go of the PKCS#11 modules once the UI is gone (waits for a scan still running in its thread)."""
        close = getattr(self._scanner, "close", None)  # a test's fixed scanner has none
        if close is not None:
            close()

    EXIT_GRACE_SECONDS = 5.0

    def on_unmount(self) -> None:
        if self.leave_for_sure:
            # A library stuck in an action's thread would keep the process alive after the UI is gone (the event
            # loop waits for its threads): leave for sure once the terminal has been given back.
            watchdog = threading.Timer(self.EXIT_GRACE_SECONDS, lambda: os._exit(self.return_code or 0))
            watchdog.daemon = True
            watchdog.start()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop = asyncio.get_running_loop()
            loop.remove_signal_handler(signal.SIGHUP)
            loop.remove_signal_handler(signal.SIGTERM)

    # --- scanning ------------------------------------------------------------------------------------------

    @property
    def scanning(self) -> bool:
        worker = self._scan_worker
        return worker is not None and worker.state in (WorkerState.PENDING, WorkerState.RUNNING)

    def start_scan(self, *, manual: bool = False) -> None:
        self._scan_generation += 1
        self._scan_worker = self._scan(full=manual)
        if manual:
            self._set_scanning(True)
        else:
            generation = self._scan_generation
            self.set_timer(self.SLOW_SCAN_SECONDS, lambda: self._slow_scan(generation))

    @property
    def closing(self) -> bool:
        """The screens are gone (the console is shutting down) while a scan's message or timer still lands."""
        return not self.screen_stack

    def _set_scanning(self, scanning: bool) -> None:
        # The header does not exist yet when the first scan starts from on_mount; it starts as "scanning".
        if self.closing:
            return
        with contextlib.suppress(NoMatches):
            self.dashboard.query_one(HeaderBar).scanning = scanning

    def _slow_scan(self, generation: int) -> None:
        if generation == self._scan_generation and self.scanning:
            self._set_scanning(True)

    def _poll(self) -> None:
        if not self.scanning:
            self.start_scan()
        if self._courier.due():
            self._deliver_audit()

    @work(thread=True, group="audit", exit_on_error=False)
    def _deliver_audit(self) -> None:
        """The audit trail on to syslog, PostgreSQL… (core.delivery): network and disk, so never on the UI thread."""
        self._courier.tick()

    @work(thread=True, exclusive=True, group="scan", exit_on_error=False)
    def _scan(self, full: bool) -> None:
        """A manual scan (`r`, after an action, the trainer) reads everything; a poll only what changed."""
        worker = get_current_worker()
        with self._scan_lock:
            if worker.is_cancelled:
                return  # `r` asked for a newer scan while this one waited
            try:
                if self._scanner is None:
                    self._scanner = self._scanner_factory()  # loads the modules: PKCS#11, so here
                    result = self._scanner.scan()
                else:
                    result = self._scanner.scan(refresh=not full)
                # The libraries that read well are loaded here for actions, in this thread: never on the UI's.
                modules = getattr(self._scanner, "modules", None)  # a test's fixed scanner has none
                self._action_modules = list(modules) if modules is not None else None
            except Exception as error:
                self.post_message(ScanFailed(f"{type(error).__name__}: {error}"))
                return
        if not worker.is_cancelled:
            self.post_message(ScanDone(result))

    def on_scan_done(self, message: ScanDone) -> None:
        if self.closing:
            return
        self.result = message.result
        self._last_error = None
        self._set_scanning(False)
        self.dashboard.show(message.result)
        for screen in self.screen_stack:
            if isinstance(screen, DetailsScreen):
                screen.show(self._token(screen.key))

    def on_scan_failed(self, message: ScanFailed) -> None:
        if self.closing:
            return
        self._set_scanning(False)
        if message.error != self._last_error:  # polling repeats it every second; say it once
            self._last_error = message.error
            self.notify(
                _("The scan failed: {error}. Retrying.").format(error=visible(message.error)),
                severity="error",
                markup=False,
            )

    def _token(self, key: str) -> ScannedToken | None:
        if self.result is None:
            return None
        return next((token for token in self.result.tokens if token.snapshot.key == key), None)

    # --- selection -----------------------------------------------------------------------------------------

    def selected_token(self) -> ScannedToken | None:
        """The token the actions apply to: the one on the details screen, else the focused panel."""
        if isinstance(self.screen, DetailsScreen):
            return None if self.screen.gone else self.screen.token
        panel = self.dashboard.selected()
        if panel is not None:
            return self._token(panel.key) or panel.token
        return None

    def action_select(self, step: int, unit: str = "row") -> None:
        self.dashboard.move(step * (self.dashboard.columns if unit == "row" else 1))

    def on_token_panel_chosen(self, message: TokenPanel.Chosen) -> None:
        token = self._token(message.key)
        if token is not None:
            self.push_screen(DetailsScreen(token))

    def action_details(self) -> None:
        token = self.selected_token()
        if token is None:
            self.notify(_("No token selected."), severity="warning")
        elif not isinstance(self.screen, DetailsScreen):
            self.push_screen(DetailsScreen(token))

    # --- actions -------------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in BY_ID and BY_ID[action].always:
            return True
        # One rule for every screen that holds a token (an action form, the re-enrolment): its keys are its own;
        # nothing global (quit, rescan, the trainer, another action) acts underneath it, typed or from the palette.
        if getattr(self.screen, "HOLDS_TOKEN", False) and (action in BY_ID or action == "trainer"):
            return False
        if action == "trainer":
            return self.lab is not None  # no key outside the lab
        # The trainer's menu is open: its keys are the menu's; no token action starts underneath it.
        if action in TOKEN_ACTIONS and isinstance(self.screen, TrainerScreen):
            return False
        # The audit log has no selected token to act on.
        return not (action in TOKEN_ACTIONS and isinstance(self.screen, AuditScreen))

    def modules_for_actions(self) -> list[Module] | None:
        """The loaded PKCS#11 modules for an action (run in a thread worker), or None before the first scan."""
        return self._action_modules

    @property
    def remember_admin_pins(self) -> bool:
        """The settings allow keeping admin PINs in the OS keyring (off by default)."""
        config = self.config or (self.result.config if self.result else None)
        return bool(config and config.config.remember_admin_pins)

    def open_action(self, screen: type[ActionScreen], *, note: str = "", **options: object) -> None:
        """Open an action screen for the selected token, holding the token's operator lock while it is open."""
        token = self._locked_token(str(screen.ACTION))
        if token is not None:
            self.push_screen(screen(token, note=note, **options))  # type: ignore[arg-type]

    def _locked_token(self, action: str) -> ScannedToken | None:
        """The selected token with its operator lock taken for `action`, or None (and why, notified)."""
        token = self.selected_token()
        if token is None:
            self.notify(_("No token selected."), severity="warning")
            return None
        serial = token.snapshot.serial
        if not serial:
            self.notify(_("This token reports no serial number: the console cannot act on it."), severity="error")
            return None
        try:
            operator_lock.acquire(serial, action)
        except operator_lock.TokenBusy as busy:
            who = busy.holder.describe() if busy.holder else _("another process")
            self.notify(
                _("Another operator is working on this token: {who}. Try again when they are done.").format(who=who),
                title=_("Token in use"),
                severity="error",
                markup=False,
            )
            return None
        except OSError as error:
            self.notify(
                _("Could not take the token's lock: {error}").format(error=error.strerror or error),
                severity="error",
                markup=False,
            )
            return None
        return token

    def action_personalise(self) -> None:
        self.open_action(PersonaliseScreen)

    def action_change_pin(self) -> None:
        token = self.selected_token()
        if token is not None and token.snapshot.user_pin.status is PinStatus.LOCKED:
            # A locked PIN cannot be changed: what the customer needs is the unblock.
            self.open_action(
                UnblockScreen,
                note=N_("The user PIN is locked: it cannot be changed, only unblocked with the admin PIN."),
            )
            return
        note = ""  # a message id: the screen translates it, again after a language switch
        if token is not None and token.snapshot.user_pin.status is PinStatus.FINAL_TRY:
            note = N_("One user PIN try is left: if the customer is not sure of the PIN, unblock instead (u).")
        self.open_action(ChangePinScreen, note=note)

    def action_unblock(self) -> None:
        self.open_action(UnblockScreen)

    def action_re_enrol(self) -> None:
        token = self._locked_token("re-enrol")
        if token is not None:
            screen = ReEnrolScreen(token, lambda: self.modules_for_actions() or [], self.config, lock_taken=True)
            self.push_screen(screen, lambda _result: self.start_scan(manual=True))

    def action_format(self) -> None:
        self.open_action(FormatScreen)

    def action_audit(self) -> None:
        if isinstance(self.screen, AuditScreen):
            self.pop_screen()
        else:
            self.push_screen(AuditScreen())

    def action_trainer(self) -> None:
        if self.lab is None:
            return
        if isinstance(self.screen, TrainerScreen):
            self.screen.dismiss(None)
        else:
            self.push_screen(TrainerScreen(self.lab, release=self.released_modules))

    @contextlib.contextmanager
    def released_modules(self, paths: Sequence[str]) -> Iterator[None]:
        """Let go of these PKCS#11 libraries for the length of the block (called from a worker thread): no scan
        and no action uses them meanwhile, and they are initialised again after it. openCryptoki's daemon does
        not stop for the lab's factory reset while a process still has its library initialised."""
        modules = [module for module in getattr(self._scanner, "modules", ()) if module.path in paths]
        with self._scan_lock, contextlib.ExitStack() as held:
            for module in modules:
                held.enter_context(module.lock)
                module.finalize()
            try:
                yield
            finally:
                for module in modules:
                    with contextlib.suppress(PKCS11Error):
                        module.initialize()

    def action_rescan(self) -> None:
        self.start_scan(manual=True)  # exclusive: replaces a poll in flight

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            self.pop_screen()
        else:
            self.push_screen(HelpScreen())

    # --- language -------------------------------------------------------------------------------------------

    def action_language(self) -> None:
        self.switch_language(next_language())
        # Remembered for the next start, in the settings file (the one this console read, if it was given one).
        problem = save_language(language_now(), self.config.path if self.config else None)
        if problem is not None:
            self.notify(
                _("The language could not be remembered for the next start: {error}").format(error=problem),
                severity="warning",
                markup=False,
            )

    def switch_language(self, language: str) -> None:
        """Show everything in `language` from now on: every open screen is redrawn in place (what is typed, the
        selection and the scroll stay), the Footers too. Notifications already shown keep their language."""
        set_language(language)
        retranslate_bindings(self)
        for screen in self.screen_stack:
            lang.retranslate_tree(screen)
            if isinstance(screen, lang.Retranslatable):
                screen.retranslate()
            screen.refresh_bindings()
        self.refresh_bindings()

    def action_command_palette(self) -> None:
        if self.use_command_palette and not CommandPalette.is_open(self):
            self.push_screen(CommandPalette(placeholder=_(_PALETTE), id="--command-palette"))

    def get_system_commands(self, screen: Screen[object]) -> Iterator[SystemCommand]:
        """Textual's own palette entries (theme, keys, screenshot…), in the console's language."""
        for command in super().get_system_commands(screen):
            if command.title == "Quit":
                continue  # the console's own Quit (q) is in the palette already: one entry, not two
            yield command._replace(title=_(command.title), help=_(command.help))

    def action_help_quit(self) -> None:
        """Ctrl+C does not quit (it copies in a field): say which key does, as Textual would, but translated."""
        for _key, active in self.active_bindings.items():
            if active.binding.action in ("quit", "app.quit"):
                self.notify(
                    _("Press {key} to quit the console.").format(key=self.get_key_display(active.binding)),
                    title=_("Do you want to quit?"),
                    markup=False,
                )
                return

    def action_report(self) -> None:
        if self.result is None:
            self.notify(_("No scan yet: wait for the first one."), severity="warning")
            return
        token = self.selected_token()
        path = report_path(token)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(ticket_report(self.result, token), encoding="utf-8")
        except OSError as error:
            self.notify(
                _("Could not write the report to {path}: {error}").format(path=path, error=error.strerror),
                severity="error",
                markup=False,
            )
            return
        self.last_report = path
        self.notify(_("Report written to {path}").format(path=path), title=_("Ticket report"), markup=False)


# Marked for extraction: the Footer descriptions live in tui.actions; these are for the palette's own texts.
_PALETTE = N_("Search for an action…")
# Textual's own palette entries (App.get_system_commands) and its theme picker, translated when shown.
_SYSTEM_COMMANDS = (
    N_("Theme"),
    N_("Change the current theme"),
    N_("Keys"),
    N_("Show help for the focused widget and a summary of available keys"),
    N_("Hide the keys and widget help panel"),
    N_("Minimize"),
    N_("Minimize the widget and restore to normal size"),
    N_("Maximize"),
    N_("Maximize the focused widget"),
    N_("Screenshot"),
    N_("Save an SVG 'screenshot' of the current screen"),
)


def run(
    modules: list[str],
    config: LoadedConfig | None = None,
    *,
    lab: Lab | None = None,
    library_timeout: float | None = None,
    workstation: Workstation | None = None,
) -> int:
    """Start the console (settings as `tui.cli` read them), on the training lab when `lab` is given; the exit
    code for the shell. `workstation`: one whose first read has begun (tui.cli), used instead of a new one."""
    with libraries_output_to_log():
        factory = (lambda: workstation) if workstation is not None else None
        app = HelpdeskApp(modules, config=config, lab=lab, library_timeout=library_timeout, scanner_factory=factory)
        app.leave_for_sure = True
        try:
            app.run()
        except (BrokenPipeError, OSError):
            return 0  # the terminal went away (SSH dropped) while the console drew: nothing left to tell
        finally:
            app.release()
    if app._exception is not None:
        return 3  # the tool itself failed (tui.cli's EXIT_TOOL_FAILED), not "errors found"
    return app.return_code or 0


@contextlib.contextmanager
def libraries_output_to_log() -> Iterator[None]:
    """While the console owns the terminal, file descriptor 2 goes to a log file: a PKCS#11 library loaded for an
    action (tpm2-pkcs11's TCTI errors, a vendor's debug output) would otherwise paint over the screen. Textual
    draws on `sys.__stderr__`, so that becomes a new descriptor on the terminal, made before the App is."""
    path = platformdirs.user_log_path("kaztoken-helpdesk") / "libraries.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        log = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        log = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    saved = os.dup(2)
    original = sys.__stderr__
    terminal = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="replace")
    try:
        os.dup2(log, 2)
        sys.__stderr__ = terminal  # type: ignore[misc]
        yield
    finally:
        sys.__stderr__ = original  # type: ignore[misc]
        os.dup2(saved, 2)
        os.close(saved)
        os.close(log)
        with contextlib.suppress(OSError):
            terminal.close()
