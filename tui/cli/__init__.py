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
import sys

from core import logs
from core.config import LoadedConfig, load_config
from core.i18n import _, set_language
from core.i18n import language as language_now
from core.untrusted import visible
from tui import enrol_command, lab_command  # light: each imports its core when it runs
from tui.audit_table import audit_row as _audit_row
from tui.audit_table import print_audit
from tui.cli.parsers import build_parser as _parser
from tui.cli.parsers import choose_language, in_our_language
from tui.cli.status import EXIT_BAD_INPUT, EXIT_DONE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TOOL_FAILED
from tui.entry import runs_on
from tui.errors import log_unexpected, unexpected_detail

__all__ = [
    "ACTIONS",
    "EXIT_BAD_INPUT",
    "EXIT_DONE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_TOOL_FAILED",
    "_audit_row",
    "_parser",
    "choose_language",
    "main",
    "print_audit",
]

ACTIONS = ("personalise", "change-pin", "unblock", "format")


def _run(args: argparse.Namespace, config: LoadedConfig) -> int:
    """The command's own module, imported only when it runs: `scan` stays light (no Textual, no lab, no action)."""
    if args.command == "scan":
        from tui.cli.scan import scan_command  # the lightest: core.scan and its report

        return scan_command(args, config)
    if args.command in ACTIONS:
        from tui.cli.actions import action_command  # core.actions, the keyring

        return _delivered(action_command(args, config), config)
    if args.command == "audit":
        from tui.cli.audit import audit_trail  # the sinks (syslog, PostgreSQL) when asked for

        return audit_trail(args, config)
    if args.command == "lab":
        return lab_command.run(args, config)
    if args.command == "re-enrol":
        return _delivered(enrol_command.run(args, config), config)
    from core.scan import Workstation

    workstation = Workstation(args.module, config=config, timeout=getattr(args, "library_timeout", None))
    workstation.begin()  # the libraries are read while Textual is imported and the screen set up
    from tui.app import run  # Textual is imported only here: `scan` stays light

    try:
        return run(args.module, config, workstation=workstation)
    finally:
        runs_on()  # if the console ended before its first screen was up


def _delivered(status: int, config: LoadedConfig) -> int:
    """After an action (done and on the local record): one quiet try to pass the records on to the sinks."""
    from core.delivery import deliver_quietly  # the sinks: only after an action

    deliver_quietly(config.config)
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The arguments are parsed before the settings file is opened, so `--help`, `--version` and argparse's errors
    # never depend on that file: they speak --lang's language, else the system's.
    set_language(choose_language(argv, None))
    in_our_language()
    args = _parser().parse_args(argv)
    if args.command is not None and args.command != "scan":
        # tui.entry: the collector on, and the interpreter's usual end. `scan` ends as soon as it has printed; the
        # console turns the collector on once its first screen is up (a fifth of its start, measured).
        runs_on()
    logs.setup()  # the program's log beside the audit trail (core.logs): never a PIN
    args.module = getattr(args, "module", [])
    config = load_config()
    language = choose_language(argv, config.config.language)
    if language != language_now():
        set_language(language)
        if config.error:
            config = load_config()  # read again, for its error to be said in the language just chosen
    try:
        return _run(args, config)
    except BrokenPipeError:
        # `scan --json | head`: the reader left; that is not an error worth a traceback.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(file=sys.stderr)  # off the prompt's line
        return EXIT_INTERRUPTED
    except Exception as error:  # a fault of the tool: one line, no traceback (the actions say theirs themselves)
        log_unexpected(error, f"the {args.command or 'console'} command")
        detail = unexpected_detail(error)
        print(
            _("kaztoken-helpdesk failed unexpectedly ({kind}){detail}.").format(
                kind=type(error).__name__, detail=f": {visible(detail)}" if detail else ""
            ),
            file=sys.stderr,
        )
        return EXIT_TOOL_FAILED
