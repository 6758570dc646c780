"""`kaztoken-helpdesk scan`: every token and what is wrong with it, as text, JSON, a ticket report or metrics."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import core.scan  # looked up when called: a test replaces core.scan.scan
from core.config import LoadedConfig
from core.i18n import _
from core.scan import ScanResult
from core.untrusted import json_text
from tui.cli.status import EXIT_BAD_INPUT, EXIT_DONE, EXIT_FAILED


def scan_command(args: argparse.Namespace, config: LoadedConfig) -> int:
    result = core.scan.scan(args.module, config=config, timeout=getattr(args, "library_timeout", None))
    if args.json:
        # Indented for a person at a terminal; compact (and several times faster: the C encoder) for monitoring.
        indent = 2 if sys.stdout.isatty() else None
        sys.stdout.write(json_text(json.dumps(result.to_dict(), ensure_ascii=False, indent=indent)) + "\n")
    else:
        from core.report import render_text  # the text and the ticket report only: `--json` does without them

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
    from core.metrics import write_metrics  # prometheus_client (http, ssl: ≈ 35 ms) only when --metrics asks

    try:
        write_metrics(result, path, config.config)
    except OSError as error:
        print(
            _("Could not write the metrics to {path}: {error}").format(path=path, error=error.strerror),
            file=sys.stderr,
        )
        return False
    return True
