"""The four actions through core/ on real SoftHSM2 tokens, each result checked with OpenSC's pkcs11-tool.

SoftHSM2 never locks a PIN (see test_actions_opencryptoki.py for that); here: the changes themselves, every
refusal, the audit line, the keyring and the operator lock.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from core import admin_pins, audit, operator_lock
from core.actions import (
    FACTORY_USER_PIN,
    Outcome,
    Role,
    change_pin,
    format_token,
    personalise,
    unblock,
)
from core.modules import Module
from core.scan import Workstation
from tests.conftest import MemoryKeyring
from tests.tokens import SO_PIN, SOFTHSM_MODULE, USER_PIN, SoftHSM

NEW_PIN = "Kazt0ken"
OTHER_PIN = "Astana9x"
NEW_ADMIN_PIN = "Admin9Xy"
WRONG_PIN = "Wr0ngPin"


@pytest.fixture
def modules(softhsm: SoftHSM) -> Iterator[list[Module]]:
    workstation = Workstation([SOFTHSM_MODULE])
    yield workstation.modules


def user_pin_works(softhsm: SoftHSM, serial: str, pin: str) -> bool:
    return softhsm.tool(serial, "--login", "--pin", pin, "-O", check=False).returncode == 0


def so_pin_works(softhsm: SoftHSM, serial: str, pin: str) -> bool:
    # An SO login needs a read-write session; a PIN "change" to the same PIN is the harmless way to ask for one.
    args = ("--login", "--login-type", "so", "--so-pin", pin, "--change-pin", "--new-pin", pin)
    return softhsm.tool(serial, *args, check=False).returncode == 0


def token_label(softhsm: SoftHSM, serial: str) -> str:
    import re

    out = softhsm.tool(serial, "-L").stdout
    block = next(b for b in re.split(r"^Slot ", out, flags=re.M) if re.search(rf"serial num\s+:\s+{serial}\b", b))
    return re.search(r"token label\s+:[ \t]*(.*)", block).group(1).strip()


def last_audit() -> audit.AuditEntry:
    return audit.read(limit=1)[0]


# --- personalise -----------------------------------------------------------------------------------------------


def test_personalise_an_empty_token(softhsm: SoftHSM, modules: list[Module]) -> None:
    serial = softhsm.init_token("")
    result = personalise(
        modules,
        serial,
        label="IVANOV",
        admin_pin=SO_PIN,
        new_user_pin=NEW_PIN,
        new_user_pin_again=NEW_PIN,
        new_admin_pin=NEW_ADMIN_PIN,
        new_admin_pin_again=NEW_ADMIN_PIN,
    )
    assert result.outcome is Outcome.DONE, result.message
    assert "label-missing" in result.findings_before
    assert "label-missing" not in result.findings_after
    assert token_label(softhsm, serial) == "IVANOV"
    assert user_pin_works(softhsm, serial, NEW_PIN)
    assert not user_pin_works(softhsm, serial, USER_PIN)
    assert so_pin_works(softhsm, serial, NEW_ADMIN_PIN)
    assert not result.warnings  # the admin PIN is no longer the default
    entry = last_audit()
    assert (entry.action, entry.outcome, entry.serial) == ("personalise", "done", serial)


def test_personalise_warns_when_the_admin_pin_stays_the_default(softhsm: SoftHSM, modules: list[Module]) -> None:
    serial = softhsm.init_token("")
    result = personalise(
        modules, serial, label="PETROV", admin_pin=SO_PIN, new_user_pin=NEW_PIN, new_user_pin_again=NEW_PIN
    )
    assert result.ok
    assert any("factory default" in str(warning) for warning in result.warnings)
    assert so_pin_works(softhsm, serial, SO_PIN)


def test_personalise_refuses_a_token_with_keys(softhsm: SoftHSM, modules: list[Module]) -> None:
    serial = softhsm.init_token("HOLDER")
    softhsm.profile(serial)
    result = personalise(
        modules, serial, label="OTHER", admin_pin=SO_PIN, new_user_pin=NEW_PIN, new_user_pin_again=NEW_PIN
    )
    assert result.outcome is Outcome.REFUSED
    assert "format" in result.message
    assert token_label(softhsm, serial) == "HOLDER"
    assert user_pin_works(softhsm, serial, USER_PIN)


def test_personalise_with_a_wrong_admin_pin_changes_nothing(softhsm: SoftHSM, modules: list[Module]) -> None:
    serial = softhsm.init_token("")
    result = personalise(
        modules, serial, label="IVANOV", admin_pin=WRONG_PIN, new_user_pin=NEW_PIN, new_user_pin_again=NEW_PIN
    )
    assert result.outcome is Outcome.WRONG_PIN
    assert result.field == "admin_pin"
    assert result.role is Role.ADMIN
    assert token_label(softhsm, serial) == ""
    assert user_pin_works(softhsm, serial, USER_PIN)


@pytest.mark.parametrize(
    ("label", "pin", "again", "field", "rule"),
    [
        ("bad name", NEW_PIN, NEW_PIN, "label", "characters"),
        ("", NEW_PIN, NEW_PIN, "label", "not-empty"),
        ("X" * 33, NEW_PIN, NEW_PIN, "label", "length"),
        ("ИВАНОВ", NEW_PIN, NEW_PIN, "label", "characters"),
        ("IVANOV", "", "", "new_pin", "length"),
        ("IVANOV", "Ab1", "Ab1", "new_pin", "length"),
        ("IVANOV", "Kazt123x", "Kazt123x", "new_pin", "no-run"),
        ("IVANOV", "Abcdefgh", "Abcdefgh", "new_pin", "no-run"),
        ("IVANOV", "kaztoken", "kaztoken", "new_pin", "upper"),
        ("IVANOV", "KAZTOKEN", "KAZTOKEN", "new_pin", "lower"),
        ("IVANOV", "Казтокен1", "Казтокен1", "new_pin", "ascii"),
        ("IVANOV", NEW_PIN, OTHER_PIN, "new_pin_again", "match"),
        ("IVANOV", "Kz" * 2048, "Kz" * 2048, "new_pin", "max-length"),
    ],
)
def test_personalise_policy_spends_no_try_and_changes_nothing(
    softhsm: SoftHSM, modules: list[Module], label: str, pin: str, again: str, field: str, rule: str
) -> None:
    serial = softhsm.init_token("")
    before = softhsm.token_flags(serial)
    result = personalise(modules, serial, label=label, admin_pin=SO_PIN, new_user_pin=pin, new_user_pin_again=again)
    assert result.outcome is Outcome.POLICY
    assert result.field == field
    assert rule in {check.rule for check in result.problems}
    assert softhsm.token_flags(serial) == before
    assert user_pin_works(softhsm, serial, USER_PIN)
    assert last_audit().reason is not None and rule in last_audit().reason


# --- change PIN ------------------------------------------------------------------------------------------------


def test_change_the_user_pin(softhsm: SoftHSM, modules: list[Module]) -> None:
    serial = softhsm.init_token("IVANOV")
    result = change_pin(modules, serial, role=Role.USER, current_pin=USER_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN)
    assert result.ok, result.message
    assert user_pin_works(softhsm, serial, NEW_PIN)
    assert not user_pin_works(softhsm, serial, USER_PIN)


def test_change_the_admin_pin(softhsm: SoftHSM, modules: list[Module]) -> None:
    serial = softhsm.init_token("IVANOV")
    result = change_pin(
        modules, serial, role=Role.ADMIN, current_pin=SO_PIN, new_pin=NEW_ADMIN_PIN, new_pin_again=NEW_ADMIN_PIN
    )
    assert result.ok, result.message
    assert so_pin_works(softhsm, serial, NEW_ADMIN_PIN)
    assert not so_pin_works(softhsm, serial, SO_PIN)
    assert user_pin_works(softhsm, serial, USER_PIN)


def test_a_wrong_current_pin_is_a_message_with_the_pin_state(softhsm: SoftHSM, modules: list[Module]) -> None:
    serial = softhsm.init_token("IVANOV")
    result = change_pin(modules, serial, role=Role.USER, current_pin=WRONG_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN)
    assert result.outcome is Outcome.WRONG_PIN
    assert result.field == "current_pin"
    assert result.message.startswith("Wrong user PIN.")
    assert str(result.pin_before.status) == "ok"
    assert str(result.pin_after.status) == "count-low"  # SoftHSM2's only trace of a failed login
    assert "user-pin-count-low" in result.findings_after
    assert "USER_PIN_COUNT_LOW".replace("_", " ").lower() in softhsm.token_flags(serial).lower()
    assert user_pin_works(softhsm, serial, USER_PIN)
    entry = last_audit()
    assert (entry.outcome, entry.role, entry.pin_before, entry.pin_after) == ("wrong-pin", "user", "ok", "count-low")


def test_the_new_pin_must_differ_from_the_current_one(softhsm: SoftHSM, modules: list[Module]) -> None:
    serial = softhsm.init_token("IVANOV")
    change_pin(modules, serial, role=Role.USER, current_pin=USER_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN)
    result = change_pin(modules, serial, role=Role.USER, current_pin=NEW_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN)
    assert result.outcome is Outcome.POLICY


# --- unblock ---------------------------------------------------------------------------------------------------


def test_unblock_sets_a_new_user_pin_with_the_admin_pin(softhsm: SoftHSM, modules: list[Module]) -> None:
    serial = softhsm.init_token("IVANOV")
    softhsm.fail_login(serial)
    result = unblock(modules, serial, admin_pin=SO_PIN, new_user_pin=NEW_PIN, new_user_pin_again=NEW_PIN)
    assert result.ok, result.message
    assert "«PIN-код успешно разблокирован»" in result.message
    assert "user-pin-count-low" in result.findings_before
    assert "user-pin-count-low" not in result.findings_after
    assert "count low" not in softhsm.token_flags(serial).lower()
    assert user_pin_works(softhsm, serial, NEW_PIN)
    assert not user_pin_works(softhsm, serial, USER_PIN)


def test_unblock_with_a_wrong_admin_pin(softhsm: SoftHSM, modules: list[Module]) -> None:
    serial = softhsm.init_token("IVANOV")
    result = unblock(modules, serial, admin_pin=WRONG_PIN, new_user_pin=NEW_PIN, new_user_pin_again=NEW_PIN)
    assert result.outcome is Outcome.WRONG_PIN
    assert result.message.startswith("Wrong admin PIN.")
    assert "so-pin-count-low" in result.findings_after
    assert user_pin_works(softhsm, serial, USER_PIN)


# --- format ----------------------------------------------------------------------------------------------------


def test_format_is_refused_during_an_unfinished_registration(softhsm: SoftHSM, modules: list[Module]) -> None:
    serial = softhsm.init_token("IVANOV")
    softhsm.generate_key(serial, "01")
    result = format_token(modules, serial, admin_pin=SO_PIN, confirmation="IVANOV")
    assert result.outcome is Outcome.REFUSED
    assert "registration" in result.message
    assert "key-01" in softhsm.tool(serial, "--login", "--pin", USER_PIN, "-O").stdout


def test_format_needs_the_name_or_serial_typed(softhsm: SoftHSM, modules: list[Module]) -> None:
    serial = softhsm.init_token("IVANOV")
    softhsm.profile(serial)
    result = format_token(modules, serial, admin_pin=SO_PIN, confirmation="ivanov?")
    assert result.outcome is Outcome.REFUSED
    assert result.field == "confirmation"
    assert token_label(softhsm, serial) == "IVANOV"


@pytest.mark.parametrize("confirm_by", ["label", "serial"])
def test_format_empties_the_token_as_from_the_factory(softhsm: SoftHSM, modules: list[Module], confirm_by: str) -> None:
    serial = softhsm.init_token("IVANOV")
    softhsm.profile(serial)
    confirmation = "IVANOV" if confirm_by == "label" else serial
    result = format_token(modules, serial, admin_pin=SO_PIN, confirmation=confirmation)
    assert result.ok, result.message
    assert result.findings_after == ("label-missing", "profile-empty")
    assert token_label(softhsm, serial) == ""
    assert user_pin_works(softhsm, serial, FACTORY_USER_PIN)
    listing = softhsm.tool(serial, "--login", "--pin", FACTORY_USER_PIN, "-O").stdout
    assert "Certificate Object" not in listing and "Private Key Object" not in listing


# --- around every action ---------------------------------------------------------------------------------------


def test_an_unknown_serial_is_not_found(softhsm: SoftHSM, modules: list[Module]) -> None:
    softhsm.init_token("IVANOV")
    result = unblock(modules, "0000000000000000", admin_pin=SO_PIN, new_user_pin=NEW_PIN, new_user_pin_again=NEW_PIN)
    assert result.outcome is Outcome.NOT_FOUND
    assert "0000000000000000" in result.message


def test_the_audit_holds_no_pin(softhsm: SoftHSM, modules: list[Module]) -> None:
    serial = softhsm.init_token("IVANOV")
    change_pin(modules, serial, role=Role.USER, current_pin=WRONG_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN)
    change_pin(modules, serial, role=Role.USER, current_pin=USER_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN)
    unblock(modules, serial, admin_pin=SO_PIN, new_user_pin=OTHER_PIN, new_user_pin_again=OTHER_PIN)
    text = audit.audit_path().read_text()
    assert [entry.outcome for entry in audit.read()] == ["done", "done", "wrong-pin"]
    for pin in (WRONG_PIN, NEW_PIN, USER_PIN, SO_PIN, OTHER_PIN):
        assert pin not in text
    entry = audit.read()[0]
    assert entry.operator and entry.host and entry.label == "IVANOV"


def test_a_second_operator_is_refused_with_who_holds_the_token(softhsm: SoftHSM, modules: list[Module]) -> None:
    serial = softhsm.init_token("IVANOV")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from core import operator_lock as l; l.acquire(sys.argv[1], 'unblock'); "
            "print('held', flush=True); time.sleep(60)",
            serial,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = change_pin(
            modules, serial, role=Role.USER, current_pin=USER_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN
        )
        assert result.outcome is Outcome.BUSY
        assert f"pid {holder.pid}" in result.message and "unblock" in result.message
        assert user_pin_works(softhsm, serial, USER_PIN)  # nothing was interleaved
    finally:
        holder.kill()
        holder.wait()
    # The holder died without letting go: the kernel released its flock, so no stale lock remains.
    result = change_pin(modules, serial, role=Role.USER, current_pin=USER_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN)
    assert result.ok


def test_the_operator_lock_is_reentrant_in_one_process(softhsm: SoftHSM, modules: list[Module]) -> None:
    serial = softhsm.init_token("IVANOV")
    with operator_lock.holding(serial, "change-pin"):  # the console holds it while its screen is open
        result = change_pin(
            modules, serial, role=Role.USER, current_pin=USER_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN
        )
    assert result.ok


# --- the keyring -----------------------------------------------------------------------------------------------


def test_no_keyring_is_a_clear_message_and_nothing_is_stored(softhsm: SoftHSM, modules: list[Module]) -> None:
    serial = softhsm.init_token("IVANOV")
    assert not admin_pins.available()
    result = unblock(
        modules, serial, admin_pin=SO_PIN, new_user_pin=NEW_PIN, new_user_pin_again=NEW_PIN, remember_admin_pin=True
    )
    assert result.ok
    assert any("No keyring is available" in str(warning) for warning in result.warnings)
    again = unblock(modules, serial, admin_pin=None, new_user_pin=OTHER_PIN, new_user_pin_again=OTHER_PIN)
    assert again.outcome is Outcome.POLICY and again.field == "admin_pin"


def test_a_remembered_admin_pin_is_used_kept_current_and_forgotten_when_wrong(
    softhsm: SoftHSM, modules: list[Module], memory_keyring: MemoryKeyring
) -> None:
    serial = softhsm.init_token("IVANOV")
    first = unblock(
        modules, serial, admin_pin=SO_PIN, new_user_pin=NEW_PIN, new_user_pin_again=NEW_PIN, remember_admin_pin=True
    )
    assert first.ok
    assert admin_pins.recall(serial) == SO_PIN
    assert unblock(modules, serial, admin_pin=None, new_user_pin=OTHER_PIN, new_user_pin_again=OTHER_PIN).ok
    assert user_pin_works(softhsm, serial, OTHER_PIN)

    # Changing the admin PIN keeps the remembered one current, or the next use would spend an admin try.
    changed = change_pin(
        modules, serial, role=Role.ADMIN, current_pin=SO_PIN, new_pin=NEW_ADMIN_PIN, new_pin_again=NEW_ADMIN_PIN
    )
    assert changed.ok
    assert admin_pins.recall(serial) == NEW_ADMIN_PIN

    # Changed elsewhere (another console, the vendor's panel): the stale PIN fails once and is forgotten.
    memory_keyring.set_password(admin_pins.SERVICE, serial, WRONG_PIN)
    stale = unblock(modules, serial, admin_pin=None, new_user_pin=NEW_PIN, new_user_pin_again=NEW_PIN)
    assert stale.outcome is Outcome.WRONG_PIN
    assert "forgotten" in stale.message
    assert admin_pins.recall(serial) is None
    assert WRONG_PIN not in stale.message and NEW_ADMIN_PIN not in stale.message
    assert so_pin_works(softhsm, serial, NEW_ADMIN_PIN)
