"""Plain-text rendering of a scan: the `scan` command's report and the body of a ticket report.

Holds no secret by construction: a snapshot never contains a PIN. Everything a token, a certificate or a library
said goes through `core.untrusted` on its way into a line: `visible()` here, Markdown escapes in the ticket.
With many objects on a token the findings come first and the certificates are summarised, worst first; the
ticket report and the console's details screen list them all.
"""

from __future__ import annotations

import platform
import socket
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path

import core
from core import audit
from core.certificates import CertificateInfo
from core.findings import Finding, Severity
from core.i18n import N_, _
from core.modules import ModuleReport
from core.pcsc import Reader, ReaderState
from core.scan import ScannedToken, ScanResult
from core.snapshot import KeyInfo, PinState, PinStatus, TokenSnapshot
from core.untrusted import markdown_fence, markdown_text, visible

MARKS = {Severity.ERROR: "✖", Severity.WARNING: "⚠", Severity.INFO: "ℹ"}
# A summary shows this many certificates (and keys), the worst first; "… and N more" says the rest is elsewhere.
SHOWN = 3


PIN_STATUS_TEXT = {
    PinStatus.OK: N_("ok"),
    PinStatus.COUNT_LOW: N_("wrong PIN entered recently"),
    PinStatus.FINAL_TRY: N_("last try left"),
    PinStatus.LOCKED: N_("locked"),
    PinStatus.LOCKED_FOR_NOW: N_("locked for now"),
    PinStatus.NOT_INITIALISED: N_("not set"),
    PinStatus.TO_BE_CHANGED: N_("must be changed"),
}


def days_text(days: int) -> str:
    """How long a certificate has left, or how long ago it ended."""
    return _("expired {days} days ago").format(days=-days) if days < 0 else _("{days} days left").format(days=days)


def pin_summary(pin: PinState) -> str:
    text = _(PIN_STATUS_TEXT[pin.status])
    if pin.tries_left is not None and pin.max_tries:
        text += " " + _("({left} of {max} tries left)").format(left=pin.tries_left, max=pin.max_tries)
    return text


_CHANGE_POLICY = {
    ("admin-change-user-pin", "user-change-user-pin"): N_("the admin and the user"),
    ("admin-change-user-pin",): N_("the admin only"),
    ("user-change-user-pin",): N_("the user only"),
    (): N_("nobody"),
}


def _extended_rows(snap: TokenSnapshot) -> list[tuple[str, str]]:
    """What the vendor extension adds: who may change the user PIN, and whether the PINs are the factory ones."""
    if snap.extended_flags is None:
        return []
    policy = tuple(name for name in ("admin-change-user-pin", "user-change-user-pin") if name in snap.extended_flags)
    factory = {True: _("the factory default"), False: _("changed from the factory default")}
    rows = [(_("User PIN changed by"), _(_CHANGE_POLICY[policy]))]
    for title, pin in ((_("User PIN is"), snap.user_pin), (_("Admin PIN is"), snap.so_pin)):
        if pin.status is not PinStatus.NOT_INITIALISED:  # a PIN not set is neither
            rows.append((title, factory[bool(pin.default)]))
    return rows


def certificates_worst_first(certificates: Iterable[CertificateInfo]) -> list[CertificateInfo]:
    """Expired first (longest ago first), then unreadable, then by how soon they end."""

    def rank(cert: CertificateInfo) -> tuple[int, int]:
        if cert.error or cert.days_left is None:
            return (1, 0)
        return (0 if cert.days_left < 0 else 2, cert.days_left)

    return sorted(certificates, key=rank)


def more_text(hidden: int, total: int) -> str:
    return _("… and {more} more ({total} in all)").format(more=hidden, total=total)


def _table(rows: Iterable[tuple[str, str]]) -> list[str]:
    rows = list(rows)
    width = max(len(name) for name, _value in rows)
    return [f"  {name.ljust(width)}  {value}" for name, value in rows]


def finding_lines(findings: Iterable[Finding], indent: str = "  ") -> list[str]:
    lines = []
    for finding in findings:
        action = f"  → {finding.action}" if finding.action else ""
        lines.append(f"{indent}{MARKS[finding.severity]} {visible(finding.title)} [{finding.code}]{action}")
    return lines


def certificate_line(cert: CertificateInfo) -> str:
    if cert.error:
        return _("unreadable: {error}").format(error=visible(str(cert.problem)))
    assert cert.not_after is not None
    return _("{name}, valid until {date} ({when})").format(
        name=visible(cert.name), date=f"{cert.not_after:%Y-%m-%d}", when=days_text(cert.days_left or 0)
    )


def healthy_text(token: ScannedToken) -> str:
    """The one word for a token with nothing to fix, everywhere (console, scan, report); a token without a
    profile yet is in its normal state before the customer's first registration, and is said to be."""
    if any(finding.code == "profile-empty" for finding in token.findings):
        return _("Healthy: nothing to fix; ready for the customer's first registration.")
    return _("Healthy: nothing to fix.")


def explained(text: str, indent: int, width: int | None) -> list[str]:
    """A finding's explanation under it, indented; wrapped to `width` (the terminal's) with the indent kept."""
    pad = " " * indent
    if not width or width <= indent + 20:
        return [pad + visible(text)]
    return textwrap.wrap(visible(text), width, initial_indent=pad, subsequent_indent=pad, break_on_hyphens=False)


def token_lines(token: ScannedToken, *, explain: bool = False, width: int | None = None) -> list[str]:
    """The token, its findings first (with 300 objects on it the error must still be on the first screen),
    then its fields; more than SHOWN certificates or keys are summarised."""
    snap = token.snapshot
    serial = " — " + _("serial {serial}").format(serial=visible(snap.serial)) if snap.serial else ""
    lines = [f"{visible(snap.device_name)} «{visible(snap.display_label)}»{serial}"]
    if token.findings:
        for finding in token.findings:
            lines += finding_lines([finding])
            if explain:
                lines += explained(finding.explanation, 6, width)
    else:
        lines.append("  ✔ " + healthy_text(token))
    rows = [
        (_("Slot"), f"{snap.slot_id}: {visible(snap.slot_description)}"),
        (_("Model"), visible(f"{snap.manufacturer} {snap.model}".strip())),
        (
            _("Versions"),
            _("hardware {hw}, firmware {fw}").format(
                hw=visible(snap.hardware_version), fw=visible(snap.firmware_version)
            ),
        ),
        (_("Initialised"), _("yes") if snap.initialised else _("no")),
        (_("User PIN"), pin_summary(snap.user_pin)),
        (_("Admin PIN"), pin_summary(snap.so_pin)),
    ]
    certificates = certificates_worst_first(snap.certificates)
    rows += [(_("Certificate"), certificate_line(cert)) for cert in certificates[:SHOWN]]
    if len(certificates) > SHOWN:
        rows.append(("", more_text(len(certificates) - SHOWN, len(certificates))))
    keys = [
        visible(f"{key.key_type.upper()} {key.bits or ''} id {key.cka_id}".replace("  ", " "))
        for key in snap.keys
        if key.key_class == "public"
    ]
    shown_keys = ", ".join(keys[:SHOWN]) + (", " + more_text(len(keys) - SHOWN, len(keys)) if len(keys) > SHOWN else "")
    rows.append((_("Keys"), shown_keys or "—"))
    return [*lines, *_table(rows)]


def _memory(free: int | None, total: int | None) -> str:
    if free is None and total is None:
        return _("unknown")
    return _("{free} free of {total} bytes").format(
        free="?" if free is None else free, total="?" if total is None else total
    )


def snapshot_rows(snap: TokenSnapshot) -> list[tuple[str, str]]:
    """Every field of a snapshot, in the helpdesk's words."""
    yes_no = {True: _("yes"), False: _("no")}
    return [
        (_("Label"), f"«{visible(snap.display_label)}»"),
        (_("Serial"), visible(snap.serial) or "—"),
        (_("Manufacturer"), visible(snap.manufacturer) or "—"),
        (_("Model"), visible(snap.model) or "—"),
        (_("Hardware version"), visible(snap.hardware_version) or "—"),
        (_("Firmware version"), visible(snap.firmware_version) or "—"),
        (_("Initialised"), yes_no[snap.initialised]),
        (
            _("User PIN"),
            pin_summary(snap.user_pin) + (" · " + _("must be changed") if snap.user_pin.to_be_changed else ""),
        ),
        (
            _("Admin PIN"),
            pin_summary(snap.so_pin) + (" · " + _("must be changed") if snap.so_pin.to_be_changed else ""),
        ),
        (
            _("PIN length"),
            _("{min} to {max} characters").format(
                min="?" if snap.min_pin_length is None else snap.min_pin_length,
                max="?" if snap.max_pin_length is None else snap.max_pin_length,
            ),
        ),
        (_("Public memory"), _memory(snap.free_public_memory, snap.total_public_memory)),
        (_("Token flags"), ", ".join(snap.flags) or "—"),
        *_extended_rows(snap),
        (_("Slot"), visible(f"{snap.slot_id}: {snap.slot_description}".strip())),
        (_("Slot maker"), visible(snap.slot_manufacturer) or "—"),
        (_("Slot flags"), ", ".join(snap.slot_flags) or "—"),
        (_("Token present"), yes_no[snap.token_present]),
        (_("Module"), visible(snap.module_path)),
        (_("Read at"), f"{snap.taken_at:%Y-%m-%d %H:%M:%S %Z}"),
        (_("Read error"), visible(snap.read_error or "") or "—"),
    ]


def certificate_rows(cert: CertificateInfo) -> list[tuple[str, str]]:
    if cert.error:
        return [(_("Object"), visible(f"id {cert.cka_id} «{cert.label}»")), (_("Error"), visible(str(cert.problem)))]
    assert cert.not_before is not None and cert.not_after is not None
    return [
        (_("Subject"), visible(cert.subject)),
        (_("Issuer"), visible(cert.issuer)),
        (_("Serial"), visible(cert.serial)),
        (
            _("Valid"),
            _("{start} to {end} ({when})").format(
                start=f"{cert.not_before:%Y-%m-%d %H:%M}",
                end=f"{cert.not_after:%Y-%m-%d %H:%M}",
                when=days_text(cert.days_left or 0),
            ),
        ),
        (_("Key usage"), visible(", ".join(cert.key_usage)) or "—"),
        (_("Extended usage"), visible(", ".join(cert.extended_key_usage)) or "—"),
        (_("SHA-256"), visible(cert.fingerprint_sha256)),
        (_("Object"), _("id {id}, label «{label}»").format(id=visible(cert.cka_id) or "—", label=visible(cert.label))),
        (_("Key on token"), _("yes") if cert.has_key else _("no: registration unfinished")),
    ]


def key_line(key: KeyInfo) -> str:
    size = f" {key.bits} bits" if key.bits else ""
    cert = _("with certificate") if key.has_certificate else _("no certificate")
    return (
        visible(f"{key.key_class} {key.key_type.upper()}{size} · id {key.cka_id or '—'} «{key.label}»") + f" · {cert}"
    )


def _module_trouble(report: ModuleReport) -> str:
    """Why a module is not loaded: skipped on purpose (and why), or its problem."""
    if report.skipped:
        return _("skipped: {why}").format(why=report.skipped)
    return str(report.problem or "")


def render_text(result: ScanResult, *, explain: bool = False, width: int | None = None) -> str:
    """The scan as text; with `explain`, each finding's explanation, wrapped to `width` columns when given."""
    lines = []
    for report in result.modules:
        state = _("loaded") if report.loaded else _("skipped") if report.skipped else _("not loaded")
        about = (
            f"{report.description} {report.library_version}".strip()
            if report.loaded
            else str(report.skipped or report.problem or "")
        )
        driver = " [" + _("driver") + "]" if report.driver else ""
        lines.append(
            f"{_('Module')}: {visible(report.path)} ({report.source}, {state}){driver} {visible(about)}".rstrip()
        )
    if result.findings:
        lines.append("")
        for finding in result.findings:
            lines += finding_lines([finding], indent="")
            if explain:
                lines += explained(finding.explanation, 4, width)
    readers = result.reader_list
    if readers:
        lines += ["", *map(reader_line, readers)]
    for token in result.tokens:
        lines += ["", *token_lines(token, explain=explain, width=width)]
    if not result.tokens:
        lines += ["", _("No token found.")]
    return "\n".join(lines) + "\n"


def reader_state_text(reader: Reader, escape: Callable[[str], str] = visible) -> str:
    """What is in the reader; `escape` makes the token's label safe where it goes (a terminal, Markdown)."""
    if reader.state is ReaderState.TOKEN:
        return _("token «{label}»").format(label=escape(reader.token_label))
    if reader.state is ReaderState.NOT_RECOGNISED:
        return _("something the library cannot read")
    return _("empty")


def reader_line(reader: Reader, escape: Callable[[str], str] = visible) -> str:
    """One reader and what is in it, the same words on `scan` and in the ticket."""
    where = f"{escape(reader.name)} ({escape(Path(reader.module_path).name)})"
    return f"{_('Reader')}: {where}: {reader_state_text(reader, escape)}"


def ticket_report(result: ScanResult, token: ScannedToken | None = None) -> str:
    """Markdown for a helpdesk ticket: the workstation, the token(s), every finding explained, every object.

    Token and library texts are escaped (`markdown_text`) or kept in code blocks whose fence they cannot close."""
    tokens = [token] if token else list(result.tokens)
    lines = [
        "# " + _("KAZTOKEN helpdesk report"),
        "",
        # Message ids outside the f-strings: the extractor does not look inside one (Python 3.11).
        "- " + _("Console") + f": kaztoken-helpdesk {core.__version__}",
        "- " + _("Time") + f": {result.taken_at:%Y-%m-%d %H:%M:%S %Z}",
        "- "
        + _("Workstation")
        + f": {markdown_text(socket.gethostname())} ({markdown_text(platform.platform())}), "
        + _("operator")
        + f" {markdown_text(audit.operator())}",  # the OS account, never LOGNAME, as in the audit
        "",
        "## " + _("Modules"),
        "",
    ]
    for report in result.modules:
        about = f"{report.description} {report.library_version}" if report.loaded else _module_trouble(report)
        lines.append(f"- {markdown_text(report.path)} ({report.source}): {markdown_text(about)}")
    readers = result.reader_list
    if readers:
        lines += ["", "## " + _("Readers"), "", *(f"- {reader_line(reader, markdown_text)}" for reader in readers)]
    if result.findings:
        lines += ["", "## " + _("Workstation findings"), "", *map(_finding_item, result.findings)]
    for item in tokens:
        snap = item.snapshot
        lines += ["", f"## «{markdown_text(snap.display_label)}» {markdown_text(snap.serial)}", ""]
        lines += ["### " + _("Findings"), ""]
        lines += [_finding_item(f) for f in item.findings] or ["- " + healthy_text(item)]
        # Every field, from the same rows as the console's details screen.
        lines += ["", "### " + _("Token"), "", *_code_block(_table(snapshot_rows(snap)))]
        for number, cert in enumerate(certificates_worst_first(snap.certificates), 1):
            title = "### " + _("Certificate {n}").format(n=number)
            lines += ["", title, "", *_code_block(_table(certificate_rows(cert)))]
        lines += ["", "### " + _("Objects (keys)"), ""]
        lines += [f"- {markdown_text(key_line(key))}" for key in snap.keys] or ["- " + _("none")]
    return "\n".join(lines) + "\n"


def _code_block(lines: list[str]) -> list[str]:
    """Lines of `visible` text as a code block: nothing in it is Markdown, and no line of it closes the fence."""
    fence = markdown_fence(lines)
    return [fence, *lines, fence]


def _finding_item(finding: Finding) -> str:
    fix = ", " + _("fix") + f": {finding.action}" if finding.action else ""
    return f"- **{markdown_text(finding.title)}** (`{finding.code}`, {finding.severity}{fix}): " + markdown_text(
        finding.explanation
    )
