"""Screenshots of the real console on real SoftHSM2 tokens, for screenshots/ (SVG) and for a look (PNG).

    .venv/bin/python scripts/screenshots.py [--png-dir /tmp/kaztoken-shots]

Builds tokens in several states in a temporary SoftHSM2 directory, runs the app under Textual's Pilot at
80×24 and at 170×40, and saves: the no-driver and no-token states, the dashboard (both sizes), a token's
details and the help screen. PNGs are made with rsvg-convert when it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tokens import SO_PIN, SOFTHSM_MODULE, USER_PIN, SoftHSM  # noqa: E402
from tui.app import HelpdeskApp  # noqa: E402

OUT = ROOT / "screenshots"
NARROW, WIDE = (80, 24), (170, 40)


def make_tokens(hsm: SoftHSM) -> int:
    """A counter of customers, each token in a state the helpdesk meets every day."""
    hsm.init_token("")  # fresh: «KAZTOKEN <no label> - ?»
    serial = hsm.init_token("SIDOROV")
    hsm.generate_key(serial, "0a")  # registration interrupted: key without certificate
    serial = hsm.init_token("IVANOV")
    hsm.profile(serial, "01", days_valid=36, starts_in_days=-30)  # expires in 6 days
    hsm.fail_login(serial)  # and a wrong PIN was typed
    serial = hsm.init_token("KOZLOVA")
    hsm.profile(serial, "01", days_valid=30, starts_in_days=-40, common_name="Козлова Анна")  # expired
    serial = hsm.init_token("PETROV")
    hsm.profile(serial, "01", days_valid=3 * 365, common_name="Петров Пётр")  # healthy
    return 5


async def shoot(app: HelpdeskApp, size: tuple[int, int], shots: list[tuple[str, str]], tokens: int = 0) -> None:
    """Run the app and save a screenshot after each step: (keys to press, file name)."""
    async with app.run_test(size=size) as pilot:
        for _ in range(300):  # the first scans (and a poll that picks up new tokens), at most ~15 s
            if app.result is not None and len(app.dashboard.panels) >= tokens:
                break
            await pilot.pause(0.05)
        await pilot.pause(0.3)
        for keys, name in shots:
            if keys:
                await pilot.press(*keys.split())
                await pilot.pause(0.3)
            app.save_screenshot(f"{name}.svg", str(OUT))
            print(OUT / f"{name}.svg")


def check_no_pin(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    # The test tokens use the factory defaults, which the help screen quotes as documentation; a PIN typed by
    # anyone must never be drawn. These screens show none of either.
    for pin in {USER_PIN, SO_PIN}:
        if pin in text:
            raise SystemExit(f"{path} contains a PIN")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png-dir", type=Path, default=Path(tempfile.gettempdir()) / "kaztoken-shots")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kaztoken-shots-") as temp:
        os.environ["XDG_DATA_HOME"] = str(Path(temp) / "data")  # reports from `x` stay out of the real home
        os.environ["XDG_CONFIG_HOME"] = str(Path(temp) / "config")
        hsm = SoftHSM(Path(temp) / "softhsm")
        os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
        asyncio.run(shoot(HelpdeskApp(["/nonexistent/libkztpkcs11.so"]), NARROW, [("", "no-driver-80x24")]))
        asyncio.run(shoot(HelpdeskApp([SOFTHSM_MODULE]), NARROW, [("", "no-token-80x24")]))
        count = make_tokens(hsm)
        asyncio.run(
            shoot(
                HelpdeskApp([SOFTHSM_MODULE]),
                NARROW,
                [("", "dashboard-80x24"), ("down enter", "details-80x24"), ("escape question_mark", "help-80x24")],
                tokens=count,
            )
        )
        asyncio.run(shoot(HelpdeskApp([SOFTHSM_MODULE]), WIDE, [("", "dashboard-170x40")], tokens=count))
    args.png_dir.mkdir(parents=True, exist_ok=True)
    for svg in sorted(OUT.glob("*.svg")):
        check_no_pin(svg)
        if shutil.which("rsvg-convert"):
            png = args.png_dir / svg.with_suffix(".png").name
            subprocess.run(["rsvg-convert", str(svg), "-o", str(png)], check=True)
            print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
