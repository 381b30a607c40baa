"""Bundle wire format v1: a signed, streamable container of cache content (docs/codes.md).

    magic "EDGEBNDL" | u8 version | u32 header length | header (JSON, UTF-8)
    records: u8 type | u32 length | body        (bodies of fixed-size entries, <= 1 MiB each)
    end:     u8 0xFF | u32 64 | Ed25519 signature over CTX_BUNDLE + SHA-256(all bytes before it)

The reader never holds more than one record in memory, so a million-code snapshot streams.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.errors import BundleRefused
from edge.rules import CheckInList, zone_info

MAGIC = b"EDGEBNDL"
VERSION = 1
CTX_BUNDLE = b"EDGE-BND1"
MAX_HEADER = 1 << 20
MAX_RECORD = 1 << 20

# Closed set of refusal reasons (docs/codes.md#refusals).
BUNDLE_REASONS = (
    "bad_signature",
    "unknown_key",
    "retired_key",
    "other_site",
    "rollback",
    "wrong_base",
    "truncated",
    "corrupted",
    "unsupported_version",
    "expired",
    "invalid_content",
)

# Record types and the struct of one entry in their bodies.
SHORT_ADD = 0x10  # hash, code id, valid_from, valid_until, slot_start, slot_end, entries,
#                   persons, kind (1 voucher, 2 pickup), product index into header["products_ref"]
SHORT_REMOVE = 0x11  # hash
REVOKE = 0x20  # canonical id
BLOCK = 0x21
UNBLOCK = 0x22
USED = 0x30  # redemption id, canonical id, list index into header["used_lists"], direction
#              (1 entry, 2 exit), persons, at
END = 0xFF
ENTRY_STRUCTS: dict[int, struct.Struct] = {
    SHORT_ADD: struct.Struct(">16s16sIIIIHBBH"),
    SHORT_REMOVE: struct.Struct(">16s"),
    REVOKE: struct.Struct(">16s"),
    BLOCK: struct.Struct(">16s"),
    UNBLOCK: struct.Struct(">16s"),
    USED: struct.Struct(">16s16sHBBI"),
}
COUNT_KEYS = {
    SHORT_ADD: "short_add",
    SHORT_REMOVE: "short_remove",
    REVOKE: "revoke",
    BLOCK: "block",
    UNBLOCK: "unblock",
    USED: "used",
}
_REC_HDR = struct.Struct(">BI")


@dataclass(frozen=True)
class Header:
    site: str
    seq: int
    base_seq: int | None
    issued_at: int
    expires_at: int
    kid: int
    raw: dict[str, Any]

    @property
    def is_snapshot(self) -> bool:
        return self.base_seq is None

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.raw.get("counts", {}))


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise BundleRefused("invalid_content", what)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53


def _list_of(doc: dict[str, Any], key: str, check: Any, what: str) -> None:
    items = doc.get(key, [])
    _require(isinstance(items, list) and all(check(i) for i in items), f"header.{key}: {what}")


def _is_str(v: object) -> bool:
    return isinstance(v, str)


def _is_obj_with_id(v: object) -> bool:
    return isinstance(v, dict) and isinstance(v.get("id"), str)


def validate_header(doc: object) -> Header:
    """Check the header's structure (not its signature). Raises BundleRefused.

    The header is read before the signature at the end of the stream can be checked, so every
    field is checked for type and range here: nothing an attacker writes into it may raise
    anything but BundleRefused.
    """
    try:
        return _validate_header(doc)
    except BundleRefused:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as err:
        raise BundleRefused("invalid_content", f"malformed header: {err}") from err


def _validate_header(doc: object) -> Header:
    _require(isinstance(doc, dict), "header is not a JSON object")
    assert isinstance(doc, dict)
    if doc.get("format") != "edge-bundle" or doc.get("version") != VERSION:
        raise BundleRefused("unsupported_version", f"header version {doc.get('version')!r}")
    for key in ("seq", "issued_at", "expires_at", "kid"):
        _require(_is_int(doc.get(key)), f"header.{key} must be a non-negative integer")
    _require(doc["kid"] <= 0xFFFFFFFF, "header.kid must fit in 32 bits")
    _require(isinstance(doc.get("site"), str) and bool(doc["site"]), "header.site missing")
    base = doc.get("base_seq")
    _require(base is None or _is_int(base), "header.base_seq must be null or an integer")
    snapshot = base is None
    for key in ("site_info", "site_key"):
        _require(not snapshot or key in doc, f"a snapshot needs header.{key}")
    _require(
        snapshot or "site_key" not in doc,
        "a delta cannot change site_key (short codes are hashed with it); send a snapshot",
    )
    if "site_info" in doc:
        info = doc["site_info"]
        _require(isinstance(info, dict), "header.site_info must be an object")
        tz = info.get("timezone", "UTC")
        _require(isinstance(tz, str), "site_info.timezone must be a string")
        try:
            zone_info(tz)
        except ValueError as err:
            raise BundleRefused("invalid_content", f"site_info.timezone: {err}") from err
        hour = info.get("rollover_hour", 0)
        _require(_is_int(hour) and hour < 24, "site_info.rollover_hour must be 0-23")
    if "site_key" in doc:
        key_hex = doc["site_key"]
        _require(isinstance(key_hex, str), "site_key must be hex")
        try:
            _require(len(bytes.fromhex(key_hex)) == 32, "site_key must be 32 bytes")
        except ValueError as err:
            raise BundleRefused("invalid_content", "site_key must be hex") from err
    _list_of(doc, "lists", lambda v: isinstance(v, dict), "a list of objects")
    for lst in doc.get("lists", []):
        try:
            CheckInList.from_dict(lst)
        except (ValueError, TypeError) as err:
            raise BundleRefused("invalid_content", str(err)) from err
    _list_of(doc, "products", _is_obj_with_id, "a list of objects with a string id")
    _list_of(doc, "zones", _is_obj_with_id, "a list of objects with a string id")
    for zone in doc.get("zones", []):
        cap = zone.get("capacity")
        _require(cap is None or _is_int(cap), f"zone {zone['id']}.capacity")
    for key in ("key_certs", "products_ref", "used_lists", "remove_lists", "remove_products"):
        _list_of(doc, key, _is_str, "a list of strings")
    _list_of(doc, "retire_kids", lambda v: _is_int(v) and v <= 0xFFFFFFFF, "a list of key ids")
    counts = doc.get("counts", {})
    _require(
        isinstance(counts, dict) and all(_is_int(v) for v in counts.values()),
        "header.counts must map names to integers",
    )
    return Header(
        site=doc["site"],
        seq=doc["seq"],
        base_seq=base,
        issued_at=doc["issued_at"],
        expires_at=doc["expires_at"],
        kid=doc["kid"],
        raw=doc,
    )


class BundleReader:
    """Streams a bundle: `header`, then `records()`, then `signature` and `digest`."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self.signature: bytes | None = None
        start = self._read(len(MAGIC) + 5, "bundle preamble")
        if start[: len(MAGIC)] != MAGIC:
            raise BundleRefused("corrupted", "not an edge bundle (bad magic)")
        version, header_len = struct.unpack(">BI", start[len(MAGIC) :])
        if version != VERSION:
            raise BundleRefused("unsupported_version", f"bundle format version {version}")
        if header_len > MAX_HEADER:
            raise BundleRefused("corrupted", "header length out of range")
        try:
            doc = json.loads(self._read(header_len, "header"))
        except (ValueError, RecursionError) as err:  # RecursionError: absurdly nested JSON
            raise BundleRefused("corrupted", f"header is not JSON: {err}") from err
        self.header = validate_header(doc)

    def _read(self, n: int, what: str) -> bytes:
        data = self._stream.read(n)
        if len(data) != n:
            raise BundleRefused("truncated", f"ended inside {what}")
        self._hash.update(data)
        return data

    def records(self) -> Iterator[tuple[int, Iterator[tuple[Any, ...]]]]:
        """Yield (type, entries) per record; checks counts and reads the signature at the end."""
        seen = dict.fromkeys(COUNT_KEYS.values(), 0)
        while True:
            head = self._stream.read(_REC_HDR.size)
            if len(head) != _REC_HDR.size:
                raise BundleRefused("truncated", "ended before the signature record")
            rtype, length = _REC_HDR.unpack(head)
            if rtype == END:
                break
            self._hash.update(head)
            entry = ENTRY_STRUCTS.get(rtype)
            if entry is None:
                raise BundleRefused("corrupted", f"unknown record type 0x{rtype:02x}")
            if length > MAX_RECORD or length % entry.size:
                raise BundleRefused("corrupted", f"record 0x{rtype:02x} has a bad length")
            body = self._read(length, "a record")
            seen[COUNT_KEYS[rtype]] += length // entry.size
            yield rtype, entry.iter_unpack(body)
        if length != 64:
            raise BundleRefused("corrupted", "signature record has a bad length")
        sig = self._stream.read(64)
        if len(sig) != 64:
            raise BundleRefused("truncated", "ended inside the signature")
        if self._stream.read(1):
            raise BundleRefused("corrupted", "bytes after the signature")
        declared = {k: self.header.counts.get(k, 0) for k in seen}
        if declared != seen:
            raise BundleRefused("corrupted", f"entry counts {seen} differ from header {declared}")
        self.signature = sig

    @property
    def signed_message(self) -> bytes:
        return CTX_BUNDLE + self._hash.digest()


class BundleWriter:
    """Issuer side: writes a bundle to a binary stream, record by record."""

    def __init__(self, stream: BinaryIO, header: dict[str, Any], key: Ed25519PrivateKey) -> None:
        self._stream = stream
        self._key = key
        self._hash = hashlib.sha256()
        doc = json.dumps(
            {"format": "edge-bundle", "version": VERSION, **header},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        self._write(MAGIC + struct.pack(">BI", VERSION, len(doc)) + doc)

    def _write(self, data: bytes) -> None:
        self._hash.update(data)
        self._stream.write(data)

    def add(self, rtype: int, entries: list[tuple[Any, ...]]) -> None:
        """Write entries of one type, split into records of at most MAX_RECORD bytes."""
        st = ENTRY_STRUCTS[rtype]
        per = MAX_RECORD // st.size
        for i in range(0, len(entries), per):
            body = b"".join(st.pack(*e) for e in entries[i : i + per])
            self._write(_REC_HDR.pack(rtype, len(body)) + body)

    def finish(self) -> None:
        sig = self._key.sign(CTX_BUNDLE + self._hash.digest())
        self._stream.write(_REC_HDR.pack(END, len(sig)) + sig)
