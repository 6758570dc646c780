"""The operation frame: the one way every operation that changes a token runs (core.actions' four actions and
each step of re-enrolment, core.enrol).

`run_action` takes the body of an operation and, around it:
- runs its `precheck` first (new PINs and names against the bank's rules), so bad input spends no PIN try;
- finds the token (`locate`: by its token_id, or by a serial that is unique);
- takes the token's operator lock (a second console is refused with who holds it);
- holds the module lock, so the console's background scan cannot re-initialise the module mid-operation;
- reads the token before and after (tries left, findings);
- writes an "attempt" audit record before anything else (if it cannot be written, the operation is refused and
  no token is touched) and an "outcome" record after; a failed outcome record is said loudly in the result;
- logs the start and the end (core.logs): the action, the token's id, the outcome and its code, never a value.

A body works with a `Context` (the module, slot and state before; sessions through core.session) and ends early
by raising `Stop` with an outcome (a `Refusal` carries a stable code for the audit's reason). Nothing a user can
cause raises out of `run_action`. A PIN is never put into a message, an exception, the log or the audit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import pkcs11
from pkcs11.exceptions import PKCS11Error

from core import admin_pins, audit, ckr, lockouts, operator_lock
from core import session as sessions
from core.ckr import (  # the CKR_ values the frame tells apart, from the one table of them
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
from core.logs import logger, where
from core.modules import Module
from core.policy import Check, Invalid, invalid_current_pin
from core.snapshot import PinState, PinStatus, TokenGone, TokenSnapshot, is_gone, pin_state, read_snapshot, token_id

log = logger(__name__)


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
    def label(self) -> str:  # not `title`: that is str's own method, which a StrEnum must keep
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


class Stop(Exception):
    """Ends an operation early with an outcome; carries texts, never input values. `code`, when set, is the
    stable word the audit's reason gives for it (else the frame derives one from the outcome)."""

    code: str | None = None

    def __init__(self, outcome: Outcome, *texts: Text, field: str | None = None, checks: Sequence[Check] = ()) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.texts = texts
        self.field = field
        self.checks = tuple(checks)


class Refusal(Stop):
    """A stop with a stable code for the audit (`reason` = step:code)."""

    code: str

    def __init__(self, code: str, text: Text, *, outcome: Outcome = Outcome.REFUSED, field: str | None = None) -> None:
        super().__init__(outcome, text, field=field)
        self.code = code


@dataclass(slots=True)
class Context:
    """What an operation's body works with: the token's module and slot, and its state before."""

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

    def slot(self) -> pkcs11.Slot:
        """python-pkcs11's slot of the token (its mechanisms, its objects)."""
        return slot_of(self.module, self.slot_id)

    @contextlib.contextmanager
    def session(self, role: Role, pin: str, *, field: str) -> Iterator[int]:
        """A read-write session logged in as `role`, always logged out and closed again (also on a wrong PIN)."""
        refuse_unfit_pin(self.before, role, pin, field=field)
        self.role = role
        refused = self.refused(role, field)
        with sessions.logged_in(self.raw, self.slot_id, role.user_type, pin, refused=refused) as handle:
            self.compared(role)
            yield handle

    @contextlib.contextmanager
    def objects_session(self, role: Role, pin: str, *, field: str) -> Iterator[pkcs11.Session]:
        """As `session`, with python-pkcs11's session object, for work on the token's objects."""
        refuse_unfit_pin(self.before, role, pin, field=field)
        self.role = role
        refused = self.refused(role, field)
        with sessions.objects_logged_in(
            self.module.lib, self.raw, self.slot_id, role.user_type, pin, refused=refused
        ) as objects:
            self.compared(role)
            yield objects

    def refused(self, role: Role, field: str) -> sessions.Refused:
        """What a refused login as `role` becomes: the outcome the user sees (`login_failure`)."""

        def failure(error: CryptokiError) -> BaseException:
            if error.rv == CKR_PIN_INCORRECT:
                self.compared(role)
            return login_failure(error, role, field, self)

        return failure

    def compared(self, role: Role) -> None:
        """The token compared the PIN (accepted it, or refused it as wrong): a lockout remembered for it is over."""
        lockouts.forget(self.before.lockout_key, role)


def login_failure(error: CryptokiError, role: Role, field: str, ctx: Context) -> Exception:
    if error.rv == CKR_PIN_INCORRECT:
        return Stop(Outcome.WRONG_PIN, Text(N_("Wrong {pin}."), {"pin": role.title_text}), field=field)
    if error.rv == CKR_PIN_LOCKED:
        if _token_says_locked(ctx, role):
            return Stop(Outcome.PIN_LOCKED, locked_text(role), field=field)
        # Locked, though the flags are silent: a TPM's dictionary-attack lockout, which passes. Remembered, so
        # the dashboard shows the PIN locked after the next scan too (core.lockouts).
        lockouts.remember(ctx.before.lockout_key, role)
        return Stop(Outcome.PIN_LOCKED, LOCKED_FOR_NOW_TEXT, field=field)
    if error.rv == CKR_USER_PIN_NOT_INITIALIZED:
        return Stop(
            Outcome.REFUSED,
            Text(N_("The user PIN has not been set on this token yet: personalise it (p) first.")),
        )
    if error.rv == CKR_SESSION_READ_ONLY_EXISTS:
        return Stop(
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


def _token_says_locked(ctx: Context, role: Role) -> bool:
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


def refuse(invalid: Invalid | None) -> None:
    """What a validator of core.policy found (the field, the words, the rules broken) stops the action as POLICY:
    before the token is asked, so it spends no try."""
    if invalid is not None:
        raise Stop(Outcome.POLICY, invalid.text, field=invalid.field, checks=invalid.checks)


def refuse_unfit_pin(snapshot: TokenSnapshot, role: Role, pin: str, *, field: str) -> None:
    """A PIN that cannot be the token's (core.policy.current_pin_fits) is never sent: it could only spend a try."""
    bounds = {"min_length": snapshot.min_pin_length, "max_length": snapshot.max_pin_length}
    refuse(invalid_current_pin(pin, pin_name=role.title_text, field=field, **bounds))


def refuse_if_locked(ctx: Context, role: Role) -> None:
    pin = ctx.before.user_pin if role is Role.USER else ctx.before.so_pin
    if pin.status is PinStatus.LOCKED:
        ctx.role = role
        raise Stop(Outcome.PIN_LOCKED, locked_text(role))


def locate(modules: Sequence[Module], wanted: str) -> tuple[Module, int, str]:
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
                    for slot_id in sessions.slot_ids(module.lib, token_present=True):
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
            raise Stop(
                Outcome.REFUSED,
                Text(
                    N_("Several tokens have the serial {serial}: choose one by its id (--token): {ids}."),
                    {"serial": wanted, "ids": ids},
                ),
            )
    raise Stop(
        Outcome.NOT_FOUND,
        Text(N_("No token {token} is connected (its serial or its id)."), {"token": wanted}),
    )


def slot_of(module: Module, slot_id: int) -> pkcs11.Slot:
    """python-pkcs11's slot of the token; CKR_TOKEN_NOT_PRESENT when it is not there."""
    return sessions.slot_of(module.lib, slot_id)


def snapshot_now(module: Module, slot_id: int, serial: str | None = None) -> TokenSnapshot | None:
    """The token's state now, or None if it is gone: no token in the slot, or another one (`serial` differs:
    a token whose storage vanished reads as a blank one)."""
    try:
        snapshot = read_snapshot(module, slot_of(module, slot_id))
        return None if serial is not None and snapshot.serial != serial else snapshot
    except TokenGone:
        return None
    except (PKCS11Error, CryptokiError) as error:
        if is_gone(error):
            return None
        raise


def finding_codes(snapshot: TokenSnapshot | None) -> tuple[str, ...]:
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
    body: Callable[[Context], None],
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
    ctx: Context | None = None
    outcome = Outcome.DONE
    texts: tuple[Text, ...] = ()
    stop_field: str | None = None
    checks: tuple[Check, ...] = ()
    after: TokenSnapshot | None = None
    detail: str | None = None
    found = "-"  # the token's id once it is found: a fixed field for the log (a serial is the customer's)
    log.info("start action=%s step=%s", action, step or "-")
    try:
        if precheck is not None:
            precheck()
        module, slot_id, serial = locate(modules, serial)
        found = token_id(module.path, slot_id, serial)
        with operator_lock.holding(serial, str(action)):  # noqa: SIM117 (two scopes, two reasons)
            with module.lock:
                before = snapshot_now(module, slot_id)
                if before is None:
                    raise Stop(Outcome.TOKEN_GONE, Text(N_("The token was pulled out.")))
                ctx = Context(module, slot_id, before, role=audit_role)
                try:
                    body(ctx)
                finally:
                    try:
                        after = snapshot_now(module, slot_id, before.serial)
                    except (PKCS11Error, CryptokiError):
                        after = None
                texts = tuple(ctx.done)
    except Stop as stop:
        outcome, texts, stop_field, checks = stop.outcome, stop.texts, stop.field, stop.checks
        detail = stop.code
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
        rv = ckr.rv_of(error)
        if is_gone(error):
            outcome, texts = Outcome.TOKEN_GONE, (_PULLED_OUT,)
        else:
            outcome = Outcome.FAILED
            known = _FAILED_TEXT.get(rv) if rv is not None else None
            texts = (
                Text(known) if known else ckr.explain(rv) if rv is not None else ckr.explain(ckr.CKR_GENERAL_ERROR),
            )
        detail = ckr.name(rv) if rv is not None else type(error).__name__
    except Exception as error:  # never a traceback on the operator's screen; the audit keeps the type
        outcome = Outcome.FAILED
        texts = (Text(N_("The step failed: {error}."), {"error": f"{type(error).__name__}: {error}"}),)
        detail = type(error).__name__
        log.error("unexpected error action=%s step=%s token=%s: %s", action, step or "-", found, where(error))
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
        findings_before=finding_codes(before),
        findings_after=finding_codes(after),
    )
    reason = f"{step}:{detail}" if step and detail else (step or detail)
    try:
        _audit(result, reason, attempt.id)
    except audit.AuditError as error:
        result = replace(result, warnings=(_unrecorded(result, error), *result.warnings), recorded=False)
    # The code of a policy refusal names the rules a new PIN broke: something about the PIN, so not logged.
    code = "-" if outcome is Outcome.POLICY else (detail or "-")
    log.info(
        "end action=%s step=%s token=%s outcome=%s code=%s recorded=%s",
        action,
        step or "-",
        found,
        outcome,
        code,
        result.recorded,
    )
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
