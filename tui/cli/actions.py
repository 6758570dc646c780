"""`kaztoken-helpdesk personalise | change-pin | unblock | format`: the PINs read without echo (or from standard
input), checked, then the core action run on the workstation's libraries; its outcome said in lines."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import core.actions  # looked up when called: a test replaces core.actions.unblock
from core import admin_pins
from core.actions import ActionResult, Outcome, Role
from core.config import LoadedConfig
from core.diagnostics import diagnose_token
from core.i18n import N_, Text, _
from core.modules import Module
from core.policy import current_pin_fits, current_pin_refusal
from core.report import finding_lines, pin_summary
from core.scan import Workstation
from core.untrusted import visible
from tui.cli.status import EXIT_BAD_INPUT, EXIT_DONE, EXIT_FAILED, EXIT_TOOL_FAILED
from tui.errors import log_unexpected, unexpected_detail
from tui.pin_input import PinInputError, PinReader


class _BadInput(Exception):
    """Nothing was tried: the input is missing or unusable (exit 2). The message holds no PIN."""


class _Failed(Exception):
    """Nothing was tried, for a reason that is not the input's fault (exit 1). The message holds no PIN."""


Run = Callable[[Sequence[Module]], ActionResult]


def _pins(reader: PinReader, prompts: Sequence[str]) -> list[str]:
    try:
        return reader.read(prompts)
    except PinInputError as error:
        raise _BadInput(str(error)) from None


def _require(pin: str, what: Text) -> str:
    """A PIN that is presented to the token must not be empty: an empty admin PIN would fall back to the keyring
    without --keyring, an empty current PIN would spend a try for nothing."""
    if not pin:
        raise _BadInput(_("The {pin} is empty: nothing was tried.").format(pin=what))
    if not current_pin_fits(pin):  # its characters; the token's length bounds are checked by core.actions
        raise _BadInput(str(current_pin_refusal(what)))
    return pin


def _keyring_admin_pin(serial: str) -> None:
    """--keyring: make sure a PIN is remembered for this token, before any line is read or the token touched."""
    if not admin_pins.available():
        raise _Failed(
            _("No keyring is available on this machine, so no admin PIN is remembered: type it (without --keyring).")
        )
    if admin_pins.recall(serial) is None:
        raise _Failed(
            _(
                "No admin PIN is remembered for token {serial} in this computer's keyring: type it (without "
                "--keyring), with --remember-admin-pin to remember it."
            ).format(serial=serial)
        )


def _admin_prompts(args: argparse.Namespace) -> list[str]:
    if args.keyring:
        _keyring_admin_pin(args.serial)
        return []
    return [_("Admin PIN: ")]


def _admin_from(args: argparse.Namespace, values: list[str]) -> str | None:
    """The admin PIN typed (first line), or None: core then takes the remembered one, and forgets it if wrong."""
    if args.keyring:
        return None
    return _require(values.pop(0), Text(N_("admin PIN")))


def _personalise(args: argparse.Namespace, reader: PinReader) -> Run:
    prompts = _admin_prompts(args)
    if args.new_admin_pin:
        prompts += [_("New admin PIN: "), _("New admin PIN again: ")]
    prompts += [_("New user PIN: "), _("New user PIN again: ")]
    values = _pins(reader, prompts)
    admin_pin = _admin_from(args, values)
    new_admin = (values.pop(0), values.pop(0)) if args.new_admin_pin else (None, None)
    new_user, new_user_again = values
    return lambda modules: core.actions.personalise(
        modules,
        args.serial,
        label=args.label,
        admin_pin=admin_pin,
        new_user_pin=new_user,
        new_user_pin_again=new_user_again,
        new_admin_pin=new_admin[0],
        new_admin_pin_again=new_admin[1],
        remember_admin_pin=args.remember_admin_pin,
    )


def _change_pin(args: argparse.Namespace, reader: PinReader) -> Run:
    role = Role(args.role)
    if role is Role.USER:
        prompts = [_("Current user PIN: "), _("New user PIN: "), _("New user PIN again: ")]
    else:
        prompts = [_("Current admin PIN: "), _("New admin PIN: "), _("New admin PIN again: ")]
    current, new, again = _pins(reader, prompts)
    _require(current, Text(N_("current {pin}"), {"pin": role.title_text}))
    return lambda modules: core.actions.change_pin(
        modules, args.serial, role=role, current_pin=current, new_pin=new, new_pin_again=again
    )


def _unblock(args: argparse.Namespace, reader: PinReader) -> Run:
    values = _pins(reader, [*_admin_prompts(args), _("New user PIN: "), _("New user PIN again: ")])
    admin_pin = _admin_from(args, values)
    new_user, new_user_again = values
    return lambda modules: core.actions.unblock(
        modules,
        args.serial,
        admin_pin=admin_pin,
        new_user_pin=new_user,
        new_user_pin_again=new_user_again,
        remember_admin_pin=args.remember_admin_pin,
    )


def _format(args: argparse.Namespace, reader: PinReader) -> Run:
    confirmation = args.confirm
    if confirmation is None:
        prompt = _(
            "Formatting erases every key and certificate on token {serial}. To confirm, type its name or its serial: "
        ).format(serial=args.serial)
        try:
            confirmation = reader.ask_visible(prompt)
        except PinInputError as error:
            raise _BadInput(str(error)) from None
    values = _pins(reader, _admin_prompts(args))
    admin_pin = _admin_from(args, values)
    return lambda modules: core.actions.format_token(
        modules,
        args.serial,
        admin_pin=admin_pin,
        confirmation=confirmation,
        remember_admin_pin=args.remember_admin_pin,
    )


_PREPARE: dict[str, Callable[[argparse.Namespace, PinReader], Run]] = {
    "personalise": _personalise,
    "change-pin": _change_pin,
    "unblock": _unblock,
    "format": _format,
}


def _result_lines(result: ActionResult) -> list[str]:
    lines = [result.message] if result.message else []
    lines += [f"  ✖ {check.text}" for check in result.problems]
    lines += [f"⚠ {warning}" for warning in result.warnings]
    tried = result.outcome in (Outcome.DONE, Outcome.WRONG_PIN, Outcome.PIN_LOCKED, Outcome.FAILED)
    if tried and result.role is not None and (result.pin_before or result.pin_after):
        unknown = _("unknown")
        lines.append(
            _("{pin}: before {before}; after {after}.").format(
                pin=_capitalised(result.role.label),
                before=pin_summary(result.pin_before) if result.pin_before else unknown,
                after=pin_summary(result.pin_after) if result.pin_after else unknown,
            )
        )
    if tried and result.after is not None:
        findings = diagnose_token(result.after)
        lines.append(_("The token now:") if findings else _("The token now: nothing wrong found."))
        lines += finding_lines(findings)
    return lines


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]  # str.capitalize() would turn "admin PIN" into "Admin pin"


def _exit_code(result: ActionResult) -> int:
    if result.ok:
        return EXIT_DONE
    return EXIT_BAD_INPUT if result.outcome is Outcome.POLICY else EXIT_FAILED


def action_command(args: argparse.Namespace, config: LoadedConfig) -> int:
    reader = PinReader(from_stdin=args.pin_stdin)
    try:
        run = _PREPARE[args.command](args, reader)
        result = _run_on_workstation(run, args, config)
    except _BadInput as error:
        print(visible(error), file=sys.stderr)
        return EXIT_BAD_INPUT
    except _Failed as error:
        print(visible(error), file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as error:  # a traceback could show a PIN among the locals: one line, cleaned, instead
        log_unexpected(error, f"the {args.command} command")
        detail = visible(reader.redact(unexpected_detail(error)))
        print(
            _("Unexpected error ({kind}){detail}. Nothing more is known; check the token with `scan`.").format(
                kind=type(error).__name__, detail=f": {detail}" if detail else ""
            ),
            file=sys.stderr,
        )
        return EXIT_TOOL_FAILED
    stream = sys.stdout if result.ok and result.recorded else sys.stderr
    # The lines quote the token (its name, a lock holder): nothing in them reaches the terminal raw.
    stream.write("\n".join(map(visible, "\n".join(_result_lines(result)).split("\n"))) + "\n")
    return _exit_code(result)


def _run_on_workstation(run: Run, args: argparse.Namespace, config: LoadedConfig) -> ActionResult:
    workstation = Workstation(args.module, config=config, timeout=getattr(args, "library_timeout", None))
    try:
        return run(workstation.modules)
    finally:
        workstation.close()
