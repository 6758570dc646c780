"""Pure formatting for the console: scan results to Textual Content. No PKCS#11, no widgets.

Token data (labels, subjects, paths) goes in as plain text through `core.untrusted.visible`, never as markup,
so a label like «[b]» or «[@click=app.quit]» shows as typed and an escape sequence shows as `\\x1b`; titles
and table cells are Content too, since Textual parses a plain string given to them as markup. Severity is
carried by a mark (✖ ⚠ ℹ ✔) as well as colour, so NO_COLOR and 16-colour terminals lose nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.text import Text as RichText
from textual.content import Content

from core.audit import AuditEntry, Item, Malformed
from core.audit_words import outcome_words, pin_name, pin_words
from core.certificates import CertificateInfo
from core.findings import CATALOGUE, OPTIONAL_PLACEHOLDERS, Action, Finding, FindingKind, Severity
from core.i18n import N_, _
from core.modules import ModuleReport
from core.policy import Check
from core.report import (
    MARKS,
    PIN_STATUS_TEXT,
    SHOWN,
    certificate_rows,
    certificates_worst_first,
    days_text,
    healthy_text,
    key_line,
    more_text,
    pin_summary,
    reader_state_text,
    snapshot_rows,
)
from core.scan import ScannedToken, ScanResult
from core.snapshot import PinState, PinStatus, TokenSnapshot
from core.untrusted import visible
from tui.actions import BY_ID, fix_text

if TYPE_CHECKING:  # core.actions brings python-pkcs11 and the keyring: the dashboard needs neither to start
    from core.actions import ActionResult

OK_MARK = "✔"
SEVERITY_STYLE = {
    Severity.ERROR: "bold $text-error",
    Severity.WARNING: "bold $text-warning",
    Severity.INFO: "$text-primary",
}
OK_STYLE = "bold $text-success"
# Under NO_COLOR Textual greys colours by their brightness, which would make errors the dimmest line on the
# screen: there the marks carry the severity and every title is simply bold (errors also underlined).
MONOCHROME_STYLE = {Severity.ERROR: "bold underline", Severity.WARNING: "bold", Severity.INFO: ""}


def severity_style(severity: Severity, monochrome: bool = False) -> str:
    return (MONOCHROME_STYLE if monochrome else SEVERITY_STYLE)[severity]


MUTED = "$text-muted"
KEY_STYLE = "bold reverse"


def severity_class(token: ScannedToken) -> str:
    """The CSS class of a token panel: its worst finding, or -ok."""
    worst = token.worst
    return "-ok" if worst in (None, Severity.INFO) else f"-{worst}"


def join_lines(lines: Iterable[Content]) -> Content:
    return Content("\n").join(list(lines))


def modules_line(modules: Sequence[ModuleReport]) -> str:
    """The header's "module: ..." words: what drives the tokens now."""
    loaded = [m for m in modules if m.loaded]
    if loaded:
        names = [visible(f"{m.description} {m.library_version}".strip() or m.path) for m in loaded]
        return _("module: {names}").format(names=", ".join(names))
    unloaded = [m for m in modules if not m.skipped]
    if unloaded:
        return _("module: {names} (not loaded)").format(names=", ".join(visible(m.path) for m in unloaded))
    return _("module: none found")


def fix_content(action: Action | None) -> Content:
    """ "  → u  Unblock with the admin PIN": the key that fixes it, or nothing when the console has none."""
    remedy = fix_text(action)
    if remedy is None:
        return Content("")
    key, words = remedy
    shown_key: list[str | tuple[str, str]] = [(f" {key} ", KEY_STYLE), " "] if key else []
    return Content.assemble("  → ", *shown_key, words)


def finding_line(finding: Finding, *, monochrome: bool = False) -> Content:
    """ "✖ Title   → u Unblock the user PIN": the finding and, on the same line, the key that fixes it."""
    title = (f"{MARKS[finding.severity]} {visible(finding.title)}", severity_style(finding.severity, monochrome))
    return Content.assemble(title, fix_content(finding.action))


def certificate_summary(cert: CertificateInfo) -> Content:
    if cert.error:
        return Content.assemble((_("Certificate unreadable"), "$text-warning"), f": {visible(str(cert.problem))}")
    assert cert.not_after is not None and cert.days_left is not None
    return Content.assemble(
        (_("Certificate") + ": ", MUTED),
        f"CN={visible(cert.common_name or cert.name)}, ",
        _("until {date}").format(date=f"{cert.not_after:%Y-%m-%d}"),
        f" ({days_text(cert.days_left)})",
    )


def _pin_short(pin: PinState) -> str:
    """ "ok, 10/10 tries": the panel's short form; the details screen spells it out."""
    text = _(PIN_STATUS_TEXT[pin.status])
    if pin.tries_left is not None and pin.max_tries:
        text += ", " + _("{left} of {max} tries left").format(left=pin.tries_left, max=pin.max_tries)
    return text


def pin_line(snap: TokenSnapshot) -> Content:
    return Content.assemble(
        (_("PIN") + ": ", MUTED),
        _("user {state}").format(state=_pin_short(snap.user_pin)),
        " · ",
        _("admin {state}").format(state=_pin_short(snap.so_pin)),
    )


def panel_title(snap: TokenSnapshot) -> Content:
    """ "KAZTOKEN «IVANOV»", as Content: a border title given a str would be parsed as markup."""
    return Content(f"{visible(snap.device_name)} «{visible(snap.display_label)}»")


def serial_text(snap: TokenSnapshot) -> str:
    if snap.serial:
        return _("serial {serial}").format(serial=visible(snap.serial))
    return _("slot {slot}").format(slot=snap.slot_id)


def panel_subtitle(snap: TokenSnapshot) -> Content:
    """Model and serial, on the panel's bottom border: who the token is, without spending a line on it."""
    model = visible(f"{snap.manufacturer} {snap.model}".strip())
    return Content(f"{model} · {serial_text(snap)}" if model else serial_text(snap))


def token_body(token: ScannedToken, *, monochrome: bool = False) -> Content:
    """The body of a dashboard panel: the findings worst first with their fix, then the PINs and the
    certificates, worst first and at most SHOWN of them (a token may hold hundreds; the details list them all)."""
    snap = token.snapshot
    lines = [finding_line(finding, monochrome=monochrome) for finding in token.findings]
    if token.healthy:
        lines.insert(0, Content.styled(f"{OK_MARK} " + healthy_text(token), OK_STYLE))
    first = pin_line(snap)
    if not snap.certificates and snap.initialised and not snap.read_error:
        first = Content.assemble(first, "  ", (_("Certificate") + ": ", MUTED), "—")
    lines.append(first)
    certificates = certificates_worst_first(snap.certificates)
    lines += [certificate_summary(cert) for cert in certificates[:SHOWN]]
    if len(certificates) > SHOWN:
        more = more_text(len(certificates) - SHOWN, len(certificates))
        lines.append(Content.styled(f"{more} · " + _("Enter: details"), MUTED))
    return join_lines(lines)


def workstation_body(result: ScanResult, *, monochrome: bool = False) -> Content:
    """What is wrong before any token: driver missing or broken, nothing plugged in, settings unreadable."""
    lines: list[Content] = []
    for finding in result.findings:
        lines.append(finding_line(finding, monochrome=monochrome))
        lines.append(Content(f"  {visible(finding.explanation)}"))
        if finding.code == "no-token":
            # The advice itself is the finding's explanation; the console adds only what is true of it.
            lines.append(
                Content.assemble("  → ", (_("Plug the KAZTOKEN in."), "bold"), " ", _("The list updates by itself."))
            )
    for report in result.modules:
        if report.loaded and not report.error:
            state = Content.styled(f"{OK_MARK} " + _("loaded"), "$text-success")
            about = visible(f"{report.description} {report.library_version}".strip())
        elif report.skipped:  # left alone on purpose (p11-kit's registry): not a fault
            state = Content.styled("– " + _("skipped"), MUTED)
            about = visible(str(report.skipped))
        else:
            state = Content.styled("✖ " + _("not loaded"), "$text-error")
            about = visible(report.problem or "")
        # "✖ not loaded: file not found", one phrase: the state, then why.
        lines.append(
            Content.assemble(
                (_("Module") + ": ", MUTED), visible(report.path), " ", state, f": {about}" if about else ""
            )
        )
    if not result.modules:
        lines.append(Content.assemble((_("Module") + ": ", MUTED), _("none found")))
    for reader in result.reader_list:
        lines.append(
            Content.assemble((_("Reader") + ": ", MUTED), visible(reader.name), " ", reader_state_text(reader))
        )
    return join_lines(lines)


# --- the details screen ------------------------------------------------------------------------------------


def _rows(rows: Sequence[tuple[str, str]]) -> list[Content]:
    width = max(len(name) for name, _value in rows)
    return [Content.assemble((f"{name.ljust(width)}  ", MUTED), value) for name, value in rows]


def _heading(text: str) -> Content:
    return Content.styled(text, "bold underline")


def details_body(token: ScannedToken, *, gone: bool = False, monochrome: bool = False) -> Content:
    snap = token.snapshot
    lines: list[Content] = []
    if gone:
        lines += [
            Content.styled(
                "⚠ " + _("This token was unplugged: the data below is its last reading."), "bold $text-warning"
            ),
            Content(""),
        ]
    lines += [_heading(_("Findings"))]
    if token.healthy:
        lines.append(Content.styled(f"{OK_MARK} " + healthy_text(token), OK_STYLE))
    for finding in token.findings:
        lines += [finding_line(finding, monochrome=monochrome), Content(f"  {visible(finding.explanation)}")]
    lines += [Content(""), _heading(_("Token")), *_rows(snapshot_rows(snap))]
    for number, cert in enumerate(certificates_worst_first(snap.certificates), 1):
        lines += [Content(""), _heading(_("Certificate {n}").format(n=number)), *_rows(certificate_rows(cert))]
    if not snap.certificates:
        lines += [Content(""), _heading(_("Certificates")), Content(_("none"))]
    lines += [Content(""), _heading(_("Objects (keys)"))]
    lines += [Content(f"• {key_line(key)}") for key in snap.keys] or [Content(_("none"))]
    return join_lines(lines)


# --- the action screens ------------------------------------------------------------------------------------

PIN_STATUS_STYLE = {
    PinStatus.COUNT_LOW: "$text-warning",
    PinStatus.FINAL_TRY: "bold $text-error",
    PinStatus.LOCKED: "bold $text-error",
    PinStatus.LOCKED_FOR_NOW: "bold $text-error",
    PinStatus.NOT_INITIALISED: "$text-warning",
    PinStatus.TO_BE_CHANGED: "$text-warning",
}


def token_heading(snap: TokenSnapshot) -> Content:
    """ "KAZTOKEN «IVANOV» · serial 0A1B2C40": the token an action screen acts on."""
    return Content.assemble(panel_title(snap).stylize("bold"), " · ", serial_text(snap))


def pin_state_line(title: str, pin: PinState | None, *, now: bool = False) -> Content:
    """ "Admin PIN: ok (3 of 3 tries left)"; `now` says it is the state after an attempt."""
    label = _("{pin} now").format(pin=title) if now else title
    state = pin_summary(pin) if pin is not None else _("unknown")
    style = PIN_STATUS_STYLE.get(pin.status, "") if pin is not None else "$text-warning"
    return Content.assemble((label + ": ", MUTED), (state, style))


def check_item(check: Check, *, monochrome: bool = False, pending: bool = False) -> Content:
    if pending:  # nothing typed yet: the rules are shown, not yet judged
        return Content.styled(f"· {check.text}", MUTED)
    if check.ok:
        return Content.styled(f"{OK_MARK} {check.text}", "" if monochrome else "$text-success")
    return Content.styled(f"✖ {check.text}", "bold" if monochrome else "bold $text-error")


def rules_lines(
    title: str, checks: Sequence[Check], width: int, *, monochrome: bool = False, pending: bool = False
) -> list[Content]:
    """The rules of a field, ✔ or ✖ each, flowed over as few lines as `width` allows (never split mid-rule,
    whatever the language makes of their length)."""
    items = [
        Content.styled(title, MUTED),
        *(check_item(check, monochrome=monochrome, pending=pending) for check in checks),
    ]
    lines: list[Content] = []
    line = Content("")
    for item in items:
        if line.cell_length and line.cell_length + 2 + item.cell_length > width:
            lines.append(line)
            line = Content("")
        line = Content.assemble(line, "  ", item) if line.cell_length else item
    lines.append(line)
    return lines


def hint(text: str, severity: Severity | None = None, *, monochrome: bool = False) -> Content:
    """A field's one-line state beside it: ✔ in green, or a severity's mark and colour."""
    if severity is None:
        return Content.styled(f"{OK_MARK} {text}", "" if monochrome else "$text-success")
    return Content.styled(f"{MARKS[severity]} {text}", severity_style(severity, monochrome))


OUTCOME_SEVERITY = {  # by core.actions.Outcome's values (a StrEnum): the module is not imported to start
    "policy": Severity.WARNING,
    "refused": Severity.WARNING,
    "busy": Severity.WARNING,
}


def outcome_lines(result: ActionResult, *, monochrome: bool = False) -> list[Content]:
    """What an attempt came to: the core's message, its warnings, the rules a new PIN broke."""
    # The message may quote the token (its name, who holds its lock): shown visibly, like every token text.
    if result.ok:
        lines = [Content.styled(f"{OK_MARK} {visible(result.message)}", "bold" if monochrome else OK_STYLE)]
    else:
        severity = OUTCOME_SEVERITY.get(result.outcome, Severity.ERROR)
        lines = [Content.styled(f"{MARKS[severity]} {visible(result.message)}", severity_style(severity, monochrome))]
    warnings = [visible(warning) for warning in result.warnings]
    if not result.recorded:  # its first warning: said as an error, before all else
        loud = Content.styled(f"{MARKS[Severity.ERROR]} {warnings.pop(0)}", severity_style(Severity.ERROR, monochrome))
        lines.insert(0, loud)
    lines += [Content.styled(f"⚠ {warning}", severity_style(Severity.WARNING, monochrome)) for warning in warnings]
    lines += [Content(f"  ✖ {check.text}") for check in result.problems]
    return lines


# --- the audit screen --------------------------------------------------------------------------------------

OUTCOME_MARK = {"done": OK_MARK, "policy": "⚠", "refused": "⚠", "busy": "⚠"}


def audit_time(entry: AuditEntry) -> str:
    """The entry's time in this computer's zone (the file keeps UTC)."""
    try:
        return f"{datetime.fromisoformat(entry.time).astimezone():%Y-%m-%d %H:%M}"
    except (ValueError, TypeError, OverflowError):  # OverflowError: year 9999 in a zone east of UTC
        return visible(entry.time)


def audit_action(entry: AuditEntry, *, short: bool = False) -> str:
    """The action's name: the Footer's short one for the table's column (80 columns), else the full one."""
    action = BY_ID.get(str(entry.action).replace("-", "_"))
    if action is None:
        return visible(entry.action)
    return _(action.footer if short else action.name)


def audit_findings(entry: AuditEntry) -> str:
    before, after = (
        visible(", ".join(map(str, codes))) or "—" for codes in (entry.findings_before, entry.findings_after)
    )
    return f"{before} → {after}"


def malformed_text(item: Malformed) -> str:
    return _("line {line} of the file is malformed: {why}").format(line=item.line, why=item.why)


def audit_row(entry: Item) -> tuple[RichText, ...]:
    """One line of the audit table: when, how it went, what, which token, who, findings before → after (what
    matters first: at 80 columns the last columns are off screen). Rich Text cells: the table would parse a str
    as markup, and measures Content ones as nothing (the columns would shrink to their
    headings), and every field of the file is as hostile as the token.

    A malformed line shows as such, with nothing made up for the fields it lacks."""
    if isinstance(entry, Malformed):
        cells: tuple[str, ...] = ("", f"✖ {_('malformed')}", "", "", "", malformed_text(entry))
        return tuple(RichText(cell) for cell in cells)
    token = f"{entry.label} · {entry.serial}" if entry.label else entry.serial
    if entry.outcome is None:  # the attempt was recorded, its end never was
        outcome = f"⚠ {outcome_words(None)}"
    else:
        outcome = f"{OUTCOME_MARK.get(entry.outcome, '✖')} {outcome_words(entry.outcome, short=True)}"
    cells = (audit_time(entry), outcome, audit_action(entry, short=True), token, entry.operator, audit_findings(entry))
    return tuple(RichText(visible(cell)) for cell in cells)


def audit_detail(entry: Item) -> Content:
    """Everything one entry holds, for the line under the table (there is no PIN in it to show)."""
    if isinstance(entry, Malformed):
        return Content(malformed_text(entry))
    pin = pin_name(entry.role)
    label = f"«{entry.label}»" if entry.label else ""  # a token without a name: no empty «»
    rows = [
        (_("When"), f"{audit_time(entry)} · " + visible(f"{entry.operator}@{entry.host}")),
        (_("Token"), visible(" · ".join(part for part in (label, entry.serial, entry.module) if part))),
        (
            _("Outcome"),
            f"{audit_action(entry)}: {outcome_words(entry.outcome, detail=True)}"
            + (f" ({visible(entry.reason)})" if entry.reason else ""),
        ),
        (pin, f"{pin_words(entry.pin_before, entry.tries_before)} → {pin_words(entry.pin_after, entry.tries_after)}"),
        (_("Findings"), audit_findings(entry)),
    ]
    return join_lines(_rows(rows))


# --- the help screen ---------------------------------------------------------------------------------------


class _Placeholders(dict[str, Any]):
    """Fills a catalogue text's placeholders with generic words, for the help screen: never an empty «…»."""

    def __init__(self, code: str = "") -> None:
        super().__init__(
            OPTIONAL_PLACEHOLDERS,
            detail=_(HELP_DETAILS[code]) if code in HELP_DETAILS else "",
            remedy="",
            days="N",
            count="N",
            tries_left="N",
            id="ID",
            # What the token or the library puts there, named in angle brackets as a form's blank would be.
            name="<" + _("name") + ">",
            path="<" + _("library") + ">",
            error="<" + _("error") + ">",
            call="<" + _("call") + ">",
            device="<" + _("device") + ">",
            not_after="<" + _("date") + ">",
            not_before="<" + _("date") + ">",
            extensions="<" + _("extension") + ">",
        )

    def __missing__(self, key: str) -> str:
        return "…"


# What a finding's {detail} says on a token, in general words for the help screen.
HELP_DETAILS = {
    "registration-unfinished": N_(
        "A key without its certificate (an interrupted registration: re-enrolment finishes it), or a certificate "
        "without its key (it cannot sign, and cannot be finished: re-enrol for a new pair)."
    ),
    "duplicate-id": N_("Several keys or certificates on the token share one ID."),
}


def kind_texts(kind: FindingKind, code: str = "") -> tuple[str, str]:
    return (
        _(kind.title).format_map(_Placeholders(code)),
        _(kind.explanation).format_map(_Placeholders(code)).strip(),
    )


def code_spans(text: str) -> Content:
    """A help text's `code` marks (Markdown's) drawn as a key is, without the backticks."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: shown as it is
        return Content(text)
    return Content.assemble(*((part, KEY_STYLE) if index % 2 else part for index, part in enumerate(parts)))


ERROR_0200040_CHECKLIST: tuple[str, ...] = (
    N_("The user ID exactly as given by the bank: a typo is the usual cause (`ag` for `aq`)."),
    N_("The OTP card PIN: 11 characters, all upper case (Caps Lock!)."),
    N_("Look-alike characters: capital `I` and small `l`, letter `O` and digit `0`."),
    N_("The key files (GOST.pfx, Key.pfx) must be this customer's own, not another customer's."),
    N_("The password: «Пароль совпадает с ПИНом» means the token PIN; a wrong PIN spends a try."),
)


def help_body(*, monochrome: bool = False) -> Content:
    from tui.actions import ACTIONS, key_label

    lines: list[Content] = [
        _heading(_("«Ошибка: 0200040. Неверный пароль или ключевой контейнер»")),
        Content(_("Wrong password or key container, during registration. Check with the customer, in order:")),
        *[code_spans(f"  {n}. {_(item)}") for n, item in enumerate(ERROR_0200040_CHECKLIST, 1)],
        Content(_("The token itself is rarely at fault: look at its PIN state on the dashboard before any retry.")),
        Content(""),
        _heading(_("Findings, worst first, and what to say")),
    ]
    for severity in Severity:
        for code, kind in CATALOGUE.items():
            if kind.severity is not severity:
                continue
            title, explanation = kind_texts(kind, code)
            lines += [
                Content.assemble(
                    (f"{MARKS[severity]} {title}", severity_style(severity, monochrome)),
                    (f"  [{code}]", MUTED),
                    fix_content(kind.action),
                ),
                code_spans(f"  {explanation}"),
            ]
    lines += [Content(""), _heading(_("Keys"))]
    for action in ACTIONS:
        lines.append(Content.assemble((f" {key_label(action)} ", KEY_STYLE), f" {_(action.name)}"))
        lines.append(Content(f"    {_(action.help)}"))
    lines += [
        Content.assemble((" ↑↓ ", KEY_STYLE), " ", _("select a token (Tab too; ←→ in the two-column layout)")),
        Content.assemble((" ⏎ ", KEY_STYLE), " ", _("the selected token's details; Escape goes back")),
        Content.assemble((" ^p ", KEY_STYLE), " ", _("every action by name (command palette)")),
    ]
    return join_lines(lines)


def break_path(path: str, width: int) -> str:
    """A path on lines of at most `width` columns, broken after a "/"; a name longer than a line after a "-" (else
    where it must be): where a person expects a path to break, not inside a word."""
    width = max(width, 8)
    lines: list[str] = []
    line = ""

    def add(piece: str) -> None:
        nonlocal line
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
        while len(line) > width:
            lines.append(line[:width])
            line = line[width:]

    for name in re.split(r"(?<=/)", path):
        if len(name) <= width:
            add(name)
        else:  # on lines of its own, from the start of one
            if line:
                lines.append(line)
                line = ""
            for piece in re.split(r"(?<=-)", name):
                add(piece)
    if line:
        lines.append(line)
    return "\n".join(lines)
