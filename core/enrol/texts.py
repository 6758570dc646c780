"""What the front ends show of a re-enrolment: the token's contents, the old pair, step texts, the request file."""

from __future__ import annotations

import errno
import os
from datetime import UTC, datetime
from pathlib import Path

from core.i18n import N_, Text, _
from core.snapshot import TokenSnapshot


def default_subject(snapshot: TokenSnapshot | None, exclude_id: str | None = None) -> str:
    """The subject of the token's current certificate (the one with a key, valid longest), RFC 4514; or ""."""
    if snapshot is None:
        return ""
    candidates = [
        cert for cert in snapshot.certificates if not cert.error and cert.subject and cert.cka_id != exclude_id
    ]
    candidates.sort(key=lambda cert: (cert.has_key, cert.not_after or datetime.min.replace(tzinfo=UTC)))
    return candidates[-1].subject if candidates else ""


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
