"""p11-kit on its real Debian modules (`p11-kit-modules`): the registry's `enable-in`, `disable-in` and
`trust-policy` honoured by discovery; the trust module (the OS trust store, with NSS's vendor-defined object
classes) scanned without a crash; the proxy over SoftHSM2 tokens of the test, an action included.

Registries are the test's own: a directory handed to discovery, or, for the real command and p11-kit's
proxy, a private mount namespace (tests/p11kit.py) that no other process sees.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from core.modules import PROGRAM_NAME, discover, p11kit_skip_reason
from core.scan import Workstation
from tests.conftest import used_pin
from tests.p11kit import (
    PKCS11_DIR,
    PROXY_MODULE,
    TRUST_MODULE,
    needs_p11kit_modules,
    needs_private_registry,
    run_cli,
    run_with_registry,
    trust_registry_entry,
)
from tests.tokens import SOFTHSM_MODULE, USER_PIN, SoftHSM
from tests.tui_helpers import first_scan, run, screen_text
from tui.app import HelpdeskApp
from tui.render import workstation_body

NEW_PIN = used_pin("Proxy7Kaz")


def registry(tmp_path: Path, **entries: str) -> Path:
    """A p11-kit registry directory of this test: NAME.module files with these texts."""
    directory = tmp_path / "registry"
    directory.mkdir(exist_ok=True)
    for name, text in entries.items():
        (directory / f"{name}.module").write_text(text)
    return directory


def skipped(options: dict[str, str]) -> bool:
    return p11kit_skip_reason(options) is not None


# --- the registry's options, as p11-kit reads them -------------------------------------------------------------


def test_enable_in_loads_only_in_the_programs_it_names() -> None:
    assert PROGRAM_NAME == "kaztoken-helpdesk"
    for listed in (
        "kaztoken-helpdesk",
        "firefox, kaztoken-helpdesk",
        "firefox,kaztoken-helpdesk",
        " firefox\tkaztoken-helpdesk ",
    ):
        assert not skipped({"enable-in": listed}), listed
    # Names compare whole, never as a part of another name; an empty list enables it nowhere.
    for listed in ("", "firefox", "kaztoken-helpdesk-beta", "xkaztoken-helpdesk", "kaztoken"):
        assert skipped({"enable-in": listed}), listed


def test_disable_in_skips_only_in_the_programs_it_names() -> None:
    assert skipped({"disable-in": "kaztoken-helpdesk"})
    assert skipped({"disable-in": "firefox,kaztoken-helpdesk"})
    for listed in ("", "firefox", "p11-kit-proxy", "kaztoken-helpdesk-beta", "*"):  # p11-kit has no wildcard
        assert not skipped({"disable-in": listed}), listed


def test_enable_in_decides_when_both_are_set() -> None:
    assert not skipped({"enable-in": "kaztoken-helpdesk", "disable-in": "kaztoken-helpdesk"})
    assert skipped({"enable-in": "firefox", "disable-in": "gnome-shell"})


def test_trust_policy_marks_the_os_trust_store() -> None:
    why = p11kit_skip_reason({"module": "p11-kit-trust.so", "trust-policy": "yes"})
    assert why is not None and "trust store" in why.english
    assert not skipped({"trust-policy": "no"})
    assert not skipped({"trust-policy": "Yes"})  # p11-kit's booleans are exactly "yes" or "no"


def test_etc_overrides_the_package_registry_key_by_key(tmp_path: Path) -> None:
    package, system = tmp_path / "share", tmp_path / "etc"
    package.mkdir()
    system.mkdir()
    (package / "opensc.module").write_text("module: opensc-pkcs11.so\n")
    (system / "opensc.module").write_text("disable-in: kaztoken-helpdesk\n")  # the admin's override, no module:
    (package / "other.module").write_text("module: /lib/other.so\nenable-in: kaztoken-helpdesk\n")
    found = discover([], environ={}, registries=[package, system], module_dirs=[PKCS11_DIR], library_dirs=[])
    assert [(Path(c.path).name, c.skipped is not None) for c in found] == [
        ("opensc-pkcs11.so", True),
        ("other.so", False),
    ]


def test_registry_files_that_are_not_module_files_are_ignored(tmp_path: Path) -> None:
    directory = registry(tmp_path, good="module: /lib/good.so\n")
    (directory / "binary.module").write_bytes(b"\xff\xfe\x00\nmodule: /lib/\xff.so\n\x1b[2J")
    (directory / "huge.module").write_text("module: /lib/huge.so\n" + "#" * 70_000 + "\n")
    os.mkfifo(directory / "fifo.module")  # reading it would block the scan for good
    (directory / "dir.module").mkdir()
    found = discover([], environ={}, registries=[directory], module_dirs=[PKCS11_DIR], library_dirs=[])
    assert [Path(c.path).name for c in found] == ["\ufffd.so", "good.so"]  # binary junk is still just text


# --- the trust module: skipped by discovery, readable when named ------------------------------------------------


@needs_p11kit_modules
def test_discovery_skips_the_registered_trust_module_and_says_why(tmp_path: Path) -> None:
    workstation = Workstation(
        environ={}, registries=[registry(tmp_path, **{"p11-kit-trust": trust_registry_entry()})], library_dirs=[]
    )
    try:
        result = workstation.scan()
        assert workstation.modules == []  # never loaded, for actions either
    finally:
        workstation.close()
    (report,) = result.modules
    assert report.path == str(TRUST_MODULE) and report.found and not report.loaded and not report.driver
    assert report.error is None and report.remedy is None
    (document,) = result.to_dict()["modules"]
    assert "trust store" in document["skipped"] and document["error"] is None
    # Not a broken driver, not an error finding: only that no KAZTOKEN driver is installed.
    assert [f.code for f in result.findings] == ["driver-missing"]
    panel = workstation_body(result).plain
    assert str(TRUST_MODULE) in panel and "skipped" in panel and "trust store" in panel


@needs_p11kit_modules
def test_console_shows_the_skipped_trust_module_in_the_workstation_panel(tmp_path: Path) -> None:
    mine = registry(tmp_path, **{"p11-kit-trust": trust_registry_entry()})

    async def scenario() -> None:
        app = HelpdeskApp(scanner_factory=lambda: Workstation(environ={}, registries=[mine], library_dirs=[]))
        async with app.run_test(size=(80, 24)) as pilot:
            await first_scan(pilot)
            text = screen_text(app)
            assert str(TRUST_MODULE) in text and "skipped" in text and "trust store" in text
            assert "not loaded" not in text and "fails to load" not in text

    run(scenario())


@needs_p11kit_modules
def test_default_scan_with_the_trust_module_registered(softhsm: SoftHSM, tmp_path: Path) -> None:
    """The real command's own discovery, p11-kit's registry holding the trust module and the test's SoftHSM2."""
    needs_private_registry()
    softhsm.init_token("REGISTERED")
    mine = registry(
        tmp_path, **{"p11-kit-trust": trust_registry_entry(), "test-softhsm": f"module: {SOFTHSM_MODULE}\n"}
    )
    done = run_with_registry(mine, "scan", "--json")
    assert "Traceback" not in done.stderr and done.returncode in (0, 1), done.stderr
    document = json.loads(done.stdout)
    modules = {m["path"]: m for m in document["modules"]}
    trust = modules[str(TRUST_MODULE)]
    assert trust["source"] == "p11-kit" and not trust["loaded"] and "trust store" in trust["skipped"]
    assert [t["label"] for t in document["tokens"]] == ["REGISTERED"]
    assert not any(f["code"] == "driver-broken" and str(TRUST_MODULE) in f["explanation"] for f in document["findings"])
    text = run_with_registry(mine, "scan")
    line = next(line for line in text.stdout.splitlines() if str(TRUST_MODULE) in line)
    assert "skipped" in line and "trust store" in line and "None" not in text.stdout


@needs_p11kit_modules
def test_trust_module_named_is_scanned_as_what_it_is() -> None:
    """NSS vendor-defined object classes (0xCE534353…) are other objects, not a crash; «System Trust» is the
    OS trust store, not a KAZTOKEN."""
    done = run_cli("scan", "--json", "--module", str(TRUST_MODULE))
    assert "Traceback" not in done.stderr and done.returncode in (0, 1), done.stderr[-2000:]
    document = json.loads(done.stdout)
    (trust,) = [t for t in document["tokens"] if t["label"] == "System Trust"]
    assert "not-a-kaztoken" in [f["code"] for f in trust["findings"]]
    text = run_cli("scan", "--module", str(TRUST_MODULE))
    assert "Traceback" not in text.stderr and "System Trust" in text.stdout
    assert "KAZTOKEN «System Trust»" not in text.stdout


# --- the proxy over SoftHSM2 tokens of the test -----------------------------------------------------------------


@needs_p11kit_modules
def test_proxy_lists_the_tokens_and_changes_a_pin_through_them(softhsm: SoftHSM, tmp_path: Path) -> None:
    needs_private_registry()
    first = softhsm.init_token("PROXIED-A")
    second = softhsm.init_token("PROXIED-B")
    mine = registry(tmp_path, **{"test-softhsm": f"module: {SOFTHSM_MODULE}\n"})
    proxy = ("--module", str(PROXY_MODULE))

    done = run_with_registry(mine, "scan", "--json", *proxy)
    assert "Traceback" not in done.stderr, done.stderr
    document = json.loads(done.stdout)
    (module,) = document["modules"]
    assert module["loaded"] and module["error"] is None, module
    assert sorted((t["label"], t["serial"]) for t in document["tokens"]) == sorted(
        [("PROXIED-A", first), ("PROXIED-B", second)]
    )
    assert "slot list failed" not in done.stdout and "no-token" not in [f["code"] for f in document["findings"]]

    pins = f"{USER_PIN}\n{NEW_PIN}\n{NEW_PIN}\n"
    done = run_with_registry(mine, "change-pin", "--serial", first, "--pin-stdin", *proxy, stdin=pins)
    assert done.returncode == 0, done.stdout + done.stderr
    # Checked on the SoftHSM2 module itself, not through the proxy.
    assert softhsm.tool(first, "--login", "--pin", NEW_PIN, "-O", check=False).returncode == 0
    assert softhsm.tool(first, "--login", "--pin", USER_PIN, "-O", check=False).returncode != 0
    assert softhsm.tool(second, "--login", "--pin", USER_PIN, "-O", check=False).returncode == 0
