"""A PKCS#11 library that hangs, crashes, answers nonsense or prints over the terminal never takes the tool down.

The libraries are small C stubs (tests/stubs/hostile.c) compiled here with gcc; HOSTILE_MODE picks the
misbehaviour. They are handed to the real `scan` command with --module, never registered anywhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tokens import SOFTHSM_MODULE, SoftHSM

STUB = Path(__file__).with_name("stubs") / "hostile.c"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> str:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the hostile library")
    library = tmp_path_factory.mktemp("stub") / "libhostile.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(library), str(STUB)], check=True, timeout=120)
    return str(library)


def scan(*modules: str, mode: str, timeout: int = 3, json_output: bool = True) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "tui.cli", "scan", "--library-timeout", str(timeout)]
    for module in modules:
        args += ["--module", module]
    if json_output:
        args.append("--json")
    env = {**os.environ, "HOSTILE_MODE": mode}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize(
    ("mode", "code", "call"),
    [
        ("hang-initialize", "driver-hangs", "C_Initialize"),
        ("hang-slotlist", "driver-hangs", "C_GetSlotList"),
        ("hang-tokeninfo", "driver-hangs", "C_GetTokenInfo"),
        ("segv-tokeninfo", "driver-crashed", "C_GetTokenInfo"),
        ("abort-slotlist", "driver-crashed", "C_GetSlotList"),
    ],
)
def test_hang_or_crash_is_a_finding_naming_the_call(hostile: str, mode: str, code: str, call: str) -> None:
    result = scan(hostile, mode=mode)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    document = json.loads(result.stdout)
    (finding,) = [f for f in document["findings"] if f["code"] == code]
    assert hostile in finding["explanation"] and call in finding["explanation"]
    (module,) = document["modules"]
    assert module["failure"]["call"] == call
    assert module["failure"]["kind"] == ("hang" if code == "driver-hangs" else "crash")


def test_a_hanging_library_does_not_hide_the_others(hostile: str, softhsm: SoftHSM) -> None:
    softhsm.init_token("IVANOV")
    result = scan(hostile, SOFTHSM_MODULE, mode="hang-tokeninfo")
    document = json.loads(result.stdout)
    assert [token["label"] for token in document["tokens"]] == ["IVANOV"]
    assert "driver-hangs" in {f["code"] for f in document["findings"]}


def test_null_function_list_and_failing_initialize_are_reported(hostile: str) -> None:
    for mode, text in (("null-list", "C_GetFunctionList"), ("fail-initialize", "CKR_GENERAL_ERROR")):
        result = scan(hostile, mode=mode)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        (module,) = json.loads(result.stdout)["modules"]
        assert not module["loaded"] and text in module["error"]
        assert "None" not in module["error"] and "None" not in (module["remedy"] or "")


def test_the_library_output_never_reaches_the_terminal(hostile: str) -> None:
    result = scan(hostile, mode="noisy", json_output=False)
    assert result.returncode == 0, result.stdout
    assert "\x1b" not in result.stdout + result.stderr
    assert "TCTI" not in result.stdout + result.stderr
    document = json.loads(scan(hostile, mode="noisy").stdout)
    assert "TCTI error" in document["modules"][0]["output"]  # kept for the details, as data


def test_a_token_of_another_kind_is_named_by_what_it_is(hostile: str) -> None:
    document = json.loads(scan(hostile, mode="ok").stdout)
    (token,) = document["tokens"]
    assert token["device"] == "Hostile Stub" and not token["kaztoken"]
    assert "not-a-kaztoken" in {f["code"] for f in token["findings"]}
    assert re.fullmatch(r"[0-9a-f]{12}", token["token_id"])


def test_ctrl_c_ends_a_hanging_scan_with_130(hostile: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "scan", "--module", hostile],
        env={**os.environ, "HOSTILE_MODE": "hang-initialize"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)  # let it reach the library; the limit is 30 s, far away
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=20)
    assert process.returncode == 130 and "Traceback" not in err
    # the child that hung is gone too: no process still has the library loaded
    leftover = subprocess.run(["pgrep", "-f", "hostile"], capture_output=True, text=True).stdout.split()
    assert str(process.pid) not in leftover


def test_spare_slot_is_not_a_token(softhsm: SoftHSM) -> None:
    softhsm.init_token("IVANOV")  # SoftHSM2 then offers one more, empty slot for the next token
    result = subprocess.run(
        [sys.executable, "-m", "tui.cli", "scan", "--json", "--module", SOFTHSM_MODULE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    document = json.loads(result.stdout)
    assert [token["label"] for token in document["tokens"]] == ["IVANOV"]
    assert document["readers"] == []


def test_a_read_begun_early_is_the_first_scan(softhsm: SoftHSM) -> None:
    """The console begins its first read before it imports Textual (Workstation.begin): the first scan takes that
    read's answers, full whatever it asks, its certificates parsed here; the polls go on from it."""
    from core.certificates import CertificateInfo
    from core.scan import Workstation

    serial = softhsm.init_token("IVANOV")
    softhsm.profile(serial, "01", days_valid=365)
    workstation = Workstation([SOFTHSM_MODULE])
    try:
        workstation.begin()
        first = workstation.scan(refresh=True)
        assert [token.snapshot.label for token in first.tokens] == ["IVANOV"]
        (certificate,) = first.tokens[0].snapshot.certificates
        assert isinstance(certificate, CertificateInfo) and certificate.problem is None and certificate.days_left
        polled = workstation.scan(refresh=True)
        assert [token.snapshot.certificates for token in polled.tokens] == [(certificate,)]
    finally:
        workstation.close()


def test_another_device_gets_no_kaztoken_advice() -> None:
    """The OS trust store is no customer's token: what it is, and not «re-enrol» for 140 CA certificates."""
    trust = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-trust.so"
    if not os.path.exists(trust):
        pytest.skip("p11-kit-modules is not installed")
    result = subprocess.run(
        [sys.executable, "-m", "tui.cli", "scan", "--json", "--module", trust],
        capture_output=True,
        text=True,
        timeout=120,
    )
    document = json.loads(result.stdout)
    codes = {finding["code"] for token in document["tokens"] for finding in token["findings"]}
    assert codes == {"not-a-kaztoken"} and result.returncode == 0
