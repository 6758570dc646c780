"""The audit log, newest first: when, who, which token, what was done, how it went, the findings before and
after. The file holds no PIN, so there is none to show; the lines under the table spell out the chosen entry."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from core import audit
from core.i18n import N_, _
from tui import render
from tui.actions import console_bindings, translate_bindings
from tui.lang import follow_language, tr

LIMIT = 1000  # the history a helpdesk call needs; the file itself keeps everything


class AuditScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", N_("Back"), id="back", show=False),
        *console_bindings(tokens=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        translate_bindings(self)
        self.entries: list[audit.Item] = []
        self.error: audit.AuditError | None = None

    def compose(self) -> ComposeResult:
        yield tr(Static(classes="screen-title"), lambda: " " + _("Audit log ─ newest first") + " ─ " + _("Esc: back"))
        yield DataTable(id="audit-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="audit-detail")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        follow_language(self)
        self.load()
        self.query_one(DataTable).focus()

    def load(self) -> None:
        """Read the file again (another console may have written since) and show it."""
        try:
            self.entries, self.error = audit.read(limit=LIMIT), None
        except audit.AuditError as error:  # a device, a pipe, no permission: said under the empty table
            self.entries, self.error = [], error
        self._fill()

    def _fill(self) -> None:
        """The table from the entries read, in the language now set; the highlighted row stays where it was."""
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear(columns=True)
        table.add_columns(_("Time"), _("Outcome"), _("Action"), _("Token"), _("Operator"), _("Findings before → after"))
        for entry in self.entries:
            table.add_row(*render.audit_row(entry))
        if self.entries:
            table.move_cursor(row=min(row, len(self.entries) - 1))
        self._detail(table.cursor_row if self.entries else None)

    def retranslate(self) -> None:
        self._fill()

    def _detail(self, index: int | None) -> None:
        detail = self.query_one("#audit-detail", Static)
        if self.error is not None:
            text = _("Cannot read the audit trail at {path}: {reason}.")
            detail.update(Content(text.format(path=self.error.path, reason=_(self.error.reason))))
        elif index is None or not 0 <= index < len(self.entries):
            detail.update(Content(_("No action has been recorded yet in {path}.").format(path=audit.audit_path())))
        else:
            detail.update(render.audit_detail(self.entries[index]))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail(event.cursor_row)
