"""Bad input (issue 2): random and mutated codes through the decoder and the service.

Properties:
- `edge.codes.parse_code` raises nothing but `CodeError` (with a reason from the closed set);
- `RedemptionService.validate` never raises on scanned text; it returns a Decision whose reason
  is an `edge.rules.Reason`, and it is a deny for anything that is not a valid code's spelling;
- the only other spellings of a valid code that are accepted are case foldings (Caps Lock), and
  those decode to the same canonical id; every other variant (non-canonical Base32, padding,
  whitespace, look-alike Unicode, oversized) is refused.
"""

from __future__ import annotations

import base64
import json
import secrets
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st

from edge.codes import (
    MAX_CODE_CHARS,
    CodeError,
    RotatingCode,
    ShortCode,
    SignedTicket,
    Ticket,
    display_rotating,
    parse_code,
    sign_ticket,
)
from edge.decision import Decision
from edge.rules import Reason
from edge.textcodec import b32encode, damm_check_digit
from tests.fixtures import SITE, BoxSetup, make_box

FUZZ = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
LANE = "counter"
B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
BASE32_KINDS = ("signed", "multi", "rotating", "rotating_ticket")
ALL_KINDS = (*BASE32_KINDS, "short")
# Reasons a decoder may give (the code could not even be identified).
DECODE_REASONS = {
    Reason.MALFORMED,
    Reason.BAD_SIGNATURE,
    Reason.UNKNOWN_KEY,
    Reason.HOLDER_REQUIRED,
    Reason.STALE_CODE,
    Reason.REPLAYED,
    Reason.UNKNOWN_CODE,
    Reason.RATE_LIMITED,
}


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoxSetup]:
    # A huge failure budget: thousands of bad numeric codes must not rate-limit the lane, so
    # each decision below is about the code itself.
    setup = make_box(
        tmp_path_factory.mktemp("fuzz"), policy={"short_code_max_failures": 10_000_000}
    )
    yield setup
    setup.close()


def current(box: BoxSetup, kind: str) -> str:
    """The valid text of a kind now (a rotating display code is regenerated: it is fresh-only)."""
    return box.rotating_at() if kind == "rotating" else box.codes[kind]


def parse_only_code_errors(text: str) -> object:
    try:
        return parse_code(text)
    except CodeError as err:
        assert err.reason in {r.value for r in Reason}, err.reason
        return err


def check_decision(box: BoxSetup, text: str) -> Decision:
    d = box.service.validate(text, LANE)
    assert isinstance(d, Decision)
    assert isinstance(d.reason, Reason)
    json.dumps(d.to_json(), ensure_ascii=False)  # what the CLI prints must serialise
    return d


def same_id(box: BoxSetup, kind: str, d: Decision) -> None:
    """A decision on a spelling of a valid code names that code's canonical id (a deny raised
    while decoding, e.g. holder_required, may carry no id at all, but never another one)."""
    if d.reason is Reason.HOLDER_REQUIRED:
        assert d.canonical_id in (None, box.canonical[kind]), d
    else:
        assert d.canonical_id == box.canonical[kind], d


def is_spelling_of(kind: str, original: str, text: str) -> bool:
    """Whether `text` is an accepted spelling of `original`: itself, or (Base32) a case folding."""
    if kind == "short":
        return text == original
    return text.isascii() and text.upper() == original


def assert_denied(box: BoxSetup, text: str) -> Decision:
    parse_only_code_errors(text)
    d = check_decision(box, text)
    assert not d.admit, f"admitted {text!r}: {d}"
    return d


# -- random input ---------------------------------------------------------------------------------


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=700),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=80),
        st.text(alphabet=B32 + B32.lower() + "=0189 \t\r\n-", max_size=600),
        st.text(alphabet=string.digits, max_size=24),
        st.text(
            alphabet="0123456789\uff10\uff11\uff12\u0660\u0661\u00b3\u00b2\u00b9",
            min_size=8,
            max_size=16,
        ),
    )
)
def test_random_text_is_refused_without_exceptions(box: BoxSetup, text: str) -> None:
    assert_denied(box, text)


@FUZZ
@given(
    raw=st.one_of(
        st.binary(min_size=1, max_size=330),
        st.binary(max_size=330).map(lambda b: b"\x11" + b),  # claims to be a signed ticket
        st.binary(max_size=330).map(lambda b: b"\x21" + b),  # claims to be a rotating code
        st.binary(max_size=8).map(lambda b: b"\x21\x00" + b),
        st.integers(0, 255).map(lambda t: bytes([t]) + secrets.token_bytes(120)),
    ),
    lower=st.booleans(),
)
def test_random_bytes_as_base32_are_refused(box: BoxSetup, raw: bytes, lower: bool) -> None:
    text = b32encode(raw)
    text = text.lower() if lower else text
    assume(len(text) <= MAX_CODE_CHARS + 20)
    d = assert_denied(box, text)
    if len(text) > MAX_CODE_CHARS:
        assert d.reason is Reason.MALFORMED


@FUZZ
@given(digits=st.text(alphabet=string.digits, min_size=7, max_size=17))
def test_numeric_codes_with_a_valid_check_digit(box: BoxSetup, digits: str) -> None:
    code = digits + damm_check_digit(digits)
    assume(code not in {s.code for s in box.short_specs})
    d = assert_denied(box, code)
    if 8 <= len(code) <= 16:
        assert d.reason is Reason.UNKNOWN_CODE
    else:
        assert d.reason is Reason.MALFORMED


# -- mutated valid codes --------------------------------------------------------------------------

# Look-alikes and oddities: Cyrillic A/O/S, long s and dotless i (upper() gives S and I), the ff
# ligature, zero-width space, BOM, e-acute, fullwidth 1, Arabic-Indic 3, superscript 2, a lone
# surrogate (not encodable as UTF-8).
_ODD_CHARS = st.sampled_from(
    [
        *(B32 + B32.lower() + "0189=-_ \t\n\r\x00"),
        "\u0410",
        "\u041e",
        "\u0405",
        "\u017f",
        "\u0131",
        "\ufb00",
        "\u200b",
        "\ufeff",
        "\u00e9",
        "\uff11",
        "\u0663",
        "\u00b2",
        "\ud800",
    ]
)


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    ops = draw(
        st.lists(
            st.sampled_from(
                [
                    "replace",
                    "delete",
                    "insert",
                    "swap",
                    "truncate",
                    "extend",
                    "double",
                    "case",
                    "digit",
                ]
            ),
            min_size=1,
            max_size=4,
        )
    )
    s = list(text)
    for op in ops:
        n = len(s)
        i = draw(st.integers(0, max(n - 1, 0)))
        if op == "replace" and n:
            s[i] = draw(_ODD_CHARS)
        elif op == "delete" and n:
            del s[i]
        elif op == "insert":
            s.insert(i, draw(_ODD_CHARS))
        elif op == "swap" and n > 1:
            j = min(i + 1, n - 1)
            s[i], s[j] = s[j], s[i]
        elif op == "truncate":
            s = s[:i]
        elif op == "extend":
            s += list(draw(st.text(alphabet=B32 + string.digits, min_size=1, max_size=40)))
        elif op == "double":
            s = s + s
        elif op == "case" and n:
            s[i] = s[i].swapcase()
        elif op == "digit" and n:
            s[i] = draw(st.sampled_from(string.digits))
    return "".join(s)


@FUZZ
@given(data=st.data(), kind=st.sampled_from(ALL_KINDS))
def test_mutated_codes_are_refused_unless_a_case_folding(
    box: BoxSetup, data: st.DataObject, kind: str
) -> None:
    original = current(box, kind)
    text = data.draw(mutated(original), label="mutated")
    parse_only_code_errors(text)
    d = check_decision(box, text)
    if is_spelling_of(kind, original, text):
        expected = Reason.HOLDER_REQUIRED if kind == "rotating_ticket" else Reason.OK
        assert d.reason is expected, d
        same_id(box, kind, d)
    else:
        assert not d.admit, f"admitted a mutated {kind} code {text!r}: {d}"


@FUZZ
@given(data=st.data(), kind=st.sampled_from(BASE32_KINDS))
def test_any_case_mix_decodes_to_the_same_canonical_id(
    box: BoxSetup, data: st.DataObject, kind: str
) -> None:
    original = current(box, kind)
    flips = data.draw(st.lists(st.booleans(), min_size=len(original), max_size=len(original)))
    text = "".join(c.lower() if f else c for c, f in zip(original, flips, strict=True))
    parsed = parse_code(text)
    signed = parsed.signed if isinstance(parsed, RotatingCode) else parsed
    assert isinstance(signed, SignedTicket)
    assert signed.ticket.canonical_id == box.canonical[kind]
    d = check_decision(box, text)
    same_id(box, kind, d)
    assert d.reason is (Reason.HOLDER_REQUIRED if kind == "rotating_ticket" else Reason.OK)


# -- structurally valid tickets -------------------------------------------------------------------

_ident = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=32)


@st.composite
def tickets(draw: st.DrawFn) -> Ticket:
    vf = draw(st.integers(0, 2**32 - 2))
    slot = None
    if draw(st.booleans()):
        s0 = draw(st.integers(0, 2**32 - 2))
        slot = (s0, draw(st.integers(s0 + 1, 2**32 - 1)))
    return Ticket(
        kid=draw(st.sampled_from([0, 1, 2, 3, 2**32 - 1])),
        ticket_id=draw(st.binary(min_size=16, max_size=16)),
        site=draw(st.one_of(st.just(SITE), _ident)),
        product=draw(st.one_of(st.just("adult"), _ident)),
        valid_from=vf,
        valid_until=draw(st.integers(vf + 1, 2**32 - 1)),
        entries=draw(st.integers(0, 0xFFFF)),
        persons=draw(st.integers(1, 255)),
        slot=slot,
        zones=tuple(draw(st.lists(_ident, max_size=3, unique=True))),
        holder_key=draw(
            st.one_of(
                st.none(),
                st.binary(min_size=32, max_size=32).map(
                    lambda seed: (
                        Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
                    )
                ),
            )
        ),
    )


@FUZZ
@given(ticket=tickets(), own_key=st.booleans())
def test_structured_tickets_round_trip_and_never_raise(
    box: BoxSetup, ticket: Ticket, own_key: bool
) -> None:
    """Any ticket the issuer can sign parses back to itself (when it fits the length cap); signed
    by a stranger's key it is refused; signed by the hub it gets some reason, never an exception."""
    try:
        if own_key and ticket.kid in (1, 2):
            text = box.hub.mint_ticket(ticket)
        else:
            text = sign_ticket(ticket, Ed25519PrivateKey.generate())
    except ValueError:
        # The issuer may refuse a ticket no box could read (too long with its display code).
        reject()
    assume(len(text) <= MAX_CODE_CHARS)  # longer ones: test_issuer_and_box_agree_on_the_length_cap
    parsed = parse_code(text)
    assert isinstance(parsed, SignedTicket) and parsed.ticket == ticket
    assert parse_code(text.lower()) == parsed
    d = check_decision(box, text)
    if not (own_key and ticket.kid in (1, 2)):
        assert d.reason in {Reason.BAD_SIGNATURE, Reason.UNKNOWN_KEY}, d


# -- the named kinds of bad input -----------------------------------------------------------------


@pytest.mark.parametrize("kind", BASE32_KINDS)
def test_lower_case_is_caps_lock_folding(box: BoxSetup, kind: str) -> None:
    original = current(box, kind)
    for text in (original.lower(), original.swapcase(), original[:7].lower() + original[7:]):
        parsed = parse_code(text)
        assert parsed == parse_code(original)
        d = check_decision(box, text)
        same_id(box, kind, d)
        assert d.reason is (Reason.HOLDER_REQUIRED if kind == "rotating_ticket" else Reason.OK)


def _lenient_b32(text: str) -> bytes:
    return base64.b32decode(text + "=" * (-len(text) % 8))


@pytest.mark.parametrize("kind", BASE32_KINDS)
def test_non_canonical_base32_spellings_are_malformed(box: BoxSetup, kind: str) -> None:
    original = current(box, kind)
    raw = _lenient_b32(original)
    # Same bytes, other text: a last character that differs only in the unused bits.
    spare = [
        original[:-1] + c
        for c in B32
        if c != original[-1] and _lenient_b32(original[:-1] + c) == raw
    ]
    assert len(spare) == {0: 0, 2: 3, 4: 15, 5: 1, 7: 7}[len(original) % 8]
    padded = original + "=" * (-len(original) % 8)
    variants = [*spare, *(s.lower() for s in spare), original + "========"]
    if padded != original:
        variants.append(padded)
    for text in variants:
        d = assert_denied(box, text)
        assert d.reason is Reason.MALFORMED, (text, d)
        with pytest.raises(CodeError):
            parse_code(text)


def test_non_canonical_spelling_exists_for_some_kind(box: BoxSetup) -> None:
    """Guard: the test above really exercised unused-bit spellings (not only 0-mod-8 lengths)."""
    lengths = {len(current(box, k)) % 8 for k in BASE32_KINDS}
    assert lengths - {0}, lengths


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_whitespace_padded_codes(box: BoxSetup, kind: str) -> None:
    """A scanner's suffix (CR, LF, tab) or stray spaces: refused as malformed under strict
    decoding, or (if the decoder were to strip them) the same canonical id; never anything else."""
    original = current(box, kind)
    mid = len(original) // 2
    for text in (
        " " + original,
        original + " ",
        original + "\n",
        original + "\r\n",
        "\t" + original,
        original + "\x00",
        original[:mid] + " " + original[mid:],
        original[:mid] + "-" + original[mid:],
        "\u3000" + original,
    ):
        parse_only_code_errors(text)
        d = check_decision(box, text)
        if d.admit or d.reason is Reason.HOLDER_REQUIRED:
            same_id(box, kind, d)
        else:
            assert d.reason is Reason.MALFORMED, (text, d)


LOOKALIKES = {
    "A": "\u0410",
    "O": "\u041e",
    "S": "\u017f",
    "I": "\u0131",
    "E": "\u0415",
    "K": "\u212a",
    "2": "\uff12",
}


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_non_ascii_lookalikes_are_malformed(box: BoxSetup, kind: str) -> None:
    """Unicode that upper-cases or normalises to ASCII (ſ -> S, ı -> I, K Kelvin -> K) must not
    fold into a valid code; fullwidth and Arabic-Indic digits are not short codes."""
    original = current(box, kind)
    variants = []
    for ascii_char, other in LOOKALIKES.items():
        i = original.find(ascii_char)
        if i >= 0:
            variants.append(original[:i] + other + original[i + 1 :])
    fullwidth = "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in original)
    arabic = "".join(chr(ord(c) - 48 + 0x660) if c.isdigit() else c for c in original)
    variants += [
        fullwidth,
        arabic,
        "\ufeff" + original,
        original + "\u200b",
        original + "é",
        original.lower().replace("s", "ſ"),
        original.lower().replace("i", "ı"),
    ]
    variants = [v for v in variants if v != original]
    assert variants
    for text in variants:
        d = assert_denied(box, text)
        assert d.reason is Reason.MALFORMED, (text, d)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\n",
        "=",
        "A",
        "1",
        "0" * 7,
        "0" * 17,
        "A" * (MAX_CODE_CHARS + 1),
        "1" * (MAX_CODE_CHARS + 1),
        "A" * MAX_CODE_CHARS,
        "é" * (MAX_CODE_CHARS + 1),
        "7" * 10_000,
        "Q" * 100_000,
        "\x00" * 600,
    ],
)
def test_empty_tiny_and_oversized_input(box: BoxSetup, text: str) -> None:
    d = assert_denied(box, text)
    assert d.reason is Reason.MALFORMED
    with pytest.raises(CodeError):
        parse_code(text)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_valid_code_with_oversize_tail(box: BoxSetup, kind: str) -> None:
    original = current(box, kind)
    filler = "A" if kind != "short" else "0"
    text = original + filler * (MAX_CODE_CHARS + 1 - len(original))
    assert len(text) == MAX_CODE_CHARS + 1
    d = assert_denied(box, text)
    assert d.reason is Reason.MALFORMED


def test_short_code_parses_and_valid_codes_are_admitted(box: BoxSetup) -> None:
    """Baseline for the tests above: each valid code, as minted, is what the tests say it is."""
    assert isinstance(parse_code(box.codes["short"]), ShortCode)
    for kind in ALL_KINDS:
        d = check_decision(box, current(box, kind))
        expected = Reason.HOLDER_REQUIRED if kind == "rotating_ticket" else Reason.OK
        assert d.reason is expected, (kind, d)
        same_id(box, kind, d)


def test_issuer_and_box_agree_on_the_length_cap(box: BoxSetup, tmp_path: Path) -> None:
    """Every ticket the issuer signs must be decodable by the box, also as a rotating display
    code: either signing refuses an over-long ticket, or the box reads back what was signed.

    A holder-bound ticket with a slot, 32-character site and product names and two 32-character
    zones is a legal Ticket (fields within their documented limits), but its rotating display
    code is longer than MAX_CODE_CHARS, so the phone's code is refused as `malformed` at every gate.
    """
    holder = Ed25519PrivateKey.generate()
    ticket = Ticket(
        kid=1,
        ticket_id=secrets.token_bytes(16),
        site="s" * 32,
        product="p" * 32,
        valid_from=1_700_000_000,
        valid_until=1_900_000_000,
        slot=(1_800_000_000, 1_800_003_600),
        zones=("z" * 32, "y" * 32),
        holder_key=holder.public_key().public_bytes_raw(),
    )
    try:
        text = box.hub.mint_ticket(ticket)
        shown = display_rotating(text, holder, 1_800_000_000)
    except ValueError:
        return  # the issuer refused to sign what no box could read: acceptable
    assert parse_code(text).ticket == ticket  # type: ignore[union-attr]
    assert len(shown) <= MAX_CODE_CHARS, (
        f"issuer signed a ticket whose display code has {len(shown)} characters; "
        f"the box refuses anything over {MAX_CODE_CHARS}"
    )
    assert isinstance(parse_code(shown), RotatingCode)
