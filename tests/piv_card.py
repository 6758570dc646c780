"""A small PIV card that plugs into vpcd (vsmartcard's virtual reader for pcscd), for OpenSC to read.

vpcd listens on a TCP port per reader; a card "is in the reader" while a program is connected to that port
and answers. The protocol is length-prefixed: two bytes of length (big-endian), then the data. vpcd sends a
one-byte control (power off/on, reset, "your ATR?") or a command APDU; the card answers the ATR request and
every APDU with a length-prefixed reply, and nothing to power and reset controls. Closing the connection
pulls the card out. Debian 12's own emulator (`vicc`) is broken, hence this one.

The card is a PIV card (NIST SP 800-73-4) as far as OpenSC's PIV driver needs: SELECT of the PIV application,
GET DATA of CHUID, CCC, discovery object and the PIV Authentication certificate (an EC key of its own, made
with `cryptography`), VERIFY with a retry counter (63Cx, then 6983 locked), CHANGE REFERENCE DATA and
RESET RETRY COUNTER with the PUK. `garbage=True` makes a card that answers nothing OpenSC understands.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PIV_AID = bytes.fromhex("A000000308000010000100")


def _atr(historical: bytes) -> bytes:
    """A T=1 ATR with these historical bytes and its check byte (XOR of everything after TS)."""
    body = bytes([0x80 | len(historical), 0x80, 0x01]) + historical
    check = 0
    for byte in body:
        check ^= byte
    return b"\x3b" + body + bytes([check])


# No historical bytes a driver would claim: OpenSC finds the PIV application by SELECT.
PIV_ATR = _atr(bytes(8))
GARBAGE_ATR = _atr(b"garbage!")

CTRL_OFF, CTRL_ON, CTRL_RESET, CTRL_ATR = 0, 1, 2, 4

SW_OK = b"\x90\x00"
SW_NOT_FOUND = b"\x6a\x82"
SW_WRONG_P1P2 = b"\x6a\x86"
SW_WRONG_DATA = b"\x6a\x80"
SW_INS_NOT_SUPPORTED = b"\x6d\x00"
SW_CLA_NOT_SUPPORTED = b"\x6e\x00"
SW_LOCKED = b"\x69\x83"
SW_NOT_ALLOWED = b"\x69\x82"

PIN_REF, PUK_REF = 0x80, 0x81
MAX_TRIES = 3


def tlv(tag: int, value: bytes) -> bytes:
    """BER-TLV with a one- or two-byte tag and a definite length."""
    tag_bytes = tag.to_bytes(2 if tag > 0xFF else 1, "big")
    size = len(value)
    if size < 0x80:
        length = bytes([size])
    elif size < 0x100:
        length = bytes([0x81, size])
    else:
        length = bytes([0x82]) + size.to_bytes(2, "big")
    return tag_bytes + length + value


def make_certificate(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.DER)


def _pin_field(value: bytes) -> bytes:
    """A PIV PIN reference field: the PIN, padded to 8 bytes with 0xFF."""
    return value.ljust(8, b"\xff")


@dataclass
class Counter:
    value: bytes
    tries_left: int = MAX_TRIES

    def check(self, candidate: bytes) -> bytes:
        """The status word for presenting `candidate`; a wrong one spends a try."""
        if self.tries_left == 0:
            return SW_LOCKED
        if candidate == _pin_field(self.value):
            self.tries_left = MAX_TRIES
            return SW_OK
        self.tries_left -= 1
        return SW_LOCKED if self.tries_left == 0 else bytes([0x63, 0xC0 | self.tries_left])

    def status(self) -> bytes:
        return SW_LOCKED if self.tries_left == 0 else bytes([0x63, 0xC0 | self.tries_left])


@dataclass
class PivCard:
    """The card's state and its answer to each APDU. Shared by every insertion of the same card."""

    pin: bytes = b"123456"
    puk: bytes = b"12345678"
    common_name: str = "PIV test card"
    garbage: bool = False
    guid: bytes = field(default_factory=lambda: uuid.uuid4().bytes)
    selected: bool = False
    verified: bool = False
    pending: bytes = b""  # the rest of a long answer, fetched by GET RESPONSE
    objects: dict[bytes, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pin_counter = Counter(self.pin)
        self.puk_counter = Counter(self.puk)
        self.key, self.certificate = make_certificate(self.common_name)
        fascn = bytes.fromhex("D4E739DA739CED39CE739D836858210842108421C84210C3EB")
        chuid = tlv(0x30, fascn) + tlv(0x34, self.guid) + tlv(0x35, b"20401231") + tlv(0x3E, b"") + tlv(0xFE, b"")
        ccc = (
            tlv(0xF0, b"\xa0\x00\x00\x01\x16\xff\x02" + self.guid[:14])
            + tlv(0xF1, b"\x21")
            + tlv(0xF2, b"\x21")
            + tlv(0xF3, b"")
            + tlv(0xF4, b"\x00")
            + tlv(0xF5, b"\x10")
            + tlv(0xF6, b"")
            + tlv(0xF7, b"")
            + tlv(0xFA, b"")
            + tlv(0xFB, b"")
            + tlv(0xFC, b"")
            + tlv(0xFD, b"")
            + tlv(0xFE, b"")
        )
        certificate = tlv(0x70, self.certificate) + tlv(0x71, b"\x00") + tlv(0xFE, b"")
        self.objects = {
            bytes.fromhex("5FC102"): tlv(0x53, chuid),
            bytes.fromhex("5FC107"): tlv(0x53, ccc),
            bytes.fromhex("5FC105"): tlv(0x53, certificate),
            # Discovery: the PIV AID, and "the PIV PIN is the one to use" (PIN usage policy 0x4000).
            bytes.fromhex("7E"): tlv(0x7E, tlv(0x4F, PIV_AID) + tlv(0x5F2F, b"\x40\x00")),
        }

    @property
    def atr(self) -> bytes:
        return GARBAGE_ATR if self.garbage else PIV_ATR

    def power_on(self) -> None:
        """A reset or a new insertion forgets the application and the PIN's verification."""
        self.selected = self.verified = False
        self.pending = b""

    def answer(self, apdu: bytes) -> bytes:
        if self.garbage:
            return SW_CLA_NOT_SUPPORTED
        if len(apdu) < 4:
            return SW_WRONG_DATA
        cla, ins, p1, p2 = apdu[:4]
        data = apdu[5 : 5 + apdu[4]] if len(apdu) > 5 else b""
        if cla & 0x10:  # command chaining: none of ours needs it
            return SW_INS_NOT_SUPPORTED
        if ins == 0xC0:
            return self._reply(self.pending)
        self.pending = b""
        if ins == 0xA4:
            return self._select(p1, data)
        if not self.selected:
            return SW_INS_NOT_SUPPORTED
        handlers = {0xCB: self._get_data, 0x20: self._verify, 0x24: self._change, 0x2C: self._reset_retry}
        handler = handlers.get(ins)
        return handler(p1, p2, data) if handler else SW_INS_NOT_SUPPORTED

    def _reply(self, payload: bytes) -> bytes:
        """Short APDUs only: more than 256 bytes go out in pieces, each announcing the rest (61xx)."""
        head, self.pending = payload[:256], payload[256:]
        if self.pending:
            return head + bytes([0x61, min(len(self.pending), 256) & 0xFF])
        return head + SW_OK

    def _select(self, p1: int, data: bytes) -> bytes:
        if p1 == 0x04 and data and PIV_AID.startswith(data):
            self.selected = True
            self.verified = False
            template = tlv(0x4F, PIV_AID[5:9]) + tlv(0x79, tlv(0x4F, PIV_AID[:5]))
            return self._reply(tlv(0x61, template))
        return SW_NOT_FOUND

    def _get_data(self, p1: int, p2: int, data: bytes) -> bytes:
        if (p1, p2) != (0x3F, 0xFF) or len(data) < 3 or data[0] != 0x5C:
            return SW_WRONG_P1P2
        found = self.objects.get(data[2 : 2 + data[1]])
        return self._reply(found) if found else SW_NOT_FOUND

    def _counter(self, p2: int) -> Counter | None:
        return {PIN_REF: self.pin_counter, PUK_REF: self.puk_counter}.get(p2)

    def _verify(self, p1: int, p2: int, data: bytes) -> bytes:
        counter = self._counter(p2)
        if counter is None:
            return SW_NOT_FOUND
        if p1 == 0xFF:  # forget the verification
            self.verified = False
            return SW_OK
        if not data:  # "how many tries are left?"
            if counter.tries_left and p2 == PIN_REF and self.verified:
                return SW_OK
            return counter.status()
        if len(data) != 8:
            return SW_WRONG_DATA
        status = counter.check(data)
        if p2 == PIN_REF:
            self.verified = status == SW_OK
        return status

    def _change(self, p1: int, p2: int, data: bytes) -> bytes:
        counter = self._counter(p2)
        if counter is None:
            return SW_NOT_FOUND
        if len(data) != 16:
            return SW_WRONG_DATA
        status = counter.check(data[:8])
        if status == SW_OK:
            counter.value = data[8:].rstrip(b"\xff")
        return status

    def _reset_retry(self, p1: int, p2: int, data: bytes) -> bytes:
        if p2 != PIN_REF:
            return SW_NOT_FOUND
        if len(data) != 16:
            return SW_WRONG_DATA
        status = self.puk_counter.check(data[:8])
        if status == SW_OK:
            self.pin_counter.value = data[8:].rstrip(b"\xff")
            self.pin_counter.tries_left = MAX_TRIES
        return status


class VirtualCardSlot:
    """A card in vpcd's reader at `port` while `insert()`ed; `remove()` pulls it out. Used as a context
    manager, the card is out again when the block ends, whatever happened in it."""

    def __init__(self, card: PivCard, port: int, host: str = "127.0.0.1") -> None:
        self.card = card
        self.address = (host, port)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def insert(self) -> None:
        assert self._socket is None, "already inserted"
        self._socket = socket.create_connection(self.address, timeout=10)
        self._socket.settimeout(None)
        self.card.power_on()
        self._thread = threading.Thread(target=self._serve, args=(self._socket,), daemon=True)
        self._thread.start()

    def remove(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> VirtualCardSlot:
        self.insert()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _serve(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                message = _receive(sock)
                if message is None:
                    return
                reply = self._handle(message)
                if reply is not None:
                    sock.sendall(struct.pack(">H", len(reply)) + reply)

    def _handle(self, message: bytes) -> bytes | None:
        if len(message) == 1:
            if message[0] == CTRL_ATR:
                return self.card.atr
            if message[0] in (CTRL_ON, CTRL_RESET):
                self.card.power_on()
            return None  # power and reset controls get no answer
        return self.card.answer(message)


def _receive(sock: socket.socket) -> bytes | None:
    header = _exactly(sock, 2)
    if header is None:
        return None
    return _exactly(sock, struct.unpack(">H", header)[0])


def _exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = b""
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return chunks
