"""Hostile token contents (issue 12): labels, object labels and certificate subjects holding terminal escapes
(ESC, OSC 52/0, CSI 2J), C1 controls, bidi overrides, Textual markup, HTML and newlines, written on real SoftHSM2
tokens with softhsm2-util, pkcs11-tool and python-pkcs11. Nothing of them may reach a terminal raw, act as
markup, break the report's Markdown or lead its file out of the reports directory; and a property test over
random label and certificate bytes finds no crash and no raw control character in any output."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import subprocess
import sys
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from textual.widgets import DataTable, Static

from core import audit, operator_lock
from core.report import render_text, ticket_report
from core.scan import ScanResult, scan
from core.untrusted import file_part, json_text, markdown_fence, markdown_text, visible
from tests.tokens import SO_PIN, SOFTHSM_MODULE, USER_PIN, SoftHSM
from tests.tui_helpers import FixedScanner, _snapshot, fixed_result, wait_for
from tests.tui_helpers import run as run_async
from tui import cli
from tui.app import HelpdeskApp
from tui.screens.audit import AuditScreen
from tui.screens.details import DetailsScreen
from tui.screens.pin_form import ActionScreen
from tui.ticket import report_path, reports_dir

REPO = Path(__file__).resolve().parent.parent

# What a token may say, each at most 32 bytes (a PKCS#11 label's size).
OSC_52 = "\x1b]52;c;cHduZWQ=\x07"  # writes "pwned" to the terminal's clipboard
OSC_0 = "\x1b]0;owned\x07"  # sets the window title
CSI_2J = "\x1b[2J\x1b[H"  # wipes the screen
HOSTILE_LABELS = (
    OSC_52 + "[/]",
    OSC_0 + "a[b]c\u202eXYZ",
    "[bold red]X[@click=app.quit]q[/]",
    CSI_2J + "\x9b31m\x7fNL\nL2",
    "<img src=x onerror=alert(1)>",
    "```\n# H1 \u2066iso\u2069",
)
HOSTILE_CN = "\x1b]52;c;cHduZWQ=\x07[@click=app.quit]q[/] <img src=x onerror=alert(1)>\n```\n# x\u202e"


def hidden(text: str) -> list[str]:
    """The characters that must never reach a terminal: controls (but the line breaks an output is made of),
    format characters (bidi, zero-width), separators, lone surrogates."""
    return sorted(
        {
            f"U+{ord(char):04X}"
            for char in text
            if char != "\n" and unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs")
        }
    )


# --- the sanitiser itself ----------------------------------------------------------------------------------


def test_visible_writes_out_every_control_format_and_bidi_character() -> None:
    assert visible("IVANOV") == "IVANOV"
    assert visible("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert visible("\x9b\x7f\x00\t\r\n") == "\\x9b\\x7f\\x00\\t\\r\\n"
    assert visible("\u202eabc\u2066\u200b\u2028\U000e0041") == "\\u202eabc\\u2066\\u200b\\u2028\\U000e0041"
    assert visible("\u3164") == "\\u3164"  # a Hangul filler: draws as blank, so a label would look empty
    assert visible("Иванов Иван «КАЗТОКЕН» 😀 é") == "Иванов Иван «КАЗТОКЕН» 😀 é"
    for text in (*HOSTILE_LABELS, HOSTILE_CN):
        once = visible(text)
        assert not hidden(once) and "\n" not in once and visible(once) == once


def test_markdown_text_cannot_format_link_fence_or_inject_html() -> None:
    html = markdown_text("<img src=x onerror=alert(1)>")
    assert "<" not in html and ">" not in html and html.startswith("&lt;img")
    assert markdown_text("```\n# H") == "\\`\\`\\`\\\\n\\# H"
    assert markdown_text("[a](javascript:x) *b* _c_ ![i](x)") == (
        "\\[a\\]\\(javascript\\:x\\) \\*b\\* \\_c\\_ \\!\\[i\\]\\(x\\)"
    )
    assert markdown_text("\x1b]0;t\x07") == "\\\\x1b\\]0;t\\\\x07"
    assert markdown_fence(["a ``` b", "````"]) == "`````"


def test_json_text_keeps_the_data_and_shows_nothing_raw() -> None:
    data = {"label": "".join(HOSTILE_LABELS), "cn": HOSTILE_CN + "\U000e0041\ud800"}
    document = json.dumps(data, ensure_ascii=False, indent=2)
    safe = json_text(document)
    assert not hidden(safe)
    assert json.loads(safe) == data


def test_file_part_is_never_a_path() -> None:
    assert file_part("/../../../../../") == "unnamed"
    assert file_part("0A1B2C40") == "0A1B2C40"
    assert file_part("..") == "unnamed" and file_part("a/../b") == "a____b"
    assert len(file_part("x" * 500)) == 64


def test_report_file_of_a_serial_that_climbs_stays_in_the_reports_directory() -> None:
    from dataclasses import replace

    from core.scan import ScannedToken

    for serial in ("/../../../../../", "..", "../x", "\x1b[2J", ""):
        token = ScannedToken(replace(_snapshot("0A1B2C3D", "X"), serial=serial), ())
        path = report_path(token)
        assert path.parent == reports_dir() and path.resolve().parent == reports_dir().resolve()
        assert re.fullmatch(r"kaztoken-[A-Za-z0-9_-]+-\d{8}-\d{6}\.md", path.name), path.name


# --- hostile tokens built with the real tools --------------------------------------------------------------


def hostile_certificate(common_name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "\x1b[2J<b>Org</b>[/]"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA \u202e\x1b]0;t\x07")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=400))
        .not_valid_after(now - timedelta(days=3))  # expired: a finding that quotes the CN
        .sign(key, hashes.SHA256())
    )


@pytest.fixture
def hostile(softhsm: SoftHSM) -> list[str]:
    """Tokens with hostile labels; the first also has a key pair with a hostile object label (pkcs11-tool) and a
    certificate with a hostile subject (cryptography), and the second an unreadable certificate object."""
    serials = [softhsm.init_token(label) for label in HOSTILE_LABELS]
    softhsm.tool(
        serials[0],
        "--login",
        "--pin",
        USER_PIN,
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "01",
        "--label",
        "\x1b[31mkey\u202e[/]",
    )
    softhsm.write_certificate(serials[0], hostile_certificate(HOSTILE_CN), "02")
    softhsm.write_raw_certificate(serials[1], b"\x30\x03\x02\x01\x1b", "03")
    return serials


def cli_output(*args: str) -> str:
    """The command's standard output and error, as bytes from a real process, decoded."""
    done = subprocess.run(
        [sys.executable, "-m", "tui.cli", *args, "--module", SOFTHSM_MODULE],
        capture_output=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert done.returncode in (0, 1), done.stderr
    return (done.stdout + done.stderr).decode("utf-8")


def test_scan_outputs_show_hostile_contents_visibly(hostile: list[str], tmp_path: Path) -> None:
    report = tmp_path / "ticket.md"
    text = cli_output("scan", "--report", str(report))
    explained = cli_output("scan", "--explain")
    for output in (text, explained):
        assert not hidden(output), hidden(output)
        assert "\\x1b]52;c;cHduZWQ=\\x07[/]" in output  # the OSC 52 label, shown, not sent
        assert "[bold red]X[@click=app.quit]q[/]" in output
        assert "\\x9b31m\\x7fNL\\nL2" in output and "\\u202eXYZ" in output
        assert "\\x1b]52;c;cHduZWQ=\\x07[@click=app.quit]q[/]" in output  # the certificate's CN, in a finding
    document = cli_output("scan", "--json")
    assert not hidden(document)
    labels = {token["label"] for token in json.loads(document)["tokens"]}
    assert set(HOSTILE_LABELS) <= labels  # --json keeps the exact data, escaped as JSON
    markdown = report.read_text(encoding="utf-8")
    assert not hidden(markdown)
    # Outside code blocks (where a renderer shows everything as typed) no tag survives.
    prose = "\n".join(re.split(r"^`{3,}$", markdown, flags=re.M)[::2])
    assert "<" not in prose and "&lt;img src=x onerror=alert\\(1\\)&gt;" in prose
    # No line of the data opens a fence or a heading: every fence and heading is the report's own.
    fences = [line for line in markdown.splitlines() if line.lstrip().startswith("```")]
    assert all(re.fullmatch(r"`{3,}", line) for line in fences) and len(fences) % 2 == 0
    headings = [line for line in markdown.splitlines() if line.startswith("#")]
    assert all(re.match(r"#+ ", line) for line in headings)
    assert not any(line.startswith("# H1") for line in markdown.splitlines())


def test_audit_table_and_lock_holder_show_hostile_fields_visibly(
    hostile: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(audit.AUDIT_ENV, str(tmp_path / "audit.jsonl"))
    audit.append(
        audit.AuditEntry(
            action="unblock\x1b[2J",
            outcome="done",
            serial=hostile[0],
            label=HOSTILE_LABELS[0],
            module=SOFTHSM_MODULE + "\u202e",
            reason="[bold]r\x1b]0;t\x07",
            findings_before=("[/]",),
            operator="op\x1b]52;c;eA==\x07",
            host="h\nost",
        )
    )
    assert cli.main(["audit"]) == 0
    out = capsys.readouterr().out
    assert not hidden(out) and "\\x1b]52;c;cHduZWQ=\\x07[/]" in out and "h\\nost" in out
    assert cli.main(["audit", "--json"]) == 0
    out = capsys.readouterr().out
    assert not hidden(out) and json.loads(out)["label"] == HOSTILE_LABELS[0]

    # Another process holds the token's lock, and its file says who in hostile words.
    serial = hostile[0]
    lock_file = operator_lock.lock_dir() / operator_lock.file_name(serial)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    holder = {"operator": "x\x1b]0;t\x07[/]", "host": "h\u202e", "pid": "1\n2", "action": "u", "since": "\x9b"}
    lock_file.write_text(json.dumps(holder))
    fd = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(operator_lock.TokenBusy) as busy:
            operator_lock.acquire(serial, "unblock")
        assert busy.value.holder is not None
        described = busy.value.holder.describe()
        assert not hidden(described) and "x\\x1b]0;t\\x07[/]" in described and "1\\n2" in described
        out = cli_output_with_stdin(["unblock", "--serial", serial, "--pin-stdin"], f"{SO_PIN}\nNewPin12\nNewPin12\n")
        assert "in use" in out or "Another operator" in out, out
        assert not hidden(out), hidden(out)
    finally:
        os.close(fd)


def cli_output_with_stdin(args: list[str], stdin: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tui.cli", *args, "--module", SOFTHSM_MODULE],
        input=stdin.encode(),
        capture_output=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    return (done.stdout + done.stderr).decode("utf-8")


# --- the console -------------------------------------------------------------------------------------------


def console_text(app: HelpdeskApp) -> str:
    """What the current screen shows: every Static's content and border texts, every table cell, as plain
    text (markup would have been applied by now), and the SVG of the whole screen."""
    parts = [app.export_screenshot()]
    for widget in app.screen.query(Static):
        for title in (widget._border_title, widget._border_subtitle):
            if title is not None:
                parts.append(title.plain)
        parts.append(str(widget.render()))
    for table in app.screen.query(DataTable):
        for row in range(table.row_count):
            parts += [str(cell) for cell in table.get_row_at(row)]
    return "\n".join(parts)


def assert_plain_titles(app: HelpdeskApp) -> None:
    """No token text became markup: no link, no click action, no style from a label in any border title."""
    for widget in app.screen.query(Static):
        for title in (widget._border_title, widget._border_subtitle):
            if title is not None:
                assert not title.spans, (title.plain, title.spans)


def test_console_shows_hostile_labels_literally_and_never_acts_on_them(hostile: list[str]) -> None:
    async def scenario() -> None:
        app = HelpdeskApp([SOFTHSM_MODULE], poll_seconds=0)
        async with app.run_test(size=(100, 60)) as pilot:
            await wait_for(pilot, lambda: len(app.dashboard.panels) == len(HOSTILE_LABELS))
            text = console_text(app)
            assert not hidden(text), hidden(text)
            titles = {panel._border_title.plain for panel in app.dashboard.panels}
            assert "KAZTOKEN «[bold red]X[@click=app.quit]q[/]»" in titles
            assert "KAZTOKEN «\\x1b]52;c;cHduZWQ=\\x07[/]»" in titles
            assert "KAZTOKEN «\\x1b]0;owned\\x07a[b]c\\u202eXYZ»" in titles
            assert_plain_titles(app)
            # Click every panel's title: a label's [@click=app.quit] must not quit.
            for panel in app.dashboard.panels:
                await pilot.click(panel, offset=(4, 0))
            assert app.is_running and app.return_code is None
            # The details screen of the token with the hostile object label and certificate.
            first = next(panel for panel in app.dashboard.panels if panel.token.snapshot.serial == hostile[0])
            first.focus()
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, DetailsScreen))
            text = console_text(app)
            assert not hidden(text), hidden(text)
            assert "\\x1b[31mkey\\u202e[/]" in text and "img src=x onerror=alert(1)" in text
            await pilot.press("escape")
            # A PIN form open on a token whose label is markup: it opens, shows it literally, and stays open.
            markup = next(panel for panel in app.dashboard.panels if "@click" in panel.token.snapshot.label)
            markup.focus()
            await pilot.press("u")
            await wait_for(pilot, lambda: isinstance(app.screen, ActionScreen))
            await pilot.press(*"12")
            form = app.screen
            before = app.result
            app.action_rescan()  # the dashboard under the form is repainted from a new scan of these labels
            await wait_for(pilot, lambda: app.result is not before)
            await pilot.pause()
            assert app.is_running and app.screen is form
            text = console_text(app)
            assert not hidden(text) and "[bold red]X[@click=app.quit]q[/]" in text
            assert_plain_titles(app)
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, ActionScreen))

    run_async(scenario())


def test_console_audit_screen_shows_hostile_fields_visibly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    monkeypatch.setenv(audit.AUDIT_ENV, str(path))
    entry = audit.AuditEntry(
        action="[@click=app.quit]x[/]",
        outcome="\x1b[2Jdone",
        serial="a[b]c",
        label=HOSTILE_LABELS[0],
        module="m",
        reason="[/]",
        findings_before=("\u202e",),
        operator="[bold red]op",
        host="h\nx",
    )
    audit.append(entry)

    async def scenario() -> None:
        app = HelpdeskApp(scanner_factory=FixedScanner, poll_seconds=0)
        async with app.run_test(size=(160, 30)) as pilot:
            await wait_for(pilot, lambda: app.result is not None)
            await pilot.press("a")
            await wait_for(pilot, lambda: isinstance(app.screen, AuditScreen))
            await pilot.pause()
            text = console_text(app)
            assert not hidden(text), hidden(text)
            row = [str(cell) for cell in app.screen.query_one(DataTable).get_row_at(0)]
            assert "[bold red]op" in row and "[@click=app.quit]x[/]" in row
            assert "\\x1b]52;c;cHduZWQ=\\x07[/] · a[b]c" in row

    run_async(scenario())


def test_many_certificates_findings_first_and_a_summary() -> None:
    from dataclasses import replace

    from core.diagnostics import diagnose_token
    from core.scan import ScannedToken
    from tests.tui_helpers import _certificate

    base = fixed_result()
    snap = base.tokens[2].snapshot
    certificates = tuple(_certificate(f"{n:02x}", f"Cert {n}", 400 + n) for n in range(300))
    certificates += (_certificate("ff", "Expired one", -5),)
    snap = replace(snap, certificates=certificates)
    token = ScannedToken(snap, tuple(diagnose_token(snap)))
    result = replace(base, tokens=(token,))
    lines = render_text(result).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("KAZTOKEN"))
    assert "Certificate expired 5 days ago (Expired one)" in lines[start + 1]  # the finding first
    assert sum("Certificate" in line for line in lines) < 10 and any("298 more (301 in all)" in line for line in lines)
    assert "Expired one" in next(line for line in lines[start + 2 :] if "Certificate " in line)  # worst first
    assert ticket_report(result).count("### Certificate ") == 301  # the report has them all

    async def scenario() -> None:
        app = HelpdeskApp(scanner_factory=lambda: FixedScanner(result), poll_seconds=0)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: bool(app.dashboard.panels))
            body = str(app.dashboard.panels[0].render()).splitlines()
            assert body[0].startswith("✖ Certificate expired 5 days ago")
            assert len(body) < 10 and "298 more (301 in all)" in body[-1]

    run_async(scenario())


# --- the property: random label bytes and certificate bytes ------------------------------------------------

_LABEL_BYTES = st.binary(min_size=1, max_size=32).filter(lambda raw: b"\x00" not in raw)
_TEXT = st.text(min_size=1, max_size=40)


@st.composite
def _certificate_value(draw: Any) -> bytes:
    """Random bytes, or a real certificate whose subject and issuer are random text."""
    from cryptography.hazmat.primitives import serialization

    if draw(st.booleans()):
        return draw(st.binary(min_size=1, max_size=200))
    key = _PROPERTY_KEY
    now = datetime.now(UTC)
    try:
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, draw(_TEXT))]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, draw(_TEXT))]))
            .public_key(key.public_key())
            .serial_number(draw(st.integers(min_value=1, max_value=2**159)))
            .not_valid_before(now - timedelta(days=draw(st.integers(0, 4000))))
            .not_valid_after(now + timedelta(days=draw(st.integers(-4000, 4000))))
            .sign(key, hashes.SHA256())
        )
    except ValueError:  # text cryptography refuses to put in a name (a lone surrogate): random bytes instead
        return draw(st.binary(min_size=1, max_size=200))
    return cert.public_bytes(serialization.Encoding.DER)


_PROPERTY_KEY = ec.generate_private_key(ec.SECP256R1())


def _reinit(hsm: SoftHSM, serial: str, label: bytes) -> None:
    """The test's one token, initialised again with this label (its objects go with it)."""
    subprocess.run(
        [
            *(b"softhsm2-util", b"--init-token", b"--serial", serial.encode(), b"--label", label),
            *(b"--so-pin", SO_PIN.encode(), b"--pin", USER_PIN.encode()),
        ],
        env=hsm.env,
        capture_output=True,
        check=True,
        timeout=60,
    )


def _outputs(result: ScanResult, tmp: Path) -> dict[str, str]:
    """`scan --report` run as the command (a scan of its own), and the other outputs made from `result` the
    way the command makes them (one scan each would triple the test's time)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        cli.main(["scan", "--module", SOFTHSM_MODULE, "--report", str(tmp / "ticket.md")])
    return {
        "text": stdout.getvalue() + stderr.getvalue(),
        "report": (tmp / "ticket.md").read_text(encoding="utf-8"),
        "explain": render_text(result, explain=True),
        "json": json_text(json.dumps(result.to_dict(), ensure_ascii=False, indent=2)),
        "ticket": ticket_report(result),
    }


@pytest.fixture
def one_token(softhsm: SoftHSM) -> tuple[SoftHSM, str]:
    return softhsm, softhsm.init_token("START")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(label=_LABEL_BYTES, value=_certificate_value())
def test_property_random_labels_and_certificates_never_crash_nor_leak_a_control_character(
    one_token: tuple[SoftHSM, str], tmp_path: Path, label: bytes, value: bytes
) -> None:
    hsm, serial = one_token
    _reinit(hsm, serial, label)
    hsm.write_raw_certificate(serial, value, "01")
    result = scan([SOFTHSM_MODULE])
    (token,) = [t for t in result.tokens if t.snapshot.serial == serial]
    assert token.snapshot.certificates, token.snapshot.read_error  # the object was read, parsed or not
    for name, output in _outputs(result, tmp_path).items():
        assert not hidden(output), (name, hidden(output))

    async def scenario() -> None:
        app = HelpdeskApp(scanner_factory=lambda: FixedScanner(result), poll_seconds=0)
        async with app.run_test(size=(100, 40)) as pilot:
            await wait_for(pilot, lambda: bool(app.dashboard.panels))
            assert not hidden(console_text(app)) and app.is_running
            assert_plain_titles(app)
            app.dashboard.panels[0].focus()
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, DetailsScreen))
            assert not hidden(console_text(app))

    run_async(scenario())
