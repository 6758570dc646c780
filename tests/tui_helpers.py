"""Helpers for the console's tests: run a Pilot session without an asyncio plugin, wait on conditions, and a
fixed scan result (no serials or dates that change) for snapshot tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from core.certificates import CertificateInfo
from core.config import Config, LoadedConfig
from core.diagnostics import diagnose_token, diagnose_workstation
from core.modules import ModuleReport
from core.scan import ScannedToken, ScanResult
from core.snapshot import KeyInfo, PinState, PinStatus, TokenSnapshot
from tui.app import HelpdeskApp

FIXED_NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    """Pilot tests are coroutines; the suite has no asyncio plugin, and needs none."""
    asyncio.run(coroutine)


async def wait_for(pilot: Pilot[Any], condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll the UI until `condition` holds: no fixed sleeps, and a clear failure when it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await pilot.pause(0.05)


async def first_scan(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, HelpdeskApp)
    await wait_for(pilot, lambda: app.result is not None)
    await pilot.pause()


def screen_text(app: HelpdeskApp) -> str:
    """Every Static's text on the current screen, and the panels' border titles: what a person reads."""
    from textual.widgets import Static

    parts = []
    for widget in app.screen.query(Static):
        parts += [str(widget.border_title or ""), str(widget.border_subtitle or ""), str(widget.render())]
    return "\n".join(parts)


def notices(app: HelpdeskApp) -> list[str]:
    return [str(notification.message) for notification in app._notifications]


# --- a fixed scan: same text on every run, for snapshot tests -----------------------------------------------

MODULE = ModuleReport(
    path="/usr/lib/libkztpkcs11.so",
    source="option",
    found=True,
    loaded=True,
    driver=True,
    description="KAZTOKEN PKCS#11 library",
    manufacturer="KAZTOKEN",
    library_version="4.6",
    cryptoki_version="2.20",
    vendor_extension=True,
)


def _snapshot(serial: str, label: str, **fields: Any) -> TokenSnapshot:
    defaults: dict[str, Any] = {
        "module_path": MODULE.path,
        "slot_id": int(serial[-2:], 16),
        "slot_description": "KAZTOKEN reader",
        "slot_manufacturer": "KAZTOKEN",
        "slot_flags": ("token-present", "removable-device", "hw-slot"),
        "token_present": True,
        "taken_at": FIXED_NOW,
        "initialised": True,
        "label": label,
        "serial": serial,
        "manufacturer": "KAZTOKEN",
        "model": "KAZTOKEN ECP",
        "hardware_version": "2.6",
        "firmware_version": "2.6",
        "flags": ("rng", "login-required", "user-pin-initialized", "token-initialized"),
        "user_pin": PinState(PinStatus.OK, 10, 10),
        "so_pin": PinState(PinStatus.OK, 10, 10),
        "min_pin_length": 6,
        "max_pin_length": 32,
    }
    return TokenSnapshot(**{**defaults, **fields})


def _certificate(cka_id: str, name: str, days_left: int) -> CertificateInfo:

    not_after = FIXED_NOW + timedelta(days=days_left)
    return CertificateInfo(
        cka_id=cka_id,
        label=f"cert-{cka_id}",
        has_key=True,
        subject=f"CN={name}",
        common_name=name,
        issuer="CN=KISC CA",
        serial="01ab",
        not_before=FIXED_NOW - timedelta(days=30),
        not_after=not_after,
        days_left=days_left,
        key_usage=("digital_signature", "content_commitment"),
        fingerprint_sha256="AB:CD:EF",
    )


def _key(cka_id: str) -> KeyInfo:
    return KeyInfo(cka_id, f"key-{cka_id}", "public", "rsa", 2048, True)


def fixed_result() -> ScanResult:
    snapshots = [
        _snapshot("0A1B2C3D", ""),
        _snapshot(
            "0A1B2C40",
            "IVANOV",
            user_pin=PinState(PinStatus.LOCKED, 0, 10),
            certificates=(_certificate("01", "Иванов Иван", 6),),
            keys=(_key("01"),),
        ),
        _snapshot("0A1B2C41", "PETROV", certificates=(_certificate("01", "Петров Пётр", 472),), keys=(_key("01"),)),
    ]
    tokens = tuple(ScannedToken(snap, tuple(diagnose_token(snap))) for snap in snapshots)
    return ScanResult(
        taken_at=FIXED_NOW,
        config=LoadedConfig(path=Path("/nonexistent/config.toml"), config=Config()),
        modules=(MODULE,),
        tokens=tokens,
        findings=tuple(diagnose_workstation([MODULE], snapshots)),
    )


class FixedScanner:
    """Stands in for core.scan.Workstation: the same result every time."""

    def __init__(self, result: ScanResult | None = None) -> None:
        self.result = result or fixed_result()

    def scan(self, *, refresh: bool = False) -> ScanResult:
        return self.result


def fixed_app(**kwargs: Any) -> HelpdeskApp:
    return HelpdeskApp(scanner_factory=FixedScanner, **kwargs)


def until_scanned(condition: Callable[[HelpdeskApp], bool] | None = None) -> Callable[[Pilot[Any]], Awaitable[None]]:
    """A snap_compare `run_before`: wait for the first scan (and a condition), then let the screen settle."""

    async def before(pilot: Pilot[Any]) -> None:
        await first_scan(pilot)
        if condition is not None:
            app = pilot.app
            assert isinstance(app, HelpdeskApp)
            await wait_for(pilot, lambda: condition(app))
        await pilot.pause(0.1)

    return before
