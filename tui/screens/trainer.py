"""The trainer's menu (lab mode only): every scenario and its token, reset with one key, unplug and replug.

All lab work (file moves, and builds in a child process) runs in a thread worker; the table is repainted from
the results and from the console's own scans, which show each token as the trainee sees it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Static

from core import audit
from core.i18n import N_, _
from core.lab import LAB_PINS_WHERE, OCK_SLOT, SCENARIOS, Done, Lab, LabError, Release, ScenarioStatus, Stack
from core.lab import State as LabState
from core.untrusted import visible
from tui.actions import modal_bindings, translate_bindings
from tui.context import console_of
from tui.lang import follow_language, tr
from tui.workers import ReportsWorkers, in_thread

STATE_WORDS = {
    LabState.PLUGGED: N_("plugged in"),
    LabState.UNPLUGGED: N_("unplugged"),
    LabState.NOT_BUILT: N_("not built"),
    LabState.HELD: N_("in this state"),
    LabState.UNAVAILABLE: N_("unavailable"),
    LabState.MODE: N_("start mode"),
}
HOW_WORDS = {
    "copied": N_("from its pristine copy"),
    "built": N_("built anew"),
    "replugged": N_("plugged back in"),
    "kept": N_("kept"),
    "nothing": N_("nothing to reset"),
    "skipped": N_("skipped"),
}


class TrainerScreen(ReportsWorkers, ModalScreen[None]):
    DEFAULT_CSS = """
    TrainerScreen {
        align: center middle;
    }
    #trainer-dialog {
        width: 100%;
        max-width: 120;
        height: 100%;
        max-height: 40;
        border: heavy $warning;
        border-title-style: bold;
        background: $surface;
    }
    #trainer-table {
        height: 1fr;
    }
    #trainer-detail {
        height: auto;
        padding: 0 1;
    }
    #trainer-pins {
        height: auto;
        padding: 0 1;
        color: $text-muted;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", N_("Back"), id="back", show=False),  # in the border: room for the rest
        Binding("t", "close", show=False),
        Binding("r", "reset", N_("Reset"), id="lab_reset"),
        Binding("u", "plug", N_("Unplug/replug"), id="lab_plug"),
        Binding("a", "reset_all", N_("Reset all"), id="lab_reset_all"),
        *modal_bindings(),
    ]

    # The row the menu was left on, per lab: opened again, it is where the trainer left it.
    _LAST_ROW: ClassVar[dict[Path, int]] = {}

    def __init__(self, lab: Lab, *, release: Release | None = None) -> None:
        super().__init__()
        translate_bindings(self)
        self.lab = lab
        self.release = release
        self.statuses: dict[str, ScenarioStatus] = {}
        self.busy = False
        self.asking_all = False  # `a` asked "reset every token?": a second `a` does it, anything else not
        self._shown_result: object = None

    def compose(self) -> ComposeResult:
        with Vertical(id="trainer-dialog") as dialog:
            tr(dialog, lambda: " LAB · " + _("Trainer") + " ", attribute="border_title")
            tr(
                dialog,
                N_("Enter or r: reset · u: unplug/replug · a: reset all · Esc: back"),
                attribute="border_subtitle",
            )
            yield DataTable(id="trainer-table", cursor_type="row", zebra_stripes=True)
            yield Static(id="trainer-detail", markup=False)
            yield tr(
                Static(id="trainer-pins", markup=False),
                LAB_PINS_WHERE,
            )
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        follow_language(self)
        self._fill()
        table = self.query_one(DataTable)
        table.move_cursor(row=self._LAST_ROW.get(self.lab.root, 0))
        table.focus()
        self._load_statuses()
        self.set_interval(1.0, self._show_scan)

    def _fill(self) -> None:
        """The table's columns and rows in the language now set; the highlighted row stays where it was."""
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear(columns=True)
        table.add_column(_("Scenario"), key="scenario")
        table.add_column(_("Token"), key="token")
        table.add_column(_("Scan now"), key="now")
        for item in SCENARIOS:
            table.add_row(item.id, "…", "", key=item.id)
        table.move_cursor(row=row)

    def retranslate(self) -> None:
        self._fill()
        self._paint()

    # --- painting ---

    @property
    def selected(self) -> str | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def _token_codes(self, status: ScenarioStatus) -> tuple[str, ...] | None:
        """The finding codes the console's last scan shows for this scenario's token, None if it shows none."""
        result = console_of(self.app).result
        if result is None:
            return None
        item = status.scenario
        for token in result.tokens:
            snap = token.snapshot
            if item.stack is Stack.SIMULATOR and status.state is LabState.PLUGGED:
                mine = snap.module_path == self.lab.module and snap.serial == status.serial
            elif item.stack is Stack.OPENCRYPTOKI and status.state is LabState.HELD:
                mine = snap.module_path == self.lab.ock_module and snap.slot_id == OCK_SLOT
            else:
                mine = False
            if mine:
                return tuple(finding.code for finding in token.findings)
        return None

    def _now_text(self, status: ScenarioStatus) -> str:
        if status.state not in (LabState.PLUGGED, LabState.HELD):
            return "—"
        codes = self._token_codes(status)
        if codes is None:
            return _("not seen by the console yet")
        # The worst finding and how many more: the column fits at 80 columns; the line under the table has them all.
        shown = (codes[0] + (f" +{len(codes) - 1}" if len(codes) > 1 else "")) if codes else _("no finding")
        return ("✔ " if codes == status.scenario.expected else "✎ " + _("changed") + ": ") + shown

    def _show_scan(self) -> None:
        result = console_of(self.app).result
        if result is self._shown_result:
            return
        self._shown_result = result
        self._paint()

    def _paint(self) -> None:
        table = self.query_one(DataTable)
        for scenario_id, status in self.statuses.items():
            table.update_cell(scenario_id, "token", _(STATE_WORDS[status.state]), update_width=True)
            table.update_cell(scenario_id, "now", self._now_text(status), update_width=True)
        self._paint_detail()

    def _paint_detail(self) -> None:
        scenario_id = self.selected
        status = self.statuses.get(scenario_id or "")
        detail = self.query_one("#trainer-detail", Static)
        if status is None:
            detail.update("")
            return
        if self.asking_all:
            detail.update(
                "⚠ " + _("Reset every lab token, the ones in use included? Press a again to do it; any other key: no.")
            )
            return
        item = status.scenario
        lines = [f"{_(item.title)}  [{item.stack}]"]
        if item.hint:
            lines.append(_(item.hint))
        lines.append(_("Shows: {codes}").format(codes=", ".join(item.expected) or _("no finding")))
        now = self._token_codes(status)
        if now is not None and now != item.expected:  # the table's cell has the worst only
            lines.append(_("Scan now") + ": " + (", ".join(now) or _("no finding")))
        state = status.text + (" · " + _("serial {serial}").format(serial=status.serial) if status.serial else "")
        lines.append(state)
        detail.update("\n".join(lines))

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self._LAST_ROW[self.lab.root] = self.query_one(DataTable).cursor_row
        self.asking_all = False
        self._paint_detail()

    def on_data_table_row_selected(self, _event: DataTable.RowSelected) -> None:
        self.action_reset()

    # --- actions ---

    def action_close(self) -> None:
        self.dismiss(None)

    def _start(self) -> bool:
        if self.busy:
            self.notify(_("The lab is busy with the last request: a moment."), severity="warning")
            return False
        self.busy = True
        return True

    def action_reset(self) -> None:
        scenario_id = self.selected
        status = self.statuses.get(scenario_id or "")
        if status is None:
            return
        if status.state is LabState.UNAVAILABLE:
            self.notify(status.text, title=_(status.scenario.title), severity="warning", markup=False)
            return
        if status.state is LabState.MODE:
            self.notify(status.text, title=_(status.scenario.title), markup=False)
            return
        if self._start():
            self._run("reset", [status.scenario.id])

    def action_reset_all(self) -> None:
        if not self.asking_all:  # every token, the one a trainee works on included: asked first
            self.asking_all = True
            self._paint_detail()
            return
        self.asking_all = False
        self._paint_detail()
        if self._start():
            self._run("reset-all", [])

    def on_key(self, event: Any) -> None:
        if self.asking_all and event.key != "a":
            self.asking_all = False  # any other key is a no
            self._paint_detail()

    def action_plug(self) -> None:
        scenario_id = self.selected
        status = self.statuses.get(scenario_id or "")
        if status is None:
            return
        if status.scenario.stack is not Stack.SIMULATOR or status.state not in (LabState.PLUGGED, LabState.UNPLUGGED):
            self.notify(
                _("Only the lab's simulated tokens, once built, can be unplugged."),
                title=_(status.scenario.title),
                severity="warning",
            )
            return
        if self._start():
            self._run("plug", [status.scenario.id])

    # --- the worker ---

    def _statuses(self) -> dict[str, ScenarioStatus]:
        return {status.scenario.id: status for status in self.lab.status(probe=False)}

    def _load_statuses(self) -> None:
        in_thread(self, self._statuses, self._statuses_loaded, group="trainer")

    def _statuses_loaded(self, statuses: dict[str, ScenarioStatus]) -> None:
        self.statuses = statuses
        if self.is_attached:
            self._paint()

    def _run(self, what: str, ids: list[str]) -> None:
        in_thread(self, lambda: self._lab_work(what, ids), self._finished, failed=self._failed, group="trainer")

    def _lab_work(self, what: str, ids: list[str]) -> tuple[tuple[str, str], dict[str, ScenarioStatus]]:
        """In the worker: the lab's files and builds, then every scenario's state as it is now."""
        try:
            if what == "plug":
                plugged = self.lab.toggle_plug(ids[0])
                text = _("{id}: plugged back in.") if plugged else _("{id}: unplugged.")
                message = ("information", text.format(id=ids[0]))
            elif what == "reset-all":
                message = self._reset_all_audited()
            else:
                done = self.lab.reset(ids or None, isolated=True, release=self.release)
                message = ("information", _describe(done))
        except (LabError, OSError) as error:
            message = ("error", str(error))
        return message, self._statuses()

    def _reset_all_audited(self) -> tuple[str, str]:
        """In the worker (the audit file is fsync-ed: disk, never on the UI thread): on record before anything is
        reset, as every action on a token is; then the outcome under the same id."""
        attempt = audit.attempt("lab-reset", "lab", reason="all")
        try:
            audit.append(attempt)
        except audit.AuditError as error:
            return "error", _("Nothing was reset: the audit log could not be written ({error}).").format(
                error=error.reason
            )
        try:
            done = self.lab.reset(None, isolated=True, release=self.release)
            message, outcome = ("information", _describe(done)), "done"
        except (LabError, OSError) as error:
            message, outcome = ("error", str(error)), "failed"
        try:
            audit.append(audit.AuditEntry("lab-reset", "lab", outcome, reason="all", id=attempt.id))
        except audit.AuditError as error:
            failed = _("The audit log could not be written ({error}).").format(error=error.reason)
            return "error", f"{message[1]} {failed}"
        return message

    def _failed(self, error: str) -> None:
        """Something unexpected (tui.workers logged it): one line, and the menu takes requests again."""
        self.busy = False
        self._finished((("error", error), self.statuses))

    def _finished(self, report: tuple[tuple[str, str], dict[str, ScenarioStatus]]) -> None:
        message, statuses = report
        self.busy = False
        severity, text = message
        self.notify(visible(text), title=_("Lab"), severity=severity, markup=False)  # type: ignore[arg-type]
        self._statuses_loaded(statuses)
        console_of(self.app).rescan()  # the console shows the change now rather than at its next poll


def _describe(done: list[Done]) -> str:
    skipped = [step for step in done if step.how == "skipped"]
    if skipped:
        return " ".join(f"{step.scenario}: {step.note}" for step in skipped)
    if len(done) == 1:
        step = done[0]
        return _("{id}: reset ({how}, {ms:.0f} ms).").format(
            id=step.scenario, how=_(HOW_WORDS[step.how]), ms=step.seconds * 1000
        )
    total = sum(step.seconds for step in done)
    return _("{count} tokens reset in {seconds:.1f} s.").format(count=len(done), seconds=total)
