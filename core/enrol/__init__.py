"""Re-enrolment: a new key pair on the token, a PKCS#10 request it signs, the issued certificate written back,
and only then the old certificate and key removed.

The steps, each a function returning an `EnrolResult` and never raising for anything a user can cause:
  1. `inspect`            log in as the user; what is on the token (private keys too), which key types it makes;
  2. `generate_key`       the key pair, generated on the token (private half sensitive, never extractable);
  3. `make_request`       the PKCS#10 request (core.csr), kept in the pending state and shown for copying;
  4. `import_certificate` the CA's answer (PEM, DER, PKCS#7, a PEM bundle): the certificate for the new key,
                          currently valid, written as CKO_CERTIFICATE with the key's CKA_ID;
                          `issue_with_training_ca` does the same with a training CA signing at once (the
                          front end chooses which: core.lab.training_ca_directory for a lab token);
  5. `remove_old`         every other certificate and key pair, only when confirmed and the new pair is complete.
Each step runs in the operation frame (core.frame) (operator lock, module lock for the whole step, snapshots before and
after, one audit line: action "re-enrol", reason the step) with its own login on a session it always closes.

Between steps the state lives in a small JSON file per token (`pending_path`): the new key's CKA_ID, key type,
subject, the request and the stage reached; never a PIN. An interrupted enrolment (console closed, token pulled)
shows in the next scan as `registration-unfinished` (a key without a certificate), and the next `inspect`
reconciles the file with the token and continues from the stage reached, or drops the file if the key is gone.

The package: `pending` (the state between steps), `steps` (the five steps), `certificate_file` (reading the CA's
answer and choosing the certificate), `texts` (what the front ends show). Everything public is importable from
`core.enrol`.
"""

from __future__ import annotations

from core.enrol.certificate_file import (
    MAX_CERTIFICATE_FILE,
    NO_CERTIFICATE,
    CertificateFileError,
    certificate_file_problem,
    choose_certificate,
    read_certificate_file,
    read_certificates,
    training_certificate,
)
from core.enrol.pending import (
    ID_BYTES,
    STAGE_TEXTS,
    NextStep,
    Pending,
    Stage,
    Step,
    describe_pending,
    discard_pending,
    finish,
    finished_text,
    load_pending,
    next_step,
    pending_dir,
    pending_path,
    reconcile,
    save_pending,
    token_reference,
)
from core.enrol.steps import (
    EnrolResult,
    generate_key,
    import_certificate,
    inspect,
    issue_with_training_ca,
    make_request,
    remove_old,
)
from core.enrol.texts import (
    HALF_PAIRS,
    contents_lines,
    default_subject,
    half_pairs,
    key_step_text,
    old_objects,
    request_path_problem,
    save_request,
)

__all__ = [
    "HALF_PAIRS",
    "ID_BYTES",
    "MAX_CERTIFICATE_FILE",
    "NO_CERTIFICATE",
    "STAGE_TEXTS",
    "CertificateFileError",
    "EnrolResult",
    "NextStep",
    "Pending",
    "Stage",
    "Step",
    "certificate_file_problem",
    "choose_certificate",
    "contents_lines",
    "default_subject",
    "describe_pending",
    "discard_pending",
    "finish",
    "finished_text",
    "generate_key",
    "half_pairs",
    "import_certificate",
    "inspect",
    "issue_with_training_ca",
    "key_step_text",
    "load_pending",
    "make_request",
    "next_step",
    "old_objects",
    "pending_dir",
    "pending_path",
    "read_certificate_file",
    "read_certificates",
    "reconcile",
    "remove_old",
    "request_path_problem",
    "save_pending",
    "save_request",
    "token_reference",
    "training_certificate",
]
