"""Text forms of codes: strict unpadded Base32 and the Damm check digit.

Base32 (RFC 4648 alphabet, no padding) has no lower-case letters, so a decoder can fold case when
a keyboard-wedge scanner types under Caps Lock. Decoding is strict: the input, once upper-cased,
must be exactly what encoding the decoded bytes gives back; anything else (padding, whitespace,
non-zero unused bits, other characters) is refused, so one ticket has one spelling.
"""

from __future__ import annotations

import base64

B32_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
# Unpadded Base32 text lengths mod 8 that an integral number of bytes can produce.
_B32_VALID_TAILS = frozenset({0, 2, 4, 5, 7})


class TextDecodeError(ValueError):
    """The text is not the canonical spelling of any byte string."""


def b32encode(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=")


# RFC 4648 Base32 digits mapped onto the digits int(..., 32) reads (0-9, a-v).
_TO_INT32 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "0123456789abcdefghijklmnopqrstuv")


def b32decode_strict(text: str, max_len: int) -> bytes:
    """Decode unpadded Base32, folding case; refuse any non-canonical spelling.

    The text is read as one big base-32 number: the canonical spelling is the one whose unused
    low bits (5 * length - 8 * bytes of them) are zero, which is what re-encoding would give.
    """
    if len(text) > max_len:
        raise TextDecodeError(f"longer than {max_len} characters")
    if not text.isascii():
        raise TextDecodeError("non-ASCII characters")
    folded = text.upper()
    if not folded or not set(folded) <= B32_ALPHABET:
        raise TextDecodeError("characters outside the Base32 alphabet")
    if len(folded) % 8 not in _B32_VALID_TAILS:
        raise TextDecodeError("impossible Base32 length")
    value = int(folded.translate(_TO_INT32), 32)
    n_bytes = len(folded) * 5 // 8
    spare = len(folded) * 5 - n_bytes * 8
    if value & ((1 << spare) - 1):
        raise TextDecodeError("non-canonical Base32 (unused bits set)")
    return (value >> spare).to_bytes(n_bytes, "big")


# Damm's totally anti-symmetric quasigroup of order 10 (H. M. Damm, 2004). With it, one check
# digit detects every single-digit error and every adjacent transposition.
_DAMM = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)


def damm_interim(digits: str) -> int:
    interim = 0
    for ch in digits:
        interim = _DAMM[interim][ord(ch) - 48]
    return interim


def damm_check_digit(digits: str) -> str:
    """The digit to append to `digits` (ASCII 0-9 only) so that the whole passes damm_valid."""
    return str(damm_interim(digits))


def damm_valid(digits: str) -> bool:
    return damm_interim(digits) == 0
