"""Real servers for the audit sinks' tests: a PostgreSQL cluster and an rsyslogd, each the test's own.

Each runs from a directory of its own on a free port of the loopback interface, is started and stopped by the
test (stop() in teardown), and is seen by nothing else on the machine: no system service, no /dev/log.
PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user (its directory is
made outside pytest's private temp dir, which that user cannot enter, and removed afterwards).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), "")
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
WAIT_SECONDS = 60.0  # a bound on waiting for a server to come up or a line to land: never an assertion on time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, what: str, seconds: float = WAIT_SECONDS):
    """Polls `condition` until it returns something true; fails the test with `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@dataclass
class PostgreSQL:
    """A cluster with password authentication: the client finds its password in a PGPASSFILE, the libpq way."""

    pgpass: Path  # written by start(); its directory is the test's
    user: str = "kaztoken"
    database: str = "audit"
    port: int = field(default_factory=free_port)
    secret: str = "db-secret-not-a-code"

    def __post_init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="kaztoken-pg-"))
        self.data = self.root / "data"
        self.os_user = "postgres" if os.geteuid() == 0 else None
        if self.os_user:
            entry = pwd.getpwnam(self.os_user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        password_file = self.root / "pw"
        password_file.write_text(self.secret + "\n")
        if self.os_user:
            os.chown(password_file, pwd.getpwnam(self.os_user).pw_uid, -1)
        self._run(
            f"{PG_BIN}/initdb",
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=scram-sha-256",
            f"--pwfile={password_file}",
            "--no-sync",
        )
        password_file.unlink()
        self.pgpass.write_text(f"127.0.0.1:{self.port}:*:{self.user}:{self.secret}\n")
        self.pgpass.chmod(0o600)

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = ["runuser", "-u", self.os_user, "--", *args] if self.os_user else list(args)
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=120, cwd=self.root)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(f"{PG_BIN}/pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run(f"{PG_BIN}/pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_database(self) -> None:
        import psycopg

        with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.database}")

    def close(self) -> None:
        subprocess.run(
            (["runuser", "-u", self.os_user, "--"] if self.os_user else [])
            + [f"{PG_BIN}/pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            check=False,
            timeout=120,
        )
        shutil.rmtree(self.root, ignore_errors=True)

    def rows(self) -> list[tuple[str, str, dict]]:
        """(id, kind, record) of every row, read with the test's own connection."""
        import psycopg

        with psycopg.connect(self.url) as conn, conn.cursor() as cur:
            cur.execute("SELECT id, kind, record FROM kaztoken_audit ORDER BY time, id, kind")
            return list(cur.fetchall())


# rsyslog writes each message's input (imtcp, imuxsock), id, host, app, structured data and text, tab-separated.
RSYSLOG_CONF = """\
global(workDirectory="{work}" maxMessageSize="64k" net.enableDNS="off")
module(load="imtcp")
module(load="imuxsock" SysSock.Use="off")
template(name="fields" type="list") {{
  property(name="inputname") constant(value="\\t")
  property(name="msgid") constant(value="\\t") property(name="hostname") constant(value="\\t")
  property(name="app-name") constant(value="\\t") property(name="structured-data") constant(value="\\t")
  property(name="msg") constant(value="\\n")
}}
ruleset(name="audit") {{
  action(type="omfile" file="{out}" template="fields")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="audit")
input(type="imuxsock" Socket="{socket}" ruleset="audit" UseSpecialParser="off" ParseHostname="on")
"""


@dataclass
class Rsyslog:
    root: Path
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "work").mkdir(exist_ok=True)
        self.out = self.root / "received.log"
        self.socket = self.root / "log.sock"
        self.conf = self.root / "rsyslog.conf"
        self.conf.write_text(
            RSYSLOG_CONF.format(work=self.root / "work", out=self.out, port=self.port, socket=self.socket)
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def tcp(self) -> str:
        return f"syslog+tcp://127.0.0.1:{self.port}"

    @property
    def unix(self) -> str:
        return f"syslog+unix://{self.socket}"

    def start(self) -> None:
        pidfile = self.root / "rsyslogd.pid"
        self.process = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(pidfile)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "rsyslogd.err", "ab"),  # noqa: SIM115 - the child keeps it
            start_new_session=True,
        )
        wait_for(lambda: self._listening() or self.process.poll() is not None, "rsyslogd to listen")
        assert self.process.poll() is None, (self.root / "rsyslogd.err").read_text()

    def _listening(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        self.process = None
        self.socket.unlink(missing_ok=True)

    def lines(self) -> list[list[str]]:
        if not self.out.exists():
            return []
        return [line.split("\t") for line in self.out.read_text(encoding="utf-8").splitlines()]
