"""The training lab: real tokens in the states a helpdesk meets, one per scenario, for a console to train on.

Every token scenario is a simulated KAZTOKEN (`core.simulator`: a PKCS#11 library over SoftHSM2 that counts PIN
tries and locks, tells the factory PINs apart, and has readers a token can be pulled out of), all at once, in a
simulator directory of the lab's own (`<root>/sim`, named to the library by KAZTOKEN_SIM_DIR). One reader per
scenario, always the same slot id. The one scenario the simulator does not show, a token that demands new PINs
(CKF_*_PIN_TO_BE_CHANGED), lives on openCryptoki's soft token where that is installed and its daemon runs, for
root; the lab is whole without it. "Driver missing" is not a token but a way of starting the console.

Tokens are built in this process through the simulator's library (core.session); certificates come from the
lab's training CA (`core.training_ca`). A pristine copy of each built token (SoftHSM2's token directory and the
reader's state file) is kept, so a reset is a file copy (milliseconds) with the same serial: a running console
sees the token change in place at its next poll, and sessions it had on the old token end as if it had been
pulled out. Unplugging and replugging set the reader's flag.

The library reads KAZTOKEN_SIM_DIR once, at C_Initialize. Building in-process therefore sets
`os.environ["KAZTOKEN_SIM_DIR"]` to the lab's directory for the rest of this process (a console started
afterwards in this process, and every subprocess, sees the lab's tokens) and re-initialises the library if it is
already loaded here; at the end the library is finalised, so the next user initialises it afresh. A process with
a console running (the trainer's menu) must not drive the shared library from a second thread: it passes
`isolated=True`, and builds then run in a child process (`python -m core.lab reset …`), while file work stays
in-process. openCryptoki's token is always built in a child process: see `Lab.rebuild`.

The package: `scenarios` (the scenarios, the lab's PINs, what it reports), `tokens` (one token made through
core.session), `opencryptoki` (the machine's soft token and its daemon), `lab` (the `Lab` class), `__main__`
(the child process). Everything public is importable from `core.lab`.

No PIN is ever written to a file, a log or an exception message.
"""

from __future__ import annotations

from core.lab.lab import Lab, training_ca_directory
from core.lab.opencryptoki import flock_held_here, flock_within
from core.lab.scenarios import (
    BY_ID,
    FACTORY_SO_PIN,
    LAB_PINS_WHERE,
    LAB_SO_PIN,
    LAB_USER_PIN,
    OCK_DEFAULT,
    OCK_LOCK,
    OCK_MODULE,
    OCK_SLOT,
    SCENARIOS,
    SIMULATED,
    SLOTS,
    Done,
    LabError,
    OckReading,
    Recipe,
    Release,
    Scenario,
    ScenarioStatus,
    Stack,
    State,
    default_root,
    scenario,
)
from core.policy import FACTORY_USER_PIN

__all__ = [
    "BY_ID",
    "FACTORY_SO_PIN",
    "FACTORY_USER_PIN",
    "LAB_PINS_WHERE",
    "LAB_SO_PIN",
    "LAB_USER_PIN",
    "OCK_DEFAULT",
    "OCK_LOCK",
    "OCK_MODULE",
    "OCK_SLOT",
    "SCENARIOS",
    "SIMULATED",
    "SLOTS",
    "Done",
    "Lab",
    "LabError",
    "OckReading",
    "Recipe",
    "Release",
    "Scenario",
    "ScenarioStatus",
    "Stack",
    "State",
    "default_root",
    "flock_held_here",
    "flock_within",
    "scenario",
    "training_ca_directory",
]
