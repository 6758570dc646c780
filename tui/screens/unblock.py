"""«Разблокировать»: the admin PIN, then a new user PIN typed twice; the keys and certificates stay."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.content import Content
from textual.widgets import Static

from core.actions import Action, Role, locked_text, unblock
from core.i18n import N_, _
from core.policy import Check, Invalid
from core.snapshot import PinStatus
from tui.lang import tr
from tui.screens.pin_form import ActionScreen, Operation, RulesPanel, field_row


class UnblockScreen(ActionScreen):
    ACTION = Action.UNBLOCK
    TITLE = N_("Unblock the user PIN («Разблокировать»)")
    OK_LABEL = N_("Unblock the user PIN")  # the full name: the Footer's label may be cut short

    def refusal(self) -> str | None:
        return str(locked_text(Role.ADMIN)) if self.snapshot.so_pin.status is PinStatus.LOCKED else None

    def pin_roles(self) -> list[Role]:
        return [Role.USER, Role.ADMIN]

    def compose_form(self) -> ComposeResult:
        yield tr(
            Static(classes="explain"),
            N_("The admin PIN sets a new user PIN, which also resets its tries. Keys and certificates stay."),
        )
        yield from self.compose_admin_pin()
        yield field_row(N_("New user PIN"), "new_pin")
        yield field_row(N_("Repeat it"), "new_pin_again")
        yield RulesPanel(id="rules")

    def _rules(self) -> list[Check]:
        return self.new_pin_rules("new_pin", "new_pin_again", max_length=self.snapshot.max_pin_length)

    def rules(self) -> dict[str, tuple[str, list[Check]]]:
        rules = (_("New user PIN:"), self._rules())
        return {"new_pin": rules, "new_pin_again": rules}

    def hints(self) -> dict[str, Content]:
        return {"admin_pin": self.admin_pin_hint(), **self.pin_pair_hints("new_pin", "new_pin_again", self._rules())}

    def problem(self) -> Invalid | None:
        return (
            self.missing_admin_pin()
            or self.unfit_pin("admin_pin", Role.ADMIN)
            or self.new_pin_problem("new_pin", "new_pin_again", Role.USER, max_length=self.snapshot.max_pin_length)
        )

    def operation(self) -> Operation:
        serial, admin_pin = self.token_ref, self.value("admin_pin") or None
        new_pin, again, remember = self.value("new_pin"), self.value("new_pin_again"), self.checked("remember")
        return lambda modules: unblock(
            modules,
            serial,
            admin_pin=admin_pin,
            new_user_pin=new_pin,
            new_user_pin_again=again,
            remember_admin_pin=remember,
        )
