"""The actions (core.actions) on openCryptoki's soft token, the one stack on this machine that really counts and
locks PIN tries: personalising a factory-fresh token, wrong PINs down to locked, unblocking a really locked user
PIN, and a locked admin PIN refusing every admin action.

Every test starts from a factory-reset token and leaves it factory-reset. The token's state is checked with
OpenSC's `pkcs11-tool` (`ock.listed()`, `ock.user_login`, `ock.so_login`), never with the code under test.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from core import actions, audit
from core.actions import ActionResult, Outcome, Role, tries_text
from core.cryptoki import Cryptoki
from core.modules import Module
from core.scan import ScannedToken, Workstation
from tests import ock

_reason = ock.unavailable_reason()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

LABEL = "IVANOV"
USER_PIN = "Kazt0ken"  # the bank's rules, and within openCryptoki's 4..8
NEW_USER_PIN = "Vorota7x"
ADMIN_PIN = "Admin9Xy"
DEFAULT_ADMIN_PIN = actions.FACTORY_ADMIN_PIN  # openCryptoki's C_InitToken accepts only this SO PIN
WRONG_PIN = "Wrong0Pn"  # 8 characters: compared (and counted) by the token, not refused for its length
PINS_USED = (USER_PIN, NEW_USER_PIN, ADMIN_PIN, DEFAULT_ADMIN_PIN, WRONG_PIN, ock.WRONG_PIN)

ADMIN_LOCKED_TEXT = (
    "The admin PIN is locked: the token refuses every admin action, and no PIN can be set or reset. Only the "
    "issuer can bring such a token back; the customer needs a new token and a new registration."
)
USER_LOCKED_TEXT = "The user PIN is locked: unblock it with the admin PIN (u)."
COUNT_LOW_TEXT = "Tries are running out; the token does not say how many are left."
FINAL_TRY_TEXT = "One try left: the next wrong PIN locks it."
LOCKED_TEXT = "It is now locked."


@pytest.fixture(scope="module")
def ock_machine() -> Iterator[None]:
    """The machine's soft token, held for this file (nested in another file's hold if that came first)."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(ock.exclusive_here())
            ock.factory_reset()
        except (ock.OckError, OSError, subprocess.SubprocessError) as error:
            pytest.skip(f"openCryptoki's soft token cannot be used here: {error}")
        yield
        ock.factory_reset()


@dataclass
class Bench:
    """A workstation that has loaded openCryptoki, and the soft token's serial."""

    workstation: Workstation
    serial: str

    @property
    def modules(self) -> list[Module]:
        return self.workstation.modules

    @property
    def raw(self) -> Cryptoki:
        return self.modules[0].raw

    def scanned(self) -> ScannedToken:
        (token,) = [t for t in self.workstation.scan().tokens if t.snapshot.slot_id == ock.OCK_SLOT]
        return token

    def codes(self) -> list[str]:
        return [finding.code for finding in self.scanned().findings]

    def sessions(self) -> int | None:
        """openCryptoki counts the sessions open on the token (SoftHSM2 does not say)."""
        return self.raw.token_info(ock.OCK_SLOT).sessions


@pytest.fixture
def bench(ock_machine: None) -> Iterator[Bench]:
    ock.factory_reset()
    workstation = Workstation([ock.OCK_MODULE])
    (token,) = [t for t in workstation.scan().tokens if t.snapshot.slot_id == ock.OCK_SLOT]
    try:
        yield Bench(workstation, token.snapshot.serial)
    finally:
        workstation.close()
        ock.factory_reset()  # the other files, and the next test, assume a clean token


def personalised(bench: Bench) -> ActionResult:
    result = actions.personalise(
        bench.modules,
        bench.serial,
        label=LABEL,
        admin_pin=DEFAULT_ADMIN_PIN,
        new_user_pin=USER_PIN,
        new_user_pin_again=USER_PIN,
        new_admin_pin=ADMIN_PIN,
        new_admin_pin_again=ADMIN_PIN,
    )
    assert result.outcome is Outcome.DONE, result.message
    return result


def wrong_user_pin(bench: Bench, pin: str = WRONG_PIN) -> ActionResult:
    return actions.change_pin(
        bench.modules, bench.serial, role=Role.USER, current_pin=pin, new_pin=NEW_USER_PIN, new_pin_again=NEW_USER_PIN
    )


def unblock(bench: Bench, admin_pin: str) -> ActionResult:
    return actions.unblock(
        bench.modules, bench.serial, admin_pin=admin_pin, new_user_pin=NEW_USER_PIN, new_user_pin_again=NEW_USER_PIN
    )


def statuses(result: ActionResult) -> tuple[str | None, str | None]:
    before, after = result.pin_before, result.pin_after
    return (str(before.status) if before else None, str(after.status) if after else None)


@contextlib.contextmanager
def pin_calls(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records every Cryptoki call that presents a PIN to the token (each could spend a try)."""
    calls: list[str] = []
    with monkeypatch.context() as patch:
        for name in ("login", "init_token", "init_pin", "set_pin"):
            original = getattr(bench.raw, name)

            def spy(*args: object, _name: str = name, _original: object = original) -> object:
                calls.append(_name)
                return _original(*args)  # type: ignore[operator]

            patch.setattr(bench.raw, name, spy)
        yield calls


def assert_audited(results: list[ActionResult]) -> None:
    """One audit line per attempt, in order, with its outcome and the PIN's state around it; no PIN anywhere."""
    entries = list(reversed(audit.read()))
    assert [(e.action, e.outcome, e.serial, e.role, e.pin_before, e.pin_after) for e in entries] == [
        (str(r.action), str(r.outcome), r.serial, str(r.role), *statuses(r)) for r in results
    ]
    text = audit.audit_path().read_text(encoding="utf-8")
    for pin in PINS_USED:
        assert pin not in text


# --- personalising a factory-fresh token ---------------------------------------------------------------------


def test_personalise_fresh_token_with_a_new_admin_pin(bench: Bench) -> None:
    assert not ock.listed().initialised
    result = personalised(bench)
    assert result.message == (
        f"Token personalised as «{LABEL}» with the new user PIN. "
        "The admin PIN was changed too: from now on only the new one works."
    )
    assert result.warnings == ()
    flags = ock.listed().flags
    assert {"token initialized", "PIN initialized"} <= flags, flags
    assert not {"SO PIN to be changed", "user PIN to be changed"} & flags, flags
    assert statuses(result) == ("not-initialised", "ok")
    assert (result.findings_before, result.findings_after) == (("token-not-initialised",), ("profile-empty",))
    token = bench.scanned()
    assert token.snapshot.label == LABEL and [f.code for f in token.findings] == ["profile-empty"]
    assert ock.user_login(USER_PIN) == "CKR_OK"
    assert ock.so_login(ADMIN_PIN) == "CKR_OK"
    assert bench.sessions() == 0
    assert_audited([result])


def test_personalise_keeping_the_default_admin_pin_then_change_it(bench: Bench) -> None:
    """The "change the default PIN" path, driven by openCryptoki's own SO_PIN_TO_BE_CHANGED flag. openCryptoki
    refuses C_SetPIN *to* a default PIN, but changing *from* the default admin PIN works."""
    result = actions.personalise(
        bench.modules,
        bench.serial,
        label=LABEL,
        admin_pin=DEFAULT_ADMIN_PIN,
        new_user_pin=USER_PIN,
        new_user_pin_again=USER_PIN,
    )
    assert result.outcome is Outcome.DONE, result.message
    assert [str(w) for w in result.warnings] == [
        "The admin PIN is still the factory default: anyone can unblock or format this token. Change it."
    ]
    flags = ock.listed().flags
    assert {"token initialized", "PIN initialized", "SO PIN to be changed"} <= flags, flags
    assert "user PIN to be changed" not in flags
    assert statuses(result) == ("not-initialised", "to-be-changed")
    assert result.findings_after == ("so-pin-to-be-changed", "profile-empty")
    offered = {f.code: f.action for f in bench.scanned().findings}
    assert set(offered) == {"so-pin-to-be-changed", "profile-empty"} and offered["so-pin-to-be-changed"] == "change-pin"
    assert ock.user_login(USER_PIN) == "CKR_OK"

    changed = actions.change_pin(
        bench.modules,
        bench.serial,
        role=Role.ADMIN,
        current_pin=DEFAULT_ADMIN_PIN,
        new_pin=ADMIN_PIN,
        new_pin_again=ADMIN_PIN,
    )
    assert changed.outcome is Outcome.DONE, changed.message
    assert changed.message == "The admin PIN has been changed."
    assert statuses(changed) == ("to-be-changed", "ok")
    assert "SO PIN to be changed" not in ock.listed().flags
    assert bench.codes() == ["profile-empty"]
    assert ock.so_login(ADMIN_PIN) == "CKR_OK"
    assert bench.sessions() == 0
    assert_audited([result, changed])


def test_wrong_admin_pin_on_a_fresh_token_is_refused_and_not_counted(bench: Bench) -> None:
    """openCryptoki's C_InitToken answers CKR_PIN_INCORRECT to any SO PIN but the default, and counts nothing on
    an uninitialised token: after four wrong ones the default still works."""
    results = []
    for _ in range(4):
        result = actions.personalise(
            bench.modules,
            bench.serial,
            label=LABEL,
            admin_pin=WRONG_PIN,
            new_user_pin=USER_PIN,
            new_user_pin_again=USER_PIN,
        )
        results.append(result)
        assert (result.outcome, result.field) == (Outcome.WRONG_PIN, "admin_pin")
        assert result.message == "Wrong admin PIN. A token new from the factory takes the factory admin PIN."
        assert statuses(result) == ("not-initialised", "not-initialised")
        listed = ock.listed()
        assert not listed.initialised and listed.flags == frozenset()
    results.append(personalised(bench))
    assert bench.sessions() == 0
    assert_audited(results)


# --- the user PIN: wrong, locked, unblocked -----------------------------------------------------------------------


def test_wrong_user_pin_counts_down_to_locked_and_then_costs_no_try(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = [personalised(bench)]
    all_user_flags = {"user PIN count low", "final user PIN try", "user PIN locked"}
    for before, after, flag, text in (
        ("ok", "count-low", "user PIN count low", COUNT_LOW_TEXT),
        ("count-low", "final-try", "final user PIN try", FINAL_TRY_TEXT),
        ("final-try", "locked", "user PIN locked", LOCKED_TEXT),
    ):
        result = wrong_user_pin(bench)
        results.append(result)
        assert (result.outcome, result.role, result.field) == (Outcome.WRONG_PIN, Role.USER, "current_pin"), after
        assert statuses(result) == (before, after)
        # No exact counter on openCryptoki: the tries left are told in words, from the flags.
        assert result.message == f"Wrong user PIN. {text}"
        assert result.pin_after.tries_left is None and str(tries_text(result.pin_after)) == text
        assert (all_user_flags & ock.listed().flags) == {flag}, after
    assert bench.codes() == ["user-pin-locked", "profile-empty"]

    # Locked for real: the token refuses even the right PIN. The action says so without presenting it.
    listed = ock.listed()
    with pin_calls(bench, monkeypatch) as calls:
        result = wrong_user_pin(bench, USER_PIN)
    results.append(result)
    assert (result.outcome, result.message) == (Outcome.PIN_LOCKED, USER_LOCKED_TEXT)
    assert statuses(result) == ("locked", "locked")
    assert calls == [] and ock.listed() == listed
    assert ock.user_login(USER_PIN) == "CKR_PIN_LOCKED"
    assert bench.sessions() == 0
    assert_audited(results)


def test_unblock_a_really_locked_user_pin_with_the_admin_pin(bench: Bench) -> None:
    results = [personalised(bench)]
    ock.spend_user_tries(3)
    assert ock.user_login(USER_PIN) == "CKR_PIN_LOCKED"
    result = unblock(bench, ADMIN_PIN)
    results.append(result)
    assert result.outcome is Outcome.DONE, result.message
    assert "«PIN-код успешно разблокирован»" in result.message
    assert result.role is Role.ADMIN and statuses(result) == ("ok", "ok")
    assert result.findings_before == ("user-pin-locked", "profile-empty")
    assert result.findings_after == ("profile-empty",)
    # From LOCKED, openCryptoki's C_InitPIN clears every user PIN flag and restarts the count.
    assert not {"user PIN locked", "final user PIN try", "user PIN count low"} & ock.listed().flags
    assert ock.user_login(NEW_USER_PIN) == "CKR_OK"
    ock.spend_user_tries(2)
    assert "final user PIN try" in ock.listed().flags  # three tries again: two wrong ones do not lock it
    assert ock.user_login(NEW_USER_PIN) == "CKR_OK"
    assert bench.sessions() == 0
    assert_audited(results)


def test_opencryptoki_init_pin_keeps_the_count_of_a_pin_not_yet_locked(bench: Bench) -> None:
    """The token's own behaviour (pkcs11-tool only), why unblock logs in once with the new PIN: C_InitPIN on a
    user PIN at its final try sets the new PIN but leaves the count, so one wrong PIN locks the PIN just set."""
    ock.personalise()
    ock.spend_user_tries(2)
    ock.init_user_pin(NEW_USER_PIN)
    assert "final user PIN try" in ock.listed().flags
    ock.spend_user_tries(1)
    assert "user PIN locked" in ock.listed().flags
    assert ock.user_login(NEW_USER_PIN) == "CKR_PIN_LOCKED"


def test_unblock_before_the_lock_gives_back_every_try(bench: Bench) -> None:
    results = [personalised(bench)]
    ock.spend_user_tries(2)
    result = unblock(bench, ADMIN_PIN)
    results.append(result)
    assert result.outcome is Outcome.DONE, result.message
    assert result.role is Role.ADMIN  # the audit names the PIN that was presented
    assert not {"final user PIN try", "user PIN count low"} & ock.listed().flags
    assert result.findings_after == ("profile-empty",)
    ock.spend_user_tries(2)
    assert ock.user_login(NEW_USER_PIN) == "CKR_OK"
    assert bench.sessions() == 0
    assert_audited(results)


# --- the admin PIN: wrong, locked -------------------------------------------------------------------------------


def test_wrong_admin_pin_counts_down_to_locked_then_every_admin_action_is_refused(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = [personalised(bench)]
    all_so_flags = {"SO PIN count low", "final SO PIN try", "SO PIN locked"}
    for before, after, flag, text in (
        ("ok", "count-low", "SO PIN count low", COUNT_LOW_TEXT),
        ("count-low", "final-try", "final SO PIN try", FINAL_TRY_TEXT),
        ("final-try", "locked", "SO PIN locked", LOCKED_TEXT),
    ):
        result = unblock(bench, WRONG_PIN)
        results.append(result)
        assert (result.outcome, result.role, result.field) == (Outcome.WRONG_PIN, Role.ADMIN, "admin_pin"), after
        assert statuses(result) == (before, after)
        assert result.message == f"Wrong admin PIN. {text}"
        assert (all_so_flags & ock.listed().flags) == {flag}, after
        assert result.after is not None and result.after.user_pin.status == "ok"  # the user PIN is untouched
    assert bench.codes() == ["so-pin-locked", "profile-empty"]

    # The right admin PIN no longer helps: each admin action refuses, explains, and presents no PIN.
    listed = ock.listed()
    with pin_calls(bench, monkeypatch) as calls:
        refused = [
            unblock(bench, ADMIN_PIN),
            actions.personalise(
                bench.modules,
                bench.serial,
                label="PETROV",
                admin_pin=ADMIN_PIN,
                new_user_pin=USER_PIN,
                new_user_pin_again=USER_PIN,
            ),
            actions.format_token(bench.modules, bench.serial, admin_pin=ADMIN_PIN, confirmation=LABEL),
        ]
    results += refused
    assert [r.message for r in refused] == [ADMIN_LOCKED_TEXT] * 3
    assert [r.outcome for r in refused] == [Outcome.PIN_LOCKED] * 3
    assert all(statuses(r) == ("locked", "locked") for r in refused)
    assert calls == [] and ock.listed() == listed
    assert ock.so_login(ADMIN_PIN) == "CKR_PIN_LOCKED"  # the token's own verdict, not only the console's

    # With the user PIN locked too, its finding says that unblocking is impossible.
    ock.spend_user_tries(3)
    token = bench.scanned()
    assert [f.code for f in token.findings] == ["user-pin-locked", "so-pin-locked", "profile-empty"]
    user_locked = token.findings[0]
    assert user_locked.action != "unblock"
    assert "the admin PIN is locked too, so it cannot unblock anything" in user_locked.explanation
    assert bench.sessions() == 0
    assert_audited(results)


def test_format_with_a_locked_admin_pin_is_pin_locked(bench: Bench) -> None:
    personalised(bench)
    ock.spend_so_tries(3)
    result = actions.format_token(bench.modules, bench.serial, admin_pin=ADMIN_PIN, confirmation=LABEL)
    assert (result.outcome, result.message) == (Outcome.PIN_LOCKED, ADMIN_LOCKED_TEXT)


def test_findings_offer_no_format_that_the_locked_admin_pin_forbids(bench: Bench) -> None:
    ock.personalise()
    ock.spend_so_tries(3)
    ock.spend_user_tries(3)
    # Formatting really is impossible: C_InitToken with the right admin PIN is refused by the token itself.
    init = ock.tool("--init-token", "--label", LABEL, "--so-pin", ock.SO_PIN, check=False)
    assert "CKR_PIN_LOCKED" in init.stderr
    result = actions.format_token(bench.modules, bench.serial, admin_pin=ock.SO_PIN, confirmation=ock.LABEL)
    assert result.outcome in (Outcome.PIN_LOCKED, Outcome.REFUSED) and result.message == ADMIN_LOCKED_TEXT
    offered = {f.code: f.action for f in bench.scanned().findings}
    assert "format" not in offered.values(), offered
