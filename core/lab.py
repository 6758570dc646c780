"""The training lab: real tokens in the states a helpdesk meets, one per scenario, for a console to train on.

Every token scenario is a simulated KAZTOKEN (`core.simulator`: a PKCS#11 library over SoftHSM2 that counts PIN
tries and locks, tells the factory PINs apart, and has readers a token can be pulled out of), all at once, in a
simulator directory of the lab's own (`<root>/sim`, named to the library by KAZTOKEN_SIM_DIR). One reader per
scenario, always the same slot id. The one scenario the simulator does not show, a token that demands new PINs
(CKF_*_PIN_TO_BE_CHANGED), lives on openCryptoki's soft token where that is installed and its daemon runs, for
root; the lab is whole without it. "Driver missing" is not a token but a way of starting the console.

Tokens are built in this process through the simulator's library (python-pkcs11, plus `core.cryptoki` for what
it lacks); certificates come from the lab's training CA (`core.training_ca`). A pristine copy of each built token
(SoftHSM2's token directory and the reader's state file) is kept, so a reset is a file copy (milliseconds) with
the same serial: a running console sees the token change in place at its next poll, and sessions it had on the
old token end as if it had been pulled out. Unplugging and replugging set the reader's flag.

The library reads KAZTOKEN_SIM_DIR once, at C_Initialize. Building in-process therefore sets
`os.environ["KAZTOKEN_SIM_DIR"]` to the lab's directory for the rest of this process (a console started
afterwards in this process, and every subprocess, sees the lab's tokens) and re-initialises the library if it is
already loaded here; at the end the library is finalised, so the next user initialises it afresh. A process with
a console running (the trainer's menu) must not drive the shared library from a second thread: it passes
`isolated=True`, and builds then run in a child process (`python -m core.lab reset …`), while file work stays
in-process. openCryptoki's token is always built in a child process: see `Lab._rebuild`.

No PIN is ever written to a file, a log or an exception message.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import pkcs11
import platformdirs
from asn1crypto.core import Integer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pkcs11 import Attribute, CertificateType, KeyType, ObjectClass
from pkcs11.exceptions import PKCS11Error

from core import simulator
from core.ckr import CKR_PIN_INCORRECT, CKR_PIN_LOCKED
from core.config import APP_NAME
from core.cryptoki import CKU_SO, CKU_USER, Cryptoki, CryptokiError
from core.flags import TokenFlag
from core.i18n import N_, _
from core.simulator import ReaderState, Simulator, SimulatorError
from core.training_ca import TrainingCA

OCK_MODULE = "/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so"
OCK_SLOT = 3  # the software token in Debian's /etc/opencryptoki/opencryptoki.conf
PKCSSLOTD = "/usr/sbin/pkcsslotd"
_PKCSSLOTD_PIDFILE = Path("/run/pkcsslotd.pid")
_SWTOK = Path("/var/lib/opencryptoki/swtok")
_OCK_LOCKS = Path("/var/lock/opencryptoki")
_OCK_GROUP = "pkcs11"
# The lock the test suite holds while it uses the machine's one openCryptoki soft token: the lab takes it too,
# so a test run and a trainer never change that token at the same time.
OCK_LOCK = Path("/dev/shm/kaztoken-helpdesk-opencryptoki-tests.lock")

# The factory defaults from the bank's guide, and the PINs of the lab's personalised tokens (they meet the bank's
# rules, and openCryptoki's 8-character maximum). Shown to the trainer on screen; never written anywhere.
_FACTORY_USER_PIN = "12345678"
_FACTORY_SO_PIN = "87654321"
LAB_USER_PIN = "TrainKz7"
LAB_SO_PIN = "AdminKz9"
# The PINs are never shown on a screen or printed (a screenshot or a redirected listing would keep them):
# the trainer finds them in the README.
LAB_PINS_WHERE = N_(
    "The lab's PINs are in the README (Training lab): the personalised tokens have their own, «fresh», "
    "«default-pins» and the admin PIN of «must-change» the factory defaults from the guide."
)
_WRONG_PIN = "0000"  # within every stack's length range, so it is compared (and counted), not refused


_KEY_ID = b"\x01"
_TRIES = simulator.DEFAULT_TRIES

# A console's way of letting go of PKCS#11 libraries (by path) for the length of a `with` block.
Release = Callable[[Sequence[str]], AbstractContextManager[None]]


class LabError(Exception):
    """Something the lab could not do; the message says what and why (never a PIN)."""


class Stack(StrEnum):
    SIMULATOR = "simulator"  # the simulated KAZTOKEN (core.simulator)
    OPENCRYPTOKI = "opencryptoki"
    NONE = "none"  # not a token: a way of starting the console


@dataclass(frozen=True, slots=True)
class Recipe:
    """How a scenario's token is made, step by step."""

    initialise: bool = True  # False: left as from the factory, not initialised
    factory_pins: bool = False  # keep the factory default PINs instead of the lab's
    user_pin: bool = True  # set a user PIN at all (C_InitPIN)
    key: bool = False  # a key pair on the token
    certificate: tuple[int, int] | None = None  # (valid from, valid until) in days from now
    drop_key: bool = False  # remove the key pair once its certificate is written
    wrong_user_pins: int = 0  # wrong user logins at the end
    wrong_so_pins: int = 0


@dataclass(frozen=True, slots=True)
class Scenario:
    id: str
    title: str  # message id (N_)
    expected: tuple[str, ...]  # the finding codes a scan reports for it (the workstation's, for Stack.NONE)
    stack: Stack
    hint: str = ""  # message id: what the trainee should notice or do
    label: str = ""
    holder: str = ""  # the certificate's common name
    recipe: Recipe = field(default_factory=Recipe)
    fresh_for: timedelta | None = None  # a pristine copy older than this is rebuilt (dates move on)

    @property
    def token(self) -> bool:
        return self.stack is not Stack.NONE


_YEAR = 365
_MONTH = timedelta(days=30)
_CERTIFIED = {"key": True, "certificate": (-1, _YEAR - 1)}

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "fresh",
        N_("Fresh from the factory: «KAZTOKEN <no label> - ?»"),
        ("label-missing", "user-pin-default", "so-pin-default", "profile-empty"),
        Stack.SIMULATOR,
        N_("No name, no profile, factory PINs: ready for the customer's registration."),
        recipe=Recipe(factory_pins=True),
    ),
    Scenario(
        "empty-profile",
        N_("Initialised, but no profile"),
        ("profile-empty",),
        Stack.SIMULATOR,
        N_("Named and with PINs, but no key or certificate: «На данном токене профиль не найден, создать?»"),
        label="ZHUMABAEV",
    ),
    Scenario(
        "default-pins",
        N_("Factory default PINs still set"),
        ("user-pin-default", "so-pin-default"),
        Stack.SIMULATOR,
        N_(
            "A working profile, but the user and admin PINs are still the factory defaults: the token says so "
            "without a login. Change both."
        ),
        label="OMAROV",
        holder="Омаров Данияр",
        recipe=Recipe(factory_pins=True, **_CERTIFIED),  # type: ignore[arg-type]
        fresh_for=_MONTH,
    ),
    Scenario(
        "healthy",
        N_("Healthy: key and 1-year certificate"),
        (),
        Stack.SIMULATOR,
        N_("Nothing wrong: what a working customer token looks like."),
        label="AKHMETOVA",
        holder="Ахметова Айгерим",
        recipe=Recipe(**_CERTIFIED),  # type: ignore[arg-type]
        fresh_for=_MONTH,
    ),
    Scenario(
        "expiring",
        N_("Certificate expiring in a few days"),
        ("certificate-expiring",),
        Stack.SIMULATOR,
        N_("Valid for 5 more days: re-enrol before then."),
        label="BEKOV",
        holder="Беков Ерлан",
        recipe=Recipe(key=True, certificate=(5 - _YEAR, 5)),
        fresh_for=timedelta(days=1),
    ),
    Scenario(
        "expired",
        N_("Certificate expired"),
        ("certificate-expired",),
        Stack.SIMULATOR,
        N_("The 1-year certificate ended 20 days ago: Internet Banking refuses its signatures."),
        label="SERIKOVA",
        holder="Серикова Дана",
        recipe=Recipe(key=True, certificate=(-20 - _YEAR, -20)),
    ),
    Scenario(
        "not-yet-valid",
        N_("Certificate not valid yet"),
        ("certificate-not-yet-valid",),
        Stack.SIMULATOR,
        N_("Starts in 10 days: check the computer's clock and time zone first."),
        label="TULEGENOV",
        holder="Тулегенов Арман",
        recipe=Recipe(key=True, certificate=(10, 10 + _YEAR)),
        fresh_for=timedelta(days=5),
    ),
    Scenario(
        "unfinished",
        N_("Registration unfinished: key pair without certificate"),
        ("registration-unfinished",),
        Stack.SIMULATOR,
        N_("The connection dropped after key generation. Never format it: finish the registration."),
        label="SIDOROV",
        recipe=Recipe(key=True),
    ),
    Scenario(
        "key-missing",
        N_("Certificate whose key is missing"),
        ("registration-unfinished",),
        Stack.SIMULATOR,
        N_("The certificate is there but its key is gone: it cannot sign."),
        label="KASYMOVA",
        holder="Касымова Алия",
        recipe=Recipe(key=True, certificate=(-1, _YEAR - 1), drop_key=True),
        fresh_for=_MONTH,
    ),
    Scenario(
        "pin-count-low",
        N_("User PIN count low: 3 of 10 tries left"),
        ("user-pin-count-low",),
        Stack.SIMULATOR,
        N_("Seven wrong user PINs on record: make sure the customer knows the PIN before the next try."),
        label="PETROV",
        holder="Петров Пётр",
        recipe=Recipe(**_CERTIFIED, wrong_user_pins=_TRIES - 3),  # type: ignore[arg-type]
        fresh_for=_MONTH,
    ),
    Scenario(
        "final-try",
        N_("User PIN: the last try left"),
        ("user-pin-final-try",),
        Stack.SIMULATOR,
        N_("One more wrong user PIN locks it. Do not guess: unblock it with the admin PIN instead."),
        label="ISKAKOV",
        holder="Искаков Нурлан",
        recipe=Recipe(**_CERTIFIED, wrong_user_pins=_TRIES - 1),  # type: ignore[arg-type]
        fresh_for=_MONTH,
    ),
    Scenario(
        "user-pin-locked",
        N_("User PIN locked"),
        ("user-pin-locked",),
        Stack.SIMULATOR,
        N_("Ten wrong user PINs: the token refuses even the right one. Unblock it with the admin PIN."),
        label="NURLANOV",
        holder="Нурланов Бауыржан",
        recipe=Recipe(**_CERTIFIED, wrong_user_pins=_TRIES),  # type: ignore[arg-type]
        fresh_for=_MONTH,
    ),
    Scenario(
        "admin-pin-locked",
        N_("Admin PIN locked"),
        ("so-pin-locked",),
        Stack.SIMULATOR,
        N_("Ten wrong admin PINs: the user PIN can no longer be unblocked. It still signs while its PIN works."),
        label="ABENOVA",
        holder="Абенова Сауле",
        recipe=Recipe(**_CERTIFIED, wrong_so_pins=_TRIES),  # type: ignore[arg-type]
        fresh_for=_MONTH,
    ),
    Scenario(
        "not-initialised",
        N_("Not initialised at all"),
        ("token-not-initialised",),
        Stack.SIMULATOR,
        N_("No file system or security policy yet: format, then personalise."),
        recipe=Recipe(initialise=False, user_pin=False),
    ),
    Scenario(
        "must-change",
        N_("Factory PINs that must be changed"),
        ("user-pin-not-initialised", "so-pin-to-be-changed", "profile-empty"),
        Stack.OPENCRYPTOKI,
        N_("Just initialised: the token asks for a new admin PIN and has no user PIN yet. Personalise it."),
        label="YESSENOVA",
        recipe=Recipe(factory_pins=True, user_pin=False),
    ),
    Scenario(
        "driver-missing",
        N_("KAZTOKEN driver missing"),
        ("driver-missing",),
        Stack.NONE,
        N_(
            "The console is started with a driver path that does not exist: kaztoken-helpdesk lab --scenario "
            "driver-missing"
        ),
    ),
)

BY_ID: dict[str, Scenario] = {scenario.id: scenario for scenario in SCENARIOS}
SIMULATED: tuple[Scenario, ...] = tuple(item for item in SCENARIOS if item.stack is Stack.SIMULATOR)
# Each simulated scenario has its own reader, always the same slot id.
SLOTS: dict[str, int] = {item.id: number for number, item in enumerate(SIMULATED, 1)}
# The scenario the machine's openCryptoki soft token is put into by a first build, when it is free (factory state).
OCK_DEFAULT = "must-change"


def scenario(scenario_id: str) -> Scenario:
    try:
        return BY_ID[scenario_id]
    except KeyError:
        raise LabError(
            _("No such scenario: {id}. The scenarios are: {ids}.").format(id=scenario_id, ids=", ".join(BY_ID))
        ) from None


def default_root() -> Path:
    return platformdirs.user_data_path(APP_NAME) / "lab"


# --- what the lab reports ----------------------------------------------------------------------------------------


class State(StrEnum):
    PLUGGED = "plugged"  # its token is there, as a console sees it
    UNPLUGGED = "unplugged"
    NOT_BUILT = "not-built"
    HELD = "held"  # the machine's openCryptoki soft token is in this scenario
    UNAVAILABLE = "unavailable"
    MODE = "mode"  # not a token: a way of starting the console


@dataclass(frozen=True, slots=True)
class ScenarioStatus:
    scenario: Scenario
    state: State
    note: str = ""  # message id with {placeholders}
    params: dict[str, Any] = field(default_factory=dict)
    serial: str | None = None
    built_at: datetime | None = None

    @property
    def available(self) -> bool:
        return self.state is not State.UNAVAILABLE

    @property
    def text(self) -> str:
        if not self.note:
            return ""
        return _(self.note).format(**self.params) if self.params else _(self.note)


@dataclass(frozen=True, slots=True)
class Done:
    """What one build or reset step did, and how long it took."""

    scenario: str
    how: str  # "copied" (from the pristine copy), "built", "replugged", "kept", "nothing", "skipped"
    seconds: float
    serial: str | None = None
    note: str = ""  # why it was skipped (translated)


@dataclass(frozen=True, slots=True)
class OckReading:
    """The machine's openCryptoki soft token as this process sees it."""

    usable: bool
    reason: str = ""  # why it is not usable (translated)
    initialised: bool = False
    label: str = ""
    flags: int = 0

    @property
    def scenario(self) -> str | None:
        """The lab scenario it is in, judged from the token itself (so any lab directory can tell)."""
        if not self.usable:
            return None
        for candidate in SCENARIOS:
            if candidate.stack is Stack.OPENCRYPTOKI and candidate.label and candidate.label == self.label:
                return candidate.id
        return None


# --- the lab -----------------------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


class Lab:
    """The lab under `root`: `sim/` (the simulator's directory: SoftHSM2's token directory and the readers),
    `pristine/<scenario>/` (each built token: `reader.state` and SoftHSM2's directory under `token/`),
    `training-ca/`, and `lab.json` (when each scenario was built; no PINs)."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        opencryptoki: bool = True,
        ock_lock: Path | None = OCK_LOCK,
        ock_module: str = OCK_MODULE,
        keygen_seconds: float = 0,
    ) -> None:
        self.root = (root or default_root()).resolve()
        # Key generation on the lab's tokens as slow as the real token's (up to minutes), for the progress
        # screens; off by default.
        self.keygen_seconds = keygen_seconds
        self.use_opencryptoki = opencryptoki
        self.ock_lock = ock_lock
        self.ock_module = ock_module
        self.simulator = Simulator(self.root / "sim")
        self._ca: TrainingCA | None = None
        self._module: str | None = None

    # --- paths and environment ---

    @property
    def module(self) -> str:
        """The simulator's library, built first where it is missing or older than its source."""
        if self._module is None:
            try:
                self._module = str(simulator.library())
            except (SimulatorError, OSError, subprocess.SubprocessError) as error:
                raise LabError(_("The KAZTOKEN simulator is not available: {error}").format(error=error)) from error
        return self._module

    @property
    def pristine_dir(self) -> Path:
        return self.root / "pristine"

    @property
    def state_path(self) -> Path:
        return self.root / "lab.json"

    @property
    def missing_module(self) -> str:
        """A KAZTOKEN driver path that does not exist: the "driver missing" scenario."""
        return str(self.root / "no-driver" / "libkztpkcs11.so")

    @property
    def ca(self) -> TrainingCA:
        if self._ca is None:
            self._ca = TrainingCA.open(self.root / "training-ca")
        return self._ca

    def modules(self, mode: str | None = None) -> list[str]:
        """The PKCS#11 libraries a console on the lab uses: the simulator, plus openCryptoki where it is usable.
        `mode` "driver-missing" gives the path of a driver that is not there instead."""
        if mode == "driver-missing":
            return [self.missing_module]
        if mode is not None:
            raise LabError(_("{id} is not a way of starting the console.").format(id=mode))
        modules = [self.module]
        if self._ock_static_reason() is None:
            modules.append(self.ock_module)
        return modules

    def environment(self, mode: str | None = None) -> dict[str, str]:
        """The variables that make a scan or a console (another process) see the lab."""
        return {**self._simulator_environment(), "KAZTOKEN_HELPDESK_MODULE": ":".join(self.modules(mode))}

    def _simulator_environment(self) -> dict[str, str]:
        slow = {simulator.KEYGEN_DELAY_ENV: str(round(self.keygen_seconds * 1000))} if self.keygen_seconds > 0 else {}
        return {**self.simulator.environment(), **slow}

    def activate(self) -> None:
        """Point this process's simulator at the lab (read at its next C_Initialize), for good: see the module
        docstring."""
        os.environ.update(self._simulator_environment())

    def _prepare(self) -> None:
        self.simulator.prepare()
        self.pristine_dir.mkdir(parents=True, exist_ok=True)

    # --- the record ---

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {"simulator": {}}
        return data if isinstance(data, dict) and isinstance(data.get("simulator"), dict) else {"simulator": {}}

    def _save(self, data: dict[str, Any]) -> None:
        handle, temporary = tempfile.mkstemp(dir=self.root, prefix=".lab.json.")
        with os.fdopen(handle, "w") as out:
            json.dump(data, out, indent=2, sort_keys=True)
        os.replace(temporary, self.state_path)

    def _pristine(self, scenario_id: str) -> ReaderState | None:
        """The reader state the scenario's token was built with, None when it was not built."""
        try:
            return ReaderState.parse((self.pristine_dir / scenario_id / "reader.state").read_text(errors="replace"))
        except OSError:
            return None

    def serial(self, scenario_id: str) -> str | None:
        built = self._pristine(scenario_id)
        return built.serial if built else None

    def scenario_of_serial(self, serial: str) -> Scenario | None:
        for item in SIMULATED:
            if serial and self.serial(item.id) == serial:
                return item
        return None

    def _fresh(self, item: Scenario, data: dict[str, Any]) -> bool:
        entry = data["simulator"].get(item.id)
        if not isinstance(entry, dict) or self._pristine(item.id) is None:
            return False
        if item.fresh_for is None:
            return True
        built = _parse_time(entry.get("built_at"))
        return built is not None and _now() - built < item.fresh_for

    # --- status ---

    def status(self, *, probe: bool = True) -> list[ScenarioStatus]:
        """Every scenario with its state. `probe` reads openCryptoki's token in this process; a process with a
        console running passes False (the console reads that token itself)."""
        data = self._load()
        reading = self.read_opencryptoki() if probe else None
        statuses = []
        for item in SCENARIOS:
            if item.stack is Stack.SIMULATOR:
                statuses.append(self._simulator_status(item, data["simulator"].get(item.id)))
            elif item.stack is Stack.OPENCRYPTOKI:
                statuses.append(self._ock_status(item, reading, data.get("opencryptoki")))
            else:
                statuses.append(
                    ScenarioStatus(
                        item,
                        State.MODE,
                        N_("a way of starting the console: kaztoken-helpdesk lab --scenario {id}"),
                        {"id": item.id},
                    )
                )
        return statuses

    def _simulator_status(self, item: Scenario, entry: Any) -> ScenarioStatus:
        built = self._pristine(item.id)
        if not isinstance(entry, dict) or built is None:
            return ScenarioStatus(item, State.NOT_BUILT, N_("not built yet"))
        when = _parse_time(entry.get("built_at"))
        try:
            now = self.simulator.state(SLOTS[item.id])
        except SimulatorError:
            return ScenarioStatus(item, State.NOT_BUILT, N_("its token is gone: reset it"), serial=built.serial)
        if now.plugged:
            return ScenarioStatus(item, State.PLUGGED, N_("plugged in"), serial=now.serial, built_at=when)
        return ScenarioStatus(item, State.UNPLUGGED, N_("unplugged"), serial=now.serial, built_at=when)

    def _ock_status(self, item: Scenario, reading: OckReading | None, record: Any) -> ScenarioStatus:
        reason = self._ock_static_reason()
        if reason is None and reading is not None and not reading.usable:
            reason = reading.reason
        if reason is not None:
            return ScenarioStatus(item, State.UNAVAILABLE, reason)
        record = record if isinstance(record, dict) else {}
        built = _parse_time(record.get("built_at"))
        current = reading.scenario if reading is not None else record.get("scenario")
        cannot_build = self._ock_root_reason()
        if current == item.id:
            if cannot_build is not None:
                return ScenarioStatus(
                    item,
                    State.HELD,
                    N_("the machine's openCryptoki soft token is in this state; resetting it {reason}"),
                    {"reason": cannot_build},
                    built_at=built,
                )
            return ScenarioStatus(
                item, State.HELD, N_("the machine's openCryptoki soft token is in this state"), built_at=built
            )
        if cannot_build is not None:
            return ScenarioStatus(item, State.UNAVAILABLE, cannot_build)
        if current is not None:
            title = _(BY_ID[current].title) if current in BY_ID else current
            return ScenarioStatus(
                item,
                State.NOT_BUILT,
                N_("the machine's one openCryptoki soft token now holds «{current}»: resetting to this replaces it"),
                {"current": title},
            )
        return ScenarioStatus(
            item,
            State.NOT_BUILT,
            N_("the machine's one openCryptoki soft token holds no lab scenario: resetting to this replaces it"),
        )

    # --- build and reset ---

    def build(self, *, isolated: bool = False) -> list[Done]:
        """Make the lab ready: every simulated scenario's token built (or restored from its pristine copy when
        its reader is missing) and plugged in; scenarios whose dates moved on are rebuilt. Tokens the trainee
        changed are left as they are (reset them for a clean start); an unplugged one is plugged back in.
        openCryptoki's soft token is put into its scenario only when it is free (uninitialised) and usable."""
        self._prepare()
        data = self._load()
        done: list[Done] = []
        stale: list[Scenario] = []
        for item in SIMULATED:
            if not self._fresh(item, data):
                stale.append(item)
                continue
            started = time.perf_counter()
            slot = SLOTS[item.id]
            try:
                state = self.simulator.state(slot)
            except SimulatorError:
                self._restore(item)
                done.append(Done(item.id, "copied", time.perf_counter() - started, self.serial(item.id)))
                continue
            if state.plugged:
                done.append(Done(item.id, "kept", time.perf_counter() - started, state.serial))
            else:
                self.simulator.plug(slot)
                done.append(Done(item.id, "replugged", time.perf_counter() - started, state.serial))
        if stale:
            done += self._rebuild(stale, isolated=isolated)
        if self.use_opencryptoki and self._ock_root_reason() is None:
            # Only when it is free (uninitialised, as after a factory reset). The child process judges that (this
            # one must not load openCryptoki: see _rebuild); a token in use, or by a test run, is left alone, and
            # so is the rest of the lab if this fails.
            try:
                done += self._rebuild([BY_ID[OCK_DEFAULT]], isolated=isolated, wait=0, only_if_free=True)
            except LabError as error:
                done.append(Done(OCK_DEFAULT, "skipped", 0.0, note=str(error)))
        return done

    def reset(
        self, ids: Sequence[str] | None = None, *, isolated: bool = False, release: Release | None = None
    ) -> list[Done]:
        """Put scenarios' tokens back as built: all simulated ones (and the one openCryptoki's token holds) when
        `ids` is empty. A simulated token comes back from its pristine copy when that is fresh, with the same
        serial; otherwise it is built again.

        `isolated`: this process has a console running; PKCS#11 work goes to a child process. `release` is then
        how that console lets go of libraries for a moment: openCryptoki's daemon does not stop for a factory
        reset while any process still has its library initialised."""
        self._prepare()
        if ids:
            wanted = [scenario(scenario_id) for scenario_id in dict.fromkeys(ids)]
        else:
            wanted = list(SIMULATED)
            if self.use_opencryptoki and self._ock_static_reason() is None:
                record = self._load().get("opencryptoki")
                held = record.get("scenario") if isinstance(record, dict) else None
                if held in BY_ID and BY_ID[held].stack is Stack.OPENCRYPTOKI:
                    wanted.append(BY_ID[held])
        data = self._load()
        done: list[Done] = []
        rebuild: list[Scenario] = []
        for item in wanted:
            if item.stack is Stack.NONE:
                done.append(Done(item.id, "nothing", 0.0))
            elif item.stack is Stack.OPENCRYPTOKI or not self._fresh(item, data):
                rebuild.append(item)
            else:
                started = time.perf_counter()
                self._restore(item)
                done.append(Done(item.id, "copied", time.perf_counter() - started, self.serial(item.id)))
        if rebuild:
            done += self._rebuild(rebuild, isolated=isolated, release=release)
        return done

    def _rebuild(
        self,
        items: Sequence[Scenario],
        *,
        isolated: bool,
        release: Release | None = None,
        wait: float = 10,
        child: bool = False,
        only_if_free: bool = False,
    ) -> list[Done]:
        """Build these scenarios anew. Simulated ones in this process unless `isolated`; openCryptoki's always in
        a child process (unless this is that child). Its factory reset restarts pkcsslotd, which does not stop
        while a process has the library initialised, so this one must let go (`release`); and openCryptoki 3.8
        closes, at every C_Finalize after the first in a process, the file descriptor its API lock file had,
        whoever holds that number by then: a console started after this process had initialised and finalised
        the library lost its event loop's epoll descriptor that way. The child takes all of that with it."""
        for item in items:
            if item.stack is Stack.OPENCRYPTOKI:
                reason = self._ock_root_reason()
                if reason is not None:
                    raise LabError(_("{title}: {reason}").format(title=_(item.title), reason=reason))
        done: list[Done] = []
        simulated = [item for item in items if item.stack is Stack.SIMULATOR]
        if simulated:
            done += self._in_child(simulated) if isolated else self._build_simulated(simulated)
        for item in items:
            if item.stack is not Stack.OPENCRYPTOKI:
                continue
            if child:
                if only_if_free:
                    reading = self.read_opencryptoki()
                    if not reading.usable or reading.initialised:
                        raise _NotFree(reading.reason or _("the soft token is in use (initialised): left as it is"))
                done.append(self._build_ock(item, wait))
                continue
            # The lock is taken here, for the child, which is told so.
            with self._ock_held(wait), (release or _release_here)([self.ock_module]):
                done += self._in_child([item], ock_locked=True, only_if_free=only_if_free)
        return done

    def _in_child(
        self, items: Sequence[Scenario], *, ock_locked: bool = False, only_if_free: bool = False
    ) -> list[Done]:
        """Build in a child process (`python -m core.lab reset --rebuild …`): see `_rebuild`."""
        command = [sys.executable, "-m", "core.lab", "reset", "--dir", str(self.root), "--rebuild"]
        if only_if_free:
            command.append("--if-free")
        if not self.use_opencryptoki:
            command.append("--no-opencryptoki")
        if self.ock_lock is None or ock_locked:
            command.append("--no-ock-lock")
        command += [item.id for item in items]
        environment = {**os.environ, **self.simulator.environment()}
        started = time.perf_counter()
        try:
            result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120, check=False)
        except (OSError, subprocess.SubprocessError) as error:
            raise LabError(_("The lab's builder could not run: {error}").format(error=error)) from error
        seconds = time.perf_counter() - started
        if result.returncode == _EXIT_NOT_FREE:
            return [Done(item.id, "skipped", seconds, note=result.stderr.strip()) for item in items]
        if result.returncode != 0:
            raise LabError(result.stderr.strip() or _("The lab's builder failed."))
        return [Done(item.id, "built", seconds / len(items), self.serial(item.id)) for item in items]

    # --- plugging ---

    def _slot(self, scenario_id: str) -> int:
        item = scenario(scenario_id)
        if item.stack is not Stack.SIMULATOR:
            raise LabError(_("{title}: only the lab's simulated tokens can be unplugged.").format(title=_(item.title)))
        if self._pristine(scenario_id) is None:
            raise LabError(_("{title}: not built yet.").format(title=_(item.title)))
        return SLOTS[scenario_id]

    def _reader(self, scenario_id: str) -> ReaderState:
        try:
            return self.simulator.state(self._slot(scenario_id))
        except SimulatorError:
            raise LabError(_("{id}: its token is gone: reset it.").format(id=scenario_id)) from None

    def is_plugged(self, scenario_id: str) -> bool:
        return self._reader(scenario_id).plugged

    def unplug(self, scenario_id: str) -> None:
        """Pull the token out of its reader: programs' sessions on it end, the console's next poll loses it."""
        self._reader(scenario_id)
        self.simulator.unplug(self._slot(scenario_id))

    def replug(self, scenario_id: str) -> None:
        """Plug it back in, as it was when pulled out."""
        self._reader(scenario_id)
        self.simulator.plug(self._slot(scenario_id))

    def toggle_plug(self, scenario_id: str) -> bool:
        """Unplug a plugged token, replug an unplugged one; True when it is plugged in afterwards."""
        if self.is_plugged(scenario_id):
            self.unplug(scenario_id)
            return False
        self.replug(scenario_id)
        return True

    def _restore(self, item: Scenario) -> None:
        """The pristine copy back in its reader, plugged in: SoftHSM2's directory first, in two renames so a
        console's scan never meets half a token, then the reader's state (which ends old sessions)."""
        pristine = self.pristine_dir / item.id
        built = self._pristine(item.id)
        if built is None:
            raise LabError(_("{title}: not built yet.").format(title=_(item.title)))
        slot = SLOTS[item.id]
        with contextlib.suppress(SimulatorError):
            current = self.simulator.softhsm_dir(slot)
            if current is not None and not (pristine / "token" / current.name).is_dir():
                shutil.rmtree(current, ignore_errors=True)  # formatted since: a token of another serial
        for source in (pristine / "token").iterdir() if (pristine / "token").is_dir() else ():
            staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".restore-"))
            try:
                shutil.copytree(source, staging / source.name)
                target = self.simulator.tokens_dir / source.name
                if target.exists():
                    os.rename(target, staging / "old")
                os.rename(staging / source.name, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        if self.simulator.state_path(slot).exists():
            self.simulator.write(slot, replace(built, present=1))
        else:
            self.simulator.add_reader(slot, **{name: getattr(built, name) for name in built.__slots__})

    # --- the simulator, in this process ---

    @contextlib.contextmanager
    def _library(self) -> Iterator[tuple[Any, Cryptoki]]:
        """The simulator's library in this process, initialised on the lab's directory, finalised after."""
        module = self.module
        self.activate()
        loaded = pkcs11._loaded.get(module)
        try:
            if loaded is not None and loaded.initialized:
                loaded.finalize()  # initialised on another directory, or on an older view of this one
            lib = pkcs11.lib(module)
            raw = Cryptoki(module)
        except (PKCS11Error, OSError, CryptokiError) as error:
            raise LabError(
                _("The KAZTOKEN simulator ({path}) cannot be used: {error}").format(path=module, error=_describe(error))
            ) from error
        try:
            yield lib, raw
        finally:
            with contextlib.suppress(PKCS11Error):
                lib.finalize()

    def _build_simulated(self, items: Sequence[Scenario]) -> list[Done]:
        self._prepare()
        done = []
        # Key pairs are made beside the build, in worker processes forked before the library is loaded here (RSA
        # generation holds the interpreter, and on SoftHSM2 it was most of the lab's time); each token imports its
        # own. A key that the scenario drops is never made. The training CA is made meanwhile.
        wanted = [item.id for item in items if item.recipe.key]
        with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("fork")) as pool:
            pairs = {item_id: pool.submit(_rsa_ints) for item_id in wanted}
            if wanted:
                self.ca  # noqa: B018 (made now, while the workers work)
            # The old tokens go first, so that the library, initialised next, sees only what stays.
            for item in items:
                self.simulator.remove_reader(SLOTS[item.id])
                shutil.rmtree(self.pristine_dir / item.id, ignore_errors=True)
            with self._library() as (lib, raw):
                done += self._build_each(items, lib, raw, pairs)
        return done

    def _build_each(
        self, items: Sequence[Scenario], lib: Any, raw: Cryptoki, pairs: dict[str, Future[tuple[int, ...]]]
    ) -> list[Done]:
        """Each scenario's token made in its reader, and its pristine copy kept."""
        done = []
        for item in items:
            started = time.perf_counter()
            slot = SLOTS[item.id]
            self.simulator.add_reader(slot)
            if item.recipe.initialise:
                pair = _from_ints(pairs[item.id].result()) if item.id in pairs else None
                self._make_token(lib, raw, slot, item, pair)
            built = self.simulator.state(slot)
            pristine = self.pristine_dir / item.id
            (pristine / "token").mkdir(parents=True)
            directory = self.simulator.softhsm_dir(slot)
            if directory is not None:
                shutil.copytree(directory, pristine / "token" / directory.name)
            (pristine / "reader.state").write_text(replace(built, generation=0).dump())
            data = self._load()
            data["simulator"][item.id] = {"built_at": _now().isoformat()}
            self._save(data)
            done.append(Done(item.id, "built", time.perf_counter() - started, built.serial))
        return done

    # --- one token, any stack ---

    def _make_token(
        self, lib: Any, raw: Cryptoki, slot_id: int, item: Scenario, key: rsa.RSAPrivateNumbers | None = None
    ) -> str:
        """Initialise the token in `slot_id` and take it through the scenario's recipe; returns its serial."""
        recipe = item.recipe
        try:
            raw.init_token(slot_id, _FACTORY_SO_PIN, item.label)
            token = _token(lib, slot_id)
            so_pin = _FACTORY_SO_PIN
            if not recipe.factory_pins:
                with _logged_in(raw, token, CKU_SO, so_pin) as session:
                    session.set_pin(so_pin, LAB_SO_PIN)
                so_pin = LAB_SO_PIN
            user_pin = _FACTORY_USER_PIN if recipe.factory_pins else LAB_USER_PIN
            if recipe.user_pin:
                with _logged_in(raw, token, CKU_SO, so_pin) as session:
                    session.init_pin(user_pin)
            if recipe.key:
                with _logged_in(raw, token, CKU_USER, user_pin) as session:
                    self._profile(session, item, key)
            for _try in range(recipe.wrong_user_pins):
                _wrong_login(raw, token, CKU_USER)
            for _try in range(recipe.wrong_so_pins):
                _wrong_login(raw, token, CKU_SO)
            return raw.token_info(slot_id).serial
        except (PKCS11Error, CryptokiError) as error:
            raise LabError(
                _("Building «{title}» failed: {error}").format(title=_(item.title), error=_describe(error))
            ) from error

    def _profile(self, session: Any, item: Scenario, key: rsa.RSAPrivateNumbers | None = None) -> None:
        """A key pair (imported when one was made beside the build, else generated on the token) and, where the
        recipe says, its certificate from the training CA."""
        label = f"{item.label or 'KAZTOKEN'} signing key"
        if item.recipe.drop_key:
            # The certificate of a key that is gone: the key is made off the token and never written to it.
            public_key = (key or _rsa_numbers()).public_numbers.public_key()
        elif key is None:
            public, _private = session.generate_keypair(KeyType.RSA, 2048, id=_KEY_ID, label=label, store=True)
            modulus = int.from_bytes(public[Attribute.MODULUS], "big")
            exponent = int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big")
            public_key = rsa.RSAPublicNumbers(exponent, modulus).public_key()
        else:
            _import_pair(session, key, label)
            public_key = key.public_numbers.public_key()
        if item.recipe.certificate is None:
            return
        start, end = item.recipe.certificate
        now = _now()
        cert = self.ca.issue(
            public_key,
            item.holder or item.label,
            not_before=now + timedelta(days=start, minutes=-1),
            not_after=now + timedelta(days=end),
        )
        session.create_object(_certificate_template(cert, item))

    # --- openCryptoki's soft token ---

    def _ock_static_reason(self) -> str | None:
        """Why openCryptoki cannot be used here, from what can be seen without loading it."""
        if not self.use_opencryptoki:
            return _("openCryptoki is switched off for this lab")
        if not os.path.exists(self.ock_module):
            return _("openCryptoki is not installed (Debian package opencryptoki)")
        if not os.path.exists(PKCSSLOTD):
            return _("openCryptoki's slot daemon {path} is missing").format(path=PKCSSLOTD)
        if not _pkcsslotd_pids():
            return _("openCryptoki's slot daemon pkcsslotd is not running (start it as root, or run scripts/setup)")
        return None

    def _ock_root_reason(self) -> str | None:
        """Why this process cannot put openCryptoki's token into a scenario, or None."""
        reason = self._ock_static_reason()
        if reason is None and os.geteuid() != 0:
            reason = _("needs root: the soft token is first reset to its factory state, which restarts pkcsslotd")
        return reason

    def read_opencryptoki(self) -> OckReading:
        """The soft token's state, read in this process (which must not have a console driving it)."""
        reason = self._ock_static_reason()
        if reason is not None:
            return OckReading(False, reason)
        try:
            lib = pkcs11.lib(self.ock_module)
            if OCK_SLOT not in {int(slot.slot_id) for slot in lib.get_slots()}:
                return OckReading(False, _("openCryptoki has no soft token in slot {slot}").format(slot=OCK_SLOT))
            info = Cryptoki(self.ock_module).token_info(OCK_SLOT)
        except (PKCS11Error, OSError, CryptokiError) as error:
            return OckReading(False, _("openCryptoki does not answer: {error}").format(error=_describe(error)))
        return OckReading(True, "", bool(info.flags & TokenFlag.TOKEN_INITIALIZED), info.label, info.flags)

    @contextlib.contextmanager
    def _ock_held(self, wait: float = 10) -> Iterator[None]:
        """The machine's soft token for this lab alone while it changes it (unless this process holds it)."""
        if self.ock_lock is None or flock_held_here(self.ock_lock):
            yield
            return
        with self.ock_lock.open("a") as handle:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LabError(
                            _("openCryptoki's soft token is in use by a test run ({path}): try again later.").format(
                                path=self.ock_lock
                            )
                        ) from None
                    time.sleep(0.1)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _build_ock(self, item: Scenario, wait: float = 10) -> Done:
        """Factory reset, then the recipe: in the child process `_rebuild` starts for it."""
        started = time.perf_counter()
        with self._ock_held(wait):
            _ock_factory_reset(self.ock_module)
            try:
                lib = pkcs11.lib(self.ock_module)
                if item.recipe.initialise:
                    self._make_token(lib, Cryptoki(self.ock_module), OCK_SLOT, item)
            finally:
                _finalize(pkcs11.lib(self.ock_module))
        data = self._load()
        data["opencryptoki"] = {"scenario": item.id, "built_at": _now().isoformat()}
        self._save(data)
        return Done(item.id, "built", time.perf_counter() - started)


# --- PKCS#11 helpers ---------------------------------------------------------------------------------------------


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _token(lib: Any, slot_id: int) -> Any:
    for slot in lib.get_slots(token_present=True):
        if int(slot.slot_id) == slot_id:
            return slot.get_token()
    raise LabError(_("The token in slot {slot} vanished while it was built.").format(slot=slot_id))


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _rsa_numbers() -> rsa.RSAPrivateNumbers:
    return _rsa_key().private_numbers()


def _rsa_ints() -> tuple[int, ...]:
    """A new key in a worker process, handed back as plain numbers: neither a key nor its numbers object cross
    processes, and loading a key back from DER checks it again, which costs as much as making it."""
    numbers = _rsa_numbers()
    public = numbers.public_numbers
    return (numbers.p, numbers.q, numbers.d, numbers.dmp1, numbers.dmq1, numbers.iqmp, public.e, public.n)


def _from_ints(values: tuple[int, ...]) -> rsa.RSAPrivateNumbers:
    p, q, d, dmp1, dmq1, iqmp, e, n = values
    return rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, rsa.RSAPublicNumbers(e, n))


def _number(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def _import_pair(session: Any, private: rsa.RSAPrivateNumbers, label: str) -> tuple[Any, Any]:
    """An RSA key pair written to the token: the private half sensitive and not extractable, as a generated one."""
    public = private.public_numbers
    common = {Attribute.KEY_TYPE: KeyType.RSA, Attribute.TOKEN: True, Attribute.ID: _KEY_ID, Attribute.LABEL: label}
    public_object = session.create_object(
        {
            **common,
            Attribute.CLASS: ObjectClass.PUBLIC_KEY,
            Attribute.PRIVATE: False,
            Attribute.VERIFY: True,
            Attribute.MODULUS: _number(public.n),
            Attribute.PUBLIC_EXPONENT: _number(public.e),
        }
    )
    private_object = session.create_object(
        {
            **common,
            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.MODULUS: _number(public.n),
            Attribute.PUBLIC_EXPONENT: _number(public.e),
            Attribute.PRIVATE_EXPONENT: _number(private.d),
            Attribute.PRIME_1: _number(private.p),
            Attribute.PRIME_2: _number(private.q),
            Attribute.EXPONENT_1: _number(private.dmp1),
            Attribute.EXPONENT_2: _number(private.dmq1),
            Attribute.COEFFICIENT: _number(private.iqmp),
        }
    )
    return public_object, private_object


@contextlib.contextmanager
def _logged_in(raw: Cryptoki, token: Any, user_type: int, pin: str) -> Iterator[Any]:
    """A read-write session logged in as `user_type`, always logged out and closed (python-pkcs11's own login
    leaks its session when the PIN is refused)."""
    session = token.open(rw=True)
    try:
        raw.login(session.handle, user_type, pin)
        try:
            yield session
        finally:
            with contextlib.suppress(CryptokiError):
                raw.logout(session.handle)
    finally:
        with contextlib.suppress(PKCS11Error):
            session.close()


def _wrong_login(raw: Cryptoki, token: Any, user_type: int) -> None:
    """One wrong PIN, on a session of our own that is closed again."""
    session = token.open(rw=True)
    try:
        raw.login(session.handle, user_type, _WRONG_PIN)
    except CryptokiError as error:
        if error.rv not in (CKR_PIN_INCORRECT, CKR_PIN_LOCKED):
            raise
    else:
        raw.logout(session.handle)
        raise LabError(_("The token accepted a wrong PIN: no try was spent."))
    finally:
        with contextlib.suppress(PKCS11Error):
            session.close()


def _certificate_template(cert: x509.Certificate, item: Scenario) -> dict[Attribute, Any]:
    return {
        Attribute.CLASS: ObjectClass.CERTIFICATE,
        Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: False,
        Attribute.ID: _KEY_ID,
        Attribute.LABEL: f"{item.holder or item.label} (TRAINING)",
        Attribute.SUBJECT: cert.subject.public_bytes(),
        Attribute.ISSUER: cert.issuer.public_bytes(),
        Attribute.SERIAL_NUMBER: Integer(cert.serial_number).dump(),
        Attribute.VALUE: cert.public_bytes(serialization.Encoding.DER),
    }


@contextlib.contextmanager
def _release_here(paths: Sequence[str]) -> Iterator[None]:
    """This process lets go of these libraries (no console runs here: nothing else uses them meanwhile)."""
    for path in paths:
        loaded = pkcs11._loaded.get(path)
        if loaded is not None and loaded.initialized:
            _finalize(loaded)
    yield


def _finalize(lib: Any) -> None:
    """C_Finalize, whatever it answers (a library already finalised, a daemon gone)."""
    with contextlib.suppress(PKCS11Error):
        lib.finalize()


def flock_held_here(path: Path) -> bool:
    """Whether this process already holds an flock on `path` (a test fixture took it): a second flock from here
    would wait for this process itself. /proc/locks names the process that took each flock."""
    try:
        stat = path.stat()
        table = Path("/proc/locks").read_text()
    except OSError:
        return False
    where = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        # "12: FLOCK  ADVISORY  WRITE 4711 00:1a:123 0 EOF"; a waiter has "->" after the number.
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[4] == str(os.getpid()) and fields[5] == where:
            return True
    return False


# --- openCryptoki's daemon (root) --------------------------------------------------------------------------------


def _pkcsslotd_pids() -> set[int]:
    """Running pkcsslotd processes (zombies excluded), found through /proc without needing root."""
    pids: set[int] = set()
    with contextlib.suppress(OSError, ValueError):
        pids.add(int(_PKCSSLOTD_PIDFILE.read_text().split()[0]))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "pkcsslotd":
                    pids.add(int(entry.name))
    return {pid for pid in pids if _is_running_pkcsslotd(pid)}


def _is_running_pkcsslotd(pid: int) -> bool:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return comm == "pkcsslotd" and state != "Z"


def _same_root(pid: int) -> bool:
    """A pkcsslotd of a chroot serves other files: not ours to stop."""
    try:
        return os.path.samestat(os.stat(f"/proc/{pid}/root"), os.stat("/"))
    except OSError:
        return False


def _ock_factory_reset(module: str, timeout: float = 5) -> None:
    """The soft token back to its factory state (uninitialised), as after installing the package: stop
    pkcsslotd, remove the token's files and shared memory, start pkcsslotd again. Needs root."""
    loaded = pkcs11._loaded.get(module)
    if loaded is not None and loaded.initialized:
        _finalize(loaded)  # it maps the old token's shared memory until finalised
    targets = {pid for pid in _pkcsslotd_pids() if _same_root(pid)}
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while targets & _pkcsslotd_pids():
        if time.monotonic() > deadline:
            raise LabError(
                _(
                    "pkcsslotd did not stop within {seconds:.0f} s: another program (a console?) still uses "
                    "openCryptoki. Quit it and try again."
                ).format(seconds=timeout)
            )
        time.sleep(0.02)
    try:
        for name in ("NVTOK.DAT", "MK_SO", "MK_USER"):
            (_SWTOK / name).unlink(missing_ok=True)
        objects = _SWTOK / "TOK_OBJ"
        if objects.is_dir():
            for item in objects.iterdir():
                item.unlink()
        for segment in Path("/dev/shm").glob("*opencryptoki*swtok*"):
            segment.unlink(missing_ok=True)
        for directory in (_SWTOK, objects, _OCK_LOCKS, _OCK_LOCKS / "swtok"):
            directory.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(LookupError):
                shutil.chown(directory, group=_OCK_GROUP)
            directory.chmod(0o770)
    except OSError as error:
        raise LabError(_("openCryptoki's token files could not be reset: {error}").format(error=error)) from error
    with tempfile.TemporaryFile("w+") as errors:  # not a pipe: the daemon would keep it open
        started = subprocess.run(
            [PKCSSLOTD], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors, timeout=timeout
        )
        errors.seek(0)
        message = errors.read().strip()
    if started.returncode != 0:
        raise LabError(_("pkcsslotd did not start: {message}").format(message=message or started.returncode))
    deadline = time.monotonic() + timeout
    while True:
        try:
            lib = pkcs11.lib(module)
            if OCK_SLOT in {int(slot.slot_id) for slot in lib.get_slots()}:
                return
            _finalize(lib)
        except PKCS11Error:
            pass
        if time.monotonic() > deadline:
            raise LabError(_("pkcsslotd started but the soft token does not answer"))
        time.sleep(0.05)


# --- the child process the trainer menu runs builds in -------------------------------------------------------------


_EXIT_NOT_FREE = 3


class _NotFree(LabError):
    """`--if-free`, and openCryptoki's token is not free."""


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m core.lab reset --dir ROOT [--rebuild] SCENARIO…`: what `Lab.reset(isolated=True)` runs."""
    parser = argparse.ArgumentParser(prog="python -m core.lab")
    commands = parser.add_subparsers(dest="command", required=True)
    reset = commands.add_parser("reset")
    reset.add_argument("--dir", type=Path, required=True)
    reset.add_argument("--rebuild", action="store_true", help="build anew even where a pristine copy is fresh")
    reset.add_argument("--no-opencryptoki", action="store_true")
    reset.add_argument("--no-ock-lock", action="store_true")
    reset.add_argument("--if-free", action="store_true", help="openCryptoki's token only if it is uninitialised")
    reset.add_argument("scenarios", nargs="*")
    args = parser.parse_args(argv)
    lab = Lab(args.dir, opencryptoki=not args.no_opencryptoki, ock_lock=None if args.no_ock_lock else OCK_LOCK)
    try:
        if args.rebuild:
            lab._prepare()
            items = [scenario(scenario_id) for scenario_id in args.scenarios]
            lab._rebuild(items, isolated=False, child=True, only_if_free=args.if_free)
        else:
            lab.reset(args.scenarios)
    except _NotFree as error:
        print(error, file=sys.stderr)
        return _EXIT_NOT_FREE
    except LabError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
