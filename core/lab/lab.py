"""The training lab itself (`Lab`): where it lives, what state each scenario is in, building, resetting and
plugging its tokens. See the package's docstring (core.lab) for how it works and why."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pkcs11.exceptions import PKCS11Error

from core import session as sessions
from core import simulator
from core.cryptoki import Cryptoki, CryptokiError
from core.i18n import N_, _
from core.lab import opencryptoki
from core.lab.scenarios import (
    BY_ID,
    EXIT_NOT_FREE,
    OCK_DEFAULT,
    OCK_LOCK,
    OCK_MODULE,
    OCK_SLOT,
    SCENARIOS,
    SIMULATED,
    SLOTS,
    Done,
    LabError,
    NotFree,
    OckReading,
    Release,
    Scenario,
    ScenarioStatus,
    Stack,
    State,
    default_root,
    scenario,
)
from core.lab.tokens import describe, from_ints, make_token, rsa_ints
from core.simulator import ReaderState, Simulator, SimulatorError
from core.training_ca import TrainingCA

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Library  # python-pkcs11's library class (core.session loads it)


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
    def ca_directory(self) -> Path:
        return self.root / "training-ca"

    @property
    def ca(self) -> TrainingCA:
        if self._ca is None:
            self._ca = TrainingCA.open(self.ca_directory)
        return self._ca

    def _ca_now(self) -> TrainingCA:
        return self.ca

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

    def prepare(self) -> None:
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
        built = parse_time(entry.get("built_at"))
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
        when = parse_time(entry.get("built_at"))
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
        built = parse_time(record.get("built_at"))
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
        self.prepare()
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
            done += self.rebuild(stale, isolated=isolated)
        if self.use_opencryptoki and self._ock_root_reason() is None:
            # Only when it is free (uninitialised, as after a factory reset). The child process judges that (this
            # one must not load openCryptoki: see rebuild); a token in use, or by a test run, is left alone, and
            # so is the rest of the lab if this fails.
            try:
                done += self.rebuild([BY_ID[OCK_DEFAULT]], isolated=isolated, wait=0, only_if_free=True)
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
        self.prepare()
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
            done += self.rebuild(rebuild, isolated=isolated, release=release)
        return done

    def rebuild(
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
                        raise NotFree(reading.reason or _("the soft token is in use (initialised): left as it is"))
                done.append(self._build_ock(item, wait))
                continue
            # The lock is taken here, for the child, which is told so.
            with self._ock_held(wait), (release or release_here)([self.ock_module]):
                done += self._in_child([item], ock_locked=True, only_if_free=only_if_free)
        return done

    def _in_child(
        self, items: Sequence[Scenario], *, ock_locked: bool = False, only_if_free: bool = False
    ) -> list[Done]:
        """Build in a child process (`python -m core.lab reset --rebuild …`): see `rebuild`."""
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
        if result.returncode == EXIT_NOT_FREE:
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
    def _library(self) -> Iterator[tuple[Library, Cryptoki]]:
        """The simulator's library in this process, initialised on the lab's directory, finalised after."""
        module = self.module
        self.activate()
        try:
            sessions.finalize_if_loaded(module)  # initialised on another directory, or on an older view of this one
            lib = sessions.load(module)
            raw = Cryptoki(module)
        except (PKCS11Error, OSError, CryptokiError) as error:
            raise LabError(
                _("The KAZTOKEN simulator ({path}) cannot be used: {error}").format(path=module, error=describe(error))
            ) from error
        try:
            yield lib, raw
        finally:
            sessions.finalize(lib)

    def _build_simulated(self, items: Sequence[Scenario]) -> list[Done]:
        self.prepare()
        done = []
        # Key pairs are made beside the build, in worker processes forked before the library is loaded here (RSA
        # generation holds the interpreter, and on SoftHSM2 it was most of the lab's time); each token imports its
        # own. A key that the scenario drops is never made. The training CA is made meanwhile.
        wanted = [item.id for item in items if item.recipe.key]
        with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("fork")) as pool:
            pairs = {item_id: pool.submit(rsa_ints) for item_id in wanted}
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
        self, items: Sequence[Scenario], lib: Library, raw: Cryptoki, pairs: dict[str, Future[tuple[int, ...]]]
    ) -> list[Done]:
        """Each scenario's token made in its reader, and its pristine copy kept."""
        done = []
        for item in items:
            started = time.perf_counter()
            slot = SLOTS[item.id]
            self.simulator.add_reader(slot)
            if item.recipe.initialise:
                pair = from_ints(pairs[item.id].result()) if item.id in pairs else None
                make_token(lib, raw, slot, item, self._ca_now, pair)
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

    # --- openCryptoki's soft token (core.lab.opencryptoki) ---

    def _ock_static_reason(self) -> str | None:
        """Why openCryptoki cannot be used here, from what can be seen without loading it."""
        return opencryptoki.static_reason(self.use_opencryptoki, self.ock_module)

    def _ock_root_reason(self) -> str | None:
        """Why this process cannot put openCryptoki's token into a scenario, or None."""
        return opencryptoki.root_reason(self.use_opencryptoki, self.ock_module)

    def read_opencryptoki(self) -> OckReading:
        """The soft token's state, read in this process (which must not have a console driving it)."""
        return opencryptoki.read(self.use_opencryptoki, self.ock_module)

    def _ock_held(self, wait: float = 10) -> contextlib.AbstractContextManager[None]:
        """The machine's soft token for this lab alone while it changes it (unless this process holds it)."""
        return opencryptoki.held(self.ock_lock, wait)

    def _build_ock(self, item: Scenario, wait: float = 10) -> Done:
        """Factory reset, then the recipe: in the child process `rebuild` starts for it."""
        started = time.perf_counter()
        with self._ock_held(wait):
            opencryptoki.factory_reset(self.ock_module)
            try:
                lib = sessions.load(self.ock_module)
                if item.recipe.initialise:
                    make_token(lib, Cryptoki(self.ock_module), OCK_SLOT, item, self._ca_now)
            finally:
                sessions.finalize_if_loaded(self.ock_module)
        data = self._load()
        data["opencryptoki"] = {"scenario": item.id, "built_at": _now().isoformat()}
        self._save(data)
        return Done(item.id, "built", time.perf_counter() - started)


def parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


@contextlib.contextmanager
def release_here(paths: Sequence[str]) -> Iterator[None]:
    """This process lets go of these libraries (no console runs here: nothing else uses them meanwhile)."""
    for path in paths:
        sessions.finalize_if_loaded(path)
    yield


def training_ca_directory(serial: str, root: Path | None = None) -> Path | None:
    """Where the training lab (at `root`, default `default_root()`) keeps its training CA, when the token with
    this serial is one of the lab's; None for any other token. For a front end choosing the training CA that
    re-enrolment (core.enrol) is given."""
    the_lab = Lab(root, opencryptoki=False)
    return the_lab.ca_directory if the_lab.scenario_of_serial(serial) is not None else None
