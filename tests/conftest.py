from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pkcs11
import pytest

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
    for var in ("KAZTOKEN_HELPDESK_MODULE", "KAZTOKEN_HELPDESK_CONFIG", "NO_COLOR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
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
