"""tpm2-pkcs11 on a software TPM (tests/tpm2.py): re-enrolment's key pair, the dictionary-attack lockout whose
flags stay silent, and two tokens that share a serial.

Each test gets its own swtpm, private D-Bus, tpm2-abrmd and store (about 1.5 s to set up here), so a lockout or a
changed PIN never leaks into the next test. Results are checked with OpenSC's pkcs11-tool and tpm2-tools.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from core import actions, enrol, lockouts
from core.actions import Outcome, Role
from core.csr import KeyKind
from core.enrol import Stage
from core.modules import Module
from core.scan import Workstation
from core.snapshot import PinStatus, TokenSnapshot, token_id
from core.training_ca import TRAINING, Term
from tests import tpm2
from tests.conftest import used_pin
from tests.tokens import issue_certificate
from tui import render

REASON = tpm2.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"tpm2-pkcs11 stack unavailable: {REASON}")

ALPHA, BETA = tpm2.TOKENS
for _token in tpm2.TOKENS:
    used_pin(_token.user_pin)
    used_pin(_token.so_pin)
WRONG_PIN = used_pin("Wr0ngTpmPin")
NEW_PIN = used_pin("Tpm2NewPin7")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stopped stack with the two tokens made: each test starts its own TPM and store from a copy of it,
    which saves tpm2_ptool's seconds per test."""
    root = tmp_path_factory.mktemp("tpm2-template")
    with tpm2.running(root):
        pass
    return root


@pytest.fixture
def stack(tmp_path: Path, template: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tpm2.Tpm2Stack]:
    """The software TPM stack of this test, its environment seen by this process and its children."""
    with tpm2.running(tmp_path / "tpm2", template) as running:
        for key in ("DBUS_SESSION_BUS_ADDRESS", "TPM2TOOLS_TCTI", "TPM2_PKCS11_TCTI", "TPM2_PKCS11_STORE", "TSS2_LOG"):
            monkeypatch.setenv(key, running.env[key])
        try:
            yield running
        finally:
            lockouts.clear()


@pytest.fixture
def workstation(stack: tpm2.Tpm2Stack) -> Iterator[Workstation]:
    """The module loaded here; finalised again so the next test's C_Initialize reads its own store."""
    loaded = Workstation([stack.module])
    yield loaded
    loaded.close()


@pytest.fixture
def modules(workstation: Workstation) -> list[Module]:
    return workstation.modules


def scanned(workstation: Workstation, label: str) -> tuple[TokenSnapshot, list[str]]:
    """A fresh scan of the token with this label (as the console rescans): its snapshot and finding codes."""
    token = next(token for token in workstation.scan().tokens if token.snapshot.label == label)
    return token.snapshot, [finding.code for finding in token.findings]


def alpha_id(stack: tpm2.Tpm2Stack) -> str:
    """ALPHA's token_id: its serial is shared with BETA, so actions are told the token by its id."""
    return token_id(stack.module, stack.slots()[ALPHA.label], tpm2.SERIAL)


def run_cli(stack: tpm2.Tpm2Stack, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args, "--module", stack.module],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **stack.env},
        cwd=REPO,
        timeout=120,
        start_new_session=True,
        check=False,
    )


# --- the stack itself ---------------------------------------------------------------------------------------------


def test_two_tokens_share_a_serial_and_a_spare_slot_follows(stack: tpm2.Tpm2Stack) -> None:
    out = stack.tool("pkcs11-tool", "--module", stack.module, "-L").stdout
    assert out.count(f"serial num         : {tpm2.SERIAL}") == 2, out
    assert stack.slots().keys() == {ALPHA.label, BETA.label}
    assert "uninitialized" in out  # tpm2-pkcs11's spare "create a token here" slot
    assert stack.user_pin_works(ALPHA.label, ALPHA.user_pin)
    assert not stack.user_pin_works(BETA.label, ALPHA.user_pin)
    assert stack.setup_seconds > 0


def test_the_stack_is_stopped_when_a_test_fails(tmp_path: Path, template: Path) -> None:
    with pytest.raises(RuntimeError, match="a failing test"), tpm2.running(tmp_path / "t", template) as running:
        started = list(running.processes)
        assert len(started) == 3 and all(process.poll() is None for process in started)
        raise RuntimeError("a failing test")
    assert all(process.poll() is not None for process in started)


# --- item 12: re-enrolment's key pair ----------------------------------------------------------------------------


def private_key_block(stack: tpm2.Tpm2Stack, label: str, pin: str, cka_id: str) -> str:
    out = stack.pkcs11_tool(label, "--login", "--pin", pin, "--list-objects", "--type", "privkey").stdout
    return next(part for part in out.split("Private Key Object") if cka_id in part)


@pytest.mark.parametrize("kind", [KeyKind.RSA2048, KeyKind.EC_P256])
def test_key_pair_template_is_accepted(stack: tpm2.Tpm2Stack, modules: list[Module], kind: KeyKind) -> None:
    """python-pkcs11's CKA_ENCRYPT/CKA_DECRYPT=FALSE made tpm2-pkcs11 answer CKR_GENERAL_ERROR ("attr mismatch")."""
    generated = enrol.generate_key(modules, alpha_id(stack), pin=ALPHA.user_pin, kind=kind)
    assert generated.ok, generated.message
    new_id = generated.pending.cka_id
    block = private_key_block(stack, ALPHA.label, ALPHA.user_pin, new_id)
    assert re.search(r"Access:\s+sensitive, always sensitive, never extractable", block), block
    assert re.search(r"Usage:.*\bsign\b", block), block


def test_full_re_enrolment_with_the_training_ca(
    stack: tpm2.Tpm2Stack, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # The old profile, made with pkcs11-tool: a key pair (id 01) and a certificate for it. Before the module is
    # loaded here: tpm2-pkcs11 reads a token's objects from its store once, at C_Initialize.
    stack.pkcs11_tool(
        ALPHA.label, "--login", "--pin", ALPHA.user_pin, "--keypairgen", "--key-type", "rsa:2048", "--id", "01"
    )
    public = stack.read_object(ALPHA.label, "pubkey", "01")
    old = issue_certificate(serialization.load_der_public_key(public), common_name="Иванов Иван", days_valid=20)
    (tmp_path / "old.der").write_bytes(old.public_bytes(serialization.Encoding.DER))
    stack.pkcs11_tool(
        ALPHA.label,
        "--login",
        "--pin",
        ALPHA.user_pin,
        "--write-object",
        str(tmp_path / "old.der"),
        "--type",
        "cert",
        "--id",
        "01",
    )

    modules = request.getfixturevalue("modules")
    look = enrol.inspect(modules, alpha_id(stack), pin=ALPHA.user_pin)
    assert look.ok, look.message
    assert enrol.default_subject(look.contents) == "CN=Иванов Иван"
    generated = enrol.generate_key(modules, alpha_id(stack), pin=ALPHA.user_pin)
    assert generated.ok, generated.message
    new_id = generated.pending.cka_id
    made = enrol.make_request(
        modules, alpha_id(stack), pin=ALPHA.user_pin, subject=enrol.default_subject(look.contents)
    )
    assert made.ok, made.message
    issued = enrol.issue_with_training_ca(
        modules, alpha_id(stack), pin=ALPHA.user_pin, term_days=Term.ONE_YEAR, directory=tmp_path / "ca"
    )
    assert issued.ok, issued.message
    assert issued.pending.stage is Stage.CERTIFICATE
    removed = enrol.remove_old(modules, alpha_id(stack), pin=ALPHA.user_pin, confirmed=True)
    assert removed.ok, removed.message

    # pkcs11-tool's view: only the new pair and its certificate, on ALPHA; BETA untouched.
    listing = stack.pkcs11_tool(ALPHA.label, "--login", "--pin", ALPHA.user_pin, "--list-objects").stdout
    assert set(re.findall(r"^\s*ID:\s*([0-9a-f]+)", listing, flags=re.M)) == {new_id}, listing
    assert len(re.findall(r"^Certificate Object", listing, flags=re.M)) == 1, listing
    der = stack.read_object(ALPHA.label, "cert", new_id)
    cert = x509.load_der_x509_certificate(der)
    assert TRAINING in [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Иванов Иван (TRAINING)"
    block = private_key_block(stack, ALPHA.label, ALPHA.user_pin, new_id)
    assert re.search(r"Access:\s+sensitive, always sensitive, never extractable", block), block
    beta = stack.pkcs11_tool(BETA.label, "--login", "--pin", BETA.user_pin, "--list-objects").stdout
    assert "ID:" not in beta, beta


# --- item 6: locked while the flags are silent -------------------------------------------------------------------


def lock_out(stack: tpm2.Tpm2Stack, modules: list[Module]) -> list[Outcome]:
    """Wrong user PINs through change-pin until the TPM locks out; the outcomes, in order."""
    stack.lower_lockout_threshold(max_tries=2)
    outcomes = []
    for _ in range(6):
        result = actions.change_pin(
            modules, alpha_id(stack), role=Role.USER, current_pin=WRONG_PIN, new_pin=NEW_PIN, new_pin_again=NEW_PIN
        )
        outcomes.append(result.outcome)
        if result.outcome is not Outcome.WRONG_PIN:
            break
    return outcomes


def test_lockout_is_shown_as_temporary_and_clears(
    stack: tpm2.Tpm2Stack, workstation: Workstation, modules: list[Module]
) -> None:
    outcomes = lock_out(stack, modules)
    assert outcomes[-1] is Outcome.PIN_LOCKED and set(outcomes[:-1]) == {Outcome.WRONG_PIN}, outcomes
    assert stack.in_lockout()

    # The right PIN now: locked, explained as the TPM's temporary protection, never "new token needed".
    right = actions.change_pin(
        modules, alpha_id(stack), role=Role.USER, current_pin=ALPHA.user_pin, new_pin=NEW_PIN, new_pin_again=NEW_PIN
    )
    assert right.outcome is Outcome.PIN_LOCKED
    assert "protection against guessing" in right.message and "wears off" in right.message
    assert "new token" not in right.message.replace("no new token", "")
    assert "user-pin-locked" not in right.before.flags  # the flags really are silent
    assert right.pin_after.status is PinStatus.LOCKED_FOR_NOW
    assert "pin-locked-temporarily" in right.findings_after

    # The admin PIN is refused the same way: still temporary, still not "the customer needs a new token".
    unblocked = actions.unblock(
        modules, alpha_id(stack), admin_pin=ALPHA.so_pin, new_user_pin=NEW_PIN, new_user_pin_again=NEW_PIN
    )
    assert unblocked.outcome is Outcome.PIN_LOCKED
    assert "new token and a new registration" not in unblocked.message
    assert "protection against guessing" in unblocked.message

    # The command line says the same (another process: it learns it from its own login, not this memory).
    done = run_cli(
        stack,
        "change-pin",
        "--token",
        alpha_id(stack),
        "--pin-stdin",
        stdin=f"{ALPHA.user_pin}\n{NEW_PIN}\n{NEW_PIN}\n",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "protection against guessing" in done.stdout + done.stderr
    assert "new token and a new registration" not in done.stdout + done.stderr

    # The next scan's flags say nothing, yet the dashboard shows the PIN locked, with the temporary finding.
    snapshot, codes = scanned(workstation, ALPHA.label)
    assert snapshot.user_pin.status is PinStatus.LOCKED_FOR_NOW and snapshot.so_pin.status is PinStatus.LOCKED_FOR_NOW
    assert "pin-locked-temporarily" in codes
    assert "user-pin-locked" not in codes and "so-pin-locked" not in codes
    assert render.pin_line(snapshot).plain == "PIN: user locked for now · admin locked for now"  # the panel's line
    assert scanned(workstation, BETA.label)[0].user_pin.status is PinStatus.OK  # never tried there

    # The TPM's owner clears it: the right PIN works again, and the memory of the lockout goes with that login.
    stack.clear_lockout()
    assert not stack.in_lockout()
    changed = actions.change_pin(
        modules, alpha_id(stack), role=Role.USER, current_pin=ALPHA.user_pin, new_pin=NEW_PIN, new_pin_again=NEW_PIN
    )
    assert changed.ok, changed.message
    assert changed.pin_after.status is PinStatus.OK
    assert stack.user_pin_works(ALPHA.label, NEW_PIN)
    snapshot, codes = scanned(workstation, ALPHA.label)
    assert snapshot.user_pin.status is PinStatus.OK
    assert "pin-locked-temporarily" in codes  # the admin PIN was refused too and not tried since
    unblocked = actions.unblock(
        modules, alpha_id(stack), admin_pin=ALPHA.so_pin, new_user_pin=ALPHA.user_pin, new_user_pin_again=ALPHA.user_pin
    )
    assert unblocked.ok, unblocked.message
    snapshot, codes = scanned(workstation, ALPHA.label)
    assert snapshot.so_pin.status is PinStatus.OK and "pin-locked-temporarily" not in codes
    assert stack.user_pin_works(ALPHA.label, ALPHA.user_pin)


def test_the_console_shows_the_lockout_on_the_panel(stack: tpm2.Tpm2Stack, modules: list[Module]) -> None:
    """After a lockout met by an action of this process, the dashboard's next scans show ALPHA's PIN locked for
    now with the temporary finding, while the token's own flags say nothing; BETA was never tried."""
    from tests.tui_helpers import run, screen_text, wait_for
    from tui.app import HelpdeskApp

    assert lock_out(stack, modules)[-1] is Outcome.PIN_LOCKED

    async def scenario() -> None:
        app = HelpdeskApp([stack.module])
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: len(app.dashboard.panels) == 2, timeout=30)
            panels = {panel.token.snapshot.label: panel.token for panel in app.dashboard.panels}
            assert panels[ALPHA.label].snapshot.user_pin.status is PinStatus.LOCKED_FOR_NOW
            assert panels[ALPHA.label].findings[0].code == "pin-locked-temporarily"
            assert panels[BETA.label].snapshot.user_pin.status is PinStatus.OK
            text = screen_text(app)
            assert "user locked for now" in text and "protection against guessing" in text
            assert "new token and a new registration" not in text

    run(scenario())


# --- items 4 and 5: two tokens with one serial, and the spare slot ------------------------------------------------


def test_scan_json_lists_exactly_the_two_tokens(stack: tpm2.Tpm2Stack) -> None:
    done = run_cli(stack, "scan", "--json")
    report = json.loads(done.stdout)
    tokens = report["tokens"]
    assert [token["label"] for token in tokens] == [ALPHA.label, BETA.label], tokens  # no spare slot
    assert {token["serial"] for token in tokens} == {tpm2.SERIAL}
    ids = [token["token_id"] for token in tokens]
    assert len(set(ids)) == 2 and all(ids), ids
    assert done.returncode == 0, done.stdout + done.stderr  # two healthy tokens


def test_change_pin_by_a_shared_serial_is_refused_listing_both(stack: tpm2.Tpm2Stack) -> None:
    done = run_cli(
        stack,
        "change-pin",
        "--serial",
        tpm2.SERIAL,
        "--pin-stdin",
        stdin=f"{ALPHA.user_pin}\n{NEW_PIN}\n{NEW_PIN}\n",
    )
    assert done.returncode != 0
    ids = [token["token_id"] for token in json.loads(run_cli(stack, "scan", "--json").stdout)["tokens"]]
    for each in ids:
        assert each in done.stdout + done.stderr
    assert stack.user_pin_works(ALPHA.label, ALPHA.user_pin) and stack.user_pin_works(BETA.label, BETA.user_pin)


def test_change_pin_by_token_id_acts_on_that_token_only(stack: tpm2.Tpm2Stack) -> None:
    tokens = json.loads(run_cli(stack, "scan", "--json").stdout)["tokens"]
    beta_id = next(token["token_id"] for token in tokens if token["label"] == BETA.label)
    done = run_cli(
        stack, "change-pin", "--token", beta_id, "--pin-stdin", stdin=f"{BETA.user_pin}\n{NEW_PIN}\n{NEW_PIN}\n"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert stack.user_pin_works(BETA.label, NEW_PIN)
    assert stack.user_pin_works(ALPHA.label, ALPHA.user_pin)  # the other token's PIN is unchanged
    assert not stack.user_pin_works(ALPHA.label, NEW_PIN)


def test_the_console_re_enrols_a_token_whose_serial_is_shared(stack: tpm2.Tpm2Stack) -> None:
    """The console asks the re-enrolment steps by ALPHA's token id (its serial is BETA's too) and keeps the state
    under it: the login of step 1 is ALPHA's, not refused as ambiguous; BETA is never touched."""
    from textual.widgets import Input

    from tests.tui_helpers import run, wait_for
    from tui.app import HelpdeskApp
    from tui.screens.re_enrol import ReEnrolScreen

    async def scenario() -> None:
        app = HelpdeskApp([stack.module])
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: len(app.dashboard.panels) == 2, timeout=30)
            next(panel for panel in app.dashboard.panels if panel.token.snapshot.label == ALPHA.label).focus()
            await pilot.press("e")
            await wait_for(pilot, lambda: isinstance(app.screen, ReEnrolScreen), timeout=30)
            screen = app.screen
            assert isinstance(screen, ReEnrolScreen)
            assert screen.reference == alpha_id(stack) and screen.serial == tpm2.SERIAL
            screen.query_one("#pin", Input).value = ALPHA.user_pin
            screen.query_one("#pin", Input).focus()
            await pilot.press("enter")
            await wait_for(pilot, lambda: screen.last is not None, timeout=60)
            assert screen.last is not None and screen.last.ok, screen.status_text
            assert screen.logged_in and screen.contents is not None and screen.contents.label == ALPHA.label
            await pilot.press("escape")

    run(scenario())
    assert enrol.load_pending(tpm2.SERIAL) is None  # nothing kept under the serial both tokens have
