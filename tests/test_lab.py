"""The training lab on real tokens: each scenario, once built, is what `scan --json` reports for it; resets,
unplug and replug, the trainer's menu on a running console; openCryptoki's scenarios where that stack runs.

`pkcs11-tool` is the independent check where it adds something (the healthy token's certificate, openCryptoki's
flags). Every lab lives in a directory of its own test (or of this module, for the one whole lab).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from core import lab as lab_module
from core import simulator
from core.lab import BY_ID, LAB_SO_PIN, LAB_USER_PIN, SCENARIOS, Lab, LabError, Stack, State
from core.scan import Workstation
from core.training_ca import TRAINING, Term, TrainingCA, TrainingCAError, is_training_certificate, training_name
from tests import ock
from tests.tui_helpers import run, wait_for

REPO = Path(__file__).resolve().parents[1]
SIMULATED = [item.id for item in SCENARIOS if item.stack is Stack.SIMULATOR]
SIM_MODULE = str(simulator.library())
OCK_SCENARIOS = [item.id for item in SCENARIOS if item.stack is Stack.OPENCRYPTOKI]
_ock_reason = ock.unavailable_reason()
ALL_LAB_PINS = (LAB_USER_PIN, LAB_SO_PIN, lab_module.FACTORY_USER_PIN, lab_module.FACTORY_SO_PIN)


def scan_json(lab: Lab, *modules: str) -> dict[str, Any]:
    """`kaztoken-helpdesk scan --json` in a process of its own, on the lab's simulator directory."""
    command = [sys.executable, "-m", "tui.cli", "scan", "--json"]
    for module in modules or (lab.module,):
        command += ["--module", module]
    environment = {**os.environ, **lab.simulator.environment()}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO, env=environment)
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def codes_by_scenario(lab: Lab, document: dict[str, Any]) -> dict[str, list[str]]:
    found = {}
    for token in document["tokens"]:
        item = lab.scenario_of_serial(token["serial"])
        assert item is not None, f"a token the lab did not make: {token['label']!r} {token['serial']}"
        found[item.id] = [finding["code"] for finding in token["findings"]]
    return found


def pkcs11_tool(lab: Lab, label: str, *args: str) -> bytes:
    """OpenSC's pkcs11-tool on the lab token with this label: the independent check."""
    command = ["pkcs11-tool", "--module", lab.module, "--token-label", label, *args]
    environment = {**os.environ, **lab.simulator.environment()}
    return subprocess.run(command, capture_output=True, timeout=60, env=environment, check=True).stdout


def _finalize_simulator() -> None:
    """The simulator reads KAZTOKEN_SIM_DIR at C_Initialize: the next user of this process's library needs a fresh
    one."""
    loaded = pkcs11._loaded.get(SIM_MODULE)
    if loaded is not None:
        loaded.finalize()


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    """An empty lab of this test's own (no openCryptoki); build what the test needs with `reset(ids)`."""
    monkeypatch.setenv(simulator.DIR_ENV, str(tmp_path / "lab" / "sim"))  # restored after the test
    yield Lab(tmp_path / "lab", opencryptoki=False)
    _finalize_simulator()


@pytest.fixture(scope="module")
def whole_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, dict[str, Any]]]:
    """The whole simulated lab, built once for this module, and one `scan --json` of it."""
    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("whole") / "lab"
        patch.setenv(simulator.DIR_ENV, str(root / "sim"))
        built = Lab(root, opencryptoki=False)
        done = built.build()
        assert [step.scenario for step in done] == SIMULATED
        assert {step.how for step in done} == {"built"}
        yield built, scan_json(built)
        _finalize_simulator()


# --- each scenario, as `scan --json` reports it -----------------------------------------------------------------


@pytest.mark.parametrize("scenario_id", SIMULATED)
def test_each_simulated_scenario_shows_exactly_its_findings(
    whole_lab: tuple[Lab, dict[str, Any]], scenario_id: str
) -> None:
    built, document = whole_lab
    assert codes_by_scenario(built, document)[scenario_id] == list(BY_ID[scenario_id].expected)


def test_whole_lab_is_one_token_per_scenario_and_nothing_else(whole_lab: tuple[Lab, dict[str, Any]]) -> None:
    built, document = whole_lab
    assert sorted(codes_by_scenario(built, document)) == sorted(SIMULATED)
    assert document["findings"] == []  # the driver loaded and sees tokens: nothing about the workstation
    labels = {token["label"] for token in document["tokens"]}
    # «fresh» and «not-initialised» have none; the rest are distinct
    assert "" in labels and len(labels) == len(SIMULATED) - 1
    for token in document["tokens"]:
        for cert in token["certificates"]:
            assert cert["common_name"].endswith("(TRAINING)") and "O=TRAINING" in cert["issuer"]


def test_healthy_certificate_is_readable_by_pkcs11_tool(whole_lab: tuple[Lab, dict[str, Any]]) -> None:
    built, _ = whole_lab
    healthy = BY_ID["healthy"]
    cert = x509.load_der_x509_certificate(
        pkcs11_tool(built, healthy.label, "--read-object", "--type", "cert", "--id", "01")
    )
    ca = built.ca.certificate
    assert cert.issuer == ca.subject and is_training_certificate(cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"{healthy.holder} (TRAINING)"
    ca_key = ca.public_key()
    assert isinstance(ca_key, rsa.RSAPublicKey)
    ca_key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == Term.ONE_YEAR


def test_driver_missing_is_a_way_of_starting_the_console(whole_lab: tuple[Lab, dict[str, Any]]) -> None:
    built, _ = whole_lab
    document = scan_json(built, *built.modules("driver-missing"))
    assert document["tokens"] == []
    assert [finding["code"] for finding in document["findings"]] == list(BY_ID["driver-missing"].expected)
    (status,) = [status for status in built.status(probe=False) if status.scenario.id == "driver-missing"]
    assert status.state is State.MODE and "--scenario driver-missing" in status.text


def test_no_pin_in_any_file_the_lab_wrote(whole_lab: tuple[Lab, dict[str, Any]]) -> None:
    built, _ = whole_lab
    files = [path for path in built.root.rglob("*") if path.is_file()]
    assert any(path.name == "lab.json" for path in files) and any(path.name == "token.object" for path in files)
    for path in files:
        data = path.read_bytes()
        leaked = [index for index, pin in enumerate(ALL_LAB_PINS) if pin.encode() in data]
        assert not leaked, f"{path}: PIN no. {leaked}"  # which one, never the PIN itself


def test_second_build_keeps_everything(whole_lab: tuple[Lab, dict[str, Any]]) -> None:
    built, _ = whole_lab
    before = {item: built.serial(item) for item in SIMULATED}
    assert {step.how for step in built.build()} == {"kept"}
    assert {item: built.serial(item) for item in SIMULATED} == before


# --- reset, unplug, replug ----------------------------------------------------------------------------------------


def test_reset_restores_the_scenario_with_the_same_serial(lab: Lab) -> None:
    (done,) = lab.reset(["healthy"])
    assert done.how == "built"
    serial = done.serial
    # The trainee "breaks" it: the certificate goes (pkcs11-tool, logged in with the lab's user PIN).
    label = BY_ID["healthy"].label
    pkcs11_tool(lab, label, "--login", "--pin", LAB_USER_PIN, "--delete-object", "--type", "cert", "--id", "01")
    assert codes_by_scenario(lab, scan_json(lab)) == {"healthy": ["registration-unfinished"]}
    (done,) = lab.reset(["healthy"])
    assert (done.how, done.serial) == ("copied", serial)
    assert codes_by_scenario(lab, scan_json(lab)) == {"healthy": []}


def test_unplug_and_replug_as_a_console_sees_them(lab: Lab) -> None:
    lab.reset(["expired", "fresh"])
    workstation = Workstation([lab.module])  # what the console keeps, re-initialised every poll
    try:

        def seen() -> dict[str, list[str]]:
            result = workstation.scan(refresh=True)
            return {
                lab.scenario_of_serial(token.snapshot.serial).id: [finding.code for finding in token.findings]
                for token in result.tokens
            }

        assert seen() == {"expired": ["certificate-expired"], "fresh": list(BY_ID["fresh"].expected)}
        lab.unplug("expired")
        assert not lab.is_plugged("expired")
        assert seen() == {"fresh": list(BY_ID["fresh"].expected)}
        assert [status.state for status in lab.status(probe=False) if status.scenario.id == "expired"] == [
            State.UNPLUGGED
        ]
        assert lab.toggle_plug("expired") is True
        assert seen() == {"expired": ["certificate-expired"], "fresh": list(BY_ID["fresh"].expected)}
        lab.unplug("expired")
        (done,) = lab.reset(["expired"])  # a reset plugs it back in, as built
        assert done.how == "copied" and lab.is_plugged("expired")
        assert "expired" in seen()
    finally:
        workstation.close()
    with pytest.raises(LabError, match="only the lab's simulated tokens"):
        lab.unplug("must-change")


def test_stale_pristine_copy_is_built_again(lab: Lab) -> None:
    (first,) = lab.reset(["expiring"])
    data = json.loads(lab.state_path.read_text())
    data["simulator"]["expiring"]["built_at"] = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    lab.state_path.write_text(json.dumps(data))
    (again,) = lab.reset(["expiring"])
    assert again.how == "built" and again.serial != first.serial  # dates moved on: "5 days left" made anew
    assert codes_by_scenario(lab, scan_json(lab)) == {"expiring": ["certificate-expiring"]}


def test_isolated_reset_builds_in_a_child_process(lab: Lab) -> None:
    """What the trainer's menu does while a console drives the same library from its scan thread."""
    (done,) = lab.reset(["unfinished"], isolated=True)
    assert done.how == "built" and done.serial == lab.serial("unfinished")
    assert simulator.DIR_ENV in os.environ  # the fixture's; the child had its own
    assert pkcs11._loaded.get(SIM_MODULE) is None or not pkcs11._loaded[SIM_MODULE].initialized
    assert codes_by_scenario(lab, scan_json(lab)) == {"unfinished": ["registration-unfinished"]}
    (again,) = lab.reset(["unfinished"], isolated=True)  # fresh pristine copy: a file copy, no child
    assert again.how == "copied"


def test_two_labs_at_once_keep_to_their_own_tokens(tmp_path: Path) -> None:
    """Two labs built at the same time by two processes, each on its own simulator directory: no root, no
    daemon, nothing shared; a token locked in one is not locked in the other."""
    roots = [tmp_path / "one", tmp_path / "two"]
    builders = [
        subprocess.Popen(
            [sys.executable, "-m", "core.lab", "reset", "--dir", str(root), "--no-opencryptoki", *ids],
            cwd=REPO,
            env={**os.environ, simulator.DIR_ENV: str(root.resolve() / "sim")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for root, ids in zip(roots, (["user-pin-locked", "fresh"], ["healthy", "fresh"]), strict=True)
    ]
    for builder in builders:
        _out, errors = builder.communicate(timeout=120)
        assert builder.returncode == 0, errors
    one, two = (Lab(root, opencryptoki=False) for root in roots)
    assert codes_by_scenario(one, scan_json(one)) == {
        "user-pin-locked": ["user-pin-locked"],
        "fresh": list(BY_ID["fresh"].expected),
    }
    assert codes_by_scenario(two, scan_json(two)) == {"healthy": [], "fresh": list(BY_ID["fresh"].expected)}
    assert one.serial("fresh") != two.serial("fresh")


def test_unknown_scenario(lab: Lab) -> None:
    with pytest.raises(LabError, match="No such scenario: nope"):
        lab.reset(["nope"])


def test_opencryptoki_scenarios_say_why_they_are_unavailable(lab: Lab) -> None:
    statuses = {status.scenario.id: status for status in lab.status()}
    for scenario_id in OCK_SCENARIOS:
        assert statuses[scenario_id].state is State.UNAVAILABLE
        assert statuses[scenario_id].text  # the reason, never a fake on SoftHSM2
    assert statuses["healthy"].state is State.NOT_BUILT
    with pytest.raises(LabError, match="switched off"):
        lab.reset(["must-change"])


def test_opencryptoki_scenarios_need_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root: a factory reset (pkcsslotd restarted) is impossible, and the list says so instead of failing
    later; nothing of openCryptoki is loaded to find that out."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    lab = Lab(tmp_path / "lab")
    loaded_before = pkcs11._loaded.get(lab.ock_module)  # another test file may have loaded it: not this one
    statuses = {status.scenario.id: status for status in lab.status(probe=False)}
    missing = lab._ock_static_reason()  # not installed, or its daemon not running: that is said first
    for scenario_id in OCK_SCENARIOS:
        assert statuses[scenario_id].state is State.UNAVAILABLE
        assert statuses[scenario_id].text == (missing or statuses[scenario_id].text)
        if missing is None:
            assert "needs root" in statuses[scenario_id].text
    with pytest.raises(LabError):
        lab.reset(["must-change"])
    assert pkcs11._loaded.get(lab.ock_module) is loaded_before


# --- the command ---------------------------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    from tui import lab_command

    parser = argparse.ArgumentParser()
    lab_command.add_parser(parser.add_subparsers(dest="command"), [])
    args = parser.parse_args(["lab", *argv])
    args.module = []
    return args


def test_command_no_console_prints_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.config import load_config
    from tui import lab_command

    root = tmp_path / "cmd"
    monkeypatch.setenv(simulator.DIR_ENV, str(root / "sim"))
    try:
        args = _args("--dir", str(root), "--reset", "fresh", "--no-console", "--no-opencryptoki")
        assert lab_command.run(args, load_config()) == 0
    finally:
        _finalize_simulator()
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"export KAZTOKEN_SIM_DIR={root.resolve() / 'sim'}",
        f"export KAZTOKEN_HELPDESK_MODULE={SIM_MODULE}",
    ]
    assert "Lab ready in" in err and "1 built" in err

    assert lab_command.run(_args("--dir", str(root), "--list", "--no-opencryptoki"), load_config()) == 0
    out, _ = capsys.readouterr()
    for item in SCENARIOS:
        assert item.id in out
    assert "label-missing, user-pin-default, so-pin-default, profile-empty" in out and "switched off" in out

    assert lab_command.run(_args("--dir", str(root), "--reset", "nope"), load_config()) == 2
    args = _args("--dir", str(root))
    args.module = ["/x.so"]
    assert lab_command.run(args, load_config()) == 2
    assert "no such scenario: nope" in capsys.readouterr().err


def test_command_slow_key_generation_is_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.config import load_config
    from tui import lab_command

    root = tmp_path / "slow"
    monkeypatch.setenv(simulator.DIR_ENV, str(root / "sim"))
    monkeypatch.delenv(simulator.KEYGEN_DELAY_ENV, raising=False)
    args = _args("--dir", str(root), "--scenario", "driver-missing", "--no-console", "--keygen-seconds", "90")
    assert lab_command.run(args, load_config()) == 0
    assert f"export {simulator.KEYGEN_DELAY_ENV}=90000" in capsys.readouterr().out.splitlines()
    bad = _args("--dir", str(root), "--no-console", "--keygen-seconds", "-1")
    assert lab_command.run(bad, load_config()) == 2


# --- the trainer's menu on a running console -----------------------------------------------------------------------


def test_trainer_menu_unplugs_replugs_and_resets_a_token_the_console_shows(lab: Lab) -> None:
    from tui.app import HelpdeskApp
    from tui.screens.trainer import TrainerScreen

    lab.reset(["pin-count-low", "empty-profile"])
    lab.activate()
    serial = lab.serial("pin-count-low")

    async def scenario() -> None:
        app = HelpdeskApp([lab.module], poll_seconds=0.2)
        async with app.run_test(size=(100, 30)) as pilot:

            def serials() -> set[str]:
                return {token.snapshot.serial for token in app.result.tokens} if app.result else set()

            await wait_for(pilot, lambda: serial in serials())
            screen = TrainerScreen(lab)
            app.push_screen(screen)
            await wait_for(pilot, lambda: bool(screen.statuses))
            table = screen.query_one("DataTable")
            table.move_cursor(row=SIMULATED.index("pin-count-low"))
            await pilot.pause()
            assert screen.selected == "pin-count-low"
            await wait_for(pilot, lambda: "✔ user-pin-count-low" in str(table.get_cell("pin-count-low", "now")))

            await pilot.press("u")  # unplug: the console's panel goes
            await wait_for(pilot, lambda: serial not in serials() and not screen.busy)
            assert screen.statuses["pin-count-low"].state is State.UNPLUGGED
            await pilot.press("u")  # replug: it comes back, the same token
            await wait_for(pilot, lambda: serial in serials() and not screen.busy)

            await pilot.press("r")  # reset: from its pristine copy, same serial, still as built
            await wait_for(pilot, lambda: not screen.busy)
            assert any("reset (from its pristine copy" in str(n.message) for n in app._notifications)
            assert serial in serials()
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, TrainerScreen))
        app.release()

    run(scenario())


def test_console_says_lab_and_t_opens_the_trainer(lab: Lab) -> None:
    from tui.app import HelpdeskApp
    from tui.screens.trainer import TrainerScreen
    from tui.widgets import HeaderBar

    lab.reset(["fresh"])
    lab.activate()

    async def scenario() -> None:
        app = HelpdeskApp([lab.module], poll_seconds=0, lab=lab)  # type: ignore[call-arg]
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.result is not None)
            header = app.dashboard.query_one(HeaderBar)
            assert str(header.render()).lstrip().startswith("LAB ")
            await pilot.press("t")
            await wait_for(pilot, lambda: isinstance(app.screen, TrainerScreen))
            await pilot.press("t")
            await wait_for(pilot, lambda: not isinstance(app.screen, TrainerScreen))
        app.release()

        plain = HelpdeskApp([lab.module], poll_seconds=0)
        async with plain.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: plain.result is not None)
            await pilot.press("t")  # no trainer outside the lab
            await pilot.pause()
            assert not isinstance(plain.screen, TrainerScreen)
            assert "LAB" not in str(plain.dashboard.query_one(HeaderBar).render())
        plain.release()

    run(scenario())


def test_lab_subcommand_through_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "cli"
    environment = {**os.environ, simulator.DIR_ENV: "/nonexistent"}
    command = [sys.executable, "-m", "tui.cli", "lab", "--dir", str(root), "--reset", "fresh", "--no-console"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO, env=environment)
    assert result.returncode == 0, result.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in result.stdout.splitlines())
    assert exports["KAZTOKEN_SIM_DIR"] == str(root.resolve() / "sim")
    assert exports["KAZTOKEN_HELPDESK_MODULE"].split(":")[0] == SIM_MODULE
    scan = subprocess.run(
        [sys.executable, "-m", "tui.cli", "scan", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **exports, "KAZTOKEN_HELPDESK_MODULE": SIM_MODULE},
    )
    (token,) = json.loads(scan.stdout)["tokens"]
    assert [finding["code"] for finding in token["findings"]] == list(BY_ID["fresh"].expected)
    bad = subprocess.run(
        [sys.executable, "-m", "tui.cli", "lab", "--dir", str(root), "--reset", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert bad.returncode == 2


# --- the training CA ----------------------------------------------------------------------------------------------


def test_training_ca_is_made_once_and_marks_what_it_issues(tmp_path: Path) -> None:
    ca = TrainingCA.open(tmp_path / "ca")
    again = TrainingCA.open(tmp_path / "ca")
    assert again.certificate == ca.certificate and (tmp_path / "ca" / "ca-key.pem").stat().st_mode & 0o077 == 0
    key = ec.generate_private_key(ec.SECP256R1())
    start = datetime(2020, 1, 1, tzinfo=UTC)
    cert = ca.issue(key.public_key(), "Иванов Иван", not_before=start, not_after=start + timedelta(days=10))
    assert cert.subject == training_name("Иванов Иван") and is_training_certificate(cert)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == TRAINING
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (start, start + timedelta(days=10))
    three = ca.issue(key.public_key(), x509.Name([]), term_days=Term.THREE_YEARS)
    assert (three.not_valid_after_utc - three.not_valid_before_utc).days == 3 * 365
    with pytest.raises(TrainingCAError):
        ca.issue(key.public_key(), "X", not_before=start, not_after=start)


def test_training_ca_signs_a_certificate_request(tmp_path: Path) -> None:
    ca = TrainingCA.open(tmp_path / "ca")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "KZ"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ТОО Ромашка"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Петров Пётр"),
        ]
    )
    request = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    cert = ca.sign_request(request, term_days=Term.ONE_YEAR)
    assert [attribute.value for attribute in cert.subject] == ["KZ", "ТОО Ромашка", "Петров Пётр (TRAINING)", TRAINING]
    assert cert.public_key() == key.public_key()
    forged = x509.load_der_x509_csr(_break_signature(request))
    with pytest.raises(TrainingCAError, match="does not verify"):
        ca.sign_request(forged)


def _break_signature(request: x509.CertificateSigningRequest) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    der = bytearray(request.public_bytes(Encoding.DER))
    der[-1] ^= 0x01  # the last byte is the signature's
    return bytes(der)


# --- openCryptoki's soft token: the scenario the simulator does not show, on a third-party library ------------------


def in_child(script: str, *args: str) -> str:
    """Python in a process of its own. openCryptoki is never loaded into the test process: openCryptoki 3.8
    closes a stale descriptor number at every C_Finalize after the first in a process (see core.lab)."""
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def probed_states(lab: Lab) -> dict[str, str]:
    """`Lab.status()` with openCryptoki's token read, as `lab --list` does it (in its own process)."""
    script = (
        "import json, sys\nfrom pathlib import Path\nfrom core.lab import Lab\n"
        "print(json.dumps({s.scenario.id: str(s.state) for s in Lab(Path(sys.argv[1])).status()}))"
    )
    return json.loads(in_child(script, str(lab.root)))


@pytest.fixture(scope="module")
def ock_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The machine's soft token, held for these tests, left factory-reset afterwards (other test files rely on
    it). The lab's own lock is skipped: this process holds the test suite's."""
    if _ock_reason:
        pytest.skip(_ock_reason)
    exclusive = getattr(ock, "exclusive_here", ock.exclusive)  # nests inside another module's hold, where there is one
    with exclusive():
        try:
            yield Lab(tmp_path_factory.mktemp("ock") / "lab")
        finally:
            ock.factory_reset()


@pytest.mark.parametrize(
    ("scenario_id", "listed"),
    [("must-change", {"SO PIN to be changed", "user PIN to be changed"})],
)
def test_opencryptoki_scenario_shows_exactly_its_findings(ock_lab: Lab, scenario_id: str, listed: set[str]) -> None:
    (done,) = ock_lab.reset([scenario_id])
    assert done.how == "built"
    assert listed <= ock.listed().flags and ock.listed().initialised
    document = scan_json(ock_lab, ock.OCK_MODULE)
    (token,) = document["tokens"]
    assert [finding["code"] for finding in token["findings"]] == list(BY_ID[scenario_id].expected)
    states = probed_states(ock_lab)
    assert states[scenario_id] == State.HELD
    assert all(states[other] == State.NOT_BUILT for other in OCK_SCENARIOS if other != scenario_id)


CONSOLE_SCRIPT = """
import contextlib, sys
from pathlib import Path
import pkcs11
from core.lab import OCK_MODULE, Lab

library = pkcs11.lib(OCK_MODULE)  # as a console holds it
released = []

@contextlib.contextmanager
def release(paths):
    released.append(list(paths))
    library.finalize()
    try:
        yield
    finally:
        library.initialize()

lab = Lab(Path(sys.argv[1]), ock_lock=None)  # the test process holds the suite's lock for it
(done,) = lab.reset([sys.argv[2]], isolated=True, release=release)
library.reinitialize()  # the console's next poll
print(done.how, released == [[OCK_MODULE]], lab.read_opencryptoki().scenario)
"""


def test_opencryptoki_reset_from_a_console_process_releases_its_library(ock_lab: Lab) -> None:
    """The trainer's path, in a process standing for the console: the build runs in a child, and the console
    lets go of openCryptoki meanwhile, or pkcsslotd would not stop for the factory reset."""
    out = in_child(CONSOLE_SCRIPT, str(ock_lab.root), "must-change")
    assert out.split() == ["built", "True", "must-change"]
    assert "SO PIN to be changed" in ock.listed().flags
