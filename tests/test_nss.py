"""NSS's software token (Debian `libnss3`: libsoftokn3.so) on a database of the test (`certutil -N`).

Its C_Initialize wants initialisation arguments naming the database (without them: CKR_ARGUMENTS_BAD). The
console does not pass any, so the library is reported with the remedy that fits NSS, never a crash, never
"start pkcsslotd"; and the remedy itself is checked: through p11-kit's proxy, with the database named in the
module file's `x-init-reserved:`, the tokens are there. Discovery passes a registry entry's `x-init-reserved`
to C_Initialize as p11-kit does, so the softoken registered that way is read directly too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from core.remedies import REMEDY_NSS
from core.scan import Workstation
from tests.p11kit import PROXY_MODULE, needs_p11kit_modules, needs_private_registry, run_cli, run_with_registry

SOFTOKEN = Path("/usr/lib/x86_64-linux-gnu/libsoftokn3.so")

pytestmark = pytest.mark.skipif(
    not SOFTOKEN.exists() or shutil.which("certutil") is None, reason="Debian's libnss3 and libnss3-tools are needed"
)


@pytest.fixture
def nss_db(tmp_path: Path) -> Path:
    """A fresh NSS database with an empty password, made by NSS's own tool."""
    directory = tmp_path / "nssdb"
    directory.mkdir()
    subprocess.run(
        ["certutil", "-N", "-d", f"sql:{directory}", "--empty-password"], check=True, capture_output=True, timeout=60
    )
    return directory


def test_softoken_alone_gets_the_nss_remedy() -> None:
    done = run_cli("scan", "--json", "--module", str(SOFTOKEN))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    document = json.loads(done.stdout)
    (module,) = document["modules"]
    assert module["found"] and not module["loaded"] and module["skipped"] is None
    assert "ArgumentsBad" in module["error"] or "ARGUMENTS_BAD" in module["error"]
    assert module["remedy"] == REMEDY_NSS
    assert "initialisation arguments" in module["remedy"] and "pkcsslotd" not in done.stdout
    assert "None" not in done.stdout
    text = run_cli("scan", "--explain", "--module", str(SOFTOKEN))
    assert text.returncode == 1 and "Traceback" not in text.stderr
    assert "x-init-reserved" in text.stdout and "pkcsslotd" not in text.stdout and "None" not in text.stdout


@needs_p11kit_modules
def test_softoken_through_p11kit_as_the_remedy_says(nss_db: Path, tmp_path: Path) -> None:
    needs_private_registry()
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "nss.module").write_text(f"module: {SOFTOKEN}\nx-init-reserved: configdir=sql:{nss_db}\n")
    done = run_with_registry(registry, "scan", "--json", "--module", str(PROXY_MODULE))
    assert "Traceback" not in done.stderr and done.returncode in (0, 1), done.stderr
    document = json.loads(done.stdout)
    assert "NSS Certificate DB" in [token["label"] for token in document["tokens"]]


def test_registered_softoken_is_initialised_with_its_registry_arguments(nss_db: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "nss.module").write_text(f"module: {SOFTOKEN}\nx-init-reserved: configdir=sql:{nss_db}\n")
    workstation = Workstation(environ={}, registries=[registry], library_dirs=[])
    try:
        result = workstation.scan()
    finally:
        workstation.close()
    (module,) = result.modules
    assert module.loaded and module.error is None and module.manufacturer == "Mozilla Foundation"
    assert "NSS Certificate DB" in [token.snapshot.label for token in result.tokens]
    assert all(not token.snapshot.kaztoken for token in result.tokens)  # the browser's store, not a KAZTOKEN
