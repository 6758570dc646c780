"""The four actions that change a token: personalise, change a PIN, unblock the user PIN, format.

Each is one function taking the loaded modules, the token's serial and the PINs, and returning an
`ActionResult`; none raises for anything a user can cause. Around every one, the same frame (`_run`):
- the new PINs and name are checked against the bank's rules first, so bad input spends no PIN try;
- the token's operator lock is taken (a second console is refused with who holds it);
- the module lock is held, so the console's background scan cannot re-initialise the module mid-action;
- the token is read before and after (tries left, findings);
- the audit trail gets an "attempt" record before anything else (if it cannot be written, the action is refused
  and no token is touched) and an "outcome" record after; a failed outcome record is said loudly in the result.

PKCS#11 calls go through `core.cryptoki` on sessions this module opens and always closes, so a wrong PIN
entered all day leaves no session behind. A PIN is never put into a message, an exception or the audit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from pkcs11.exceptions import PKCS11Error

from core import admin_pins, audit, ckr, lockouts, operator_lock
from core.ckr import (  # the CKR_ values the actions tell apart, from the one table of them
    CKR_PIN_EXPIRED,
    CKR_PIN_INCORRECT,
    CKR_PIN_INVALID,
    CKR_PIN_LEN_RANGE,
    CKR_PIN_LOCKED,
    CKR_SESSION_EXISTS,
    CKR_SESSION_READ_ONLY_EXISTS,
    CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
    CKR_USER_PIN_NOT_INITIALIZED,
)
from core.cryptoki import CKU_SO, CKU_USER, Cryptoki, CryptokiError
from core.diagnostics import diagnose_token
from core.findings import Action
from core.i18n import N_, Text, _
from core.modules import Module
from core.policy import Check, current_pin_fits, current_pin_refusal, label_checks, pin_checks, problems
from core.snapshot import PinState, PinStatus, TokenGone, TokenSnapshot, is_gone, pin_state, read_snapshot, token_id

FACTORY_USER_PIN = "12345678"  # what a formatted token is given, so the customer's applet works as from new
FACTORY_ADMIN_PIN = "87654321"


class Outcome(StrEnum):
    DONE = "done"
    WRONG_PIN = "wrong-pin"
    PIN_LOCKED = "pin-locked"
    POLICY = "policy"  # a new PIN or name breaks the rules, or the two entries differ: nothing was tried
    REFUSED = "refused"  # the token's state or the confirmation forbids it: nothing was tried
    BUSY = "busy"  # another operator holds the token
    NOT_FOUND = "not-found"
    TOKEN_GONE = "token-gone"  # pulled out mid-action
    FAILED = "failed"  # the token said no for another reason


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"

    @property
    def user_type(self) -> int:
        return CKU_USER if self is Role.USER else CKU_SO

    @property
    def title_text(self) -> Text:
        """The title as a Text: a placeholder of another Text keeps its language open too."""
        return Text(N_("user PIN") if self is Role.USER else N_("admin PIN"))

    @property
    def title(self) -> str:
        return str(self.title_text)


@dataclass(frozen=True, slots=True)
class ActionResult:
    action: Action
    outcome: Outcome
    serial: str
    label: str = ""
    role: Role | None = None  # whose PIN was presented
    texts: tuple[Text, ...] = ()
    warnings: tuple[Text, ...] = ()
    problems: tuple[Check, ...] = ()  # the rules a new PIN or name broke (outcome POLICY)
    field: str | None = None  # the input at fault, for a screen to focus: "admin_pin", "new_pin", "label", …
    before: TokenSnapshot | None = None
    after: TokenSnapshot | None = None
    findings_before: tuple[str, ...] = ()
    findings_after: tuple[str, ...] = ()
    recorded: bool = True  # False: the outcome record could not be written; the first warning says so, loudly

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.DONE

    @property
    def message(self) -> str:
        return " ".join(str(text) for text in self.texts)

    def pin(self, snapshot: TokenSnapshot | None) -> PinState | None:
        if snapshot is None or self.role is None:
            return None
        return snapshot.user_pin if self.role is Role.USER else snapshot.so_pin

    @property
    def pin_before(self) -> PinState | None:
        return self.pin(self.before)

    @property
    def pin_after(self) -> PinState | None:
        return self.pin(self.after)


def tries_text(pin: PinState | None) -> Text | None:
    """How many tries the PIN has left, in words, as far as the token tells."""
    if pin is None:
        return None
    if pin.status is PinStatus.LOCKED:
        return Text(N_("It is now locked."))
    if pin.tries_left is not None and pin.max_tries:
        return Text(N_("{left} of {max} tries left."), {"left": pin.tries_left, "max": pin.max_tries})
    if pin.status is PinStatus.FINAL_TRY:
        return Text(N_("One try left: the next wrong PIN locks it."))
    if pin.status is PinStatus.COUNT_LOW:
        return Text(N_("Tries are running out; the token does not say how many are left."))
    return None


class _Stop(Exception):
    """Ends an action early with an outcome; carries texts, never input values."""

    def __init__(self, outcome: Outcome, *texts: Text, field: str | None = None, checks: Sequence[Check] = ()) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.texts = texts
        self.field = field
        self.checks = tuple(checks)


@dataclass(slots=True)
class _Context:
    """What an action body works with: the token's module and slot, and its state before."""

    module: Module
    slot_id: int
    before: TokenSnapshot
    role: Role | None = None  # set by the body once it presents a PIN; names the PIN in a wrong-PIN message
    warnings: list[Text] = field(default_factory=list)
    done: list[Text] = field(default_factory=list)
    admin_pin_from_keyring: bool = False

    @property
    def raw(self) -> Cryptoki:
        return self.module.raw

    @contextlib.contextmanager
    def session(self, role: Role, pin: str, *, field: str) -> Iterator[int]:
        """A read-write session logged in as `role`, always logged out and closed again (also on a wrong PIN)."""
        refuse_unfit_pin(self.before, role, pin, field=field)
        self.role = role
        handle = self.raw.open_session(self.slot_id, rw=True)
        logged_in = False
        try:
            self.login(handle, role, pin, field=field)
            logged_in = True
            yield handle
        finally:
            with contextlib.suppress(CryptokiError):
                if logged_in:
                    self.raw.logout(handle)
            with contextlib.suppress(CryptokiError):
                self.raw.close_session(handle)

    def login(self, handle: int, role: Role, pin: str, *, field: str) -> None:
        """C_Login as `role` on an open session; a refusal becomes the outcome the user sees (`_login_failure`).
        Accepted, or refused as a wrong PIN, shows the token compared the PIN: a lockout remembered for it is over."""
        self.role = role
        try:
            self.raw.login(handle, role.user_type, pin)
        except CryptokiError as error:
            if error.rv == CKR_PIN_INCORRECT:
                lockouts.forget(self.before.lockout_key, role)
            raise _login_failure(error, role, field, self) from None
        lockouts.forget(self.before.lockout_key, role)


def _login_failure(error: CryptokiError, role: Role, field: str, ctx: _Context) -> Exception:
    if error.rv == CKR_PIN_INCORRECT:
        return _Stop(Outcome.WRONG_PIN, Text(N_("Wrong {pin}."), {"pin": role.title_text}), field=field)
    if error.rv == CKR_PIN_LOCKED:
        if _token_says_locked(ctx, role):
            return _Stop(Outcome.PIN_LOCKED, locked_text(role), field=field)
        # Locked, though the flags are silent: a TPM's dictionary-attack lockout, which passes. Remembered, so
        # the dashboard shows the PIN locked after the next scan too (core.lockouts).
        lockouts.remember(ctx.before.lockout_key, role)
        return _Stop(Outcome.PIN_LOCKED, LOCKED_FOR_NOW_TEXT, field=field)
    if error.rv == CKR_USER_PIN_NOT_INITIALIZED:
        return _Stop(
            Outcome.REFUSED,
            Text(N_("The user PIN has not been set on this token yet: personalise it (p) first.")),
        )
    if error.rv == CKR_SESSION_READ_ONLY_EXISTS:
        return _Stop(
            Outcome.FAILED,
            Text(N_("Another program has the token open (the signing applet?): close it, then try again.")),
        )
    return error


LOCKED_FOR_NOW_TEXT = Text(
    N_(
        "The token refuses every PIN for now, though it does not mark the PIN as locked: this is the TPM's "
        "protection against guessing after too many wrong PINs. It wears off after a while, or the TPM's owner "
        "clears it. The PIN, keys and certificates are not lost and no new token is needed; try the right PIN "
        "once it has worn off."
    )
)


def _token_says_locked(ctx: _Context, role: Role) -> bool:
    """Whether the token itself says, now, that this PIN is locked (its flags, or a vendor's try counter). Read
    again, not taken from before the attempt: the attempt that answered "locked" may have been the last try."""
    so = role is Role.ADMIN
    try:
        info = ctx.raw.token_info(ctx.slot_id)
    except CryptokiError:
        return True  # it cannot say more: its "locked" stands as it is
    try:
        extended = ctx.raw.extended_token_info(ctx.slot_id) if ctx.raw.has_extended_info else None
    except CryptokiError:
        extended = None  # the vendor's counters are a bonus; the flags still tell
    tries = (extended.so_tries_left if so else extended.user_tries_left) if extended else None
    maximum = (extended.so_max_tries if so else extended.user_max_tries) if extended else None
    return pin_state(info.flags, so=so, tries_left=tries, max_tries=maximum).status is PinStatus.LOCKED


def locked_text(role: Role) -> Text:
    """What a locked PIN of this role means (public: a screen says it before anything is typed)."""
    if role is Role.USER:
        return Text(N_("The user PIN is locked: unblock it with the admin PIN (u)."))
    return Text(
        N_(
            "The admin PIN is locked: the token refuses every admin action, and no PIN can be set or reset. "
            "Only the issuer can bring such a token back; the customer needs a new token and a new registration."
        )
    )


def _check_new_pin(pin: str, again: str, *, snapshot: TokenSnapshot, role: Role, field: str) -> None:
    failed = problems(pin_checks(pin, again, max_length=snapshot.max_pin_length))
    if failed:
        raise _Stop(
            Outcome.POLICY,
            Text(N_("The new {pin} does not meet the rules."), {"pin": role.title_text}),
            field=field,
            checks=failed,
        )


def refuse_unfit_pin(snapshot: TokenSnapshot, role: Role, pin: str, *, field: str) -> None:
    """A PIN that cannot be the token's (core.policy.current_pin_fits) is never sent: it could only spend a try."""
    bounds = {"min_length": snapshot.min_pin_length, "max_length": snapshot.max_pin_length}
    if not current_pin_fits(pin, **bounds):
        raise _Stop(Outcome.POLICY, current_pin_refusal(role.title_text, **bounds), field=field)


def _check_label(label: str) -> None:
    failed = problems(label_checks(label))
    if failed:
        raise _Stop(Outcome.POLICY, Text(N_("The token name does not meet the rules.")), field="label", checks=failed)


def _refuse_if_locked(ctx: _Context, role: Role) -> None:
    pin = ctx.before.user_pin if role is Role.USER else ctx.before.so_pin
    if pin.status is PinStatus.LOCKED:
        ctx.role = role
        raise _Stop(Outcome.PIN_LOCKED, locked_text(role))


def _admin_pin(serial: str, given: str | None, ctx: _Context | None = None) -> str:
    """The admin PIN typed, or else the one remembered in the keyring for this token."""
    if given:
        return given
    if ctx is not None:
        serial = ctx.before.serial  # the token's own serial: the caller may have named it by its token_id
    remembered = admin_pins.recall(serial)
    if remembered is None:
        raise _Stop(Outcome.POLICY, Text(N_("Type the admin PIN.")), field="admin_pin")
    if ctx is not None:
        ctx.admin_pin_from_keyring = True
    return remembered


def _locate(modules: Sequence[Module], wanted: str) -> tuple[Module, int, str]:
    """The token named by its token_id (`scan --json`, the console's panel) or by its serial when that is unique:
    (module, slot id, serial). A serial shared by several tokens (tpm2-pkcs11 gives all 0000000000000000) is
    refused with their ids, never guessed."""
    # A token plugged in since the modules were loaded shows only after a re-initialisation (SoftHSM2 needs it);
    # that costs the module's open sessions, so it is the second attempt, under the module's lock.
    for refresh in (False, True):
        by_serial: list[tuple[Module, int, str]] = []
        for module in modules:
            with module.lock:
                try:
                    if refresh:
                        module.refresh()
                    for slot in module.lib.get_slots(token_present=True):
                        slot_id = int(slot.slot_id)
                        serial = module.raw.token_info(slot_id).serial
                        if token_id(module.path, slot_id, serial) == wanted:
                            return module, slot_id, serial
                        if serial == wanted:
                            by_serial.append((module, slot_id, serial))
                except (PKCS11Error, CryptokiError):
                    continue  # a module that cannot list its slots has no token for us
        if len(by_serial) == 1:
            return by_serial[0]
        if len(by_serial) > 1:
            ids = ", ".join(token_id(module.path, slot_id, serial) for module, slot_id, serial in by_serial)
            raise _Stop(
                Outcome.REFUSED,
                Text(
                    N_("Several tokens have the serial {serial}: choose one by its id (--token): {ids}."),
                    {"serial": wanted, "ids": ids},
                ),
            )
    raise _Stop(
        Outcome.NOT_FOUND,
        Text(N_("No token {token} is connected (its serial or its id)."), {"token": wanted}),
    )


def _slot(module: Module, slot_id: int) -> Any:
    return next(slot for slot in module.lib.get_slots(token_present=True) if int(slot.slot_id) == slot_id)


def _snapshot(module: Module, slot_id: int, serial: str | None = None) -> TokenSnapshot | None:
    """The token's state now, or None if it is gone: no token in the slot, or another one (`serial` differs:
    a token whose storage vanished reads as a blank one)."""
    try:
        snapshot = read_snapshot(module, _slot(module, slot_id))
        return None if serial is not None and snapshot.serial != serial else snapshot
    except (TokenGone, StopIteration):
        return None
    except (PKCS11Error, CryptokiError) as error:
        if is_gone(error):
            return None
        raise


def _codes(snapshot: TokenSnapshot | None) -> tuple[str, ...]:
    return tuple(finding.code for finding in diagnose_token(snapshot)) if snapshot else ()


_FAILED_TEXT = {
    CKR_PIN_LEN_RANGE: N_("The token does not accept a PIN of this length."),
    CKR_PIN_INVALID: N_("The token does not accept these characters in a PIN."),
    CKR_PIN_EXPIRED: N_("The token wants this PIN changed before anything else: change it first (c)."),
    CKR_SESSION_EXISTS: N_("Another program has the token open (the signing applet?): close it, then try again."),
    CKR_USER_ANOTHER_ALREADY_LOGGED_IN: N_("Another program is logged in to the token: close it, then try again."),
}


def run_action(
    action: Action,
    modules: Sequence[Module],
    serial: str,
    body: Callable[[_Context], None],
    *,
    precheck: Callable[[], None] | None = None,
    audit_role: Role | None = None,
    step: str | None = None,
) -> ActionResult:
    """The frame every operation on a token runs in (see the module docstring). `step` names the part of a
    longer operation (re-enrolment's keygen, csr, …) in the audit's reason."""
    attempt = audit.attempt(str(action), serial, role=str(audit_role) if audit_role else None, reason=step)
    try:
        audit.append(attempt)
    except audit.AuditError as error:  # nothing may happen off the record: not even a login
        return ActionResult(action, Outcome.REFUSED, serial, role=audit_role, texts=(_unwritable(error),))
    ctx: _Context | None = None
    outcome, texts, stop_field, checks = Outcome.DONE, (), None, ()
    after: TokenSnapshot | None = None
    detail: str | None = None
    try:
        if precheck is not None:
            precheck()
        module, slot_id, serial = _locate(modules, serial)
        with operator_lock.holding(serial, str(action)):  # noqa: SIM117 (two scopes, two reasons)
            with module.lock:
                before = _snapshot(module, slot_id)
                if before is None:
                    raise _Stop(Outcome.TOKEN_GONE, Text(N_("The token was pulled out.")))
                ctx = _Context(module, slot_id, before, role=audit_role)
                try:
                    body(ctx)
                finally:
                    try:
                        after = _snapshot(module, slot_id, before.serial)
                    except (PKCS11Error, CryptokiError):
                        after = None
                texts = tuple(ctx.done)
    except _Stop as stop:
        outcome, texts, stop_field, checks = stop.outcome, stop.texts, stop.field, stop.checks
        detail = getattr(stop, "code", None)
        if detail is None and outcome is Outcome.POLICY:
            detail = ",".join(check.rule for check in checks) or stop_field
        elif detail is None and step is not None:
            detail = str(outcome)
    except operator_lock.TokenBusy as busy:
        outcome = Outcome.BUSY
        who = busy.holder.describe() if busy.holder else _("another process")
        texts = (
            Text(
                N_("Another operator is working on this token: {who}. Try again when they are done."),
                {"who": who},
            ),
        )
        detail = str(outcome) if step is not None else None
    except operator_lock.LockError as error:  # the lock's directory or file is unsafe or unusable
        outcome, texts = Outcome.REFUSED, (error.text,)
        detail = "lock"
    except TokenGone:
        outcome, texts = Outcome.TOKEN_GONE, (_PULLED_OUT,)
    except (CryptokiError, PKCS11Error) as error:
        rv = getattr(error, "rv", None)
        if is_gone(error):
            outcome, texts = Outcome.TOKEN_GONE, (_PULLED_OUT,)
        else:
            outcome = Outcome.FAILED
            rv = ckr.rv_of(error)
            known = _FAILED_TEXT.get(rv) if rv is not None else None
            texts = (
                Text(known) if known else ckr.explain(rv) if rv is not None else ckr.explain(ckr.CKR_GENERAL_ERROR),
            )
        detail = ckr.name(rv) if rv is not None else type(error).__name__
    except Exception as error:  # never a traceback on the operator's screen; the audit keeps the type
        outcome = Outcome.FAILED
        texts = (Text(N_("The step failed: {error}."), {"error": f"{type(error).__name__}: {error}"}),)
        detail = type(error).__name__
    role = ctx.role if ctx else audit_role
    if outcome is Outcome.WRONG_PIN and ctx is not None and role is Role.ADMIN and ctx.admin_pin_from_keyring:
        admin_pins.forget(serial)  # a stale remembered PIN must not spend the next try too
        texts = (*texts, Text(N_("The admin PIN remembered for this token was wrong and has been forgotten.")))
    if outcome is Outcome.WRONG_PIN and ctx is not None and after is not None:
        more = tries_text(after.user_pin if role is Role.USER else after.so_pin)
        if more is not None:
            texts = (*texts, more)
    if ctx is not None and after is None and outcome is not Outcome.TOKEN_GONE:
        if outcome is Outcome.FAILED:
            texts = ()  # the token's raw refusal was its going away; `detail` keeps the code for the audit
        outcome = Outcome.TOKEN_GONE
        texts = (*texts, _PULLED_OUT)
    if outcome is Outcome.TOKEN_GONE and step is not None and detail is None:
        detail = str(outcome)
    before = ctx.before if ctx else None
    result = ActionResult(
        action=action,
        outcome=outcome,
        serial=serial,
        label=(before.label if before else ""),
        role=role,
        texts=texts,
        warnings=tuple(ctx.warnings) if ctx else (),
        problems=checks,
        field=stop_field,
        before=before,
        after=after,
        findings_before=_codes(before),
        findings_after=_codes(after),
    )
    reason = f"{step}:{detail}" if step and detail else (step or detail)
    try:
        _audit(result, reason, attempt.id)
    except audit.AuditError as error:
        result = replace(result, warnings=(_unrecorded(result, error), *result.warnings), recorded=False)
    return result


def _unwritable(error: audit.AuditError) -> Text:
    return Text(
        N_("Cannot write the audit trail at {path}: {reason}. Nothing was changed."),
        {"path": str(error.path), "reason": Text(error.reason)},
    )


def _unrecorded(result: ActionResult, error: audit.AuditError) -> Text:
    params = {"path": str(error.path), "reason": Text(error.reason)}
    if result.ok:
        return Text(
            N_(
                "DONE, BUT NOT RECORDED: the audit trail at {path} could not be written ({reason}). This change is "
                "on no record: tell the administrator."
            ),
            params,
        )
    return Text(
        N_(
            "NOT RECORDED: the audit trail at {path} could not be written ({reason}). How this attempt ended is "
            "on no record: tell the administrator."
        ),
        params,
    )


_PULLED_OUT = Text(N_("The token was pulled out during the action: plug it back in and check its state."))


def _audit(result: ActionResult, reason: str | None, attempt_id: str) -> None:
    pin_before, pin_after = result.pin_before, result.pin_after
    module = result.before.module_path if result.before else ""
    audit.append(
        audit.AuditEntry(
            action=str(result.action),
            outcome=str(result.outcome),
            serial=result.serial,
            label=result.label,
            module=module,
            role=str(result.role) if result.role else None,
            reason=reason,
            findings_before=result.findings_before,
            findings_after=result.findings_after,
            pin_before=str(pin_before.status) if pin_before else None,
            pin_after=str(pin_after.status) if pin_after else None,
            tries_before=pin_before.tries_left if pin_before else None,
            tries_after=pin_after.tries_left if pin_after else None,
            id=attempt_id,
        )
    )


def _keep_admin_pin(ctx: _Context, serial: str, pin: str, remember: bool) -> None:
    """After a success: remember the admin PIN if asked, and keep an already remembered one current."""
    serial = ctx.before.serial  # the token's own serial: the caller may have named it by its token_id
    if not remember and admin_pins.recall(serial) is None:
        return
    try:
        admin_pins.remember(serial, pin)
    except admin_pins.KeyringUnavailable as error:
        ctx.warnings.append(Text(str(error)))
        return
    if remember:
        ctx.warnings.append(Text(N_("The admin PIN is remembered in this computer's keyring for this token.")))


def _warn_default_admin_pin(ctx: _Context, pin: str) -> None:
    if pin == FACTORY_ADMIN_PIN:
        ctx.warnings.append(
            Text(N_("The admin PIN is still the factory default: anyone can unblock or format this token. Change it."))
        )


# --- the actions -----------------------------------------------------------------------------------------------


def personalise(
    modules: Sequence[Module],
    serial: str,
    *,
    label: str,
    admin_pin: str | None,
    new_user_pin: str,
    new_user_pin_again: str,
    new_admin_pin: str | None = None,
    new_admin_pin_again: str | None = None,
    remember_admin_pin: bool = False,
) -> ActionResult:
    """«Персонализация токена»: C_InitToken with the name and the admin PIN, then the user PIN as SO.

    For an empty or fresh token only: one holding keys or certificates is refused (formatting it is a separate,
    confirmed action). `new_admin_pin` replaces the admin PIN on the way (some tokens require it after init).
    """

    def precheck() -> None:
        _check_label(label)
        if new_admin_pin is not None or new_admin_pin_again is not None:
            failed = problems(pin_checks(new_admin_pin or "", new_admin_pin_again or ""))
            if failed:
                raise _Stop(
                    Outcome.POLICY,
                    Text(N_("The new {pin} does not meet the rules."), {"pin": Role.ADMIN.title_text}),
                    field="new_admin_pin",
                    checks=failed,
                )

    def body(ctx: _Context) -> None:
        snap = ctx.before
        _refuse_if_locked(ctx, Role.ADMIN)
        refusal = personalise_refusal(snap)
        if refusal is not None:
            raise _Stop(Outcome.REFUSED, refusal)
        _check_new_pin(new_user_pin, new_user_pin_again, snapshot=snap, role=Role.USER, field="new_pin")
        so_pin = _admin_pin(serial, admin_pin, ctx)
        refuse_unfit_pin(snap, Role.ADMIN, so_pin, field="admin_pin")
        ctx.role = Role.ADMIN
        try:
            ctx.raw.init_token(ctx.slot_id, so_pin, label)
        except CryptokiError as error:
            stop = _login_failure(error, Role.ADMIN, "admin_pin", ctx)
            if isinstance(stop, _Stop) and stop.outcome is Outcome.WRONG_PIN and not snap.initialised:
                stop.texts = (*stop.texts, Text(N_("A token new from the factory takes the factory admin PIN.")))
            raise stop from None
        with ctx.session(Role.ADMIN, so_pin, field="admin_pin") as handle:
            if new_admin_pin:
                ctx.raw.set_pin(handle, so_pin, new_admin_pin)
                so_pin = new_admin_pin
            ctx.raw.init_pin(handle, new_user_pin)
        ctx.done.append(Text(N_("Token personalised as «{label}» with the new user PIN."), {"label": label}))
        if new_admin_pin:
            ctx.done.append(Text(N_("The admin PIN was changed too: from now on only the new one works.")))
        _warn_default_admin_pin(ctx, so_pin)
        _keep_admin_pin(ctx, serial, so_pin, remember_admin_pin)

    return run_action(Action.PERSONALISE, modules, serial, body, precheck=precheck, audit_role=Role.ADMIN)


def change_pin(
    modules: Sequence[Module],
    serial: str,
    *,
    role: Role,
    current_pin: str,
    new_pin: str,
    new_pin_again: str,
) -> ActionResult:
    """«Изменить PIN-код»: log in as the role with its current PIN, then C_SetPIN."""

    def body(ctx: _Context) -> None:
        _check_new_pin(new_pin, new_pin_again, snapshot=ctx.before, role=role, field="new_pin")
        if new_pin == current_pin:
            raise _Stop(Outcome.POLICY, Text(N_("The new PIN is the same as the current one.")), field="new_pin")
        _refuse_if_locked(ctx, role)
        with ctx.session(role, current_pin, field="current_pin") as handle:
            ctx.raw.set_pin(handle, current_pin, new_pin)
        ctx.done.append(Text(N_("The {pin} has been changed."), {"pin": role.title_text}))
        if role is Role.ADMIN:
            _keep_admin_pin(ctx, serial, new_pin, remember=False)

    return run_action(Action.CHANGE_PIN, modules, serial, body, audit_role=role)


def unblock(
    modules: Sequence[Module],
    serial: str,
    *,
    admin_pin: str | None,
    new_user_pin: str,
    new_user_pin_again: str,
    remember_admin_pin: bool = False,
) -> ActionResult:
    """«Разблокировать»: log in as SO and set a new user PIN (C_InitPIN), which resets its try counter."""

    def body(ctx: _Context) -> None:
        _check_new_pin(new_user_pin, new_user_pin_again, snapshot=ctx.before, role=Role.USER, field="new_pin")
        _refuse_if_locked(ctx, Role.ADMIN)
        so_pin = _admin_pin(serial, admin_pin, ctx)
        with ctx.session(Role.ADMIN, so_pin, field="admin_pin") as handle:
            ctx.raw.init_pin(handle, new_user_pin)
        _reset_user_count(ctx, new_user_pin)
        ctx.done.append(Text(N_("«PIN-код успешно разблокирован»: the user PIN is unblocked and set to the new one.")))
        _warn_default_admin_pin(ctx, so_pin)
        _keep_admin_pin(ctx, serial, so_pin, remember_admin_pin)

    return run_action(Action.UNBLOCK, modules, serial, body, audit_role=Role.ADMIN)


def _reset_user_count(ctx: _Context, pin: str) -> None:
    """One user login with the PIN just set. openCryptoki's C_InitPIN restarts the try count only when the PIN
    was locked: after an unblock at the final try, one wrong PIN would lock the new PIN. A right PIN restarts the
    count on every token, and this one cannot be wrong (C_InitPIN has just set it)."""
    try:
        handle = ctx.raw.open_session(ctx.slot_id, rw=True)
    except CryptokiError:
        return  # the PIN is set either way; the after-state shows the count (or that the token is gone)
    try:
        with contextlib.suppress(CryptokiError):
            ctx.raw.login(handle, CKU_USER, pin)
            ctx.raw.logout(handle)
    finally:
        with contextlib.suppress(CryptokiError):
            ctx.raw.close_session(handle)


HOLDS_KEYS = Text(
    N_(
        "This token holds keys or certificates: personalising would erase them. If that is really "
        "wanted, format it (f), which asks for confirmation."
    )
)


def personalise_refusal(snapshot: TokenSnapshot) -> Text | None:
    """Why this token must not be personalised, or None: keys would be erased, or the admin PIN is locked."""
    if snapshot.certificates or snapshot.keys:
        return HOLDS_KEYS
    if snapshot.so_pin.status is PinStatus.LOCKED:
        return locked_text(Role.ADMIN)
    return None


NOT_CONFIRMED = N_("To confirm, type the token's name or its serial exactly. Nothing was changed.")


def confirmation_matches(snapshot: TokenSnapshot, typed: str) -> bool:
    """Format is confirmed by typing the token's name, or its serial (a token without a name has only that)."""
    typed = typed.strip()
    return bool(typed) and typed in {snapshot.label.strip(), snapshot.serial.strip()} - {""}


def format_refusal(snapshot: TokenSnapshot) -> Text | None:
    """Why this token must not be formatted now, or None. The guide: never format mid-registration."""
    if "registration-unfinished" in _codes(snapshot):
        return Text(
            N_(
                "A registration is unfinished on this token (a key without its certificate, or the reverse). The "
                "bank's guide forbids formatting now: finish the registration first, or the customer loses it."
            )
        )
    if snapshot.so_pin.status is PinStatus.LOCKED:
        return locked_text(Role.ADMIN)
    return None


def format_token(
    modules: Sequence[Module],
    serial: str,
    *,
    admin_pin: str | None,
    confirmation: str,
    remember_admin_pin: bool = False,
) -> ActionResult:
    """«Форматировать»: C_InitToken with no name, then the factory user PIN: as from new, but for the admin PIN,
    which C_InitToken keeps (it is the PIN it is called with), and the result says so.

    Every key and certificate is lost. Refused during an unfinished registration, and unless `confirmation` is
    the token's name or serial.
    """

    def body(ctx: _Context) -> None:
        _refuse_if_locked(ctx, Role.ADMIN)
        refusal = format_refusal(ctx.before)
        if refusal is not None:
            raise _Stop(Outcome.REFUSED, refusal)
        if not confirmation_matches(ctx.before, confirmation):
            raise _Stop(
                Outcome.REFUSED,
                Text(NOT_CONFIRMED),
                field="confirmation",
            )
        so_pin = _admin_pin(serial, admin_pin, ctx)
        refuse_unfit_pin(ctx.before, Role.ADMIN, so_pin, field="admin_pin")
        ctx.role = Role.ADMIN
        try:
            ctx.raw.init_token(ctx.slot_id, so_pin, "")
        except CryptokiError as error:
            raise _login_failure(error, Role.ADMIN, "admin_pin", ctx) from None
        with ctx.session(Role.ADMIN, so_pin, field="admin_pin") as handle:
            ctx.raw.init_pin(handle, FACTORY_USER_PIN)
        ctx.done.append(
            Text(
                N_(
                    "Token formatted: no name, no keys, the factory user PIN. The admin PIN is unchanged: "
                    "formatting keeps the one just typed. The token is ready for the customer's registration."
                )
            )
        )
        _warn_default_admin_pin(ctx, so_pin)
        _keep_admin_pin(ctx, serial, so_pin, remember_admin_pin)

    return run_action(Action.FORMAT, modules, serial, body, audit_role=Role.ADMIN)
