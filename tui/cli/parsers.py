"""The command line's parsers: every subcommand and option, their help, and the language argparse speaks in.

Building them imports no command: each subcommand's module is light until it runs (`scan` imports neither Textual
nor the lab).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import core
from core.i18n import LANGUAGES, N_, _, detect_language
from tui import audit_command, enrol_command, lab_command
from tui.compat import SubParsers, argparse_words_through


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(_("a whole number from 1 up is needed"))
    return value


# argparse's own words (usage, section titles, its errors): it looks them up through gettext's default domain,
# so `in_our_language` points it at the console's catalogue, where these message ids are.
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


def in_our_language() -> None:
    """argparse's own words through our catalogue, in the language chosen (a text we do not have comes back as it
    was, so nothing else changes)."""
    argparse_words_through(_)


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


def build_parser() -> argparse.ArgumentParser:
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
    lab_command.add_parser(commands, [common])
    enrol_command.add_parser(commands, [common])
    audit = commands.add_parser("audit", help=_("show the audit trail of actions on tokens, newest first"))
    audit.add_argument("--json", action="store_true", help=_("one JSON object per line"))
    audit.add_argument("--limit", type=_positive, metavar="N", help=_("only the newest N entries"))
    audit.add_argument("--serial", metavar="SERIAL", help=_("only the entries of this token"))
    audit_command.add_arguments(audit)
    return parser


def _action_parsers(commands: SubParsers, common: argparse.ArgumentParser) -> None:
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
