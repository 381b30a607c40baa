"""Durability (issue 2): real child processes, real SQLite files, SIGKILL at random points.

(a) A process redeems in a loop and is killed many times; afterwards the databases pass
    integrity_check, every redemption it reported as committed is in the ledger exactly once (with
    its outbox event), retries with a reported-but-unanswered redemption id never record twice,
    and no canonical id has more live entries than the code allows.
(b) A process imports a chain of snapshots (~50k short codes) and deltas and is killed during the
    imports; after each kill the active cache is exactly the last reported sequence or the one in
    flight, with precisely that sequence's rows (never a mix), and importing goes on afterwards.
(c) The same while deltas are followed by `PRAGMA wal_checkpoint(TRUNCATE)` on the cache and the
    ledger in a loop (kills aimed inside the checkpoints).

Child scripts: tests/redeem_loop.py and tests/import_loop.py (stdout protocol in their docstrings).
"""

from __future__ import annotations

import json
import random
import secrets
import signal
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.cache import CacheStore
from edge.codes import Ticket
from edge.store import WriteLock
from edge.trust import TrustAnchor
from sync.hub.issuer import BundleContent, ShortCodeSpec
from tests.fixtures import (
    GATE_LANE,
    PRODUCTS,
    SITE,
    TESTS,
    BoxSetup,
    Child,
    active_cache_file,
    integrity,
    make_box,
    short_code,
    short_spec,
)

KILLED = -signal.SIGKILL
POLICY = {"short_code_max_failures": 10_000_000}


# -- helpers --------------------------------------------------------------------------------------


def mint_codes(setup: BoxSetup, path: Path, *, singles: int, multis: int, shorts: int) -> None:
    """Write CODES_JSONL: signed single-entry tickets, entries=3 tickets, and the box's short
    codes (already in its snapshot). Hot codes (the first 150 lines) mix all three kinds."""
    now = int(time.time())
    hub = setup.hub
    rows: list[dict[str, Any]] = []
    for i in range(singles + multis):
        entries = 3 if i < multis else 1
        t = Ticket(
            kid=1 + i % 2,
            ticket_id=secrets.token_bytes(16),
            site=SITE,
            product="adult",
            valid_from=now - 3600,
            valid_until=now + 86400,
            entries=entries,
        )
        rows.append({"code": hub.mint_ticket(t), "canonical": t.canonical_id, "entries": entries})
    for spec in setup.short_specs[:shorts]:
        rows.append({"code": spec.code, "canonical": spec.code_id.hex(), "entries": spec.entries})
    rng = random.Random(7)
    hot = rows[:multis] + rows[multis : multis + 60] + rows[singles + multis :][:60]
    rest = [r for r in rows if r not in hot]
    rng.shuffle(hot)
    rng.shuffle(rest)
    path.write_text("".join(json.dumps(r) + "\n" for r in hot + rest))


def ledger_rows(state: Path) -> list[tuple[str, str, str, str, str]]:
    conn = sqlite3.connect(f"file:{state / 'ledger.db'}", uri=True)
    try:
        return [
            (bytes(r[0]).hex(), r[1], r[2], r[3], r[4])
            for r in conn.execute(
                "SELECT id, canonical_id, state, direction, lane FROM redemptions"
            )
        ]
    finally:
        conn.close()


def check_ledger(
    state: Path, committed: dict[str, str], voided: set[str], allowed: dict[str, int]
) -> list[tuple[str, str, str, str, str]]:
    """The ledger invariants of the issue; returns the rows."""
    assert integrity(state / "ledger.db") == ["ok"]
    rows = ledger_rows(state)
    ids = Counter(r[0] for r in rows)
    by_id = {r[0]: r for r in rows}
    for rid, canonical in committed.items():
        assert ids[rid] == 1, f"reported redemption {rid} is in the ledger {ids[rid]} times"
        assert by_id[rid][1] == canonical, (rid, by_id[rid], canonical)
    for rid in voided:
        assert by_id[rid][2] == "voided", by_id[rid]
    live = Counter(r[1] for r in rows if r[2] in ("pending", "confirmed") and r[3] == "entry")
    over = {c: (n, allowed[c]) for c, n in live.items() if allowed[c] and n > allowed[c]}
    assert not over, f"canonical ids admitted beyond their entries (live, allowed): {over}"
    conn = sqlite3.connect(f"file:{state / 'ledger.db'}", uri=True)
    try:
        orphans = conn.execute(
            "SELECT count(*) FROM redemptions r WHERE NOT EXISTS (SELECT 1 FROM outbox o "
            "WHERE o.redemption_id = r.id AND o.type = 'redemption')"
        ).fetchone()[0]
    finally:
        conn.close()
    assert orphans == 0, "redemptions without their outbox event (not one transaction?)"
    return rows


@dataclass
class Expect:
    seq: int
    kind: str
    short_codes: int
    revoked: int
    products: list[str]


@dataclass
class Chain:
    dir: Path
    expect: dict[int, Expect] = field(default_factory=dict)

    @property
    def last(self) -> int:
        return max(self.expect)


def build_chain(
    setup: BoxSetup, chain_dir: Path, plan: list[tuple[str, int]], base_codes: int = 0
) -> Chain:
    """Bundles seq 2.. after the box's snapshot (seq 1), written by the hub, with the exact
    state each sequence must produce. plan: ("snapshot", extra) or ("delta", adds)."""
    chain_dir.mkdir()
    now = int(time.time())
    rng = random.Random(11)
    base = [short_spec(short_code(500_000_000 + i), now) for i in range(base_codes)]
    present: dict[str, ShortCodeSpec] = {s.code: s for s in setup.short_specs}
    revoked: set[bytes] = set()
    products = {p["id"] for p in PRODUCTS}
    chain = Chain(chain_dir, {1: Expect(1, "snapshot", len(present), 0, sorted(products))})
    for seq, (kind, n) in enumerate(plan, start=2):
        new = [short_spec(short_code(seq * 1_000_000 + i), now) for i in range(n)]
        marker = [{"id": f"p{seq}", "name": f"bundle {seq}"}]
        if kind == "snapshot":
            specs = base + new
            revs = [secrets.token_bytes(16) for _ in range(3 + seq % 5)]
            content = BundleContent(
                products=PRODUCTS + marker,
                lists=[{"id": "default", "products": ["*"]}],
                short_codes=specs,
                revocations=revs,
            )
            present = {s.code: s for s in specs}
            revoked |= set(revs)  # the hub repeats every earlier revocation in a snapshot
            products = {p["id"] for p in PRODUCTS} | {f"p{seq}"}
        else:
            gone = rng.sample(sorted(present), min(len(present) // 10, n // 4))
            revs = [secrets.token_bytes(16) for _ in range(1 + seq % 7)]
            content = BundleContent(
                products=marker, short_codes=new, remove_short_codes=gone, revocations=revs
            )
            for code in gone:
                del present[code]
            present.update({s.code: s for s in new})
            revoked |= set(revs)
            products.add(f"p{seq}")
        header = setup.hub.write_bundle(
            SITE, chain_dir / f"{seq:06d}.bin", content, snapshot=kind == "snapshot", now=now
        )
        assert header["seq"] == seq
        chain.expect[seq] = Expect(seq, kind, len(present), len(revoked), sorted(products))
    return chain


def check_cache(setup: BoxSetup, chain: Chain, allowed: set[int]) -> int:
    """Open a fresh CacheView as a restarted box would; the active cache must be one whole
    sequence from `allowed`, with exactly that sequence's rows. Returns the active seq."""
    path = active_cache_file(setup.config.state_dir)
    assert path is not None
    assert integrity(path) == ["ok"], path
    store = CacheStore(setup.config.state_dir, TrustAnchor.load(setup.config.trust_anchor), SITE)
    view = store.view()
    try:
        assert view.refresh()
        assert view.state is not None
        seq = view.state.seq
        assert seq in allowed, f"active seq {seq}, expected one of {sorted(allowed)}"
        counts = view.counts()
        want = chain.expect[seq]
        got = (counts["short_codes"], counts["revoked"], sorted(view.state.products))
        assert got == (want.short_codes, want.revoked, want.products), (
            f"seq {seq} ({want.kind}) is a mix: rows/products {got[:2]} "
            f"{got[2][-2:]}, expected {want.short_codes}, {want.revoked} {want.products[-2:]}"
        )
        assert counts["blocked"] == 0 and counts["used"] == 0
    finally:
        view.close()
    return seq


def fail_unless_killed(rc: int, stderr: Path, ok: tuple[int, ...] = (KILLED,)) -> None:
    assert rc in ok, f"child exited {rc} (not killed): {stderr.read_text()[-3000:]}"


def seqs_reported(lines: list[str], before: int) -> int:
    """The last sequence a run reported as active (READY or IMPORTED); `before` if none."""
    last = before
    for line in lines:
        parts = line.split()
        if parts[0] in ("READY", "IMPORTED"):
            last = int(parts[1])
    return last


# -- (a) redeem loop ------------------------------------------------------------------------------


def test_kill_during_redeem_loop(tmp_path: Path) -> None:
    setup = make_box(tmp_path, policy=POLICY, n_short=80, lanes=GATE_LANE)
    setup.close()
    codes_file = tmp_path / "codes.jsonl"
    mint_codes(setup, codes_file, singles=1500, multis=60, shorts=80)
    codes = [json.loads(x) for x in codes_file.read_text().splitlines()]
    allowed = {c["canonical"]: c["entries"] for c in codes}
    stderr = tmp_path / "child.stderr"
    rng = random.Random(2024)
    committed: dict[str, str] = {}
    voided: set[str] = set()
    retry = ""
    retried = unclean_seen = ready_kills = 0
    for run in range(36):
        args = [str(TESTS / "redeem_loop.py"), str(setup.box), str(codes_file), str(run), "30"]
        if retry:
            args += ["--retry", retry]
        child = Child(args, stderr)
        mode = run % 3
        if mode == 0:  # anywhere from interpreter start-up through opening the ledger
            time.sleep(rng.uniform(0.005, 0.2))
        elif mode == 1:  # while redeeming, after a random delay
            assert child.wait_for(lambda s: s.startswith("READY"), 20), stderr.read_text()
            time.sleep(rng.uniform(0.005, 0.2))
        else:  # after N lines of output
            n = rng.randint(1, 120)
            seen = [0]

            def nth(_line: str, n: int = n, seen: list[int] = seen) -> bool:
                seen[0] += 1
                return seen[0] >= n

            child.wait_for(nth, 20)
        fail_unless_killed(child.kill(), stderr)
        outcome: dict[str, str] = {}
        intent = ""
        for line in child.lines:
            word, *rest = line.split()
            if word == "READY":
                ready_kills += 1
                unclean_seen += int(rest[0])
            elif word == "INTENT":
                intent = f"{rest[0]}:{rest[1]}:{rest[2]}"
            elif word == "COMMITTED":
                # Reported twice only by a retry that found its own earlier record.
                assert rest[0] not in committed or rest[2:] == ["RECORDED"], line
                committed[rest[0]] = rest[1]
                outcome[rest[0]] = word
            elif word == "DENY":
                outcome[rest[0]] = word
            elif word == "VOIDED":
                voided.add(rest[0])
        # The last scan of this run, if unanswered, is retried with the same id (INTENT is
        # printed before redeem is called: with no INTENT line, a pending retry never ran).
        if intent:
            retry = "" if intent.split(":")[0] in outcome else intent
            retried += bool(retry)
    # A last run stops by itself (max seconds): it releases the lock and clears the marker.
    args = [str(TESTS / "redeem_loop.py"), str(setup.box), str(codes_file), "99", "0.5"]
    if retry:
        args += ["--retry", retry]
    child = Child(args, stderr)
    rc = child.finish(60)
    fail_unless_killed(rc, stderr, ok=(0,))
    assert child.lines[-1] == "STOPPED"
    for line in child.lines:
        word, *rest = line.split()
        if word == "COMMITTED":
            committed[rest[0]] = rest[1]
        elif word == "VOIDED":
            voided.add(rest[0])

    rows = check_ledger(setup.config.state_dir, committed, voided, allowed)
    cache = active_cache_file(setup.config.state_dir)
    assert cache is not None and integrity(cache) == ["ok"]
    # The test did what it claims: many kills while redeeming, many commits, restarts after
    # unclean stops (full integrity check), and retries of unanswered scans.
    assert ready_kills >= 10 and unclean_seen >= 5, (ready_kills, unclean_seen)
    assert len(committed) >= 100, len(committed)
    assert retried >= 3, retried
    assert len(rows) >= len(committed)
    with WriteLock(setup.config.state_dir) as lock:
        assert not lock.unclean  # the clean stop removed the marker


# -- (b) kill during bundle activation ------------------------------------------------------------


def test_kill_during_bundle_activation(tmp_path: Path) -> None:
    setup = make_box(tmp_path, policy=POLICY)
    setup.close()
    plan = [
        ("snapshot", 2),
        ("delta", 6000),
        ("delta", 4000),
        ("snapshot", 5),
        ("delta", 5000),
        ("snapshot", 8),
        ("delta", 3000),
        ("delta", 6000),
        ("snapshot", 11),
        ("delta", 5000),
        ("snapshot", 13),
        ("delta", 4000),
        ("snapshot", 17),
        ("delta", 6000),
        ("delta", 5000),
        ("snapshot", 19),
        ("delta", 6000),
    ]
    chain = build_chain(setup, tmp_path / "chain", plan, base_codes=50_000)
    assert chain.expect[2].short_codes > 50_000
    stderr = tmp_path / "child.stderr"
    rng = random.Random(99)
    active = 1
    interrupted = {"snapshot": 0, "delta": 0}
    took = {"snapshot": 0.2, "delta": 0.05}  # seconds per import, updated from the child's reports
    for run in range(24):
        child = Child([str(TESTS / "import_loop.py"), str(setup.box), str(chain.dir), "60"], stderr)
        in_flight = None
        if run % 4 == 0:  # anywhere from interpreter start-up on
            time.sleep(rng.uniform(0.005, 0.2))
        else:  # inside the import of a snapshot (runs 1, 3 mod 4) or of a delta (2 mod 4)
            want = "delta" if run % 4 == 2 else "snapshot"

            def begins(line: str, want: str = want) -> bool:
                words = line.split()
                return words[0] == "BEGIN" and chain.expect[int(words[1])].kind == want

            if not child.wait_for(begins, 30):  # no such bundle left in the chain
                fail_unless_killed(child.kill(), stderr, ok=(0, KILLED))
                break
            in_flight = int(child.lines[-1].split()[1])
            time.sleep(rng.uniform(0, 1.2 * took[want]))
        rc = child.kill()
        fail_unless_killed(rc, stderr, ok=(KILLED, 0))
        for line in child.lines:
            words = line.split()
            if words[0] == "IMPORTED":
                took[chain.expect[int(words[1])].kind] = float(words[2]) / 1e3
        reported = seqs_reported(child.lines, active)
        seq = check_cache(setup, chain, {reported, reported + 1})
        if in_flight is not None and seq == in_flight - 1:
            interrupted[chain.expect[in_flight].kind] += 1
        active = seq
    # After all that, importing carries on to the end of the chain.
    child = Child([str(TESTS / "import_loop.py"), str(setup.box), str(chain.dir), "60"], stderr)
    fail_unless_killed(child.finish(120), stderr, ok=(0,))
    assert child.lines[-1] == f"DONE {chain.last}", child.lines[-3:]
    assert check_cache(setup, chain, {chain.last}) == chain.last
    cache_dir = setup.config.state_dir / "cache"
    active_file = active_cache_file(setup.config.state_dir)
    assert active_file is not None
    # CURRENT, the active file (with its -wal/-shm) and the importers' lock file stay.
    leftovers = {p.name for p in cache_dir.iterdir()} - {"CURRENT", "import.lock", active_file.name}
    assert not {n for n in leftovers if not n.startswith(active_file.name)}, leftovers
    # Kills really landed inside imports (the old cache was still active afterwards).
    assert interrupted["snapshot"] >= 2 and interrupted["delta"] >= 1, interrupted
    assert integrity(setup.config.state_dir / "ledger.db") == ["ok"]


# -- (c) kill during a WAL checkpoint -------------------------------------------------------------


def test_kill_during_wal_checkpoint(tmp_path: Path) -> None:
    setup = make_box(tmp_path, policy=POLICY, n_short=40)
    setup.close()
    codes_file = tmp_path / "codes.jsonl"
    mint_codes(setup, codes_file, singles=400, multis=20, shorts=40)
    codes = [json.loads(x) for x in codes_file.read_text().splitlines()]
    allowed = {c["canonical"]: c["entries"] for c in codes}
    chain = build_chain(setup, tmp_path / "chain", [("delta", 8000)] * 30)
    stderr = tmp_path / "child.stderr"
    rng = random.Random(5)
    active = 1
    committed: dict[str, str] = {}
    in_checkpoint = wal_bytes = 0
    for run in range(20):
        args = [
            str(TESTS / "import_loop.py"),
            str(setup.box),
            str(chain.dir),
            "60",
            "--checkpoint",
            str(codes_file),
            str(run),
        ]
        child = Child(args, stderr)
        if run % 4 == 0:
            assert child.wait_for(lambda s: s.startswith("READY"), 20), stderr.read_text()
            time.sleep(rng.uniform(0.005, 0.4))
        else:  # aim inside a checkpoint: just after the child announced it
            skip = rng.randint(0, 2)
            count = [0]

            def nth_ckpt(line: str, skip: int = skip, count: list[int] = count) -> bool:
                if line.startswith("CKPT-BEGIN"):
                    count[0] += 1
                return count[0] > skip

            assert child.wait_for(nth_ckpt, 30), stderr.read_text()
            time.sleep(rng.uniform(0, 0.004))
        rc = child.kill()
        fail_unless_killed(rc, stderr)
        if child.lines and child.lines[-1].startswith("CKPT-BEGIN"):
            in_checkpoint += 1  # killed after announcing a checkpoint, before reporting it done
            cache_wal, ledger_wal = map(int, child.lines[-1].split()[2:])
            wal_bytes += cache_wal + ledger_wal
        for line in child.lines:
            word, *rest = line.split()
            if word == "COMMITTED":
                committed[rest[0]] = rest[1]
        reported = seqs_reported(child.lines, active)
        assert integrity(setup.config.state_dir / "ledger.db") == ["ok"]
        active = check_cache(setup, chain, {reported, reported + 1})
        check_ledger(setup.config.state_dir, committed, set(), allowed)
    # A clean run afterwards: imports carry on and checkpoints still work.
    args = [
        str(TESTS / "import_loop.py"),
        str(setup.box),
        str(chain.dir),
        "2.0",
        "--checkpoint",
        str(codes_file),
        "77",
    ]
    child = Child(args, stderr)
    fail_unless_killed(child.finish(60), stderr, ok=(0,))
    assert child.lines[-1].startswith("DONE"), child.lines[-3:]
    assert any(x.startswith("CKPT ") for x in child.lines)
    for line in child.lines:
        word, *rest = line.split()
        if word == "COMMITTED":
            committed[rest[0]] = rest[1]
    final = check_cache(setup, chain, set(chain.expect))
    assert final == chain.last or final > active, (final, active)
    check_ledger(setup.config.state_dir, committed, set(), allowed)
    assert in_checkpoint >= 5 and wal_bytes > 1_000_000, (in_checkpoint, wal_bytes)
    assert len(committed) >= 20, len(committed)
