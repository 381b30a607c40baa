"""Code formats: signed tickets, holder-bound rotating display codes, short numeric codes.

Byte layouts are documented in docs/codes.md with test vectors; this module is the reference.
Parsing is strict: a payload must re-serialise to the identical bytes, so a ticket has exactly one
encoding, and every check keys on `canonical_id`, never on the scanned text.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.textcodec import TextDecodeError, b32decode_strict, b32encode, damm_valid

TAG_TICKET_V1 = 0x11
TAG_ROTATING_V1 = 0x21
KNOWN_KINDS = {0x10: "signed ticket", 0x20: "rotating code"}

CTX_TICKET = b"EDGE-TKT1"
CTX_ROTATING = b"EDGE-ROT1"
CTX_SHORT = b"EDGE-SC1"

MAX_CODE_CHARS = 512
MAX_RAW_BYTES = MAX_CODE_CHARS * 5 // 8  # 320: the most bytes that fit in the text cap
ROTATING_OVERHEAD = 1 + 2 + 4 + 64  # tag, ticket length, display time, holder signature
SHORT_MIN_DIGITS = 8
SHORT_MAX_DIGITS = 16
SIG_LEN = 64
ID_LEN = 16
MAX_ZONES = 8
_IDENT = re.compile(r"[A-Za-z0-9._-]{1,32}")

_FLAG_SLOT = 0x01
_FLAG_ZONES = 0x02
_FLAG_HOLDER = 0x04
_FLAGS_KNOWN = _FLAG_SLOT | _FLAG_ZONES | _FLAG_HOLDER


class CodeKind(StrEnum):
    SIGNED = "signed"
    ROTATING = "rotating"
    SHORT = "short"


class CodeError(ValueError):
    """A code cannot be decoded. `reason` is a decision reason (malformed, bad_signature...)."""

    def __init__(self, reason: str, detail: str, canonical_id: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.canonical_id = canonical_id  # set once the issuer's signature has verified
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class Ticket:
    """The signed claims of a ticket. `entries == 0` means unlimited entries."""

    kid: int
    ticket_id: bytes
    site: str
    product: str
    valid_from: int
    valid_until: int
    entries: int = 1
    persons: int = 1
    slot: tuple[int, int] | None = None
    zones: tuple[str, ...] = ()
    holder_key: bytes | None = None

    @property
    def canonical_id(self) -> str:
        return self.ticket_id.hex()

    def payload(self) -> bytes:
        """Serialise the claims (the bytes the issuer signs, after CTX_TICKET)."""
        _check_ticket_fields(self)
        flags = (
            (_FLAG_SLOT if self.slot else 0)
            | (_FLAG_ZONES if self.zones else 0)
            | (_FLAG_HOLDER if self.holder_key else 0)
        )
        out = bytearray(struct.pack(">BBI", TAG_TICKET_V1, flags, self.kid))
        out += self.ticket_id
        out += _short_str(self.site) + _short_str(self.product)
        out += struct.pack(">II", self.valid_from, self.valid_until)
        if self.slot:
            out += struct.pack(">II", *self.slot)
        out += struct.pack(">HB", self.entries, self.persons)
        if self.zones:
            out += bytes([len(self.zones)]) + b"".join(_short_str(z) for z in self.zones)
        if self.holder_key:
            out += self.holder_key
        return bytes(out)


@dataclass(frozen=True)
class SignedTicket:
    ticket: Ticket
    signature: bytes
    raw: bytes = field(repr=False)

    @property
    def signed_message(self) -> bytes:
        return CTX_TICKET + self.raw[:-SIG_LEN]


@dataclass(frozen=True)
class RotatingCode:
    signed: SignedTicket
    shown_at: int
    holder_signature: bytes

    @property
    def holder_message(self) -> bytes:
        return rotating_message(self.signed.ticket.ticket_id, self.shown_at)


@dataclass(frozen=True)
class ShortCode:
    digits: str


Parsed = SignedTicket | RotatingCode | ShortCode


def _short_str(value: str) -> bytes:
    data = value.encode("ascii")
    return bytes([len(data)]) + data


def _check_ticket_fields(t: Ticket) -> None:
    problems = []
    if not 0 <= t.kid <= 0xFFFFFFFF:
        problems.append("kid out of range")
    if len(t.ticket_id) != ID_LEN:
        problems.append("ticket id must be 16 bytes")
    for name, value in (("site", t.site), ("product", t.product), *(("zone", z) for z in t.zones)):
        if not _IDENT.fullmatch(value):
            problems.append(f"{name} {value!r} must be 1-32 of A-Z a-z 0-9 . _ -")
    if not 0 <= t.valid_from < t.valid_until <= 0xFFFFFFFF:
        problems.append("validity window must satisfy 0 <= from < until < 2^32")
    if t.slot and not (0 <= t.slot[0] < t.slot[1] <= 0xFFFFFFFF):
        problems.append("slot must satisfy start < end")
    if not 0 <= t.entries <= 0xFFFF:
        problems.append("entries must be 0 (unlimited) to 65535")
    if not 1 <= t.persons <= 255:
        problems.append("persons must be 1 to 255")
    if len(t.zones) > MAX_ZONES or len(set(t.zones)) != len(t.zones):
        problems.append(f"at most {MAX_ZONES} distinct zones")
    if t.holder_key is not None and (len(t.holder_key) != 32 or is_weak_key(t.holder_key)):
        problems.append("holder key must be a 32-byte Ed25519 public key of large order")
    if problems:
        raise ValueError("; ".join(problems))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CodeError("malformed", "payload truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def short_str(self) -> str:
        (n,) = self.unpack(">B")
        try:
            return self.take(n).decode("ascii")
        except UnicodeDecodeError as err:
            raise CodeError("malformed", "non-ASCII identifier") from err


def _parse_ticket(r: _Reader) -> Ticket:
    tag, flags, kid = r.unpack(">BBI")
    if tag != TAG_TICKET_V1:
        raise CodeError("malformed", f"unsupported ticket format 0x{tag:02x}")
    if flags & ~_FLAGS_KNOWN:
        raise CodeError("malformed", "unknown flag bits")
    ticket_id = r.take(ID_LEN)
    site, product = r.short_str(), r.short_str()
    valid_from, valid_until = r.unpack(">II")
    slot = r.unpack(">II") if flags & _FLAG_SLOT else None
    entries, persons = r.unpack(">HB")
    zones: tuple[str, ...] = ()
    if flags & _FLAG_ZONES:
        (count,) = r.unpack(">B")
        zones = tuple(r.short_str() for _ in range(count))
        if not zones:
            raise CodeError("malformed", "zone flag set with no zones")
    holder = r.take(32) if flags & _FLAG_HOLDER else None
    ticket = Ticket(
        kid=kid,
        ticket_id=ticket_id,
        site=site,
        product=product,
        valid_from=valid_from,
        valid_until=valid_until,
        entries=entries,
        persons=persons,
        slot=(slot[0], slot[1]) if slot else None,
        zones=zones,
        holder_key=holder,
    )
    try:
        _check_ticket_fields(ticket)
    except ValueError as err:
        raise CodeError("malformed", str(err)) from err
    return ticket


def _parse_signed(raw: bytes) -> SignedTicket:
    if len(raw) <= SIG_LEN:
        raise CodeError("malformed", "too short for a signed ticket")
    r = _Reader(raw[:-SIG_LEN])
    ticket = _parse_ticket(r)
    if r.pos != len(r.data) or ticket.payload() != r.data:
        raise CodeError("malformed", "payload is not in canonical form")
    return SignedTicket(ticket=ticket, signature=raw[-SIG_LEN:], raw=raw)


def parse_code(text: str) -> Parsed:
    """Decode scanned text into a code object (no signature checks). Raises CodeError."""
    if len(text) > MAX_CODE_CHARS:
        raise CodeError("malformed", f"longer than {MAX_CODE_CHARS} characters")
    if text.isascii() and text.isdigit():
        if not SHORT_MIN_DIGITS <= len(text) <= SHORT_MAX_DIGITS:
            raise CodeError(
                "malformed", f"numeric codes have {SHORT_MIN_DIGITS}-{SHORT_MAX_DIGITS} digits"
            )
        if not damm_valid(text):
            raise CodeError("malformed", "check digit does not match (typing error?)")
        return ShortCode(text)
    try:
        raw = b32decode_strict(text, MAX_CODE_CHARS)
    except TextDecodeError as err:
        raise CodeError("malformed", str(err)) from err
    tag = raw[0]
    if tag == TAG_TICKET_V1:
        return _parse_signed(raw)
    if tag == TAG_ROTATING_V1:
        return _parse_rotating(raw)
    kind = KNOWN_KINDS.get(tag & 0xF0)
    if kind:
        raise CodeError("malformed", f"unsupported {kind} version {tag & 0x0F}")
    raise CodeError("malformed", "not a code this gateway knows")


def _parse_rotating(raw: bytes) -> RotatingCode:
    r = _Reader(raw)
    _tag, ticket_len = r.unpack(">BH")
    signed = _parse_signed(r.take(ticket_len))
    (shown_at,) = r.unpack(">I")
    holder_sig = r.take(SIG_LEN)
    if r.pos != len(raw):
        raise CodeError("malformed", "trailing bytes after the holder signature")
    if signed.ticket.holder_key is None:
        raise CodeError("malformed", "rotating code around a ticket with no holder key")
    return RotatingCode(signed=signed, shown_at=shown_at, holder_signature=holder_sig)


def rotating_message(ticket_id: bytes, shown_at: int) -> bytes:
    return CTX_ROTATING + ticket_id + struct.pack(">I", shown_at)


def verify_ed25519(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def sign_ticket(ticket: Ticket, key: Ed25519PrivateKey) -> str:
    """Issuer side: the ticket's text form. Refuses a ticket no box could read back."""
    payload = ticket.payload()
    raw_len = len(payload) + SIG_LEN + (ROTATING_OVERHEAD if ticket.holder_key else 0)
    if raw_len > MAX_RAW_BYTES:
        raise ValueError(
            f"ticket too long: {raw_len} bytes over the {MAX_RAW_BYTES}-byte code limit "
            "(shorten site, product or zone ids)"
        )
    return b32encode(payload + key.sign(CTX_TICKET + payload))


def display_rotating(ticket_text: str, holder_key: Ed25519PrivateKey, shown_at: int) -> str:
    """Phone side: the code to show at `shown_at` (unix seconds) for a holder-bound ticket."""
    signed = parse_code(ticket_text)
    if not isinstance(signed, SignedTicket) or signed.ticket.holder_key is None:
        raise ValueError("not a holder-bound signed ticket")
    sig = holder_key.sign(rotating_message(signed.ticket.ticket_id, shown_at))
    raw = struct.pack(">BH", TAG_ROTATING_V1, len(signed.raw)) + signed.raw
    return b32encode(raw + struct.pack(">I", shown_at) + sig)


# Ed25519 field arithmetic, only to refuse small-order public keys: with such a key a signature
# (R = identity, S = 0) verifies every message, and OpenSSL does not refuse them.
_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _decode_point(raw: bytes) -> tuple[int, int] | None:
    """RFC 8032 5.1.3 point decoding (one exponentiation)."""
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    if y >= _P:
        return None
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    vxx = v * x * x % _P
    if vxx != u:
        if vxx != _P - u:
            return None
        x = x * _SQRT_M1 % _P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


@functools.lru_cache(maxsize=4096)
def is_weak_key(raw: bytes) -> bool:
    """True for encodings that are not points, or points of small order (8P = identity)."""
    pt = _decode_point(raw)
    if pt is None:
        return True
    x, y, z = pt[0], pt[1], 1
    for _ in range(3):  # projective doubling on -x^2 + y^2 = 1 + d x^2 y^2 (dbl-2008-bbjlp)
        b, c, d = (x + y) ** 2 % _P, x * x % _P, y * y % _P
        f = (d - c) % _P
        j = (f - 2 * z * z) % _P
        x, y, z = (b - c - d) * j % _P, f * (-c - d) % _P, f * j % _P
    return x == 0 and y == z


def short_code_hash(site_key: bytes, digits: str) -> bytes:
    """Keyed hash under which a short code is stored in the cache (never the code itself)."""
    return hmac.new(site_key, CTX_SHORT + digits.encode("ascii"), hashlib.sha256).digest()[:16]


def code_fingerprint(text: str) -> str:
    """Tag for logs (never log whole codes). A numeric code gets none: its space is small
    enough that any unkeyed hash of it could be reversed."""
    if text.isascii() and text.isdigit():
        return f"digits:{len(text)}"
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:10]
