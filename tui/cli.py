"""The `kaztoken-helpdesk` command: the console by default, and subcommands for admins and scripts.

    kaztoken-helpdesk scan [--json | --explain] [--report FILE]
    kaztoken-helpdesk personalise --serial S --label NAME [--new-admin-pin] [--keyring] [--remember-admin-pin]
    kaztoken-helpdesk change-pin --serial S [--role user|admin]
    kaztoken-helpdesk unblock --serial S [--keyring] [--remember-admin-pin]
    kaztoken-helpdesk format --serial S [--confirm NAME_OR_SERIAL] [--keyring] [--remember-admin-pin]
    kaztoken-helpdesk audit [--json] [--limit N] [--serial S]
    kaztoken-helpdesk audit --pending | --flush | --source postgresql://… [--host H] [--operator U] [--since T]
    kaztoken-helpdesk scan --metrics FILE

Every command takes `--lang kk|ru|en` (before or after the command's name): the language of everything it says,
its help and its errors included. Without it: the settings file's `language`, else the system's locale (LANGUAGE,
LC_ALL, LC_MESSAGES, LANG), else English. `scan --json` keeps its codes in English; its titles and explanations
follow the language.

PINs are never taken from the command line or the environment (`ps`, /proc and shell history show both):
they are typed at the terminal without echo, or piped in with `--pin-stdin`, one per line, in the order the
prompts ask for them:
    personalise  admin PIN, [new admin PIN, new admin PIN again: only with --new-admin-pin], new user PIN,
                 new user PIN again
    change-pin   current PIN, new PIN, new PIN again (of the --role's PIN)
    unblock      admin PIN, new user PIN, new user PIN again
    format       admin PIN (the confirmation, the token's name or serial, is not secret: --confirm, or typed
                 at the terminal)
With `--keyring` the admin PIN remembered in this computer's keyring for the token is used and its line is not
read; `--remember-admin-pin` remembers it after a success. Both are explicit opt-ins: the settings'
`remember_admin_pins` applies to the console only.

Exit status:
    scan        0 when no finding is an error, 1 when any is, 2 for a usage error. A --report FILE that cannot
                be written is said on standard error and gives 2 only when no finding is an error: 1 wins,
                the token's state being what the helpdesk acts on.
    actions     0 done; 1 the action failed or was refused (wrong PIN, PIN locked, the token's state forbids
                it, a wrong confirmation, another operator holds the token, no such token, token pulled out, the
                token said no); 2 bad input, nothing tried (a new PIN or name against the rules, the two entries
                differ, an empty PIN, a PIN that cannot be the token's, PIN lines missing or not UTF-8 on standard
                input, no confirmation, no terminal to ask on, a usage error); 130 interrupted (Ctrl+C). An
                action whose audit record cannot be written before it starts is refused (1); one whose outcome
                record cannot be written keeps its status and says so loudly on standard error.
    audit       0 (malformed lines are listed as such), 1 the audit file cannot be read, 2 for a usage error.
    every one   3 when the tool itself failed (an unexpected error: one line, never a traceback nor a PIN).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import core
from core.config import LoadedConfig, load_config
from core.i18n import LANGUAGES, N_, _, detect_language, set_language
from core.i18n import language as language_now
from core.policy import current_pin_fits, current_pin_refusal
from core.untrusted import json_text, visible

if TYPE_CHECKING:  # the action modules are imported when a command needs them: `scan` stays light
    from core.actions import ActionResult
    from core.audit import Item
    from core.modules import Module
    from core.scan import ScanResult
    from tui.pin_input import PinReader

EXIT_DONE, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TOOL_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
ACTIONS = ("personalise", "change-pin", "unblock", "format")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(_("a whole number from 1 up is needed"))
    return value


# argparse's own words (usage, section titles, its errors): it looks them up through gettext's default domain,
# so `_argparse_in_our_language` points it at the console's catalogue, where these message ids are.
ARGPARSE_TEXTS = (
    N_("usage: "),
    N_("positional arguments"),
    N_("options"),
    N_("show this help message and exit"),
    N_("%(prog)s: error: %(message)s\n"),
    N_("argument %(argument_name)s: %(message)s"),
    N_("unrecognized arguments: %s"),
    N_("the following arguments are required: %s"),
    N_("one of the arguments %s is required"),
    N_("not allowed with argument %s"),
    N_("expected one argument"),
    N_("expected at most one argument"),
    N_("expected at least one argument"),
    N_("ambiguous option: %(option)s could match %(matches)s"),
    N_("invalid %(type)s value: %(value)r"),
    N_("invalid choice: %(value)r (choose from %(choices)s)"),
    N_("ignored explicit argument %r"),
)


def _argparse_in_our_language() -> None:
    """argparse calls the module-level `_` it imported from gettext for its own words; ours answers instead, in
    the language chosen (a text we do not have comes back as it was, so nothing else changes)."""
    argparse._ = _  # type: ignore[attr-defined]


def _language_option(argv: Sequence[str]) -> str | None:
    """`--lang`, wherever it stands, read before the parser is built: the parser's help is in that language.

    An unknown or missing value gives None here; the full parser then reports it (in the language detected)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    pre.add_argument("--lang")
    try:
        known, _rest = pre.parse_known_args(list(argv))
    except argparse.ArgumentError:
        return None
    return known.lang if known.lang in LANGUAGES else None


def choose_language(argv: Sequence[str], configured: str | None, environ: Mapping[str, str] | None = None) -> str:
    """--lang, else the settings file's language, else the OS locale's, else English."""
    return _language_option(argv) or detect_language(configured, environ)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--module",
        action="append",
        # SUPPRESS: `--module` may stand before or after the subcommand without one erasing the other.
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=_("PKCS#11 library to use instead of discovering them (repeatable)"),
    )
    common.add_argument(
        "--library-timeout",
        type=_positive,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help=_("how long a PKCS#11 library may take to answer a scan before it is reported as hanging (30)"),
    )
    common.add_argument(
        "--lang",
        choices=LANGUAGES,
        default=argparse.SUPPRESS,  # read before parsing (_language_option); here for --help and the checks
        help=_("the language of the output: kk, ru or en (default: the settings', else the system's)"),
    )
    parser = argparse.ArgumentParser(
        prog="kaztoken-helpdesk",
        description=_("See, diagnose and fix KAZTOKEN USB tokens through PKCS#11."),
        parents=[common],
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {core.__version__}",
        help=_("show the version and exit"),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    scan = commands.add_parser(
        "scan", parents=[common], help=_("report every token and what is wrong with it (never logs in)")
    )
    output = scan.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help=_("print one JSON document (schema in README)"))
    output.add_argument("--explain", action="store_true", help=_("explain each finding in full"))
    scan.add_argument("--report", metavar="FILE", type=Path, help=_("also write a ticket report to FILE"))
    scan.add_argument(
        "--metrics", metavar="FILE", type=Path, help=_("also write token health for Prometheus (textfile) to FILE")
    )
    _action_parsers(commands, common)
    from tui import lab_command  # argparse only: the lab itself is imported when the command runs

    lab_command.add_parser(commands, [common])
    from tui import enrol_command  # light: core.enrol is imported when the command runs

    enrol_command.add_parser(commands, [common])
    audit = commands.add_parser("audit", help=_("show the audit trail of actions on tokens, newest first"))
    audit.add_argument("--json", action="store_true", help=_("one JSON object per line"))
    audit.add_argument("--limit", type=_positive, metavar="N", help=_("only the newest N entries"))
    audit.add_argument("--serial", metavar="SERIAL", help=_("only the entries of this token"))
    from tui import audit_command  # argparse only

    audit_command.add_arguments(audit)
    return parser


def _action_parsers(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    token = argparse.ArgumentParser(add_help=False)
    which = token.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--serial", metavar="SERIAL", help=_("the token's serial (see `scan`), when no other token has it")
    )
    # `--token ID` lands in args.serial: the actions find a token by its id or by its serial, one lookup.
    which.add_argument("--token", dest="serial", metavar="ID", help=_("the token's id (token_id in `scan --json`)"))
    token.add_argument(
        "--pin-stdin",
        action="store_true",
        help=_("read the PINs from standard input, one per line, in the order the prompts ask for them"),
    )
    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument(
        "--keyring",
        action="store_true",
        help=_("use the admin PIN remembered in this computer's keyring for the token (its line is not read)"),
    )
    admin.add_argument(
        "--remember-admin-pin",
        action="store_true",
        help=_("after a success, remember the admin PIN in this computer's keyring (never in a file)"),
    )
    personalise = commands.add_parser(
        "personalise",
        parents=[common, token, admin],
        help=_("set the token name and a new user PIN on an empty token («Персонализация токена»)"),
    )
    personalise.add_argument(
        "--label", required=True, metavar="NAME", help=_("the token name: Latin letters, digits, - and _")
    )
    personalise.add_argument(
        "--new-admin-pin", action="store_true", help=_("also replace the admin PIN (asked for twice)")
    )
    change = commands.add_parser(
        "change-pin", parents=[common, token], help=_("change the user or admin PIN («Изменить…»)")
    )
    change.add_argument("--role", choices=("user", "admin"), default="user", help=_("whose PIN (default: user)"))
    commands.add_parser(
        "unblock",
        parents=[common, token, admin],
        help=_("set a new user PIN with the admin PIN («Разблокировать»)"),
    )
    format_ = commands.add_parser(
        "format",
        parents=[common, token, admin],
        help=_("erase the token back to factory state: no name, no keys, the factory user PIN"),
    )
    format_.add_argument(
        "--confirm",
        metavar="NAME_OR_SERIAL",
        help=_("the token's name or serial, confirming the erase (else asked at the terminal)"),
    )


def _scan(args: argparse.Namespace, config: LoadedConfig) -> int:
    from core.scan import scan

    result = scan(args.module, config=config, timeout=getattr(args, "library_timeout", None))
    if args.json:
        # Indented for a person at a terminal; compact (and several times faster: the C encoder) for monitoring.
        indent = 2 if sys.stdout.isatty() else None
        sys.stdout.write(json_text(json.dumps(result.to_dict(), ensure_ascii=False, indent=indent)) + "\n")
    else:
        from core.report import render_text

        # On a terminal the explanations wrap to its width, indent kept; piped, each stays one line.
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        sys.stdout.write(render_text(result, explain=args.explain, width=width))
    metrics_written = not args.metrics or _write_metrics(result, args.metrics, config)
    if args.report:
        from core.report import ticket_report

        try:
            args.report.write_text(ticket_report(result), encoding="utf-8")
        except OSError as error:
            print(
                _("Could not write the report to {path}: {error}").format(path=args.report, error=error.strerror),
                file=sys.stderr,
            )
            # The findings' status first: a failed report must not hide that a token has an error.
            return EXIT_FAILED if result.has_errors else EXIT_BAD_INPUT
        print(_("Report written to {path}").format(path=args.report.resolve()), file=sys.stderr)
    if not metrics_written:  # as for the report: the findings' status first
        return EXIT_FAILED if result.has_errors else EXIT_BAD_INPUT
    return EXIT_FAILED if result.has_errors else EXIT_DONE


def _write_metrics(result: ScanResult, path: Path, config: LoadedConfig) -> bool:
    from core.metrics import write_metrics

    try:
        write_metrics(result, path, config.config)
    except OSError as error:
        print(
            _("Could not write the metrics to {path}: {error}").format(path=path, error=error.strerror),
            file=sys.stderr,
        )
        return False
    return True


def _console(args: argparse.Namespace, config: LoadedConfig) -> int:
    from core.scan import Workstation

    workstation = Workstation(args.module, config=config, timeout=getattr(args, "library_timeout", None))
    workstation.begin()  # the libraries are read while Textual is imported and the screen set up
    from tui.app import run  # Textual is imported only here: `scan` stays light

    return run(args.module, config, workstation=workstation)


# --- the actions --------------------------------------------------------------------------------------------


class _BadInput(Exception):
    """Nothing was tried: the input is missing or unusable (exit 2). The message holds no PIN."""


class _Failed(Exception):
    """Nothing was tried, for a reason that is not the input's fault (exit 1). The message holds no PIN."""


Run = Callable[["Sequence[Module]"], "ActionResult"]


def _pins(reader: PinReader, prompts: Sequence[str]) -> list[str]:
    from tui.pin_input import PinInputError

    try:
        return reader.read(prompts)
    except PinInputError as error:
        raise _BadInput(str(error)) from None


def _require(pin: str, what: str) -> str:
    """A PIN that is presented to the token must not be empty: an empty admin PIN would fall back to the keyring
    without --keyring, an empty current PIN would spend a try for nothing."""
    if not pin:
        raise _BadInput(_("The {pin} is empty: nothing was tried.").format(pin=what))
    if not current_pin_fits(pin):  # its characters; the token's length bounds are checked by core.actions
        raise _BadInput(str(current_pin_refusal(what)))
    return pin


def _keyring_admin_pin(serial: str) -> None:
    """--keyring: make sure a PIN is remembered for this token, before any line is read or the token touched."""
    from core import admin_pins

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
    return _require(values.pop(0), _("admin PIN"))


def _personalise(args: argparse.Namespace, reader: PinReader) -> Run:
    from core.actions import personalise

    prompts = _admin_prompts(args)
    if args.new_admin_pin:
        prompts += [_("New admin PIN: "), _("New admin PIN again: ")]
    prompts += [_("New user PIN: "), _("New user PIN again: ")]
    values = _pins(reader, prompts)
    admin_pin = _admin_from(args, values)
    new_admin = (values.pop(0), values.pop(0)) if args.new_admin_pin else (None, None)
    new_user, new_user_again = values
    return lambda modules: personalise(
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
    from core.actions import Role, change_pin

    role = Role(args.role)
    if role is Role.USER:
        prompts = [_("Current user PIN: "), _("New user PIN: "), _("New user PIN again: ")]
    else:
        prompts = [_("Current admin PIN: "), _("New admin PIN: "), _("New admin PIN again: ")]
    current, new, again = _pins(reader, prompts)
    _require(current, _("current {pin}").format(pin=role.title))
    return lambda modules: change_pin(
        modules, args.serial, role=role, current_pin=current, new_pin=new, new_pin_again=again
    )


def _unblock(args: argparse.Namespace, reader: PinReader) -> Run:
    from core.actions import unblock

    values = _pins(reader, [*_admin_prompts(args), _("New user PIN: "), _("New user PIN again: ")])
    admin_pin = _admin_from(args, values)
    new_user, new_user_again = values
    return lambda modules: unblock(
        modules,
        args.serial,
        admin_pin=admin_pin,
        new_user_pin=new_user,
        new_user_pin_again=new_user_again,
        remember_admin_pin=args.remember_admin_pin,
    )


def _format(args: argparse.Namespace, reader: PinReader) -> Run:
    from core.actions import format_token
    from tui.pin_input import PinInputError

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
    return lambda modules: format_token(
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
    from core.actions import Outcome
    from core.diagnostics import diagnose_token
    from core.report import finding_lines, pin_summary

    lines = [result.message] if result.message else []
    lines += [f"  ✖ {check.text}" for check in result.problems]
    lines += [f"⚠ {warning}" for warning in result.warnings]
    tried = result.outcome in (Outcome.DONE, Outcome.WRONG_PIN, Outcome.PIN_LOCKED, Outcome.FAILED)
    if tried and result.role is not None and (result.pin_before or result.pin_after):
        unknown = _("unknown")
        lines.append(
            _("{pin}: before {before}; after {after}.").format(
                pin=_capitalised(result.role.title),
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
    from core.actions import Outcome

    if result.ok:
        return EXIT_DONE
    return EXIT_BAD_INPUT if result.outcome is Outcome.POLICY else EXIT_FAILED


def _action(args: argparse.Namespace, config: LoadedConfig) -> int:
    from tui.pin_input import PinReader

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


def unexpected_detail(error: BaseException) -> str:
    """An unexpected error's own text, for its one line; none for a text codec's, which names a character of what
    it worked on (a PIN, maybe) and its position."""
    return "" if isinstance(error, UnicodeError) else str(error)


def _run_on_workstation(run: Run, args: argparse.Namespace, config: LoadedConfig) -> ActionResult:
    from core.scan import Workstation

    workstation = Workstation(args.module, config=config, timeout=getattr(args, "library_timeout", None))
    try:
        return run(workstation.modules)
    finally:
        workstation.close()


# --- the audit trail -------------------------------------------------------------------------------------


def _audit(args: argparse.Namespace, config: LoadedConfig) -> int:
    from core import audit
    from tui import audit_command

    if audit_command.wanted(args):  # the sinks, or the shared table
        return audit_command.run(args, config)
    try:
        entries = audit.read(limit=None if args.serial else args.limit)
    except audit.AuditError as error:
        print(
            _("Cannot read the audit trail at {path}: {reason}.").format(path=error.path, reason=_(error.reason)),
            file=sys.stderr,
        )
        return EXIT_FAILED
    if args.serial:  # a malformed line names no token for sure: it stays in view
        entries = [e for e in entries if not isinstance(e, audit.AuditEntry) or e.serial == args.serial][: args.limit]
    return print_audit(
        entries, as_json=args.json, empty=_("No action on record in {path}.").format(path=audit.audit_path())
    )


def print_audit(entries: Sequence[Item], *, as_json: bool, empty: str) -> int:
    """The actions as a table (or JSON lines), every field through visible() (json_text())."""
    if as_json:
        for entry in entries:
            sys.stdout.write(json_text(json.dumps(entry.to_dict(), ensure_ascii=False, sort_keys=True)) + "\n")
        return EXIT_DONE
    if not entries:
        print(empty, file=sys.stderr)
        return EXIT_DONE
    header = (_("Time"), _("Operator"), _("Action"), _("Outcome"), _("Serial"), _("Name"), _("PIN"), _("Reason"))
    rows = [header, *(_audit_row(entry) for entry in entries)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        sys.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")
    return EXIT_DONE


def _audit_row(entry: Item) -> tuple[str, ...]:
    from core.audit import Malformed

    if isinstance(entry, Malformed):  # nothing of it is shown but where it is and why it is no record
        problem = _("line {line}: {why}").format(line=entry.line, why=entry.why)
        return ("", "", "", _("malformed"), "", "", "", problem)

    def state(status: str | None, tries: int | None) -> str:
        if status is None:
            return "?"
        return f"{status} ({tries})" if tries is not None else status

    pin = ""
    if entry.role:
        before, after = state(entry.pin_before, entry.tries_before), state(entry.pin_after, entry.tries_after)
        pin = f"{entry.role}: {before} → {after}"
    cells = (
        entry.time,
        f"{entry.operator}@{entry.host}",
        entry.action,
        _("no outcome recorded") if entry.outcome is None else entry.outcome,
        entry.serial,
        entry.label,
        pin,
        entry.reason or "",
    )
    return tuple(visible(cell) for cell in cells)  # every field of the file is as hostile as the token it names


def _delivered(status: int, config: LoadedConfig) -> int:
    """After an action (done and on the local record): one quiet try to pass the records on to the sinks."""
    from core.delivery import deliver_quietly

    deliver_quietly(config.config)
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The arguments are parsed before the settings file is opened, so `--help`, `--version` and argparse's errors
    # never depend on that file: they speak --lang's language, else the system's.
    set_language(choose_language(argv, None))
    _argparse_in_our_language()
    args = _parser().parse_args(argv)
    args.module = getattr(args, "module", [])
    config = load_config()
    language = choose_language(argv, config.config.language)
    if language != language_now():
        set_language(language)
        if config.error:
            config = load_config()  # read again, for its error to be said in the language just chosen
    try:
        if args.command == "scan":
            return _scan(args, config)
        if args.command in ACTIONS:
            return _delivered(_action(args, config), config)
        if args.command == "audit":
            return _audit(args, config)
        if args.command == "lab":
            from tui import lab_command

            return lab_command.run(args, config)
        if args.command == "re-enrol":
            from tui import enrol_command

            return _delivered(enrol_command.run(args, config), config)
        return _console(args, config)
    except BrokenPipeError:
        # `scan --json | head`: the reader left; that is not an error worth a traceback.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(file=sys.stderr)  # off the prompt's line
        return EXIT_INTERRUPTED
    except Exception as error:  # a fault of the tool: one line, no traceback (the actions say theirs themselves)
        detail = unexpected_detail(error)
        print(
            _("kaztoken-helpdesk failed unexpectedly ({kind}){detail}.").format(
                kind=type(error).__name__, detail=f": {visible(detail)}" if detail else ""
            ),
            file=sys.stderr,
        )
        return EXIT_TOOL_FAILED


if __name__ == "__main__":
    sys.exit(main())
