"""The lab's scenarios (the token states a helpdesk meets, and how each token is made) and what the lab reports
about them. Its PINs are here: shown to the trainer through the README, never written anywhere."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import platformdirs

from core import simulator
from core.config import APP_NAME
from core.i18n import N_, _
from core.policy import FACTORY_ADMIN_PIN

OCK_MODULE = "/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so"
OCK_SLOT = 3  # the software token in Debian's /etc/opencryptoki/opencryptoki.conf
PKCSSLOTD = "/usr/sbin/pkcsslotd"
# The lock the test suite holds while it uses the machine's one openCryptoki soft token: the lab takes it too,
# so a test run and a trainer never change that token at the same time. /dev/shm rather than /run/lock: the
# fresh-machine check runs the suite in a chroot that bind-mounts /dev (and so shares openCryptoki's segment) but
# has a /run of its own.
OCK_LOCK = Path("/dev/shm/kaztoken-helpdesk-opencryptoki-tests.lock")

# The PINs of the lab's personalised tokens (they meet the bank's rules, and openCryptoki's 8-character maximum);
# the others keep the guide's factory defaults (core.policy). Never shown nor written anywhere: the README has them.
FACTORY_SO_PIN = FACTORY_ADMIN_PIN
LAB_USER_PIN = "TrainKz7"
LAB_SO_PIN = "AdminKz9"
# The PINs are never shown on a screen or printed (a screenshot or a redirected listing would keep them):
# the trainer finds them in the README.
LAB_PINS_WHERE = N_(
    "The lab's PINs are in the README (Training lab): the personalised tokens have their own, «fresh», "
    "«default-pins» and the admin PIN of «must-change» the factory defaults from the guide."
)
WRONG_PIN = "0000"  # within every stack's length range, so it is compared (and counted), not refused


KEY_ID = b"\x01"
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
_CERTIFIED = Recipe(key=True, certificate=(-1, _YEAR - 1))  # a key pair and its year-long certificate

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
        recipe=replace(_CERTIFIED, factory_pins=True),
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
        recipe=_CERTIFIED,
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
        recipe=replace(_CERTIFIED, wrong_user_pins=_TRIES - 3),
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
        recipe=replace(_CERTIFIED, wrong_user_pins=_TRIES - 1),
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
        recipe=replace(_CERTIFIED, wrong_user_pins=_TRIES),
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
        recipe=replace(_CERTIFIED, wrong_so_pins=_TRIES),
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


EXIT_NOT_FREE = 3  # the builder's exit status for NotFree


class NotFree(LabError):
    """`--if-free`, and openCryptoki's token is not free."""
