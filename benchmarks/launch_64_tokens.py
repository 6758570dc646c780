"""Launch to the first token painted on screen, 64 SoftHSM2 tokens, in a real terminal (tmux, 80×24), against a
bare Textual app painting 64 bordered panels, measured the same way in the same run.

    .venv/bin/python benchmarks/launch_64_tokens.py [--tokens 64] [--runs 5]

Each side starts as a fresh process in a detached tmux server of its own; the time is from the spawn to the first
screen capture showing a token's label (captures every 10 ms, so a few ms of resolution). Both run from compiled
bytecode, as an installed package does. Goal: the console at most 0.5 s. Run on demand, not a test.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tokens import SOFTHSM_MODULE, SoftHSM  # noqa: E402

# What any Textual console of 64 tokens paints at least: 64 bordered panels with a label each.
BASELINE = """
from textual.app import App
from textual.containers import VerticalScroll
from textual.widgets import Static
class Bare(App):
    CSS = "Static { border: round white; height: 4; }"
    def compose(self):
        with VerticalScroll():
            for index in range(64):
                yield Static(f"BENCH{index:02d}")
Bare().run()
"""

LIMIT = 60.0  # seconds to wait for the screen: a bound, not a measurement


def launch(command: list[str], env: dict[str, str], ready: str) -> float:
    tmux = ["tmux", "-L", f"kzt-launch-{uuid.uuid4().hex[:8]}"]
    shell = shlex.join(["env", "-i", *(f"{k}={v}" for k, v in env.items()), *command])
    start = time.perf_counter()
    subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "24", "-s", "b", "exec " + shell], check=True)
    try:
        while time.perf_counter() - start < LIMIT:
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", "b"], capture_output=True, text=True).stdout
            if ready in screen:
                return time.perf_counter() - start
            time.sleep(0.01)
        raise SystemExit(f"{command[0]}: the screen did not show {ready!r}")
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        raise SystemExit("tmux is needed")
    # A console killed at its first paint may still be writing bytecode there (its imports after the paint).
    with tempfile.TemporaryDirectory(prefix="kaztoken-bench-", ignore_cleanup_errors=True) as temp:
        hsm = SoftHSM(Path(temp) / "softhsm")
        print(f"making {args.tokens} SoftHSM2 tokens…", file=sys.stderr)
        for number in range(args.tokens):
            serial = hsm.init_token(f"BENCH{number:02d}")
            if number % 2 == 0:
                hsm.profile(serial, "01", days_valid=365)
        env = {var: os.environ[var] for var in ("PATH", "HOME", "LANG") if var in os.environ}
        env |= {
            "TERM": "xterm-256color",
            "SOFTHSM2_CONF": str(hsm.conf),
            "XDG_CONFIG_HOME": str(Path(temp) / "config"),
            "PYTHONPATH": str(ROOT),
            "PYTHONPYCACHEPREFIX": str(Path(temp) / "bytecode"),  # compiled once, as an installed package is
        }
        baseline_cmd = [sys.executable, "-c", BASELINE]
        # The installed command (pyproject's [project.scripts]), as the helpdesk starts it.
        console_cmd = [str(Path(sys.executable).parent / "kaztoken-helpdesk"), "--module", SOFTHSM_MODULE]
        launch(baseline_cmd, env, "BENCH"), launch(console_cmd, env, "BENCH")  # compiles, warms the caches
        baseline, console = [], []
        for _ in range(args.runs):  # interleaved, so drift in machine load hits both alike
            baseline.append(launch(baseline_cmd, env, "BENCH"))
            console.append(launch(console_cmd, env, "BENCH"))
    base, ours = statistics.median(baseline), statistics.median(console)
    print(f"tokens: {args.tokens}, cores: {os.cpu_count()}, runs: {args.runs}, tmux 80×24")
    print(f"baseline (bare Textual app, 64 bordered panels), spawn to first label: {base:.3f} s (median)")
    print(f"console, spawn to first token label on screen: {ours:.3f} s (median; fastest {min(console):.3f})")
    print(f"ratio console/baseline: {ours / base:.2f}; goal ≤ 0.5 s: {'met' if ours <= 0.5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
