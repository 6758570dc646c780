"""End to end: the installed `kaztoken-helpdesk` command in a real terminal (tmux, 80×24) on a SoftHSM2 token."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.tokens import SOFTHSM_MODULE, SoftHSM

ROOT = Path(__file__).resolve().parent.parent

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")


@pytest.fixture
def tmux() -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """tmux on a private socket of this test's own, its server always killed afterwards."""
    socket = f"kzt-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def call(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert TMUX is not None
        return subprocess.run([TMUX, "-L", socket, *args], capture_output=True, text=True, check=check, timeout=10)

    try:
        yield call
    finally:
        call("kill-server", check=False)


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.1)


Tmux = Callable[..., subprocess.CompletedProcess[str]]


def start_console(softhsm: SoftHSM, tmux: Tmux) -> Callable[[], str]:
    """The console in a detached 80×24 session; returns a function reading the screen."""
    command = Path(sys.executable).with_name("kaztoken-helpdesk")
    assert command.exists(), command
    env = {
        "SOFTHSM2_CONF": str(softhsm.conf),
        "TERM": "xterm-256color",
        **{var: os.environ[var] for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "HOME", "PATH") if var in os.environ},
    }
    shell = shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), str(command), "--module", SOFTHSM_MODULE])
    tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", "console", shell)

    def screen() -> str:
        return tmux("capture-pane", "-p", "-t", "console", check=False).stdout

    return screen


def test_console_in_a_real_terminal(softhsm: SoftHSM, tmux: Tmux) -> None:
    softhsm.init_token("TMUXTOKEN")
    screen = start_console(softhsm, tmux)
    wait_until(lambda: "TMUXTOKEN" in screen())
    assert "Traceback" not in screen()
    tmux("send-keys", "-t", "console", "?")
    wait_until(lambda: "0200040" in screen())
    tmux("send-keys", "-t", "console", "Escape")
    wait_until(lambda: "TMUXTOKEN" in screen())
    tmux("send-keys", "-t", "console", "q")
    wait_until(lambda: tmux("has-session", "-t", "console", check=False).returncode != 0)


def test_terminal_gone_ends_the_console(softhsm: SoftHSM, tmux: Tmux) -> None:
    """An SSH drop is a SIGHUP: the console must end, not linger on a dead terminal."""
    softhsm.init_token("HANGUP")
    screen = start_console(softhsm, tmux)
    wait_until(lambda: "HANGUP" in screen())
    pid = int(tmux("display-message", "-p", "-t", "console", "#{pane_pid}").stdout)
    tmux("kill-session", "-t", "console")

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, timeout=10)


def test_readme_first_command_ends_in_the_console_on_the_lab(tmp_path: Path, tmux: Tmux) -> None:
    """`./scripts/demo`, the README's first command: setup (already done here, so quick), the lab built, and
    the console on it, marked LAB. The lab goes to a directory of this test's own (`--dir`, passed on)."""
    env = {
        "TERM": "xterm-256color",
        **{
            var: os.environ[var]
            for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "HOME", "PATH")
            if var in os.environ
        },
    }
    # SoftHSM2 only: the machine's one openCryptoki token belongs to the openCryptoki tests (the lab's use of it
    # is tested in test_lab.py). Seen in the fresh-machine check's chroot, which shares /dev/shm with the host's
    # openCryptoki: a console there with openCryptoki loaded did not answer `q`.
    lab_dir = str(tmp_path / "lab")
    demo = shlex.join(
        [
            "env",
            *(f"{k}={v}" for k, v in env.items()),
            str(ROOT / "scripts" / "demo"),
            "--dir",
            lab_dir,
            "--no-opencryptoki",
        ]
    )
    tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", "demo", demo)

    def screen() -> str:
        return tmux("capture-pane", "-p", "-t", "demo", check=False).stdout

    def lab_shown() -> bool:
        # Panels follow slot order (from random serials): look at the header's token count, not at a name.
        shown = screen()
        count = re.search(r"tokens: (\d+)", shown)
        return "Traceback" in shown or ("LAB" in shown and count is not None and int(count.group(1)) >= 10)

    try:
        wait_until(lab_shown, timeout=180)
    except AssertionError:
        raise AssertionError(f"the lab console did not show; the terminal reads:\n{screen()}") from None
    assert "Traceback" not in screen()
    assert "training tokens" in screen()
    wait_until(lambda: "KAZTOKEN «" in screen())  # the header's count can land a frame before the panels
    tmux("send-keys", "-t", "demo", "q")
    try:
        # Quitting finalises the modules; openCryptoki's C_Finalize talks to its daemon: allow for a slow one.
        wait_until(lambda: tmux("has-session", "-t", "demo", check=False).returncode != 0, timeout=60)
    except AssertionError:
        raise AssertionError(f"the lab console did not quit; the terminal reads:\n{screen()}") from None


@pytest.mark.parametrize(("mode", "shown"), [("hang-tokeninfo", "stopped answering"), ("segv-tokeninfo", "crashed")])
def test_console_survives_a_hanging_or_crashing_library_and_quits_on_q(
    tmp_path: Path, tmux: Tmux, mode: str, shown: str
) -> None:
    """A library that hangs or segfaults: the console shows it, stays usable, and `q` ends it (terminal back)."""
    library = tmp_path / "libhostile.so"
    stub = ROOT / "tests" / "stubs" / "hostile.c"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(library), str(stub)], check=True, timeout=120)
    command = Path(sys.executable).with_name("kaztoken-helpdesk")
    env = {
        "HOSTILE_MODE": mode,
        "TERM": "xterm-256color",
        **{var: os.environ[var] for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "HOME", "PATH") if var in os.environ},
    }
    console = [str(command), "--module", str(library), "--library-timeout", "3"]
    shell = shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), *console]) + "; echo CONSOLE-ENDED; sleep 30"
    tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", "console", shell)

    def screen() -> str:
        return tmux("capture-pane", "-p", "-t", "console", check=False).stdout

    wait_until(lambda: shown in screen(), timeout=30)
    assert "Traceback" not in screen()
    tmux("send-keys", "-t", "console", "?")  # still answers keys
    wait_until(lambda: "0200040" in screen())
    tmux("send-keys", "-t", "console", "Escape")
    wait_until(lambda: shown in screen())  # help closed (an Escape followed at once by q would be Alt+q)
    tmux("send-keys", "-t", "console", "q")
    wait_until(lambda: "CONSOLE-ENDED" in screen(), timeout=20)
    assert "\x1b" not in screen() and "Traceback" not in screen()


def test_re_enrolment_by_keys_alone_at_80x24(tmux: Tmux) -> None:
    """Issue 14: a whole re-enrolment with the training CA, in a real 80×24 terminal, by keys alone; the keys
    beyond typing the PIN are counted (target: at most 12). The lab is built under this test's own data dir
    (XDG_DATA_HOME), SoftHSM2 only, so its healthy token is a lab token and the training CA is offered."""
    from core.lab import LAB_USER_PIN

    command = Path(sys.executable).with_name("kaztoken-helpdesk")
    env = {
        "TERM": "xterm-256color",
        **{
            var: os.environ[var]
            for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "HOME", "PATH")
            if var in os.environ
        },
    }
    shell = shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), str(command), "lab", "--no-opencryptoki"])
    tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", "lab", shell)

    def screen() -> str:
        return tmux("capture-pane", "-p", "-t", "lab", check=False).stdout

    def send(*keys: str) -> None:
        tmux("send-keys", "-t", "lab", *keys)

    def selected_line() -> str:
        # The selected panel has a heavy border: its title line starts with ┏.
        return next((line for line in screen().splitlines() if "┏" in line), "")

    try:
        wait_until(lambda: "LAB" in screen() and "┏" in screen(), timeout=240)
        for _ in range(40):  # to the healthy token (worst first: it is among the last); not counted
            if "AKHMETOVA" in selected_line():
                break
            send("Down")
            time.sleep(0.2)
        assert "AKHMETOVA" in selected_line(), screen()

        keys: list[str] = []

        def key(name: str, then: Callable[[], bool], timeout: float = 30.0) -> None:
            keys.append(name)
            time.sleep(0.6)  # a person's pace: the step's button takes the focus a frame after its text shows
            send(name)
            wait_until(then, timeout=timeout)

        key("e", lambda: "User PIN" in screen() and "1 Log in" in screen())
        send("-l", LAB_USER_PIN)  # typing the PIN: not counted
        key("Enter", lambda: "[2 Key pair]" in screen())
        key("Enter", lambda: "[3 Request]" in screen(), timeout=60)
        key("Enter", lambda: "[4 Certificate]" in screen())
        key("Enter", lambda: "[5 Old pair]" in screen())
        key("Enter", lambda: "Remove these for good?" in screen())
        key("Tab", lambda: True)
        key("Enter", lambda: "✔ done" in screen())
        key("Escape", lambda: "AKHMETOVA" in screen() and "Re-enrol ·" not in screen())
        assert "Traceback" not in screen()
        assert len(keys) <= 12, keys
    except AssertionError:
        raise AssertionError(f"the terminal reads:\n{screen()}") from None
    finally:
        send("q")
