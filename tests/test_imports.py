"""`scan` stays light: it imports neither Textual nor the training lab (measured with -X importtime), nor
python-pkcs11 (the actions' layer), nor Prometheus' client (unless --metrics), nor cryptography before a child
reads a library (it is imported while the children read, to parse the certificates they send: here there is no
library to read)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_scan_imports_no_textual_and_no_lab(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tui.cli", "scan", "--json", "--module", str(tmp_path / "none.so")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert imported, result.stderr[-500:]
    assert not {name for name in imported if name.split(".")[0] == "textual"}
    assert "core.lab" not in imported and "tui.app" not in imported
    assert not {name for name in imported if name.split(".")[0] in ("pkcs11", "cryptography", "asn1crypto")}
    # Only with --metrics: prometheus_client brings http.server and ssl.
    assert "prometheus_client" not in imported and "core.metrics" not in imported
    # The text report's and the audit trail's code: neither is needed to print --json.
    assert "core.report" not in imported and "core.audit" not in imported
    # Its library hosts are forked and talked to without multiprocessing (core.host_process), the smart-card
    # service's socket is asked only when a PC/SC library sees nothing.
    assert "multiprocessing" not in imported and "socket" not in imported


PROBE = """
import gc, sys, tui.entry
sys.argv = ["kaztoken-helpdesk", *sys.argv[1:]]
status = tui.entry.run()
print("ran on:", status, "collector", gc.isenabled(), file=sys.stderr)
"""


def test_scan_ends_at_once_with_its_status_and_all_its_output(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """tui.entry: `scan` leaves without the interpreter's teardown (nothing after it runs), its output whole and
    its status kept (1: the library named cannot be loaded is an error finding)."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "scan", "--json", "--module", str(tmp_path / "none.so")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr[-500:]
    assert result.stdout.endswith("}\n") and '"summary"' in result.stdout
    assert "ran on" not in result.stderr


def test_other_commands_run_on_with_the_collector(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The console and the actions run on: the collector is on again once the command has started."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "audit", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KAZTOKEN_HELPDESK_AUDIT": str(tmp_path / "audit.jsonl")},
    )
    assert "ran on: 0 collector True" in result.stderr, result.stderr[-500:]


def test_no_module_of_core_or_tui_is_over_600_lines() -> None:
    """Small modules named for what they hold (issue 17): a module that grows past this is split by
    responsibility, not left to grow."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    sizes = {
        path: len(path.read_text(encoding="utf-8").splitlines())
        for package in ("core", "tui")
        for path in (root / package).rglob("*.py")
    }
    assert not {str(path.relative_to(root)): size for path, size in sizes.items() if size > 600}
