"""Issuer-side setup: a hub with signing keys, a snapshot, a chain of deltas and code pools.

Built in a child process (`python -m bench.fixture WORKDIR SIZES_JSON`) so the benchmark process
never holds the million issuer-side objects (their garbage collection would pollute latencies).
The child writes WORKDIR/fixture.json, which `Fixture.load` reads.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge.codes import Ticket
from edge.config import render_minimal
from edge.textcodec import damm_check_digit
from sync.hub.issuer import BundleContent, Hub, ShortCodeSpec, new_holder_key

SITE = "west-lake"
LIST_ID = "default"
PRODUCTS = ("adult", "child", "senior")


@dataclass(frozen=True)
class Sizes:
    short_codes: int
    revocations: int
    keys: int
    delta_codes: int
    deltas_timed: int  # imported one after another for delta_10k_s
    deltas_spare: int  # half adds, half removals; imported while validating
    validate_samples: int  # per code kind and round, while a delta imports
    rounds: int  # validate rounds (each runs every importer variant once)
    idle_samples: int  # per code kind, nothing else running
    redeem: int  # per redeem phase (fresh ledger, then aged ledger)
    aged_ledger: int  # redemptions already in the ledger for the second phase
    fsync: int
    snapshot_repeats: int
    quiet_s: float  # longest wait for a quiet machine before each measurement

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            short_codes=1_000_000,
            revocations=100_000,
            keys=10,
            delta_codes=10_000,
            deltas_timed=5,
            deltas_spare=120,
            validate_samples=2000,
            rounds=3,
            idle_samples=2000,
            redeem=10_000,
            aged_ledger=300_000,
            fsync=2000,
            snapshot_repeats=3,
            quiet_s=120.0,
        )

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            short_codes=20_000,
            revocations=2_000,
            keys=10,
            delta_codes=1_000,
            deltas_timed=3,
            deltas_spare=150,
            validate_samples=300,
            rounds=1,
            idle_samples=300,
            redeem=300,
            aged_ledger=3000,
            fsync=100,
            snapshot_repeats=1,
            quiet_s=0.0,
        )


@dataclass(frozen=True)
class Fixture:
    workdir: Path
    anchor: Path
    snapshot: Path
    deltas: list[Path]
    holder_key: Path
    pools: dict[str, list[str]]  # signed/rotating/short x validate/redeem -> code texts

    @classmethod
    def load(cls, workdir: Path) -> Fixture:
        doc = json.loads((workdir / "fixture.json").read_text())
        return cls(
            workdir,
            Path(doc["anchor"]),
            Path(doc["snapshot"]),
            [Path(p) for p in doc["deltas"]],
            Path(doc["holder_key"]),
            doc["pools"],
        )

    def make_box(self, box: Path) -> Path:
        """A fresh box home (config, trust anchor; state in the same directory)."""
        box.mkdir(parents=True)
        (box / "anchor.json").write_text(self.anchor.read_text())
        (box / "edge.toml").write_text(render_minimal(SITE, "bench-1", "anchor.json"))
        return box / "edge.toml"


def build_in_child(workdir: Path, sizes: Sizes) -> Fixture:
    subprocess.run(
        [sys.executable, "-m", "bench.fixture", str(workdir), json.dumps(asdict(sizes))], check=True
    )
    return Fixture.load(workdir)


def _short_specs(rng: random.Random, n: int, now: int) -> list[ShortCodeSpec]:
    specs = []
    for body in rng.sample(range(10**10, 10**11), n):
        digits = str(body)
        specs.append(
            ShortCodeSpec(
                digits + damm_check_digit(digits),
                rng.randbytes(16),
                PRODUCTS[body % 3],
                now - 3600,
                now + 30 * 86400,
                kind="voucher" if body % 4 else "pickup",
            )
        )
    return specs


def _tickets(
    hub: Hub, rng: random.Random, n: int, keys: int, now: int, holder: bytes | None = None
) -> list[str]:
    return [
        hub.mint_ticket(
            Ticket(
                kid=i % keys + 1,
                ticket_id=rng.randbytes(16),
                site=SITE,
                product=PRODUCTS[i % 3],
                valid_from=now - 3600,
                valid_until=now + 2 * 86400,
                holder_key=holder,
            )
        )
        for i in range(n)
    ]


def build(workdir: Path, sizes: Sizes) -> None:
    rng = random.Random(20261122)
    now = int(time.time())
    hub = Hub.init(workdir / "hub", keys=sizes.keys)
    t0 = time.monotonic()
    half = sizes.delta_codes // 2
    total = sizes.short_codes + sizes.delta_codes * sizes.deltas_timed + half * sizes.deltas_spare
    specs = _short_specs(rng, total, now)
    snap_specs = specs[: sizes.short_codes]
    n_validate, n_redeem = 2000, 2 * (sizes.redeem // 3 + 1)
    picks = rng.sample(snap_specs, n_validate + n_redeem)
    content = BundleContent(
        site_info={"timezone": "Asia/Shanghai", "rollover_hour": 4},
        products=[{"id": p, "name": p.title()} for p in PRODUCTS],
        lists=[{"id": LIST_ID, "name": "Main gate", "products": ["*"]}],
        short_codes=snap_specs,
        revocations=[rng.randbytes(16) for _ in range(sizes.revocations)],
    )
    snapshot = workdir / "snapshot.bin"
    hub.write_bundle(SITE, snapshot, content, snapshot=True)
    print(
        f"fixture: snapshot of {sizes.short_codes} codes, {sizes.revocations} revocations "
        f"({snapshot.stat().st_size / 1e6:.1f} MB) in {time.monotonic() - t0:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    deltas = []
    start = sizes.short_codes
    for i in range(sizes.deltas_timed):  # 10,000 new codes each (delta_10k_s)
        path = workdir / f"delta-{i:04d}.bin"
        hub.write_bundle(
            SITE,
            path,
            BundleContent(short_codes=specs[start : start + sizes.delta_codes]),
            snapshot=False,
        )
        start += sizes.delta_codes
        deltas.append(str(path))
    # Steady-state deltas: half new codes, half removals of snapshot codes outside the pools,
    # so the cache keeps its size while the validate rounds run.
    keep = {s.code for s in picks}
    removable = deque(s.code for s in snap_specs if s.code not in keep)
    for i in range(sizes.deltas_spare):
        path = workdir / f"delta-{sizes.deltas_timed + i:04d}.bin"
        added = specs[start : start + half]
        removed = [removable.popleft() for _ in range(sizes.delta_codes - half)]
        hub.write_bundle(
            SITE, path, BundleContent(short_codes=added, remove_short_codes=removed), snapshot=False
        )
        removable.extend(s.code for s in added)
        start += half
        deltas.append(str(path))
    holder = new_holder_key(workdir / "holder.key")
    pools: dict[str, Any] = {
        "signed_validate": _tickets(hub, rng, n_validate, sizes.keys, now),
        "rotating_validate": _tickets(hub, rng, 200, sizes.keys, now, holder),
        "short_validate": [s.code for s in picks[:n_validate]],
        "signed_redeem": _tickets(hub, rng, n_redeem, sizes.keys, now),
        "rotating_redeem": _tickets(hub, rng, n_redeem, sizes.keys, now, holder),
        "short_redeem": [s.code for s in picks[n_validate:]],
    }
    doc = {
        "anchor": str(workdir / "hub" / "trust-anchor.json"),
        "snapshot": str(snapshot),
        "deltas": deltas,
        "holder_key": str(workdir / "holder.key"),
        "pools": pools,
    }
    (workdir / "fixture.json").write_text(json.dumps(doc))
    print(
        f"fixture: {len(deltas)} deltas of {sizes.delta_codes} entries and code pools "
        f"ready in {time.monotonic() - t0:.1f} s",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    build(Path(sys.argv[1]), Sizes(**json.loads(sys.argv[2])))
