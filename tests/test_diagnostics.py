"""The pure rules, on hand-made snapshots. These check the logic only; the real token states are checked
on SoftHSM2 and openCryptoki in test_scan_*.py."""

from __future__ import annotations

from datetime import UTC, datetime

from core.diagnostics import diagnose_token
from core.findings import CATALOGUE, Finding, Severity
from core.flags import TokenFlag
from core.snapshot import PinStatus, TokenSnapshot, pin_state

INITIALISED = TokenFlag.TOKEN_INITIALIZED | TokenFlag.USER_PIN_INITIALIZED


def test_exact_counters_from_the_vendor_extension_win_over_flags() -> None:
    # Rutoken-family libraries give exact counters; the standard flags lag behind on some firmware.
    assert pin_state(INITIALISED, so=False, tries_left=10, max_tries=10).status is PinStatus.OK
    assert pin_state(INITIALISED, so=False, tries_left=7, max_tries=10).status is PinStatus.COUNT_LOW
    assert pin_state(INITIALISED, so=False, tries_left=1, max_tries=10).status is PinStatus.FINAL_TRY
    locked = pin_state(INITIALISED, so=False, tries_left=0, max_tries=10)
    assert (locked.status, locked.tries_left, locked.max_tries) == (PinStatus.LOCKED, 0, 10)


def test_flags_alone() -> None:
    assert pin_state(INITIALISED | TokenFlag.USER_PIN_FINAL_TRY, so=False).status is PinStatus.FINAL_TRY
    assert pin_state(INITIALISED | TokenFlag.SO_PIN_LOCKED, so=True).status is PinStatus.LOCKED
    assert pin_state(TokenFlag.TOKEN_INITIALIZED, so=False).status is PinStatus.NOT_INITIALISED
    changed = pin_state(INITIALISED | TokenFlag.USER_PIN_TO_BE_CHANGED, so=False)
    assert changed.status is PinStatus.TO_BE_CHANGED and changed.to_be_changed


def snapshot(flags: int, **fields: object) -> TokenSnapshot:
    return TokenSnapshot(
        module_path="/m.so",
        slot_id=1,
        slot_description="",
        slot_manufacturer="",
        slot_flags=("token-present",),
        token_present=True,
        taken_at=datetime.now(UTC),
        initialised=bool(flags & TokenFlag.TOKEN_INITIALIZED),
        label="X",
        flags=(),
        user_pin=pin_state(flags, so=False),
        so_pin=pin_state(flags, so=True),
        **fields,
    )


def test_uninitialised_token_claims_nothing_about_its_pins() -> None:
    # SoftHSM2's free slot says SO_PIN_LOCKED|SO_PIN_TO_BE_CHANGED: no false alarm about the admin PIN.
    flags = TokenFlag.SO_PIN_LOCKED | TokenFlag.SO_PIN_TO_BE_CHANGED
    assert [f.code for f in diagnose_token(snapshot(flags))] == ["token-not-initialised"]


def test_locked_pin_tells_tries_and_sorts_first() -> None:
    flags = INITIALISED | TokenFlag.USER_PIN_LOCKED | TokenFlag.SO_PIN_COUNT_LOW
    findings = diagnose_token(snapshot(flags))
    assert [f.code for f in findings] == ["user-pin-locked", "so-pin-count-low", "profile-empty"]
    assert [f.severity for f in findings] == [Severity.ERROR, Severity.WARNING, Severity.INFO]


def test_count_low_title_says_tries_left_when_known() -> None:
    assert Finding.of("user-pin-count-low", tries_left=3).title == "Wrong user PIN entered recently: 3 tries left"
    assert Finding.of("user-pin-count-low", tries_left=None).title == "Wrong user PIN entered recently"


def test_every_finding_renders_with_its_placeholders() -> None:
    params = {
        "where": "",
        "path": "/p",
        "error": "e",
        "remedy": "r",
        "detail": "d",
        "name": "n",
        "days": 3,
        "not_after": "2027-01-01",
        "not_before": "2026-01-01",
        "tries_left": 2,
        "call": "C_GetTokenInfo",
        "device": "Some Vendor PIV",
        "count": 2,
        "extensions": "1.2.3.4",
        "id": "01",
    }
    for code in CATALOGUE:
        finding = Finding.of(code, **params)
        assert finding.title and finding.explanation and "{" not in finding.title + finding.explanation, code
        assert finding.severity in Severity
        assert set(finding.to_dict()) == {"code", "severity", "title", "explanation", "action"}
