"""`scan --metrics FILE` on real SoftHSM2 tokens, read back with prometheus_client's own parser."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core import audit
from core.sinks import SINKS_ENV
from tests.servers import RSYSLOGD
from tests.tokens import SOFTHSM_MODULE, SoftHSM

REPO = Path(__file__).resolve().parent.parent


def scan_metrics(path: Path, *modules: str) -> subprocess.CompletedProcess[str]:
    module_args = [arg for module in modules for arg in ("--module", module)]
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", "scan", "--metrics", str(path), *module_args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=os.environ.copy(),
        timeout=120,
        check=False,
    )


def samples(path: Path) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_token_health_for_prometheus(softhsm: SoftHSM, tmp_path: Path) -> None:
    expiring = softhsm.init_token("IVANOV")
    softhsm.profile(expiring, "a1", days_valid=6)
    fresh = softhsm.init_token("")
    out = tmp_path / "textfile" / "kaztoken.prom"
    out.parent.mkdir()
    done = scan_metrics(out, SOFTHSM_MODULE)
    assert done.returncode in (0, 1), done.stderr
    assert os.listdir(out.parent) == ["kaztoken.prom"]  # written beside, renamed over: no temporary left
    metrics = samples(out)

    assert metrics["kaztoken_tokens"] == [({}, 2.0)]
    token_ids = {labels["serial"]: labels["token_id"] for labels, _value in metrics["kaztoken_token_findings"]}
    assert set(token_ids) == {expiring, fresh}
    findings = {
        (labels["serial"], labels["code"], labels["severity"]) for labels, _ in metrics["kaztoken_token_findings"]
    }
    assert (expiring, "certificate-expiring", "warning") in findings
    assert (fresh, "label-missing", "warning") in findings
    [(labels, days)] = metrics["kaztoken_certificate_days_left"]
    assert labels == {"token_id": token_ids[expiring], "serial": expiring, "cka_id": "a1"}
    assert 4 <= days <= 6
    locked = {(labels["serial"], labels["role"]): value for labels, value in metrics["kaztoken_pin_locked"]}
    assert locked[(expiring, "user")] == 0.0 and locked[(expiring, "admin")] == 0.0
    assert "kaztoken_pin_tries_left" not in metrics  # SoftHSM2 does not tell the tries: no made-up number
    [(_labels, taken)] = metrics["kaztoken_scan_timestamp_seconds"]
    assert taken > 1.7e9
    assert "kaztoken_audit_pending_records" not in metrics  # no sink configured


def test_driver_missing_and_audit_lag(tmp_path: Path, monkeypatch) -> None:
    spool = tmp_path / "audit.jsonl"
    monkeypatch.setenv(audit.AUDIT_ENV, str(spool))
    monkeypatch.setenv(SINKS_ENV, f"file,syslog+unix://{tmp_path}/nobody.sock")
    audit.append(audit.attempt("unblock", "42"), spool)
    out = tmp_path / "kaztoken.prom"
    done = scan_metrics(out, str(tmp_path / "libkaztoken-missing.so"))
    assert done.returncode == 1
    metrics = samples(out)
    assert ({"code": "driver-missing", "severity": "error"}, 1.0) in metrics["kaztoken_workstation_findings"]
    assert metrics["kaztoken_tokens"] == [({}, 0.0)]
    assert metrics["kaztoken_audit_pending_records"] == [({"sink": f"syslog+unix://{tmp_path}/nobody.sock"}, 1.0)]


def test_the_alert_rules_name_metrics_the_scan_writes(tmp_path: Path, monkeypatch) -> None:
    from core.metrics import registry
    from core.scan import scan

    monkeypatch.setenv(SINKS_ENV, f"syslog+unix://{tmp_path}/nobody.sock")  # for kaztoken_audit_pending_records
    from core.config import load_config

    written = {metric.name for metric in registry(scan([str(tmp_path / "none.so")]), load_config().config).collect()}
    rules = (REPO / "deploy" / "kaztoken-alerts.yml").read_text(encoding="utf-8")
    named = set(re.findall(r"\bkaztoken_[a-z_]+", rules))
    assert named and named <= written, named - written


@pytest.mark.skipif(not os.path.exists(RSYSLOGD), reason="rsyslog is not installed")
def test_the_rsyslog_snippet_is_valid_rsyslog(tmp_path: Path) -> None:
    """rsyslogd's own check of the snippet, included as Debian's rsyslog.conf would (imuxsock loaded)."""
    main = tmp_path / "rsyslog.conf"
    snippet = REPO / "deploy" / "rsyslog-kaztoken.conf"
    main.write_text(
        f'module(load="imuxsock" SysSock.Use="off")\nglobal(workDirectory="{tmp_path}")\ninclude(file="{snippet}")\n'
    )
    checked = subprocess.run([RSYSLOGD, "-N1", "-f", str(main)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr


def test_metrics_that_cannot_be_written_are_said(tmp_path: Path) -> None:
    done = scan_metrics(tmp_path / "no-such-dir" / "kaztoken.prom", str(tmp_path / "none.so"))
    assert done.returncode == 1  # driver-missing is an error: that status wins, as for --report
    assert "Could not write the metrics" in done.stderr
