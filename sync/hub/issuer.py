"""Reference issuer (the cloud's side): root and signing keys, ticket minting, bundle building.

State lives in a directory (`edge hub init --dir DIR`):
    root.key, keys/<kid>.key, keys/<kid>.cert   private keys are PEM, mode 0600
    trust-anchor.json                          what a box installs (public root key)
    sites/<site>/site.key                      per-site key for short-code hashes
    sites/<site>/state.json                    last bundle sequence, short codes shipped
    sites/<site>/short_codes.jsonl             short codes minted for the site
    sites/<site>/ledger.json                   what every later snapshot must still carry
    hub.json                                   retired signing keys

A snapshot replaces the box's whole cache, so it must repeat everything earlier bundles changed,
not only what its own input gives: every bundle updates the site's ledger (revoked ids, the
blocked set, minted short codes removed since), and every snapshot carries the whole ledger plus
the hub's retired keys. Only minted short codes are hidden by a removal; codes that came from an
input file are not remembered by the hub, so a snapshot holds them only if its input repeats them.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import bundle as fmt
from edge.codes import Ticket, short_code_hash, sign_ticket
from edge.textcodec import damm_check_digit
from edge.trust import TrustAnchor, issue_key_cert

DAY = 86400
KEY_LIFETIME = 5 * 365 * DAY
SHORT_KIND_IDS = {"voucher": 1, "pickup": 2}


def _write_atomic(path: Path, write: Callable[[IO[str]], None]) -> None:
    """Replace `path` in one step (temp file, fsync, rename, fsync of the directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def new_holder_key(path: Path) -> bytes:
    """Create a holder (phone) key pair; write the private key; return the raw public key."""
    key = Ed25519PrivateKey.generate()
    _write_private(path, _pem(key))
    return key.public_key().public_bytes_raw()


@dataclass
class ShortCodeSpec:
    code: str
    code_id: bytes
    product: str
    valid_from: int
    valid_until: int
    entries: int = 1
    persons: int = 1
    kind: str = "voucher"
    slot: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "id": self.code_id.hex(),
            "product": self.product,
            "valid_from": self.valid_from,
            "valid_until": self.valid_until,
            "entries": self.entries,
            "persons": self.persons,
            "kind": self.kind,
            "slot": list(self.slot) if self.slot else None,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ShortCodeSpec:
        slot = d.get("slot")
        return cls(
            str(d["code"]),
            bytes.fromhex(d["id"]),
            d["product"],
            int(d["valid_from"]),
            int(d["valid_until"]),
            int(d.get("entries", 1)),
            int(d.get("persons", 1)),
            d.get("kind", "voucher"),
            (int(slot[0]), int(slot[1])) if slot else None,
        )


@dataclass
class BundleContent:
    """What goes into one bundle; everything optional for a delta."""

    site_info: dict[str, Any] | None = None
    products: list[dict[str, Any]] = field(default_factory=list)
    zones: list[dict[str, Any]] = field(default_factory=list)
    lists: list[dict[str, Any]] = field(default_factory=list)
    remove_lists: list[str] = field(default_factory=list)
    short_codes: Sequence[ShortCodeSpec] = ()
    remove_short_codes: Sequence[str] = ()
    revocations: Sequence[bytes] = ()
    blocked: Sequence[bytes] = ()
    unblocked: Sequence[bytes] = ()
    used: Sequence[tuple[bytes, bytes, str, str, int, int]] = ()  # rid, cid, list, dir, persons, at
    retire_kids: list[int] = field(default_factory=list)
    new_key_kids: list[int] = field(default_factory=list)


@dataclass
class SiteLedger:
    """A site's cumulative state: what every snapshot must carry, whatever bundle set it.

    revoked: canonical ids (hex) ever revoked; there is no un-revoke.
    blocked: canonical ids (hex) blocked now (block adds, unblock removes).
    removed_short_codes: minted code -> how many entries of the minted list it hides (the list's
        length when the code was removed), so a snapshot does not ship it again, while the same
        digits minted again later are shipped. Only minting brings a removed code back: a bundle
        whose input gives it again ships it, but the hub does not remember input short codes.
    """

    revoked: set[str] = field(default_factory=set)
    blocked: set[str] = field(default_factory=set)
    removed_short_codes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "revoked": sorted(self.revoked),
            "blocked": sorted(self.blocked),
            "removed_short_codes": dict(sorted(self.removed_short_codes.items())),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SiteLedger:
        return cls(
            set(d.get("revoked", [])),
            set(d.get("blocked", [])),
            {str(c): int(n) for c, n in d.get("removed_short_codes", {}).items()},
        )

    def copy(self) -> SiteLedger:
        return SiteLedger(set(self.revoked), set(self.blocked), dict(self.removed_short_codes))

    def live(self, minted: Sequence[ShortCodeSpec], start: int = 0) -> list[ShortCodeSpec]:
        """minted[start:] without the codes a later bundle removed; of digits minted twice, the
        later mint."""
        hidden = self.removed_short_codes
        last = {
            s.code: s for i, s in enumerate(minted[start:], start) if hidden.get(s.code, 0) <= i
        }
        return list(last.values())


def random_short_code(digits: int = 12) -> str:
    body = "".join(secrets.choice("0123456789") for _ in range(digits - 1))
    body = str(secrets.choice("123456789")) + body[1:]
    return body + damm_check_digit(body)


class Hub:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    # -- keys -----------------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        directory: Path,
        keys: int = 1,
        label: str = "edge reference hub",
        not_before: int | None = None,
    ) -> Hub:
        if (directory / "root.key").exists():
            raise FileExistsError(f"{directory} already holds a hub (root.key exists)")
        hub = cls(directory)
        root = Ed25519PrivateKey.generate()
        _write_private(directory / "root.key", _pem(root))
        anchor = TrustAnchor(root.public_key().public_bytes_raw(), label)
        (directory / "trust-anchor.json").write_text(anchor.to_json())
        for kid in range(1, keys + 1):
            hub.add_signing_key(kid, not_before)
        return hub

    def add_signing_key(self, kid: int, not_before: int | None = None) -> None:
        root = load_private(self.dir / "root.key")
        key = Ed25519PrivateKey.generate()
        nb = int(time.time()) - DAY if not_before is None else not_before
        cert = issue_key_cert(root, kid, key.public_key().public_bytes_raw(), nb, nb + KEY_LIFETIME)
        _write_private(self.dir / "keys" / f"{kid}.key", _pem(key))
        (self.dir / "keys" / f"{kid}.cert").write_text(cert.hex() + "\n")

    @property
    def anchor(self) -> TrustAnchor:
        return TrustAnchor.load(self.dir / "trust-anchor.json")

    def kids(self) -> list[int]:
        return sorted(int(p.stem) for p in (self.dir / "keys").glob("*.cert"))

    def active_kid(self, also_retiring: Iterable[int] = ()) -> int:
        retired = set(self._hub_state().get("retired", [])) | set(also_retiring)
        live = [k for k in self.kids() if k not in retired]
        if not live:
            raise ValueError("no signing key left; run `edge hub init` again or add a key")
        return live[-1]

    def signing_key(self, kid: int) -> Ed25519PrivateKey:
        return load_private(self.dir / "keys" / f"{kid}.key")

    def cert_hex(self, kid: int) -> str:
        return (self.dir / "keys" / f"{kid}.cert").read_text().strip()

    def _hub_state(self) -> dict[str, Any]:
        path = self.dir / "hub.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def retired_kids(self) -> list[int]:
        """Signing keys retired so far (by any bundle, for every site)."""
        return sorted(int(k) for k in self._hub_state().get("retired", []))

    # -- sites ----------------------------------------------------------------------------------

    def site_dir(self, site: str) -> Path:
        return self.dir / "sites" / site

    def site_key(self, site: str) -> bytes:
        path = self.site_dir(site) / "site.key"
        if not path.exists():
            _write_private(path, secrets.token_hex(32).encode())
        return bytes.fromhex(path.read_text())

    def site_state(self, site: str) -> dict[str, Any]:
        path = self.site_dir(site) / "state.json"
        return json.loads(path.read_text()) if path.exists() else {"seq": 0, "shipped": 0}

    def save_site_state(self, site: str, state: dict[str, Any]) -> None:
        path = self.site_dir(site) / "state.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)

    def site_ledger(self, site: str) -> SiteLedger:
        path = self.site_dir(site) / "ledger.json"
        if not path.exists():
            return SiteLedger()
        return SiteLedger.from_json(json.loads(path.read_text(encoding="utf-8")))

    def save_site_ledger(self, site: str, ledger: SiteLedger) -> None:
        _write_atomic(self.site_dir(site) / "ledger.json", lambda f: json.dump(ledger.to_json(), f))

    def minted_short_codes(
        self, site: str, *, include_removed: bool = False
    ) -> list[ShortCodeSpec]:
        """Short codes minted for the site, without those a bundle has removed since (unless
        include_removed: then the whole minted list, in minting order)."""
        path = self.site_dir(site) / "short_codes.jsonl"
        if not path.exists():
            return []
        specs = [
            ShortCodeSpec.from_json(json.loads(line))
            for line in path.read_text().splitlines()
            if line.strip()
        ]
        return specs if include_removed else self.site_ledger(site).live(specs)

    def _minted_codes(self, site: str) -> list[str]:
        path = self.site_dir(site) / "short_codes.jsonl"
        if not path.exists():
            return []
        return [
            str(json.loads(line)["code"]) for line in path.read_text().splitlines() if line.strip()
        ]

    # -- minting --------------------------------------------------------------------------------

    def mint_ticket(self, ticket: Ticket) -> str:
        return sign_ticket(ticket, self.signing_key(ticket.kid))

    def mint_short(self, site: str, spec: ShortCodeSpec) -> ShortCodeSpec:
        self.site_key(site)
        path = self.site_dir(site) / "short_codes.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(spec.to_json()) + "\n")
        return spec

    # -- bundles --------------------------------------------------------------------------------

    def site_bundle(
        self,
        site: str,
        out: Path,
        content: BundleContent,
        *,
        delta: bool,
        now: int | None = None,
        expires_days: float = 30.0,
        default_lists: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        """What `edge hub bundle` writes: `content` plus the site's minted short codes.

        A delta adds the codes minted since the last bundle; a snapshot repeats every minted code
        not removed since (a code the input also lists is shipped as the input gives it), the
        products recorded at minting, and `default_lists` if the input has no lists. Either way
        write_bundle adds the site's cumulative revocations, blocks and retired keys to a
        snapshot.
        """
        state = self.site_state(site)
        minted = self.minted_short_codes(site, include_removed=True)
        ledger = self.site_ledger(site)
        given = {s.code for s in content.short_codes}
        start = state.get("shipped", 0) if delta else 0
        ship = [s for s in ledger.live(minted, start) if s.code not in given]
        content.short_codes = [*ship, *content.short_codes]
        if not delta:
            content.lists = content.lists or [dict(x) for x in default_lists]
            known = {p["id"] for p in content.products}
            content.products += [
                {"id": p, "name": n} for p, n in state.get("products", {}).items() if p not in known
            ]
        header = self.write_bundle(
            site, out, content, snapshot=not delta, now=now, expires_days=expires_days
        )
        state = self.site_state(site)
        state["shipped"] = len(minted)
        self.save_site_state(site, state)
        return header

    def _next_ledger(self, site: str, content: BundleContent) -> tuple[SiteLedger, SiteLedger]:
        """(the ledger before, the ledger after this bundle), in the box's order of records:
        removals, revocations, blocks, unblocks."""
        before = self.site_ledger(site)
        after = before.copy()
        if content.remove_short_codes:
            minted = self._minted_codes(site)
            known = set(minted)
            for code in content.remove_short_codes:
                if code in known:
                    after.removed_short_codes[code] = len(minted)
        after.revoked.update(c.hex() for c in content.revocations)
        after.blocked.update(c.hex() for c in content.blocked)
        after.blocked.difference_update(c.hex() for c in content.unblocked)
        return before, after

    def write_bundle(
        self,
        site: str,
        out: Path,
        content: BundleContent,
        *,
        snapshot: bool,
        now: int | None = None,
        expires_days: float = 30.0,
        kid: int | None = None,
    ) -> dict[str, Any]:
        """Write the site's next bundle (sequence = last + 1) and return its header."""
        now = int(time.time()) if now is None else now
        state = self.site_state(site)
        seq = state["seq"] + 1
        hub_retired = set(self.retired_kids())
        retired = hub_retired | set(content.retire_kids)
        kid = self.active_kid(content.retire_kids) if kid is None else kid
        key = self.signing_key(kid)
        ledger_before, ledger = self._next_ledger(site, content)
        if snapshot:  # the whole cumulative state, in key order for the box's B-trees
            revocations: Sequence[bytes] = [bytes.fromhex(c) for c in sorted(ledger.revoked)]
            blocked: Sequence[bytes] = [bytes.fromhex(c) for c in sorted(ledger.blocked)]
            retire_kids = sorted(retired)
        else:
            revocations, blocked = content.revocations, content.blocked
            retire_kids = list(content.retire_kids)
        products_ref = sorted({s.product for s in content.short_codes})
        pidx = {p: i for i, p in enumerate(products_ref)}
        used_lists = sorted({u[2] for u in content.used})
        lidx = {name: i for i, name in enumerate(used_lists)}
        site_key = self.site_key(site)
        records: list[tuple[int, Iterable[tuple[Any, ...]]]] = [
            (
                fmt.SHORT_ADD,
                sorted(  # in key order, so the box appends to its B-tree instead of splitting it
                    [
                        (
                            short_code_hash(site_key, s.code),
                            s.code_id,
                            s.valid_from,
                            s.valid_until,
                            *(s.slot or (0, 0)),
                            s.entries,
                            s.persons,
                            SHORT_KIND_IDS[s.kind],
                            pidx[s.product],
                        )
                        for s in content.short_codes
                    ]
                ),
            ),
            (
                fmt.SHORT_REMOVE,
                [(short_code_hash(site_key, c),) for c in content.remove_short_codes],
            ),
            (fmt.REVOKE, [(c,) for c in revocations]),
            (fmt.BLOCK, [(c,) for c in blocked]),
            (fmt.UNBLOCK, [(c,) for c in content.unblocked]),
            (
                fmt.USED,
                [
                    (rid, cid, lidx[lst], 1 if d == "entry" else 2, persons, at)
                    for rid, cid, lst, d, persons, at in content.used
                ],
            ),
        ]
        key_kids = self.kids() if snapshot else content.new_key_kids
        header: dict[str, Any] = {
            "site": site,
            "seq": seq,
            "base_seq": None if snapshot else state["seq"],
            "issued_at": now,
            "expires_at": now + int(expires_days * DAY),
            "kid": kid,
            "key_certs": [self.cert_hex(k) for k in key_kids if k not in retired],
            "retire_kids": retire_kids,
            "products": content.products,
            "zones": content.zones,
            "lists": content.lists,
            "remove_lists": content.remove_lists,
            "products_ref": products_ref,
            "used_lists": used_lists,
            "counts": {fmt.COUNT_KEYS[t]: len(list(e)) for t, e in records},
        }
        if snapshot or content.site_info is not None:
            header["site_info"] = content.site_info or {"timezone": "UTC", "rollover_hour": 0}
        if snapshot:
            header["site_key"] = site_key.hex()
        tmp = out.with_name(out.name + ".part")
        with tmp.open("wb") as f:
            writer = fmt.BundleWriter(f, header, key)
            for rtype, entries in records:
                writer.add(rtype, list(entries))
            writer.finish()
        # Recorded before the bundle is published: a crash in between leaves the intent in the
        # next snapshot, never a published revocation, block or retirement the hub forgot.
        if ledger != ledger_before:
            self.save_site_ledger(site, ledger)
        if not retired <= hub_retired:
            hub_state = self._hub_state()
            hub_state["retired"] = sorted(retired)
            _write_atomic(self.dir / "hub.json", lambda f: json.dump(hub_state, f))
        os.replace(tmp, out)
        state["seq"] = seq
        self.save_site_state(site, state)
        return header
