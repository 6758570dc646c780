from __future__ import annotations

import ast
import dis
import html
import inspect
import io
import json
import os
import re
import sys
import tokenize
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import CodeType, FunctionType, ModuleType

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


# --- Test groups: what a test needs (issue 17) --------------------------------------------------------------------
# Every test gets one or more group markers from what it reaches: its fixtures, and the helpers, classes and
# modules its code (and its fixtures' code, and the tests/ helpers those call) loads by name. So a new test file
# is grouped without anyone remembering to mark it; a module may still add `pytestmark = pytest.mark.<group>`
# where none of that tells. Groups overlap (a console test on SoftHSM2 is both); `pure` is a test that needs
# none of the others. `root` is an extra need: without root those tests are skipped, with the reason.
# The markers themselves are declared in pyproject.toml ([tool.pytest.ini_options] markers, --strict-markers).

GROUPS = ("pure", "console", "softhsm", "opencryptoki", "stacks", "e2e")
NEEDS_ROOT = "root"

# By fixture name (fixtures from plugins, whose code is not ours to read).
_BY_FIXTURE = {"softhsm": {"softhsm"}, "snap_compare": {"console"}, "tmux": {"e2e"}}
# By module: anything defined in it, or the module itself, reached by a test.
_BY_MODULE = {
    "tests.ock": {"opencryptoki", NEEDS_ROOT},  # a factory reset restarts pkcsslotd and removes its files
    "tests.pcsc": {"stacks", NEEDS_ROOT},  # a private pcscd in a mount namespace over /run
    "tests.piv_card": {"stacks"},
    "tests.p11kit": {"stacks"},
    "tests.tpm2": {"stacks"},
    "tests.servers": {"stacks"},
    "tests.tokens": set(),  # certificates and PIN constants need nothing; SoftHSM below does
    "core.simulator": {"softhsm"},  # the simulated KAZTOKEN keeps its objects in SoftHSM2
}
# By the object's module and name, finer than its module.
_BY_NAME = {
    ("tests.tokens", "SoftHSM"): {"softhsm"},
    ("tests.p11kit", "needs_private_registry"): {NEEDS_ROOT},  # a mount namespace over p11-kit's registry
    ("tests.p11kit", "run_with_registry"): {NEEDS_ROOT},
    ("tests.p11kit", "private_namespaces"): {NEEDS_ROOT},
}
_BY_ATTRIBUTE = {"run_test": {"console"}}  # App.run_test: Textual's Pilot
_ROOT_WORD = re.compile(r"\broot\b")
# A skip for a missing package (or daemon, or tool): the test needs more than Python.
_MISSING_WORDS = re.compile(r"\b(installed|needed|unavailable|missing|not found)\b")


def _value_needs(value: object) -> set[str]:
    """A library named by its path, handed to a scan, the CLI or a subprocess."""
    if not isinstance(value, str | os.PathLike):
        return set()
    path = os.fspath(value)
    if not isinstance(path, str):
        return set()
    if path == SOFTHSM_MODULE:
        return {"softhsm"}
    if path.startswith("/usr/") and ".so" in path and os.path.exists(path):  # another library (not a made-up path)
        return {"stacks"}
    return set()


def _code_objects(code: CodeType) -> Iterator[CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _code_objects(const)


def _function_of(obj: object) -> FunctionType | None:
    """The plain function under decorators (functools.wraps, Hypothesis' @given), or None."""
    inner = getattr(getattr(obj, "hypothesis", None), "inner_test", None)
    obj = inspect.unwrap(inner or obj)  # type: ignore[arg-type]
    obj = getattr(obj, "__func__", obj)  # a bound method
    return obj if isinstance(obj, FunctionType) else None


def _own(obj: object) -> bool:
    """Defined in this suite's modules, so worth reading further (not this file: its fixtures are known by name
    above, and the grouping must not find itself)."""
    module = getattr(obj, "__module__", None) or ""
    return module.startswith("tests.") and module != __name__


def needs_of(roots: Iterable[object]) -> set[str]:
    """The groups (and `root`) that these functions need, following the suite's own helpers they load by name."""
    needs: set[str] = set()
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        obj = todo.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, ModuleType):
            needs |= _BY_MODULE.get(obj.__name__, set())
            continue
        if isinstance(obj, str | os.PathLike):
            needs |= _value_needs(obj)
            continue
        module = getattr(obj, "__module__", None)
        if isinstance(module, str):
            needs |= _BY_MODULE.get(module, set()) | _BY_NAME.get((module, getattr(obj, "__qualname__", "")), set())
        if isinstance(obj, type):
            if _own(obj):
                todo.extend(vars(obj).values())
            continue
        if isinstance(obj, property):
            todo.extend(f for f in (obj.fget, obj.fset) if f is not None)
            continue
        function = _function_of(obj)
        if function is None or not _own(function):
            continue
        for code in _code_objects(function.__code__):
            imported = ""
            for instruction in dis.get_instructions(code):
                name = instruction.argval
                if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME") and name in function.__globals__:
                    todo.append(function.__globals__[name])
                elif instruction.opname in ("LOAD_ATTR", "LOAD_METHOD"):
                    needs |= _BY_ATTRIBUTE.get(name, set())
                elif instruction.opname == "LOAD_CONST":
                    needs |= _value_needs(name)
                elif instruction.opname == "IMPORT_NAME":  # an import inside the function: by name, not run
                    imported = name
                    todo.append(sys.modules.get(name))
                    needs |= _BY_MODULE.get(name, set())
                elif instruction.opname == "IMPORT_FROM":
                    todo.append(getattr(sys.modules.get(imported), name, None))
                    needs |= _BY_MODULE.get(f"{imported}.{name}", set()) | _BY_NAME.get((imported, name), set())
    return needs


def item_needs(item: pytest.Item) -> set[str]:
    """What one collected test needs: its own group markers, its fixtures, its code and theirs, its skips."""
    needs = {mark.name for mark in item.iter_markers()} & {*GROUPS, NEEDS_ROOT}
    roots: list[object] = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)  # pytest's own record of the fixtures (and theirs) the test uses
    for name in getattr(item, "fixturenames", ()):
        needs |= _BY_FIXTURE.get(name, set())
        for definition in info.name2fixturedefs.get(name, ()) if info is not None else ():
            if _own(definition.func):
                roots.append(definition.func)
    needs |= needs_of(roots)
    for mark in item.iter_markers("skipif"):
        reason = str(mark.kwargs.get("reason", ""))
        if _ROOT_WORD.search(reason):
            needs.add(NEEDS_ROOT)
        if _MISSING_WORDS.search(reason) and not needs & {"softhsm", "opencryptoki", "stacks", "e2e"}:
            needs.add("stacks")  # skipped when a package is missing: it uses that package
    if not needs:
        needs.add("pure")  # needs nothing but Python: runs for anyone, anywhere
    return needs


COLLECTED = pytest.StashKey[dict[str, set[str]]]()  # every collected test's markers, before -m and -k select


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    collected = config.stash.setdefault(COLLECTED, {})
    for item in items:
        marked = {mark.name for mark in item.iter_markers()}
        needs = item_needs(item)
        for name in sorted(needs - marked):
            item.add_marker(name)
        collected[item.nodeid] = marked | needs
        if NEEDS_ROOT in needs and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason=root_reason(needs)))


def root_reason(needs: set[str]) -> str:
    if "opencryptoki" in needs:
        why = "openCryptoki's soft token is reset to its factory state, which restarts pkcsslotd"
    elif "stacks" in needs:
        why = "the stack runs in a mount namespace of its own (a private pcscd or p11-kit registry)"
    else:
        why = "it mounts a file system or makes OS users"
    return f"needs root: {why} (-m 'not root' leaves it out)"


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
