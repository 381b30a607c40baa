"""Shared set-up for the bad-input and durability tests (imported explicitly, not a conftest).

`make_box` builds what a real installation has: a reference hub with two signing keys, a box
directory holding edge.toml (as `edge init` writes it) and the trust anchor, and an imported
snapshot. It mints one valid code of every kind and returns them with the hub and a service.
Everything is real: key files, SQLite files, signatures. Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.codes import Ticket, display_rotating
from edge.config import BoxConfig, load, render_minimal
from edge.service import RedemptionService
from edge.textcodec import damm_check_digit
from sync.hub.issuer import BundleContent, Hub, ShortCodeSpec, load_private, new_holder_key

SITE = "west-lake"
REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
DAY = 86400

# Products and the one check-in list every test box carries.
PRODUCTS = [
    {"id": "adult", "name": "成人票 Adult"},
    {"id": "child", "name": "儿童票 Child"},
    {"id": "pickup", "name": "Pickup"},
]
DEFAULT_LIST = {"id": "default", "name": "Main gate", "products": ["*"]}


GATE_LANE = {"gate": {"kind": "gate", "list": "default", "direction": "entry"}}


def write_box_dir(
    root: Path,
    hub: Hub,
    name: str = "box",
    *,
    policy: dict[str, Any] | None = None,
    lanes: dict[str, dict[str, str]] | None = None,
    device: str = "gate-1",
) -> Path:
    """A box directory as `edge init` leaves it: edge.toml and the trust anchor (state in it).

    `policy` adds or overrides keys of the [policy] table (e.g. short_code_max_failures, so that
    a fuzz run's thousands of bad numeric codes do not rate-limit the lane); `lanes` adds lanes
    beside the minimal config's `counter` (e.g. GATE_LANE, whose redemptions stay pending).
    """
    box = root / name
    box.mkdir(parents=True)
    (box / "anchor.json").write_text((hub.dir / "trust-anchor.json").read_text())
    text = render_minimal(SITE, device, "anchor.json")
    if policy:
        lines = text.splitlines(keepends=True)
        at = lines.index("[policy]\n") + 1
        existing = {ln.split("=")[0].strip(): i for i, ln in enumerate(lines) if "=" in ln}
        for key, value in policy.items():
            rendered = f"{key} = {value!r}\n".replace("'", '"')
            if key in existing and existing[key] > at - 1:
                lines[existing[key]] = rendered
            else:
                lines.insert(at, rendered)
        text = "".join(lines)
    for lane, table in (lanes or {}).items():
        text += f"\n[lanes.{lane}]\n" + "".join(f'{k} = "{v}"\n' for k, v in table.items())
    (box / "edge.toml").write_text(text)
    return box


def box_config(box: Path) -> BoxConfig:
    return load(box / "edge.toml", box)


def short_code(n: int, digits: int = 12) -> str:
    """A deterministic, unique numeric code with a valid Damm check digit."""
    body = str(10 ** (digits - 2) + n)
    assert len(body) == digits - 1
    return body + damm_check_digit(body)


def short_spec(
    code: str,
    now: int,
    *,
    product: str = "adult",
    entries: int = 1,
    persons: int = 1,
    kind: str = "voucher",
) -> ShortCodeSpec:
    return ShortCodeSpec(
        code,
        secrets.token_bytes(16),
        product,
        now - DAY,
        now + 7 * DAY,
        entries=entries,
        persons=persons,
        kind=kind,
    )


@dataclass
class BoxSetup:
    """What `make_box` built. `codes` holds one valid code of each kind (text as scanned)."""

    root: Path
    hub: Hub
    box: Path
    config: BoxConfig
    service: RedemptionService
    codes: dict[str, str]
    canonical: dict[str, str]  # kind -> canonical id of the code in `codes`
    holder_key: Ed25519PrivateKey
    short_specs: list[ShortCodeSpec] = field(default_factory=list)

    def rotating_at(self, shown_at: int | None = None) -> str:
        """A fresh display code of the holder-bound ticket (what the phone shows now)."""
        at = int(time.time()) if shown_at is None else shown_at
        return display_rotating(self.codes["rotating_ticket"], self.holder_key, at)

    def close(self) -> None:
        self.service.close()


def make_box(
    root: Path,
    *,
    policy: dict[str, Any] | None = None,
    n_short: int = 3,
    lanes: dict[str, dict[str, str]] | None = None,
    name: str = "box",
) -> BoxSetup:
    """Hub (2 signing keys), box dir with edge.toml + anchor, snapshot imported, codes minted.

    codes: "signed" (single entry, kid 2), "multi" (entries=3, kid 1), "rotating_ticket" (the
    holder-bound signed ticket, which alone is `holder_required`), "rotating" (its display code
    at set-up time; use `rotating_at()` for a fresh one) and "short" (a 12-digit voucher).
    """
    root.mkdir(parents=True, exist_ok=True)
    hub = Hub.init(root / "hub", keys=2)
    now = int(time.time())
    box = write_box_dir(root, hub, name, policy=policy, lanes=lanes)
    specs = [hub.mint_short(SITE, short_spec(short_code(7000 + i), now)) for i in range(n_short)]
    content = BundleContent(products=PRODUCTS, lists=[DEFAULT_LIST], short_codes=specs)
    hub.write_bundle(SITE, root / "snapshot.bin", content, snapshot=True)
    config = box_config(box)
    service = RedemptionService(config)
    service.import_bundle(root / "snapshot.bin")

    def ticket(kid: int, **kw: Any) -> Ticket:
        return Ticket(
            kid=kid,
            ticket_id=secrets.token_bytes(16),
            site=SITE,
            product="adult",
            valid_from=now - 3600,
            valid_until=now + 7 * DAY,
            **kw,
        )

    signed = ticket(2)
    multi = ticket(1, entries=3, persons=2)
    holder_pub = new_holder_key(root / "holder.key")
    holder_priv = load_private(root / "holder.key")
    bound = ticket(1, holder_key=holder_pub, entries=3)
    codes = {
        "signed": hub.mint_ticket(signed),
        "multi": hub.mint_ticket(multi),
        "rotating_ticket": hub.mint_ticket(bound),
        "short": specs[0].code,
    }
    codes["rotating"] = display_rotating(codes["rotating_ticket"], holder_priv, now)
    canonical = {
        "signed": signed.canonical_id,
        "multi": multi.canonical_id,
        "rotating_ticket": bound.canonical_id,
        "rotating": bound.canonical_id,
        "short": specs[0].code_id.hex(),
    }
    return BoxSetup(root, hub, box, config, service, codes, canonical, holder_priv, specs)


# -- SQLite inspection (plain sqlite3, read-only use) -----------------------------------------


def integrity(path: Path) -> list[str]:
    """PRAGMA integrity_check of a database file, as a list of result rows (["ok"] when sound)."""
    conn = sqlite3.connect(f"file:{path}", uri=True, isolation_level=None)
    try:
        return [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
    finally:
        conn.close()


def active_cache_file(state_dir: Path) -> Path | None:
    current = state_dir / "cache" / "CURRENT"
    if not current.exists():
        return None
    return state_dir / "cache" / current.read_text().strip()


CACHE_TABLES = ("short_codes", "revoked", "blocked", "used", "keys", "retired")


def cache_facts(path: Path) -> dict[str, Any]:
    """seq, row counts and products of a cache file (what must match one whole bundle state)."""
    conn = sqlite3.connect(f"file:{path}", uri=True, isolation_level=None)
    try:
        meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in CACHE_TABLES}
        return {
            "seq": meta["seq"],
            "counts": counts,
            "products": sorted(meta["products"]),
            "lists": sorted(meta["lists"]),
            "meta": meta,
        }
    finally:
        conn.close()


# -- child processes ---------------------------------------------------------------------------


class Child:
    """A real child process (sys.executable) whose stdout lines are collected by a thread."""

    def __init__(self, args: Sequence[str], stderr_path: Path) -> None:
        self._stderr = stderr_path.open("ab")
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        self.lines: list[str] = []
        self._queue: Queue[str | None] = Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            if line.endswith("\n"):  # a line cut by SIGKILL is not a report
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Collect lines until one satisfies `predicate` (True) or time/stream runs out (False)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                line = self._queue.get(timeout=left)
            except Empty:
                return False
            if line is None:
                self._queue.put(None)
                return False
            self.lines.append(line)
            if predicate(line):
                return True

    def kill(self) -> int:
        """SIGKILL (if still running), reap, and drain the remaining output."""
        if self.proc.poll() is None:
            self.proc.kill()
        rc = self.proc.wait()
        self._thread.join(timeout=10)
        while True:
            try:
                line = self._queue.get_nowait()
            except Empty:
                break
            if line is not None:
                self.lines.append(line)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._stderr.close()
        return rc

    def finish(self, timeout: float) -> int:
        """Let the child run to its end (no kill); returns its exit code."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        return self.kill()
