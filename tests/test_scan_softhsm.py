"""Each finding SoftHSM2 can show, with the token really put in that state, read by a real scan."""

from __future__ import annotations

import json
import subprocess
import sys

from core.scan import ScannedToken, scan
from tests.tokens import SOFTHSM_MODULE, SoftHSM


def token(serial: str) -> ScannedToken:
    result = scan([SOFTHSM_MODULE])
    return next(t for t in result.tokens if t.snapshot.serial == serial)


def codes(serial: str) -> list[str]:
    return [finding.code for finding in token(serial).findings]


def test_healthy_token_has_no_error_or_warning(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("PETROV")
    softhsm.profile(serial, "01", days_valid=365)
    scanned = token(serial)
    assert scanned.healthy, [f.code for f in scanned.findings]
    snap = scanned.snapshot
    assert snap.label == "PETROV" and snap.initialised
    assert snap.user_pin.status == "ok" and snap.so_pin.status == "ok"
    assert snap.user_pin.tries_left is None  # SoftHSM2 has no counter: unknown, not invented
    (cert,) = snap.certificates
    assert cert.common_name == "Иванов Иван" and cert.has_key and cert.cka_id == "01"
    assert 363 <= cert.days_left <= 365
    assert cert.key_usage == ("digital_signature", "content_commitment")
    assert [(k.key_class, k.key_type, k.bits, k.has_certificate) for k in snap.keys] == [("public", "rsa", 2048, True)]


def test_blank_label_and_empty_profile(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("")
    assert codes(serial) == ["label-missing", "profile-empty"]
    assert token(serial).snapshot.display_label == "<no label>"


def test_key_without_certificate_is_unfinished_registration(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("SIDOROV")
    softhsm.generate_key(serial, "0a")
    assert codes(serial) == ["registration-unfinished"]
    assert token(serial).findings[0].action == "re-enrol"


def test_certificate_without_key_is_unfinished_registration(softhsm: SoftHSM) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.tokens import issue_certificate

    serial = softhsm.init_token("ORPHAN")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    softhsm.write_certificate(serial, issue_certificate(key.public_key(), common_name="X", days_valid=300), "02")
    finding = token(serial).findings[0]
    assert finding.code == "registration-unfinished"
    assert "certificate on the token without its key" in finding.explanation


def test_expired_expiring_and_not_yet_valid_certificates(softhsm: SoftHSM) -> None:
    expired = softhsm.init_token("EXPIRED")
    softhsm.profile(expired, "01", days_valid=30, starts_in_days=-40)
    expiring = softhsm.init_token("EXPIRING")
    softhsm.profile(expiring, "01", days_valid=36, starts_in_days=-30)
    future = softhsm.init_token("FUTURE")
    softhsm.profile(future, "01", days_valid=365, starts_in_days=10)
    assert codes(expired) == ["certificate-expired"]
    assert token(expired).findings[0].title.startswith("Certificate expired 10 days ago")
    assert codes(expiring) == ["certificate-expiring"]
    assert "expires in 6 days" in token(expiring).findings[0].title
    assert codes(future) == ["certificate-not-yet-valid"]


def test_wrong_pins_show_count_low_and_scan_changes_no_flag(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("COUNTLOW")
    softhsm.profile(serial)
    softhsm.fail_login(serial)
    softhsm.fail_login(serial, so=True)
    before = softhsm.token_flags(serial)
    assert "user PIN count low" in before and "SO PIN count low" in before
    assert codes(serial) == ["user-pin-count-low", "so-pin-count-low"]
    # The scan never logged in: a login (successful or not) would have changed these flags.
    assert softhsm.token_flags(serial) == before


def test_unreadable_certificate_is_a_finding_not_a_crash(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("BROKEN")
    softhsm.generate_key(serial, "01")
    softhsm.write_raw_certificate(serial, b"\x30\x03\x02\x01\x00", "01")
    assert codes(serial) == ["certificate-unreadable"]


def test_free_softhsm_slot_is_not_reported_as_a_token(softhsm: SoftHSM) -> None:
    softhsm.init_token("ONLY")
    result = scan([SOFTHSM_MODULE])
    assert [t.snapshot.label for t in result.tokens] == ["ONLY"]
    assert not any(f.code.startswith("so-pin") for t in result.tokens for f in t.findings)


def test_no_token_when_the_driver_sees_none(softhsm: SoftHSM) -> None:
    result = scan([SOFTHSM_MODULE])
    assert [f.code for f in result.findings] == ["no-token"]
    assert result.has_errors


def test_scan_json_command(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("")
    blocked = softhsm.init_token("JSON")
    softhsm.profile(blocked)
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "scan", "--json", "--module", SOFTHSM_MODULE],
        capture_output=True,
        text=True,
        env=softhsm.env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr  # warnings only
    document = json.loads(out.stdout)
    assert set(document) >= {"modules", "tokens", "findings"}
    assert document["modules"][0]["loaded"] and document["modules"][0]["driver"]
    by_serial = {t["serial"]: t for t in document["tokens"]}
    assert [f["code"] for f in by_serial[serial]["findings"]] == ["label-missing", "profile-empty"]
    assert set(by_serial[serial]["findings"][0]) == {"code", "severity", "title", "explanation", "action"}
    assert by_serial[blocked]["findings"] == []
    assert by_serial[blocked]["certificates"][0]["common_name"] == "Иванов Иван"


def test_scan_exit_status_is_one_on_errors(softhsm: SoftHSM) -> None:
    serial = softhsm.init_token("ERR")
    softhsm.generate_key(serial, "01")
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "scan", "--module", SOFTHSM_MODULE],
        capture_output=True,
        text=True,
        env=softhsm.env,
        timeout=60,
    )
    assert out.returncode == 1
    assert "Registration unfinished" in out.stdout and "[registration-unfinished]" in out.stdout


def test_token_pulled_out_between_scans_is_never_a_crash(softhsm: SoftHSM) -> None:
    import shutil

    from core.scan import Workstation

    keep = softhsm.init_token("STAYS")
    gone = softhsm.init_token("PULLED")
    softhsm.profile(gone)
    workstation = Workstation([SOFTHSM_MODULE])
    assert {t.snapshot.label for t in workstation.scan().tokens} == {"STAYS", "PULLED"}
    # SoftHSM2 has no unplug: taking its directory away is the nearest thing. Without re-initialising the
    # module still lists the slot; reading it must give a clear state, not an exception.
    # (SoftHSM2 names a token's directory after a UUID that ends with the serial.)
    (directory,) = [d for d in softhsm.tokens.iterdir() if d.name.replace("-", "").endswith(gone)]
    shutil.rmtree(directory)
    stale = workstation.scan()
    assert all(t.snapshot.label in ("STAYS", "PULLED") for t in stale.tokens)
    fresh = workstation.scan(refresh=True)
    assert [t.snapshot.serial for t in fresh.tokens] == [keep]


def test_closed_workstation_lets_go_and_a_new_one_starts_afresh(softhsm: SoftHSM) -> None:
    from core.scan import Workstation

    softhsm.init_token("FIRST")
    workstation = Workstation([SOFTHSM_MODULE])
    assert len(workstation.scan().tokens) == 1
    workstation.close()
    softhsm.init_token("SECOND")  # seen only by a module initialised after it was made
    assert {t.snapshot.label for t in Workstation([SOFTHSM_MODULE]).scan().tokens} == {"FIRST", "SECOND"}
