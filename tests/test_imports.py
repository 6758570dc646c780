"""`scan` stays light: it imports neither Textual nor the training lab (measured with -X importtime), nor what
only its children or the actions use: python-pkcs11 (the actions) and cryptography (the children that read a
library parse the certificates)."""

from __future__ import annotations

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
