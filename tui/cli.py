"""The `kaztoken-helpdesk` command: the console by default, and subcommands for admins and scripts.

Exit status: 0 when no finding is an error, 1 when any is, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import core
from core.config import LoadedConfig, load_config
from core.i18n import _, set_language


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
    parser = argparse.ArgumentParser(
        prog="kaztoken-helpdesk",
        description=_("See, diagnose and fix KAZTOKEN USB tokens through PKCS#11."),
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {core.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    scan = commands.add_parser(
        "scan", parents=[common], help=_("report every token and what is wrong with it (never logs in)")
    )
    output = scan.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help=_("print one JSON document (schema in README)"))
    output.add_argument("--explain", action="store_true", help=_("explain each finding in full"))
    scan.add_argument("--report", metavar="FILE", type=Path, help=_("also write a ticket report to FILE"))
    return parser


def _scan(args: argparse.Namespace, config: LoadedConfig) -> int:
    from core.scan import scan

    result = scan(args.module, config=config)
    if args.json:
        # Indented for a person at a terminal; compact (and several times faster: the C encoder) for monitoring.
        indent = 2 if sys.stdout.isatty() else None
        sys.stdout.write(json.dumps(result.to_dict(), ensure_ascii=False, indent=indent) + "\n")
    else:
        from core.report import render_text

        sys.stdout.write(render_text(result, explain=args.explain))
    if args.report:
        from core.report import ticket_report

        try:
            args.report.write_text(ticket_report(result), encoding="utf-8")
        except OSError as error:
            print(
                _("Could not write the report to {path}: {error}").format(path=args.report, error=error.strerror),
                file=sys.stderr,
            )
            return 2
        print(_("Report written to {path}").format(path=args.report.resolve()), file=sys.stderr)
    return 1 if result.has_errors else 0


def _console(args: argparse.Namespace, config: LoadedConfig) -> int:
    from tui.app import run  # Textual is imported only here: `scan` stays light

    return run(args.module, config)


def main(argv: list[str] | None = None) -> int:
    # The settings are read once, before anything is shown: their language applies to the help text too.
    config = load_config()
    if config.config.language:
        set_language(config.config.language)
    args = _parser().parse_args(argv)
    args.module = getattr(args, "module", [])
    try:
        if args.command == "scan":
            return _scan(args, config)
        return _console(args, config)
    except BrokenPipeError:
        # `scan --json | head`: the reader left; that is not an error worth a traceback.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
