"""«Изменить…»: the user or the admin PIN, with the current one and the new one typed twice."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.widgets import RadioSet, Static

from core.actions import Action, Role, change_pin, locked_text
from core.findings import Severity
from core.i18n import N_, Text, _
from core.policy import Check, Invalid, invalid_same_pin, missing
from core.scan import ScannedToken
from core.snapshot import PinStatus
from tui import render
from tui.lang import tr
from tui.screens.pin_form import ActionScreen, Operation, RulesPanel, field_row
from tui.widgets import StateRadioButton


class ChangePinScreen(ActionScreen):
    ACTION = Action.CHANGE_PIN
    TITLE = N_("Change a PIN («Изменить…»)")
    OK_LABEL = N_("Change")

    def __init__(self, token: ScannedToken, *, note: str = "", role: Role | None = None) -> None:
        super().__init__(token, note=note)
        snap = token.snapshot
        # The admin PIN when only it is asked to be changed; the user PIN otherwise.
        self.role = role or (Role.ADMIN if snap.so_pin.to_be_changed and not snap.user_pin.to_be_changed else Role.USER)

    def pin_roles(self) -> list[Role]:
        return [self.role]

    def compose_form(self) -> ComposeResult:
        with Horizontal(classes="field-row"):
            yield tr(Static(classes="field-label"), N_("Which PIN"))
            with RadioSet(id="role", compact=True):
                yield tr(StateRadioButton(value=self.role is Role.USER, id="role-user", compact=True), N_("User PIN"))
                yield tr(
                    StateRadioButton(value=self.role is Role.ADMIN, id="role-admin", compact=True), N_("Admin PIN")
                )
        yield field_row(N_("Current PIN"), "current_pin")
        yield field_row(N_("New PIN"), "new_pin")
        yield field_row(N_("Repeat it"), "new_pin_again")
        yield RulesPanel(id="rules")

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        self.role = Role.ADMIN if event.pressed.id == "role-admin" else Role.USER
        self.paint_state()
        self.live()

    def _rules(self) -> list[Check]:
        return self.new_pin_rules("new_pin", "new_pin_again", max_length=self.snapshot.max_pin_length)

    def rules(self) -> dict[str, tuple[str, list[Check]]]:
        rules = (_("New {pin}:").format(pin=self.role.label), self._rules())
        return {"new_pin": rules, "new_pin_again": rules}

    def _locked(self) -> Text | None:
        pin = self.snapshot.user_pin if self.role is Role.USER else self.snapshot.so_pin
        if pin.status is not PinStatus.LOCKED:
            return None
        return locked_text(self.role)

    def hints(self) -> dict[str, Content]:
        mono = self.app.no_color
        pin = self.snapshot.user_pin if self.role is Role.USER else self.snapshot.so_pin
        current = Content("")
        if pin.status is PinStatus.LOCKED:
            current = render.hint(_("locked"), Severity.ERROR, monochrome=mono)
        elif pin.status is PinStatus.FINAL_TRY:
            current = render.hint(_("last try: a wrong PIN locks it"), Severity.ERROR, monochrome=mono)
        return {"current_pin": current, **self.pin_pair_hints("new_pin", "new_pin_again", self._rules())}

    def problem(self) -> Invalid | None:
        locked = self._locked()
        if locked is not None:
            return Invalid("current_pin", locked)
        return (
            missing(self.value("current_pin"), field="current_pin", text=Text(N_("Type the current PIN.")))
            or self.unfit_pin("current_pin", self.role)
            or self.new_pin_problem("new_pin", "new_pin_again", self.role, max_length=self.snapshot.max_pin_length)
            or invalid_same_pin(self.value("current_pin"), self.value("new_pin"))
        )

    def operation(self) -> Operation:
        serial, role = self.token_ref, self.role
        current, new_pin, again = self.value("current_pin"), self.value("new_pin"), self.value("new_pin_again")
        return lambda modules: change_pin(
            modules, serial, role=role, current_pin=current, new_pin=new_pin, new_pin_again=again
        )
