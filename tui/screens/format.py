"""«Форматировать»: every key and certificate is lost, so it is refused during an unfinished registration and
otherwise confirmed by typing the token's name (or serial)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.content import Content
from textual.widgets import Static

from core.actions import NOT_CONFIRMED, Action, Role, confirmation_matches, format_refusal, format_token
from core.findings import Severity
from core.i18n import N_, Text, _
from core.policy import Invalid
from core.snapshot import TokenSnapshot
from core.untrusted import visible
from tui import render
from tui.lang import tr
from tui.screens.pin_form import ActionScreen, Operation, field_row


class FormatScreen(ActionScreen):
    ACTION = Action.FORMAT
    TITLE = N_("Format the token («Форматировать»)")
    OK_LABEL = N_("Format the token")  # the full name: the Footer's label may be cut short
    OK_VARIANT = "error"

    def refusal(self) -> str | None:
        refusal = format_refusal(self.snapshot)
        return str(refusal) if refusal is not None else None

    def compose_form(self) -> ComposeResult:
        # The token this screen opened on: the texts below name it even after the format succeeded.
        snap, mono = self.snapshot, self.app.no_color
        yield tr(Static(classes="explain"), lambda: render.hint(_lost(snap), Severity.ERROR, monochrome=mono))
        yield tr(Static(classes="explain"), lambda: _ask(snap))
        yield field_row(N_("Confirmation"), "confirmation", password=False)
        yield from self.compose_admin_pin()

    def confirmed(self) -> bool:
        return confirmation_matches(self.snapshot, self.value("confirmation"))

    def can_submit(self) -> bool:
        return self.confirmed()

    def hints(self) -> dict[str, Content]:
        mono, typed = self.app.no_color, self.value("confirmation")
        confirmation = Content("")
        if typed:
            confirmation = (
                render.hint(_("matches"), monochrome=mono)
                if self.confirmed()
                else render.hint(_("not the name or serial yet"), Severity.ERROR, monochrome=mono)
            )
        return {"confirmation": confirmation, "admin_pin": self.admin_pin_hint()}

    def problem(self) -> Invalid | None:
        if not self.confirmed():
            return Invalid("confirmation", Text(NOT_CONFIRMED))
        return self.missing_admin_pin() or self.unfit_pin("admin_pin", Role.ADMIN)

    def operation(self) -> Operation:
        serial, confirmation = self.token_ref, self.value("confirmation")
        admin_pin, remember = self.value("admin_pin") or None, self.checked("remember")
        return lambda modules: format_token(
            modules, serial, admin_pin=admin_pin, confirmation=confirmation, remember_admin_pin=remember
        )


def _lost(snap: TokenSnapshot) -> str:
    names = ", ".join(f"«{visible(cert.name)}»" for cert in snap.certificates)
    # The admin PIN is what C_InitToken is called with: it stays, and a later personalise needs this one.
    kept = " " + _("The admin PIN stays as it is: formatting does not reset it to the factory one.")
    if names:
        return (
            _(
                "Formatting erases every key and certificate on this token, for good. Certificates on it: {names}."
            ).format(names=names)
            + kept
        )
    return _("Formatting erases every key and certificate on this token, for good.") + kept


def _ask(snap: TokenSnapshot) -> Content:
    """Content, not a str: the Static would read the token's name as markup."""
    label, serial = visible(snap.label.strip()), visible(snap.serial)
    if label:
        return Content(
            _("To confirm, type the token's name «{label}» or its serial {serial}:").format(label=label, serial=serial)
        )
    return Content(_("To confirm, type the token's serial {serial}:").format(serial=serial))
