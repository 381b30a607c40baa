"""Tampering suite (issue 2, "Bad input"): every byte of a valid code of each kind, and of a
bundle, altered in turn; each altered copy is refused and nothing else changes.

Codes: the raw bytes behind the Base32 text are decoded strictly, one byte is changed (every bit
position, and all bits at once) and the bytes are encoded again, so what reaches the box is a
canonical spelling of different bytes. A tampered code may only be refused by the decoder or a
signature check: a rule-level reason (expired, already_used...) would mean the forgery got past
the signature. Short codes: every digit changed to every other digit is caught by the Damm check
digit (malformed), as is every adjacent transposition of distinct digits.

Bundles: each byte of a small snapshot and of a small delta is changed, the copy is imported with
CacheStore.import_file and refused with a reason from BUNDLE_REASONS, and the active cache (file,
seq, row counts, meta) is exactly what it was; so is the cache directory (no orphan files).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import sqlite3
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge import bundle as fmt
from edge.cache import CacheStore
from edge.codes import CodeError, parse_code
from edge.errors import BundleRefused
from edge.rules import Reason
from edge.textcodec import b32decode_strict, b32encode
from sync.hub.issuer import BundleContent
from tests.fixtures import SITE, BoxSetup, make_box, short_code, short_spec

LANE = "counter"
CODE_REFUSALS = {
    Reason.MALFORMED,
    Reason.BAD_SIGNATURE,
    Reason.UNKNOWN_KEY,
    Reason.HOLDER_REQUIRED,
    Reason.STALE_CODE,
    Reason.REPLAYED,
}
BIT_MASKS = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xFF)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoxSetup]:
    setup = make_box(
        tmp_path_factory.mktemp("tamper"), policy={"short_code_max_failures": 10_000_000}
    )
    yield setup
    setup.close()


def flipped(raw: bytes, i: int, mask: int) -> bytes:
    b = bytearray(raw)
    b[i] ^= mask
    return bytes(b)


# -- codes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["signed", "multi", "rotating", "rotating_ticket"])
def test_every_byte_of_a_base32_code_flipped_is_refused(box: BoxSetup, kind: str) -> None:
    text = box.rotating_at() if kind == "rotating" else box.codes[kind]
    good = box.service.validate(text, LANE)
    expected_good = Reason.HOLDER_REQUIRED if kind == "rotating_ticket" else Reason.OK
    assert good.reason is expected_good, good
    raw = b32decode_strict(text, 10_000)
    seen: dict[Reason, int] = {}
    for i in range(len(raw)):
        for mask in BIT_MASKS:
            tampered = b32encode(flipped(raw, i, mask))
            assert tampered != text
            with contextlib.suppress(CodeError):  # decoding may succeed; it must not crash
                parse_code(tampered)
            d = box.service.validate(tampered, LANE)
            assert not d.admit, f"{kind}: byte {i} ^ {mask:#04x} admitted: {d}"
            assert d.reason in CODE_REFUSALS, f"{kind}: byte {i} ^ {mask:#04x} -> {d}"
            seen[d.reason] = seen.get(d.reason, 0) + 1
    # Both the structure checks and the signature checks were reached.
    assert Reason.MALFORMED in seen and Reason.BAD_SIGNATURE in seen, seen
    # The original still works: the suite did not just break the box.
    assert box.service.validate(text, LANE).reason is expected_good


def test_every_digit_of_a_short_code_changed_is_refused(box: BoxSetup) -> None:
    code = box.codes["short"]
    assert box.service.validate(code, LANE).admit
    variants = 0
    for i, digit in enumerate(code):
        for other in "0123456789":
            if other == digit:
                continue
            tampered = code[:i] + other + code[i + 1 :]
            with pytest.raises(CodeError) as err:
                parse_code(tampered)
            assert err.value.reason == "malformed"
            d = box.service.validate(tampered, LANE)
            assert not d.admit and d.reason is Reason.MALFORMED, (tampered, d)
            variants += 1
    assert variants == 9 * len(code)
    for i in range(len(code) - 1):  # Damm also catches every adjacent transposition
        if code[i] == code[i + 1]:
            continue
        swapped = code[:i] + code[i + 1] + code[i] + code[i + 2 :]
        d = box.service.validate(swapped, LANE)
        assert not d.admit and d.reason is Reason.MALFORMED, (swapped, d)
    # Dropping or doubling a digit still gives a numeric string; refused too.
    for i in range(len(code)):
        for tampered in (code[:i] + code[i + 1 :], code[:i] + code[i] + code[i:]):
            assert not box.service.validate(tampered, LANE).admit, tampered
    assert box.service.validate(code, LANE).admit


# -- bundles --------------------------------------------------------------------------------------


def cache_state(store: CacheStore) -> tuple[object, ...]:
    """The active cache as a reader sees it: which file, its seq, row counts, a digest of meta."""
    path = store.active_path()
    assert path is not None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        meta = conn.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
        seq = dict(meta)["seq"]
        counts = tuple(
            conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("short_codes", "revoked", "blocked", "used", "keys", "retired")
        )
        digest = hashlib.sha256(repr(meta).encode()).hexdigest()
    finally:
        conn.close()
    files = tuple(
        sorted(p.name for p in store.dir.iterdir() if not p.name.endswith(("-wal", "-shm")))
    )
    return path.name, seq, counts, digest, files


@pytest.fixture
def bundles(tmp_path: Path) -> Iterator[tuple[BoxSetup, Path, Path]]:
    """A box with snapshot seq 1 active, and two small signed bundles that apply on top of it:
    a delta (seq 2, base 1) and a snapshot (seq 3)."""
    setup = make_box(tmp_path)
    now = int(time.time())
    products = [
        {"id": "adult", "name": "Adult"},
        {"id": "child", "name": "儿童"},
        {"id": "senior", "name": "Senior"},
    ]
    lst = {"id": "default", "name": "Gate", "products": ["adult", "child", "senior"]}
    specs = [
        short_spec(short_code(9100 + i), now, product=p)
        for i, p in enumerate(("adult", "child", "senior"))
    ]
    revs = [secrets.token_bytes(16) for _ in range(2)]
    delta = tmp_path / "delta.bin"
    setup.hub.write_bundle(
        SITE,
        delta,
        BundleContent(products=products, lists=[lst], short_codes=specs, revocations=revs),
        snapshot=False,
    )
    snap = tmp_path / "snap.bin"
    setup.hub.write_bundle(
        SITE,
        snap,
        BundleContent(products=products, lists=[lst], short_codes=specs, revocations=revs),
        snapshot=True,
    )
    yield setup, delta, snap
    setup.close()


def import_refused(store: CacheStore, path: Path, before: tuple[object, ...], what: str) -> str:
    try:
        result = store.import_file(path, time.time())
    except BundleRefused as err:
        assert err.reason in fmt.BUNDLE_REASONS, f"{what}: reason {err.reason!r} not in the set"
        after = cache_state(store)
        assert after == before, f"{what}: active cache changed by a refused bundle"
        return err.reason
    raise AssertionError(f"{what}: tampered bundle was accepted: {result}")


@pytest.mark.parametrize("which", ["delta", "snapshot"])
def test_every_byte_of_a_bundle_flipped_is_refused(
    bundles: tuple[BoxSetup, Path, Path], which: str, tmp_path: Path
) -> None:
    setup, delta, snap = bundles
    data = (delta if which == "delta" else snap).read_bytes()
    assert len(data) < 3000, len(data)  # small enough to try every byte
    store = setup.service.cache
    before = cache_state(store)
    assert before[1] == "1"
    target = tmp_path / "tampered.bin"
    reasons: dict[str, int] = {}
    for i in range(len(data)):
        for mask in (0xFF, 0x01):
            target.write_bytes(flipped(data, i, mask))
            reason = import_refused(store, target, before, f"{which} byte {i} ^ {mask:#04x}")
            reasons[reason] = reasons.get(reason, 0) + 1
    # The suite reached the signature check, the framing checks and the header checks.
    assert {"bad_signature", "corrupted"} <= set(reasons), reasons
    # The untouched bundle is accepted afterwards: the refusals were about the bytes.
    result = store.import_file(delta if which == "delta" else snap, time.time())
    assert result.seq == (2 if which == "delta" else 3)
    assert cache_state(store)[1] == str(result.seq)


@pytest.mark.parametrize("which", ["delta", "snapshot"])
def test_truncated_bundles_are_refused(
    bundles: tuple[BoxSetup, Path, Path], which: str, tmp_path: Path
) -> None:
    setup, delta, snap = bundles
    data = (delta if which == "delta" else snap).read_bytes()
    store = setup.service.cache
    before = cache_state(store)
    target = tmp_path / "cut.bin"
    offsets = [*range(0, len(data), 7), len(data) - 1, len(data) - 64, len(data) - 69]
    for n in offsets:
        target.write_bytes(data[:n])
        reason = import_refused(store, target, before, f"{which} cut at {n}/{len(data)}")
        assert reason in ("truncated", "corrupted"), (n, reason)
    # Bytes appended after the signature are refused as well.
    for extra in (b"\x00", b"\xff" * 69, data[-70:]):
        target.write_bytes(data + extra)
        reason = import_refused(store, target, before, f"{which} + {len(extra)} bytes")
        assert reason in ("truncated", "corrupted"), reason
    missing = tmp_path / "absent.bin"
    assert not missing.exists()
    reason = import_refused(store, missing, before, "missing file")
    assert reason in fmt.BUNDLE_REASONS


# -- forged headers: well-formed JSON, wrong types ------------------------------------------------

HEADER_KEYS = (
    "lists",
    "remove_lists",
    "remove_products",
    "products",
    "zones",
    "retire_kids",
    "key_certs",
    "products_ref",
    "used_lists",
    "counts",
    "site_info",
    "site_key",
    "seq",
    "base_seq",
    "kid",
    "site",
    "issued_at",
    "expires_at",
)
ODD_VALUES: tuple[object, ...] = (
    5,
    -1,
    None,
    True,
    1e300,
    "x",
    "",
    {"a": 1},
    [5],
    ["x"],
    [""],
    [None],
    [{}],
    [{"id": 1}],
    [[1]],
    [[]],
    [-1],
    [True],
    {"timezone": 5},
    2**64,
)


def reframed(data: bytes, edit: dict[str, object]) -> bytes:
    """The bundle with its header JSON replaced (records and signature kept: a forgery)."""
    (hlen,) = struct.unpack(">I", data[len(fmt.MAGIC) + 1 : len(fmt.MAGIC) + 5])
    start = len(fmt.MAGIC) + 5
    doc = json.loads(data[start : start + hlen])
    doc.update(edit)
    header = json.dumps(doc).encode()
    return (
        data[: len(fmt.MAGIC) + 1] + struct.pack(">I", len(header)) + header + data[start + hlen :]
    )


@pytest.mark.parametrize("key", HEADER_KEYS)
def test_forged_header_fields_of_the_wrong_type_are_refused(
    bundles: tuple[BoxSetup, Path, Path], key: str, tmp_path: Path
) -> None:
    """An attacker can put any JSON into the header; it is parsed before the signature at the
    end of the stream can be checked. Each such bundle must be refused with a reason from
    BUNDLE_REASONS (not a TypeError or sqlite3 error out of import_file), cache untouched."""
    setup, delta, snap = bundles
    store = setup.service.cache
    before = cache_state(store)
    target = tmp_path / "forged.bin"
    escaped: list[str] = []
    for source in (delta, snap):
        data = source.read_bytes()
        for value in ODD_VALUES:
            target.write_bytes(reframed(data, {key: value}))
            what = f"{source.stem} {key}={json.dumps(value)}"
            try:
                import_refused(store, target, before, what)
            except AssertionError:
                raise
            except Exception as err:  # the point is to list which ones escape
                escaped.append(f"{what}: {type(err).__name__}: {err}")
                assert cache_state(store) == before, f"{what}: cache changed"
    assert not escaped, "exceptions other than BundleRefused:\n" + "\n".join(escaped)


# -- a holder key of small order ------------------------------------------------------------------

SMALL_ORDER_KEYS = (
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity (order 1)
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
)


@pytest.mark.parametrize("key_hex", SMALL_ORDER_KEYS)
def test_small_order_holder_key_cannot_forge_display_codes(box: BoxSetup, key_hex: str) -> None:
    """Under a small-order public key, the signature (R = identity, S = 0) verifies every
    message in OpenSSL, so a ticket naming such a holder key would let anyone make display codes.
    Even if an issuer signed one, the box must refuse the codes built on it."""
    holder = bytes.fromhex(key_hex)
    now = int(time.time())
    tid = secrets.token_bytes(16)
    payload = (
        struct.pack(">BBI", 0x11, 0x04, 1)
        + tid
        + bytes([len(SITE)])
        + SITE.encode()
        + b"\x05adult"
        + struct.pack(">IIHB", now - 3600, now + 3600, 1, 1)
        + holder
    )
    raw = payload + box.hub.signing_key(1).sign(b"EDGE-TKT1" + payload)
    forged_sig = bytes([1]) + bytes(31) + bytes(32)  # R = identity, S = 0
    for shown_at in (now, now - 5):
        code = b32encode(
            struct.pack(">BH", 0x21, len(raw)) + raw + struct.pack(">I", shown_at) + forged_sig
        )
        for op in ("validate", "redeem"):
            d = getattr(box.service, op)(code, LANE)
            assert not d.admit, f"{op}: forged display code admitted under key {key_hex[:8]}: {d}"
            assert d.reason in CODE_REFUSALS, d
