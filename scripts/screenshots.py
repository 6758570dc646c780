"""Screenshots of the real console on real SoftHSM2 tokens, for screenshots/ (SVG) and for a look (PNG).

    .venv/bin/python scripts/screenshots.py [--lang en,kk,ru] [--png-dir /tmp/kaztoken-shots]

Builds tokens in several states in a temporary SoftHSM2 directory, runs the app under Textual's Pilot at
80×24 and at 170×40, and saves: the no-driver and no-token states, the dashboard (both sizes), a token's
details, the help screen, the action screens (personalise, change PIN, unblock after a wrong admin PIN and
done, format refused and confirmed), the audit log those actions wrote and the re-enrolment's first step. Then,
on a training lab of the run's own (simulated tokens only): the trainer menu, and a lab token's re-enrolment at
its certificate step (key pair and request made) with the certificate term's choices focused. PINs are typed into
the screens for real; every screenshot is then searched for each of them. PNGs are made with rsvg-convert when
installed.

Each language gets the whole series, its own tokens and audit log: English as `dashboard-80x24.svg`, the others
with the language after the size, `dashboard-80x24-ru.svg`, `dashboard-80x24-kk.svg`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.i18n import LANGUAGES, set_language  # noqa: E402
from core.lab import FACTORY_SO_PIN, FACTORY_USER_PIN, LAB_SO_PIN, LAB_USER_PIN, Lab, default_root  # noqa: E402
from tests.tokens import SO_PIN, SOFTHSM_MODULE, USER_PIN, SoftHSM  # noqa: E402
from tui.app import HelpdeskApp  # noqa: E402
from tui.screens.pin_form import ActionScreen  # noqa: E402
from tui.screens.re_enrol import ReEnrolScreen  # noqa: E402
from tui.screens.trainer import TrainerScreen  # noqa: E402

OUT = ROOT / "screenshots"
NARROW, WIDE = (80, 24), (170, 40)
NEW_PIN, WRONG_PIN = "Kazt0ken", "Wr0ngPin"  # typed into the screens; must never show in a screenshot
# The lab's tokens are made with its own PINs (and the factory defaults): none of them may show either.
TYPED_PINS = (USER_PIN, SO_PIN, NEW_PIN, WRONG_PIN, LAB_USER_PIN, LAB_SO_PIN, FACTORY_USER_PIN, FACTORY_SO_PIN)
# Where the re-enrolment screen puts the focus at each step (on a lab token: the training CA's button last).
STEP_FOCUS = {"key": "generate", "request": "make-request", "import": "training"}
LAB_SCENARIOS = ["fresh", "default-pins", "healthy", "expiring", "expired", "user-pin-locked"]  # the lab's shots


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


def typed(text: str) -> list[str]:
    """The keys that type `text` into the focused field."""
    return list(text)


async def _settle(pilot: Any, condition: Any) -> None:
    for _ in range(300):  # at most ~15 s
        if condition():
            return
        await pilot.pause(0.05)
    raise SystemExit("the console did not get there")


def _idle_at(app: HelpdeskApp, phase: str) -> bool:
    """The re-enrolment screen at this step, nothing running, its focus where the step puts it."""
    screen = app.screen
    if not isinstance(screen, ReEnrolScreen) or screen.phase != phase or screen.busy is not None:
        return False
    focused = app.focused
    return focused is not None and focused.id == STEP_FOCUS[phase]


async def step(app: HelpdeskApp, pilot: Any, key: str) -> None:
    """A key, or "@LABEL" to select that token's panel, or "~" for Enter on an action screen and its answer,
    or "%STEP" to wait for the re-enrolment screen at that step ("key", "request", "import") or "%trainer" for
    the trainer menu with the lab's state read."""
    if key == "%trainer":
        await _settle(pilot, lambda: isinstance(app.screen, TrainerScreen) and bool(app.screen.statuses))
    elif key.startswith("%"):
        await _settle(pilot, lambda: _idle_at(app, key[1:]))
    elif key.startswith("@"):
        panel = next(p for p in app.dashboard.panels if p.token.snapshot.label == key[1:])
        panel.focus()
    elif key == "~":
        screen = app.screen
        assert isinstance(screen, ActionScreen)
        before = screen.result
        await pilot.press("enter")
        await _settle(pilot, lambda: not screen.working and screen.result is not before)
    else:
        await pilot.press(key)


async def shoot(
    app: HelpdeskApp, size: tuple[int, int], shots: list[tuple[Sequence[str], str]], tokens: int = 0, suffix: str = ""
) -> None:
    """Run the app and save a screenshot after each step: (keys to press, file name), the name + `suffix`."""
    async with app.run_test(size=size) as pilot:
        await _settle(pilot, lambda: app.result is not None and len(app.dashboard.panels) >= tokens)
        await pilot.pause(0.3)
        for keys, name in shots:
            for key in keys:
                await step(app, pilot, key)
            await pilot.pause(0.3)
            app.save_screenshot(f"{name}{suffix}.svg", str(OUT))
            print(OUT / f"{name}{suffix}.svg")


def action_shots() -> list[tuple[Sequence[str], str]]:
    """The action screens, typed into as an operator would (every PIN field masked)."""
    return [
        (["@", "p", *typed("IVANOV"), "tab", *typed(SO_PIN), "tab", *typed("Kazt")], "personalise-80x24"),
        (["escape", "@PETROV", "c", *typed(USER_PIN), "tab", *typed(NEW_PIN), "tab", "K"], "change-pin-80x24"),
        (
            ["escape", "@IVANOV", "u", *typed(WRONG_PIN), "tab", *typed(NEW_PIN), "tab", *typed(NEW_PIN), "~"],
            "unblock-wrong-pin-80x24",
        ),
        ([*typed(SO_PIN), "tab", "tab", "~"], "unblock-done-80x24"),
        (["escape", "@SIDOROV", "f"], "format-refused-80x24"),
        (["escape", "@KOZLOVA", "f", *typed("KOZLOVA"), "tab"], "format-80x24"),
        (["escape", "a"], "audit-80x24"),
        (["escape", "@PETROV", "e"], "re-enrol-login-80x24"),
    ]


def lab_shots() -> list[tuple[Sequence[str], str]]:
    """On the lab: the trainer menu, then re-enrolment of a healthy lab token up to its certificate step, where
    the training CA can issue, with the term's choices focused."""
    return [
        (["t", "%trainer"], "trainer-80x24"),
        (
            [
                *["escape", "@AKHMETOVA", "e", *typed(LAB_USER_PIN), "enter"],  # logged in
                *["%key", "enter", "%request", "enter", "%import"],  # key pair generated, request made
                "shift+tab",  # the term's choices, just before the training CA's button
            ],
            "re-enrol-import-80x24",
        ),
    ]


def check_no_pin(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    # Every PIN the tokens were made with or that was typed into a screen: none may be drawn, anywhere.
    for pin in TYPED_PINS:
        if pin in text:
            raise SystemExit(f"{path} contains a PIN")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png-dir", type=Path, default=Path(tempfile.gettempdir()) / "kaztoken-shots")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "screenshots", help="where the SVGs go (default: screenshots/)"
    )
    parser.add_argument(
        "--lang", default="en,kk,ru", help="comma-separated languages to shoot (default: en,kk,ru)", metavar="LIST"
    )
    args = parser.parse_args()
    languages = [language for language in args.lang.split(",") if language]
    unknown = set(languages) - set(LANGUAGES)
    if unknown:
        parser.error(f"no such language: {', '.join(sorted(unknown))}")
    if len(languages) > 1:
        # One process per language: the PKCS#11 library (and SoftHSM2's SOFTHSM2_CONF) is loaded once a process.
        for language in languages:
            command = [
                sys.executable,
                __file__,
                "--lang",
                language,
                "--png-dir",
                str(args.png_dir),
                "--out",
                str(args.out),
            ]
            subprocess.run(command, check=True)
        return 0
    global OUT
    OUT = args.out
    OUT.mkdir(exist_ok=True)
    set_language(languages[0])
    series(suffix="" if languages[0] == "en" else f"-{languages[0]}")
    args.png_dir.mkdir(parents=True, exist_ok=True)
    for svg in sorted(OUT.glob("*.svg")):
        check_no_pin(svg)
        if shutil.which("rsvg-convert"):
            png = args.png_dir / svg.with_suffix(".png").name
            subprocess.run(["rsvg-convert", str(svg), "-o", str(png)], check=True)
            print(png)
    return 0


def series(suffix: str) -> None:
    """Every screenshot, in the language now set: tokens, reports, audit log and locks of this run only."""
    with tempfile.TemporaryDirectory(prefix="kaztoken-shots-") as temp:
        # Reports, the audit log, the operator locks and the lab of this run stay out of the real home.
        os.environ["HOME"] = str(Path(temp) / "home")  # where a re-enrolment's request would be saved
        for variable, sub in (("XDG_DATA_HOME", "data"), ("XDG_CONFIG_HOME", "config"), ("XDG_STATE_HOME", "state")):
            os.environ[variable] = str(Path(temp) / sub)
        os.environ["KAZTOKEN_HELPDESK_LOCK_DIR"] = str(Path(temp) / "locks")
        os.environ.pop("KAZTOKEN_HELPDESK_AUDIT", None)
        hsm = SoftHSM(Path(temp) / "softhsm")
        os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
        no_driver = HelpdeskApp(["/nonexistent/libkztpkcs11.so"])
        asyncio.run(shoot(no_driver, NARROW, [("", "no-driver-80x24")], suffix=suffix))
        asyncio.run(shoot(HelpdeskApp([SOFTHSM_MODULE]), NARROW, [("", "no-token-80x24")], suffix=suffix))
        count = make_tokens(hsm)
        main_screens: list[tuple[Sequence[str], str]] = [
            ([], "dashboard-80x24"),
            (["down", "enter"], "details-80x24"),
            (["escape", "question_mark"], "help-80x24"),
        ]
        asyncio.run(shoot(HelpdeskApp([SOFTHSM_MODULE]), NARROW, main_screens, tokens=count, suffix=suffix))
        wide = [([], "dashboard-170x40")]
        asyncio.run(shoot(HelpdeskApp([SOFTHSM_MODULE]), WIDE, wide, tokens=count, suffix=suffix))
        asyncio.run(shoot(HelpdeskApp([SOFTHSM_MODULE]), NARROW, action_shots(), tokens=count, suffix=suffix))
        # The lab where a trainer's console would keep it (under XDG_DATA_HOME, so in this run's directory): the
        # console finds its tokens' training CA there. Simulated tokens only: openCryptoki's is the machine's.
        lab = Lab(default_root(), opencryptoki=False)
        lab.activate()  # the simulator reads its directory at C_Initialize: before the lab's build loads it
        built = [done for done in lab.reset(LAB_SCENARIOS) if done.serial]
        lab_console = HelpdeskApp(lab.modules(), lab=lab)
        asyncio.run(shoot(lab_console, NARROW, lab_shots(), tokens=len(built), suffix=suffix))


if __name__ == "__main__":
    sys.exit(main())
