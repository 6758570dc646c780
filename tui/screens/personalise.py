"""«Персонализация токена»: a token name, a new user PIN typed twice, the admin PIN (and optionally a new one)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Checkbox

from core.actions import FACTORY_ADMIN_PIN, Action, Role, personalise, personalise_refusal
from core.findings import Severity
from core.i18n import N_, _
from core.policy import Check, Invalid, invalid_label, label_checks, pin_checks
from tui import render
from tui.lang import tr
from tui.screens.pin_form import ActionScreen, Operation, RulesPanel, field_row
from tui.widgets import StateCheckbox


class PersonaliseScreen(ActionScreen):
    ACTION = Action.PERSONALISE
    TITLE = N_("Personalise the token («Персонализация токена»)")
    OK_LABEL = N_("Personalise the token")  # the full name: the Footer's label may be cut short

    def refusal(self) -> str | None:
        refusal = personalise_refusal(self.snapshot)
        return None if refusal is None else str(refusal)

    def pin_roles(self) -> list[Role]:
        return [Role.ADMIN, Role.USER]

    def compose_form(self) -> ComposeResult:
        yield field_row(N_("Token name"), "label", password=False, value=self.snapshot.label.strip())
        yield from self.compose_admin_pin()
        yield field_row(N_("New user PIN"), "new_pin")
        yield field_row(N_("Repeat it"), "new_pin_again")
        yield tr(StateCheckbox(id="change-admin", compact=True, classes="indented"), N_("Also set a new admin PIN"))
        pair = Vertical(id="new-admin")
        pair.display = False
        with pair:
            yield field_row(N_("New admin PIN"), "new_admin_pin")
            yield field_row(N_("Repeat it"), "new_admin_pin_again")
        yield RulesPanel(id="rules")

    @property
    def changing_admin(self) -> bool:
        return self.checked("change-admin")

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        if event.checkbox.id == "change-admin":
            self.query_one("#new-admin").display = event.value
            if event.value:
                self.focus_field("new_admin_pin")
        self.live()

    def _user_rules(self) -> list[Check]:
        return self.new_pin_rules("new_pin", "new_pin_again", max_length=self.snapshot.max_pin_length)

    def rules(self) -> dict[str, tuple[str, list[Check]]]:
        user = (_("New user PIN:"), self._user_rules())
        rules = {"label": (_("Token name:"), label_checks(self.value("label"))), "new_pin": user, "new_pin_again": user}
        if self.changing_admin:
            admin = (_("New admin PIN:"), pin_checks(self.value("new_admin_pin"), self.value("new_admin_pin_again")))
            rules["new_admin_pin"] = rules["new_admin_pin_again"] = admin
        return rules

    def hints(self) -> dict[str, Content]:
        mono = self.app.no_color
        hints = {"label": Content(""), "admin_pin": self.admin_pin_hint()}
        if self.value("label"):
            invalid = invalid_label(self.value("label"))
            hints["label"] = (
                render.hint(invalid.checks[0].text, Severity.ERROR, monochrome=mono)
                if invalid
                else render.hint(_("fine"))
            )
        # Compared in memory only: the default is never shown, just named.
        if self.value("admin_pin") == FACTORY_ADMIN_PIN and not self.changing_admin:
            hints["admin_pin"] = render.hint(_("factory default: set a new one"), Severity.WARNING, monochrome=mono)
        hints |= self.pin_pair_hints("new_pin", "new_pin_again", self._user_rules())
        if self.changing_admin:
            admin = pin_checks(self.value("new_admin_pin"), self.value("new_admin_pin_again"))
            hints |= self.pin_pair_hints("new_admin_pin", "new_admin_pin_again", admin)
        return hints

    def problem(self) -> Invalid | None:
        return (
            invalid_label(self.value("label"))
            or self.missing_admin_pin()
            or self.unfit_pin("admin_pin", Role.ADMIN)
            or self.new_pin_problem("new_pin", "new_pin_again", Role.USER, max_length=self.snapshot.max_pin_length)
            or (self.changing_admin and self.new_pin_problem("new_admin_pin", "new_admin_pin_again", Role.ADMIN))
            or None
        )

    def operation(self) -> Operation:
        serial, label = self.token_ref, self.value("label")
        admin_pin = self.value("admin_pin") or None  # None: the one remembered in the keyring
        new_pin, again = self.value("new_pin"), self.value("new_pin_again")
        changing = self.changing_admin
        new_admin = self.value("new_admin_pin") if changing else None
        new_admin_again = self.value("new_admin_pin_again") if changing else None
        remember = self.checked("remember")
        return lambda modules: personalise(
            modules,
            serial,
            label=label,
            admin_pin=admin_pin,
            new_user_pin=new_pin,
            new_user_pin_again=again,
            new_admin_pin=new_admin,
            new_admin_pin_again=new_admin_again,
            remember_admin_pin=remember,
        )
