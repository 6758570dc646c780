"""`kaztoken-helpdesk audit`: the actions on record, newest first; the sinks and the shared table through
tui.audit_command."""

from __future__ import annotations

import argparse
import sys

from core import audit
from core.config import LoadedConfig
from core.i18n import _
from tui import audit_command
from tui.audit_table import print_audit
from tui.cli.status import EXIT_FAILED


def audit_trail(args: argparse.Namespace, config: LoadedConfig) -> int:
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
