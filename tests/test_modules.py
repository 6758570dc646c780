"""Module discovery, loading and the workstation findings, on real libraries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import load_config
from core.modules import ModuleCandidate, discover, parse_p11kit_registry, report_from_read
from core.scan import Workstation, scan
from tests.tokens import SOFTHSM_MODULE, SoftHSM

NOT_PKCS11 = next(
    p for p in ("/usr/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1") if Path(p).exists()
)


def test_option_beats_environment_beats_config() -> None:
    env = {"KAZTOKEN_HELPDESK_MODULE": "/env/a.so:/env/b.so"}
    assert [(c.path, c.source) for c in discover(["/opt/x.so"], environ=env, config_modules=["/cfg.so"])] == [
        ("/opt/x.so", "option")
    ]
    assert [c.path for c in discover([], environ=env, config_modules=["/cfg.so"])] == ["/env/a.so", "/env/b.so"]
    assert [(c.path, c.source) for c in discover([], environ={}, config_modules=["/cfg.so"])] == [("/cfg.so", "config")]


def test_machine_search_reads_p11kit_then_well_known_names_once_each(tmp_path: Path) -> None:
    registry = tmp_path / "modules"
    registry.mkdir()
    libs = tmp_path / "lib"
    libs.mkdir()
    for name in ("librtpkcs11ecp.so", "opensc-pkcs11.so"):
        (libs / name).write_bytes(b"")
    (registry / "opensc.module").write_text("# comment\nmodule: opensc-pkcs11.so\n")
    (registry / "off.module").write_text("module: /nowhere.so\ndisable-in: kaztoken-helpdesk\n")
    found = discover([], environ={}, registries=[registry], module_dirs=[libs], library_dirs=[libs])
    assert [(Path(c.path).name, c.source, c.skipped is not None) for c in found] == [
        ("nowhere.so", "p11-kit", True),  # reported as skipped, never loaded
        ("opensc-pkcs11.so", "p11-kit", False),  # found through the registry, not listed again as a well-known name
        ("librtpkcs11ecp.so", "well-known", False),
    ]


def test_p11kit_registry_parsing() -> None:
    assert parse_p11kit_registry("module: /usr/lib/x.so\n") == {"module": "/usr/lib/x.so"}
    assert parse_p11kit_registry("# module: /no.so\n  # x: y\n") == {}
    assert parse_p11kit_registry("module: a.so\nenable-in:\n") == {"module": "a.so", "enable-in": ""}


def test_missing_driver(tmp_path: Path) -> None:
    result = scan([str(tmp_path / "libkztpkcs11.so")])
    (report,) = result.modules
    assert not report.found and not report.loaded and report.driver and report.remedy
    assert [f.code for f in result.findings] == ["driver-missing"]
    assert str(tmp_path) in result.findings[0].explanation


def test_machine_without_any_driver_is_driver_missing(tmp_path: Path) -> None:
    workstation = Workstation(environ={}, registries=[], library_dirs=[tmp_path])
    assert workstation.reports == []
    assert [f.code for f in workstation.scan().findings] == ["driver-missing"]


def test_library_that_is_not_pkcs11_is_driver_broken_not_a_crash() -> None:
    result = scan([NOT_PKCS11])
    (report,) = result.modules
    assert report.found and not report.loaded
    assert "C_GetFunctionList" in (report.error or "")
    assert [f.code for f in result.findings] == ["driver-broken"]


def test_text_file_as_module_is_driver_broken(tmp_path: Path) -> None:
    fake = tmp_path / "libkztpkcs11.so"
    fake.write_text("not a library")
    assert [f.code for f in scan([str(fake)]).findings] == ["driver-broken"]


def test_rutoken_family_names_are_the_driver() -> None:
    assert report_from_read(ModuleCandidate("/nowhere/librtpkcs11ecp.so", "well-known"), None).driver
    assert not report_from_read(ModuleCandidate("/nowhere/opensc-pkcs11.so", "well-known"), None).driver


def test_loaded_module_report(softhsm: SoftHSM) -> None:
    softhsm.init_token("A")
    (report,) = scan([SOFTHSM_MODULE]).modules
    assert report.loaded and report.found and report.driver and report.source == "option"
    assert report.manufacturer == "SoftHSM" and report.library_version and report.cryptoki_version
    assert not report.vendor_extension  # only the Rutoken family exports C_EX_GetTokenInfoExtended


def test_config_file_names_the_module(softhsm: SoftHSM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    softhsm.init_token("CONFIGURED")
    config = tmp_path / "config.toml"
    config.write_text(f'modules = ["{SOFTHSM_MODULE}"]\n')
    monkeypatch.setenv("KAZTOKEN_HELPDESK_CONFIG", str(config))
    result = scan()
    assert [(m.path, m.source) for m in result.modules] == [(SOFTHSM_MODULE, "config")]
    assert [t.snapshot.label for t in result.tokens] == ["CONFIGURED"]


def test_corrupt_config_is_a_finding_and_defaults_are_used(
    softhsm: SoftHSM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    softhsm.init_token("STILL-SEEN")
    config = tmp_path / "config.toml"
    config.write_text("modules = [unclosed\n")
    monkeypatch.setenv("KAZTOKEN_HELPDESK_CONFIG", str(config))
    assert load_config().error
    result = scan([SOFTHSM_MODULE])
    assert [f.code for f in result.findings] == ["config-broken"]
    assert [t.snapshot.label for t in result.tokens] == ["STILL-SEEN"]
    config.write_text('modules = "x"\nbogus = 1\n')
    assert "unknown setting" in (load_config().error or "")
    config.write_text('remember_admin_pins = "yes"\n')
    assert "true or false" in (load_config().error or "")
    config.write_text("remember_admin_pins = true\n")
    assert load_config().config.remember_admin_pins is True


def test_cli_reports_missing_driver_in_json_with_exit_1(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "scan", "--json", "--module", str(tmp_path / "x.so")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and not out.stderr
    document = json.loads(out.stdout)
    assert [f["code"] for f in document["findings"]] == ["driver-missing"]
    assert document["tokens"] == [] and document["modules"][0]["found"] is False


def test_cli_usage_error_is_exit_2() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "scan", "--no-such-option"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "usage" in out.stderr


def test_scan_does_not_import_textual() -> None:
    code = (
        "import sys; from tui.cli import main; main(['scan', '--module', '/nowhere.so']); "
        "print('textual' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().endswith("False")


def test_opencryptoki_let_go_and_taken_again_closes_nothing_of_ours() -> None:
    """openCryptoki 3.8 closes, at each C_Finalize after the first, a descriptor number it used at C_Initialize,
    whoever holds it by then. The lab console lets go of the library and takes it again around each trainer
    reset: files opened meanwhile (the event loop's epoll, in real life) must survive. In a fresh process."""
    from tests import ock

    if (reason := ock.unavailable_reason()) is not None:
        pytest.skip(reason)
    script = (
        "import os, sys\n"
        "from core.scan import Workstation\n"
        "module = Workstation([sys.argv[1]]).modules[0]\n"
        "ours = []\n"
        "for _ in range(4):\n"
        "    module.finalize()\n"
        "    ours += os.pipe()\n"
        "    module.initialize()\n"
        "module.finalize()\n"
        "closed = []\n"
        "for number in ours:\n"
        "    try:\n"
        "        os.fstat(number)\n"
        "    except OSError:\n"
        "        closed.append(number)\n"
        "print('closed', closed)\n"
    )
    with ock.exclusive_here():
        out = subprocess.run(
            [sys.executable, "-c", script, ock.OCK_MODULE], capture_output=True, text=True, timeout=60, check=True
        )
    assert out.stdout.strip() == "closed []", out.stdout + out.stderr
