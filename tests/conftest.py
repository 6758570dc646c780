from __future__ import annotations

import ast
import html
import io
import json
import os
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import keyring
import pkcs11
import pytest
from keyring.backend import KeyringBackend

from core.i18n import set_language
from tests.tokens import SOFTHSM_MODULE, SoftHSM


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the developer's own settings, logs and keyring out of every test, and pin the language."""
    home = tmp_path_factory.mktemp("home")
    for var, sub in (
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_CACHE_HOME", "cache"),
    ):
        monkeypatch.setenv(var, str(home / sub))
    for var in (
        "KAZTOKEN_HELPDESK_MODULE",
        "KAZTOKEN_HELPDESK_CONFIG",
        "NO_COLOR",
        "LANGUAGE",
        "LC_ALL",
        "LC_MESSAGES",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LANG", "C.UTF-8")  # the developer's locale must not pick the language of a test
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    # One lock directory for the session, inside pytest's temp dir: the end-of-session PIN check reads it too.
    monkeypatch.setenv("KAZTOKEN_HELPDESK_LOCK_DIR", str(tmp_path_factory.getbasetemp() / "locks"))
    _SESSION["basetemp"] = tmp_path_factory.getbasetemp()
    set_language("en")
    return home


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHSM]:
    """A SoftHSM2 token directory of this test's own, seen by this process and by subprocesses."""
    hsm = SoftHSM(tmp_path / "softhsm")
    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
    yield hsm
    # SoftHSM2 reads SOFTHSM2_CONF at C_Initialize: the next test's directory needs a fresh one.
    if SOFTHSM_MODULE in pkcs11._loaded:
        os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
        pkcs11._loaded[SOFTHSM_MODULE].finalize()


# --- No PIN in any file the app wrote (issue 4) ------------------------------------------------------------------
# After the whole suite, every PIN the tests used is looked for in every file the app wrote: the isolated XDG
# dirs of every test (settings, reports, the audit log), the lock dir, and the screenshots. Files the tests made
# themselves (SoftHSM2 token dirs, softhsm2.conf, pkcs11-tool inputs) are not the app's and are not read.
# The PINs: the ones tests register with `used_pin()`, plus every PIN-looking literal in tests/*.py.

TESTS_DIR = Path(__file__).parent
REPO = TESTS_DIR.parent
DEFAULT_PINS = ("12345678", "87654321")
PINS_USED: set[str] = set()
_SESSION: dict[str, Path] = {}
_SERIAL = re.compile(r"[0-9a-fA-F]{16}")  # a SoftHSM2 serial: a test names one, the audit rightly holds it


def used_pin(value: str) -> str:
    """Register a PIN a test types (for values not written as a literal on a line about PINs); returns it."""
    PINS_USED.add(value)
    return value


def _looks_like_pin(value: object) -> bool:
    return (
        isinstance(value, str)
        and 6 <= len(value) <= 64
        and value.isascii()
        and value.isprintable()
        and not any(ch.isspace() for ch in value)
        and any(ch.isdigit() for ch in value)
        and not any(ch in value for ch in "-/{}\\")  # labels like key-01, commands, paths, format strings
        and not _SERIAL.fullmatch(value)
    )


def literal_pins() -> dict[str, str]:
    """PIN-looking string literals on lines of tests/*.py that speak of a PIN, each with where it is written."""
    found: dict[str, str] = {}
    for path in sorted(TESTS_DIR.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type != tokenize.STRING or "pin" not in token.line.lower():
                continue
            try:
                value = ast.literal_eval(token.string)
            except (ValueError, SyntaxError):
                continue
            if _looks_like_pin(value):
                found.setdefault(value, f"{path.relative_to(REPO)}:{token.start[0]}")
    return found


def all_pins() -> dict[str, str]:
    pins = {pin: "a factory default PIN" for pin in DEFAULT_PINS}
    pins.update({pin: "used_pin() in a test" for pin in PINS_USED if pin})
    pins.update(literal_pins())
    return pins


def app_written_files(basetemp: Path | None) -> list[Path]:
    files: set[Path] = set((REPO / "screenshots").glob("*.svg")) | set((TESTS_DIR / "__snapshots__").rglob("*.svg"))
    if basetemp is not None and basetemp.is_dir():
        for home in basetemp.glob("home*"):  # every test's XDG config/data/state/cache dirs
            if not home.is_symlink():  # pytest's "homecurrent" points at the newest one again
                files.update(home.rglob("*"))
        files.update((basetemp / "locks").rglob("*"))
        # An audit file or a ticket report a test pointed elsewhere (KAZTOKEN_HELPDESK_AUDIT, scan --report).
        files.update(path for pattern in ("*.jsonl", "*.md") for path in basetemp.rglob(pattern))
    return sorted(path for path in files if path.is_file() and not path.is_symlink())


def _forms(pin: str) -> set[bytes]:
    """The PIN as it would stand in a text file, a JSON line, or an SVG/HTML screenshot."""
    return {
        form.encode("utf-8")
        for form in (pin, html.escape(pin), json.dumps(pin)[1:-1], json.dumps(pin, ensure_ascii=False)[1:-1])
    }


def pins_written(basetemp: Path | None, pins: dict[str, str] | None = None) -> list[tuple[Path, str]]:
    """(file, where the PIN comes from) for every PIN found in an app-written file; never the PIN itself.

    A PIN counts only as a whole word (not inside a longer run of letters and digits): a serial such as
    0000000000000000 is not the PIN 00000000, but `pin=00000000` or `"00000000"` is.
    """
    pins = all_pins() if pins is None else pins
    patterns = [
        (re.compile(rb"(?<![A-Za-z0-9])" + re.escape(form) + rb"(?![A-Za-z0-9])"), origin)
        for pin, origin in pins.items()
        for form in _forms(pin)
    ]
    leaks = []
    for path in app_written_files(basetemp):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        leaks += [(path, origin) for pattern, origin in patterns if pattern.search(data)]
    return sorted(set(leaks))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    basetemp = _SESSION.get("basetemp")
    if basetemp is None:
        return  # no test ran (collection only)
    leaks = pins_written(basetemp)
    if not leaks:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    write = reporter.write_line if reporter is not None else print
    write("")
    write("A PIN used by the tests was found in a file the app wrote:")
    for path, origin in leaks:
        write(f"  {path}: the PIN from {origin}")
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


class MemoryKeyring(KeyringBackend):
    """A real keyring backend that keeps its secrets in this process only (a desktop keyring's stand-in)."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.secrets.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.secrets[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.secrets.pop((service, username), None)


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)
