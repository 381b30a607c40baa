"""Deterministic test vectors for the code, trust and bundle formats (docs/codes.md).

    .venv/bin/python tests/make_code_vectors.py > docs/code_vectors.json
    .venv/bin/python tests/make_code_vectors.py --markdown   # the vector section of docs/codes.md

Every key is derived from a fixed, published seed, every id and time is fixed, and Ed25519 is
deterministic (RFC 8032), so the output is byte-for-byte stable. tests/test_code_vectors.py
regenerates it and compares with the committed files, so the documents cannot drift from the code.
The private keys here are TEST-ONLY: anybody can recompute them from this file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import sys
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import bundle as fmt
from edge.codes import (
    CTX_ROTATING,
    CTX_SHORT,
    CTX_TICKET,
    SIG_LEN,
    TAG_ROTATING_V1,
    Ticket,
    display_rotating,
    short_code_hash,
    sign_ticket,
)
from edge.textcodec import b32encode, damm_check_digit, damm_interim
from edge.trust import CTX_KEYCERT, USAGE_BUNDLES, USAGE_TICKETS, TrustAnchor, issue_key_cert

# -- fixed inputs (TEST-ONLY keys) --------------------------------------------------------------

ROOT_SEED = bytes([0x01]) * 32
SIGNING_SEED = bytes([0x02]) * 32
SIGNING_KID = 7
HOLDER_SEED = bytes([0x03]) * 32
SITE_KEY = bytes([0x04]) * 32
SITE = "west-lake"

NOW = 1767258000  # 2026-01-01T09:00:00Z: the time at which every code vector is checked
DAY = 86400
VALID_FROM = 1767225600  # 2026-01-01T00:00:00Z
VALID_UNTIL = VALID_FROM + DAY
SLOT = (1767254400, 1767261600)  # 08:00-10:00Z
CERT_NOT_BEFORE = 1735689600  # 2025-01-01T00:00:00Z
CERT_NOT_AFTER = 1893456000  # 2030-01-01T00:00:00Z
ROTATING_MAX_AGE_S = 30  # edge.config.Policy defaults, used for the freshness checks
ROTATING_MAX_SKEW_S = 15

ID_PLAIN = bytes(range(0x10, 0x20))
ID_GROUP = bytes(range(0x20, 0x30))
ID_HOLDER = bytes(range(0x30, 0x40))
ID_REVOKED = bytes(range(0x40, 0x50))
ID_SHORT = bytes(range(0x50, 0x60))
ID_USED_REDEMPTION = bytes(range(0x60, 0x70))
ID_USED_ELSEWHERE = bytes(range(0x70, 0x80))

SHORT_BODY = "48203917265"  # 11 digits; the Damm check digit makes 12
SHORT_UNKNOWN_BODY = "59120448730"

TEST_ONLY = "TEST-ONLY: derived from a published seed; never use for anything real"


def _key(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed)


ROOT = _key(ROOT_SEED)
SIGNING = _key(SIGNING_SEED)
HOLDER = _key(HOLDER_SEED)
ROOT_PUB = ROOT.public_key().public_bytes_raw()
SIGNING_PUB = SIGNING.public_key().public_bytes_raw()
HOLDER_PUB = HOLDER.public_key().public_bytes_raw()


def iso(t: int) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat().replace("+00:00", "Z")


# -- helpers ------------------------------------------------------------------------------------


def _keys(*names: str) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {
        "root": {"public_key_hex": ROOT_PUB.hex(), "private_seed_hex_TEST_ONLY": ROOT_SEED.hex()},
        "signing": {
            "kid": SIGNING_KID,
            "public_key_hex": SIGNING_PUB.hex(),
            "private_seed_hex_TEST_ONLY": SIGNING_SEED.hex(),
        },
        "holder": {
            "public_key_hex": HOLDER_PUB.hex(),
            "private_seed_hex_TEST_ONLY": HOLDER_SEED.hex(),
        },
        "site_key": {"hex_TEST_ONLY": SITE_KEY.hex()},
    }
    return {name: table[name] for name in names}


def _ticket_inputs(t: Ticket) -> dict[str, Any]:
    return {
        "kid": t.kid,
        "ticket_id_hex": t.ticket_id.hex(),
        "site": t.site,
        "product": t.product,
        "valid_from": t.valid_from,
        "valid_from_iso": iso(t.valid_from),
        "valid_until": t.valid_until,
        "valid_until_iso": iso(t.valid_until),
        "slot": list(t.slot) if t.slot else None,
        "entries": t.entries,
        "persons": t.persons,
        "zones": list(t.zones),
        "holder_key_hex": t.holder_key.hex() if t.holder_key else None,
    }


def _text(raw: bytes) -> str:
    return b32encode(raw)


def _raw(text: str) -> bytes:
    return base64.b32decode(text.upper() + "=" * (-len(text) % 8))


def _signed_vector(name: str, description: str, t: Ticket, box_reason: str) -> dict[str, Any]:
    text = sign_ticket(t, SIGNING)
    raw = _raw(text)
    payload = raw[:-SIG_LEN]
    return {
        "name": name,
        "kind": "signed",
        "description": description,
        "inputs": _ticket_inputs(t),
        "keys": _keys("signing", "root"),
        "payload_hex": payload.hex(),
        "signed_message_hex": (CTX_TICKET + payload).hex(),
        "signature_hex": raw[-SIG_LEN:].hex(),
        "raw_hex": raw.hex(),
        "text": text,
        "text_length": len(text),
        "canonical_id": t.ticket_id.hex(),
        "at": NOW,
        "expected": {"result": "accept", "reason": None, "box_reason": box_reason},
    }


def _negative(
    name: str,
    description: str,
    base: dict[str, Any],
    text: str,
    reason: str,
    stage: str,
    box_reason: str | None = None,
    canonical_id: str | None = None,
    raw: bytes | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "kind": "negative",
        "description": description,
        "derived_from": base["name"],
        "keys": base["keys"],
        "raw_hex": raw.hex() if raw is not None else None,
        "text": text,
        "text_length": len(text),
        "canonical_id": canonical_id,
        "at": NOW,
        "expected": {
            "result": "refuse",
            "reason": reason,
            "stage": stage,
            "box_reason": box_reason or reason,
        },
    }
    return out


def _set_unused_bit(text: str, nbytes: int) -> str:
    unused = 5 * len(text) - 8 * nbytes
    if unused <= 0:
        raise AssertionError("this text has no unused bits to set")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    return text[:-1] + alphabet[alphabet.index(text[-1]) | 1]


def _damm_trace(digits: str) -> list[int]:
    return [damm_interim(digits[: i + 1]) for i in range(len(digits))]


# -- code vectors -------------------------------------------------------------------------------


def ticket_plain() -> Ticket:
    return Ticket(
        kid=SIGNING_KID,
        ticket_id=ID_PLAIN,
        site=SITE,
        product="adult",
        valid_from=VALID_FROM,
        valid_until=VALID_UNTIL,
    )


def ticket_group() -> Ticket:
    return Ticket(
        kid=SIGNING_KID,
        ticket_id=ID_GROUP,
        site=SITE,
        product="family",
        valid_from=VALID_FROM,
        valid_until=VALID_UNTIL,
        entries=0,
        persons=4,
        slot=SLOT,
        zones=("lake-boat", "museum"),
    )


def ticket_holder() -> Ticket:
    return Ticket(
        kid=SIGNING_KID,
        ticket_id=ID_HOLDER,
        site=SITE,
        product="adult",
        valid_from=VALID_FROM,
        valid_until=VALID_UNTIL,
        holder_key=HOLDER_PUB,
    )


def ticket_revoked() -> Ticket:
    return Ticket(
        kid=SIGNING_KID,
        ticket_id=ID_REVOKED,
        site=SITE,
        product="adult",
        valid_from=VALID_FROM,
        valid_until=VALID_UNTIL,
    )


def code_vectors() -> list[dict[str, Any]]:
    plain = _signed_vector(
        "signed_plain",
        "Signed ticket v1, no optional field: one adult entry on 2026-01-01 (UTC).",
        ticket_plain(),
        "ok",
    )
    group = _signed_vector(
        "signed_group_slot_zones",
        "Signed ticket v1 with a time slot (08:00-10:00Z), two zones, persons=4 and "
        "entries=0 (unlimited): flags 0x03.",
        ticket_group(),
        "ok",
    )
    holder = _signed_vector(
        "signed_holder_bound",
        "Holder-bound signed ticket v1 (flags 0x04). It verifies, but shown on its own it is "
        "refused with holder_required: the phone shows rotating codes built from it.",
        ticket_holder(),
        "holder_required",
    )
    revoked = _signed_vector(
        "signed_revoked_by_delta",
        "A valid signed ticket whose id the delta bundle vector (bundle_delta) revokes.",
        ticket_revoked(),
        "revoked",
    )

    # Rotating display code at NOW.
    rot_text = display_rotating(holder["text"], HOLDER, NOW)
    rot_raw = _raw(rot_text)
    holder_raw = bytes.fromhex(holder["raw_hex"])
    holder_msg = CTX_ROTATING + ID_HOLDER + struct.pack(">I", NOW)
    lo, hi = NOW - ROTATING_MAX_SKEW_S, NOW + ROTATING_MAX_AGE_S + ROTATING_MAX_SKEW_S
    rotating = {
        "name": "rotating_display",
        "kind": "rotating",
        "description": "Rotating display code v1 built by the holder's phone from "
        "signed_holder_bound, shown at 2026-01-01T09:00:00Z.",
        "inputs": {"ticket_text": holder["text"], "shown_at": NOW, "shown_at_iso": iso(NOW)},
        "keys": _keys("holder", "signing", "root"),
        "ticket_raw_hex": holder_raw.hex(),
        "holder_message_hex": holder_msg.hex(),
        "holder_signature_hex": rot_raw[-SIG_LEN:].hex(),
        "raw_hex": rot_raw.hex(),
        "text": rot_text,
        "text_length": len(rot_text),
        "canonical_id": ID_HOLDER.hex(),
        "at": NOW,
        "expected": {"result": "accept", "reason": None, "box_reason": "ok"},
        "freshness": {
            "policy": {
                "rotating_max_age_s": ROTATING_MAX_AGE_S,
                "rotating_max_skew_s": ROTATING_MAX_SKEW_S,
            },
            "accepted_from": lo,
            "accepted_until": hi,
            "checks": [
                {"at": lo - 1, "box_reason": "stale_code"},
                {"at": lo, "box_reason": "ok"},
                {"at": NOW, "box_reason": "ok"},
                {"at": hi, "box_reason": "ok"},
                {"at": hi + 1, "box_reason": "stale_code"},
            ],
        },
    }

    # Short numeric code.
    digits = SHORT_BODY + damm_check_digit(SHORT_BODY)
    short = {
        "name": "short_code",
        "kind": "short",
        "description": "12-digit voucher code: 11 digits and their Damm check digit. The box "
        "finds it in the cache under HMAC-SHA256(site_key, 'EDGE-SC1' || digits)"
        "[:16]; its canonical id is the code id the bundle gives it.",
        "inputs": {
            "body": SHORT_BODY,
            "check_digit": digits[-1],
            "damm_interim_trace": _damm_trace(digits),
        },
        "keys": _keys("site_key"),
        "hash_message_hex": (CTX_SHORT + digits.encode("ascii")).hex(),
        "hash_hex": short_code_hash(SITE_KEY, digits).hex(),
        "text": digits,
        "text_length": len(digits),
        "canonical_id": ID_SHORT.hex(),
        "at": NOW,
        "expected": {"result": "accept", "reason": None, "box_reason": "ok"},
    }
    unknown_digits = SHORT_UNKNOWN_BODY + damm_check_digit(SHORT_UNKNOWN_BODY)
    short_unknown = _negative(
        "short_code_unknown",
        "Well-formed 12-digit code (its Damm digit is right) that is not in the cache.",
        short,
        unknown_digits,
        "unknown_code",
        "lookup",
    )
    short_unknown["hash_hex"] = short_code_hash(SITE_KEY, unknown_digits).hex()
    typo = digits[:3] + str((int(digits[3]) + 1) % 10) + digits[4:]
    swap = digits[:5] + digits[6] + digits[5] + digits[7:]
    if digits[5] == digits[6]:
        raise AssertionError("pick a short code whose digits 6 and 7 differ")

    # Negative vectors derived from the positive ones.
    plain_raw = bytes.fromhex(plain["raw_hex"])
    plain_text = plain["text"]
    flipped_sig = bytearray(plain_raw)
    flipped_sig[-SIG_LEN] ^= 0x01
    tampered = bytearray(plain_raw)
    until_offset = 6 + 16 + 1 + len(SITE) + 1 + len("adult") + 4
    tampered[until_offset + 3] ^= 0x01
    v2 = bytes([0x12]) + plain_raw[1:]
    alien = bytes([0x41]) + plain_raw[1:]
    bad_flags_payload = bytearray(plain_raw[:-SIG_LEN])
    bad_flags_payload[1] |= 0x08
    bad_flags = bytes(bad_flags_payload) + SIGNING.sign(CTX_TICKET + bytes(bad_flags_payload))
    trailing_payload = plain_raw[:-SIG_LEN] + b"\x00"
    trailing = trailing_payload + SIGNING.sign(CTX_TICKET + trailing_payload)
    rot_bad = bytearray(rot_raw)
    rot_bad[-1] ^= 0x80
    rot_stale_text = display_rotating(holder["text"], HOLDER, NOW - 600)
    no_holder = (
        struct.pack(">BH", TAG_ROTATING_V1, len(plain_raw))
        + plain_raw
        + struct.pack(">I", NOW)
        + HOLDER.sign(CTX_ROTATING + ID_PLAIN + struct.pack(">I", NOW))
    )

    negatives = [
        {
            "name": "lowercase_text",
            "kind": "variant",
            "description": "signed_plain typed under Caps Lock (all lower case): case is folded, "
            "so it is the same ticket, with the same canonical id, and accepted.",
            "derived_from": plain["name"],
            "keys": plain["keys"],
            "raw_hex": plain_raw.hex(),
            "text": plain_text.lower(),
            "text_length": len(plain_text),
            "canonical_id": plain["canonical_id"],
            "at": NOW,
            "expected": {"result": "accept", "reason": None, "box_reason": "ok"},
        },
        _negative(
            "noncanonical_unused_bits",
            "signed_plain with the unused low bit of the last Base32 character set: decodes "
            "to the same bytes in a lax decoder, but is not the canonical spelling.",
            plain,
            _set_unused_bit(plain_text, len(plain_raw)),
            "malformed",
            "decode",
        ),
        _negative(
            "padded_text",
            "signed_plain with RFC 4648 '=' padding: the text form is unpadded.",
            plain,
            plain_text + "=" * (-len(plain_text) % 8),
            "malformed",
            "decode",
        ),
        _negative(
            "too_long",
            "513 characters: over the 512-character cap, refused before decoding.",
            plain,
            "A" * 513,
            "malformed",
            "decode",
        ),
        _negative(
            "flipped_signature_byte",
            "signed_plain with the first signature byte XOR 0x01: decodes, signature fails.",
            plain,
            _text(bytes(flipped_sig)),
            "bad_signature",
            "ticket_signature",
            canonical_id=plain["canonical_id"],
            raw=bytes(flipped_sig),
        ),
        _negative(
            "tampered_valid_until",
            "signed_plain with valid_until changed by one second: signature fails.",
            plain,
            _text(bytes(tampered)),
            "bad_signature",
            "ticket_signature",
            canonical_id=plain["canonical_id"],
            raw=bytes(tampered),
        ),
        _negative(
            "unknown_version_tag",
            "Tag 0x12 (signed ticket, version 2): a v1 reader refuses an unknown version.",
            plain,
            _text(v2),
            "malformed",
            "decode",
            raw=v2,
        ),
        _negative(
            "unknown_kind_tag",
            "Tag 0x41: not a kind of code this reader knows.",
            plain,
            _text(alien),
            "malformed",
            "decode",
            raw=alien,
        ),
        _negative(
            "unknown_flag_bits",
            "signed_plain with flag bit 0x08 set, correctly signed: unknown flag bits are "
            "refused, never ignored.",
            plain,
            _text(bad_flags),
            "malformed",
            "decode",
            raw=bad_flags,
        ),
        _negative(
            "trailing_payload_byte",
            "signed_plain payload plus one 0x00 byte, correctly signed: the payload does not "
            "re-serialise to the same bytes, so it is not canonical.",
            plain,
            _text(trailing),
            "malformed",
            "decode",
            raw=trailing,
        ),
        _negative(
            "rotating_bad_holder_signature",
            "rotating_display with the last holder-signature byte XOR 0x80.",
            rotating,
            _text(bytes(rot_bad)),
            "bad_signature",
            "holder_signature",
            canonical_id=rotating["canonical_id"],
            raw=bytes(rot_bad),
        ),
        _negative(
            "rotating_stale",
            "A rotating code shown 600 s before the check time: outside the freshness window.",
            rotating,
            rot_stale_text,
            "stale_code",
            "freshness",
            canonical_id=rotating["canonical_id"],
            raw=_raw(rot_stale_text),
        ),
        _negative(
            "rotating_without_holder_key",
            "A rotating wrapper around signed_plain, which names no holder key.",
            rotating,
            _text(no_holder),
            "malformed",
            "decode",
            raw=no_holder,
        ),
        _negative(
            "short_code_typo",
            "short_code with its 4th digit changed: the Damm digit catches it.",
            short,
            typo,
            "malformed",
            "decode",
        ),
        _negative(
            "short_code_transposition",
            "short_code with its 6th and 7th digits swapped: the Damm digit catches it.",
            short,
            swap,
            "malformed",
            "decode",
        ),
        _negative(
            "short_code_too_short",
            "7 digits: numeric codes have 8 to 16 digits.",
            short,
            "123456" + damm_check_digit("123456"),
            "malformed",
            "decode",
        ),
        _negative(
            "short_code_too_long",
            "17 digits: numeric codes have 8 to 16 digits.",
            short,
            "1234567890123456" + damm_check_digit("1234567890123456"),
            "malformed",
            "decode",
        ),
        short_unknown,
    ]
    return [plain, group, holder, revoked, rotating, short, *negatives]


# -- trust --------------------------------------------------------------------------------------


def trust_vectors() -> dict[str, Any]:
    anchor = TrustAnchor(ROOT_PUB, "code vectors (TEST-ONLY root)")
    cert = issue_key_cert(
        ROOT,
        SIGNING_KID,
        SIGNING_PUB,
        CERT_NOT_BEFORE,
        CERT_NOT_AFTER,
        USAGE_TICKETS | USAGE_BUNDLES,
        "*",
    )
    body = cert[:-SIG_LEN]
    bad = bytearray(cert)
    bad[-1] ^= 0x01
    scoped = issue_key_cert(
        ROOT, 8, SIGNING_PUB, CERT_NOT_BEFORE, CERT_NOT_AFTER, USAGE_TICKETS, SITE
    )
    return {
        "trust_anchor": {
            "name": "trust_anchor",
            "description": "The trust anchor file a box installs, and its fingerprint.",
            "keys": _keys("root"),
            "json": anchor.to_json(),
            "fingerprint": anchor.fingerprint,
        },
        "key_certificates": [
            {
                "name": "key_cert_kid7",
                "description": "Key certificate v1: the root certifies signing key kid 7 for "
                "tickets and bundles (usage 0x03) at every site ('*').",
                "inputs": {
                    "kid": SIGNING_KID,
                    "public_key_hex": SIGNING_PUB.hex(),
                    "not_before": CERT_NOT_BEFORE,
                    "not_before_iso": iso(CERT_NOT_BEFORE),
                    "not_after": CERT_NOT_AFTER,
                    "not_after_iso": iso(CERT_NOT_AFTER),
                    "usage": USAGE_TICKETS | USAGE_BUNDLES,
                    "site": "*",
                },
                "keys": _keys("root", "signing"),
                "body_hex": body.hex(),
                "signed_message_hex": (CTX_KEYCERT + body).hex(),
                "raw_hex": cert.hex(),
                "expected": {"result": "accept"},
            },
            {
                "name": "key_cert_kid8_site_scoped",
                "description": "Key certificate v1 for kid 8 (same public key), tickets only "
                "(usage 0x01), scoped to site west-lake.",
                "inputs": {
                    "kid": 8,
                    "public_key_hex": SIGNING_PUB.hex(),
                    "not_before": CERT_NOT_BEFORE,
                    "not_before_iso": iso(CERT_NOT_BEFORE),
                    "not_after": CERT_NOT_AFTER,
                    "not_after_iso": iso(CERT_NOT_AFTER),
                    "usage": USAGE_TICKETS,
                    "site": SITE,
                },
                "keys": _keys("root", "signing"),
                "body_hex": scoped[:-SIG_LEN].hex(),
                "signed_message_hex": (CTX_KEYCERT + scoped[:-SIG_LEN]).hex(),
                "raw_hex": scoped.hex(),
                "expected": {"result": "accept"},
            },
            {
                "name": "key_cert_bad_signature",
                "description": "key_cert_kid7 with the last signature byte XOR 0x01: refused (a "
                "bundle carrying it is refused with unknown_key).",
                "keys": _keys("root"),
                "derived_from": "key_cert_kid7",
                "raw_hex": bytes(bad).hex(),
                "expected": {"result": "refuse", "bundle_reason": "unknown_key"},
            },
        ],
    }


# -- bundles ------------------------------------------------------------------------------------


def _bundle(header: dict[str, Any], records: list[tuple[int, list[tuple[Any, ...]]]]) -> bytes:
    buf = io.BytesIO()
    writer = fmt.BundleWriter(buf, header, SIGNING)
    for rtype, entries in records:
        writer.add(rtype, entries)
    writer.finish()
    return buf.getvalue()


def _counts(records: list[tuple[int, list[tuple[Any, ...]]]]) -> dict[str, int]:
    counts = dict.fromkeys(fmt.COUNT_KEYS.values(), 0)
    for rtype, entries in records:
        counts[fmt.COUNT_KEYS[rtype]] += len(entries)
    return counts


def _bundle_vector(
    name: str,
    description: str,
    header: dict[str, Any],
    records: list[tuple[int, list[tuple[Any, ...]]]],
    expected: dict[str, Any],
) -> dict[str, Any]:
    header = {**header, "counts": _counts(records)}
    data = _bundle(header, records)
    end = len(data) - 5 - SIG_LEN
    header_len = struct.unpack(">I", data[9:13])[0]
    return {
        "name": name,
        "description": description,
        "keys": _keys("signing", "root", "site_key"),
        "header_json": data[13 : 13 + header_len].decode("utf-8"),
        "records": [
            {
                "type": f"0x{rtype:02x}",
                "count": len(entries),
                "entry_size": fmt.ENTRY_STRUCTS[rtype].size,
                "entries_hex": [fmt.ENTRY_STRUCTS[rtype].pack(*e).hex() for e in entries],
            }
            for rtype, entries in records
            if entries
        ],
        "signed_length": end,
        "digest_hex": hashlib.sha256(data[:end]).hexdigest(),
        "signature_hex": data[-SIG_LEN:].hex(),
        "raw_hex": data.hex(),
        "at": NOW,
        "expected": expected,
    }


def bundle_vectors(cert_hex: str) -> list[dict[str, Any]]:
    digits = SHORT_BODY + damm_check_digit(SHORT_BODY)
    snap_records: list[tuple[int, list[tuple[Any, ...]]]] = [
        (
            fmt.SHORT_ADD,
            [
                (
                    short_code_hash(SITE_KEY, digits),
                    ID_SHORT,
                    VALID_FROM,
                    VALID_UNTIL,
                    0,
                    0,
                    1,
                    1,
                    1,
                    0,
                )
            ],
        ),
    ]
    snapshot = _bundle_vector(
        "bundle_snapshot",
        "Snapshot v1, sequence 1, for site west-lake, signed by kid 7: certificate of kid 7, "
        "two products, one check-in list admitting every product, the site key, and one "
        "SHORT_ADD record holding short_code (voucher, product index 0 = adult).",
        {
            "site": SITE,
            "seq": 1,
            "base_seq": None,
            "issued_at": NOW - 3600,
            "expires_at": NOW + 30 * DAY,
            "kid": SIGNING_KID,
            "key_certs": [cert_hex],
            "retire_kids": [],
            "products": [
                {"id": "adult", "name": "成人票 Adult"},
                {"id": "family", "name": "家庭票 Family"},
            ],
            "zones": [],
            "lists": [{"id": "default", "products": ["*"]}],
            "remove_lists": [],
            "products_ref": ["adult"],
            "used_lists": [],
            "site_info": {"timezone": "Asia/Shanghai", "rollover_hour": 4},
            "site_key": SITE_KEY.hex(),
        },
        snap_records,
        {"result": "applied", "precondition": "a box with no cache", "kind": "snapshot"},
    )
    delta_records: list[tuple[int, list[tuple[Any, ...]]]] = [
        (fmt.REVOKE, [(ID_REVOKED,)]),
        (fmt.USED, [(ID_USED_REDEMPTION, ID_USED_ELSEWHERE, 0, 1, 1, NOW - 600)]),
    ]
    delta = _bundle_vector(
        "bundle_delta",
        "Delta v1, sequence 2 on base 1: revokes signed_revoked_by_delta (REVOKE) and reports "
        "one entry made at another box of the site on list 'default' (USED).",
        {
            "site": SITE,
            "seq": 2,
            "base_seq": 1,
            "issued_at": NOW - 1800,
            "expires_at": NOW + 30 * DAY,
            "kid": SIGNING_KID,
            "key_certs": [],
            "retire_kids": [],
            "products": [],
            "zones": [],
            "lists": [],
            "remove_lists": [],
            "products_ref": [],
            "used_lists": ["default"],
        },
        delta_records,
        {"result": "applied", "precondition": "bundle_snapshot active", "kind": "delta"},
    )
    mutations = [
        {
            "name": "bundle_snapshot_bad_signature",
            "derived_from": "bundle_snapshot",
            "mutation": "XOR 0x01 into the last byte (inside the signature)",
            "precondition": "a box with no cache",
            "reason": "bad_signature",
        },
        {
            "name": "bundle_snapshot_truncated",
            "derived_from": "bundle_snapshot",
            "mutation": "drop the last 10 bytes",
            "precondition": "a box with no cache",
            "reason": "truncated",
        },
        {
            "name": "bundle_snapshot_trailing_byte",
            "derived_from": "bundle_snapshot",
            "mutation": "append one 0x00 byte",
            "precondition": "a box with no cache",
            "reason": "corrupted",
        },
        {
            "name": "bundle_snapshot_version_2",
            "derived_from": "bundle_snapshot",
            "mutation": "set byte 8 (the format version) to 0x02",
            "precondition": "a box with no cache",
            "reason": "unsupported_version",
        },
        {
            "name": "bundle_delta_without_base",
            "derived_from": "bundle_delta",
            "mutation": "none",
            "precondition": "a box with no cache",
            "reason": "wrong_base",
        },
        {
            "name": "bundle_snapshot_again",
            "derived_from": "bundle_snapshot",
            "mutation": "none",
            "precondition": "bundle_delta active (sequence 2)",
            "reason": "rollback",
        },
    ]
    return [
        snapshot,
        delta,
        *[{**m, "expected": {"result": "refused", "reason": m["reason"]}} for m in mutations],
    ]


def mutate_bundle(data: bytes, mutation: str) -> bytes:
    """Apply one of the mutations named in the refused bundle vectors."""
    if mutation.startswith("XOR 0x01 into the last byte"):
        return data[:-1] + bytes([data[-1] ^ 0x01])
    if mutation == "drop the last 10 bytes":
        return data[:-10]
    if mutation == "append one 0x00 byte":
        return data + b"\x00"
    if mutation.startswith("set byte 8"):
        return data[:8] + b"\x02" + data[9:]
    if mutation == "none":
        return data
    raise ValueError(f"unknown mutation {mutation!r}")


# -- document -----------------------------------------------------------------------------------


def build() -> dict[str, Any]:
    trust = trust_vectors()
    cert_hex = trust["key_certificates"][0]["raw_hex"]
    return {
        "format": "edge-code-vectors",
        "version": 1,
        "generator": "tests/make_code_vectors.py",
        "warning": "Every private key and the site key in this file are " + TEST_ONLY + ".",
        "site": SITE,
        "at": NOW,
        "at_iso": iso(NOW),
        "test_keys": _keys("root", "signing", "holder", "site_key"),
        "trust_anchor": trust["trust_anchor"],
        "key_certificates": trust["key_certificates"],
        "codes": code_vectors(),
        "bundles": bundle_vectors(cert_hex),
    }


def render_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _wrap_hex(h: str, width: int = 64) -> str:
    return "\n".join(h[i : i + width] for i in range(0, len(h), width))


MAIN_CODES = (
    "signed_plain",
    "signed_group_slot_zones",
    "signed_holder_bound",
    "rotating_display",
    "short_code",
)


def render_markdown(doc: dict[str, Any]) -> str:
    """The vector section embedded in docs/codes.md (between the vectors markers)."""
    out = [
        "Generated by `tests/make_code_vectors.py --markdown`; the full set, with negative "
        "vectors, is docs/code_vectors.json. Hex is wrapped at 32 bytes a line; the text form "
        "is one line. Every key below is " + TEST_ONLY + ".",
        "",
        "| key | private seed (TEST-ONLY) | public key |",
        "|---|---|---|",
    ]
    keys = doc["test_keys"]
    for name in ("root", "signing", "holder"):
        label = f"{name} (kid {SIGNING_KID})" if name == "signing" else name
        out.append(
            f"| {label} | `{keys[name]['private_seed_hex_TEST_ONLY']}` | "
            f"`{keys[name]['public_key_hex']}` |"
        )
    out += [
        f"| site key (short-code hashes) | `{keys['site_key']['hex_TEST_ONLY']}` | - |",
        "",
        f"Checked at {doc['at']} ({doc['at_iso']}).",
        "",
    ]
    anchor = doc["trust_anchor"]
    out += [
        "### Trust anchor",
        "",
        "```json",
        anchor["json"].rstrip("\n"),
        "```",
        "",
        f"Fingerprint: `{anchor['fingerprint']}`",
        "",
    ]
    cert = doc["key_certificates"][0]
    out += [
        "### Key certificate (kid 7)",
        "",
        cert["description"],
        "",
        "```",
        _wrap_hex(cert["raw_hex"]),
        "```",
        "",
    ]
    by_name = {v["name"]: v for v in doc["codes"]}
    for name in MAIN_CODES:
        v = by_name[name]
        out += [f"### {name}", "", v["description"], ""]
        if v["kind"] == "signed":
            i = v["inputs"]
            fields = [
                f"kid={i['kid']}",
                f"ticket_id={i['ticket_id_hex']}",
                f"site={i['site']}",
                f"product={i['product']}",
                f"valid_from={i['valid_from']}",
                f"valid_until={i['valid_until']}",
                f"entries={i['entries']}",
                f"persons={i['persons']}",
            ]
            if i["slot"]:
                fields.append(f"slot={i['slot'][0]}..{i['slot'][1]}")
            if i["zones"]:
                fields.append("zones=" + ",".join(i["zones"]))
            if i["holder_key_hex"]:
                fields.append(f"holder_key={i['holder_key_hex']}")
            out += [
                "Fields: " + ", ".join(f"`{f}`" for f in fields) + ".",
                "",
                "Payload:",
                "",
                "```",
                _wrap_hex(v["payload_hex"]),
                "```",
                "",
            ]
        elif v["kind"] == "rotating":
            out += [
                f"shown_at = `{v['inputs']['shown_at']}`; holder message "
                "(`EDGE-ROT1` || ticket id || u32 shown_at):",
                "",
                "```",
                _wrap_hex(v["holder_message_hex"]),
                "```",
                "",
                f"Accepted by a box whose clock reads {v['freshness']['accepted_from']} to "
                f"{v['freshness']['accepted_until']} (default policy).",
                "",
            ]
        elif v["kind"] == "short":
            out += [
                f"Body `{v['inputs']['body']}`, Damm check digit "
                f"`{v['inputs']['check_digit']}`, code `{v['text']}`; "
                f"hash `{v['hash_hex']}`.",
                "",
            ]
        if "raw_hex" in v:
            out += ["Raw bytes:", "", "```", _wrap_hex(v["raw_hex"]), "```", ""]
        out += [
            f"Text ({v['text_length']} characters):",
            "",
            "```",
            v["text"],
            "```",
            "",
            f"Canonical id `{v['canonical_id']}`; a box answers `{v['expected']['box_reason']}`.",
            "",
        ]
    out += [
        "### Variants and negative vectors",
        "",
        "| name | text form starts | outcome |",
        "|---|---|---|",
    ]
    for v in doc["codes"]:
        if v["kind"] not in ("negative", "variant"):
            continue
        result = v["expected"]["reason"] or "accepted (same ticket)"
        box = v["expected"]["box_reason"]
        shown = v["text"] if len(v["text"]) <= 20 else v["text"][:16] + "…"
        shown = shown.replace("|", "\\|")
        extra = f" (box: `{box}`)" if box not in (result, "ok") else ""
        out.append(f"| {v['name']} | `{shown}` | `{result}`{extra} |")
    out += ["", "### Bundles", ""]
    for b in doc["bundles"]:
        if "raw_hex" in b:
            out += [
                f"`{b['name']}`: {b['description']} {len(b['raw_hex']) // 2} bytes, "
                f"SHA-256 of the first {b['signed_length']} bytes "
                f"`{b['digest_hex']}`. Header:",
                "",
                "```json",
                b["header_json"],
                "```",
                "",
                "Entries:",
                "",
            ]
            for r in b["records"]:
                out += [
                    f"- record type {r['type']} ({r['entry_size']}-byte entries): "
                    + ", ".join(f"`{e}`" for e in r["entries_hex"])
                ]
            out += ["", "Raw bytes:", "", "```", _wrap_hex(b["raw_hex"]), "```", ""]
        else:
            out.append(
                f"- `{b['name']}`: {b['derived_from']}, {b['mutation']}; on "
                f"{b['precondition']}: refused with `{b['reason']}`."
            )
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    doc = build()
    text = render_markdown(doc) if "--markdown" in argv else render_json(doc)
    sys.stdout.buffer.write(text.encode("utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
