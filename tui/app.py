"""The console: a dashboard of every connected token, kept current by a background scan every second.

No PKCS#11 call runs on the UI thread. Loading the modules and every scan happen in one exclusive thread
worker (group "scan"); its result comes back on the UI thread (tui.workers) and the dashboard (tui.dashboard) is
repainted from it, so keys are answered at once even while a slow token is being read. The app runs the console's
actions, whose keys the screens bind, and keeps the ConsoleContext its screens read (tui.context).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from textual.app import App, SystemCommand
from textual.binding import BindingType
from textual.command import CommandPalette
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.signal import Signal
from textual.worker import Worker, WorkerState, get_current_worker

from core.config import LoadedConfig, load_config, save_language
from core.i18n import N_, _, next_language, set_language
from core.i18n import language as language_now
from core.modules import Module
from core.scan import ScannedToken, ScanResult, Workstation
from core.snapshot import PinStatus
from tui import compat, render, workers
from tui.actions import BY_ID, modal_bindings, retranslate_bindings, translate_bindings
from tui.commands import ActionsProvider
from tui.context import ConsoleApp, ConsoleContext, HoldsToken
from tui.dashboard import Dashboard
from tui.entry import runs_on
from tui.errors import log_unexpected, unexpected_detail
from tui.screens.details import DetailsScreen
from tui.terminal import libraries_output_to_log
from tui.ticket import reports_dir, write_report
from tui.widgets import HeaderBar, TokenPanel
from tui.workers import ReportsWorkers

if TYPE_CHECKING:
    from core.delivery import Courier
    from core.lab import Lab
    from tui.screens.pin_form import ActionScreen

# The other screens, and core.actions, the keyring, python-pkcs11 and cryptography under them, are imported when
# one is first opened (in its action_ method): the dashboard paints without them (benchmarks/launch_64_tokens.py).


class Scanner(Protocol):
    """What the console needs from core.scan.Workstation (tests may hand in a fixed one)."""

    def scan(self, *, refresh: bool = False) -> ScanResult: ...


class HelpdeskApp(ReportsWorkers, ConsoleApp):
    CSS_PATH = "app.tcss"
    TITLE = "KAZTOKEN helpdesk"
    # Textual declares it as an instance variable (a ClassVar inside an Optional): no ClassVar here, for mypy.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (160, "-wide")]  # noqa: RUF012
    COMMANDS = App.COMMANDS | {ActionsProvider}
    # The console's keys are bound by its screens (tui.actions.console_bindings); the language works on all.
    BINDINGS: ClassVar[list[BindingType]] = [*modal_bindings()]

    POLL_SECONDS = 1.0
    SLOW_SCAN_SECONDS = 0.5  # a background poll shows "scanning…" only when it takes longer than this
    START_SECONDS = 3.0  # tui.entry's collector: on once the first scan is shown or failed, or this long after start
    HANGUP_GRACE_SECONDS = 2.0  # after a hang-up, leave this long later even if the shutdown hangs on the dead tty

    def _fatal_error(self) -> None:
        """An unexpected error: one line on leaving, never Textual's traceback (tui.compat says why and how)."""
        compat.leave_with_one_line(self, _fatal_line)

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
        self.language_changed: Signal[str] = Signal(self, "language-changed")
        self.context = ConsoleContext(
            lab=lab,
            config=config,
            rescan=lambda: self.start_scan(manual=True),
            language_changed=self.language_changed,
        )
        if lab is not None:
            self.title = f"{self.TITLE} · LAB"
        self.modules = list(modules)
        self.config = config
        self._scanner_factory = scanner_factory or (
            lambda: Workstation(self.modules, config=self.config, timeout=library_timeout)
        )
        self._scanner: Scanner | None = None
        self.leave_for_sure = False  # `run` sets it: a test's Pilot must not be ended by the exit watchdog
        self._scan_lock = threading.Lock()  # one scan at a time, even when `r` replaces a running one
        self._scan_worker: Worker[ScanResult | None] | None = None
        self._scan_generation = 0
        self._last_error: str | None = None
        self.poll_seconds = self.POLL_SECONDS if poll_seconds is None else poll_seconds
        self.last_report: Path | None = None
        self._courier: Courier | None = None  # the audit's sinks: set up by the first poll, after the first paint
        self._loading_modules = False  # the libraries for actions, loaded once the first scan is shown

    @property
    def result(self) -> ScanResult | None:
        """The last scan that went well."""
        return self.context.result

    # --- lifecycle -----------------------------------------------------------------------------------------

    def get_default_screen(self) -> Dashboard:
        return Dashboard()

    @property
    def dashboard(self) -> Dashboard:
        screen = self.screen_stack[0]
        assert isinstance(screen, Dashboard)
        return screen

    def on_mount(self) -> None:
        self.set_timer(self.START_SECONDS, runs_on)  # the collector (tui.entry), if no scan was shown by then
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
        if isinstance(self._scanner, Workstation):  # a test's fixed scanner loads no library
            self._scanner.close()

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
        # Exclusive: `r` replaces a poll in flight; the one replaced reports nothing.
        self._scan_worker = workers.in_thread(
            self,
            lambda: self._scan(full=manual),
            self._scan_done,
            failed=self._scan_failed,
            group="scan",
            exclusive=True,
        )
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
        if self._courier is None:
            from core.delivery import Courier, Plan  # the sinks (ssl…): not needed to paint the first screen

            self._courier = Courier(Plan.configured((self.config or load_config()).config))
        if self._courier.due():
            self._deliver_audit()

    def _deliver_audit(self) -> None:
        """The audit trail on to syslog, PostgreSQL… (core.delivery): network and disk, so never on the UI thread.
        A failure is logged only: the records stay on disk and the next tick tries again."""
        assert self._courier is not None  # _poll sets it up first
        workers.in_thread(self, self._courier.tick, lambda _none: None, failed=lambda _line: None, group="audit")

    def _scan(self, full: bool) -> ScanResult | None:
        """In the scan worker: a manual scan (`r`, after an action, the trainer) reads everything; a poll only
        what changed. None when a newer scan was asked for while this one waited."""
        worker = get_current_worker()
        with self._scan_lock:
            if worker.is_cancelled:
                return None
            if self._scanner is None:
                self._scanner = self._scanner_factory()  # loads the modules: PKCS#11, so here
                result = self._scanner.scan()
            else:
                result = self._scanner.scan(refresh=not full)
            if self.context.action_modules is not None:  # loaded once after the first paint (_load_modules)
                self.context.action_modules = self._loaded_modules()
        return result

    def _loaded_modules(self) -> list[Module] | None:
        """In a worker holding the scan lock: the libraries that read well, loaded into this process for actions
        (python-pkcs11, C_Initialize), so never on the UI thread. None for a test's fixed scanner."""
        if isinstance(self._scanner, Workstation):
            return list(self._scanner.modules)
        return None

    @property
    def loading_modules(self) -> bool:
        """A result is on screen and the libraries for actions are still being loaded (an action started now is
        told to wait; tests wait for them before they act)."""
        return self._loading_modules

    def _load_modules(self) -> None:
        """After the first scan is on screen: load the libraries for actions. They cost as much as painting the
        tokens (benchmarks/launch_64_tokens.py); an action submitted meanwhile is told to wait (ActionScreen.submit)."""
        if self.closing:
            return

        def load() -> None:
            with self._scan_lock:
                self.context.action_modules = self._loaded_modules()

        def done(_none: None) -> None:
            self._loading_modules = False

        def failed(error: str) -> None:
            self._loading_modules = False  # the next scan shown tries again
            self._scan_failed(error)

        workers.in_thread(self, load, done, failed=failed, group="load")

    def _scan_done(self, result: ScanResult | None) -> None:
        if self.closing or result is None:
            return
        self.context.result = result
        self._last_error = None
        self._set_scanning(False)
        self.dashboard.show(result)
        self.call_after_refresh(runs_on)
        if self.context.action_modules is None and isinstance(self._scanner, Workstation) and not self.loading_modules:
            self._loading_modules = True
            self.call_after_refresh(self._load_modules)
        for screen in self.screen_stack:
            if isinstance(screen, DetailsScreen):
                screen.show(self._token(screen.key))

    def _scan_failed(self, error: str) -> None:
        if self.closing:
            return
        runs_on()
        self._set_scanning(False)
        if error != self._last_error:  # polling repeats it every second; say it once
            self._last_error = error
            self.notify(_("The scan failed: {error}. Retrying.").format(error=error), severity="error", markup=False)

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
        # A screen that holds a token binds none of the console's keys; this rule covers what still reaches the
        # app there: the palette and Textual's own keys (ctrl+q). Nothing of the console acts underneath it.
        if isinstance(self.screen, HoldsToken) and (action in BY_ID or action == "trainer"):
            return False
        if action == "trainer":
            return self.context.lab is not None  # no key outside the lab
        return True

    def modules_for_actions(self) -> list[Module] | None:
        """The loaded PKCS#11 modules for an action (run in a thread worker), or None before the first scan."""
        return self.context.modules_for_actions()

    def open_action(self, screen: type[ActionScreen], *, note: str = "", **options: object) -> None:
        """Open an action screen for the selected token, holding the token's operator lock while it is open."""
        token = self._locked_token(str(screen.ACTION))
        if token is not None:
            self.push_screen(screen(token, note=note, **options))

    def _locked_token(self, action: str) -> ScannedToken | None:
        """The selected token with its operator lock taken for `action`, or None (and why, notified)."""
        token = self.selected_token()
        if token is None:
            self.notify(_("No token selected."), severity="warning")
            return None
        from core import operator_lock  # with the action screens: not needed to start

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
        from tui.screens.personalise import PersonaliseScreen

        self.open_action(PersonaliseScreen)

    def action_change_pin(self) -> None:
        from tui.screens.change_pin import ChangePinScreen
        from tui.screens.unblock import UnblockScreen

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
        from tui.screens.unblock import UnblockScreen

        self.open_action(UnblockScreen)

    def action_re_enrol(self) -> None:
        from tui.screens.re_enrol import ReEnrolScreen  # core.enrol, cryptography: only when asked for

        token = self._locked_token("re-enrol")
        if token is not None:
            shown = [each.snapshot for each in self.result.tokens] if self.result else []
            screen = ReEnrolScreen(
                token, lambda: self.modules_for_actions() or [], self.config, lock_taken=True, connected=shown
            )
            self.push_screen(screen, lambda _result: self.start_scan(manual=True))

    def action_format(self) -> None:
        from tui.screens.format import FormatScreen

        self.open_action(FormatScreen)

    def action_audit(self) -> None:
        from tui.screens.audit import AuditScreen

        if isinstance(self.screen, AuditScreen):
            self.pop_screen()
        else:
            self.push_screen(AuditScreen())

    def action_trainer(self) -> None:
        if self.context.lab is None:
            return
        from tui.screens.trainer import TrainerScreen  # core.lab: only in the lab

        if isinstance(self.screen, TrainerScreen):
            self.screen.dismiss(None)
        else:
            self.push_screen(TrainerScreen(self.context.lab, release=self.released_modules))

    @contextlib.contextmanager
    def released_modules(self, paths: Sequence[str]) -> Iterator[None]:
        """Let go of these PKCS#11 libraries for the length of the block (called from a worker thread): no scan
        and no action uses them meanwhile, and they are initialised again after it. openCryptoki's daemon does
        not stop for the lab's factory reset while a process still has its library initialised."""
        from pkcs11.exceptions import PKCS11Error  # python-pkcs11: loaded with the libraries, after the first paint

        loaded = self._scanner.modules if isinstance(self._scanner, Workstation) else []
        modules = [module for module in loaded if module.path in paths]
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
        from tui.screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            self.pop_screen()
        else:
            self.push_screen(HelpScreen())

    # --- language -------------------------------------------------------------------------------------------

    def action_language(self) -> None:
        self.switch_language(next_language())
        # Remembered for the next start, in the settings file (the one this console read, if it was given one):
        # a file written and synced, so in a worker, never on the UI thread.
        language, path = language_now(), self.config.path if self.config else None
        workers.in_thread(self, lambda: save_language(language, path), self._language_saved, group="settings")

    def _language_saved(self, problem: str | None) -> None:
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
        self.language_changed.publish(language)  # every screen redraws itself (tui.lang.follow_language)
        self.refresh_bindings()

    def action_command_palette(self) -> None:
        if self.use_command_palette and not isinstance(self.screen, CommandPalette):  # is_open() wants an App[object]
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
        try:
            path = write_report(self.result, self.selected_token())
        except OSError as error:
            where = error.filename or reports_dir()
            self.notify(
                _("Could not write the report to {path}: {error}").format(path=where, error=error.strerror),
                severity="error",
                markup=False,
            )
            return
        self.last_report = path
        # The path on lines of its own, broken after a "/" (a toast is half the screen wide, at most 60 columns).
        where = render.break_path(str(path), min(60, self.size.width // 2) - 4)
        self.notify(_("Report written to {path}").format(path="\n" + where), title=_("Ticket report"), markup=False)


def _fatal_line(error: BaseException | None) -> str:
    if error is not None:
        log_unexpected(error, "the console")
    detail = unexpected_detail(error) if error is not None else ""
    return _("The console failed unexpectedly ({kind}){detail}.").format(
        kind=type(error).__name__, detail=f": {detail}" if detail else ""
    )


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
    if compat.failed(app) is not None:
        return 3  # the tool itself failed (tui.cli's EXIT_TOOL_FAILED), not "errors found"
    return app.return_code or 0
