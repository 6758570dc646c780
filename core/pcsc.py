"""Smart-card readers and the smart-card service (PC/SC, pcscd on Linux): what a scan says about them.

A USB token is a smart card and its reader in one; libraries such as OpenSC, ykcs11 and the Rutoken family
(KAZTOKEN's) reach it through the smart-card service, and list each reader as a slot. So three common causes
of "my token does not work" look alike from a plain token list, and are told apart here:
  - the service is down: the library sees no reader at all (OpenSC answers no slot, ykcs11 CKR_DEVICE_ERROR)
    and the service's socket does not answer: `pcsc-not-running`;
  - a reader with nothing in it: `reader-empty` (only a problem while every reader is empty: a laptop's
    empty built-in reader beside a token is not);
  - a card is in the reader but C_GetTokenInfo fails (CKR_TOKEN_NOT_RECOGNIZED or alike): the library has no
    driver for it, or it is damaged: `token-not-recognised`.

Everything here but `pcscd_answers` is a pure function of what the scan read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from core.findings import Finding
from core.flags import SlotFlag, flag_name
from core.modules import ModuleReport, looks_like_driver
from core.remedies import Stack, stack_of
from core.snapshot import TokenSnapshot

# pcsc-lite's clients read this variable; the daemon's own socket is compiled in at this path.
SOCKET_ENV = "PCSCLITE_CSOCK_NAME"
DEFAULT_SOCKET = "/run/pcscd/pcscd.comm"

_REMOVABLE = flag_name(SlotFlag.REMOVABLE_DEVICE)


class ReaderState(StrEnum):
    TOKEN = "token"  # a token is in it and was read
    EMPTY = "empty"
    NOT_RECOGNISED = "not-recognised"  # something is in it that the library cannot read


@dataclass(frozen=True, slots=True)
class Reader:
    """One reader (a slot that takes removable tokens, or any slot without a readable token) and what is in it."""

    module_path: str
    slot_id: int
    description: str
    manufacturer: str
    flags: tuple[str, ...]
    state: ReaderState
    token_label: str = ""
    token_error: str | None = None  # the CKR name when something is in it that C_GetTokenInfo cannot read

    @property
    def name(self) -> str:
        return self.description.strip() or f"slot {self.slot_id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module_path,
            "slot_id": self.slot_id,
            "description": self.description,
            "manufacturer": self.manufacturer,
            "flags": list(self.flags),
            "token_present": self.state is not ReaderState.EMPTY,
            "token_error": self.token_error,
            "state": str(self.state),
            "token_label": self.token_label,
        }


def uses_pcsc(report: ModuleReport) -> bool:
    """Does this library reach its tokens through the smart-card service? OpenSC, ykcs11 and alike, and the
    KAZTOKEN/Rutoken family, whose USB tokens are CCID smart cards (core.remedies' one list of stacks)."""
    if looks_like_driver(report.path, report.description, report.manufacturer):
        return True
    return stack_of(report.path, report.manufacturer) is Stack.PCSC


def socket_path(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def pcscd_answers(path: str) -> bool:
    """Does the smart-card service accept a connection on its socket? (Under systemd, a connection also
    starts it on demand: that counts as running.) Asked only when a PC/SC library sees no slot: the socket
    module is imported here, not by every `scan`."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def in_reader(snapshot: TokenSnapshot) -> bool:
    return snapshot.in_reader


def reader_of(snapshot: TokenSnapshot) -> Reader:
    """The reader view of a slot's snapshot: a slot with a token error holds something unreadable."""
    if not snapshot.token_present:
        state = ReaderState.EMPTY
    elif snapshot.token_error:
        state = ReaderState.NOT_RECOGNISED
    else:
        state = ReaderState.TOKEN
    return Reader(
        module_path=snapshot.module_path,
        slot_id=snapshot.slot_id,
        description=snapshot.slot_description,
        manufacturer=snapshot.slot_manufacturer,
        flags=snapshot.slot_flags,
        state=state,
        token_label=snapshot.display_label if state is ReaderState.TOKEN else "",
        token_error=snapshot.token_error,
    )


def list_readers(tokens: Iterable[TokenSnapshot], readers: Iterable[TokenSnapshot]) -> list[Reader]:
    """Every reader, in slot order per module: the slots of tokens that sit in a reader (a removable slot),
    and every slot the scan found without a readable token."""
    slots = [snap for snap in tokens if in_reader(snap)] + list(readers)
    return [reader_of(snap) for snap in sorted(slots, key=lambda snap: (snap.module_path, snap.slot_id))]


def blind_pcsc_libraries(
    reports: Sequence[ModuleReport], tokens: Sequence[TokenSnapshot], readers: Sequence[TokenSnapshot]
) -> list[ModuleReport]:
    """PC/SC libraries that loaded but see no slot at all (or failed to list them): where the service may be
    down. Only then is its socket worth asking."""
    with_slots = {snap.module_path for snap in (*tokens, *readers)}
    return [report for report in reports if report.loaded and uses_pcsc(report) and report.path not in with_slots]


def diagnose_readers(
    reports: Sequence[ModuleReport],
    tokens: Sequence[TokenSnapshot],
    readers: Sequence[TokenSnapshot],
    *,
    pcscd_up: bool | None,
) -> list[Finding]:
    """Findings about readers and the smart-card service.

    `readers` are the slots without a readable token; `pcscd_up` is whether the service's socket answered
    (None: not asked, because no PC/SC library is without slots).
    """
    findings: list[Finding] = []
    blind = blind_pcsc_libraries(reports, tokens, readers)
    if blind and pcscd_up is False:
        findings.append(Finding.of("pcsc-not-running", path=", ".join(Path(r.path).name for r in blind)))
    held = [reader_of(snap) for snap in readers]
    # An empty reader is the problem only while nothing at all is in any reader.
    all_empty = not tokens and all(reader.state is ReaderState.EMPTY for reader in held)
    for reader in held:
        if reader.state is ReaderState.NOT_RECOGNISED:
            findings.append(
                Finding.of("token-not-recognised", name=reader.name, path=reader.module_path, error=reader.token_error)
            )
        elif all_empty:
            findings.append(Finding.of("reader-empty", name=reader.name, path=reader.module_path))
    return findings


def explained_by_readers(findings: Sequence[Finding], blind: Sequence[ModuleReport]) -> list[Finding]:
    """Drop what a reader finding says more precisely: the generic "no token plugged in", and "driver fails"
    for a library whose only trouble is that the smart-card service is down (ykcs11's CKR_DEVICE_ERROR)."""
    codes = {finding.code for finding in findings}
    drop_paths = {report.path for report in blind} if "pcsc-not-running" in codes else set()
    precise = bool(codes & {"pcsc-not-running", "reader-empty", "token-not-recognised"})
    return [
        finding
        for finding in findings
        if not (finding.code == "no-token" and precise)
        and not (finding.code == "driver-broken" and finding.params.get("path") in drop_paths)
    ]
