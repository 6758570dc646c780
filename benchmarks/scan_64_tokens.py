"""How much `kaztoken-helpdesk scan --json` costs over 64 tokens, against a plain python-pkcs11 loop.

Run on demand:  .venv/bin/python benchmarks/scan_64_tokens.py [--tokens 64] [--rounds 9]

Builds SoftHSM2 tokens in a temporary directory (half with a key pair and a certificate), then times, in
the same run and in fresh processes each round:
  baseline  python-pkcs11 alone: every slot, its token, a session, every certificate's value and every
            public key's id (what any tool must do to see the same objects);
  scan      `kaztoken-helpdesk scan --json` (module load, snapshots, certificate parsing, diagnostics, JSON).
and prints the medians and their ratio; then the same two inside one process, imports and module load
excluded, to show the per-token cost apart from Python's start-up. The goal: scan costs little more.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.tokens import SOFTHSM_MODULE, SoftHSM

# What any tool must do to see the same objects; shared by both measurements below.
LOOP = """
import sys, pkcs11
from pkcs11 import Attribute, ObjectClass
def loop(lib):
    for slot in lib.get_slots(token_present=True):
        token = slot.get_token()
        if not token.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED:
            continue
        with token.open() as session:
            for obj in session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE}):
                obj[Attribute.VALUE]
            for obj in session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY}):
                obj[Attribute.ID]
"""

BASELINE = LOOP + "loop(pkcs11.lib(sys.argv[1]))\n"

IN_PROCESS = (
    LOOP
    + """
import json, statistics, time
from core.scan import Workstation
lib = pkcs11.lib(sys.argv[1])
workstation = Workstation([sys.argv[1]])
def scan():
    json.dumps(workstation.scan().to_dict())
def median(work):
    work()
    times = []
    for _ in range(int(sys.argv[2])):
        start = time.perf_counter(); work(); times.append(time.perf_counter() - start)
    return statistics.median(times)
print(median(lambda: loop(lib)), median(scan))
"""
)


def build(hsm: SoftHSM, tokens: int) -> None:
    for index in range(tokens):
        serial = hsm.init_token(f"BENCH{index:02d}")
        if index % 2 == 0:
            hsm.profile(serial, "01", days_valid=365)


def timed(command: list[str], env: dict[str, str]) -> float:
    """The whole process's wall time, waited for with a blocking wait: subprocess's wait with a timeout polls in
    sleeps of up to 50 ms, which rounded every figure here to a step of 50 ms (earlier figures moved by 50 ms from
    one run to the next). A timer kills a process that hangs."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    killer = threading.Timer(300, process.kill)
    killer.start()
    process.wait()
    elapsed = time.perf_counter() - start
    killer.cancel()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hsm = SoftHSM(Path(tmp))
        print(f"building {args.tokens} SoftHSM2 tokens…", file=sys.stderr)
        build(hsm, args.tokens)
        env = dict(hsm.env)
        baseline_cmd = [sys.executable, "-c", BASELINE, SOFTHSM_MODULE]
        # The installed command (pyproject's [project.scripts]), as monitoring runs it.
        command = str(Path(sys.executable).parent / "kaztoken-helpdesk")
        scan_cmd = [command, "scan", "--json", "--module", SOFTHSM_MODULE]
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
        # Both run from compiled bytecode, as an installed package does (pip compiles it): a source tree run
        # with PYTHONDONTWRITEBYTECODE would compile every module of the tool at each start and nothing of the
        # baseline's (python-pkcs11 is installed), about 100 ms of difference that no user sees.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "bytecode")
        timed(baseline_cmd, env), timed(scan_cmd, env)  # compiles, warms the page cache
        baseline, scan = [], []
        for _ in range(args.rounds):  # interleaved, so drift in machine load hits both alike
            baseline.append(timed(baseline_cmd, env))
            scan.append(timed(scan_cmd, env))
        inner = subprocess.run(
            [sys.executable, "-c", IN_PROCESS, SOFTHSM_MODULE, str(args.rounds * 4)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout.split()
    b, s = statistics.median(baseline), statistics.median(scan)
    ib, iscan = float(inner[0]), float(inner[1])
    print(f"tokens: {args.tokens}, rounds: {args.rounds}")
    print(
        f"baseline python-pkcs11 loop: {b * 1000:8.1f} ms (median, whole process; fastest {min(baseline) * 1000:.1f})"
    )
    print(f"kaztoken-helpdesk scan --json: {s * 1000:6.1f} ms (median, whole process; fastest {min(scan) * 1000:.1f})")
    print(f"ratio scan/baseline: {s / b:.2f} (medians), {min(scan) / min(baseline):.2f} (fastest runs)")
    print(
        f"in one process, after imports: loop {ib * 1000:.1f} ms, scan + JSON {iscan * 1000:.1f} ms, "
        f"ratio {iscan / ib:.2f}"
    )


if __name__ == "__main__":
    main()
