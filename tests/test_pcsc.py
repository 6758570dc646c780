"""Readers and the smart-card service, on the real stack: OpenSC's PKCS#11 module over a private pcscd with
vpcd's virtual readers, and a PIV card of our own in them (tests/piv_card.py).

Each test has its own pcscd (tests/pcsc.py); `scan --json` runs as a subprocess the way a helpdesk runs it,
and OpenSC's `pkcs11-tool -L` is the independent witness of what is in the readers. Waiting for pcscd to
notice an insertion or a removal polls the witness, never a clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from core.findings import Finding
from core.modules import ModuleReport
from core.pcsc import ReaderState, diagnose_readers, explained_by_readers, list_readers, uses_pcsc
from core.snapshot import TokenSnapshot
from tests.pcsc import OPENSC_MODULE, READERS, PrivatePcscd, private_pcscd, unavailable_reason
from tests.piv_card import PivCard, VirtualCardSlot

REPO = Path(__file__).parent.parent
YKCS11_MODULE = "/usr/lib/x86_64-linux-gnu/libykcs11.so"  # Yubico's PIV library (Debian ykcs11)
WITNESS_LIMIT = 60.0  # a bound on waiting for pcscd to see a change, not a measurement

needs_stack = pytest.mark.skipif(bool(unavailable_reason()), reason=unavailable_reason() or "")


# --- the real stack --------------------------------------------------------------------------------------------


@pytest.fixture
def pcscd(tmp_path: Path) -> Iterator[PrivatePcscd]:
    with private_pcscd(tmp_path / "pcsc") as daemon:
        yield daemon


def _env(daemon: PrivatePcscd) -> dict[str, str]:
    return {**os.environ, **daemon.env, "PYTHONPATH": str(REPO)}


def scan_json(daemon: PrivatePcscd, module: str = OPENSC_MODULE) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "tui.cli", "scan", "--json", "--module", module],
        env=_env(daemon),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def witness(daemon: PrivatePcscd, module: str = OPENSC_MODULE) -> str:
    """`pkcs11-tool -L`: OpenSC's own view of the slots."""
    done = subprocess.run(
        ["pkcs11-tool", "--module", module, "-L"], env=_env(daemon), capture_output=True, text=True, timeout=120
    )
    return done.stdout + done.stderr


def wait_for_witness(daemon: PrivatePcscd, seen: Callable[[str], bool]) -> str:
    deadline = time.monotonic() + WITNESS_LIMIT
    while True:
        listing = witness(daemon)
        if seen(listing) or time.monotonic() > deadline:
            return listing
        time.sleep(0.2)


def first_reader(listing: str) -> str:
    """What `pkcs11-tool -L` says under the first reader's slot line."""
    lines = listing.splitlines()
    start = next(i for i, line in enumerate(lines) if READERS[0] in line)
    return lines[start + 1].strip()


def codes(result: dict[str, Any]) -> list[str]:
    return [finding["code"] for finding in result["findings"]]


@needs_stack
def test_service_down_is_pcsc_not_running(tmp_path: Path) -> None:
    with private_pcscd(tmp_path / "pcsc", running=False) as daemon:
        assert "No slots" in witness(daemon)
        status, result = scan_json(daemon)
        assert status == 1
        assert codes(result) == ["pcsc-not-running"]  # not "no token plugged in"
        finding = result["findings"][0]
        assert "opensc-pkcs11.so" in finding["explanation"]
        assert "pcscd" in finding["explanation"]
        assert result["readers"] == [] and result["tokens"] == []
        # Started, the readers are back; stopped again (a crash, a `systemctl stop`), it is said again.
        daemon.start()
        assert "No slots" not in witness(daemon)
        _status, result = scan_json(daemon)
        assert "pcsc-not-running" not in codes(result) and len(result["readers"]) == len(READERS)
        daemon.stop()
        assert "No slots" in witness(daemon)
        _status, result = scan_json(daemon)
        assert codes(result) == ["pcsc-not-running"]


@needs_stack
@pytest.mark.skipif(not Path(YKCS11_MODULE).exists(), reason="Debian package ykcs11 not installed")
def test_service_down_seen_through_ykcs11(tmp_path: Path) -> None:
    """ykcs11 answers C_GetSlotList with CKR_DEVICE_ERROR when the service is down: the helpdesk is told to
    start the service, not that the driver is broken; with the service up it is a plain "no token"."""
    with private_pcscd(tmp_path / "pcsc", running=False) as daemon:
        assert "CKR_DEVICE_ERROR" in witness(daemon, YKCS11_MODULE)
        status, result = scan_json(daemon, YKCS11_MODULE)
        assert status == 1
        assert codes(result) == ["pcsc-not-running"]
        assert "libykcs11.so" in result["findings"][0]["explanation"]
        daemon.start()
        assert "CKR_DEVICE_ERROR" not in witness(daemon, YKCS11_MODULE)
        _status, result = scan_json(daemon, YKCS11_MODULE)
        assert codes(result) == ["no-token"]  # no YubiKey here; the service answers


@needs_stack
def test_readers_without_a_card_are_reader_empty(pcscd: PrivatePcscd) -> None:
    assert witness(pcscd).count("(empty)") == len(READERS)
    status, result = scan_json(pcscd)
    assert status == 1
    assert sorted(codes(result)) == ["reader-empty"] * len(READERS)
    assert [(reader["description"], reader["state"]) for reader in result["readers"]] == [(n, "empty") for n in READERS]
    assert any(READERS[0] in finding["title"] for finding in result["findings"])


@needs_stack
def test_card_inserted_is_listed_and_removed_is_gone(pcscd: PrivatePcscd) -> None:
    card = PivCard(common_name="Ivanov PIV")
    with VirtualCardSlot(card, pcscd.reader_port(0)):
        listing = wait_for_witness(pcscd, lambda text: "token label" in text)
        assert "PIV" in listing
        serial = next(line.split(":", 1)[1].strip() for line in listing.splitlines() if "serial num" in line)
        status, result = scan_json(pcscd)
    assert [token["serial"] for token in result["tokens"]] == [serial]
    (token,) = result["tokens"]
    assert token["slot_description"] == READERS[0]
    assert [cert["common_name"] for cert in token["certificates"]] == ["Ivanov PIV"]
    assert token["user_pin"]["status"] == "ok"
    # The other reader is empty, and that is no problem while a token is in the first.
    assert [(reader["description"], reader["state"]) for reader in result["readers"]] == [
        (READERS[0], "token"),
        (READERS[1], "empty"),
    ]
    assert not {"reader-empty", "no-token", "pcsc-not-running"} & set(codes(result))
    assert status == 0

    listing = wait_for_witness(pcscd, lambda text: first_reader(text) == "(empty)")
    assert first_reader(listing) == "(empty)"
    status, result = scan_json(pcscd)
    assert status == 1
    assert result["tokens"] == []
    assert sorted(codes(result)) == ["reader-empty"] * len(READERS)


@needs_stack
def test_card_the_driver_cannot_read_is_token_not_recognised(pcscd: PrivatePcscd) -> None:
    with VirtualCardSlot(PivCard(garbage=True), pcscd.reader_port(0)):
        listing = wait_for_witness(pcscd, lambda text: "not recognized" in first_reader(text))
        assert first_reader(listing) == "(token not recognized)"
        status, result = scan_json(pcscd)
    assert status == 1
    assert codes(result) == ["token-not-recognised"]  # the empty second reader is not the problem
    finding = result["findings"][0]
    assert READERS[0] in finding["title"]
    assert [(reader["description"], reader["state"]) for reader in result["readers"]] == [
        (READERS[0], "not-recognised"),
        (READERS[1], "empty"),
    ]


@needs_stack
def test_readers_in_scan_text_and_report(pcscd: PrivatePcscd, tmp_path: Path) -> None:
    with VirtualCardSlot(PivCard(common_name="Ivanov PIV"), pcscd.reader_port(0)):
        wait_for_witness(pcscd, lambda text: "token label" in text)
        done = subprocess.run(
            [sys.executable, "-m", "tui.cli", "scan", "--module", OPENSC_MODULE],
            env=_env(pcscd),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert f"Reader: {READERS[0]} (opensc-pkcs11.so): token «Ivanov PIV»" in done.stdout
    assert f"Reader: {READERS[1]} (opensc-pkcs11.so): empty" in done.stdout
    # The ticket report names them too.
    report = tmp_path / "ticket.md"
    subprocess.run(
        [sys.executable, "-m", "tui.cli", "scan", "--module", OPENSC_MODULE, "--report", str(report)],
        env=_env(pcscd),
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    assert f"- Reader: {READERS[1]} (opensc-pkcs11\\.so): empty" in report.read_text()  # data escaped


@needs_stack
def test_pin_tries_on_the_card_show_in_the_scan(pcscd: PrivatePcscd) -> None:
    """The card counts PIN tries (VERIFY answers 63Cx, then 6983); OpenSC turns that into the token's flags,
    and the scan into findings. The PUK unblocks it (RESET RETRY COUNTER) and the new PIN can be changed
    (CHANGE REFERENCE DATA): all through pkcs11-tool, the witness."""
    card = PivCard(pin=b"123456", puk=b"12345678")

    def tool(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["pkcs11-tool", "--module", OPENSC_MODULE, *args],
            env=_env(pcscd),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def user_pin() -> str:
        _status, result = scan_json(pcscd)
        (token,) = result["tokens"]
        return str(token["user_pin"]["status"])

    with VirtualCardSlot(card, pcscd.reader_port(0)):
        wait_for_witness(pcscd, lambda listing: "token label" in listing)
        for _ in range(2):
            assert "CKR_PIN_INCORRECT" in tool("--login", "--pin", "975310", "--list-objects").stderr
        assert user_pin() == "final-try"
        assert "CKR_PIN_LOCKED" in tool("--login", "--pin", "975310", "--list-objects").stderr
        assert "CKR_PIN_LOCKED" in tool("--login", "--pin", "123456", "--list-objects").stderr
        assert user_pin() == "locked"
        assert tool("--unlock-pin", "--puk", "12345678", "--new-pin", "654321").returncode == 0
        assert user_pin() == "ok"
        assert tool("--change-pin", "--pin", "654321", "--new-pin", "112233").returncode == 0
        assert tool("--login", "--pin", "112233", "--list-objects").returncode == 0
    assert card.pin_counter.value == b"112233"


# --- the rules on their own ------------------------------------------------------------------------------------

OPENSC = ModuleReport(
    path=OPENSC_MODULE,
    source="option",
    found=True,
    loaded=True,
    driver=False,
    description="OpenSC smartcard framework",
    manufacturer="OpenSC Project",
)
SOFTHSM = ModuleReport(
    path="/usr/lib/softhsm/libsofthsm2.so",
    source="option",
    found=True,
    loaded=True,
    driver=False,
    description="Implementation of PKCS11",
    manufacturer="SoftHSM",
)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def slot(slot_id: int, *, present: bool, error: str | None = None, module: str = OPENSC_MODULE) -> TokenSnapshot:
    flags = ("removable-device", "hw-slot", *(("token-present",) if present else ()))
    return TokenSnapshot(
        module_path=module,
        slot_id=slot_id,
        slot_description=f"Reader {slot_id}",
        slot_manufacturer="",
        slot_flags=flags,
        token_present=present,
        taken_at=NOW,
        initialised=present and not error,
        label="CARD" if present and not error else "",
        token_error=error,
    )


def test_pcsc_libraries() -> None:
    assert uses_pcsc(OPENSC)
    assert not uses_pcsc(SOFTHSM)
    assert uses_pcsc(ModuleReport("/usr/lib/librtpkcs11ecp.so", "well-known", True, True, True))
    assert uses_pcsc(ModuleReport("/usr/lib/x86_64-linux-gnu/libykcs11.so.2", "option", True, True, False))


def test_service_down_needs_both_signs() -> None:
    # No slot and a dead socket: down. No slot but the socket answers: the service runs, nothing is connected.
    assert [f.code for f in diagnose_readers([OPENSC], [], [], pcscd_up=False)] == ["pcsc-not-running"]
    assert diagnose_readers([OPENSC], [], [], pcscd_up=True) == []
    # A library that sees readers is talking to the service, whatever the socket check said.
    assert "pcsc-not-running" not in [
        f.code for f in diagnose_readers([OPENSC], [], [slot(0, present=False)], pcscd_up=False)
    ]
    # SoftHSM2 has nothing to do with the smart-card service.
    assert diagnose_readers([SOFTHSM], [], [], pcscd_up=False) == []


def test_empty_reader_is_a_problem_only_when_every_reader_is_empty() -> None:
    empty, token = slot(4, present=False), slot(0, present=True)
    assert [f.code for f in diagnose_readers([OPENSC], [], [empty], pcscd_up=None)] == ["reader-empty"]
    assert diagnose_readers([OPENSC], [token], [empty], pcscd_up=None) == []
    unreadable = slot(0, present=True, error="CKR_TOKEN_NOT_RECOGNIZED")
    assert [f.code for f in diagnose_readers([OPENSC], [], [unreadable, empty], pcscd_up=None)] == [
        "token-not-recognised"
    ]


def test_an_uninitialised_card_in_a_reader_is_no_spare_slot() -> None:
    from core.scan import is_spare_slot

    card = replace(slot(0, present=True), initialised=False, label="")
    assert not is_spare_slot(card)
    software = replace(card, slot_flags=("token-present",))
    assert is_spare_slot(software)


def test_reader_list_and_no_token() -> None:
    readers = list_readers([slot(0, present=True)], [slot(4, present=False), slot(8, present=True, error="x")])
    assert [(r.slot_id, r.state) for r in readers] == [
        (0, ReaderState.TOKEN),
        (4, ReaderState.EMPTY),
        (8, ReaderState.NOT_RECOGNISED),
    ]
    assert readers[0].token_label == "CARD"
    # A token in a slot that is not a reader (SoftHSM2's) is no reader.
    soft = TokenSnapshot(SOFTHSM.path, 1, "SoftHSM slot", "", ("token-present",), True, NOW, initialised=True)
    assert list_readers([soft], []) == []
    findings = [Finding.of("no-token"), Finding.of("reader-empty", name="R", path="m")]
    assert [f.code for f in explained_by_readers(findings, [])] == ["reader-empty"]
    assert [f.code for f in explained_by_readers([Finding.of("no-token")], [])] == ["no-token"]


# --- the console's dashboard -----------------------------------------------------------------------------------


@needs_stack
def test_dashboard_shows_readers(pcscd: PrivatePcscd, monkeypatch: pytest.MonkeyPatch) -> None:
    """The console's "This computer" panel lists the readers and what is in each, and follows a card going in."""
    from tests.tui_helpers import first_scan, run, screen_text, wait_for
    from tui.app import HelpdeskApp
    from tui.widgets import WorkstationPanel

    for name, value in pcscd.env.items():
        monkeypatch.setenv(name, value)  # the console's scans run in child processes: they inherit it
    card = VirtualCardSlot(PivCard(common_name="Ivanov PIV"), pcscd.reader_port(0))

    async def scenario() -> None:
        app = HelpdeskApp([OPENSC_MODULE])
        async with app.run_test(size=(120, 50)) as pilot:
            await first_scan(pilot)
            text = screen_text(app)
            assert f"Reader empty: {READERS[0]}" in text
            assert f"Reader: {READERS[0]} empty" in text and f"Reader: {READERS[1]} empty" in text
            assert "No token plugged in" not in text
            card.insert()
            await wait_for(pilot, lambda: "Ivanov PIV" in screen_text(app), timeout=WITNESS_LIMIT)
            await wait_for(pilot, lambda: "Reader empty" not in screen_text(app), timeout=WITNESS_LIMIT)
            text = screen_text(app)
            assert f"Reader: {READERS[0]} token «Ivanov PIV»" in text
            assert f"Reader: {READERS[1]} empty" in text
            assert app.dashboard.query_one(WorkstationPanel).display

    try:
        run(scenario())
    finally:
        card.remove()


class CountingCard(PivCard):
    """The PIV card, counting the commands (APDUs) it is sent; power and reset signals are not commands."""

    apdus = 0

    def answer(self, apdu: bytes) -> bytes:
        self.apdus += 1
        return super().answer(apdu)


@needs_stack
def test_idle_polls_send_the_card_no_command(pcscd: PrivatePcscd) -> None:
    """The console polls every second; a card in a reader is read when it arrives, and after that a poll that
    finds nothing changed sends it no command: a card counts and logs what it is sent, some are slow to
    answer, and the helpdesk's console idles for hours."""
    from core.scan import Workstation

    card = CountingCard(common_name="Ivanov PIV")
    slot = VirtualCardSlot(card, pcscd.reader_port(0))
    workstation = Workstation([OPENSC_MODULE], environ=_env(pcscd))

    def labels() -> list[str]:
        return [token.snapshot.label for token in workstation.scan(refresh=True).tokens]

    def polls_until(wanted: list[str]) -> list[str]:
        """Polls until they show `wanted` (OpenSC looks at a reader at most once a second), WITNESS_LIMIT at most."""
        deadline = time.monotonic() + WITNESS_LIMIT
        while (seen := labels()) != wanted and time.monotonic() < deadline:
            time.sleep(0.2)
        return seen

    try:
        slot.insert()
        wait_for_witness(pcscd, lambda listing: "Ivanov PIV" in listing)
        assert [token.snapshot.label for token in workstation.scan().tokens] == ["Ivanov PIV"]
        read = card.apdus
        assert read > 0  # the first read did talk to the card
        for _ in range(3):
            assert labels() == ["Ivanov PIV"]
        assert card.apdus == read
        # Polls still follow the card: out, then in again (pcscd's notice waited for through the witness).
        slot.remove()
        wait_for_witness(pcscd, lambda listing: "Ivanov PIV" not in listing)
        assert polls_until([]) == []
        slot.insert()
        wait_for_witness(pcscd, lambda listing: "Ivanov PIV" in listing)
        assert polls_until(["Ivanov PIV"]) == ["Ivanov PIV"]
    finally:
        workstation.close()
        slot.remove()
