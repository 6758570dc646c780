"""Help: the keys, the «Ошибка: 0200040» checklist, and every finding with what to tell the customer."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from core.i18n import N_, _
from tui import render
from tui.actions import console_bindings, translate_bindings
from tui.lang import follow_language, tr


class HelpScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", N_("Back"), id="back", show=False),
        *console_bindings(tokens=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        translate_bindings(self)

    def compose(self) -> ComposeResult:
        yield tr(Static(classes="screen-title", id="help-title"), self._title)
        with VerticalScroll(id="help-scroll", can_focus=True):
            yield tr(Static(id="help-body"), lambda: render.help_body(monochrome=self.app.no_color))
        yield Footer(compact=True, show_command_palette=False)

    @staticmethod
    def _title() -> str:
        return " " + _("Help ─ what the console shows and what to say") + " ─ " + _("Esc: back")

    def on_mount(self) -> None:
        follow_language(self)
        self.query_one("#help-scroll").focus()
