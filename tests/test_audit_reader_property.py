"""Any audit file, however damaged or forged, is read and shown without a crash and without a made-up field
(issue 12): random bytes, and JSON objects with the record's field names holding values of any JSON type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import audit
from tui import cli, render

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FIELDS = list(audit.AuditEntry.__dataclass_fields__)
PLAUSIBLE = st.sampled_from(
    ["attempt", "outcome", "done", "admin", "2025-01-02T03:04:05+00:00", "9999-12-31T23:59:59+00:00", "a" * 32]
)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12) | PLAUSIBLE,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
RECORDS = st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=len(FIELDS)).map(
    lambda data: json.dumps(data).encode()
)
LINES = st.lists(st.binary(max_size=120) | RECORDS, max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=LINES)
def test_any_file_is_read_and_shown(tmp_path: Path, lines: list[bytes]) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    items = audit.read(path)
    assert len(items) <= len(lines)
    for item in items:
        if isinstance(item, audit.Malformed):
            assert 1 <= item.line <= len(lines) and item.why.english
        else:  # a record: every field it shows is one the line held, of the right type
            for name in ("action", "serial", "time", "operator", "host"):
                assert isinstance(getattr(item, name), str)
            assert item.outcome is not None or item.attempt_only
        render.audit_row(item)
        render.audit_detail(item)
        cli._audit_row(item)
        json.dumps(item.to_dict())
