"""The state of a re-enrolment between its steps: one small JSON file per token, never a PIN; and its
reconciliation with what the token holds."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import platformdirs

from core.config import APP_NAME
from core.csr import (
    KeyKind,
)
from core.i18n import N_, Text, _
from core.snapshot import TokenSnapshot

ID_BYTES = 20  # as long as a SHA-1, what most middleware uses for CKA_ID


class Step(StrEnum):
    """The steps, as the audit's `reason` names them."""

    LOGIN = "login"
    KEYGEN = "keygen"
    CSR = "csr"
    IMPORT = "import"
    REMOVE_OLD = "remove-old"


class NextStep(StrEnum):
    """Where a re-enrolment goes on, of its five steps: the one answer for the console's screen, the CLI's hint
    and the texts that name the step to continue at."""

    LOGIN = "login"
    KEY = "key"
    REQUEST = "request"
    IMPORT = "import"
    REMOVE = "remove"

    @property
    def number(self) -> int:
        return list(NextStep).index(self) + 1


class Stage(StrEnum):
    """How far a pending re-enrolment got."""

    GENERATING = "generating"  # the key pair was asked for; whether the token made it is seen at the next login
    KEY = "key"  # step 2 done
    REQUEST = "request"  # step 3 done: the request is in the pending file
    CERTIFICATE = "certificate"  # step 4 done: the new pair is complete; removing the old one is still offered

    @property
    def next_step(self) -> NextStep:
        """The step to continue at."""
        return {
            Stage.GENERATING: NextStep.REQUEST,  # whether the pair was made is seen at the login
            Stage.KEY: NextStep.REQUEST,
            Stage.REQUEST: NextStep.IMPORT,
            Stage.CERTIFICATE: NextStep.REMOVE,
        }[self]


STAGE_TEXTS = {
    Stage.GENERATING: N_("the key pair was being generated"),
    Stage.KEY: N_("new key pair made, no request yet"),
    Stage.REQUEST: N_("request made, waiting for the certificate"),
    Stage.CERTIFICATE: N_("new certificate written; the old one is still on the token"),
}


# --- the pending state ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pending:
    """A re-enrolment under way on one token. Nothing secret: the request and the certificate are public."""

    serial: str
    cka_id: str  # hex, of the new key pair
    key_kind: KeyKind
    stage: Stage
    started: str  # ISO 8601, UTC
    updated: str
    subject: str = ""  # RFC 4514, once the request is made
    csr_pem: str = ""
    key_label: str = ""

    @property
    def started_text(self) -> str:
        with contextlib.suppress(ValueError):
            return f"{datetime.fromisoformat(self.started).astimezone():%Y-%m-%d %H:%M}"
        return self.started

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key_kind": str(self.key_kind), "stage": str(self.stage)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pending:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        known["key_kind"] = KeyKind(known["key_kind"])
        known["stage"] = Stage(known["stage"])
        return cls(**known)


def next_step(pending: Pending | None, *, logged_in: bool = True) -> NextStep:
    """The step a re-enrolment continues at: the login first (the console logs in once per screen), then a key pair
    when none is under way, else where the pending state says."""
    if not logged_in:
        return NextStep.LOGIN
    return NextStep.KEY if pending is None else pending.stage.next_step


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def token_reference(token: TokenSnapshot, connected: Iterable[TokenSnapshot]) -> str:
    """What a re-enrolment of `token` is asked by and its state kept under, across the days it may take: its serial,
    the same whichever reader or port it is plugged into; its token id where another connected token has the same
    serial (tpm2-pkcs11 gives every token 0000000000000000), as `re-enrol --token` names it."""
    shared = sum(1 for other in connected if other.serial == token.serial) > 1
    return token.token_id if shared else token.serial


def pending_dir() -> Path:
    return platformdirs.user_data_path(APP_NAME) / "enrolments"


def pending_path(serial: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", serial.strip()) or "_"
    if safe != serial:  # two odd serials must not share a file
        safe += "-" + hashlib.sha256(serial.encode()).hexdigest()[:8]
    return pending_dir() / f"{safe}.json"


def load_pending(serial: str) -> Pending | None:
    """The re-enrolment under way on this token, or None (also for a file that cannot be read)."""
    try:
        pending = Pending.from_dict(json.loads(pending_path(serial).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pending if pending.serial == serial else None


def save_pending(pending: Pending) -> None:
    path = pending_path(pending.serial)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(pending.to_dict(), out, ensure_ascii=False, indent=2)
            out.flush()
            os.fsync(out.fileno())  # the token changed already: the record of it must survive a crash
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def discard_pending(serial: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        pending_path(serial).unlink()


def finish(serial: str) -> None:
    """The new pair is in place and the old one is kept: the re-enrolment is over (nothing on the token changes)."""
    discard_pending(serial)


def describe_pending(pending: Pending) -> Text:
    """One line for a screen before the login: what was started and how far it got."""
    return Text(
        N_("A re-enrolment was started on {date} ({kind}): {stage}. Log in to continue at step {step}."),
        {
            "date": pending.started_text,
            "kind": pending.key_kind.label,
            "stage": _(STAGE_TEXTS[pending.stage]),
            "step": pending.stage.next_step.number,
        },
    )


def finished_text(pending: Pending) -> Text:
    """A re-enrolment whose new pair is complete is finished: it is never continued with another key pair."""
    return Text(
        N_(
            "The re-enrolment started on {date} is finished: its new certificate is on the token. Nothing new was "
            "made. Only the old certificate and key are left to remove, or to keep."
        ),
        {"date": pending.started_text},
    )


def reconcile(pending: Pending | None, contents: TokenSnapshot) -> tuple[Pending | None, Text | None]:
    """The pending state checked against the token as read after the login (private keys visible).

    The token is the truth: a file whose key is gone is dropped; a stage the token shows was passed is moved on.
    """
    if pending is None:
        return None, None
    has_key = any(key.cka_id == pending.cka_id for key in contents.keys)
    has_cert = any(cert.cka_id == pending.cka_id for cert in contents.certificates)
    if not has_key:
        discard_pending(pending.serial)
        if pending.stage is Stage.GENERATING:
            return None, Text(
                N_(
                    "The key generation started on {date} did not finish (the console was closed or the token "
                    "pulled out): nothing was left on the token. Start again."
                ),
                {"date": pending.started_text},
            )
        return None, Text(
            N_(
                "The re-enrolment started on {date} was dropped: its new key is no longer on the token (was it "
                "formatted?). Start again."
            ),
            {"date": pending.started_text},
        )
    stage = pending.stage
    if has_cert:
        stage = Stage.CERTIFICATE
    elif stage is Stage.GENERATING:
        stage = Stage.KEY
    elif stage is Stage.CERTIFICATE:
        stage = Stage.REQUEST if pending.csr_pem else Stage.KEY  # its certificate was removed meanwhile
    if stage is not pending.stage:
        pending = replace(pending, stage=stage, updated=now_text())
        save_pending(pending)
    return pending, Text(
        N_("Continuing the re-enrolment started on {date} at step {step}: {stage}."),
        {"date": pending.started_text, "step": stage.next_step.number, "stage": _(STAGE_TEXTS[stage])},
    )
