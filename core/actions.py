"""The four actions that change a token: personalise, change a PIN, unblock the user PIN, format.

Each is one function taking the loaded modules, the token's serial and the PINs, and returning an
`ActionResult`; none raises for anything a user can cause. Each runs in the operation frame (core.frame:
checks first, operator lock, module lock, snapshots before and after, the audit line), with its sessions
through core.session, which always closes them, so a wrong PIN entered all day leaves no session behind. A PIN
is never put into a message, an exception, the log or the audit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from core import admin_pins
from core import session as sessions
from core.cryptoki import CKU_USER, CryptokiError
from core.findings import Action
from core.frame import (
    LOCKED_FOR_NOW_TEXT,
    ActionResult,
    Context,
    Outcome,
    Role,
    Stop,
    finding_codes,
    locked_text,
    login_failure,
    refuse,
    refuse_if_locked,
    refuse_unfit_pin,
    run_action,
    tries_text,
)
from core.i18n import N_, Text
from core.modules import Module
from core.policy import (
    FACTORY_ADMIN_PIN,
    FACTORY_USER_PIN,
    TYPE_ADMIN_PIN,
    invalid_label,
    invalid_new_pin,
    invalid_same_pin,
    missing,
)
from core.snapshot import PinStatus, TokenSnapshot

# The frame's names that the front ends import from here, with the actions.
__all__ = [
    "FACTORY_ADMIN_PIN",
    "FACTORY_USER_PIN",
    "HOLDS_KEYS",
    "LOCKED_FOR_NOW_TEXT",
    "NOT_CONFIRMED",
    "Action",
    "ActionResult",
    "Outcome",
    "Role",
    "Text",
    "change_pin",
    "confirmation_matches",
    "format_refusal",
    "format_token",
    "locked_text",
    "personalise",
    "personalise_refusal",
    "refuse_unfit_pin",
    "tries_text",
    "unblock",
]


def _check_new_pin(pin: str, again: str, *, snapshot: TokenSnapshot, role: Role, field: str) -> None:
    refuse(
        invalid_new_pin(
            pin,
            again,
            pin_name=role.title_text,
            field=field,
            again_field=f"{field}_again",
            max_length=snapshot.max_pin_length,
        )
    )


def _admin_pin(serial: str, given: str | None, ctx: Context | None = None) -> str:
    """The admin PIN typed, or else the one remembered in the keyring for this token."""
    if given:
        return given
    if ctx is not None:
        serial = ctx.before.serial  # the token's own serial: the caller may have named it by its token_id
    remembered = admin_pins.recall(serial) or ""
    refuse(missing(remembered, field="admin_pin", text=Text(TYPE_ADMIN_PIN)))
    if ctx is not None:
        ctx.admin_pin_from_keyring = True
    return remembered


def _keep_admin_pin(ctx: Context, serial: str, pin: str, remember: bool) -> None:
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


def _warn_default_admin_pin(ctx: Context, pin: str) -> None:
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
        refuse(invalid_label(label))
        if new_admin_pin is not None or new_admin_pin_again is not None:
            pins = (new_admin_pin or "", new_admin_pin_again or "")
            refuse(
                invalid_new_pin(
                    *pins, pin_name=Role.ADMIN.title_text, field="new_admin_pin", again_field="new_admin_pin_again"
                )
            )

    def body(ctx: Context) -> None:
        snap = ctx.before
        refuse_if_locked(ctx, Role.ADMIN)
        refusal = personalise_refusal(snap)
        if refusal is not None:
            raise Stop(Outcome.REFUSED, refusal)
        _check_new_pin(new_user_pin, new_user_pin_again, snapshot=snap, role=Role.USER, field="new_pin")
        so_pin = _admin_pin(serial, admin_pin, ctx)
        refuse_unfit_pin(snap, Role.ADMIN, so_pin, field="admin_pin")
        ctx.role = Role.ADMIN
        try:
            sessions.init_token(ctx.raw, ctx.slot_id, so_pin, label)
        except CryptokiError as error:
            stop = login_failure(error, Role.ADMIN, "admin_pin", ctx)
            if isinstance(stop, Stop) and stop.outcome is Outcome.WRONG_PIN and not snap.initialised:
                stop.texts = (*stop.texts, Text(N_("A token new from the factory takes the factory admin PIN.")))
            raise stop from None
        with ctx.session(Role.ADMIN, so_pin, field="admin_pin") as handle:
            if new_admin_pin:
                sessions.set_pin(ctx.raw, handle, so_pin, new_admin_pin)
                so_pin = new_admin_pin
            sessions.init_pin(ctx.raw, handle, new_user_pin)
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
    """«Изменить…»: log in as the role with its current PIN, then C_SetPIN."""

    def body(ctx: Context) -> None:
        _check_new_pin(new_pin, new_pin_again, snapshot=ctx.before, role=role, field="new_pin")
        refuse(invalid_same_pin(current_pin, new_pin))
        refuse_if_locked(ctx, role)
        with ctx.session(role, current_pin, field="current_pin") as handle:
            sessions.set_pin(ctx.raw, handle, current_pin, new_pin)
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

    def body(ctx: Context) -> None:
        _check_new_pin(new_user_pin, new_user_pin_again, snapshot=ctx.before, role=Role.USER, field="new_pin")
        refuse_if_locked(ctx, Role.ADMIN)
        so_pin = _admin_pin(serial, admin_pin, ctx)
        with ctx.session(Role.ADMIN, so_pin, field="admin_pin") as handle:
            sessions.init_pin(ctx.raw, handle, new_user_pin)
        _reset_user_count(ctx, new_user_pin)
        ctx.done.append(Text(N_("«PIN-код успешно разблокирован»: the user PIN is unblocked and set to the new one.")))
        _warn_default_admin_pin(ctx, so_pin)
        _keep_admin_pin(ctx, serial, so_pin, remember_admin_pin)

    return run_action(Action.UNBLOCK, modules, serial, body, audit_role=Role.ADMIN)


def _reset_user_count(ctx: Context, pin: str) -> None:
    """One user login with the PIN just set. openCryptoki's C_InitPIN restarts the try count only when the PIN
    was locked: after an unblock at the final try, one wrong PIN would lock the new PIN. A right PIN restarts the
    count on every token, and this one cannot be wrong (C_InitPIN has just set it)."""
    # The PIN is set either way; the after-state shows the count (or that the token is gone).
    with contextlib.suppress(CryptokiError):
        sessions.attempt_login(ctx.raw, ctx.slot_id, CKU_USER, pin)


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
    if "registration-unfinished" in finding_codes(snapshot):
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

    def body(ctx: Context) -> None:
        refuse_if_locked(ctx, Role.ADMIN)
        refusal = format_refusal(ctx.before)
        if refusal is not None:
            raise Stop(Outcome.REFUSED, refusal)
        if not confirmation_matches(ctx.before, confirmation):
            raise Stop(
                Outcome.REFUSED,
                Text(NOT_CONFIRMED),
                field="confirmation",
            )
        so_pin = _admin_pin(serial, admin_pin, ctx)
        refuse_unfit_pin(ctx.before, Role.ADMIN, so_pin, field="admin_pin")
        ctx.role = Role.ADMIN
        try:
            sessions.init_token(ctx.raw, ctx.slot_id, so_pin, "")
        except CryptokiError as error:
            raise login_failure(error, Role.ADMIN, "admin_pin", ctx) from None
        with ctx.session(Role.ADMIN, so_pin, field="admin_pin") as handle:
            sessions.init_pin(ctx.raw, handle, FACTORY_USER_PIN)
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
