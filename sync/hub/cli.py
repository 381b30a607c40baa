"""`edge hub ...`: the reference cloud tools (keys, minting, display codes, bundles, vectors) and
its sync side (register, serve, claim, revoke, crl, send, status: sync/hub/cli_sync.py)."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from edge.codes import Ticket, display_rotating
from edge.rules_vectors import run_vectors
from sync.hub.cli_sync import register_sync
from sync.hub.inputs import DEFAULT_LIST, load_input, parse_time
from sync.hub.issuer import BundleContent, Hub, ShortCodeSpec, load_private, new_holder_key
from sync.hub.issuer import random_short_code as new_short

DAY = 86400


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hub = sub.add_parser("hub", help="reference cloud side: keys, tickets, bundles")
    hs = hub.add_subparsers(dest="hub_cmd", required=True, metavar="COMMAND")

    p = hs.add_parser("init", help="create a root key and signing keys in DIR")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--keys", type=int, default=1, help="number of signing keys (default 1)")
    p.set_defaults(func=cmd_init)

    p = hs.add_parser("trust", help="print the trust anchor and its fingerprint")
    p.add_argument("--dir", required=True, type=Path)
    p.set_defaults(func=cmd_trust)

    p = hs.add_parser("mint", help="issue tickets or short codes")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--site", required=True)
    p.add_argument("--product", required=True)
    p.add_argument("--product-name", help="display name recorded for bundles")
    p.add_argument("--kind", choices=("signed", "rotating", "short"), default="signed")
    p.add_argument("--valid-from", help="ISO 8601 with UTC offset (default: now)")
    p.add_argument("--valid-until", help="ISO 8601 with UTC offset (default: --days after from)")
    p.add_argument("--days", type=float, default=1.0)
    p.add_argument("--slot", help="time slot START/END, ISO 8601 with offsets")
    p.add_argument("--entries", type=int, default=1, help="allowed entries, 0 = unlimited")
    p.add_argument("--persons", type=int, default=1, help="persons admitted per entry (group)")
    p.add_argument("--zones", default="", help="comma-separated zone ids (default: all)")
    p.add_argument("--short-kind", choices=("voucher", "pickup"), default="voucher")
    p.add_argument("--digits", type=int, default=12, help="short code length incl. check digit")
    p.add_argument("--holder-key-out", type=Path, help="rotating: where to write the holder key")
    p.add_argument("--kid", type=int, help="signing key id (default: newest)")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--out", type=Path, help="batch output, JSON lines")
    p.set_defaults(func=cmd_mint)

    p = hs.add_parser("display", help="the phone's rotating display code for a holder ticket")
    p.add_argument("--holder-key", required=True, type=Path)
    p.add_argument("--ticket", required=True, help="ticket text, or - to read it from stdin")
    p.add_argument("--at", help="display time, ISO 8601 with UTC offset (default: now)")
    p.set_defaults(func=cmd_display)

    p = hs.add_parser("bundle", help="build the site's next signed bundle")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--site", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--input", type=Path, help="TOML or JSON input (lists, products, codes...)")
    p.add_argument("--delta", action="store_true", help="a delta on the last bundle")
    p.add_argument("--expires-days", type=float, default=30.0)
    p.add_argument("--at", help="issue time, ISO 8601 with UTC offset (default: now)")
    p.add_argument("--db", type=Path, help="hub database for the site's uses (default: DIR/hub.db)")
    p.set_defaults(func=cmd_bundle)

    p = hs.add_parser("publish", help="send a bundle file to a site's boxes (or one box)")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--db", type=Path, help="default: DIR/hub.db")
    p.add_argument("--site", help="every box of this site (the bundle is archived for new boxes)")
    p.add_argument("--box", help="only this box")
    p.add_argument("bundle", type=Path)
    p.set_defaults(func=cmd_publish)

    register_sync(hs)

    p = hs.add_parser("vectors", help="run the shared rule test vectors")
    p.add_argument("file", nargs="?", type=Path, help="default: docs/rule_vectors.json")
    p.set_defaults(func=cmd_vectors)


def _time(value: str | None, default: float) -> int:
    return int(default) if value is None else parse_time(value, "time")


def cmd_init(args: argparse.Namespace) -> int:
    hub = Hub.init(args.dir, keys=args.keys)
    print(f"hub created in {args.dir} with signing keys {hub.kids()}")
    print(f"trust anchor: {args.dir / 'trust-anchor.json'}")
    print(f"fingerprint 指纹: {hub.anchor.fingerprint}")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    hub = Hub(args.dir)
    sys.stdout.write(hub.anchor.to_json())
    print(f"fingerprint 指纹: {hub.anchor.fingerprint}")
    return 0


def _record_product(hub: Hub, site: str, product: str, name: str | None) -> None:
    state = hub.site_state(site)
    products = state.setdefault("products", {})
    if name or product not in products:
        products[product] = name or products.get(product) or product
        hub.save_site_state(site, state)


def cmd_mint(args: argparse.Namespace) -> int:
    hub = Hub(args.dir)
    vf = _time(args.valid_from, time.time())
    vu = _time(args.valid_until, vf + args.days * DAY)
    slot = None
    if args.slot:
        start, _, end = args.slot.partition("/")
        slot = (parse_time(start, "--slot start"), parse_time(end, "--slot end"))
    _record_product(hub, args.site, args.product, args.product_name)
    rows: list[dict[str, Any]] = []
    for _ in range(args.count):
        rows.append(_mint_one(hub, args, vf, vu, slot))
    if args.out:
        with args.out.open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"{len(rows)} {args.kind} codes written to {args.out}")
        return 0
    for row in rows[:-1]:
        print(row["code"])
    print(f"canonical id: {rows[-1]['canonical_id']}", file=sys.stderr)
    print(rows[-1]["code"])
    return 0


def _mint_one(
    hub: Hub, args: argparse.Namespace, vf: int, vu: int, slot: tuple[int, int] | None
) -> dict[str, Any]:
    if args.kind == "short":
        spec = ShortCodeSpec(
            new_short(args.digits),
            secrets.token_bytes(16),
            args.product,
            vf,
            vu,
            args.entries,
            args.persons,
            args.short_kind,
            slot,
        )
        hub.mint_short(args.site, spec)
        return {"kind": "short", "code": spec.code, "canonical_id": spec.code_id.hex()}
    holder = None
    row: dict[str, Any] = {"kind": args.kind}
    if args.kind == "rotating":
        key_path = args.holder_key_out
        if key_path is None:
            raise ValueError("--kind rotating needs --holder-key-out FILE")
        if args.count > 1:
            key_path = key_path.with_name(f"{key_path.name}.{secrets.token_hex(4)}")
        holder = new_holder_key(key_path)
        row["holder_key"] = str(key_path)
    ticket = Ticket(
        kid=args.kid or hub.active_kid(),
        ticket_id=secrets.token_bytes(16),
        site=args.site,
        product=args.product,
        valid_from=vf,
        valid_until=vu,
        entries=args.entries,
        persons=args.persons,
        slot=slot,
        zones=tuple(z for z in args.zones.split(",") if z),
        holder_key=holder,
    )
    return row | {"code": hub.mint_ticket(ticket), "canonical_id": ticket.canonical_id}


def cmd_display(args: argparse.Namespace) -> int:
    text = sys.stdin.readline().strip() if args.ticket == "-" else args.ticket
    at = _time(args.at, time.time())
    print(display_rotating(text, load_private(args.holder_key), at))
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    hub = Hub(args.dir)
    content = load_input(args.input) if args.input else BundleContent()
    if not args.delta:  # a snapshot replaces the box's cache: it repeats every use the hub has
        from sync.hub.bundles import snapshot_used

        content.used = [*content.used, *snapshot_used(args.db or args.dir / "hub.db", args.site)]
    header = hub.site_bundle(
        args.site,
        args.out,
        content,
        delta=args.delta,
        now=_time(args.at, time.time()),
        expires_days=args.expires_days,
        default_lists=[DEFAULT_LIST],
    )
    from sync.hub.catchup import archive_bundle

    archive_bundle(hub, args.site, args.out)  # what a box joining later is caught up from
    kind = "delta" if args.delta else "snapshot"
    print(f"{kind} seq={header['seq']} site={args.site} -> {args.out}")
    print(json.dumps(header["counts"], sort_keys=True))
    print(f"expires {datetime.fromtimestamp(header['expires_at']).astimezone().isoformat()}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """Queue a bundle's chunks in the hub database; a running `edge hub serve` sends them."""
    from edge.store import transaction
    from sync.hub.catchup import archive_bundle, queue_bundle
    from sync.hub.registry import load_registry
    from sync.hub.store import HUB_DB, HubStore

    if bool(args.site) == bool(args.box):
        raise ValueError("name one of --site or --box")
    registry = load_registry(args.dir)
    if args.box:
        if args.box not in registry:
            raise ValueError(f"box {args.box!r} is not registered (edge hub register)")
        boxes = [args.box]
    else:
        boxes = sorted(b for b, s in registry.items() if s == args.site)
    hub = Hub(args.dir)
    path = archive_bundle(hub, args.site, args.bundle) if args.site else args.bundle
    store = HubStore(args.db or args.dir / HUB_DB)
    try:
        with transaction(store.conn):
            bundle_id, n = queue_bundle(store, hub, boxes, path)
    finally:
        store.close()
    print(f"bundle {bundle_id}: {n} messages queued for {len(boxes)} boxes; archived as {path}")
    if not boxes:
        print("no box is registered for this site yet: each gets it when it first connects")
    return 0


def cmd_vectors(args: argparse.Namespace) -> int:
    failures, total = run_vectors(args.file)
    for f in failures:
        print(f"FAIL {f}")
    print(f"{total - len(failures)}/{total} rule vectors pass")
    return 0 if not failures else 3
