"""The `x` key's ticket report: a Markdown file (core.report) under the user's data directory, named after the
token's serial, which the token chose: only its letters, digits, - and _ make the name, and the file is in the
reports directory whatever it said."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import platformdirs

from core.config import APP_NAME
from core.report import ticket_report
from core.scan import ScannedToken, ScanResult
from core.untrusted import file_part


def reports_dir() -> Path:
    return platformdirs.user_data_path(APP_NAME) / "reports"


def report_path(token: ScannedToken | None) -> Path:
    if token is None:
        name = "workstation"
    else:
        name = file_part(token.snapshot.serial, fallback="") or f"slot-{token.snapshot.slot_id}"
    return reports_dir() / f"kaztoken-{name}-{datetime.now():%Y%m%d-%H%M%S}.md"


def write_report(result: ScanResult, token: ScannedToken | None) -> Path:
    """The report of `token` (None: the workstation) written; its path. OSError when it cannot be."""
    path = report_path(token)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ticket_report(result, token), encoding="utf-8")
    return path
