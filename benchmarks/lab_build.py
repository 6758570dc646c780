"""How long the training lab takes: the whole lab with every scenario from nothing (all on the simulated
KAZTOKEN), a second start, and a reset of one token and of all of them, against a baseline measured in the same
run: `softhsm2-util --init-token` making one empty token. The targets: the whole lab ≤ 3 s, a reset ≤ 50 ms.

    .venv/bin/python benchmarks/lab_build.py

Builds in a temporary directory with openCryptoki left alone (its one machine-wide token is not the lab's to
time here); the simulator's library is built first (once) and not timed. Prints milliseconds, the ratio to the
baseline, and whether each target is met; exits 1 when one is not.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core import simulator
from core.lab import SIMULATED, Lab

RUNS = 3
TARGETS = {"build": 3.0, "reset": 0.050}


def baseline(root: Path) -> float:
    """One `softhsm2-util --init-token` (a process start, SoftHSM2's own C_InitToken and C_InitPIN)."""
    conf = root / "baseline.conf"
    tokens = root / "baseline-tokens"
    tokens.mkdir()
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    started = time.perf_counter()
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "BASE", "--so-pin", "87654321", "--pin", "12345678"],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        capture_output=True,
        check=True,
    )
    return time.perf_counter() - started


def main() -> int:
    simulator.library()
    builds, starts, resets, reset_alls, bases = [], [], [], [], []
    for _run in range(RUNS):
        with tempfile.TemporaryDirectory() as directory:
            root = Path(directory)
            bases.append(baseline(root))
            lab = Lab(root / "lab", opencryptoki=False)
            started = time.perf_counter()
            lab.build()
            builds.append(time.perf_counter() - started)
            started = time.perf_counter()
            lab.build()
            starts.append(time.perf_counter() - started)
            started = time.perf_counter()
            lab.reset(["healthy"])
            resets.append(time.perf_counter() - started)
            started = time.perf_counter()
            lab.reset()
            reset_alls.append(time.perf_counter() - started)
    base = statistics.median(bases)
    print(f"baseline: softhsm2-util --init-token, one empty token   {base * 1000:8.1f} ms")
    keys = sum(1 for item in SIMULATED if item.recipe.key)
    failed = False
    for name, times, target in (
        (f"whole lab from nothing ({len(SIMULATED)} tokens, {keys} keys)", builds, TARGETS["build"]),
        ("second start (everything kept)", starts, None),
        ("reset of one token (pristine copy)", resets, TARGETS["reset"]),
        (f"reset of all {len(SIMULATED)} tokens", reset_alls, None),
    ):
        worst = max(times)
        verdict = ""
        if target is not None:
            met = worst <= target
            failed |= not met
            verdict = f"   {'ok' if met else 'OVER'} (≤ {target * 1000:.0f} ms, worst {worst * 1000:.1f} ms)"
        median = statistics.median(times)
        print(f"{name:<54}{median * 1000:8.1f} ms   {median / base:6.2f}× baseline{verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
