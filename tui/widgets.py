"""Dashboard widgets: the header bar, one panel per token, and the workstation panel."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import ClassVar

from textual import events
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Checkbox, RadioButton, Static

from core.findings import Severity
from core.i18n import N_, _
from core.scan import ScannedToken, ScanResult
from tui import render
from tui.actions import translate_bindings

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _same(a: ScannedToken, b: ScannedToken) -> bool:
    """Equal apart from when it was read: a rescan that changed nothing repaints nothing."""
    return replace(a.snapshot, taken_at=_EPOCH) == replace(b.snapshot, taken_at=_EPOCH) and a.findings == b.findings


class HeaderBar(Static):
    """Title, the module(s) in use, and whether a scan is running."""

    scanning: reactive[bool] = reactive(False)
    modules_text: reactive[str] = reactive("")
    summary: reactive[str] = reactive("")
    lab: reactive[bool] = reactive(False)  # the training lab's tokens: said first, so nobody takes them for real

    def render(self) -> Content:
        status = (
            Content.styled("⟳ " + _("scanning…"), "bold $text-warning")
            if self.scanning
            else Content.styled(self.summary, "$text-muted")
        )
        title = Content.styled(_("KAZTOKEN helpdesk"), "bold")
        lab = Content("")
        if self.lab:
            lab = Content.assemble(
                (" LAB ", "bold reverse $text-warning"),
                " ",
                (_("training tokens, not a customer's"), "bold $text-warning"),
                " ",
                (" t ", "bold reverse"),  # the trainer's menu: the Footer has no room for its key at 80 columns
                " ",
                _("Trainer"),
            )
        width = self.size.width or 80
        room = width - status.cell_length - 2
        # What gives way when the line is short: the module's name, then the title (the LAB mark says what this
        # is); never cut mid-word unless even the LAB mark does not fit.
        choices: list[list[str | Content]] = [[title, self.modules_text], [title], []]
        for parts in choices:
            left = Content(" ─ ").join([part for part in [lab, *parts] if part])
            if left.cell_length <= room:
                break
        else:
            left = left.truncate(max(room - 1, 0), ellipsis=True)
        gap = max(width - left.cell_length - status.cell_length - 2, 1)
        return Content.assemble(" ", left, " " * gap, status, " ")


class TokenPanel(Static, can_focus=True):
    """One connected token: who it is, PIN and certificate state, findings worst first with their fix."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "details", N_("Details"), show=False),
        # On the panel, before the scroll container's own arrows: they select a token (scrolled into view)
        # rather than scroll the list away from the selection.
        Binding("down", "app.select(1, 'row')", show=False),
        Binding("up", "app.select(-1, 'row')", show=False),
        Binding("right", "app.select(1, 'cell')", show=False),
        Binding("left", "app.select(-1, 'cell')", show=False),
    ]

    class Chosen(Message):
        """Enter or a double click on a panel: open its details."""

        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    def __init__(self, token: ScannedToken) -> None:
        super().__init__(classes="token-panel")
        translate_bindings(self)
        self.token = token
        self._paint()

    @property
    def key(self) -> str:
        return self.token.snapshot.key

    def show(self, token: ScannedToken) -> None:
        if not _same(token, self.token):
            self.token = token
            self._paint()

    def _paint(self) -> None:
        snap = self.token.snapshot
        self.border_title = render.panel_title(snap)
        self.border_subtitle = render.panel_subtitle(snap)
        severity = render.severity_class(self.token)
        self.remove_class(*(name for name in ("-ok", "-warning", "-error") if name != severity), update=False)
        # Styled again only once mounted: a panel being made is styled when mounted (a millisecond a panel, twice).
        self.add_class(severity, update=self.is_attached)
        self.update(render.token_body(self.token, monochrome=self.app.no_color))

    def retranslate(self) -> None:
        self._paint()

    def action_details(self) -> None:
        self.post_message(self.Chosen(self.key))

    def on_click(self, event: events.Click) -> None:
        if event.chain >= 2:
            self.post_message(self.Chosen(self.key))


class WorkstationPanel(Static):
    """What is wrong before any token: no driver, a driver that fails to load, no token plugged in; and the
    readers."""

    def __init__(self) -> None:
        super().__init__(id="workstation")
        self.border_title = _("This computer")
        self.display = False

    def retranslate(self, result: ScanResult | None) -> None:
        self.border_title = _("This computer")
        if result is not None:
            self.show(result)

    def show(self, result: ScanResult) -> None:
        # Readers with nothing readable in them are shown too: an empty reader beside a token says where to look.
        self.display = bool(result.findings or result.readers)
        error = bool(result.findings) and result.findings[0].severity is Severity.ERROR
        self.set_class(error, "-error")
        self.set_class(bool(result.findings) and not error, "-warning")
        if self.display:
            self.update(render.workstation_body(result, monochrome=self.app.no_color))


def _state_button(widget: Checkbox | RadioButton, shown: str) -> Content:
    """The box drawn in the button's own style, brackets included: Textual draws the brackets in the box's
    background colour, which is nothing without colour."""
    return Content.styled(shown, widget.get_visual_style("toggle--button"))


class StateCheckbox(Checkbox):
    """A check box whose state reads without colour (NO_COLOR, a 16-colour terminal): [X] when ticked, [ ] when
    not. Textual's draws an X either way and tells them apart by colour only."""

    @property
    def _button(self) -> Content:
        return _state_button(self, "[X]" if self.value else "[ ]")


class StateRadioButton(RadioButton):
    """A radio button whose choice reads without colour: (●) for the chosen one, ( ) for the others."""

    @property
    def _button(self) -> Content:
        return _state_button(self, "(●)" if self.value else "( )")
