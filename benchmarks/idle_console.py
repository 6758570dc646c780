"""CPU of the idle console polling 64 SoftHSM2 tokens, and one token holding 300 certificates, against a baseline
measured in the same run: a bare Textual app of the same size that redraws a clock every second.

    .venv/bin/python benchmarks/idle_console.py [--tokens 64] [--seconds 20]

Each side runs as a real process in a detached tmux terminal (80×24); its CPU is read from /proc for the process
and every process under it (the console's library hosts included), over the same window once the screen is up.
Then the peak resident memory (VmHWM, what ru_maxrss reports) of the process itself and of each process under it.
Goals: the console at most 2% of one core, under 120 MiB. Run on demand, not a test.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tokens import SOFTHSM_MODULE, SoftHSM  # noqa: E402

BASELINE = """
from textual.app import App
from textual.widgets import Static
import time
class Bare(App):
    def compose(self):
        yield Static(id="clock")
    def on_mount(self):
        self.set_interval(1, lambda: self.query_one("#clock", Static).update(time.ctime()))
Bare().run()
"""


def ticks(pid: int) -> int:
    """utime+stime (and reaped children's) of pid and every descendant, in clock ticks."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(value) for value in fields[11:15])
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return total


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                children = [int(child) for child in (task / "children").read_text().split()]
                found += children
                todo += children
        except OSError:
            continue
    return found


def peak_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM, as ru_maxrss counts it), MiB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Idle:
    cpu: float  # % of one core
    peak: float  # MiB, the console's own process
    children: list[float]  # MiB, each process under it (library hosts, the forkserver)


def measure(command: list[str], env: dict[str, str], seconds: float, ready: str) -> Idle:
    socket = f"kzt-bench-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", socket]
    shell = shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), *command])
    subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "24", "-s", "b", "exec " + shell], check=True)
    try:
        deadline = time.monotonic() + 120
        while (
            ready not in subprocess.run([*tmux, "capture-pane", "-p", "-t", "b"], capture_output=True, text=True).stdout
        ):
            if time.monotonic() > deadline:
                raise SystemExit(f"{command[0]}: the screen did not show {ready!r}")
            time.sleep(0.2)
        time.sleep(3)  # past the first scans
        pid = int(
            subprocess.run(
                [*tmux, "display-message", "-p", "-t", "b", "#{pane_pid}"], capture_output=True, text=True
            ).stdout
        )
        before = ticks(pid)
        time.sleep(seconds)
        cpu = (ticks(pid) - before) / os.sysconf("SC_CLK_TCK") / seconds * 100
        return Idle(cpu, peak_mib(pid), sorted((peak_mib(child) for child in descendants(pid)), reverse=True))
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        raise SystemExit("tmux is needed")
    base_env = {var: os.environ[var] for var in ("PATH", "HOME", "TERM") if var in os.environ}
    base_env["TERM"] = "xterm-256color"
    base_env["PYTHONPATH"] = str(ROOT)
    # The installed command (pyproject's [project.scripts]), as the helpdesk starts it.
    console = [str(Path(sys.executable).parent / "kaztoken-helpdesk"), "--module", SOFTHSM_MODULE]
    with tempfile.TemporaryDirectory() as tmp:
        many, crowded = SoftHSM(Path(tmp) / "many"), SoftHSM(Path(tmp) / "crowded")
        print(f"building {args.tokens} tokens and one with 300 certificates…", file=sys.stderr)
        for index in range(args.tokens):
            serial = many.init_token(f"BENCH{index:02d}")
            if index % 2 == 0:
                many.profile(serial, "01", days_valid=365)
        serial = crowded.init_token("CROWDED")
        for index in range(300):
            crowded.profile(serial, f"{index:04x}", days_valid=365 + index)
        baseline = measure([sys.executable, "-c", BASELINE], base_env, args.seconds, "20")
        tokens = measure(console, {**base_env, "SOFTHSM2_CONF": str(many.conf)}, args.seconds, "BENCH")
        certificates = measure(console, {**base_env, "SOFTHSM2_CONF": str(crowded.conf)}, args.seconds, "CROWDED")
    print(f"idle CPU over {args.seconds:g} s, % of one core; peak resident memory (VmHWM), MiB")
    for name, idle in (
        ("baseline (bare Textual app, a clock)", baseline),
        (f"console, {args.tokens} tokens", tokens),
        ("console, one token, 300 certificates", certificates),
    ):
        children = " + ".join(f"{peak:.0f}" for peak in idle.children) or "none"
        print(
            f"{name:38s} CPU {idle.cpu:5.2f} (ratio {idle.cpu / max(baseline.cpu, 0.01):4.1f})  "
            f"memory {idle.peak:5.1f} (ratio {idle.peak / max(baseline.peak, 0.01):.1f}), processes under it {children}"
        )


if __name__ == "__main__":
    main()
