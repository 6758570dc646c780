"""The audit trail as a table (or JSON lines) on standard output: `audit`, from the local file or the shared
table. Every field of a record is as hostile as the token it names: each goes through visible() (json_text())."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.i18n import _
from core.untrusted import json_text, visible

if TYPE_CHECKING:
    from core.audit import Item

EXIT_DONE = 0


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
    rows = [header, *(audit_row(entry) for entry in entries)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        sys.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")
    return EXIT_DONE


def audit_row(entry: Item) -> tuple[str, ...]:
    from core.audit import Malformed  # here: the parser imports this module, and `scan` stays light
    from core.audit_words import action_words, outcome_words, pin_name, pin_words

    if isinstance(entry, Malformed):  # nothing of it is shown but where it is and why it is no record
        problem = _("line {line}: {why}").format(line=entry.line, why=entry.why)
        return ("", "", "", _("malformed"), "", "", "", problem)

    pin = ""
    if entry.role:
        before, after = pin_words(entry.pin_before, entry.tries_before), pin_words(entry.pin_after, entry.tries_after)
        pin = f"{pin_name(entry.role)}: {before} → {after}"
    cells = (
        entry.time,
        f"{entry.operator}@{entry.host}",
        action_words(entry.action),
        outcome_words(entry.outcome, short=True),
        entry.serial,
        entry.label,
        pin,
        entry.reason or "",
    )
    return tuple(visible(cell) for cell in cells)  # every field of the file is as hostile as the token it names
