"""Re-enrolment, one screen stepping through core.enrol: 1 log in, 2 key pair, 3 request, 4 certificate,
5 the old pair.

Every PKCS#11 step runs in a thread worker; the UI stays responsive, and during the key generation (up to five
minutes on the real token) a progress bar and the elapsed time say it is working and not to unplug the token.
The screen opens at the step a pending re-enrolment reached. The PIN stays in its masked input while the screen
is open (each step logs in anew) and goes with the screen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Button, Footer, Input, Label, ProgressBar, RadioSet, Select, Static, TextArea

from core import enrol, operator_lock
from core.actions import Outcome, Role
from core.config import LoadedConfig
from core.csr import KeyKind
from core.enrol import EnrolResult, NextStep, Pending, Step, next_step
from core.i18n import N_, _
from core.modules import Module
from core.policy import current_pin_fits, current_pin_refusal
from core.report import pin_summary
from core.scan import ScannedToken
from core.snapshot import TokenSnapshot
from core.training_ca import TERM_TITLES, Term
from core.untrusted import file_part, visible
from tui.actions import translate_bindings
from tui.context import HoldsToken
from tui.lang import follow_language, tr
from tui.widgets import StateRadioButton
from tui.workers import ReportsWorkers, in_thread

STEP_NAMES = (N_("Log in"), N_("Key pair"), N_("Request"), N_("Certificate"), N_("Old pair"))
DONE = "done"  # the phase after the last step: the re-enrolment is over on this screen


class ReEnrolScreen(HoldsToken, ReportsWorkers, Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", N_("Back"), id="back")]
    # It holds the token (HoldsToken): the console's keys do not act here; Esc goes back to the dashboard first,
    # as on the PIN forms.

    DEFAULT_CSS = """
    ReEnrolScreen #enrol-scroll { height: 1fr; padding: 0 1; }
    ReEnrolScreen .enrol-row { height: auto; margin-top: 1; }
    ReEnrolScreen .enrol-row Label { width: 18; }
    ReEnrolScreen #step-login Label { width: 22; }  /* «PIN-код пользователя», «Пайдаланушы PIN-коды» on one line */
    ReEnrolScreen .enrol-row Input { width: 1fr; }
    ReEnrolScreen .enrol-row Select { width: 1fr; }
    ReEnrolScreen .enrol-row RadioSet { width: 1fr; }
    ReEnrolScreen .enrol-section { height: auto; }
    ReEnrolScreen #enrol-steps { height: auto; }
    ReEnrolScreen #enrol-status { height: auto; max-height: 8; padding: 0 1; background: $panel; }
    ReEnrolScreen #csr { height: 8; }
    ReEnrolScreen #keygen-box { height: auto; margin-top: 1; border: round $warning; padding: 0 1; }
    ReEnrolScreen Button { margin-left: 2; }
    /* A drop-down near the bottom opens upwards rather than over the status line and the Footer. */
    ReEnrolScreen Select > SelectOverlay { constrain: none inflect; }
    """

    def __init__(
        self,
        token: ScannedToken,
        modules: Callable[[], Sequence[Module]],
        config: LoadedConfig | None = None,
        *,
        training_ca: bool | None = None,
        training_ca_dir: Path | None = None,
        lock_taken: bool = False,
        connected: Sequence[TokenSnapshot] = (),
    ) -> None:
        """`modules` is called in the worker thread. `training_ca`: None offers the training CA for the lab's
        tokens only. `lock_taken`: the app took the token's operator lock for this screen (as for the other
        action screens); it is released when the screen goes. `connected`: the tokens the console shows, to
        know the token by its id where its serial is not its own (core.enrol.token_reference)."""
        super().__init__()
        translate_bindings(self)
        self.token = token
        self.serial = token.snapshot.serial  # shown, and the operator lock's
        self.reference = enrol.token_reference(token.snapshot, connected)  # the steps' and the pending state's
        self._modules = modules
        self.config = config
        # The training CA: offered for the lab's tokens (signed by the lab's own), elsewhere only when the caller
        # says so (the one in `training_ca_dir`, else the default one).
        from core.lab import training_ca_directory

        lab_ca = training_ca_directory(self.serial)
        self.training_ca = lab_ca is not None if training_ca is None else training_ca
        self.training_ca_dir = training_ca_dir or lab_ca
        self.lock_taken = lock_taken
        self.snapshot: TokenSnapshot = token.snapshot
        self.contents: TokenSnapshot | None = None  # read while logged in
        self.pending: Pending | None = enrol.load_pending(self.reference)
        self.kinds: tuple[KeyKind, ...] = ()
        self.logged_in = False
        self.finished = False
        self.busy: Step | None = None
        self.confirming = False
        self.last: EnrolResult | None = None
        self._started = 0.0
        self._ticker: Timer | None = None
        self._status_source: Callable[[], Sequence[object]] = list

    # --- layout ----------------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        # Every fixed text goes through `tr`, so a language switch redraws it in place (see `retranslate`).
        yield tr(Static(id="enrol-title", classes="screen-title"), self._title)
        # Above the scroll: which step this is stays in sight at 80×24 when the step's button scrolls into view.
        yield Static(id="enrol-steps", markup=False)
        # Not a Tab stop itself: every stop is a field or a button on screen.
        with VerticalScroll(id="enrol-scroll", can_focus=False):
            yield Static(id="enrol-token", markup=False)
            with Horizontal(classes="enrol-row", id="step-login"):
                yield tr(Label(), N_("User PIN"))
                yield tr(Input(compact=True, password=True, id="pin"), N_("the customer's user PIN"))
                yield tr(Button(id="login", variant="primary", compact=True), N_("Log in"))
            with Vertical(classes="enrol-section", id="step-key"):
                yield Static(id="key-text", classes="enrol-row", markup=False)  # from what is on the token
                with Horizontal(classes="enrol-row"):
                    yield tr(Label(), N_("Key type"))
                    yield Select[KeyKind](self._kind_options(), id="key-type", allow_blank=False, compact=True)
                    yield tr(Button(id="generate", variant="primary", compact=True), N_("Generate key pair"))
            with Vertical(id="keygen-box"):
                yield Static(id="keygen-text", markup=False)
                yield ProgressBar(total=None, show_eta=False, show_percentage=False, id="keygen-progress")
            with Vertical(classes="enrol-section", id="step-request"):
                with Horizontal(classes="enrol-row"):
                    yield tr(Label(), N_("Subject"))
                    # TRANSLATORS: an example subject; the names may be localised, the CN=, O=, C= keys not.
                    yield tr(Input(compact=True, id="subject"), N_("CN=Ivanov Ivan,O=Company,C=KZ"))
                    yield tr(Button(id="make-request", variant="primary", compact=True), N_("Make request"))
                with Vertical(classes="enrol-section", id="csr-box"):
                    yield tr(
                        Static(classes="enrol-row"), N_("The request (select and copy it, or save it for the CA):")
                    )
                    yield TextArea(id="csr", read_only=True, soft_wrap=False)
                    with Horizontal(classes="enrol-row"):
                        yield tr(Label(), N_("Save to"))
                        yield Input(compact=True, id="csr-path")
                        yield tr(Button(id="save-request", compact=True), N_("Save"))
            with Vertical(classes="enrol-section", id="step-import"):
                yield tr(
                    Static(classes="enrol-row"),
                    N_("Send the request to the CA; when its answer comes, give the file here."),
                )
                with Horizontal(classes="enrol-row"):
                    yield tr(Label(), N_("Certificate file"))
                    yield tr(Input(compact=True, id="cert-path"), N_("the CA's answer: .pem, .cer, .der or .p7b"))
                    yield tr(Button(id="import", variant="primary", compact=True), N_("Import"))
                with Horizontal(classes="enrol-row", id="training-row"):
                    yield tr(Label(), N_("Training CA"))
                    # Two choices, both in sight: a drop-down here opened over the status line and the Footer.
                    with RadioSet(id="term", compact=True):
                        for term in Term:
                            button = StateRadioButton(value=term is Term.ONE_YEAR, id=f"term-{int(term)}", compact=True)
                            yield tr(button, TERM_TITLES[term])
                    yield tr(Button(id="training", compact=True), N_("Issue now"))
            with Vertical(classes="enrol-section", id="step-remove"):
                yield Static(id="old-list", classes="enrol-row", markup=False)
                with Horizontal(classes="enrol-row", id="remove-ask"):
                    yield tr(Button(id="remove", variant="warning", compact=True), N_("Remove the old pair…"))
                    yield tr(Button(id="keep", compact=True), N_("Keep the old pair"))
                with Horizontal(classes="enrol-row", id="remove-confirm"):
                    yield tr(Button(id="remove-yes", variant="error", compact=True), N_("Yes, remove them"))
                    yield tr(Button(id="remove-no", compact=True), N_("No"))
        yield Static(id="enrol-status", markup=False)
        yield Footer(compact=True, show_command_palette=False)

    def _title(self) -> Content:
        snap = self.snapshot
        # Message ids outside the f-string: the extractor does not look inside one (Python 3.11).
        serial = _("serial {serial}").format(serial=visible(self.serial))
        title = _("Re-enrol") + f" · {visible(snap.display_label)} · " + serial
        return Content(" " + title + " ─ " + _("Esc: back"))  # Content: a str would be parsed as markup

    def _kind_options(self) -> list[tuple[str, KeyKind]]:
        return [(kind.label, kind) for kind in self.kinds or (KeyKind.RSA2048,)]

    def on_mount(self) -> None:
        follow_language(self)
        # Short enough to show whole at 80 columns (~ is expanded on saving); the serial is the token's: only its
        # letters, digits, - and _ make the name.
        self.query_one("#csr-path", Input).value = f"~/kaztoken-{file_part(self.serial, fallback='token')}.csr"
        pending = self.pending
        if pending is not None:
            self._status(lambda: [enrol.describe_pending(pending)])
        else:
            self._status(lambda: [_("Log in with the customer's user PIN to start.")])
        self._paint()
        self.query_one("#pin", Input).focus()

    def retranslate(self) -> None:
        """The language changed: the `tr` texts are redrawn already (the app does that); the lines made from the
        token and the steps' results are made again here, and the choices' names. Typed values and focus stay."""
        for select_id, options in (("#key-type", self._kind_options()),):
            select = self.query_one(select_id, Select)
            value = select.value
            select.set_options(options)
            select.value = value
            # The same value: its shown name is redrawn only so (the descriptor, which mypy finds ambiguous).
            select.mutate_reactive(Select.value)  # type: ignore[misc]
        self._paint()
        self._paint_status()
        if self.busy is Step.KEYGEN:
            self._tick()

    # --- state -> widgets ------------------------------------------------------------------------------------

    @property
    def phase(self) -> str:
        """core.enrol.next_step (a NextStep, which is its name), or DONE."""
        return DONE if self.finished else next_step(self.pending, logged_in=self.logged_in)

    def _paint(self) -> None:
        phase = self.phase
        self._paint_steps(phase)
        self._paint_token()
        show = {
            # Once logged in, the PIN field goes (out of the Tab order too, and locked): a stray key cannot
            # replace the PIN that the next steps log in with, and so cannot spend a try.
            "#step-login": not self.logged_in,
            "#step-key": phase == "key",
            "#keygen-box": self.busy is Step.KEYGEN,
            "#step-request": phase in ("request", "import"),
            "#csr-box": bool(self.pending and self.pending.csr_pem) and phase in ("request", "import"),
            "#step-import": phase == "import",
            "#training-row": self.training_ca,
            "#step-remove": phase == "remove",
            "#remove-ask": not self.confirming,
            "#remove-confirm": self.confirming,
        }
        for selector, shown in show.items():
            self.query_one(selector).display = shown
        for button in self.query(Button):
            button.disabled = self.busy is not None
        self.query_one("#pin", Input).disabled = self.logged_in
        if phase == "key":
            self.query_one("#key-text", Static).update(str(enrol.key_step_text(self.contents or self.snapshot)))
        if phase == "remove":
            self._paint_old()

    def _paint_steps(self, phase: str) -> None:
        current = NextStep(phase).number if phase != DONE else None
        parts = []
        for number, name in enumerate(STEP_NAMES, start=1):
            text = f"{number} {_(name)}"
            parts.append(f"[{text}]" if number == current else text)
        line = " › ".join(parts)
        if phase == DONE:
            line += "  ✔ " + _("done")
        self.query_one("#enrol-steps", Static).update(line)

    def _paint_token(self) -> None:
        snap = self.contents or self.snapshot
        new_id = self.pending.cka_id if self.pending else None
        lines = [_("User PIN: {state}").format(state=pin_summary(self.snapshot.user_pin)), _("On the token now:")]
        lines += [f"  {visible(line)}" for line in enrol.contents_lines(snap, new_id)]
        if not self.logged_in:
            lines.append("  " + _("(private keys show after the login)"))
        self.query_one("#enrol-token", Static).update("\n".join(lines))

    def _paint_old(self) -> None:
        assert self.pending is not None
        old = enrol.old_objects(self.contents or self.snapshot, self.pending.cka_id)
        half = enrol.half_pairs(self.contents or self.snapshot, self.pending.cka_id)
        if old:
            text = _("The new certificate and key are in place. Still on the token from before:") + "\n"
            text += "\n".join(f"  {visible(line)}" for line in old)
            if half:
                text += "\n" + _(enrol.HALF_PAIRS)
            if self.confirming:
                text += "\n" + _("Remove these for good? The customer can no longer sign with the old certificate.")
        else:
            text = _("The new certificate and key are in place; nothing old is left on the token.")
        self.query_one("#old-list", Static).update(text)
        # Keeping half pairs would leave the token unfinished while saying the re-enrolment is complete.
        self.query_one("#keep").display = not half

    def _status(self, source: Callable[[], Sequence[object]]) -> None:
        """Show the lines `source` makes (texts, or core's lazily translated ones); again after a language switch."""
        self._status_source = source
        self._paint_status()

    def _paint_status(self) -> None:
        # Core's lines may quote the token or the certificate file: each shown visibly, on its own line.
        lines = (visible(line) for line in self._status_source())
        self.query_one("#enrol-status", Static).update("\n".join(lines))

    def _focus_phase(self) -> None:
        target = {
            "login": "#pin",
            "key": "#generate",
            "request": "#make-request",
            # The lab's training CA issues at once: its button is the next step; elsewhere the CA's file is.
            "import": "#training" if self.training_ca else "#cert-path",
            # The question comes with "No" focused: removing for good takes a deliberate key more.
            "remove": "#remove-no" if self.confirming else "#remove",
        }.get(self.phase)
        if target:
            self.query_one(target).focus()
            # The step's whole section on screen, its question and text above the focused button included.
            section = {"key": "#step-key", "request": "#step-request", "import": "#step-import"}
            section["remove"] = "#step-remove"
            if self.phase in section:
                self.call_after_refresh(self.query_one(section[self.phase]).scroll_visible, animate=False)

    # --- running a step --------------------------------------------------------------------------------------

    def _pin(self) -> str | None:
        pin = self.query_one("#pin", Input).value
        if not pin:
            self._status(lambda: ["✖ " + _("Type the user PIN.")])
            self.query_one("#pin", Input).focus()
            return None
        bounds = {"min_length": self.snapshot.min_pin_length, "max_length": self.snapshot.max_pin_length}
        if not current_pin_fits(pin, **bounds):  # never sent: it could only spend a try
            refusal = current_pin_refusal(Role.USER.title_text, **bounds)
            self._status(lambda: ["✖ " + str(refusal)])
            self.query_one("#pin", Input).focus()
            return None
        return pin

    def _start(self, step: Step, call: Callable[[Sequence[Module]], EnrolResult]) -> None:
        self.busy = step
        if step is Step.KEYGEN:
            self._started = time.monotonic()
            self._tick()
            self._ticker = self.set_interval(1.0, self._tick)
        else:
            self._status(lambda: [_("Working on the token…")])
        self._paint()
        # core maps what a user can cause into the result; the rest is said in one line (tui.workers).
        in_thread(
            self,
            lambda: call(self._modules()),
            self._step_done,
            failed=self._step_failed,
            group="re-enrol",
            exclusive=True,
        )

    def _tick(self) -> None:
        elapsed = int(time.monotonic() - self._started)
        self.query_one("#keygen-text", Static).update(
            _(
                "Generating the key pair on the token: {elapsed} so far. This can take up to 5 minutes.\n"
                "Do not unplug the token."
            ).format(elapsed=f"{elapsed // 60}:{elapsed % 60:02d}")
        )

    def _stop_working(self) -> None:
        self.busy = None
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None

    def _step_failed(self, error: str) -> None:
        self._stop_working()
        self._status(lambda: ["✖ " + _("The step failed: {error}.").format(error=error)])
        self._paint()

    def _step_done(self, result: EnrolResult) -> None:
        self._stop_working()
        self.last = result
        self._absorb(result)
        self._status(lambda: _result_lines(result))
        self._paint()
        if result.outcome in (Outcome.WRONG_PIN, Outcome.PIN_LOCKED):
            self.logged_in = False  # the PIN field comes back, empty, for the login again
            self._paint()
            pin = self.query_one("#pin", Input)
            pin.value = ""
            pin.focus()
        elif result.field == "subject":
            self.query_one("#subject", Input).focus()
        elif result.field == "certificate":
            self.query_one("#cert-path", Input).focus()
        else:
            self._focus_phase()

    def _absorb(self, result: EnrolResult) -> None:
        """What the step learnt about the token and the re-enrolment."""
        after = result.result.after
        if after is not None:
            self.snapshot = after
        if result.contents is not None:
            self.contents = result.contents
        if result.step is Step.LOGIN and result.ok:
            self.logged_in = True
            self.kinds = result.key_kinds or (KeyKind.RSA2048,)
            select = self.query_one("#key-type", Select)
            select.set_options(self._kind_options())
            select.value = KeyKind.RSA2048 if KeyKind.RSA2048 in self.kinds else self.kinds[0]
        self.pending = result.pending
        if result.step is Step.REMOVE_OLD and result.ok:
            self.finished = True
        if self.pending is not None:
            subject = self.query_one("#subject", Input)
            if not subject.value:
                exclude = self.pending.cka_id
                # From the certificate on the token: what the operator sees in the field is what is sent.
                subject.value = visible(
                    self.pending.subject or enrol.default_subject(self.contents or self.snapshot, exclude)
                )
            self.query_one("#csr", TextArea).text = self.pending.csr_pem

    # --- the buttons -----------------------------------------------------------------------------------------

    @on(Button.Pressed, "#login")
    @on(Input.Submitted, "#pin")
    def step_login(self) -> None:
        if self.busy is not None:
            return
        if self.logged_in:
            self._focus_phase()
            return
        pin = self._pin()
        if pin is not None:
            self._start(Step.LOGIN, lambda modules: enrol.inspect(modules, self.reference, pin=pin))

    @on(Button.Pressed, "#generate")
    def step_generate(self) -> None:
        pin = self._pin()
        value = self.query_one("#key-type", Select).value
        kind = value if isinstance(value, KeyKind) else KeyKind.RSA2048
        if pin is not None:
            self._start(Step.KEYGEN, lambda modules: enrol.generate_key(modules, self.reference, pin=pin, kind=kind))

    @on(Button.Pressed, "#make-request")
    @on(Input.Submitted, "#subject")
    def step_request(self) -> None:
        if self.busy is not None:
            return
        pin = self._pin()
        subject = self.query_one("#subject", Input).value
        if pin is not None:
            self._start(Step.CSR, lambda modules: enrol.make_request(modules, self.reference, pin=pin, subject=subject))

    @on(Button.Pressed, "#save-request")
    @on(Input.Submitted, "#csr-path")
    def step_save(self) -> None:
        if self.pending is None or not self.pending.csr_pem:
            return
        raw = self.query_one("#csr-path", Input).value.strip()
        if not raw:
            self._status(lambda: ["✖ " + _("Type where to save the request.")])
            return
        path = Path(raw).expanduser()
        problem = enrol.save_request(self.pending.csr_pem, path)
        if problem is not None:
            self._status(lambda: ["✖ " + str(problem)])
        else:
            self._status(lambda: ["✔ " + _("Request saved to {path}").format(path=path)])

    @on(Button.Pressed, "#import")
    @on(Input.Submitted, "#cert-path")
    def step_import(self) -> None:
        if self.busy is not None:
            return
        pin = self._pin()
        raw = self.query_one("#cert-path", Input).value.strip()
        if not raw:
            self._status(lambda: ["✖ " + _("Type the path of the certificate file the CA sent.")])
            self.query_one("#cert-path", Input).focus()
            return
        source = Path(raw).expanduser()
        if pin is not None:
            self._start(
                Step.IMPORT,
                lambda modules: enrol.import_certificate(modules, self.reference, pin=pin, source=source),
            )

    @on(Button.Pressed, "#training")
    def step_training(self) -> None:
        pin = self._pin()
        chosen = self.query_one("#term", RadioSet).pressed_button
        term = int(chosen.id.removeprefix("term-")) if chosen is not None and chosen.id else int(Term.ONE_YEAR)
        directory = self.training_ca_dir
        if pin is not None:
            self._start(
                Step.IMPORT,
                lambda modules: enrol.issue_with_training_ca(
                    modules, self.reference, pin=pin, term_days=term, directory=directory
                ),
            )

    @on(Button.Pressed, "#remove")
    def step_ask_remove(self) -> None:
        self.confirming = True
        self._paint()
        self._focus_phase()

    @on(Button.Pressed, "#remove-no")
    def step_cancel_remove(self) -> None:
        self.confirming = False
        self._paint()
        self._focus_phase()

    @on(Button.Pressed, "#remove-yes")
    def step_remove(self) -> None:
        pin = self._pin()
        if pin is not None:
            self.confirming = False
            self._start(
                Step.REMOVE_OLD, lambda modules: enrol.remove_old(modules, self.reference, pin=pin, confirmed=True)
            )

    @on(Button.Pressed, "#keep")
    def step_keep(self) -> None:
        enrol.finish(self.reference)
        self.pending = None
        self.finished = True
        self._status(lambda: ["✔ " + _("The old certificate and key stay on the token. The re-enrolment is complete.")])
        self._paint()

    def on_unmount(self) -> None:
        if self.lock_taken:
            operator_lock.release(self.serial)

    def _refuse_while_busy(self) -> bool:
        if self.busy is None:
            return False
        self.notify(_("Wait: the token is working. Do not unplug it."), severity="warning", title=_("Re-enrol"))
        return True

    def action_close(self) -> None:
        if not self._refuse_while_busy():
            self.dismiss(None)

    # --- for tests and the app -------------------------------------------------------------------------------

    @property
    def status_text(self) -> str:
        return str(self.query_one("#enrol-status", Static).render())

    def csr_text(self) -> str:
        return self.query_one("#csr", TextArea).text


def _result_lines(result: EnrolResult) -> list[object]:
    """A step's outcome under the steps: core's notes and message, the rules broken, the warnings."""
    lines: list[object] = [*result.notes, ("✔ " if result.ok else "✖ ") + result.message]
    lines += [f"  - {check.text}" for check in result.result.problems]
    lines += [f"⚠ {warning}" for warning in result.warnings]
    return lines
