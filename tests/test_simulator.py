"""The simulated KAZTOKEN (simulator/kaztoken_sim.c): what it does, seen through OpenSC's pkcs11-tool (the
independent check), the vendor extension through ctypes, and the helpdesk's own commands and actions on it.

Every test has its own simulator directory (KAZTOKEN_SIM_DIR under tmp_path): tests run side by side.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pkcs11
import pytest

from core import actions, simulator
from core.ckr import (
    CKR_ARGUMENTS_BAD,
    CKR_DEVICE_REMOVED,
    CKR_OK,
    CKR_PIN_LOCKED,
    CKR_SESSION_HANDLE_INVALID,
    CKR_TOKEN_NOT_PRESENT,
)
from core.cryptoki import CKU_SO, CKU_USER, Cryptoki, CryptokiError
from core.cryptoki_structs import CK_TOKEN_INFO_EXTENDED
from core.flags import ExtendedFlag, SlotFlag
from core.report import pin_summary, snapshot_rows
from core.scan import Workstation
from tests.conftest import used_pin
from tests.tokens import SO_PIN, USER_PIN

REPO = Path(__file__).resolve().parent.parent
NEW_PIN = used_pin("Bayterek7x")
NEW_ADMIN_PIN = used_pin("Shymk3nt")
WRONG_PIN = used_pin("Wr0ngP1n")


@dataclass
class Sim:
    state: simulator.Simulator
    library: str

    def tool(self, slot: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["pkcs11-tool", "--module", self.library, "--slot", str(slot), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def token(self, label: str = "IVANOV", *, user_pin: str = USER_PIN, so_pin: str = SO_PIN, **settings: int) -> int:
        """A reader with an initialised token, made through the library by pkcs11-tool; returns its slot."""
        slot = self.state.add_reader(**settings)
        self.tool(slot, "--init-token", "--label", label, "--so-pin", so_pin)
        self.tool(slot, "--login", "--login-type", "so", "--so-pin", so_pin, "--init-pin", "--pin", user_pin)
        return slot

    def flags(self, slot: int) -> str:
        """The token flags line as pkcs11-tool prints it."""
        out = self.tool(slot, "-L").stdout
        block = next(b for b in re.split(r"^Slot ", out, flags=re.M)[1:] if b.startswith(f"{slot - 1} (0x{slot:x})"))
        return re.search(r"token flags\s+:\s+(.*)", block).group(1)

    def user_login(self, slot: int, pin: str) -> bool:
        return self.tool(slot, "--login", "--pin", pin, "-O", check=False).returncode == 0

    def so_login(self, slot: int, pin: str) -> bool:
        args = ("--login", "--login-type", "so", "--so-pin", pin, "--change-pin", "--new-pin", pin)
        return self.tool(slot, *args, check=False).returncode == 0

    def scan(self) -> dict:
        done = subprocess.run(
            [sys.executable, "-m", "tui.cli", "scan", "--json", "--module", self.library],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            check=False,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return json.loads(done.stdout)

    def scanned(self, slot: int) -> dict:
        return next(token for token in self.scan()["tokens"] if token["slot_id"] == slot)

    def cli(self, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tui.cli", *args, "--module", self.library],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            start_new_session=True,
            check=False,
        )


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sim]:
    library = str(simulator.library())
    state = simulator.Simulator(tmp_path / "sim").prepare()
    monkeypatch.setenv(simulator.DIR_ENV, str(state.root))
    yield Sim(state, library)
    # The library reads KAZTOKEN_SIM_DIR at C_Initialize: the next test's directory needs a fresh one.
    if library in pkcs11._loaded:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(simulator.DIR_ENV, str(state.root))
            pkcs11._loaded[library].finalize()


def lines(*pins: str) -> str:
    return "".join(f"{pin}\n" for pin in pins)


def codes(token: dict) -> list[str]:
    return [finding["code"] for finding in token["findings"]]


# --- slots, as readers -------------------------------------------------------------------------------------------


def test_readers_with_tokens_named_plainly_as_simulated(sim: Sim) -> None:
    first, second = sim.token("IVANOV"), sim.token("PETROV")
    blank = sim.state.add_reader()
    out = sim.tool(first, "-L").stdout
    assert out.count("KAZTOKEN simulated USB reader") == 3
    assert "token manufacturer : KAZTOKEN (simulated)" in out
    assert "uninitialized" in out  # the blank token, as pkcs11-tool says it
    raw = Cryptoki(sim.library)
    raw.initialize()
    for slot in (first, second, blank):
        assert raw.slot_info(slot).flags & (SlotFlag.REMOVABLE_DEVICE | SlotFlag.HW_SLOT | SlotFlag.TOKEN_PRESENT) == 7
    serials = {raw.token_info(slot).serial for slot in (first, second, blank)}
    assert len(serials) == 3
    result = sim.scan()
    assert {token["device"] for token in result["tokens"]} == {"KAZTOKEN"}
    assert all(token["kaztoken"] for token in result["tokens"])
    by_slot = {token["slot_id"]: token for token in result["tokens"]}
    assert "token-not-initialised" in codes(by_slot[blank])  # a blank token in a reader, not a spare slot
    raw.finalize()


# --- the vendor extension -----------------------------------------------------------------------------------------


def _extended(library: str, slot: int, size: int) -> tuple[int, CK_TOKEN_INFO_EXTENDED]:
    function = ctypes.CDLL(library).C_EX_GetTokenInfoExtended
    function.restype = ctypes.c_ulong
    function.argtypes = (ctypes.c_ulong, ctypes.c_void_p)
    info = CK_TOKEN_INFO_EXTENDED()
    ctypes.memset(ctypes.byref(info), 0xAB, ctypes.sizeof(info))
    info.ulSizeofThisStructure = size
    return function(slot, ctypes.byref(info)), info


def test_extended_info_size_negotiation(sim: Sim) -> None:
    slot = sim.token(user_max=5)
    raw = Cryptoki(sim.library)
    raw.initialize()
    full = ctypes.sizeof(CK_TOKEN_INFO_EXTENDED)
    old = CK_TOKEN_INFO_EXTENDED.ulTokenClass.offset + ctypes.sizeof(ctypes.c_ulong)
    rv, info = _extended(sim.library, slot, full)
    assert rv == CKR_OK
    assert (info.ulMaxUserRetryCount, info.ulUserRetryCountLeft) == (5, 5)
    assert (info.ulMaxAdminRetryCount, info.ulAdminRetryCountLeft) == (10, 10)
    assert info.ulBatteryFlags == 0  # written: the full structure is known
    rv, info = _extended(sim.library, slot, old)
    assert rv == CKR_OK
    assert info.ulUserRetryCountLeft == 5
    assert info.ulBatteryVoltage == int.from_bytes(b"\xab" * ctypes.sizeof(ctypes.c_ulong))  # past its size: untouched
    for unknown in (0, 8, old - 8, old + 8, full + 8):
        assert _extended(sim.library, slot, unknown)[0] == CKR_ARGUMENTS_BAD
    rv, _info = _extended(sim.library, 77, full)
    assert rv != CKR_OK  # no such reader
    raw.finalize()


def test_extended_flags_policy_and_factory_pins(sim: Sim) -> None:
    factory = sim.token("OMAROV")
    own = sim.token("SERIKOVA", user_pin=NEW_PIN, so_pin=NEW_ADMIN_PIN, policy=1)
    raw = Cryptoki(sim.library)
    raw.initialize()
    flags = raw.extended_token_info(factory).flags
    assert flags == ExtendedFlag.ADMIN_CHANGE_USER_PIN | ExtendedFlag.USER_CHANGE_USER_PIN
    flags = raw.extended_token_info(own).flags
    assert flags == (
        ExtendedFlag.ADMIN_CHANGE_USER_PIN | ExtendedFlag.ADMIN_PIN_NOT_DEFAULT | ExtendedFlag.USER_PIN_NOT_DEFAULT
    )
    raw.finalize()


# --- PIN counters: lockout, unblock, exact counts -----------------------------------------------------------------


def test_wrong_user_pins_lock_the_pin_then_the_admin_unblocks_it(sim: Sim) -> None:
    slot = sim.token(user_max=3)
    assert not sim.user_login(slot, WRONG_PIN)
    assert "user PIN count low" in sim.flags(slot)
    assert not sim.user_login(slot, WRONG_PIN)
    assert "final user PIN try" in sim.flags(slot)
    token = sim.scanned(slot)
    assert token["user_pin"]["tries_left"] == 1 and "user-pin-final-try" in codes(token)
    assert not sim.user_login(slot, WRONG_PIN)
    assert "user PIN locked" in sim.flags(slot)
    locked = sim.tool(slot, "--login", "--pin", USER_PIN, "-O", check=False)
    assert "CKR_PIN_LOCKED" in locked.stderr  # even the right PIN
    token = sim.scanned(slot)
    assert token["user_pin"] == {**token["user_pin"], "status": "locked", "tries_left": 0, "max_tries": 3}
    assert "user-pin-locked" in codes(token)

    done = sim.cli("unblock", "--serial", token["serial"], "--pin-stdin", stdin=lines(SO_PIN, NEW_PIN, NEW_PIN))
    assert done.returncode == 0, done.stderr
    assert "PIN-код успешно разблокирован" in done.stdout
    assert "locked" not in sim.flags(slot) and "count low" not in sim.flags(slot)
    assert sim.user_login(slot, NEW_PIN)
    assert not sim.user_login(slot, USER_PIN)
    assert sim.scanned(slot)["user_pin"]["tries_left"] == 2  # the wrong factory PIN just spent one


def test_a_locked_admin_pin_stays_locked(sim: Sim) -> None:
    slot = sim.token(so_max=2)
    assert not sim.so_login(slot, WRONG_PIN)
    assert "final SO PIN try" in sim.flags(slot)
    assert not sim.so_login(slot, WRONG_PIN)
    assert "SO PIN locked" in sim.flags(slot)
    assert not sim.so_login(slot, SO_PIN)
    init = sim.tool(slot, "--init-token", "--label", "NEW", "--so-pin", SO_PIN, check=False)
    assert init.returncode != 0 and "CKR_PIN_LOCKED" in init.stderr  # only good for replacement
    serial = sim.scanned(slot)["serial"]
    done = sim.cli("unblock", "--serial", serial, "--pin-stdin", stdin=lines(SO_PIN, NEW_PIN, NEW_PIN))
    assert done.returncode != 0
    token = sim.scanned(slot)
    assert token["so_pin"]["status"] == "locked" and "so-pin-locked" in codes(token)
    assert sim.user_login(slot, USER_PIN)  # the user PIN still works: the token still signs


def test_exact_counts_through_the_actions(sim: Sim) -> None:
    slot = sim.token(user_pin=NEW_PIN)
    workstation = Workstation([sim.library])
    try:
        serial = workstation.scan().tokens[0].snapshot.serial
        for _try in range(3):
            result = actions.change_pin(
                workstation.modules,
                serial,
                role=actions.Role.USER,
                current_pin=WRONG_PIN,
                new_pin="Qarag4ndyX",
                new_pin_again="Qarag4ndyX",
            )
            assert not result.ok
        after = result.pin_after
        assert after is not None and (after.tries_left, after.max_tries) == (7, 10)
        assert pin_summary(after) == "wrong PIN entered recently (7 of 10 tries left)"
        token = workstation.scan().tokens[0]
        assert token.snapshot.user_pin.tries_left == 7
        assert "user-pin-count-low" in [finding.code for finding in token.findings]
        # Another process sees the same counter.
        assert sim.scanned(slot)["user_pin"]["tries_left"] == 7
        assert sim.user_login(slot, NEW_PIN)
        assert workstation.scan().tokens[0].snapshot.user_pin.tries_left == 10
    finally:
        workstation.close()


def test_unblock_by_the_admin_resets_the_user_count(sim: Sim) -> None:
    slot = sim.token()
    raw = Cryptoki(sim.library)
    raw.initialize()
    session = raw.open_session(slot, rw=True)
    for _try in range(10):
        with pytest.raises(CryptokiError):
            raw.login(session, CKU_USER, WRONG_PIN)
    with pytest.raises(CryptokiError) as refused:
        raw.login(session, CKU_USER, USER_PIN)
    assert refused.value.rv == CKR_PIN_LOCKED
    raw.login(session, CKU_SO, SO_PIN)
    raw.init_pin(session, NEW_PIN)
    raw.logout(session)
    info = raw.extended_token_info(slot)
    assert (info.user_tries_left, info.user_max_tries) == (10, 10)
    assert info.flags & ExtendedFlag.USER_PIN_NOT_DEFAULT
    raw.login(session, CKU_USER, NEW_PIN)
    raw.logout(session)
    raw.close_session(session)
    raw.finalize()


# --- factory PINs -------------------------------------------------------------------------------------------------


def test_factory_pins_are_findings_until_changed(sim: Sim) -> None:
    slot = sim.token()
    token = sim.scanned(slot)
    assert {"user-pin-default", "so-pin-default"} <= set(codes(token))
    assert token["user_pin"]["default"] is True and token["so_pin"]["default"] is True
    assert "admin-change-user-pin" in token["extended_flags"]
    serial = token["serial"]
    done = sim.cli("change-pin", "--serial", serial, "--pin-stdin", stdin=lines(USER_PIN, NEW_PIN, NEW_PIN))
    assert done.returncode == 0, done.stderr
    token = sim.scanned(slot)
    assert "user-pin-default" not in codes(token) and "so-pin-default" in codes(token)
    done = sim.cli(
        "change-pin",
        "--serial",
        serial,
        "--role",
        "admin",
        "--pin-stdin",
        stdin=lines(SO_PIN, NEW_ADMIN_PIN, NEW_ADMIN_PIN),
    )
    assert done.returncode == 0, done.stderr
    token = sim.scanned(slot)
    assert not {"user-pin-default", "so-pin-default"} & set(codes(token))
    assert "user-pin-not-default" in token["extended_flags"]
    assert sim.user_login(slot, NEW_PIN)  # pkcs11-tool agrees the PIN changed
    # Setting the factory PIN again makes it default again: the flag follows the PIN, not the history.
    # (the helpdesk's rules refuse the factory PIN as a new one; pkcs11-tool does not ask)
    sim.tool(slot, "--login", "--pin", NEW_PIN, "--change-pin", "--new-pin", USER_PIN)
    assert "user-pin-default" in codes(sim.scanned(slot))


def test_details_show_the_pin_policy_and_factory_pins(sim: Sim) -> None:
    sim.token(user_pin=NEW_PIN, policy=1)
    workstation = Workstation([sim.library])
    try:
        rows = dict(snapshot_rows(workstation.scan().tokens[0].snapshot))
    finally:
        workstation.close()
    assert rows["User PIN changed by"] == "the admin only"
    assert rows["User PIN is"] == "changed from the factory default"
    assert rows["Admin PIN is"] == "the factory default"
    assert rows["User PIN"] == "ok (10 of 10 tries left)"


def test_no_pin_in_the_state_files(sim: Sim) -> None:
    slot = sim.token(user_pin=NEW_PIN, so_pin=NEW_ADMIN_PIN)
    sim.user_login(slot, WRONG_PIN)
    for path in sim.state.readers_dir.iterdir():
        text = path.read_text()
        for pin in (NEW_PIN, NEW_ADMIN_PIN, WRONG_PIN, USER_PIN, SO_PIN):
            assert pin not in text


# --- plugging in and out -----------------------------------------------------------------------------------------


def test_unplug_and_replug_seen_by_the_scan(sim: Sim) -> None:
    slot = sim.token()
    other = sim.token("PETROV")
    assert {token["slot_id"] for token in sim.scan()["tokens"]} == {slot, other}
    sim.state.unplug(slot)
    result = sim.scan()
    assert [token["slot_id"] for token in result["tokens"]] == [other]
    reader = next(reader for reader in result["readers"] if reader["slot_id"] == slot)
    assert reader["token_present"] is False and "removable-device" in reader["flags"]
    sim.state.plug(slot)
    assert {token["slot_id"] for token in sim.scan()["tokens"]} == {slot, other}


def test_sessions_end_when_the_token_is_pulled_out(sim: Sim) -> None:
    slot = sim.token()
    raw = Cryptoki(sim.library)
    raw.initialize()
    assert raw.poll_slot_event() is None
    session = raw.open_session(slot)
    sim.state.unplug(slot)
    with pytest.raises(CryptokiError) as gone:
        raw.find_objects(session)
    assert gone.value.rv == CKR_DEVICE_REMOVED
    with pytest.raises(CryptokiError) as again:
        raw.find_objects(session)
    assert again.value.rv == CKR_SESSION_HANDLE_INVALID
    with pytest.raises(CryptokiError) as absent:
        raw.token_info(slot)
    assert absent.value.rv == CKR_TOKEN_NOT_PRESENT
    assert slot in raw.slot_list() and slot not in raw.slot_list(token_present=True)
    assert raw.poll_slot_event() == slot
    assert raw.poll_slot_event() is None
    sim.state.plug(slot)
    assert raw.poll_slot_event() == slot
    with pytest.raises(CryptokiError):  # a session of the token before it was pulled out stays gone
        raw.find_objects(session)
    fresh = raw.open_session(slot)
    raw.find_objects(fresh)
    raw.close_session(fresh)
    raw.finalize()


@pytest.mark.parametrize("setting", ["reader", "environment"])
def test_key_generation_fails_when_the_token_is_pulled_out_while_it_waits(
    sim: Sim, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    # As slow as it likes (the reader's setting, or the environment's for every reader): the unplug ends it.
    if setting == "environment":
        monkeypatch.setenv(simulator.KEYGEN_DELAY_ENV, "600000")
        slot = sim.token()
    else:
        slot = sim.token(keygen_delay_ms=600_000)
    raw = Cryptoki(sim.library)
    raw.initialize()
    session = raw.open_session(slot, rw=True)
    raw.login(session, CKU_USER, USER_PIN)
    outcome: list[int] = []

    def generate() -> None:
        mechanism = (ctypes.c_ulong * 3)(0x0, 0, 0)  # CKM_RSA_PKCS_KEY_PAIR_GEN, no parameter
        function = raw._function(
            "C_GenerateKeyPair",
            ctypes.c_ulong,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_ulong,
            ctypes.c_void_p,
            ctypes.c_ulong,
            ctypes.c_void_p,
            ctypes.c_void_p,
        )
        public, private = ctypes.c_ulong(), ctypes.c_ulong()
        outcome.append(function(session, mechanism, None, 0, None, 0, ctypes.byref(public), ctypes.byref(private)))

    worker = threading.Thread(target=generate)
    worker.start()
    sim.state.unplug(slot)
    worker.join(timeout=60)
    assert outcome == [CKR_DEVICE_REMOVED]
    raw.finalize()


def test_the_helper_command(sim: Sim) -> None:
    def helper(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "core.simulator", *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ},
            timeout=60,
            check=True,
        )

    slot = int(helper("add").stdout)
    helper("unplug", str(slot))
    assert "present=0" in helper("show", str(slot)).stdout
    helper("plug", str(slot))
    assert "present=1" in helper("show", str(slot)).stdout
    assert helper("build").stdout.strip() == sim.library


def test_a_blank_token_formatted_and_personalised_through_the_cli(sim: Sim) -> None:
    slot = sim.state.add_reader()
    serial = sim.state.state(slot).serial
    assert codes(sim.scanned(slot)) == ["token-not-initialised"]
    done = sim.cli("format", "--serial", serial, "--confirm", serial, "--pin-stdin", stdin=lines(SO_PIN))
    assert done.returncode == 0, done.stderr
    assert {"label-missing", "user-pin-default", "so-pin-default"} <= set(codes(sim.scanned(slot)))
    done = sim.cli(
        "personalise", "--serial", serial, "--label", "NEWONE", "--pin-stdin", stdin=lines(SO_PIN, NEW_PIN, NEW_PIN)
    )
    assert done.returncode == 0, done.stderr
    token = sim.scanned(slot)
    assert token["label"] == "NEWONE" and token["serial"] == serial  # the token's own serial, kept
    assert "user-pin-default" not in codes(token) and "so-pin-default" in codes(token)
    assert sim.user_login(slot, NEW_PIN)


def test_a_blocking_wait_for_slot_event_wakes_at_the_unplug(sim: Sim) -> None:
    slot = sim.token()
    raw = Cryptoki(sim.library)
    raw.initialize()
    wait = raw._function("C_WaitForSlotEvent", ctypes.c_ulong, ctypes.POINTER(ctypes.c_ulong), ctypes.c_void_p)
    seen: list[tuple[int, int]] = []

    def waiter() -> None:
        event = ctypes.c_ulong()
        seen.append((wait(0, ctypes.byref(event), None), event.value))

    thread = threading.Thread(target=waiter)
    thread.start()
    sim.state.unplug(slot)
    thread.join(timeout=60)
    assert seen == [(CKR_OK, slot)]
    raw.finalize()


def test_a_hostile_state_file_is_read_as_data(sim: Sim) -> None:
    """Whatever a reader's state file holds, the library reads what it can and never crashes."""
    slot = sim.token()
    path = sim.state.state_path(slot)
    good = path.read_text()
    path.write_bytes(
        good.encode().replace(b"user_left=10", b"user_left=99999999999999999999999")
        + b"\x00\xff" * 3000
        + b"\nserial=\x1b[31mX\nso_left=-4\npolicy=12345\n=\n==\nkey_without_value\n"
    )
    result = sim.scan()  # the reader is still read: counters within their maximum, no crash
    (token,) = result["tokens"]
    assert token["user_pin"]["tries_left"] == 10 and token["so_pin"]["tries_left"] <= 10
    assert "\x1b" not in json.dumps(result)
    assert sim.state.state(slot).serial.isalnum()
    sim.state.unplug(slot)  # rewritten whole, in the one format
    assert sim.state.state(slot).present == 0 and b"\x00" not in path.read_bytes()
