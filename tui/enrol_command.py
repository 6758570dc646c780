"""`kaztoken-helpdesk re-enrol`: the re-enrolment steps of core.enrol from the command line.

    re-enrol --serial S                       step 1: log in, show the token and any re-enrolment under way
    re-enrol --serial S --csr-out FILE        steps 1-3: new key pair (or the pending one), the request to FILE
    re-enrol --serial S --import CERT         step 4: the CA's certificate onto the token
    re-enrol --serial S --remove-old [--yes]  step 5: the old certificate and key removed (asks y/N)
    re-enrol --serial S --training-ca [--term 1y|3y] [--remove-old]   the whole loop with the training CA

The user PIN is asked without echo, or read as one line from standard input with --pin-stdin; never an argument.
Everything that can be checked before the token is touched is: the options, the files to import and to write,
that the PIN can be the token's, and (after the login, before any key pair is made) that there is a subject and
that the re-enrolment is not already finished.
Exit status: 0 done, 1 failed (wrong PIN, refused, token gone, already finished…), 2 usage error or bad input
(nothing tried), 3 a fault of the tool.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.i18n import _
from core.untrusted import visible
from tui.compat import SubParsers, parser_options
from tui.errors import unexpected_detail

if TYPE_CHECKING:  # core.enrol and its crypto are imported when the command runs: building the parser stays light
    from core.config import LoadedConfig
    from core.enrol import EnrolResult, Pending
    from tui.pin_input import PinReader

KEY_TYPES = ("rsa2048", "ec-p256")  # core.csr.KeyKind values
TERMS = {"1y": 365, "3y": 3 * 365}  # core.training_ca.Term, in days
STEP_TITLES = {"login": "1/5", "keygen": "2/5", "csr": "3/5", "import": "4/5", "remove-old": "5/5"}


class Usage(Exception):
    """A usage error (exit 2); the message is translated and holds no PIN."""


def add_parser(subparsers: SubParsers, parents: Sequence[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "re-enrol",
        parents=list(parents),
        help=_("new key pair and certificate on a token; the old ones removed only after"),
        description=_(
            "Re-enrol a token: a new key pair generated on it, a PKCS#10 request, the issued certificate written "
            "back, then (only when asked) the old certificate and key removed. Interrupted, it continues where it "
            "stopped."
        ),
    )
    # tui/cli/parsers.py's shared `token` parent may already give these two.
    if not _has(parents, "--serial"):
        parser.add_argument("--serial", required=True, metavar="SERIAL", help=_("the token's serial (see `scan`)"))
    if not _has(parents, "--pin-stdin"):
        parser.add_argument(
            "--pin-stdin", action="store_true", help=_("read the user PIN as one line from standard input")
        )
    parser.add_argument(
        "--csr-out",
        type=Path,
        metavar="FILE",
        help=_("steps 1-3: write the certificate request (PEM) to FILE, - for stdout"),
    )
    parser.add_argument(
        "--subject",
        help=_("the request's subject, e.g. \"CN=Ivanov Ivan,O=Company,C=KZ\" (default: the current certificate's)"),
    )
    parser.add_argument("--key-type", choices=KEY_TYPES, help=_("the new key pair's type (default rsa2048)"))
    parser.add_argument(
        "--import",
        dest="import_cert",
        type=Path,
        metavar="CERT",
        help=_("step 4: the issued certificate (PEM, DER, PKCS#7)"),
    )
    parser.add_argument("--remove-old", action="store_true", help=_("step 5: remove the old certificate and key"))
    parser.add_argument("--yes", action="store_true", help=_("do not ask before removing the old certificate and key"))
    parser.add_argument(
        "--training-ca", action="store_true", help=_("the whole loop, the training CA signing the request (lab only)")
    )
    parser.add_argument("--term", choices=sorted(TERMS), help=_("training certificate term (default 1y)"))
    parser.add_argument("--training-ca-dir", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    return parser


def _has(parents: Sequence[argparse.ArgumentParser], option: str) -> bool:
    return option in parser_options(parents)


def _check_usage(args: argparse.Namespace) -> None:
    from core.csr import SubjectError, parse_subject

    if args.import_cert is not None and (args.csr_out is not None or args.training_ca):
        raise Usage(_("--import is a step of its own: use it after --csr-out, and not with --training-ca."))
    if args.term is not None and not args.training_ca:
        raise Usage(_("--term is for --training-ca."))
    if args.remove_old and args.csr_out is not None and not args.training_ca:
        raise Usage(_("--remove-old needs the new certificate on the token: import it first (--import)."))
    if args.subject is not None:
        try:
            parse_subject(args.subject)
        except SubjectError as error:
            raise Usage(str(error)) from None
    from core import enrol

    if args.import_cert is not None:
        if not args.import_cert.expanduser().exists():
            raise Usage(_("No such file: {path}").format(path=args.import_cert))
        if (problem := enrol.certificate_file_problem(args.import_cert)) is not None:
            raise Usage(str(problem))
    to_write = args.csr_out is not None and str(args.csr_out) != "-"
    if to_write and (problem := enrol.request_path_problem(args.csr_out)) is not None:
        raise Usage(str(problem))


class _Printer:
    def __init__(self) -> None:
        self.out = sys.stdout

    def line(self, text: str = "") -> None:
        # The lines quote the token and its certificates (a subject, a label): never raw to the terminal.
        print("\n".join(map(visible, str(text).split("\n"))), file=self.out)

    def result(self, result: EnrolResult) -> None:
        mark = "✔" if result.ok else "✖"
        for note in result.notes:
            self.line(f"ℹ {note}")
        self.line(f"{mark} [{STEP_TITLES[result.step]}] {result.message}")
        for check in result.result.problems:
            self.line(f"  - {check.text}")
        for warning in result.warnings:
            self.line(f"⚠ {warning}")


def _failed(result: EnrolResult) -> int | None:
    from core.actions import Outcome

    if result.ok:
        return None
    return 2 if result.outcome is Outcome.POLICY else 1


def run(args: argparse.Namespace, config: LoadedConfig) -> int:
    from core.actions import Role
    from core.policy import current_pin_fits, current_pin_refusal
    from tui.pin_input import PinInputError, PinReader

    try:
        _check_usage(args)
    except Usage as error:
        print(_("re-enrol: {error}").format(error=visible(error)), file=sys.stderr)
        return 2
    reader = PinReader(from_stdin=bool(getattr(args, "pin_stdin", False)))
    try:
        (pin,) = reader.read([_("User PIN of token {serial}: ").format(serial=args.serial)])
    except PinInputError as error:
        print(_("re-enrol: {error}").format(error=visible(error)), file=sys.stderr)
        return 2
    if not pin:
        print(_("The {pin} is empty: nothing was tried.").format(pin=_("user PIN")), file=sys.stderr)
        return 2
    if not current_pin_fits(pin):  # its characters; the token's length bounds are checked by core before login
        print(str(current_pin_refusal(Role.USER.title_text)), file=sys.stderr)
        return 2
    from core.scan import Workstation

    workstation = Workstation(
        getattr(args, "module", None) or [], config=config, timeout=getattr(args, "library_timeout", None)
    )
    try:
        return _steps(args, workstation.modules, pin, reader)
    except Usage as error:
        print(_("re-enrol: {error}").format(error=visible(error)), file=sys.stderr)
        return 2
    except (KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as error:  # never a traceback, never a PIN: core's texts hold none; redact to be sure
        detail = unexpected_detail(error)
        print(
            visible(
                reader.redact(
                    _("re-enrol failed: {error}").format(
                        error=f"{type(error).__name__}: {detail}" if detail else type(error).__name__
                    )
                )
            ),
            file=sys.stderr,
        )
        return 3  # tui.cli's EXIT_TOOL_FAILED
    finally:
        workstation.close()


def _steps(args: argparse.Namespace, modules: Sequence[Any], pin: str, reader: PinReader) -> int:
    from core import enrol
    from core.enrol import Stage

    show = _Printer()
    serial = args.serial
    first = enrol.inspect(modules, serial, pin=pin)
    show.result(first)
    if (code := _failed(first)) is not None:
        return code
    pending = first.pending
    show.line(_("On the token now:"))
    for line in enrol.contents_lines(first.contents, pending.cka_id if pending else None):
        show.line(f"  {line}")
    if (args.csr_out is not None or args.training_ca) and pending is not None and pending.stage is Stage.CERTIFICATE:
        # Finished: never a second key pair and certificate. With --remove-old, step 5 is what is left to do.
        show.line(("ℹ " if args.remove_old else "✖ ") + str(enrol.finished_text(pending)))
        if not args.remove_old:
            show.line(_("Next: remove the old certificate and key with --remove-old, or keep them (answer N)."))
            return 1
        return _remove_old(args, modules, pin, reader, show)
    if args.csr_out is not None or args.training_ca:
        code, pending = _request(args, modules, pin, first, show)
        if code is not None:
            return code
    if args.training_ca:
        term = TERMS[args.term or "1y"]  # the bank's terms, as core.training_ca.Term has them
        from core.lab import training_ca_directory  # a lab token is signed by the lab's own training CA

        directory = args.training_ca_dir or training_ca_directory(serial)
        issued = enrol.issue_with_training_ca(modules, serial, pin=pin, term_days=term, directory=directory)
        show.result(issued)
        if (code := _failed(issued)) is not None:
            return code
        pending = issued.pending
    if args.import_cert is not None:
        imported = enrol.import_certificate(modules, serial, pin=pin, source=args.import_cert)
        show.result(imported)
        if (code := _failed(imported)) is not None:
            return code
        pending = imported.pending
    if args.remove_old:
        return _remove_old(args, modules, pin, reader, show)
    _next_hint(pending, show, started=args.csr_out is not None or args.training_ca or args.import_cert is not None)
    return 0


def _request(
    args: argparse.Namespace, modules: Sequence[Any], pin: str, first: EnrolResult, show: _Printer
) -> tuple[int | None, Pending | None]:
    """Steps 2 and 3: a key pair unless one is pending, then the request (kept if its subject is unchanged)."""
    from core import enrol
    from core.csr import KeyKind
    from core.enrol import Stage

    serial, pending = args.serial, first.pending
    # The subject is settled before a key pair is made: without one, nothing may be left half done on the token.
    current = enrol.default_subject(first.contents, exclude_id=pending.cka_id if pending else None)
    if not (args.subject or (pending.subject if pending else "") or current):
        raise Usage(_("There is no current certificate to take the subject from: give it with --subject."))
    if pending is None:
        kinds = first.key_kinds or (KeyKind.RSA2048,)
        kind = KeyKind(args.key_type) if args.key_type else (KeyKind.RSA2048 if KeyKind.RSA2048 in kinds else kinds[0])
        show.line(
            _(
                "Generating the {kind} key pair on the token: this can take up to 5 minutes. Do not unplug the token."
            ).format(kind=kind.label)
        )
        generated = enrol.generate_key(modules, serial, pin=pin, kind=kind)
        show.result(generated)
        if (code := _failed(generated)) is not None:
            return code, None
        pending = generated.pending
    elif args.key_type and KeyKind(args.key_type) is not pending.key_kind:
        show.line(
            "ℹ " + _("The key pair of the re-enrolment under way ({kind}) is used.").format(kind=pending.key_kind.label)
        )
    assert pending is not None
    subject = args.subject or pending.subject or current
    if pending.stage is not Stage.REQUEST or not pending.csr_pem or (args.subject and args.subject != pending.subject):
        made = enrol.make_request(modules, serial, pin=pin, subject=subject)
        show.result(made)
        if (code := _failed(made)) is not None:
            return code, None
        pending = made.pending
    assert pending is not None
    if args.csr_out is not None:
        if str(args.csr_out) == "-":
            sys.stdout.write(pending.csr_pem)
        else:
            problem = enrol.save_request(pending.csr_pem, args.csr_out)
            if problem is not None:
                print(visible(problem), file=sys.stderr)
                return 1, pending
            show.line(_("Request saved to {path}").format(path=args.csr_out.expanduser().resolve()))
    return None, pending


def _remove_old(args: argparse.Namespace, modules: Sequence[Any], pin: str, reader: PinReader, show: _Printer) -> int:
    from core import enrol
    from core.enrol import Stage
    from tui.pin_input import PinInputError

    serial = args.serial
    look = enrol.inspect(modules, serial, pin=pin)
    if (code := _failed(look)) is not None:
        show.result(look)
        return code
    if look.pending is None or look.pending.stage is not Stage.CERTIFICATE:
        show.line("✖ " + _("There is no new certificate on the token yet: nothing was removed."))
        return 1
    doomed = enrol.old_objects(look.contents, look.pending.cka_id)
    if doomed:
        show.line(_("To be removed from the token:"))
        for line in doomed:
            show.line(f"  {line}")
    if doomed and not args.yes:
        try:
            answer = reader.ask_visible(_("Remove them? [y/N] "))
        except PinInputError:
            raise Usage(_("No terminal to confirm the removal on: add --yes.")) from None
        if answer.strip().lower() not in ("y", "yes", "д", "да", "и", "иә"):
            if enrol.half_pairs(look.contents, look.pending.cka_id):
                # Kept half pairs leave the registration unfinished: it stays open at this step.
                show.line("⚠ " + _(enrol.HALF_PAIRS))
                show.line(_("Nothing was removed."))
                return 1
            enrol.finish(serial)  # kept, as the console's "keep": the re-enrolment is over, never continued
            show.line(_("Nothing was removed. The new certificate and key are in place; the old ones stay."))
            return 0
    removed = enrol.remove_old(modules, serial, pin=pin, confirmed=True)
    show.result(removed)
    return _failed(removed) or 0


def _next_hint(pending: Pending | None, show: _Printer, *, started: bool) -> None:
    from core.enrol import NextStep, next_step

    step = next_step(pending)
    if step is NextStep.KEY and started:
        return  # this call just ended the re-enrolment; its own lines said so
    hints = {
        NextStep.KEY: _("No re-enrolment is under way. Start one with --csr-out FILE (or --training-ca in the lab)."),
        NextStep.REQUEST: _("Next: make the request with --csr-out FILE."),
        NextStep.IMPORT: _("Next: send the request to the CA, then import its answer with --import CERT."),
        NextStep.REMOVE: _("Next: remove the old certificate and key with --remove-old, when the customer is ready."),
    }
    show.line(hints[step])


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tui.enrol_command re-enrol …`: the subcommand on its own, as tui/cli runs it."""
    from core.config import load_config

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--module", action="append", default=argparse.SUPPRESS, metavar="PATH")
    parser = argparse.ArgumentParser(prog="kaztoken-helpdesk", parents=[common])
    add_parser(parser.add_subparsers(dest="command", required=True), [common])
    args = parser.parse_args(argv)
    args.module = getattr(args, "module", [])
    try:
        return run(args, load_config())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
