"""The five steps of re-enrolment, each run in the operation frame (core.frame) with its own login through
core.session: see the package docstring (core.enrol)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import pkcs11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from pkcs11 import Attribute, MechanismFlag, ObjectClass
from pkcs11.exceptions import PKCS11Error

from core import session as sessions
from core.certificates import CertificateInfo, parse_certificate
from core.cryptoki import CryptokiError
from core.csr import (
    KeyKind,
    SubjectError,
    build_request,
    key_templates,
    parse_subject,
    public_key_info,
    request_pem,
    supported_kinds,
    token_signer,
)
from core.enrol.certificate_file import (
    NO_CERTIFICATE,
    CertificateFileError,
    choose_certificate,
    common_name,
    read_certificate_file,
    read_certificates,
    training_certificate,
)
from core.enrol.pending import (
    ID_BYTES,
    STAGE_TEXTS,
    Pending,
    Stage,
    Step,
    discard_pending,
    finished_text,
    load_pending,
    now_text,
    pending_path,
    reconcile,
    save_pending,
)
from core.enrol.texts import old_objects
from core.findings import Action
from core.frame import (
    ActionResult,
    Context,
    Outcome,
    Refusal,
    Role,
    Stop,
    refuse_if_locked,
    run_action,
)
from core.i18n import N_, Text, _
from core.modules import Module
from core.snapshot import TokenSnapshot, is_gone, read_snapshot
from core.training_ca import TrainingCA, TrainingCAError

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


# --- the frame --------------------------------------------------------------------------------------------------


def _run_step(
    step: Step,
    modules: Sequence[Module],
    serial: str,
    body: Callable[[Context], None],
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
def _user_session(ctx: Context, pin: str) -> Iterator[pkcs11.Session]:
    """A python-pkcs11 read-write session logged in as the user (core.session), always logged out and closed."""
    refuse_if_locked(ctx, Role.USER)
    with ctx.objects_session(Role.USER, pin, field="pin") as session:
        yield session


def _contents(ctx: Context) -> TokenSnapshot:
    """The token read while the user is logged in: login state is per application, so private keys show."""
    snapshot = read_snapshot(ctx.module, ctx.slot())
    if snapshot.read_error:
        raise Stop(
            Outcome.FAILED, Text(N_("The token's objects could not be read: {error}."), {"error": snapshot.read_error})
        )
    return snapshot


def _reconciled(ctx: Context, serial: str, out: _Out, *, announce: bool = False) -> Pending | None:
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
        raise Refusal(
            "state-not-saved",
            Text(
                N_("The re-enrolment's state could not be saved to {path}: {error}."),
                {"path": str(pending_path(pending.serial)), "error": error.strerror or str(error)},
            ),
            outcome=Outcome.FAILED,
        ) from None


def _require(pending: Pending | None, *stages: Stage) -> Pending:
    if pending is None:
        raise Refusal(
            "nothing-pending",
            Text(N_("No re-enrolment is under way on this token: generate a new key pair first (step 2).")),
        )
    if pending.stage not in stages:
        raise Refusal(
            "wrong-stage",
            Text(
                N_("The re-enrolment on this token is at another step: {stage}. Continue it at step {step}."),
                {"stage": _(STAGE_TEXTS[pending.stage]), "step": pending.stage.next_step.number},
            ),
        )
    return pending


def _get_key(session: pkcs11.Session, object_class: ObjectClass, cka_id: str) -> pkcs11.Key:
    from pkcs11.exceptions import MultipleObjectsReturned, NoSuchKey

    try:
        return session.get_key(object_class=object_class, id=bytes.fromhex(cka_id))
    except (NoSuchKey, MultipleObjectsReturned):
        raise Refusal(
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

    def body(ctx: Context) -> None:
        with _user_session(ctx, pin):
            _reconciled(ctx, serial, out, announce=True)
            out.key_kinds = _kinds(ctx)
        ctx.done.append(Text(N_("Logged in as the user.")))

    return _finish(Step.LOGIN, serial, _run_step(Step.LOGIN, modules, serial, body), out)


def _kinds(ctx: Context) -> tuple[KeyKind, ...]:
    try:
        return supported_kinds(ctx.slot())
    except (PKCS11Error, CryptokiError):
        return (KeyKind.RSA2048,)  # a module that will not list its mechanisms: the bank's default, tried as is


# --- step 2: the key pair ---------------------------------------------------------------------------------------


def generate_key(modules: Sequence[Module], serial: str, *, pin: str, kind: KeyKind = KeyKind.RSA2048) -> EnrolResult:
    """Generate the new key pair on the token with a fresh CKA_ID. May take minutes on the real token; the
    module stays locked meanwhile (the console's scan waits)."""
    out = _Out()

    def body(ctx: Context) -> None:
        with _user_session(ctx, pin) as session:
            pending = _reconciled(ctx, serial, out)
            if pending is not None and pending.stage is Stage.CERTIFICATE:
                raise Refusal("finished", finished_text(pending))
            if pending is not None:
                raise Refusal(
                    "already-pending",
                    Text(
                        N_("A re-enrolment is already under way on this token ({stage}): continue it at step {step}."),
                        {"stage": _(STAGE_TEXTS[pending.stage]), "step": pending.stage.next_step.number},
                    ),
                )
            kinds = _kinds(ctx)
            if kind not in kinds:
                raise Refusal(
                    "key-type",
                    Text(
                        N_("This token cannot make {kind} keys. It can make: {kinds}."),
                        {"kind": kind.label, "kinds": ", ".join(k.label for k in kinds) or "-"},
                    ),
                    field="key_type",
                )
            assert out.contents is not None
            taken = {key.cka_id for key in out.contents.keys} | {cert.cka_id for cert in out.contents.certificates}
            cka_id = os.urandom(ID_BYTES).hex()
            while cka_id in taken:
                cka_id = os.urandom(ID_BYTES).hex()
            now = now_text()
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
            new = replace(new, stage=Stage.KEY, updated=now_text())
            _save(new)
            out.pending = new
            out.contents = _contents(ctx)  # the token as it is now, the new pair included
        ctx.done.append(
            Text(
                N_("A new {kind} key pair was generated on the token (id {id}). Next: the certificate request."),
                {"kind": kind.label, "id": cka_id},
            )
        )

    return _finish(Step.KEYGEN, serial, _run_step(Step.KEYGEN, modules, serial, body), out)


# --- step 3: the request ----------------------------------------------------------------------------------------


def make_request(modules: Sequence[Module], serial: str, *, pin: str, subject: str) -> EnrolResult:
    """The PKCS#10 request for the new key, signed on the token; kept in the pending state (`result.csr_pem`).
    Made again with another subject as often as wanted, until the certificate is written."""
    out = _Out()
    name: list[x509.Name] = []

    def precheck() -> None:
        try:
            name.append(parse_subject(subject))
        except SubjectError as error:
            raise Refusal(
                "subject", Text(error.message, error.params), outcome=Outcome.POLICY, field="subject"
            ) from None

    def body(ctx: Context) -> None:
        with _user_session(ctx, pin) as session:
            pending = _require(_reconciled(ctx, serial, out), Stage.KEY, Stage.REQUEST)
            private = _get_key(session, ObjectClass.PRIVATE_KEY, pending.cka_id)
            public = _get_key(session, ObjectClass.PUBLIC_KEY, pending.cka_id)
            try:
                mechanisms = set(ctx.slot().get_mechanisms())
            except (PKCS11Error, CryptokiError):
                mechanisms = set()
            try:
                request = build_request(name[0], public_key_info(public), token_signer(private, mechanisms))
            except ValueError as error:
                raise Refusal(
                    "bad-signature",
                    Text(N_("The token's signature on the request does not verify: {error}."), {"error": str(error)}),
                    outcome=Outcome.FAILED,
                ) from None
            pending = replace(
                pending,
                stage=Stage.REQUEST,
                subject=request.subject.rfc4514_string(),
                csr_pem=request_pem(request),
                updated=now_text(),
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


def import_certificate(
    modules: Sequence[Module], serial: str, *, pin: str, source: Path | bytes, label: str | None = None
) -> EnrolResult:
    """Write the issued certificate for the new key to the token (`source`: a file, or its bytes)."""

    def load() -> bytes:
        return source if isinstance(source, bytes) else read_certificate_file(Path(source))

    return _import(modules, serial, pin=pin, load=load, label=label)


def _import(
    modules: Sequence[Module], serial: str, *, pin: str, load: Callable[[], bytes], label: str | None
) -> EnrolResult:
    out = _Out()
    certificates: list[x509.Certificate] = []

    def precheck() -> None:
        try:
            certificates.extend(read_certificates(load()))
        except CertificateFileError:
            raise Refusal("unreadable", Text(NO_CERTIFICATE), field="certificate") from None

    def body(ctx: Context) -> None:
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
                raise Refusal(
                    "other-certificate-present",
                    Text(N_("Another certificate for the new key is already on the token: nothing was written.")),
                    field="certificate",
                )
            name = label or common_name(cert) or pending.key_label
            if not present:
                session.create_object(sessions.certificate_template(cert, bytes.fromhex(pending.cka_id), name))
            out.certificate = parse_certificate(der, cka_id=pending.cka_id, label=name, has_key=True, now=now)
            pending = replace(pending, stage=Stage.CERTIFICATE, updated=now_text())
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


def issue_with_training_ca(
    modules: Sequence[Module],
    serial: str,
    *,
    pin: str,
    term_days: int,
    ca: TrainingCA | None = None,
    directory: Path | None = None,
    label: str | None = None,
) -> EnrolResult:
    """Step 4 in the lab: the training CA signs the pending request at once and the certificate is imported.
    Its certificates say TRAINING in the subject; never offered for real customers unless asked for.

    The front end chooses the training CA: `ca`, else the one in `directory` (for a lab token, the lab's:
    core.lab.training_ca_directory), else the default one under the user data dir. Enrolment knows no lab."""

    def load() -> bytes:
        pending = load_pending(serial)
        if pending is None or not pending.csr_pem:
            raise Refusal(
                "no-request",
                Text(N_("There is no certificate request for this token yet: make one first (step 3).")),
            )
        try:
            signer = ca if ca is not None else TrainingCA.open(directory)
            return training_certificate(pending.csr_pem, term_days=term_days, ca=signer)
        except (TrainingCAError, ValueError) as error:
            raise Refusal(
                "training-ca",
                Text(N_("The training CA could not issue the certificate: {error}."), {"error": str(error)}),
                outcome=Outcome.FAILED,
            ) from None

    return _import(modules, serial, pin=pin, load=load, label=label)


_REMOVABLE = (ObjectClass.CERTIFICATE, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)


def remove_old(modules: Sequence[Module], serial: str, *, pin: str, confirmed: bool) -> EnrolResult:
    """Remove every other certificate and key pair: only when `confirmed`, and only when the new key pair and
    its certificate are complete on the token. Certificates go first, so an interruption leaves keys that a
    repeat of this step removes. The re-enrolment is over afterwards."""
    out = _Out()

    def precheck() -> None:
        if not confirmed:
            raise Refusal("not-confirmed", Text(N_("The removal was not confirmed: nothing was removed.")))

    def body(ctx: Context) -> None:
        with _user_session(ctx, pin) as session:
            pending = _require(_reconciled(ctx, serial, out), Stage.CERTIFICATE)
            _get_key(session, ObjectClass.PRIVATE_KEY, pending.cka_id)
            assert out.contents is not None
            new_certs = [c for c in out.contents.certificates if c.cka_id == pending.cka_id and not c.error]
            if not new_certs:
                raise Refusal(
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
