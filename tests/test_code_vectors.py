"""The published code vectors (docs/code_vectors.json, docs/codes.md) against the implementation.

Three layers: the files are exactly what tests/make_code_vectors.py generates (so they cannot
drift); every vector re-checks with the public keys only, through edge's decoders and through a
small decoder written here from docs/codes.md alone; and a box built from the vectors' trust
anchor and bundles gives each code the decision reason the vector states.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.codes import CodeError, RotatingCode, ShortCode, SignedTicket, parse_code
from edge.config import load, render_minimal
from edge.errors import BundleRefused, TrustError
from edge.service import RedemptionService
from edge.trust import TrustAnchor, parse_key_cert
from tests import make_code_vectors as gen

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "docs" / "code_vectors.json"
CODES_MD = ROOT / "docs" / "codes.md"
BEGIN = "<!-- vectors:begin (generated: tests/make_code_vectors.py --markdown) -->"
END = "<!-- vectors:end -->"

DOC: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
CODES = {v["name"]: v for v in DOC["codes"]}


def _pub(hex_key: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key))


def _verifies(key: Ed25519PublicKey, sig: bytes, msg: bytes) -> bool:
    try:
        key.verify(sig, msg)
    except InvalidSignature:
        return False
    return True


# -- the files are what the generator makes ----------------------------------------------------


def test_json_file_is_regenerated_byte_for_byte() -> None:
    assert VECTORS.read_bytes() == gen.render_json(gen.build()).encode("utf-8"), (
        "docs/code_vectors.json is out of date: run "
        "`.venv/bin/python tests/make_code_vectors.py > docs/code_vectors.json`"
    )


def test_codes_md_embeds_the_generated_vectors() -> None:
    text = CODES_MD.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    embedded = text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    assert embedded == gen.render_markdown(gen.build()), (
        "the vector section of docs/codes.md is out of date: replace it with the output of "
        "`.venv/bin/python tests/make_code_vectors.py --markdown`"
    )


# -- an independent decoder, written from docs/codes.md -----------------------------------------

B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def doc_b32decode(text: str) -> bytes:
    """docs/codes.md 'Text form': fold case, refuse anything whose re-encoding differs."""
    if len(text) > 512 or not text.isascii():
        raise ValueError("length or non-ASCII")
    folded = text.upper()
    if not folded or any(c not in B32 for c in folded) or len(folded) % 8 in (1, 3, 6):
        raise ValueError("alphabet or length")
    bits = "".join(f"{B32.index(c):05b}" for c in folded)
    n = len(bits) // 8
    if "1" in bits[8 * n :]:
        raise ValueError("unused bits set")
    return bytes(int(bits[8 * i : 8 * i + 8], 2) for i in range(n))


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(what)


IDENT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def doc_parse_ticket(raw: bytes) -> dict[str, Any]:
    """docs/codes.md 'Signed ticket v1', offset by offset (the signature is not checked here)."""
    _need(len(raw) > 64, "too short")
    payload = raw[:-64]
    _need(len(payload) >= 6, "truncated")
    tag, flags, kid = struct.unpack_from(">BBI", payload, 0)
    _need(tag == 0x11, "not a signed ticket v1")
    _need(flags & ~0x07 == 0, "unknown flags")
    ticket_id = payload[6:22]
    pos = 22

    def ident() -> str:
        nonlocal pos
        _need(pos < len(payload), "truncated")
        n = payload[pos]
        value = payload[pos + 1 : pos + 1 + n].decode("ascii")
        _need(1 <= n <= 32 and len(value) == n and set(value) <= IDENT, "identifier")
        pos += 1 + n
        return value

    try:
        site, product = ident(), ident()
        valid_from, valid_until = struct.unpack_from(">II", payload, pos)
        pos += 8
        slot = None
        if flags & 0x01:
            slot = list(struct.unpack_from(">II", payload, pos))
            pos += 8
        entries, persons = struct.unpack_from(">HB", payload, pos)
        pos += 3
        zones = []
        if flags & 0x02:
            count = payload[pos]
            pos += 1
            _need(1 <= count <= 8, "zone count")
            zones = [ident() for _ in range(count)]
    except (struct.error, IndexError) as err:
        raise ValueError("truncated") from err
    holder = None
    if flags & 0x04:
        _need(pos + 32 <= len(payload), "truncated")
        holder = payload[pos : pos + 32].hex()
        pos += 32
    _need(pos == len(payload), "bytes after the last field")
    _need(valid_from < valid_until and persons >= 1, "ranges")
    _need(slot is None or slot[0] < slot[1], "slot")
    _need(len(set(zones)) == len(zones), "duplicate zones")
    return {
        "kid": kid,
        "ticket_id_hex": ticket_id.hex(),
        "site": site,
        "product": product,
        "valid_from": valid_from,
        "valid_until": valid_until,
        "slot": slot,
        "entries": entries,
        "persons": persons,
        "zones": zones,
        "holder_key_hex": holder,
    }


def doc_decode(text: str) -> tuple[str, dict[str, Any], int | None]:
    """docs/codes.md 'Telling the kinds apart': (kind, ticket fields, shown_at)."""
    raw = doc_b32decode(text)
    if raw[0] == 0x11:
        return "signed", doc_parse_ticket(raw), None
    _need(raw[0] == 0x21 and len(raw) >= 3, "unknown tag")
    (ticket_len,) = struct.unpack_from(">H", raw, 1)
    _need(len(raw) == 3 + ticket_len + 4 + 64, "rotating length")
    fields = doc_parse_ticket(raw[3 : 3 + ticket_len])
    _need(fields["holder_key_hex"] is not None, "no holder key")
    return "rotating", fields, struct.unpack_from(">I", raw, 3 + ticket_len)[0]


DAMM = (
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


def doc_damm(digits: str) -> int:
    interim = 0
    for ch in digits:
        interim = DAMM[interim][int(ch)]
    return interim


# -- each vector, with the public keys only -----------------------------------------------------


def check_code(v: dict[str, Any]) -> str:
    """The reference check order (docs/codes.md 'Checking a code'); returns the canonical id."""
    now = v["at"]
    parsed = parse_code(v["text"])
    if isinstance(parsed, ShortCode):
        site_key = bytes.fromhex(DOC["test_keys"]["site_key"]["hex_TEST_ONLY"])
        digest = hmac.new(site_key, b"EDGE-SC1" + v["text"].encode(), hashlib.sha256).digest()
        if digest[:16].hex() != CODES["short_code"]["hash_hex"]:
            raise CodeError("unknown_code", "not in the vector cache")
        return str(CODES["short_code"]["canonical_id"])
    signed = parsed.signed if isinstance(parsed, RotatingCode) else parsed
    assert isinstance(signed, SignedTicket)
    signing = DOC["test_keys"]["signing"]
    assert signed.ticket.kid == signing["kid"]
    raw = signed.raw
    if not _verifies(_pub(signing["public_key_hex"]), raw[-64:], b"EDGE-TKT1" + raw[:-64]):
        raise CodeError("bad_signature", "ticket")
    if isinstance(parsed, RotatingCode):
        holder = signed.ticket.holder_key
        assert holder is not None
        msg = b"EDGE-ROT1" + signed.ticket.ticket_id + struct.pack(">I", parsed.shown_at)
        if not _verifies(Ed25519PublicKey.from_public_bytes(holder), parsed.holder_signature, msg):
            raise CodeError("bad_signature", "holder")
        if not -15 <= now - parsed.shown_at <= 30 + 15:
            raise CodeError("stale_code", "freshness")
    return signed.ticket.canonical_id


@pytest.mark.parametrize("name", list(CODES))
def test_code_vector(name: str) -> None:
    v = CODES[name]
    expected = v["expected"]
    if expected["result"] == "refuse":
        with pytest.raises(CodeError) as err:
            check_code(v)
        assert err.value.reason == expected["reason"]
        if expected["stage"] == "decode" and not v["text"].isdigit():
            with pytest.raises(ValueError):
                doc_decode(v["text"])
        return
    assert check_code(v) == v["canonical_id"]
    if v["kind"] == "short":
        assert doc_damm(v["text"]) == 0
        assert str(doc_damm(v["inputs"]["body"])) == v["inputs"]["check_digit"]
        return
    raw = doc_b32decode(v["text"])
    assert raw.hex() == v["raw_hex"]
    assert base64.b32encode(raw).decode().rstrip("=") == v["text"].upper()
    kind, fields, shown_at = doc_decode(v["text"])
    if kind == "rotating":
        (ticket_len,) = struct.unpack_from(">H", raw, 1)
        assert raw[3 : 3 + ticket_len].hex() == v["ticket_raw_hex"]
        assert shown_at == v["inputs"]["shown_at"]
        assert fields["ticket_id_hex"] == v["canonical_id"]
        return
    inputs = {k: val for k, val in v.get("inputs", {}).items() if not k.endswith("_iso")}
    if inputs:
        assert fields == inputs
        assert raw[:-64].hex() == v["payload_hex"]
    assert fields["ticket_id_hex"] == v["canonical_id"]


def test_negative_vectors_cover_the_brief() -> None:
    reasons = {(v["name"], v["expected"]["reason"]) for v in DOC["codes"]}
    for needed in [
        ("lowercase_text", None),
        ("noncanonical_unused_bits", "malformed"),
        ("flipped_signature_byte", "bad_signature"),
        ("unknown_version_tag", "malformed"),
        ("unknown_flag_bits", "malformed"),
    ]:
        assert needed in reasons
    lower = CODES["lowercase_text"]
    assert lower["text"] != lower["text"].upper()
    assert parse_code(lower["text"]) == parse_code(CODES["signed_plain"]["text"])


def test_trust_anchor_and_fingerprint(tmp_path: Path) -> None:
    anchor_doc = DOC["trust_anchor"]
    path = tmp_path / "anchor.json"
    path.write_text(anchor_doc["json"])
    anchor = TrustAnchor.load(path)
    pub = bytes.fromhex(json.loads(anchor_doc["json"])["public_key"])
    digest = hashlib.sha256(pub).hexdigest().upper()
    assert anchor.public_key == pub
    assert anchor_doc["fingerprint"] == " ".join(digest[i : i + 4] for i in range(0, 64, 4))
    assert anchor.fingerprint == anchor_doc["fingerprint"]


@pytest.mark.parametrize("cert", DOC["key_certificates"], ids=lambda c: c["name"])
def test_key_certificate_vector(cert: dict[str, Any], tmp_path: Path) -> None:
    anchor = TrustAnchor(bytes.fromhex(DOC["test_keys"]["root"]["public_key_hex"]), "vectors")
    raw = bytes.fromhex(cert["raw_hex"])
    root_ok = _verifies(anchor.key, raw[-64:], b"EDGE-KEY1" + raw[:-64])
    if cert["expected"]["result"] == "refuse":
        assert not root_ok
        with pytest.raises(TrustError):
            parse_key_cert(raw, anchor)
        return
    assert root_ok
    parsed = parse_key_cert(raw, anchor)
    inputs = cert["inputs"]
    # docs/codes.md 'Key certificate v1', offset by offset.
    tag, kid = struct.unpack_from(">BI", raw, 0)
    nb, na, usage, site_len = struct.unpack_from(">IIBB", raw, 37)
    assert tag == 0x31 and len(raw) == 47 + site_len + 64
    doc_fields = {
        "kid": kid,
        "public_key_hex": raw[5:37].hex(),
        "not_before": nb,
        "not_after": na,
        "usage": usage,
        "site": raw[47 : 47 + site_len].decode(),
    }
    assert doc_fields == {k: val for k, val in inputs.items() if not k.endswith("_iso")}
    assert (
        parsed.kid,
        parsed.public_key.hex(),
        parsed.not_before,
        parsed.not_after,
        parsed.usage,
        parsed.site,
    ) == tuple(doc_fields.values())


def test_bundle_vectors_are_signed_as_documented() -> None:
    signing = _pub(DOC["test_keys"]["signing"]["public_key_hex"])
    for b in DOC["bundles"]:
        if "raw_hex" not in b:
            continue
        data = bytes.fromhex(b["raw_hex"])
        assert data[:8] == b"EDGEBNDL" and data[8] == 1
        (header_len,) = struct.unpack_from(">I", data, 9)
        header = json.loads(data[13 : 13 + header_len])
        assert data[13 : 13 + header_len].decode() == b["header_json"]
        pos, counts = 13 + header_len, {}
        while data[pos] != 0xFF:
            rtype, length = struct.unpack_from(">BI", data, pos)
            counts[f"0x{rtype:02x}"] = counts.get(f"0x{rtype:02x}", 0) + length
            pos += 5 + length
        assert pos == b["signed_length"] and data[pos + 1 : pos + 5] == b"\x00\x00\x00\x40"
        assert len(data) == pos + 5 + 64
        digest = hashlib.sha256(data[:pos]).digest()
        assert digest.hex() == b["digest_hex"]
        assert _verifies(signing, data[-64:], b"EDGE-BND1" + digest)
        by_type = {r["type"]: r["count"] * r["entry_size"] for r in b["records"]}
        assert counts == by_type
        assert sum(header["counts"].values()) == sum(r["count"] for r in b["records"])


# -- a box built from the vectors ---------------------------------------------------------------


def _box(tmp_path: Path) -> RedemptionService:
    home = tmp_path / "box"
    home.mkdir(parents=True)
    (home / "anchor.json").write_text(DOC["trust_anchor"]["json"])
    (home / "edge.toml").write_text(render_minimal(DOC["site"], "gate-1", "anchor.json"))
    now = DOC["at"]
    return RedemptionService(load(home / "edge.toml", home), clock=lambda: float(now))


def _bundle_bytes(name: str) -> bytes:
    by_name = {b["name"]: b for b in DOC["bundles"]}
    b = by_name[name]
    if "raw_hex" in b:
        return bytes.fromhex(b["raw_hex"])
    return gen.mutate_bundle(bytes.fromhex(by_name[b["derived_from"]]["raw_hex"]), b["mutation"])


def _import(svc: RedemptionService, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.bin"
    path.write_bytes(_bundle_bytes(name))
    svc.import_bundle(path, at=DOC["at"])


def test_box_gives_each_code_its_stated_reason(tmp_path: Path) -> None:
    svc = _box(tmp_path)
    try:
        _import(svc, tmp_path, "bundle_snapshot")
        _import(svc, tmp_path, "bundle_delta")
        for v in DOC["codes"]:
            d = svc.validate(v["text"], "counter", at=v["at"])
            assert str(d.reason) == v["expected"]["box_reason"], v["name"]
            if v["expected"]["box_reason"] == "ok":
                assert d.canonical_id == v["canonical_id"], v["name"]
        rotating = CODES["rotating_display"]
        for check in rotating["freshness"]["checks"]:
            d = svc.validate(rotating["text"], "counter", at=check["at"])
            assert str(d.reason) == check["box_reason"], check
        first = svc.redeem(rotating["text"], "counter", at=rotating["at"])
        again = svc.redeem(rotating["text"], "counter", at=rotating["at"] + 1)
        assert (str(first.reason), str(again.reason)) == ("ok", "replayed")
    finally:
        svc.close()


def test_box_refuses_the_bundle_vectors(tmp_path: Path) -> None:
    for b in DOC["bundles"]:
        if b["expected"]["result"] != "refused":
            continue
        svc = _box(tmp_path / b["name"])
        try:
            if b["precondition"].startswith("bundle_delta active"):
                _import(svc, tmp_path / b["name"], "bundle_snapshot")
                _import(svc, tmp_path / b["name"], "bundle_delta")
            before = svc.status(at=DOC["at"])["cache"]
            with pytest.raises(BundleRefused) as err:
                _import(svc, tmp_path / b["name"], b["name"])
            assert err.value.reason == b["expected"]["reason"], b["name"]
            assert svc.status(at=DOC["at"])["cache"] == before
        finally:
            svc.close()
