"""What the four action screens share: a modal over the dashboard for one token, masked PIN fields with the
bank's rules ticked as they are typed, and the core action run in a thread worker.

The app takes the token's operator lock before a screen opens (a second console is refused there); the screen
lets it go when it closes. A PIN lives only in the Input widgets and in the closure handed to the worker: it is
never put into a message, a notification or a log, and every PIN field is masked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.css.query import NoMatches
from textual.dom import DOMNode
from textual.events import DescendantFocus
from textual.message import Message
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Footer, Input, Static

from core import admin_pins, operator_lock
from core.actions import Action, ActionResult, Outcome, Role
from core.findings import Severity
from core.i18n import N_, Text, _
from core.modules import Module
from core.policy import TYPE_ADMIN_PIN, Check, Invalid, invalid_current_pin, invalid_new_pin, missing, pin_checks
from core.scan import ScannedToken
from core.snapshot import PinState, TokenSnapshot
from tui import render
from tui.actions import modal_bindings, translate_bindings
from tui.context import ConsoleContext, HoldsToken, console_of
from tui.lang import follow_language, refresh, tr
from tui.widgets import StateCheckbox
from tui.workers import ReportsWorkers, in_thread

MAX_INPUT = 64  # longer than any token allows; keeps a stuck key from filling the screen
# The field labels' column: as wide as the longest label in the language shown, within these bounds, so a label
# does not wrap onto a second line (every line counts at 80×24) and the hints keep room beside the inputs.
LABEL_WIDTH = (16, 28)
INPUT_WIDTH = (16, 24)  # narrower when the labels are wide: a PIN is rarely longer than 16
DIALOG_WIDTH = 74  # inside #dialog's border and padding (app.tcss)
HINT_WIDTH = 26  # what a hint beside an input needs in every language ("✔ соответствует правилам")

Operation = Callable[[Sequence[Module]], ActionResult]
StatusSource = Callable[[], Sequence[Content]]


def pin_name(role: Role) -> str:
    """ "User PIN" / "Admin PIN", as the details screen names them."""
    return _("User PIN") if role is Role.USER else _("Admin PIN")


class RulesPanel(Static):
    """The rules of the field being typed, ✔ or ✖ each, flowed over as few lines as the width allows."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("", **kwargs)
        self._title = ""
        self._checks: tuple[Check, ...] = ()
        self._pending = False

    def show(self, title: str, checks: Iterable[Check], *, pending: bool = False) -> None:
        checks = tuple(checks)
        if (title, checks, pending) != (self._title, self._checks, self._pending):
            self._title, self._checks, self._pending = title, checks, pending
            self.refresh(layout=True)

    @property
    def checks(self) -> tuple[Check, ...]:
        return self._checks

    def _lines(self, width: int) -> list[Content]:
        if not self._title:
            return []
        return render.rules_lines(
            self._title, self._checks, max(width, 20), monochrome=self.app.no_color, pending=self._pending
        )

    def render(self) -> Content:
        return render.join_lines(self._lines(self.content_size.width or 72))

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:
        return max(len(self._lines(width)), 1)


def field_row(label: str, field_id: str, *, password: bool = True, value: str = "") -> Horizontal:
    """Label (a message id), input and a one-line hint beside it (✔ or what is wrong), on one row."""
    return Horizontal(
        tr(Static(classes="field-label"), label),
        Input(
            value=value,
            password=password,
            compact=True,
            max_length=MAX_INPUT,
            id=field_id,
        ),
        Static("", id=f"{field_id}-hint", classes="field-hint"),
        id=f"{field_id}-row",
        classes="field-row",
    )


class ActionScreen(HoldsToken, ReportsWorkers, ModalScreen[ActionResult | None]):
    """The frame of an action screen. A subclass gives the form, the live rules and the core call."""

    ACTION: ClassVar[Action]
    TITLE: ClassVar[str]  # message id: the guide's Russian name in «»
    OK_LABEL: ClassVar[str]
    OK_VARIANT: ClassVar[str] = "primary"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", N_("Cancel"), show=False), *modal_bindings()]

    class Finished(Message):
        """The worker is done: the core's result."""

        def __init__(self, result: ActionResult) -> None:
            super().__init__()
            self.result = result

    def __init__(self, token: ScannedToken, *, note: str = "") -> None:
        super().__init__()
        translate_bindings(self)
        self.token = token
        self.snapshot: TokenSnapshot = token.snapshot
        self.note = note
        self.working = False
        self.result: ActionResult | None = None
        self.remembered = False  # an admin PIN for this token is in the keyring: the field may stay empty
        self._rules_field: str | None = None  # whose rules the panel shows
        self._refused = False  # the token's state forbids the action: the screen only explains (set in compose)
        self._state_now = False  # the PIN state line shows the state after an attempt
        self._status: StatusSource = list  # makes the status lines, again after a language switch

    # --- what a subclass gives ---------------------------------------------------------------------------

    def compose_form(self) -> ComposeResult:
        yield from ()

    def refusal(self) -> str | None:
        """Why this token must not get this action at all (then the screen only explains), or None."""
        return None

    def pin_roles(self) -> list[Role]:
        """The PINs whose state the screen shows before and after (tries left)."""
        return [Role.ADMIN]

    def rules(self) -> dict[str, tuple[str, list[Check]]]:
        """Field id → (title, rules) for the fields that have rules."""
        return {}

    def hints(self) -> dict[str, Content]:
        """Field id → the one-line state shown beside it."""
        return {}

    def problem(self) -> Invalid | None:
        """The first thing to fix before anything is sent to the token (core.policy's validators), or None."""
        return None

    def operation(self) -> Operation:
        raise NotImplementedError

    def can_submit(self) -> bool:
        return True

    # --- layout ------------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """The action succeeded: the form is gone, only Close is left."""
        return self.result is not None and self.result.ok

    @property
    def serial(self) -> str:
        return self.snapshot.serial

    @property
    def token_ref(self) -> str:
        """What the action is told to act on: exactly this panel's token (library, slot, serial)."""
        return self.snapshot.token_id

    @property
    def context(self) -> ConsoleContext:
        return console_of(self.app)

    @property
    def remember_offered(self) -> bool:
        return self.context.settings.remember_admin_pins

    def compose(self) -> ComposeResult:
        # Every text goes through `tr`, so a language switch redraws it in place (see `retranslate`).
        self._refused = self.refusal() is not None
        mono = self.app.no_color
        with Vertical(id="dialog") as dialog:
            tr(dialog, self.TITLE, attribute="border_title")
            tr(
                dialog,
                lambda: _("Esc: close") if self._refused or self.done else _("Esc: cancel"),
                attribute="border_subtitle",
            )
            yield tr(Static(id="token-line"), lambda: render.token_heading(self.snapshot))
            yield Static(id="state-line")
            if self.note:
                yield tr(Static(id="note"), lambda: render.hint(_(self.note), Severity.WARNING, monochrome=mono))
            if self._refused:
                # A refused screen never runs its action, so the token's state and the refusal stay the same.
                yield tr(
                    Static(id="refusal"), lambda: render.hint(self.refusal() or "", Severity.ERROR, monochrome=mono)
                )
            else:
                with Vertical(id="form"):
                    yield from self.compose_form()
            yield Static(id="status")
            with Horizontal(id="buttons"):
                if not self._refused:
                    yield tr(Button(id="ok", variant=self.OK_VARIANT, compact=True), self.OK_LABEL)  # type: ignore[arg-type]
                yield tr(
                    Button(id="cancel", compact=True), lambda: _("Close") if self._refused or self.done else _("Cancel")
                )
        # The keys that work here (the language); the dashboard's, under this modal, do not.
        yield Footer(compact=True, show_command_palette=False)

    def compose_admin_pin(self, label: str | None = None) -> ComposeResult:
        """The admin PIN field (`label`: a message id) and, when the settings allow it, the offer to keep it in
        the OS keyring."""
        self.remembered = self.remember_offered and admin_pins.recall(self.serial) is not None
        yield field_row(label or N_("Admin PIN"), "admin_pin")
        if not self.remember_offered:
            return
        if admin_pins.available():
            yield tr(
                StateCheckbox(id="remember", compact=True, classes="indented"),
                N_("Remember this admin PIN for this token (OS keyring)"),
            )
        else:
            text = N_("No OS keyring on this computer: the admin PIN cannot be remembered (never in a file).")
            yield tr(
                Static(id="no-keyring", classes="indented"),
                lambda: render.hint(_(text), Severity.INFO, monochrome=self.app.no_color),
            )

    def retranslate(self) -> None:
        """The language changed: the `tr` texts are redrawn already (the app does that); the lines made from the
        token and from what is typed are made again here. What is typed, the focus and the result stay."""
        self.paint_state(now=self._state_now)
        self._paint_status()
        for panel in self.query(RulesPanel):
            panel.refresh(layout=True)
        self.fit_labels()
        self.live()

    def fit_labels(self) -> None:
        """The label column as wide as the longest label now shown (see LABEL_WIDTH); the indented lines (the
        checkboxes) line up with the inputs."""
        labels = list(self.query(".field-label").results(Static))
        if not labels:
            return
        longest = max(Content.from_text(str(label.render())).cell_length for label in labels)
        width = max(LABEL_WIDTH[0], min(LABEL_WIDTH[1], longest + 1))
        field = max(INPUT_WIDTH[0], min(INPUT_WIDTH[1], DIALOG_WIDTH - width - HINT_WIDTH - 1))
        for label in labels:
            label.styles.width = width
        for row in self.query(".field-row Input"):
            row.styles.width = field
        for widget in self.query(".indented"):
            widget.styles.margin = (0, 0, 0, width)

    def on_mount(self) -> None:
        follow_language(self)
        self.fit_labels()
        self.show_status(list)
        self.paint_state()
        self.live()
        inputs = self.inputs()
        (inputs[0] if inputs else self.query_one("#cancel")).focus()

    def on_unmount(self) -> None:
        operator_lock.release(self.serial)  # taken by the app when it opened this screen

    def paint_state(self, *, now: bool = False) -> None:
        self._state_now = now
        lines = [render.pin_state_line(pin_name(role), self._pin(role), now=now) for role in self.pin_roles()]
        self.query_one("#state-line", Static).update(render.join_lines(lines))

    def _pin(self, role: Role) -> PinState:
        return self.snapshot.user_pin if role is Role.USER else self.snapshot.so_pin

    # --- fields ------------------------------------------------------------------------------------------

    def inputs(self) -> list[Input]:
        """The inputs the operator can type in now, in order."""
        return [field for field in self.query(Input) if self._shown(field)]

    def _shown(self, widget: Widget) -> bool:
        """Displayed, and so is every container up to this screen (a hidden pair hides its inputs)."""
        node: DOMNode | None = widget
        while node is not None and node is not self:
            if not node.display:
                return False
            node = node.parent
        return True

    def value(self, field_id: str) -> str:
        try:
            return self.query_one(f"#{field_id}", Input).value
        except NoMatches:
            return ""

    def checked(self, checkbox_id: str) -> bool:
        try:
            return self.query_one(f"#{checkbox_id}", Checkbox).value
        except NoMatches:
            return False

    def admin_pin_hint(self) -> Content:
        if self.remembered and not self.value("admin_pin"):
            text = _("leave empty: the remembered one is used")
            return render.hint(text, Severity.INFO, monochrome=self.app.no_color)
        return Content("")

    def pin_pair_hints(self, first: str, second: str, checks: Sequence[Check]) -> dict[str, Content]:
        """Beside a new PIN: whether it meets the rules; beside its repeat: whether the two match."""
        mono = self.app.no_color
        unmet = [check for check in checks if not check.ok and check.rule != "match"]
        hints = {first: Content(""), second: Content("")}
        if self.value(first):
            hints[first] = (
                render.hint(_("meets the rules"), monochrome=mono)
                if not unmet
                else render.hint(_("rules not met: {count}").format(count=len(unmet)), Severity.ERROR, monochrome=mono)
            )
        if self.value(second):
            hints[second] = (
                render.hint(_("matches"), monochrome=mono)
                if self.value(first) == self.value(second)
                else render.hint(_("does not match"), Severity.ERROR, monochrome=mono)
            )
        return hints

    def unfit_pin(self, field_id: str, role: Role) -> Invalid | None:
        """The PIN typed there cannot be the token's (core.policy.current_pin_fits): it is not sent, so it spends no
        try. Judged on submit only, and the words say nothing about what was typed."""
        pin = self.value(field_id)
        bounds = {"min_length": self.snapshot.min_pin_length, "max_length": self.snapshot.max_pin_length}
        return invalid_current_pin(pin, pin_name=role.title_text, field=field_id, **bounds) if pin else None

    def new_pin_rules(self, first: str, second: str, *, max_length: int | None = None) -> list[Check]:
        return pin_checks(self.value(first), self.value(second), max_length=max_length)

    def new_pin_problem(self, first: str, second: str, role: Role, *, max_length: int | None = None) -> Invalid | None:
        """The new PIN pair breaks a rule: core's own validator, before any PIN try is spent."""
        pins = (self.value(first), self.value(second))
        return invalid_new_pin(*pins, pin_name=role.title_text, field=first, again_field=second, max_length=max_length)

    def missing_admin_pin(self) -> Invalid | None:
        """No admin PIN typed and none remembered in the keyring."""
        typed = self.value("admin_pin") or ("remembered" if self.remembered else "")
        return missing(typed, field="admin_pin", text=Text(TYPE_ADMIN_PIN))

    def live(self) -> None:
        """Repaint every hint, the rules panel and the OK button from what is typed now (the hidden form's too,
        once done: a language switch redraws them as well)."""
        if self._refused:
            return
        if self._status == self._problem_lines:
            self._paint_status()  # the rules not met, as typed now: gone once the PIN is fixed
        for field_id, content in self.hints().items():
            try:
                self.query_one(f"#{field_id}-hint", Static).update(content)
            except NoMatches:
                continue
        rules = self.rules()
        if rules:
            field = self._rules_field if self._rules_field in rules else next(iter(rules))
            title, checks = rules[field]
            # Fields sharing one group (a new PIN and its repeat): judged once anything is typed in either.
            group = [name for name, rule in rules.items() if rule is rules[field]]
            pending = not any(self.value(name) for name in group)
            self.query_one(RulesPanel).show(title, checks, pending=pending)
        with_ok = self.query("#ok")
        if with_ok and not self.done:
            with_ok.first(Button).disabled = self.working or not self.can_submit()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.live()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        self.live()

    def on_descendant_focus(self, event: DescendantFocus) -> None:
        field_id = event.widget.id
        if field_id and field_id in self.rules():
            self._rules_field = field_id
            self.live()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter moves on to the next field; on the last one it submits."""
        event.stop()
        inputs = self.inputs()
        if event.input in inputs and event.input is not inputs[-1]:
            inputs[inputs.index(event.input) + 1].focus()
        else:
            self.submit()

    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        self.submit()

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.action_close()

    def action_close(self) -> None:
        if self.working:
            self.notify(_("Wait: the token is being changed."), severity="warning")
            return
        self.dismiss(self.result)

    # --- running it --------------------------------------------------------------------------------------

    def show_status(self, source: StatusSource) -> None:
        """Show the lines `source` makes under the form; it makes them again after a language switch."""
        self._status = source
        self._paint_status()

    def _paint_status(self) -> None:
        lines = self._status()
        status = self.query_one("#status", Static)
        status.update(render.join_lines(lines))
        status.display = bool(lines)
        if lines:  # a dialog taller than the terminal scrolls: the answer is what must be seen
            self.call_after_refresh(status.scroll_visible, animate=False)

    def say(self, text: Callable[[], str], severity: Severity = Severity.ERROR) -> None:
        """One line under the form; `text` makes it in the language of the moment."""
        self.show_status(lambda: [render.hint(text(), severity, monochrome=self.app.no_color)])

    def _problem_lines(self) -> list[Content]:
        """What to fix before anything is sent, judged on what is typed now (so again after a language switch)."""
        problem = self.problem()
        if problem is None:
            return []
        return [render.hint(problem.message(), Severity.WARNING, monochrome=self.app.no_color)]

    def focus_field(self, field_id: str | None, *, clear: bool = False) -> None:
        if not field_id:
            return
        try:
            field = self.query_one(f"#{field_id}", Input)
        except NoMatches:
            return
        if clear:
            field.value = ""
        field.focus()

    def submit(self) -> None:
        if self.working or self.refusal() is not None or self.done:
            return
        problem = self.problem()
        if problem is not None:
            self.show_status(self._problem_lines)
            self.focus_field(problem.field)
            return
        if not self.can_submit():
            return
        modules = self.context.modules_for_actions()
        if modules is None:
            self.say(lambda: _("The console is still loading the driver: wait for the first scan, then try again."))
            return
        self.set_working(True)
        self.run_operation(modules, self.operation())

    def set_working(self, working: bool) -> None:
        self.working = working
        self.query_one("#form").disabled = working
        for button in self.query(Button):
            button.disabled = working
        if working:
            self.show_status(
                lambda: [Content.styled("⟳ " + _("Working… do not pull the token out."), "bold $text-warning")]
            )
        else:
            self.live()

    def run_operation(self, modules: Sequence[Module], operation: Operation) -> None:
        # PKCS#11 in a thread, never on the UI thread; core holds the module lock, so a background scan waits.
        in_thread(
            self,
            lambda: operation(modules),
            self._report,
            failed=self._failed,
            group="action",
            exclusive=True,
        )

    def _report(self, result: ActionResult) -> None:
        self.post_message(self.Finished(result))

    def _failed(self, error: str) -> None:
        """A bug, not a user's doing (tui.workers logged it): said in one line, no traceback on screen."""
        self.set_working(False)
        self.context.rescan()  # the dashboard shows the token as the attempt left it
        self.say(lambda: _("The action failed unexpectedly: {error}").format(error=error))

    def on_action_screen_finished(self, message: Finished) -> None:
        message.stop()
        self.set_working(False)
        self.context.rescan()  # the dashboard shows the token as the attempt left it
        result = message.result
        self.result = result
        if result.after is not None:
            self.snapshot = result.after
            refresh(self.query_one("#token-line"))  # the header names the token as it is now (a new name)
        self.paint_state(now=result.after is not None)
        self.show_status(lambda: self._outcome_lines(result))
        if result.ok:
            self.finished_ok()
            return
        self.remembered = self.remember_offered and admin_pins.recall(self.serial) is not None
        self.live()
        # Only the rejected PIN is cleared; everything else typed stays, so nothing has to be typed twice.
        self.focus_field(result.field, clear=result.outcome in (Outcome.WRONG_PIN, Outcome.PIN_LOCKED))

    def _outcome_lines(self, result: ActionResult) -> list[Content]:
        lines = render.outcome_lines(result, monochrome=self.app.no_color)
        if result.outcome is Outcome.TOKEN_GONE and result.after is None and result.before is not None:
            lines.append(Content(_("Its state is unknown until it is back: plug it in and the dashboard shows it.")))
        return lines

    def finished_ok(self) -> None:
        self.query_one("#form").display = False
        self.query_one("#ok").display = False
        close = self.query_one("#cancel", Button)
        refresh(close)  # "Close" now
        close.focus()
        refresh(self.query_one("#dialog"))  # "Esc: close"
