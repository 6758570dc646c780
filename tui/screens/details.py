"""Token details: every field of the snapshot, each certificate in full, the keys, the findings explained."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Static

from core.i18n import N_, _
from core.scan import ScannedToken
from tui import render
from tui.actions import console_bindings, translate_bindings
from tui.lang import follow_language


class DetailsScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", N_("Back"), id="back", show=False),
        *console_bindings(tokens=True),
    ]

    def __init__(self, token: ScannedToken) -> None:
        super().__init__()
        translate_bindings(self)
        self.token = token
        self.gone = False

    @property
    def key(self) -> str:
        return self.token.snapshot.key

    def compose(self) -> ComposeResult:
        yield Static(id="details-title", classes="screen-title")
        with VerticalScroll(id="details-scroll", can_focus=True):
            yield Static(id="details-body")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        follow_language(self)
        self._paint()
        self.query_one("#details-scroll").focus()

    def show(self, token: ScannedToken | None) -> None:
        """A new reading of this token, or None when it was unplugged (the last reading stays, marked)."""
        if token is None:
            if not self.gone:
                self.gone = True
                self._paint()
            return
        self.gone = False
        self.token = token
        self._paint()

    def retranslate(self) -> None:
        self._paint()

    def _paint(self) -> None:
        snap = self.token.snapshot
        # Label and serial only: the model is in the body, and the title must fit 80 columns with "Esc: back".
        title = Content.assemble(" ", render.panel_title(snap), f" · {render.serial_text(snap)} ─ ", _("Esc: back"))
        self.query_one("#details-title", Static).update(title)
        self.query_one("#details-body", Static).update(
            render.details_body(self.token, gone=self.gone, monochrome=self.app.no_color)
        )
