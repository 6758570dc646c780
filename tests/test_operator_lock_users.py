"""The operator lock with real OS users (issue 12): two users at one terminal each take and release a token's
lock, whoever used it first (root included); a link or another user's directory is refused and nothing is
chmod-ed through it.

The users are made here with useradd (unique names) and removed at the end; their processes run with setpriv.
The shared directory stands for /tmp: root's, sticky, world-writable, under /tmp (pytest's own dir is root's
only), removed at the end.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core import operator_lock
from tests.test_cli_actions import NEW_PIN, lines, run_cli, user_pin_works
from tests.tokens import SO_PIN, USER_PIN, SoftHSM

REPO = Path(__file__).resolve().parent.parent
SERIAL = "c9e80ae234411c48"
TOOLS = ("useradd", "userdel", "setpriv")
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in TOOLS),
    reason="making OS users needs root, useradd, userdel and setpriv",
)

# Takes the lock, says so (or who holds it), waits for a line, lets go.
HOLDER = """
import sys
from core import operator_lock
try:
    operator_lock.acquire(sys.argv[1], "unblock")
except operator_lock.TokenBusy as busy:
    print("busy", busy.holder.operator if busy.holder else "?", flush=True)
    sys.exit(3)
except OSError as error:
    print("error", error, flush=True)
    sys.exit(4)
print("held", flush=True)
sys.stdin.readline()
operator_lock.release(sys.argv[1])
print("released", flush=True)
"""


@dataclass
class World:
    shared: Path  # the lock directory, as /tmp is
    code: Path  # a copy of the package every user can read
    users: tuple[str, str]

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(self.code),
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
            "HOME": str(self.shared),
            operator_lock.LOCK_DIR_ENV: str(self.shared),
            "LOGNAME": "someone",  # never the operator: the uid's account is
            "USER": "someone",
        }

    def as_user(self, user: str, *command: str, **kwargs: object) -> subprocess.Popen[str]:
        setpriv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"]
        return subprocess.Popen(
            [*setpriv, *command],
            env=self.env(),
            cwd=self.shared,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **kwargs,  # type: ignore[arg-type]
        )

    def hold(self, user: str) -> subprocess.Popen[str]:
        """`user` takes the lock and keeps it until `let_go`."""
        process = self.as_user(user, sys.executable, "-c", HOLDER, SERIAL)
        line = process.stdout.readline().strip()
        if line != "held":
            process.kill()
            _out, err = process.communicate(timeout=30)
            raise AssertionError(f"{user} could not take the lock: {line!r} {err}")
        return process

    def let_go(self, process: subprocess.Popen[str]) -> None:
        out, err = process.communicate("\n", timeout=30)
        assert out.strip() == "released" and process.returncode == 0, err

    def try_lock(self, user: str) -> tuple[int, str]:
        process = self.as_user(user, sys.executable, "-c", HOLDER, SERIAL)
        out, err = process.communicate("\n", timeout=30)
        return process.returncode, out.strip() + err


@pytest.fixture
def world() -> Iterator[World]:
    tag = f"{os.getpid() % 100000:05d}"
    users = (f"kzh{tag}a", f"kzh{tag}b")
    shared = Path(tempfile.mkdtemp(prefix="kaztoken-lock-users-"))
    made: list[str] = []
    try:
        shared.chmod(0o1777)
        code = shared / "code"
        shutil.copytree(REPO / "core", code / "core", ignore=shutil.ignore_patterns("__pycache__"))
        os.chmod(code, 0o755)
        for user in users:
            done = subprocess.run(
                ["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", user],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                pytest.skip(f"cannot make an OS user here: {done.stderr.strip()}")
            made.append(user)
        world = World(shared, code, users)
        probe = world.as_user(users[0], sys.executable, "-c", "import core.operator_lock")
        _out, err = probe.communicate(timeout=60)
        if probe.returncode != 0:
            pytest.skip(f"the Python environment is not readable by another OS user: {err.strip()[-200:]}")
        yield world
    finally:
        for user in made:
            subprocess.run(["userdel", user], capture_output=True, check=False)
        shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture
def root_locks(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    """This process (root) uses the same lock directory."""
    monkeypatch.setenv(operator_lock.LOCK_DIR_ENV, str(world.shared))
    return world


def lock_file(world: World) -> Path:
    return world.shared / operator_lock.file_name(SERIAL)


@needs_root
def test_two_users_take_and_release_the_lock_in_turn_after_root(root_locks: World) -> None:
    world = root_locks
    alice, bob = world.users
    with operator_lock.holding(SERIAL, "format"):  # root first: it used to leave a 0644 file behind
        pass
    info = lock_file(world).stat()
    assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o666

    held = world.hold(alice)
    code, said = world.try_lock(bob)
    assert (code, said) == (3, f"busy {alice}")  # her account, not LOGNAME's "someone"
    with pytest.raises(operator_lock.TokenBusy) as busy:
        operator_lock.acquire(SERIAL, "format")
    assert busy.value.holder is not None and busy.value.holder.operator == alice
    world.let_go(held)

    held = world.hold(bob)
    assert world.try_lock(alice) == (3, f"busy {bob}")
    world.let_go(held)

    world.let_go(world.hold(alice))
    with operator_lock.holding(SERIAL, "format"):
        pass


@needs_root
def test_a_read_only_lock_file_of_another_user_still_locks(root_locks: World) -> None:
    """A lock file another user left 0644 (as older versions did) cannot be written, but it still takes an flock."""
    world = root_locks
    alice, bob = world.users
    path = lock_file(world)
    path.write_text('{"operator": "old"}')
    path.chmod(0o644)
    held = world.hold(alice)
    assert world.try_lock(bob)[0] == 3
    world.let_go(held)
    world.let_go(world.hold(bob))
    assert path.read_text() == '{"operator": "old"}'  # not theirs to write


@needs_root
def test_a_link_planted_by_another_user_is_refused(root_locks: World, tmp_path: Path) -> None:
    """Another user plants a link where root's lock file will be: root refuses, and its target is untouched."""
    world = root_locks
    victim = tmp_path / "victim"
    victim.write_text("root's own file\n")
    victim.chmod(0o600)
    planted = world.as_user(world.users[0], "ln", "-s", str(victim), str(lock_file(world)))
    assert planted.wait(timeout=30) == 0
    with pytest.raises(operator_lock.LockError) as refused:
        operator_lock.acquire(SERIAL, "format")
    assert "a symbolic link" in str(refused.value)
    assert victim.read_text() == "root's own file\n" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert not operator_lock._held


@needs_root
def test_a_lock_directory_of_another_user_is_refused(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = world.shared / "theirs"
    theirs.mkdir(mode=0o755)
    account = pwd.getpwnam(world.users[0])
    os.chown(theirs, account.pw_uid, account.pw_gid)
    monkeypatch.setenv(operator_lock.LOCK_DIR_ENV, str(theirs))
    with pytest.raises(operator_lock.LockError) as refused:
        operator_lock.acquire(SERIAL, "format")
    assert f"belongs to another user (uid {account.pw_uid})" in str(refused.value)
    assert stat.S_IMODE(theirs.stat().st_mode) == 0o755 and not list(theirs.iterdir())


@pytest.mark.parametrize("mode", [0o755, 0o700])
def test_a_link_at_the_lock_directory_is_refused_and_nothing_chmod_ed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    target = tmp_path / "etc-like"
    target.mkdir(mode=mode)
    target.chmod(mode)
    link = tmp_path / "locks"
    link.symlink_to(target)
    monkeypatch.setenv(operator_lock.LOCK_DIR_ENV, str(link))
    with pytest.raises(operator_lock.LockError) as refused:
        operator_lock.acquire(SERIAL, "format")
    assert f"The lock directory {link} is a symbolic link or not a directory" in str(refused.value)
    assert stat.S_IMODE(target.stat().st_mode) == mode and not list(target.iterdir())


def test_a_world_writable_directory_that_is_not_sticky_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    monkeypatch.setenv(operator_lock.LOCK_DIR_ENV, str(open_dir))
    with pytest.raises(operator_lock.LockError, match="not sticky"):
        operator_lock.acquire(SERIAL, "format")
    assert stat.S_IMODE(open_dir.stat().st_mode) == 0o777


def test_a_fifo_as_the_lock_file_is_refused_without_hanging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    os.mkfifo(shared / operator_lock.file_name(SERIAL))
    monkeypatch.setenv(operator_lock.LOCK_DIR_ENV, str(shared))
    with pytest.raises(operator_lock.LockError, match="Cannot use the lock"):
        operator_lock.acquire(SERIAL, "format")


def test_a_hostile_holder_note_is_read_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever another user wrote in the file, the refusal names a short, well-formed holder or none."""
    import fcntl
    import json

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.setenv(operator_lock.LOCK_DIR_ENV, str(shared))
    path = shared / operator_lock.file_name(SERIAL)
    notes = (
        json.dumps({"operator": "x" * 3000, "host": ["h"], "pid": "12", "since": 5}).encode(),
        json.dumps({"operator": "mallory", "pid": True, "extra": 1}).encode(),
        b"\xff\xfe not json",
        b"[" * 4000,
    )
    for note in notes:
        path.write_bytes(note)
        with open(path, "rb") as other:  # another process holds it
            fcntl.flock(other, fcntl.LOCK_EX)
            with pytest.raises(operator_lock.TokenBusy) as busy:
                operator_lock.acquire(SERIAL, "format")
        holder = busy.value.holder
        if holder is not None:
            assert len(holder.describe()) < 4 * operator_lock.MAX_FIELD
            assert holder.pid in ("12", "?")  # as the file says, or unknown: never a made-up number
            assert all(isinstance(v, str) for v in (holder.host, holder.action, holder.since))
    assert not operator_lock._held


def test_the_cli_refuses_an_unsafe_lock_directory_and_touches_no_token(
    softhsm: SoftHSM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "target"
    target.mkdir(mode=0o755)
    link = tmp_path / "locks-link"
    link.symlink_to(target)
    monkeypatch.setenv(operator_lock.LOCK_DIR_ENV, str(link))
    serial = softhsm.init_token("IVANOV")
    done = run_cli("unblock", "--serial", serial, "--pin-stdin", stdin=lines(SO_PIN, NEW_PIN, NEW_PIN))
    assert done.returncode == 1
    assert "is a symbolic link or not a directory" in done.stderr and "Traceback" not in done.stderr
    assert user_pin_works(softhsm, serial, USER_PIN) and not user_pin_works(softhsm, serial, NEW_PIN)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
