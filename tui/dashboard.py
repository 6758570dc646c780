"""The dashboard: the console's main screen, a header, the workstation panel when something is wrong and one
panel per token, repainted in place from each scan. The token keys live here (and on a token's details)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Container, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from core.i18n import N_, _
from core.scan import ScanResult
from tui import compat, lang, render
from tui.actions import console_bindings, translate_bindings
from tui.context import console_of
from tui.widgets import HeaderBar, TokenPanel, WorkstationPanel


class Dashboard(Screen[None]):
    """The main screen: header, the workstation panel when something is wrong, one panel per token."""

    BINDINGS: ClassVar[list[BindingType]] = [*console_bindings(tokens=True)]
    # A token panel is at least this many rows (its borders and a line): the first scan mounts only the panels
    # that can be on screen, the rest right after they are painted (64 panels cost as much as the rest of the start).
    PANEL_ROWS = 3

    def __init__(self) -> None:
        super().__init__()
        translate_bindings(self)
        self._latest: ScanResult | None = None  # the last scan shown, for the panels mounted after the first paint

    def compose(self) -> ComposeResult:
        header = HeaderBar(id="header")
        header.scanning = True  # the first scan starts with the console
        header.lab = console_of(self.app).lab is not None
        yield header
        # Not focusable itself: the focus is always on a panel, so the arrows select rather than scroll.
        with VerticalScroll(id="main", can_focus=False):
            yield WorkstationPanel()
            yield lang.tr(Static(id="placeholder"), N_("Looking for tokens…"))
            yield Container(id="tokens")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        lang.follow_language(self)

    @property
    def panels(self) -> list[TokenPanel]:
        return list(self.query_one("#tokens").query_children(TokenPanel))

    @property
    def columns(self) -> int:
        return 2 if self.has_class("-wide") else 1

    def selected(self) -> TokenPanel | None:
        return self.focused if isinstance(self.focused, TokenPanel) else None

    def show(self, result: ScanResult) -> None:
        """Repaint from a scan: panels keep their place and focus across rescans; only changes repaint."""
        self._latest = result
        self._paint_header(result)
        self.query_one(WorkstationPanel).show(result)
        self.query_one("#placeholder").display = False
        grid = self.query_one("#tokens")
        existing = {panel.key: panel for panel in self.panels}
        wanted = {token.snapshot.key for token in result.tokens}
        focused = self.selected()
        focus_index = self.panels.index(focused) if focused else 0
        for key, gone in existing.items():
            if key not in wanted:
                gone.remove()
        # The first scan: the panels that fit on screen now (worst first), the others after the screen is painted.
        room = len(result.tokens) if existing else self.columns * (self.size.height // self.PANEL_ROWS + 1)
        previous: TokenPanel | None = None
        for token in result.tokens:  # worst first already (core.scan)
            panel = existing.get(token.snapshot.key)
            if panel is None and room <= 0:
                self.call_after_refresh(self._show_rest)
                break
            if panel is not None:
                panel.show(token)
                placed = grid.children.index(panel) == (grid.children.index(previous) + 1 if previous else 0)
                if not placed:  # its severity changed: it moves, the focus with it
                    grid.move_child(panel, after=previous) if previous else grid.move_child(panel, before=0)
            else:
                room -= 1
                panel = TokenPanel(token)
                if previous is None:
                    grid.mount(panel, before=0) if grid.children else grid.mount(panel)
                else:
                    grid.mount(panel, after=previous)
            previous = panel
        if focused is None or focused.key not in wanted:
            self.call_after_refresh(self._refocus, focus_index)

    def _show_rest(self) -> None:
        """After the first paint: the panels below the screen, from the last scan shown (a newer one may have come)."""
        if self._latest is not None and self.is_attached:
            self.show(self._latest)

    def _paint_header(self, result: ScanResult) -> None:
        header = self.query_one(HeaderBar)
        header.modules_text = render.modules_line(result.modules)
        header.summary = _("tokens: {count}").format(count=len(result.tokens))

    def retranslate(self) -> None:
        """The language changed: the header, the workstation panel and every token panel, drawn again in place."""
        result = console_of(self.app).result
        if result is not None:
            self._paint_header(result)
        self.query_one(HeaderBar).refresh()
        self.query_one(WorkstationPanel).retranslate(result)
        for panel in self.panels:
            panel.retranslate()

    def _refocus(self, index: int) -> None:
        panels = [panel for panel in self.panels if panel.is_attached and not compat.is_closing(panel)]
        if panels and self.selected() is None:
            self.set_focus(panels[min(index, len(panels) - 1)])

    def move(self, step: int) -> None:
        panels = self.panels
        if not panels:
            return
        current = self.selected()
        index = panels.index(current) + step if current in panels else 0
        self.set_focus(panels[max(0, min(index, len(panels) - 1))])
