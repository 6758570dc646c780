"""Wrong PINs all day leave no session behind, and a token pulled out mid-action is an outcome, not a crash.

On SoftHSM2, which never locks, so fifty wrong PINs are possible (openCryptoki would lock after three).

For contrast, not tested: python-pkcs11 0.10's `Token.open(user_pin=wrong)` opens a session, fails C_Login and
raises without C_CloseSession. Measured here with the probe below: three such calls leave three read-only
sessions open, after which SoftHSM2 refuses an SO login with CKR_SESSION_READ_ONLY_EXISTS, so the next unblock
would fail with "another program has the token open". core.actions opens and closes its own sessions instead.
"""

from __future__ import annotations

import ctypes
import shutil
from collections.abc import Callable

import pytest

from core import actions, audit
from core.actions import ActionResult, Outcome, Role
from core.cryptoki import CKR_OK
from core.cryptoki_structs import CK_ULONG
from core.modules import Module
from core.scan import Workstation
from tests.tokens import SO_PIN, SOFTHSM_MODULE, USER_PIN, SoftHSM

NEW_USER_PIN = "Vorota7x"
WRONG_PIN = "Wrong0Pn"
ATTEMPTS = 50


class CK_SESSION_INFO(ctypes.Structure):
    _fields_ = (("slotID", CK_ULONG), ("state", CK_ULONG), ("flags", CK_ULONG), ("ulDeviceError", CK_ULONG))


def open_sessions(module: Module, slot_id: int) -> int:
    """The sessions this process has open on the token, counted by asking the module about every handle.

    SoftHSM2 reports no session count (CK_TOKEN_INFO.ulSessionCount is CK_UNAVAILABLE_INFORMATION), and its
    handles only grow: a fresh session's handle bounds every earlier one.
    """
    get_info = module.raw._function("C_GetSessionInfo", CK_ULONG, ctypes.POINTER(CK_SESSION_INFO))
    newest = module.raw.open_session(slot_id)
    module.raw.close_session(newest)
    info = CK_SESSION_INFO()
    return sum(
        1 for handle in range(1, newest) if get_info(handle, ctypes.byref(info)) == CKR_OK and info.slotID == slot_id
    )


def test_the_session_probe_sees_an_open_session(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("IVANOV")
    workstation = Workstation([SOFTHSM_MODULE])
    module, slot_id = workstation.modules[0], softhsm.slot_of(serial)
    assert module.raw.token_info(slot_id).sessions is None  # SoftHSM2 does not count them: hence the probe
    assert open_sessions(module, slot_id) == 0
    handle = module.raw.open_session(slot_id)
    assert open_sessions(module, slot_id) == 1
    module.raw.close_session(handle)
    assert open_sessions(module, slot_id) == 0


def test_fifty_wrong_pins_of_each_kind_leak_no_session(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("IVANOV")
    workstation = Workstation([SOFTHSM_MODULE])
    module, slot_id = workstation.modules[0], softhsm.slot_of(serial)
    for _ in range(ATTEMPTS):
        result = actions.change_pin(
            workstation.modules,
            serial,
            role=Role.USER,
            current_pin=WRONG_PIN,
            new_pin=NEW_USER_PIN,
            new_pin_again=NEW_USER_PIN,
        )
        assert (result.outcome, result.field) == (Outcome.WRONG_PIN, "current_pin"), result.message
    for _ in range(ATTEMPTS):
        result = actions.unblock(
            workstation.modules, serial, admin_pin=WRONG_PIN, new_user_pin=NEW_USER_PIN, new_user_pin_again=NEW_USER_PIN
        )
        assert (result.outcome, result.field) == (Outcome.WRONG_PIN, "admin_pin"), result.message
    assert open_sessions(module, slot_id) == 0
    # SoftHSM2 never counts down: each wrong PIN only sets COUNT_LOW, and says so.
    assert result.message == "Wrong admin PIN. Tries are running out; the token does not say how many are left."
    assert "SO PIN count low" in softhsm.token_flags(serial)

    # An admin action still works: it needs an SO login, which any leaked read-only session would block.
    result = actions.unblock(
        workstation.modules, serial, admin_pin=SO_PIN, new_user_pin=NEW_USER_PIN, new_user_pin_again=NEW_USER_PIN
    )
    assert result.outcome is Outcome.DONE, result.message
    assert "SO PIN count low" not in softhsm.token_flags(serial)
    assert softhsm.tool(serial, "--login", "--pin", NEW_USER_PIN, "--list-objects", check=False).returncode == 0
    assert open_sessions(module, slot_id) == 0
    entries = audit.read()
    assert len(entries) == 2 * ATTEMPTS + 1
    assert [e.outcome for e in entries] == ["done"] + ["wrong-pin"] * 2 * ATTEMPTS


# --- a token pulled out mid-action ----------------------------------------------------------------------------

# SoftHSM2 has no unplug; removing its token directory is the nearest thing (C_GetSlotList then drops the
# token, calls on it answer CKR_GENERAL_ERROR). The directory is removed from inside the action, just before
# the named Cryptoki call, so the token is there when the action finds it and reads its state.


def _change_user_pin(workstation: Workstation, serial: str) -> ActionResult:
    return actions.change_pin(
        workstation.modules,
        serial,
        role=Role.USER,
        current_pin=USER_PIN,
        new_pin=NEW_USER_PIN,
        new_pin_again=NEW_USER_PIN,
    )


def _unblock(workstation: Workstation, serial: str) -> ActionResult:
    return actions.unblock(
        workstation.modules, serial, admin_pin=SO_PIN, new_user_pin=NEW_USER_PIN, new_user_pin_again=NEW_USER_PIN
    )


def _format(workstation: Workstation, serial: str) -> ActionResult:
    return actions.format_token(workstation.modules, serial, admin_pin=SO_PIN, confirmation="IVANOV")


PULLED_OUT = "The token was pulled out during the action: plug it back in and check its state."

MID_ACTION = [
    pytest.param(_change_user_pin, "login", "", id="change-pin-before-login"),
    pytest.param(_unblock, "init_pin", "", id="unblock-before-init-pin"),
    pytest.param(_format, "init_token", "", id="format-before-init-token"),
    # Pulled out after the token did the work: the operator learns both.
    pytest.param(
        _unblock,
        "close_session",
        "«PIN-код успешно разблокирован»: the user PIN is unblocked and set to the new one. ",
        id="unblock-after-init-pin",
    ),
]


def _pull_out_before(monkeypatch: pytest.MonkeyPatch, softhsm: SoftHSM, module: Module, call: str) -> None:
    original = getattr(module.raw, call)
    init_pin = module.raw.init_pin
    did_work: list[bool] = []

    def note_work(*args: object) -> object:
        did_work.append(True)
        return init_pin(*args)

    def pull_then_call(*args: object) -> object:
        # close_session also ends the sessions that read the token before the action: pull out only after it
        if call != "close_session" or did_work:
            shutil.rmtree(softhsm.tokens, ignore_errors=True)
        return original(*args)

    if call == "close_session":
        monkeypatch.setattr(module.raw, "init_pin", note_work)

    monkeypatch.setattr(module.raw, call, pull_then_call)


@pytest.mark.parametrize(("act", "call", "done_text"), MID_ACTION)
def test_token_pulled_out_mid_action_is_an_outcome(
    softhsm: SoftHSM,
    monkeypatch: pytest.MonkeyPatch,
    act: Callable[[Workstation, str], ActionResult],
    call: str,
    done_text: str,
) -> None:
    serial = softhsm.init_token("IVANOV")
    workstation = Workstation([SOFTHSM_MODULE])
    _pull_out_before(monkeypatch, softhsm, workstation.modules[0], call)
    result = act(workstation, serial)  # never raises
    assert result.outcome is Outcome.TOKEN_GONE, result.message
    assert result.message.startswith(done_text) and result.message.endswith(PULLED_OUT)
    assert result.before is not None and result.after is None
    assert workstation.scan(refresh=True).tokens == ()
    (entry,) = audit.read()
    assert (entry.action, entry.outcome, entry.serial) == (str(result.action), "token-gone", serial)
    assert entry.findings_before and entry.findings_after == ()
    text = audit.audit_path().read_text(encoding="utf-8")
    assert not any(pin in text for pin in (USER_PIN, SO_PIN, NEW_USER_PIN))


@pytest.mark.parametrize(("act", "call", "done_text"), MID_ACTION[:3])
def test_token_pulled_out_mid_action_says_only_that(
    softhsm: SoftHSM,
    monkeypatch: pytest.MonkeyPatch,
    act: Callable[[Workstation, str], ActionResult],
    call: str,
    done_text: str,
) -> None:
    serial = softhsm.init_token("IVANOV")
    workstation = Workstation([SOFTHSM_MODULE])
    _pull_out_before(monkeypatch, softhsm, workstation.modules[0], call)
    result = act(workstation, serial)
    assert result.message == PULLED_OUT


def test_token_pulled_out_before_the_action_is_not_found(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("IVANOV")
    workstation = Workstation([SOFTHSM_MODULE])
    assert len(workstation.scan().tokens) == 1
    shutil.rmtree(softhsm.tokens)
    result = _unblock(workstation, serial)
    assert result.outcome is Outcome.NOT_FOUND
    assert result.message == f"No token {serial} is connected (its serial or its id)."
    (entry,) = audit.read()
    assert (entry.action, entry.outcome) == ("unblock", "not-found")
