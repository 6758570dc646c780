"""The shared audit table in PostgreSQL: every branch's terminals write to it, `audit --source` reads it.

One row per local record, keyed by (id, kind): an action's attempt and outcome share the id, and delivering a
record twice (a retry after a lost answer, two consoles flushing one shared file) stores it once. The columns are
the record's fields, for the indexes and the helpdesk's queries; `record` keeps it whole as JSON, exactly as the
terminal wrote it (except that PostgreSQL can hold neither NUL nor a lone surrogate: those are stored as their
backslash escapes).

Credentials are the libpq way: a password file (PGPASSFILE, ~/.pgpass), a service file (PGSERVICEFILE,
`postgresql:///?service=bank_audit`), or a client certificate. A password in the sink's name is refused: the
settings file is no place for it, and the name goes into the delivery state and onto the screen.

Everything read back is hostile (any terminal with the table's credentials can write any row): rows are checked
field by field as the local file's lines are (AuditEntry.from_dict), and shown through visible().
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.i18n import N_
from core.sinks import TIMEOUT, Record, SinkConfigError, SinkDown

if TYPE_CHECKING:
    import psycopg

TABLE = "kaztoken_audit"
# The indexes follow `audit --source`'s questions: the newest actions, of one token, one operator, one terminal.
SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id text NOT NULL,
        kind text NOT NULL CHECK (kind IN ('attempt', 'outcome')),
        time timestamptz NOT NULL,
        operator text NOT NULL,
        host text NOT NULL,
        action text NOT NULL,
        serial text NOT NULL,
        outcome text,
        label text,
        module text,
        role text,
        reason text,
        findings_before text[],
        findings_after text[],
        pin_before text,
        pin_after text,
        tries_before integer,
        tries_after integer,
        record jsonb NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        seq bigint GENERATED ALWAYS AS IDENTITY,  -- arrival order: a terminal's records within one second
        PRIMARY KEY (id, kind)
    )""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_time ON {TABLE} (time DESC)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_serial ON {TABLE} (serial, time DESC)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_operator ON {TABLE} (operator, time DESC)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_host ON {TABLE} (host, time DESC)",
)
COLUMNS = (
    "id",
    "kind",
    "time",
    "operator",
    "host",
    "action",
    "serial",
    "outcome",
    "label",
    "module",
    "role",
    "reason",
    "findings_before",
    "findings_after",
    "pin_before",
    "pin_after",
    "tries_before",
    "tries_after",
)
INSERT = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}, record) "
    f"VALUES ({', '.join(['%s'] * len(COLUMNS))}, %s) ON CONFLICT DO NOTHING"
)


def storable(value: Any) -> Any:
    """`value` with every string fit for PostgreSQL: a lone surrogate or a NUL written as its escape."""
    if isinstance(value, str):
        if "\x00" in value or any("\ud800" <= char <= "\udfff" for char in value):
            return value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
        return value
    if isinstance(value, list):
        return [storable(item) for item in value]
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    return value


def check_name(name: str) -> None:
    """Refuses a sink name with a password in it, or one psycopg cannot read as a connection string."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(name)
    except Exception:  # psycopg.ProgrammingError: the name is not a connection string
        raise SinkConfigError(name, N_("not a PostgreSQL connection URL")) from None
    if any(key.endswith("password") for key in params):  # password, sslpassword (the client key's passphrase)
        raise SinkConfigError(
            name, N_("a password does not belong in the settings: use a password file (PGPASSFILE) or a service")
        )


def connect(name: str) -> psycopg.Connection:
    import psycopg

    try:
        return psycopg.connect(
            name,
            connect_timeout=max(2, int(TIMEOUT)),
            application_name="kaztoken-helpdesk",
            options=f"-c statement_timeout={int(TIMEOUT * 6 * 1000)}",
        )
    except psycopg.Error as error:
        raise SinkDown(_reason(error)) from None


def _reason(error: Exception) -> str:
    """libpq's message (first line: it never holds the password), or the class of the error."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def ensure_table(conn: psycopg.Connection) -> None:
    """Creates the table and its indexes where they are missing. Looked up first, so a role that may only insert
    (the bank's DBA made the table) never needs CREATE."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (TABLE,))
        row = cur.fetchone()
        if row is not None and row[0] is not None:
            return
        for statement in SCHEMA:
            cur.execute(statement)
    conn.commit()


def row(record: Record) -> tuple[Any, ...]:
    data = storable(record.data)
    values = [data.get(column) for column in COLUMNS]
    values[COLUMNS.index("kind")] = record.kind
    from psycopg.types.json import Jsonb

    return (*values, Jsonb(data))


@dataclass(frozen=True, slots=True)
class PostgresSink:
    name: str

    @classmethod
    def from_name(cls, name: str) -> PostgresSink:
        check_name(name)
        return cls(name)

    def send(self, records: Sequence[Record]) -> None:
        import psycopg

        try:
            with connect(self.name) as conn:
                _create_racing(conn)
                with conn.cursor() as cur:
                    cur.executemany(INSERT, [row(record) for record in records])
                conn.commit()
        except psycopg.Error as error:
            raise SinkDown(_reason(error)) from None


def _create_racing(conn: psycopg.Connection) -> None:
    """Two terminals may both find the table missing and create it at once; the loser's error is no failure."""
    import psycopg

    try:
        ensure_table(conn)
    except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject):
        conn.rollback()


@dataclass(frozen=True, slots=True)
class Query:
    host: str | None = None
    serial: str | None = None
    operator: str | None = None
    since: datetime | None = None
    limit: int = 200


def fetch(name: str, query: Query) -> list[dict[str, Any] | None]:
    """The newest actions in the shared table, one per id: its outcome, or its attempt when no outcome came. Each
    as the JSON the terminal stored (a row whose `record` is not a JSON object comes back as None: malformed).

    The outcome-or-lonely-attempt test is an anti-join on the primary key, so the time index serves the order
    and the limit stops the scan early: no sort of the whole table."""
    import psycopg

    where = [f"(a.kind = 'outcome' OR NOT EXISTS (SELECT 1 FROM {TABLE} o WHERE o.id = a.id AND o.kind = 'outcome'))"]
    params: list[Any] = []
    for column in ("host", "serial", "operator"):
        value = getattr(query, column)
        if value is not None:
            where.append(f"a.{column} = %s")
            params.append(value)
    if query.since is not None:
        where.append("a.time >= %s")
        params.append(query.since)
    sql = f"SELECT a.record FROM {TABLE} a WHERE {' AND '.join(where)} ORDER BY a.time DESC, a.seq DESC LIMIT %s"
    params.append(query.limit)
    try:
        with connect(name) as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (TABLE,))
            found = cur.fetchone()
            if found is None or found[0] is None:
                return []
            cur.execute(sql, params)
            return [data if isinstance(data, dict) else None for (data,) in cur.fetchall()]
    except psycopg.Error as error:
        raise SinkDown(_reason(error)) from None
