"""The code cache: its own SQLite file, filled from signed bundles, swapped atomically.

Layout under <state>/cache/: `CURRENT` names the active file (`cache-<seq>-<nonce>.db`).
- A snapshot streams into a new file (no journal, one transaction) that becomes active only after
  its signature verifies: CURRENT is replaced by rename after both files are fsync'd. A process
  killed mid-import leaves CURRENT pointing at the old file; the orphan is removed at next import.
- A delta is applied inside one transaction on the active file and committed only after its
  signature verifies, so readers see the old or the new cache, never a mix.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from edge import bundle as fmt
from edge.codes import verify_ed25519
from edge.errors import BundleRefused, TrustError
from edge.rules import CheckInList, Direction, Prior, SiteClock
from edge.store import Schema, fsync_dir, open_db, transaction
from edge.trust import USAGE_BUNDLES, KeyCert, Keyring, TrustAnchor, parse_key_cert

log = logging.getLogger(__name__)

CACHE_SCHEMA = Schema(
    "cache",
    [
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE keys (kid INTEGER NOT NULL, cert BLOB NOT NULL, PRIMARY KEY (kid, cert));
        CREATE TABLE retired (kid INTEGER PRIMARY KEY);
        CREATE TABLE short_codes (
            hash BLOB PRIMARY KEY, id BLOB NOT NULL, product TEXT NOT NULL,
            valid_from INTEGER NOT NULL, valid_until INTEGER NOT NULL,
            slot_start INTEGER NOT NULL, slot_end INTEGER NOT NULL,
            entries INTEGER NOT NULL, persons INTEGER NOT NULL, kind INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE revoked (id BLOB PRIMARY KEY) WITHOUT ROWID;
        CREATE TABLE blocked (id BLOB PRIMARY KEY) WITHOUT ROWID;
        CREATE TABLE used (
            redemption_id BLOB PRIMARY KEY, canonical_id BLOB NOT NULL, list_id TEXT NOT NULL,
            direction INTEGER NOT NULL, persons INTEGER NOT NULL, at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX used_by_id ON used (canonical_id, list_id);
        """
    ],
)

SHORT_KINDS = {1: "voucher", 2: "pickup"}


@dataclass(frozen=True)
class ImportResult:
    seq: int
    kind: str  # snapshot | delta
    counts: dict[str, int]
    site: str


@dataclass(frozen=True)
class ShortCodeRow:
    code_id: bytes
    product: str
    valid_from: int
    valid_until: int
    slot: tuple[int, int] | None
    entries: int
    persons: int
    kind: str


class CacheStore:
    """Imports bundles into, and opens views of, the cache under `state_dir/cache`."""

    def __init__(self, state_dir: Path, anchor: TrustAnchor, site: str) -> None:
        self.dir = state_dir / "cache"
        self.anchor = anchor
        self.site = site

    @property
    def current_file(self) -> Path:
        return self.dir / "CURRENT"

    def active_path(self) -> Path | None:
        try:
            name = self.current_file.read_text().strip()
        except FileNotFoundError:
            return None
        return self.dir / name

    def view(self, full_check: bool = False) -> CacheView:
        return CacheView(self, full_check)

    # -- import -------------------------------------------------------------------------------

    def import_file(self, path: Path, now: float) -> ImportResult:
        try:
            with path.open("rb") as stream:
                return self.import_stream(stream, now)
        except OSError as err:
            raise BundleRefused("truncated", f"cannot read {path}: {err}") from err

    def import_stream(self, stream: BinaryIO, now: float) -> ImportResult:
        """Verify and activate one bundle. Imports are serialised by a lock on the cache
        directory, so two importers can neither interleave nor remove each other's files."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "import.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return self._import_locked(stream, now)
        finally:
            os.close(fd)

    def _import_locked(self, stream: BinaryIO, now: float) -> ImportResult:
        reader = fmt.BundleReader(stream)
        h = reader.header
        if h.site != self.site:
            raise BundleRefused(
                "other_site", f"bundle is for site {h.site}, this box is {self.site}"
            )
        active = self.active_path()
        state = _read_state(active, self.anchor) if active else None
        if state is not None:
            if h.seq <= state.seq:
                raise BundleRefused("rollback", f"sequence {h.seq} is not newer than {state.seq}")
            if h.base_seq is not None and h.base_seq != state.seq:
                raise BundleRefused("wrong_base", f"delta on {h.base_seq}, active is {state.seq}")
        elif h.base_seq is not None:
            raise BundleRefused("wrong_base", "a delta needs an active cache; import a snapshot")
        if h.expires_at <= now:
            raise BundleRefused("expired", "bundle expired before it was imported")
        signers = self._signers(h, state, now)
        if h.is_snapshot:
            self._import_snapshot(reader, signers, state.retired if state else set())
        else:
            assert active is not None
            self._import_delta(reader, signers, active)
        log.info("bundle seq=%d (%s) active", h.seq, "snapshot" if h.is_snapshot else "delta")
        return ImportResult(h.seq, "snapshot" if h.is_snapshot else "delta", h.counts, h.site)

    def _signers(self, h: fmt.Header, state: _State | None, now: float) -> list[KeyCert]:
        # Retirement is permanent: a snapshot cannot bring a retired (maybe leaked) key back.
        retired = set(h.raw.get("retire_kids", []))
        if state is not None:
            retired |= state.retired
        if h.kid in retired:
            raise BundleRefused("retired_key", f"key {h.kid} has been retired")
        certs = list(_parse_certs(h.raw.get("key_certs", []), self.anchor))
        if state is not None and not h.is_snapshot:
            certs += state.keyring.certs.get(h.kid, [])
        usable = [c for c in certs if c.kid == h.kid and c.allows(USAGE_BUNDLES, self.site, now)]
        if not usable:
            raise BundleRefused("unknown_key", f"no valid bundle-signing key {h.kid} for this site")
        return usable

    def _import_snapshot(
        self, reader: fmt.BundleReader, signers: list[KeyCert], retired: set[int]
    ) -> None:
        h = reader.header
        self._remove_orphans()
        path = self.dir / f"cache-{h.seq:012d}-{secrets.token_hex(4)}.db"
        conn = open_db(path, CACHE_SCHEMA, create=True, synchronous="OFF")
        try:
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("BEGIN")
            _write_header(conn, h, base=None, carry_retired=retired)
            _apply_records(conn, reader)
            _check_signature(reader, signers)
            conn.execute("COMMIT")
            conn.execute("PRAGMA journal_mode=WAL")
        except BaseException:
            conn.close()
            path.unlink(missing_ok=True)
            raise
        conn.close()
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp = self.dir / "CURRENT.tmp"
        with tmp.open("w") as f:
            f.write(path.name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.current_file)
        fsync_dir(self.dir)
        self._remove_orphans()

    def _import_delta(self, reader: fmt.BundleReader, signers: list[KeyCert], active: Path) -> None:
        # Checked when it was activated and at every daemon start; a quick_check of a
        # million-row cache here would cost more than the delta itself.
        conn = open_db(active, CACHE_SCHEMA, create=False, synchronous="FULL", check=False)
        try:
            with transaction(conn):
                _write_header(conn, reader.header, base=_read_state_conn(conn))
                _apply_records(conn, reader)
                _check_signature(reader, signers)
        finally:
            conn.close()

    def _remove_orphans(self) -> None:
        active = self.active_path()
        for p in self.dir.glob("cache-*.db*"):  # never the lock file
            if active is None or not p.name.startswith(active.name):
                p.unlink(missing_ok=True)


def _parse_certs(hex_certs: Iterable[Any], anchor: TrustAnchor) -> Iterator[KeyCert]:
    for item in hex_certs:
        try:
            yield parse_key_cert(bytes.fromhex(str(item)), anchor)
        except (ValueError, TrustError) as err:
            raise BundleRefused("unknown_key", f"key certificate refused: {err}") from err


def _check_signature(reader: fmt.BundleReader, signers: list[KeyCert]) -> None:
    sig = reader.signature
    assert sig is not None
    msg = reader.signed_message
    if not any(verify_ed25519(c.key, sig, msg) for c in signers):
        raise BundleRefused("bad_signature", "bundle signature does not verify")


def _write_header(
    conn: sqlite3.Connection,
    h: fmt.Header,
    base: _State | None,
    carry_retired: frozenset[int] | set[int] = frozenset(),
) -> None:
    raw = h.raw
    lists = dict(base.lists) if base else {}
    for lid in raw.get("remove_lists", []):
        lists.pop(lid, None)
    for item in raw.get("lists", []):
        lists[item["id"]] = item
    products = dict(base.products) if base else {}
    products.update({p["id"]: p for p in raw.get("products", [])})
    for pid in raw.get("remove_products", []):
        products.pop(pid, None)
    zones = dict(base.zones) if base else {}
    zones.update({z["id"]: z for z in raw.get("zones", [])})
    meta = {
        "site": h.site,
        "seq": h.seq,
        "issued_at": h.issued_at,
        "expires_at": h.expires_at,
        "lists": lists,
        "products": products,
        "zones": zones,
        "site_info": raw.get("site_info", base.site_info if base else {}),
        "site_key": raw.get("site_key", base.site_key.hex() if base else ""),
        "products_ref": raw.get("products_ref", []),
        "used_lists": raw.get("used_lists", []),
    }
    conn.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [(k, json.dumps(v, ensure_ascii=False)) for k, v in meta.items()],
    )
    retired = set(raw.get("retire_kids", [])) | carry_retired
    for kid in retired:
        conn.execute("INSERT OR IGNORE INTO retired (kid) VALUES (?)", (kid,))
        conn.execute("DELETE FROM keys WHERE kid = ?", (kid,))
    for item in raw.get("key_certs", []):
        cert = bytes.fromhex(item)
        kid = int.from_bytes(cert[1:5], "big")
        if kid not in retired:
            conn.execute("INSERT OR IGNORE INTO keys (kid, cert) VALUES (?, ?)", (kid, cert))


def _apply_records(conn: sqlite3.Connection, reader: fmt.BundleReader) -> None:
    raw = reader.header.raw
    products_ref: list[str] = raw.get("products_ref", [])
    used_lists: list[str] = raw.get("used_lists", [])
    for rtype, entries in reader.records():
        if rtype == fmt.SHORT_ADD:
            conn.executemany(
                "INSERT OR REPLACE INTO short_codes VALUES (?,?,?,?,?,?,?,?,?,?)",
                (_short_row(e, products_ref) for e in entries),
            )
        elif rtype == fmt.SHORT_REMOVE:
            conn.executemany("DELETE FROM short_codes WHERE hash = ?", entries)
        elif rtype in (fmt.REVOKE, fmt.BLOCK):
            table = "revoked" if rtype == fmt.REVOKE else "blocked"
            conn.executemany(f"INSERT OR IGNORE INTO {table} (id) VALUES (?)", entries)
        elif rtype == fmt.UNBLOCK:
            conn.executemany("DELETE FROM blocked WHERE id = ?", entries)
        elif rtype == fmt.USED:
            conn.executemany(
                "INSERT OR IGNORE INTO used VALUES (?,?,?,?,?,?)",
                (_used_row(e, used_lists) for e in entries),
            )


def _short_row(e: tuple[Any, ...], products_ref: list[str]) -> tuple[Any, ...]:
    h, cid, vf, vu, ss, se, entries, persons, kind, pidx = e
    if (
        pidx >= len(products_ref)
        or kind not in SHORT_KINDS
        or vf >= vu
        or persons < 1
        or (se and ss >= se)
    ):
        raise BundleRefused("invalid_content", "short code entry with bad product, kind or window")
    return (h, cid, products_ref[pidx], vf, vu, ss, se, entries, persons, kind)


def _used_row(e: tuple[Any, ...], used_lists: list[str]) -> tuple[Any, ...]:
    rid, cid, lidx, direction, persons, at = e
    if lidx >= len(used_lists) or direction not in (1, 2):
        raise BundleRefused("invalid_content", "used entry with a bad list index or direction")
    return (rid, cid, used_lists[lidx], direction, persons, at)


@dataclass(frozen=True)
class _State:
    seq: int
    issued_at: int
    expires_at: int
    lists: dict[str, Any]
    products: dict[str, Any]
    zones: dict[str, Any]
    site_info: dict[str, Any]
    site_key: bytes
    keyring: Keyring
    retired: set[int]
    certs_raw: list[bytes]


def _read_state(path: Path, anchor: TrustAnchor) -> _State:
    conn = open_db(path, CACHE_SCHEMA, create=False, check=False)
    try:
        return _read_state_conn(conn, anchor)
    finally:
        conn.close()


def _read_state_conn(
    conn: sqlite3.Connection,
    anchor: TrustAnchor | None = None,
    verified: dict[bytes, KeyCert] | None = None,
) -> _State:
    """Read the cache's small tables. Key certificates are verified against the anchor once per
    distinct certificate (`verified` remembers them across deltas)."""
    meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    certs_raw = [bytes(r[0]) for r in conn.execute("SELECT cert FROM keys")]
    ring: dict[int, list[KeyCert]] = {}
    if anchor is not None:
        known = {} if verified is None else verified
        for raw in certs_raw:
            if raw not in known:
                (known[raw],) = _parse_certs([raw.hex()], anchor)
            ring.setdefault(known[raw].kid, []).append(known[raw])
    return _State(
        seq=meta["seq"],
        issued_at=meta["issued_at"],
        expires_at=meta["expires_at"],
        lists=meta["lists"],
        products=meta["products"],
        zones=meta["zones"],
        site_info=meta["site_info"],
        site_key=bytes.fromhex(meta["site_key"]),
        keyring=Keyring(ring),
        retired={r[0] for r in conn.execute("SELECT kid FROM retired")},
        certs_raw=certs_raw,
    )


class CacheView:
    """A reader of the active cache that follows snapshot swaps and committed deltas."""

    def __init__(self, store: CacheStore, full_check: bool = False) -> None:
        self._store = store
        self._full_check = full_check
        self._verified: dict[bytes, KeyCert] = {}
        self._conn: sqlite3.Connection | None = None
        self._stamp: tuple[int, int] | None = None
        self._data_version = -1
        self._checked = False
        self.state: _State | None = None
        self.lists: dict[str, CheckInList] = {}
        self.site_clock = SiteClock()

    def refresh(self) -> bool:
        """Pick up a new active cache; returns whether one is active. Cheap when unchanged."""
        try:
            st = os.stat(self._store.current_file)
        except FileNotFoundError:
            self.close()
            return False
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp != self._stamp:
            self.close()
            path = self._store.active_path()
            assert path is not None
            self._conn = open_db(
                path,
                CACHE_SCHEMA,
                create=False,
                synchronous="NORMAL",
                check=not self._checked,
                full_check=self._full_check and not self._checked,
            )
            self._checked = True
            self._stamp = stamp
        assert self._conn is not None
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version or self.state is None:
            self._data_version = version
            self.state = _read_state_conn(self._conn, self._store.anchor, self._verified)
            self.lists = {k: CheckInList.from_dict(v) for k, v in self.state.lists.items()}
            info = self.state.site_info
            self.site_clock = SiteClock(info.get("timezone", "UTC"), info.get("rollover_hour", 0))
        return True

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._stamp = None
        self.state = None

    def _one(self, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        assert self._conn is not None
        row: tuple[Any, ...] | None = self._conn.execute(sql, args).fetchone()
        return row

    def short_code(self, code_hash: bytes) -> ShortCodeRow | None:
        row = self._one("SELECT * FROM short_codes WHERE hash = ?", (code_hash,))
        if row is None:
            return None
        _h, cid, product, vf, vu, ss, se, entries, persons, kind = row
        slot = (ss, se) if se else None
        return ShortCodeRow(bytes(cid), product, vf, vu, slot, entries, persons, SHORT_KINDS[kind])

    def is_revoked(self, canonical: bytes) -> bool:
        return self._one("SELECT 1 FROM revoked WHERE id = ?", (canonical,)) is not None

    def is_blocked(self, canonical: bytes) -> bool:
        return self._one("SELECT 1 FROM blocked WHERE id = ?", (canonical,)) is not None

    def used_elsewhere(self, canonical: bytes, list_id: str) -> list[tuple[bytes, Prior]]:
        assert self._conn is not None
        rows = self._conn.execute(
            "SELECT redemption_id, direction, at FROM used WHERE canonical_id = ? AND list_id = ?",
            (canonical, list_id),
        )
        return [
            (bytes(rid), Prior(Direction.ENTRY if d == 1 else Direction.EXIT, at, elsewhere=True))
            for rid, d, at in rows
        ]

    def counts(self) -> dict[str, int]:
        assert self._conn is not None
        return {
            t: self._conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("short_codes", "revoked", "blocked", "used", "keys")
        }
