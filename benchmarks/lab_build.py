"""How long the training lab takes: the whole SoftHSM2 lab from nothing, a second start, and a reset of one token,
against a baseline measured in the same run: `softhsm2-util --init-token` making one empty token.

    .venv/bin/python benchmarks/lab_build.py

Builds in a temporary directory with openCryptoki left alone (its one machine-wide token is not the lab's to
time here); prints seconds and ratios to the baseline.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from core.lab import Lab

RUNS = 3


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


def main() -> None:
    builds, starts, resets, bases = [], [], [], []
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
    base = statistics.median(bases)
    print(f"baseline: softhsm2-util --init-token, one empty token   {base * 1000:8.1f} ms")
    for name, times in (
        ("whole SoftHSM2 lab from nothing (10 tokens, 8 keys)", builds),
        ("second start (everything kept)", starts),
        ("reset of one token (pristine copy)", resets),
    ):
        median = statistics.median(times)
        print(f"{name:<54}{median * 1000:8.1f} ms   {median / base:6.2f}× baseline")


if __name__ == "__main__":
    main()
