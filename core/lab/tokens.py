"""One lab token made, on any stack: initialised, its PINs set, a key pair and a training certificate written,
wrong PINs spent, as its scenario's recipe says. PKCS#11 through core.session, like every other part."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import rsa
from pkcs11 import Attribute, KeyType, ObjectClass, Session
from pkcs11.exceptions import PKCS11Error

from core import session as sessions
from core.ckr import CKR_PIN_INCORRECT, CKR_PIN_LOCKED
from core.cryptoki import CKU_SO, CKU_USER, Cryptoki, CryptokiError
from core.i18n import _
from core.lab.scenarios import (
    FACTORY_SO_PIN,
    KEY_ID,
    LAB_SO_PIN,
    LAB_USER_PIN,
    WRONG_PIN,
    LabError,
    Scenario,
)
from core.policy import FACTORY_USER_PIN
from core.training_ca import TrainingCA

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Library  # python-pkcs11's library class (core.session loads it)


def describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


def make_token(
    lib: Library,
    raw: Cryptoki,
    slot_id: int,
    item: Scenario,
    ca: Callable[[], TrainingCA],
    key: rsa.RSAPrivateNumbers | None = None,
) -> str:
    """Initialise the token in `slot_id` and take it through the scenario's recipe; returns its serial. `ca` gives
    the training CA, opened (or made) only for a scenario with a certificate."""
    recipe = item.recipe
    try:
        sessions.init_token(raw, slot_id, FACTORY_SO_PIN, item.label)
        so_pin = FACTORY_SO_PIN
        if not recipe.factory_pins:
            with sessions.logged_in(raw, slot_id, CKU_SO, so_pin) as handle:
                sessions.set_pin(raw, handle, so_pin, LAB_SO_PIN)
            so_pin = LAB_SO_PIN
        user_pin = FACTORY_USER_PIN if recipe.factory_pins else LAB_USER_PIN
        if recipe.user_pin:
            with sessions.logged_in(raw, slot_id, CKU_SO, so_pin) as handle:
                sessions.init_pin(raw, handle, user_pin)
        if recipe.key:
            with sessions.objects_logged_in(lib, raw, slot_id, CKU_USER, user_pin) as session:
                _profile(session, item, ca, key)
        for _try in range(recipe.wrong_user_pins):
            _wrong_login(raw, slot_id, CKU_USER)
        for _try in range(recipe.wrong_so_pins):
            _wrong_login(raw, slot_id, CKU_SO)
        return raw.token_info(slot_id).serial
    except (PKCS11Error, CryptokiError) as error:
        raise LabError(
            _("Building «{title}» failed: {error}").format(title=_(item.title), error=describe(error))
        ) from error


def _profile(
    session: Session, item: Scenario, ca: Callable[[], TrainingCA], key: rsa.RSAPrivateNumbers | None = None
) -> None:
    """A key pair (imported when one was made beside the build, else generated on the token) and, where the
    recipe says, its certificate from the training CA."""
    label = f"{item.label or 'KAZTOKEN'} signing key"
    if item.recipe.drop_key:
        # The certificate of a key that is gone: the key is made off the token and never written to it.
        public_key = (key or rsa_numbers()).public_numbers.public_key()
    elif key is None:
        public, _private = session.generate_keypair(KeyType.RSA, 2048, id=KEY_ID, label=label, store=True)
        modulus = int.from_bytes(public[Attribute.MODULUS], "big")
        exponent = int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big")
        public_key = rsa.RSAPublicNumbers(exponent, modulus).public_key()
    else:
        _import_pair(session, key, label)
        public_key = key.public_numbers.public_key()
    if item.recipe.certificate is None:
        return
    start, end = item.recipe.certificate
    now = datetime.now(UTC)
    cert = ca().issue(
        public_key,
        item.holder or item.label,
        not_before=now + timedelta(days=start, minutes=-1),
        not_after=now + timedelta(days=end),
    )
    session.create_object(sessions.certificate_template(cert, KEY_ID, f"{item.holder or item.label} (TRAINING)"))


def _wrong_login(raw: Cryptoki, slot_id: int, user_type: int) -> None:
    """One wrong PIN, on a session of our own that is closed again."""
    refusal = sessions.attempt_login(raw, slot_id, user_type, WRONG_PIN)
    if refusal is None:
        raise LabError(_("The token accepted a wrong PIN: no try was spent."))
    if refusal.rv not in (CKR_PIN_INCORRECT, CKR_PIN_LOCKED):
        raise refusal


# --- key pairs made off the token ---------------------------------------------------------------------------------


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def rsa_numbers() -> rsa.RSAPrivateNumbers:
    return _rsa_key().private_numbers()


def rsa_ints() -> tuple[int, ...]:
    """A new key in a worker process, handed back as plain numbers: neither a key nor its numbers object cross
    processes, and loading a key back from DER checks it again, which costs as much as making it."""
    numbers = rsa_numbers()
    public = numbers.public_numbers
    return (numbers.p, numbers.q, numbers.d, numbers.dmp1, numbers.dmq1, numbers.iqmp, public.e, public.n)


def from_ints(values: tuple[int, ...]) -> rsa.RSAPrivateNumbers:
    p, q, d, dmp1, dmq1, iqmp, e, n = values
    return rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, rsa.RSAPublicNumbers(e, n))


def _number(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def _import_pair(session: Session, private: rsa.RSAPrivateNumbers, label: str) -> None:
    """An RSA key pair written to the token: the private half sensitive and not extractable, as a generated one."""
    public = private.public_numbers
    common = {Attribute.KEY_TYPE: KeyType.RSA, Attribute.TOKEN: True, Attribute.ID: KEY_ID, Attribute.LABEL: label}
    session.create_object(
        {
            **common,
            Attribute.CLASS: ObjectClass.PUBLIC_KEY,
            Attribute.PRIVATE: False,
            Attribute.VERIFY: True,
            Attribute.MODULUS: _number(public.n),
            Attribute.PUBLIC_EXPONENT: _number(public.e),
        }
    )
    session.create_object(
        {
            **common,
            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.MODULUS: _number(public.n),
            Attribute.PUBLIC_EXPONENT: _number(public.e),
            Attribute.PRIVATE_EXPONENT: _number(private.d),
            Attribute.PRIME_1: _number(private.p),
            Attribute.PRIME_2: _number(private.q),
            Attribute.EXPONENT_1: _number(private.dmp1),
            Attribute.EXPONENT_2: _number(private.dmq1),
            Attribute.COEFFICIENT: _number(private.iqmp),
        }
    )
