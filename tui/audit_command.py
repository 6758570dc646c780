"""`audit --pending`, `audit --flush` and `audit --source postgresql://…`: the audit trail beyond this terminal.

    kaztoken-helpdesk audit --pending [--json]     what each configured sink has not received yet
    kaztoken-helpdesk audit --flush [--json]       deliver it now (exit 1 when a sink is still down)
    kaztoken-helpdesk audit --source postgresql://… [--host H] [--serial S] [--operator U] [--since T]
                                                   [--limit N] [--json]
                                                   every branch's actions from the shared table, newest first

Every text from the table or from a sink's error is hostile: shown through visible() (json_text() for --json).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from core.config import LoadedConfig
from core.i18n import _
from core.untrusted import json_text, visible
from tui.audit_table import print_audit

if TYPE_CHECKING:
    from core.delivery import SinkStatus

SOURCE_LIMIT = 200  # --source without --limit: a screenful of the newest, not a year of a thousand terminals


def since(text: str) -> datetime:
    """`--since`: an ISO date or time (UTC when it names no offset), or an age: 30m, 12h, 7d."""
    age = re.fullmatch(r"(\d{1,6})([mhd])", text.strip())
    if age:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[age.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: int(age.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(_("a date or time such as 2026-12-01, 2026-12-01T09:00 or 7d")) from None
    return when if when.utcoffset() is not None else when.replace(tzinfo=UTC)


def add_arguments(audit: argparse.ArgumentParser) -> None:
    which = audit.add_mutually_exclusive_group()
    which.add_argument(
        "--pending", action="store_true", help=_("what each audit sink (syslog, PostgreSQL…) has not received yet")
    )
    which.add_argument("--flush", action="store_true", help=_("deliver the audit trail to its sinks now"))
    which.add_argument(
        "--source",
        metavar="URL",
        help=_("read every terminal's actions from the shared table (postgresql://…) instead of this terminal's file"),
    )
    audit.add_argument("--host", metavar="HOST", help=_("with --source: only the actions at this terminal"))
    audit.add_argument("--operator", metavar="USER", help=_("with --source: only the actions of this operator"))
    audit.add_argument("--since", type=since, metavar="TIME", help=_("with --source: only actions since then"))


def wanted(args: argparse.Namespace) -> bool:
    """True when the command is one of this module's (else the local file's reader answers)."""
    return bool(args.pending or args.flush or args.source or args.host or args.operator or args.since)


def run(args: argparse.Namespace, config: LoadedConfig) -> int:
    if args.source:
        return _source(args)
    if args.host or args.operator or args.since:  # this terminal's file has one host; its reader filters by serial
        print(_("--host, --operator and --since go with --source."), file=sys.stderr)
        return 2
    from core import delivery

    plan = delivery.Plan.configured(config.config)
    statuses = delivery.flush(plan) if args.flush else delivery.pending(plan)
    if args.json:
        for status in statuses:
            sys.stdout.write(json_text(json.dumps(status.to_dict(), ensure_ascii=False, sort_keys=True)) + "\n")
    elif not statuses:
        print(_("No audit sink is configured besides the local file {path}.").format(path=plan.spool), file=sys.stderr)
    else:
        for status in statuses:
            sys.stdout.write(_status_line(status, flushed=args.flush) + "\n")
    down = any(status.error or status.problem for status in statuses)
    return 1 if args.flush and down else 0


def _status_line(status: SinkStatus, *, flushed: bool) -> str:
    name = visible(status.name)
    if status.problem is not None:
        return _("{sink}: cannot be used: {why}").format(sink=name, why=status.problem.text)
    parts = []
    if flushed:
        parts.append(_("{count} delivered now").format(count=status.delivered_now))
    if status.pending:
        parts.append(
            _("{count} not received yet, the oldest of {time}").format(
                count=status.pending, time=visible(status.oldest)
            )
        )
    else:
        parts.append(_("everything received"))
    if status.error:
        parts.append(_("down: {error}").format(error=visible(status.error)))
    return f"{name}: " + "; ".join(parts)


def _source(args: argparse.Namespace) -> int:
    from core import audit, audit_pg
    from core.sinks import SinkConfigError, SinkDown, redacted

    try:
        audit_pg.check_name(args.source)
        rows = audit_pg.fetch(
            args.source,
            audit_pg.Query(
                host=args.host,
                serial=args.serial,
                operator=args.operator,
                since=args.since,
                limit=args.limit or SOURCE_LIMIT,
            ),
        )
    except SinkConfigError as error:
        print(f"{visible(error.name)}: {error.text}", file=sys.stderr)
        return 2
    except SinkDown as error:
        print(
            _("Cannot read the shared audit table at {source}: {reason}.").format(
                source=visible(redacted(args.source)), reason=visible(error)
            ),
            file=sys.stderr,
        )
        return 1
    items: list[audit.Item] = []
    for number, data in enumerate(rows, 1):  # a row is as hostile as a line of the file: checked the same way
        try:
            items.append(audit.AuditEntry.from_dict(data))
        except audit.MalformedRecord as error:
            items.append(audit.Malformed(number, error.text))
    empty = _("No action on record in {source}.").format(source=visible(redacted(args.source)))
    return print_audit(items, as_json=args.json, empty=empty)
