"""Launch to first painted dashboard with 64 SoftHSM2 tokens, against a plain python-pkcs11 loop.

    .venv/bin/python benchmarks/launch_64_tokens.py [--tokens 64] [--runs 3]

Goal: under 1 s on 2 cores. Both sides run in a fresh Python process, so each includes its imports and the
module's C_Initialize; the baseline lists the same tokens and their objects with python-pkcs11 and nothing
else, so the ratio is what the console costs on top of the PKCS#11 work itself. Run on demand, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tokens import SOFTHSM_MODULE, SoftHSM  # noqa: E402

# Time from interpreter start (before importing Textual) to the first frame with every token's panel.
CONSOLE = """
import asyncio, sys, time
t0 = time.perf_counter()
from tui.app import HelpdeskApp

async def main():
    app = HelpdeskApp([sys.argv[1]], poll_seconds=0)
    async with app.run_test(size=(80, 24)) as pilot:
        while app.result is None or len(app.dashboard.panels) < int(sys.argv[2]):
            await pilot.pause(0.005)
        await pilot.pause()  # the frame with the panels is painted
        print(time.perf_counter() - t0)

asyncio.run(main())
"""

BASELINE = """
import sys, time
t0 = time.perf_counter()
import pkcs11
from pkcs11 import Attribute, ObjectClass
lib = pkcs11.lib(sys.argv[1])
count = 0
for slot in lib.get_slots(token_present=True):
    token = slot.get_token()
    if not token.label.strip() and 'TOKEN_INITIALIZED' not in repr(token.flags):
        continue
    with token.open() as session:
        for cls in (ObjectClass.CERTIFICATE, ObjectClass.PUBLIC_KEY):
            for obj in session.get_objects({Attribute.CLASS: cls}):
                obj[Attribute.ID]
    count += 1
print(time.perf_counter() - t0)
"""


def timed(script: str, env: dict[str, str], *args: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kaztoken-bench-") as temp:
        hsm = SoftHSM(Path(temp) / "softhsm")
        print(f"making {args.tokens} SoftHSM2 tokens…", file=sys.stderr)
        for number in range(args.tokens):
            serial = hsm.init_token(f"BENCH{number:02d}")
            if number % 4 == 0:
                hsm.generate_key(serial, "01")  # some tokens with objects, as at a real counter
        env = {
            **os.environ,
            "SOFTHSM2_CONF": str(hsm.conf),
            "XDG_CONFIG_HOME": str(Path(temp) / "config"),
            "PYTHONPATH": str(ROOT),
        }
        baseline = [timed(BASELINE, env, SOFTHSM_MODULE) for _ in range(args.runs)]
        console = [timed(CONSOLE, env, SOFTHSM_MODULE, str(args.tokens)) for _ in range(args.runs)]
    base, ours = statistics.median(baseline), statistics.median(console)
    print(f"tokens: {args.tokens}, cores: {os.cpu_count()}, runs: {args.runs} (medians)")
    print(f"baseline (python-pkcs11 loop, process start to done): {base:.3f} s")
    print(f"console (process start to first dashboard with every panel): {ours:.3f} s")
    print(f"ratio console/baseline: {ours / base:.2f}×; goal < 1 s: {'met' if ours < 1 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
