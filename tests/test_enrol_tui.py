"""The re-enrolment screen driven through Textual's Pilot on real SoftHSM2 tokens: the whole loop with the
training CA, the key generation's progress while the UI stays responsive, and resuming a pending re-enrolment."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from textual.app import App
from textual.widgets import Input

from core import enrol
from core.modules import Module
from core.scan import ScannedToken, Workstation
from tests.test_enrol import certificate_on_token, object_ids
from tests.tokens import SOFTHSM_MODULE, USER_PIN, SoftHSM
from tests.tui_helpers import run, wait_for
from tui.screens.re_enrol import ReEnrolScreen

SIZE = (100, 40)


class EnrolApp(App[None]):
    """Just the screen, pushed over an empty app: the console's own app is not needed to drive it."""

    def __init__(self, screen: ReEnrolScreen) -> None:
        super().__init__()
        self.enrol_screen = screen

    def on_mount(self) -> None:
        self.push_screen(self.enrol_screen)


def scanned(workstation: Workstation, serial: str) -> ScannedToken:
    return next(token for token in workstation.scan().tokens if token.snapshot.serial == serial)


def shown(screen: ReEnrolScreen, selector: str) -> bool:
    return bool(screen.query_one(selector).display)


async def type_into(pilot, screen: ReEnrolScreen, selector: str, text: str) -> None:
    field = screen.query_one(selector, Input)
    field.value = text
    field.focus()
    await pilot.pause()


async def click(pilot, screen: ReEnrolScreen, selector: str) -> None:
    screen.query_one(selector).focus()
    await pilot.press("enter")


def test_whole_loop_with_the_training_ca(softhsm: SoftHSM, tmp_path: Path) -> None:
    serial = softhsm.init_token("IVANOV")
    softhsm.profile(serial, "01", common_name="Иванов Иван")
    workstation = Workstation([SOFTHSM_MODULE])
    gate = threading.Event()
    gate.set()

    def modules() -> Sequence[Module]:
        gate.wait(10)  # the test holds a step here to see the screen while the token "works"
        return workstation.modules

    screen = ReEnrolScreen(scanned(workstation, serial), modules, training_ca=True, training_ca_dir=tmp_path / "ca")

    async def scenario() -> None:
        app = EnrolApp(screen)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.screen is screen)
            assert screen.phase == "login" and shown(screen, "#step-login") and not shown(screen, "#step-key")

            await type_into(pilot, screen, "#pin", "Wr0ngPin")
            await pilot.press("enter")
            await wait_for(pilot, lambda: screen.last is not None)
            assert "Wrong user PIN" in screen.status_text and screen.query_one("#pin", Input).value == ""

            await type_into(pilot, screen, "#pin", USER_PIN)
            await pilot.press("enter")
            await wait_for(pilot, lambda: screen.phase == "key")
            assert "private key" in str(screen.query_one("#enrol-token").render())

            # Key generation: held in its worker, the progress shows and the screen still answers keys.
            gate.clear()
            await click(pilot, screen, "#generate")
            await wait_for(pilot, lambda: shown(screen, "#keygen-box"))
            assert "Do not unplug the token" in str(screen.query_one("#keygen-text").render())
            await pilot.press("escape")
            await pilot.press("q")
            await pilot.pause()
            assert app.screen is screen and app.is_running
            assert any("Do not unplug" in str(n.message) for n in app._notifications)
            gate.set()
            await wait_for(pilot, lambda: screen.phase == "request")
            assert not shown(screen, "#keygen-box")
            assert screen.query_one("#subject", Input).value == "CN=Иванов Иван"

            await click(pilot, screen, "#make-request")
            await wait_for(pilot, lambda: screen.phase == "import", timeout=15)
            assert screen.csr_text().startswith("-----BEGIN CERTIFICATE REQUEST-----")
            target = tmp_path / "out" / "request.pem"
            await type_into(pilot, screen, "#csr-path", str(target))
            await pilot.press("enter")
            await wait_for(pilot, lambda: target.exists())
            assert "saved" in screen.status_text

            await click(pilot, screen, "#training")
            await wait_for(pilot, lambda: screen.phase == "remove", timeout=15)
            assert "Иванов Иван" in str(screen.query_one("#old-list").render())

            await click(pilot, screen, "#remove")
            await wait_for(pilot, lambda: shown(screen, "#remove-confirm"))
            assert object_ids(softhsm, serial, "cert") == {"01", screen.pending.cka_id}  # not before confirming
            await click(pilot, screen, "#remove-yes")
            await wait_for(pilot, lambda: screen.phase == "done", timeout=15)
            assert "complete" in screen.status_text

    try:
        run(scenario())
    finally:
        gate.set()
        workstation.close()
    check = subprocess.run(["openssl", "req", "-verify", "-in", str(tmp_path / "out" / "request.pem"), "-noout"])
    assert check.returncode == 0
    ids = object_ids(softhsm, serial, "cert")
    assert len(ids) == 1 and "01" not in ids
    assert object_ids(softhsm, serial, "privkey") == ids
    cert = certificate_on_token(softhsm, serial, next(iter(ids)))
    assert "(TRAINING)" in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert not enrol.pending_path(serial).exists()


def test_resume_at_the_import_and_keep_the_old_pair(softhsm: SoftHSM, tmp_path: Path) -> None:
    serial = softhsm.init_token("IVANOV")
    softhsm.profile(serial, "01", common_name="Иванов Иван")
    workstation = Workstation([SOFTHSM_MODULE])
    # An earlier session (another console, or the CLI) got to the request and was closed.
    assert enrol.generate_key(workstation.modules, serial, pin=USER_PIN).ok
    assert enrol.make_request(workstation.modules, serial, pin=USER_PIN, subject="CN=Иванов Иван").ok
    pending = enrol.load_pending(serial)
    request = x509.load_pem_x509_csr(pending.csr_pem.encode())
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(request.subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")]))
        .public_key(request.public_key())
        .serial_number(7)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .sign(ca_key, hashes.SHA256())
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    good = tmp_path / "issued.pem"
    good.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    screen = ReEnrolScreen(scanned(workstation, serial), lambda: workstation.modules)

    async def scenario() -> None:
        app = EnrolApp(screen)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.screen is screen)
            assert "Log in to continue at step 4" in screen.status_text
            await type_into(pilot, screen, "#pin", USER_PIN)
            await pilot.press("enter")
            await wait_for(pilot, lambda: screen.phase == "import")
            assert screen.csr_text() == pending.csr_pem
            assert not shown(screen, "#training-row")  # not offered outside the lab unless asked for

            await type_into(pilot, screen, "#cert-path", str(garbage))
            await pilot.press("enter")
            await wait_for(pilot, lambda: screen.last is not None and screen.last.step is enrol.Step.IMPORT)
            assert "No certificate could be read" in screen.status_text and screen.phase == "import"

            await type_into(pilot, screen, "#cert-path", str(good))
            await pilot.press("enter")
            await wait_for(pilot, lambda: screen.phase == "remove")
            await click(pilot, screen, "#keep")
            await wait_for(pilot, lambda: screen.phase == "done")
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is not screen)

    try:
        run(scenario())
    finally:
        workstation.close()
    assert object_ids(softhsm, serial, "cert") == {"01", pending.cka_id}
    assert certificate_on_token(softhsm, serial, pending.cka_id) == cert
    assert not enrol.pending_path(serial).exists()
    assert enrol.load_pending(serial) is None  # nothing left to resume
