"""Re-enrolment: a new key pair on the token, a PKCS#10 request it signs, the issued certificate written back,
and only then the old certificate and key removed.

The steps, each a function returning an `EnrolResult` and never raising for anything a user can cause:
  1. `inspect`            log in as the user; what is on the token (private keys too), which key types it makes;
  2. `generate_key`       the key pair, generated on the token (private half sensitive, never extractable);
  3. `make_request`       the PKCS#10 request (core.csr), kept in the pending state and shown for copying;
  4. `import_certificate` the CA's answer (PEM, DER, PKCS#7, a PEM bundle): the certificate for the new key,
                          currently valid, written as CKO_CERTIFICATE with the key's CKA_ID;
                          `issue_with_training_ca` does the same with the lab's training CA signing at once;
  5. `remove_old`         every other certificate and key pair, only when confirmed and the new pair is complete.
Each step runs in the frame of core.actions (operator lock, module lock for the whole step, snapshots before and
after, one audit line: action "re-enrol", reason the step) with its own login on a session it always closes.

Between steps the state lives in a small JSON file per token (`pending_path`): the new key's CKA_ID, key type,
subject, the request and the stage reached; never a PIN. An interrupted enrolment (console closed, token pulled)
shows in the next scan as `registration-unfinished` (a key without a certificate), and the next `inspect`
reconciles the file with the token and continues from the stage reached, or drops the file if the key is gone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import platformdirs
from asn1crypto.core import Integer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from pkcs11 import Attribute, CertificateType, MechanismFlag, ObjectClass
from pkcs11.exceptions import PKCS11Error

from core.actions import (
    Action,
    ActionResult,
    Outcome,
    Role,
    Text,
    _Context,
    _refuse_if_locked,
    _slot,
    _Stop,
    refuse_unfit_pin,
    run_action,
)
from core.certificates import CertificateInfo, parse_certificate
from core.config import APP_NAME
from core.cryptoki import CryptokiError
from core.csr import (
    KeyKind,
    SubjectError,
    build_request,
    key_templates,
    parse_subject,
    public_key_info,
    request_pem,
    same_public_key,
    supported_kinds,
    token_signer,
)
from core.i18n import N_, _
from core.modules import Module
from core.small_files import UnfitFile, read_small_file
from core.snapshot import TokenSnapshot, is_gone, read_snapshot

ID_BYTES = 20  # as long as a SHA-1, what most middleware uses for CKA_ID
MAX_CERTIFICATE_FILE = 1024 * 1024  # a CA's answer, chain included, is a few KiB


class Step(StrEnum):
    """The steps, as the audit's `reason` names them."""

    LOGIN = "login"
    KEYGEN = "keygen"
    CSR = "csr"
    IMPORT = "import"
    REMOVE_OLD = "remove-old"


class Stage(StrEnum):
    """How far a pending re-enrolment got."""

    GENERATING = "generating"  # the key pair was asked for; whether the token made it is seen at the next login
    KEY = "key"  # step 2 done
    REQUEST = "request"  # step 3 done: the request is in the pending file
    CERTIFICATE = "certificate"  # step 4 done: the new pair is complete; removing the old one is still offered

    @property
    def next_step(self) -> int:
        """The step (of 1–5) to continue at."""
        return {Stage.GENERATING: 3, Stage.KEY: 3, Stage.REQUEST: 4, Stage.CERTIFICATE: 5}[self]


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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
            "kind": pending.key_kind.title,
            "stage": _(STAGE_TEXTS[pending.stage]),
            "step": pending.stage.next_step,
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
        pending = replace(pending, stage=stage, updated=_now())
        save_pending(pending)
    return pending, Text(
        N_("Continuing the re-enrolment started on {date} at step {step}: {stage}."),
        {"date": pending.started_text, "step": stage.next_step, "stage": _(STAGE_TEXTS[stage])},
    )


# --- what the steps return --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnrolResult:
    """One step's outcome (the common `ActionResult`) and what the step produced."""

    step: Step
    result: ActionResult
    pending: Pending | None = None  # the re-enrolment's state after the step (None: none under way)
    contents: TokenSnapshot | None = None  # the token read while logged in: private keys visible
    key_kinds: tuple[KeyKind, ...] = ()  # what the token can generate (step 1)
    certificate: CertificateInfo | None = None  # the certificate written (step 4)
    removed: tuple[str, ...] = ()  # what step 5 removed, described
    notes: tuple[Text, ...] = ()  # e.g. that a pending re-enrolment is continued, or was dropped

    @property
    def ok(self) -> bool:
        return self.result.ok

    @property
    def outcome(self) -> Outcome:
        return self.result.outcome

    @property
    def field(self) -> str | None:
        return self.result.field

    @property
    def message(self) -> str:
        return self.result.message

    @property
    def warnings(self) -> tuple[Text, ...]:
        return self.result.warnings

    @property
    def csr_pem(self) -> str:
        return self.pending.csr_pem if self.pending else ""


@dataclass(slots=True)
class _Out:
    """What a step's body hands back beside the frame's result."""

    pending: Pending | None = None
    pending_known: bool = False  # the body read the pending state (else it is loaded after the step)
    contents: TokenSnapshot | None = None
    key_kinds: tuple[KeyKind, ...] = ()
    certificate: CertificateInfo | None = None
    removed: list[str] = field(default_factory=list)
    notes: list[Text] = field(default_factory=list)


class _Refusal(_Stop):
    """A stop with a stable code for the audit (`reason` = step:code)."""

    def __init__(self, code: str, text: Text, *, outcome: Outcome = Outcome.REFUSED, field: str | None = None) -> None:
        super().__init__(outcome, text, field=field)
        self.code = code


# --- the frame --------------------------------------------------------------------------------------------------


def _run_step(
    step: Step,
    modules: Sequence[Module],
    serial: str,
    body: Callable[[_Context], None],
    *,
    precheck: Callable[[], None] | None = None,
) -> ActionResult:
    """core.actions' frame, with the step as the audit's reason."""
    return run_action(Action.RE_ENROL, modules, serial, body, precheck=precheck, audit_role=Role.USER, step=str(step))


def _finish(step: Step, serial: str, result: ActionResult, out: _Out) -> EnrolResult:
    pending = out.pending if out.pending_known else load_pending(serial)
    return EnrolResult(
        step=step,
        result=result,
        pending=pending,
        contents=out.contents,
        key_kinds=out.key_kinds,
        certificate=out.certificate,
        removed=tuple(out.removed),
        notes=tuple(out.notes),
    )


@contextlib.contextmanager
def _user_session(ctx: _Context, pin: str) -> Iterator[Any]:
    """A python-pkcs11 read-write session logged in as the user, always logged out and closed.

    Opened without a PIN and logged in through core.cryptoki: python-pkcs11's own login leaks the session when
    the PIN is refused.
    """
    _refuse_if_locked(ctx, Role.USER)
    refuse_unfit_pin(ctx.before, Role.USER, pin, field="pin")
    ctx.role = Role.USER
    session = _slot(ctx.module, ctx.slot_id).get_token().open(rw=True)
    try:
        ctx.login(session.handle, Role.USER, pin, field="pin")
        try:
            yield session
        finally:
            with contextlib.suppress(CryptokiError):
                ctx.raw.logout(session.handle)
    finally:
        with contextlib.suppress(PKCS11Error):
            session.close()  # opened without a PIN, so close() does not log out again: C_CloseSession only


def _contents(ctx: _Context) -> TokenSnapshot:
    """The token read while the user is logged in: login state is per application, so private keys show."""
    snapshot = read_snapshot(ctx.module, _slot(ctx.module, ctx.slot_id))
    if snapshot.read_error:
        raise _Stop(
            Outcome.FAILED, Text(N_("The token's objects could not be read: {error}."), {"error": snapshot.read_error})
        )
    return snapshot


def _reconciled(ctx: _Context, serial: str, out: _Out, *, announce: bool = False) -> Pending | None:
    """The pending state, checked against the token. Its note is kept when the state was dropped, and on the
    login (`announce`), where "continuing at step N" is news."""
    out.contents = _contents(ctx)
    pending, note = reconcile(load_pending(serial), out.contents)
    out.pending, out.pending_known = pending, True
    if note is not None and (announce or pending is None):
        out.notes.append(note)
    return pending


def _save(pending: Pending) -> None:
    try:
        save_pending(pending)
    except OSError as error:
        raise _Refusal(
            "state-not-saved",
            Text(
                N_("The re-enrolment's state could not be saved to {path}: {error}."),
                {"path": str(pending_path(pending.serial)), "error": error.strerror or str(error)},
            ),
            outcome=Outcome.FAILED,
        ) from None


def _require(pending: Pending | None, *stages: Stage) -> Pending:
    if pending is None:
        raise _Refusal(
            "nothing-pending",
            Text(N_("No re-enrolment is under way on this token: generate a new key pair first (step 2).")),
        )
    if pending.stage not in stages:
        raise _Refusal(
            "wrong-stage",
            Text(
                N_("The re-enrolment on this token is at another step: {stage}. Continue it at step {step}."),
                {"stage": _(STAGE_TEXTS[pending.stage]), "step": pending.stage.next_step},
            ),
        )
    return pending


def _get_key(session: Any, object_class: ObjectClass, cka_id: str) -> Any:
    from pkcs11.exceptions import MultipleObjectsReturned, NoSuchKey

    try:
        return session.get_key(object_class=object_class, id=bytes.fromhex(cka_id))
    except (NoSuchKey, MultipleObjectsReturned):
        raise _Refusal(
            "key-missing",
            Text(
                N_("The new key (id {id}) is not complete on the token: start the re-enrolment again."), {"id": cka_id}
            ),
            outcome=Outcome.FAILED,
        ) from None


# --- step 1: log in and look ------------------------------------------------------------------------------------


def inspect(modules: Sequence[Module], serial: str, *, pin: str) -> EnrolResult:
    """Log in as the user; read what is on the token and which key types it can make; reconcile a pending
    re-enrolment with it."""
    out = _Out()

    def body(ctx: _Context) -> None:
        with _user_session(ctx, pin):
            _reconciled(ctx, serial, out, announce=True)
            out.key_kinds = _kinds(ctx)
        ctx.done.append(Text(N_("Logged in as the user.")))

    return _finish(Step.LOGIN, serial, _run_step(Step.LOGIN, modules, serial, body), out)


def _kinds(ctx: _Context) -> tuple[KeyKind, ...]:
    try:
        return supported_kinds(_slot(ctx.module, ctx.slot_id))
    except PKCS11Error:
        return (KeyKind.RSA2048,)  # a module that will not list its mechanisms: the bank's default, tried as is


# --- step 2: the key pair ---------------------------------------------------------------------------------------


def generate_key(modules: Sequence[Module], serial: str, *, pin: str, kind: KeyKind = KeyKind.RSA2048) -> EnrolResult:
    """Generate the new key pair on the token with a fresh CKA_ID. May take minutes on the real token; the
    module stays locked meanwhile (the console's scan waits)."""
    out = _Out()

    def body(ctx: _Context) -> None:
        with _user_session(ctx, pin) as session:
            pending = _reconciled(ctx, serial, out)
            if pending is not None and pending.stage is Stage.CERTIFICATE:
                raise _Refusal("finished", finished_text(pending))
            if pending is not None:
                raise _Refusal(
                    "already-pending",
                    Text(
                        N_("A re-enrolment is already under way on this token ({stage}): continue it at step {step}."),
                        {"stage": _(STAGE_TEXTS[pending.stage]), "step": pending.stage.next_step},
                    ),
                )
            kinds = _kinds(ctx)
            if kind not in kinds:
                raise _Refusal(
                    "key-type",
                    Text(
                        N_("This token cannot make {kind} keys. It can make: {kinds}."),
                        {"kind": kind.title, "kinds": ", ".join(k.title for k in kinds) or "-"},
                    ),
                    field="key_type",
                )
            assert out.contents is not None
            taken = {key.cka_id for key in out.contents.keys} | {cert.cka_id for cert in out.contents.certificates}
            cka_id = os.urandom(ID_BYTES).hex()
            while cka_id in taken:
                cka_id = os.urandom(ID_BYTES).hex()
            now = _now()
            label = f"KAZTOKEN key {now[:10]}"
            new = Pending(serial, cka_id, kind, Stage.GENERATING, started=now, updated=now, key_label=label)
            _save(new)  # first: a crash during the minutes of generation must leave a trace to reconcile
            public, private = key_templates(kind)
            try:
                session.generate_keypair(
                    kind.key_type,
                    kind.bits if kind is KeyKind.RSA2048 else None,
                    id=bytes.fromhex(cka_id),
                    label=label,
                    store=True,
                    capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                    public_template=public,
                    private_template=private,
                )
            except (PKCS11Error, CryptokiError) as error:
                if not is_gone(error):
                    discard_pending(serial)  # the token said no: it made nothing, there is nothing to resume
                raise
            new = replace(new, stage=Stage.KEY, updated=_now())
            _save(new)
            out.pending = new
            out.contents = _contents(ctx)  # the token as it is now, the new pair included
        ctx.done.append(
            Text(
                N_("A new {kind} key pair was generated on the token (id {id}). Next: the certificate request."),
                {"kind": kind.title, "id": cka_id},
            )
        )

    return _finish(Step.KEYGEN, serial, _run_step(Step.KEYGEN, modules, serial, body), out)


# --- step 3: the request ----------------------------------------------------------------------------------------


def default_subject(snapshot: TokenSnapshot | None, exclude_id: str | None = None) -> str:
    """The subject of the token's current certificate (the one with a key, valid longest), RFC 4514; or ""."""
    if snapshot is None:
        return ""
    candidates = [
        cert for cert in snapshot.certificates if not cert.error and cert.subject and cert.cka_id != exclude_id
    ]
    candidates.sort(key=lambda cert: (cert.has_key, cert.not_after or datetime.min.replace(tzinfo=UTC)))
    return candidates[-1].subject if candidates else ""


def make_request(modules: Sequence[Module], serial: str, *, pin: str, subject: str) -> EnrolResult:
    """The PKCS#10 request for the new key, signed on the token; kept in the pending state (`result.csr_pem`).
    Made again with another subject as often as wanted, until the certificate is written."""
    out = _Out()
    name: list[x509.Name] = []

    def precheck() -> None:
        try:
            name.append(parse_subject(subject))
        except SubjectError as error:
            raise _Refusal(
                "subject", Text(error.message, error.params), outcome=Outcome.POLICY, field="subject"
            ) from None

    def body(ctx: _Context) -> None:
        with _user_session(ctx, pin) as session:
            pending = _require(_reconciled(ctx, serial, out), Stage.KEY, Stage.REQUEST)
            private = _get_key(session, ObjectClass.PRIVATE_KEY, pending.cka_id)
            public = _get_key(session, ObjectClass.PUBLIC_KEY, pending.cka_id)
            try:
                mechanisms = set(_slot(ctx.module, ctx.slot_id).get_mechanisms())
            except PKCS11Error:
                mechanisms = set()
            try:
                request = build_request(name[0], public_key_info(public), token_signer(private, mechanisms))
            except ValueError as error:
                raise _Refusal(
                    "bad-signature",
                    Text(N_("The token's signature on the request does not verify: {error}."), {"error": str(error)}),
                    outcome=Outcome.FAILED,
                ) from None
            pending = replace(
                pending,
                stage=Stage.REQUEST,
                subject=request.subject.rfc4514_string(),
                csr_pem=request_pem(request),
                updated=_now(),
            )
            _save(pending)
            out.pending = pending
        ctx.done.append(
            Text(
                N_("The certificate request for «{subject}» is made and signed by the new key. Send it to the CA."),
                {"subject": pending.subject},
            )
        )

    return _finish(Step.CSR, serial, _run_step(Step.CSR, modules, serial, body, precheck=precheck), out)


def request_path_problem(path: Path) -> Text | None:
    """Why the request could not be written to `path` (checked before the token is touched), or None."""
    path = path.expanduser()
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # save_request makes the missing directories
    if path.is_dir():
        error = os.strerror(errno.EISDIR)
    elif path.exists() and not os.access(path, os.W_OK):
        error = os.strerror(errno.EACCES)
    elif not parent.is_dir():
        error = os.strerror(errno.ENOTDIR)
    elif not os.access(parent, os.W_OK | os.X_OK):
        error = os.strerror(errno.EACCES)
    else:
        return None
    return Text(N_("Could not write the request to {path}: {error}"), {"path": str(path), "error": error})


def save_request(pem: str, path: Path) -> Text | None:
    """Write the request (PEM) where the user chose; None when done, else why not."""
    try:
        path.expanduser().parent.mkdir(parents=True, exist_ok=True)
        path.expanduser().write_text(pem, encoding="ascii")
    except OSError as error:
        return Text(
            N_("Could not write the request to {path}: {error}"),
            {"path": str(path), "error": error.strerror or str(error)},
        )
    return None


# --- step 4: the certificate ------------------------------------------------------------------------------------


class CertificateFileError(ValueError):
    """The file holds no certificate that can be read."""


def read_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in PEM (one or a bundle), DER, or a PKCS#7 chain (PEM or DER)."""
    certificates: list[x509.Certificate] = []
    if b"-----BEGIN" in data:
        for marker, loader in (
            (b"-----BEGIN PKCS7-----", pkcs7.load_pem_pkcs7_certificates),
            (b"-----BEGIN CMS-----", pkcs7.load_pem_pkcs7_certificates),
            (b"-----BEGIN CERTIFICATE-----", x509.load_pem_x509_certificates),
        ):
            if marker in data:
                with contextlib.suppress(ValueError):
                    certificates += loader(data)
    else:
        for der_loader in (lambda d: [x509.load_der_x509_certificate(d)], pkcs7.load_der_pkcs7_certificates):
            with contextlib.suppress(ValueError):
                certificates = list(der_loader(data))
                break
    if not certificates:
        raise CertificateFileError("no certificate")
    return certificates


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def choose_certificate(certificates: Sequence[x509.Certificate], spki_der: bytes, now: datetime) -> x509.Certificate:
    """The certificate for the key `spki_der`, currently valid; a _Refusal saying what is wrong otherwise."""
    matching = [cert for cert in certificates if same_public_key(_spki(cert), spki_der)]
    if not matching:
        if len(certificates) > 1 or all(_is_ca(cert) for cert in certificates):
            raise _Refusal(
                "no-leaf",
                Text(
                    N_(
                        "The file holds {count} certificate(s) of a chain, but none for the new key: the customer's "
                        "own certificate is missing from it. Ask the CA for the certificate itself."
                    ),
                    {"count": len(certificates)},
                ),
                field="certificate",
            )
        raise _Refusal(
            "another-key",
            Text(
                N_(
                    "This certificate was issued for another key, not for the new key on this token. Check that it "
                    "is the CA's answer to this token's request."
                )
            ),
            field="certificate",
        )
    valid = [cert for cert in matching if cert.not_valid_before_utc <= now <= cert.not_valid_after_utc]
    if valid:
        return max(valid, key=lambda cert: cert.not_valid_after_utc)
    cert = max(matching, key=lambda cert: cert.not_valid_after_utc)
    if cert.not_valid_after_utc < now:
        raise _Refusal(
            "expired",
            Text(
                N_("The certificate has expired (valid until {date}): it cannot be used. Ask the CA for a new one."),
                {"date": f"{cert.not_valid_after_utc:%Y-%m-%d}"},
            ),
            field="certificate",
        )
    raise _Refusal(
        "not-yet-valid",
        Text(
            N_("The certificate is valid only from {date}: check this computer's clock, or import it then."),
            {"date": f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"},
        ),
        field="certificate",
    )


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _certificate_template(cert: x509.Certificate, cka_id: str, label: str) -> dict[Attribute, Any]:
    # SoftHSM2 refuses a certificate without CKA_SUBJECT; the rest is what the bank's applet looks for.
    return {
        Attribute.CLASS: ObjectClass.CERTIFICATE,
        Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: False,
        Attribute.ID: bytes.fromhex(cka_id),
        Attribute.LABEL: label,
        Attribute.SUBJECT: cert.subject.public_bytes(),
        Attribute.ISSUER: cert.issuer.public_bytes(),
        Attribute.SERIAL_NUMBER: Integer(cert.serial_number).dump(),
        Attribute.VALUE: cert.public_bytes(serialization.Encoding.DER),
    }


def import_certificate(
    modules: Sequence[Module], serial: str, *, pin: str, source: Path | bytes, label: str | None = None
) -> EnrolResult:
    """Write the issued certificate for the new key to the token (`source`: a file, or its bytes)."""

    def load() -> bytes:
        return source if isinstance(source, bytes) else read_certificate_file(Path(source))

    return _import(modules, serial, pin=pin, load=load, label=label)


def read_certificate_file(path: Path) -> bytes:
    """The bytes of the CA's answer: a regular file of at most MAX_CERTIFICATE_FILE; else a refusal (_Stop)."""
    try:
        return read_small_file(path.expanduser(), MAX_CERTIFICATE_FILE)
    except (OSError, UnfitFile) as error:
        reason = (error.strerror if isinstance(error, OSError) else None) or str(error)
        raise _Refusal(
            "unreadable",
            Text(N_("The certificate file {path} cannot be read: {error}."), {"path": str(path), "error": reason}),
            field="certificate",
        ) from None


NO_CERTIFICATE = N_(
    "No certificate could be read from this file. A certificate in PEM or DER, or a PKCS#7 chain (.p7b), is expected."
)


def certificate_file_problem(path: Path) -> Text | None:
    """Why `path` cannot be imported (unreadable, unfit, no certificate in it), or None: checked before the token
    is touched. Which certificate is the right one is known only once the new key is read."""
    try:
        read_certificates(read_certificate_file(path))
    except _Stop as stop:
        return stop.texts[0]
    except CertificateFileError:
        return Text(NO_CERTIFICATE)
    return None


def _import(
    modules: Sequence[Module], serial: str, *, pin: str, load: Callable[[], bytes], label: str | None
) -> EnrolResult:
    out = _Out()
    certificates: list[x509.Certificate] = []

    def precheck() -> None:
        try:
            certificates.extend(read_certificates(load()))
        except CertificateFileError:
            raise _Refusal("unreadable", Text(NO_CERTIFICATE), field="certificate") from None

    def body(ctx: _Context) -> None:
        with _user_session(ctx, pin) as session:
            pending = _require(_reconciled(ctx, serial, out), Stage.KEY, Stage.REQUEST, Stage.CERTIFICATE)
            public = _get_key(session, ObjectClass.PUBLIC_KEY, pending.cka_id)
            _get_key(session, ObjectClass.PRIVATE_KEY, pending.cka_id)
            now = datetime.now(UTC)
            cert = choose_certificate(certificates, public_key_info(public), now)
            der = cert.public_bytes(serialization.Encoding.DER)
            assert out.contents is not None
            present = [info for info in out.contents.certificates if info.cka_id == pending.cka_id]
            fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
            if present and all(info.fingerprint_sha256 != fingerprint for info in present):
                raise _Refusal(
                    "other-certificate-present",
                    Text(N_("Another certificate for the new key is already on the token: nothing was written.")),
                    field="certificate",
                )
            name = label or _common_name(cert) or pending.key_label
            if not present:
                session.create_object(_certificate_template(cert, pending.cka_id, name))
            out.certificate = parse_certificate(der, cka_id=pending.cka_id, label=name, has_key=True, now=now)
            pending = replace(pending, stage=Stage.CERTIFICATE, updated=_now())
            _save(pending)
            out.pending = pending
            out.contents = _contents(ctx)
        info = out.certificate
        ctx.done.append(
            Text(
                N_(
                    "The certificate «{name}» (valid until {date}) is on the token with the new key: the new pair is "
                    "complete."
                ),
                {"name": info.name, "date": f"{info.not_after:%Y-%m-%d}" if info.not_after else "?"},
            )
        )

    return _finish(Step.IMPORT, serial, _run_step(Step.IMPORT, modules, serial, body, precheck=precheck), out)


# --- the training CA --------------------------------------------------------------------------------------------


def _lab_of(serial: str) -> Any:
    """The training lab this token belongs to (core.lab.Lab), or None for any other token."""
    from core import lab

    with contextlib.suppress(Exception):  # a missing or broken lab record only means "not a lab token"
        the_lab = lab.Lab(opencryptoki=False)
        if the_lab.scenario_of_serial(serial) is not None:
            return the_lab
    return None


def is_lab_token(serial: str) -> bool:
    """Whether the token is one of the training lab's: there the training CA is offered without being asked."""
    return _lab_of(serial) is not None


def training_ca_directory(serial: str) -> Path:
    """The lab's training CA for a lab token, else the default one under the user data dir."""
    from core import training_ca

    the_lab = _lab_of(serial)
    return the_lab.root / "training-ca" if the_lab is not None else training_ca.default_directory()


def training_certificate(csr_pem: str, *, term_days: int, directory: Path | None = None) -> bytes:
    """The training CA's certificate for the request, followed by the CA's own (a chain file, PEM)."""
    from core.training_ca import TrainingCA

    ca = TrainingCA.open(directory)
    cert = ca.sign_request(x509.load_pem_x509_csr(csr_pem.encode("ascii")), term_days=term_days)
    return cert.public_bytes(serialization.Encoding.PEM) + ca.certificate.public_bytes(serialization.Encoding.PEM)


def issue_with_training_ca(
    modules: Sequence[Module],
    serial: str,
    *,
    pin: str,
    term_days: int,
    directory: Path | None = None,
    label: str | None = None,
) -> EnrolResult:
    """Step 4 in the lab: the training CA signs the pending request at once and the certificate is imported.
    Its certificates say TRAINING in the subject; never offered for real customers unless asked for."""

    def load() -> bytes:
        from core.training_ca import TrainingCAError

        pending = load_pending(serial)
        if pending is None or not pending.csr_pem:
            raise _Refusal(
                "no-request",
                Text(N_("There is no certificate request for this token yet: make one first (step 3).")),
            )
        try:
            return training_certificate(
                pending.csr_pem, term_days=term_days, directory=directory or training_ca_directory(serial)
            )
        except (TrainingCAError, ValueError) as error:
            raise _Refusal(
                "training-ca",
                Text(N_("The training CA could not issue the certificate: {error}."), {"error": str(error)}),
                outcome=Outcome.FAILED,
            ) from None

    return _import(modules, serial, pin=pin, load=load, label=label)


# --- step 5: the old pair ---------------------------------------------------------------------------------------


def old_objects(snapshot: TokenSnapshot | None, new_id: str) -> list[str]:
    """What step 5 would remove, one line each: every certificate and key with another CKA_ID."""
    if snapshot is None:
        return []
    lines = []
    for cert in snapshot.certificates:
        if cert.cka_id != new_id:
            until = f"{cert.not_after:%Y-%m-%d}" if cert.not_after else "?"
            lines.append(
                _("certificate «{name}», valid until {date} (id {id})").format(
                    name=cert.name, date=until, id=cert.cka_id
                )
            )
    for key in snapshot.keys:
        if key.cka_id != new_id:
            kind = _("private key") if key.key_class == "private" else _("public key")
            lines.append(_("{kind} {type} (id {id})").format(kind=kind, type=key.key_type.upper(), id=key.cka_id))
    return lines


HALF_PAIRS = N_(
    "Some of these are half a pair (a key without its certificate, or the reverse), left by a registration that "
    "was never finished: the token shows the finding registration-unfinished until they are removed."
)


def half_pairs(snapshot: TokenSnapshot | None, new_id: str) -> bool:
    """Among the old objects, a key without its certificate or a certificate without its key: what the scan shows
    as `registration-unfinished`. Keeping them keeps that finding, so the re-enrolment is not over until they go."""
    if snapshot is None:
        return False
    return any(key.cka_id != new_id and not key.has_certificate for key in snapshot.keys) or any(
        cert.cka_id != new_id and not cert.has_key for cert in snapshot.certificates
    )


def key_step_text(snapshot: TokenSnapshot | None) -> Text:
    """Step 2's words on what becomes of the certificate on the token now: there may be none yet, or one that
    cannot sign (its key gone, or expired); only a working one "keeps working"."""
    certificates = [cert for cert in snapshot.certificates if not cert.error] if snapshot else []
    working = [cert for cert in certificates if cert.has_key and (cert.days_left is None or cert.days_left >= 0)]
    if working:
        return Text(
            N_(
                "A new key pair is made on the token; the current certificate keeps working until the new one is "
                "in place. On the real token this can take up to 5 minutes."
            )
        )
    if certificates:
        return Text(
            N_(
                "A new key pair is made on the token. The certificate on it now cannot sign (its key is gone, or it "
                "has expired): the new one replaces it. On the real token this can take up to 5 minutes."
            )
        )
    return Text(
        N_(
            "A new key pair is made on the token. There is no certificate on it yet: the new one will be its "
            "first. On the real token this can take up to 5 minutes."
        )
    )


_REMOVABLE = (ObjectClass.CERTIFICATE, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)


def remove_old(modules: Sequence[Module], serial: str, *, pin: str, confirmed: bool) -> EnrolResult:
    """Remove every other certificate and key pair: only when `confirmed`, and only when the new key pair and
    its certificate are complete on the token. Certificates go first, so an interruption leaves keys that a
    repeat of this step removes. The re-enrolment is over afterwards."""
    out = _Out()

    def precheck() -> None:
        if not confirmed:
            raise _Refusal("not-confirmed", Text(N_("The removal was not confirmed: nothing was removed.")))

    def body(ctx: _Context) -> None:
        with _user_session(ctx, pin) as session:
            pending = _require(_reconciled(ctx, serial, out), Stage.CERTIFICATE)
            _get_key(session, ObjectClass.PRIVATE_KEY, pending.cka_id)
            assert out.contents is not None
            new_certs = [c for c in out.contents.certificates if c.cka_id == pending.cka_id and not c.error]
            if not new_certs:
                raise _Refusal(
                    "new-pair-incomplete",
                    Text(N_("The new certificate is not on the token: nothing was removed.")),
                )
            out.removed.extend(old_objects(out.contents, pending.cka_id))
            new_id = bytes.fromhex(pending.cka_id)
            doomed = [
                obj
                for obj in session.get_objects()
                if obj.object_class in _REMOVABLE and bytes(obj[Attribute.ID] or b"") != new_id
            ]
            doomed.sort(key=lambda obj: _REMOVABLE.index(obj.object_class))
            for obj in doomed:
                obj.destroy()
            out.contents = _contents(ctx)
        discard_pending(serial)
        out.pending, out.pending_known = None, True
        if out.removed:
            ctx.done.append(
                Text(N_("Removed: {objects}. The re-enrolment is complete."), {"objects": "; ".join(out.removed)})
            )
        else:
            ctx.done.append(Text(N_("There was nothing old to remove. The re-enrolment is complete.")))

    return _finish(Step.REMOVE_OLD, serial, _run_step(Step.REMOVE_OLD, modules, serial, body, precheck=precheck), out)


# --- shown by the front ends ------------------------------------------------------------------------------------


def contents_lines(snapshot: TokenSnapshot | None, new_id: str | None = None) -> list[str]:
    """What is on the token, one line per certificate (with its expiry) and per key; the new pair marked."""
    if snapshot is None:
        return []
    lines = []
    for cert in snapshot.certificates:
        mark = _(" [new]") if new_id and cert.cka_id == new_id else ""
        if cert.error:
            lines.append(_("certificate (unreadable) id {id}").format(id=cert.cka_id) + mark)
            continue
        until = f"{cert.not_after:%Y-%m-%d}" if cert.not_after else "?"
        days = cert.days_left if cert.days_left is not None else 0
        state = _("expired") if days < 0 else _("{days} days left").format(days=days)
        lines.append(
            _("certificate «{name}» valid until {date} ({state}), id {id}").format(
                name=cert.name, date=until, state=state, id=cert.cka_id
            )
            + mark
        )
    for key in snapshot.keys:
        mark = _(" [new]") if new_id and key.cka_id == new_id else ""
        kind = _("private key") if key.key_class == "private" else _("public key")
        bits = f" {key.bits}" if key.bits else ""
        lines.append(f"{kind} {key.key_type.upper()}{bits}, id {key.cka_id}" + mark)
    return lines or [_("nothing: no certificate, no key")]
