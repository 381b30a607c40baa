"""The hub remembers a site's cumulative state: a snapshot replaces the box's whole cache, so it
must repeat revocations, blocks, short-code removals and key retirements that earlier deltas
sent, even when the snapshot's own input does not give them (real hub, real box, no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from edge import bundle as fmt
from edge.rules import Reason
from sync.hub.issuer import BundleContent
from tests.conftest import SITE, Box
from tests.test_cli import edge_main

ADULT = [{"id": "adult", "name": "成人票 Adult"}]
DEFAULT = [{"id": "default", "products": ["*"]}]


def header_of(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        return fmt.BundleReader(f).header.raw


def cli_snapshot(box: Box) -> Path:
    """What `edge hub bundle` (no --input, no --delta) writes."""
    out = box.root / f"cli-{box.hub.site_state(SITE)['seq'] + 1}.bundle"
    content = BundleContent(products=list(ADULT))
    box.hub.site_bundle(SITE, out, content, delta=False, now=int(box.now), default_lists=DEFAULT)
    return out


def cli_delta(box: Box, content: BundleContent) -> Path:
    out = box.root / f"cli-{box.hub.site_state(SITE)['seq'] + 1}.bundle"
    box.hub.site_bundle(SITE, out, content, delta=True, now=int(box.now))
    return out


def test_revocation_from_a_delta_survives_the_next_snapshot(box: Box) -> None:
    svc = box.service()
    svc.import_bundle(box.snapshot())
    code, t = box.ticket()
    other, _ = box.ticket()
    svc.import_bundle(box.bundle(BundleContent(revocations=[t.ticket_id]), snapshot=False))
    assert svc.validate(code, "counter").reason is Reason.REVOKED
    snap = box.snapshot()  # its own input revokes nothing
    assert header_of(snap)["counts"]["revoke"] == 1
    svc.import_bundle(snap)
    assert svc.validate(code, "counter").reason is Reason.REVOKED
    assert svc.validate(other, "counter").admit
    svc.import_bundle(cli_snapshot(box))  # the `edge hub bundle` path too
    assert svc.validate(code, "counter").reason is Reason.REVOKED
    # a snapshot's own revocations are added to the earlier ones, each once
    code2, t2 = box.ticket()
    snap = box.snapshot(revocations=[t2.ticket_id, t.ticket_id])
    assert header_of(snap)["counts"]["revoke"] == 2
    svc.import_bundle(snap)
    assert svc.validate(code, "counter").reason is Reason.REVOKED
    assert svc.validate(code2, "counter").reason is Reason.REVOKED
    svc.import_bundle(box.snapshot())
    assert svc.validate(code2, "counter").reason is Reason.REVOKED


def test_blocks_and_unblocks_across_deltas_then_snapshot(box: Box) -> None:
    svc = box.service()
    svc.import_bundle(box.snapshot())
    a, ta = box.ticket()
    b, tb = box.ticket()
    svc.import_bundle(
        box.bundle(BundleContent(blocked=[ta.ticket_id, tb.ticket_id]), snapshot=False)
    )
    assert svc.validate(a, "counter").reason is Reason.BLOCKED
    svc.import_bundle(box.snapshot())
    assert svc.validate(a, "counter").reason is Reason.BLOCKED  # still blocked
    assert svc.validate(b, "counter").reason is Reason.BLOCKED
    svc.import_bundle(box.bundle(BundleContent(unblocked=[ta.ticket_id]), snapshot=False))
    assert svc.validate(a, "counter").admit
    snap = box.snapshot()
    assert header_of(snap)["counts"]["block"] == 1
    svc.import_bundle(snap)
    assert svc.validate(a, "counter").admit  # unblocked stays unblocked
    assert svc.validate(b, "counter").reason is Reason.BLOCKED
    svc.import_bundle(cli_delta(box, BundleContent(unblocked=[tb.ticket_id])))
    svc.import_bundle(cli_snapshot(box))
    assert svc.validate(a, "counter").admit and svc.validate(b, "counter").admit
    # blocked again by a snapshot's own input: kept by the next one
    svc.import_bundle(
        box.bundle(
            BundleContent(lists=DEFAULT, products=ADULT, blocked=[tb.ticket_id]), snapshot=True
        )
    )
    svc.import_bundle(cli_snapshot(box))
    assert svc.validate(b, "counter").reason is Reason.BLOCKED


def test_removed_minted_short_code_stays_removed(box: Box) -> None:
    hub = box.hub
    gone, kept = hub.mint_short(SITE, box.short()), hub.mint_short(SITE, box.short())
    svc = box.service()
    svc.import_bundle(cli_snapshot(box))
    assert svc.validate(gone.code, "counter").admit
    svc.import_bundle(cli_delta(box, BundleContent(remove_short_codes=[gone.code])))
    assert svc.validate(gone.code, "counter").reason is Reason.UNKNOWN_CODE
    snap = cli_snapshot(box)
    assert header_of(snap)["counts"]["short_add"] == 1
    svc.import_bundle(snap)
    assert svc.validate(gone.code, "counter").reason is Reason.UNKNOWN_CODE
    assert svc.validate(kept.code, "counter").admit
    # the minted list callers build snapshots from (edge/app.py) leaves it out as well
    assert [s.code for s in hub.minted_short_codes(SITE)] == [kept.code]
    svc.import_bundle(box.snapshot(short_codes=hub.minted_short_codes(SITE)))
    assert svc.validate(gone.code, "counter").reason is Reason.UNKNOWN_CODE
    # a later mint, and then a delta, ship only the new code
    fresh = hub.mint_short(SITE, box.short())
    delta = cli_delta(box, BundleContent())
    assert header_of(delta)["counts"]["short_add"] == 1
    svc.import_bundle(delta)
    assert svc.validate(fresh.code, "counter").admit
    assert svc.validate(gone.code, "counter").reason is Reason.UNKNOWN_CODE


def test_short_code_minted_again_is_live_again(box: Box) -> None:
    hub = box.hub
    code = hub.mint_short(SITE, box.short())
    svc = box.service()
    svc.import_bundle(cli_snapshot(box))
    svc.import_bundle(cli_delta(box, BundleContent(remove_short_codes=[code.code])))
    assert svc.validate(code.code, "counter").reason is Reason.UNKNOWN_CODE
    # minted again with the same digits: the new mint is shipped, by deltas and snapshots
    hub.mint_short(SITE, box.short(code=code.code))
    svc.import_bundle(cli_delta(box, BundleContent()))
    assert svc.validate(code.code, "counter").admit
    snap = cli_snapshot(box)
    assert header_of(snap)["counts"]["short_add"] == 1  # the later mint only
    svc.import_bundle(snap)
    assert svc.validate(code.code, "counter").admit
    # removed again: both mints stay hidden
    svc.import_bundle(cli_delta(box, BundleContent(remove_short_codes=[code.code])))
    snap = cli_snapshot(box)
    assert header_of(snap)["counts"]["short_add"] == 0
    svc.import_bundle(snap)
    assert svc.validate(code.code, "counter").reason is Reason.UNKNOWN_CODE


def test_key_retired_by_a_delta_stays_retired_in_snapshots(box: Box) -> None:
    svc = box.service()
    svc.import_bundle(box.snapshot())
    old_kid = box.hub.active_kid()
    code, _ = box.ticket()
    svc.import_bundle(box.bundle(BundleContent(retire_kids=[old_kid]), snapshot=False))
    assert svc.validate(code, "counter").reason is Reason.UNKNOWN_KEY
    snap = box.snapshot()
    header = header_of(snap)
    assert header["retire_kids"] == [old_kid]
    assert header["kid"] != old_kid
    assert box.hub.cert_hex(old_kid) not in header["key_certs"]
    svc.import_bundle(snap)
    assert svc.validate(code, "counter").reason is Reason.UNKNOWN_KEY
    fresh, _ = box.ticket()
    assert svc.validate(fresh, "counter").admit
    snap = cli_snapshot(box)
    assert header_of(snap)["retire_kids"] == [old_kid]
    svc.import_bundle(snap)
    assert svc.validate(code, "counter").reason is Reason.UNKNOWN_KEY


def test_retirement_given_in_a_snapshot_drops_the_key_certificate(box: Box) -> None:
    svc = box.service()
    old_kid = box.hub.active_kid()
    code, _ = box.ticket()
    snap = box.bundle(
        BundleContent(lists=DEFAULT, products=ADULT, retire_kids=[old_kid]), snapshot=True
    )
    header = header_of(snap)
    assert header["retire_kids"] == [old_kid]
    assert box.hub.cert_hex(old_kid) not in header["key_certs"]
    svc.import_bundle(snap)
    assert svc.validate(code, "counter").reason is Reason.UNKNOWN_KEY
    assert box.hub.retired_kids() == [old_kid]


def test_ledger_is_one_json_file_replaced_whole(box: Box) -> None:
    ids = [i.to_bytes(16, "big") for i in range(20_000)]
    box.bundle(BundleContent(lists=DEFAULT, products=ADULT, revocations=ids), snapshot=True)
    box.bundle(BundleContent(blocked=ids[:3]), snapshot=False)
    site = box.hub.site_dir(SITE)
    doc = json.loads((site / "ledger.json").read_text())
    assert len(doc["revoked"]) == 20_000 and doc["blocked"] == [c.hex() for c in ids[:3]]
    assert not [p.name for p in site.iterdir() if p.name.endswith(".tmp")]
    before = os.stat(site / "ledger.json").st_mtime_ns
    box.bundle(BundleContent(products=ADULT), snapshot=False)  # nothing cumulative: not rewritten
    assert os.stat(site / "ledger.json").st_mtime_ns == before
    counts = header_of(box.snapshot())["counts"]
    assert (counts["revoke"], counts["block"]) == (20_000, 3)


def edge(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return edge_main(*args, stdin=stdin)  # `edge ...`'s main() in-process: 12 runs, no start-ups


def test_cli_snapshot_after_revoking_delta_keeps_the_revocation(tmp_path: Path) -> None:
    """The reported reproduction, through `edge hub ...` and `edge bundle import`."""
    hub, home = str(tmp_path / "hub"), str(tmp_path / "box")
    assert edge("hub", "init", "--dir", hub, "--keys", "2").returncode == 0
    r = edge("init", "--home", home, "--site", "s1", "--trust-anchor", f"{hub}/trust-anchor.json")
    assert r.returncode == 0, r.stderr
    r = edge("hub", "mint", "--dir", hub, "--site", "s1", "--product", "adult")
    assert r.returncode == 0, r.stderr
    ticket = r.stdout.strip().splitlines()[-1]
    canonical = r.stderr.split("canonical id:")[1].split()[0]

    def bundle(name: str, *extra: str) -> None:
        out = str(tmp_path / name)
        r = edge("hub", "bundle", "--dir", hub, "--site", "s1", "--out", out, *extra)
        assert r.returncode == 0, r.stderr
        r = edge("bundle", "import", out, "--home", home)
        assert r.returncode == 0, r.stdout + r.stderr

    def decision() -> str:
        r = edge("validate", "-", "--home", home, "--json", stdin=ticket + "\n")
        doc: dict[str, str] = json.loads(r.stdout)
        return doc["reason"] if doc["decision"] != "admit" else "ok"

    bundle("1.bundle")
    assert decision() == "ok"
    (tmp_path / "revoke.toml").write_text(f'revocations = ["{canonical}"]\n')
    bundle("2.bundle", "--delta", "--input", str(tmp_path / "revoke.toml"))
    assert decision() == "revoked"
    bundle("3.bundle")
    assert decision() == "revoked"
