"""Bundles that come down the cloud link in chunks (docs/sync.md, type `bundle_chunk`).

Each chunk is stored as its own file under state_dir/incoming/<bundle_id>/ as it arrives, so a
link that drops half way resumes with the chunks it has (across a restart too: the files stay,
and the inbox re-handles what a crash left unhandled). Chunks may come twice or out of order;
once all `count` are there the file is assembled, its size and sha256 checked against what every
chunk announced, and only then imported like any bundle (edge/cache.py verifies its signature,
site and sequence). The incoming directory goes once the bundle is imported or refused.

A delta that overtakes the one it builds on (its base is newer than the active cache) waits in
incoming/waiting/ and is imported right after its base, instead of being refused as wrong_base.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge import bundle as fmt
from edge.errors import BundleRefused
from edge.store import write_atomic

if TYPE_CHECKING:
    from edge.box import Box
    from edge.service import RedemptionService

log = logging.getLogger(__name__)

MAX_CHUNKS = 65536
MAX_SIZE = 2 << 30  # a million-code snapshot is far below this
STALE_S = 3 * 86400  # chunks of a bundle that never completed (the hub's TTL is a day)
_BUNDLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_SHA = re.compile(r"[0-9a-f]{64}")


def _int(body: dict[str, Any], key: str, low: int, high: int) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BundleRefused("invalid_content", f"chunk {key}: an integer in {low}..{high}")
    return value


def active_seq(svc: RedemptionService) -> int:
    """The active cache's sequence (0: none). On the database thread: the view's connection
    lives there."""
    return svc.view.state.seq if svc.view.refresh() and svc.view.state else 0


class BundleInbox:
    """Chunk files on disk. Not thread-safe: one caller at a time (BundleReceiver's lock)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "incoming"
        self.waiting = self.dir / "waiting"

    def add(self, body: dict[str, Any]) -> Path | None:
        """Store one chunk; the assembled, verified file once every chunk is there, else None.
        Raises BundleRefused: invalid_content for a malformed chunk (the others are kept),
        corrupted when the assembled file does not match its sha256 (its chunks are dropped)."""
        bundle_id = body.get("bundle_id")
        if not isinstance(bundle_id, str) or not _BUNDLE_ID.fullmatch(bundle_id):
            raise BundleRefused("invalid_content", "chunk bundle_id: 1-100 of A-Z a-z 0-9 _ -")
        count = _int(body, "count", 1, MAX_CHUNKS)
        index = _int(body, "index", 0, count - 1)
        size = _int(body, "size", 0, MAX_SIZE)
        sha = body.get("sha256")
        if not isinstance(sha, str) or not _SHA.fullmatch(sha):
            raise BundleRefused("invalid_content", "chunk sha256: 64 lowercase hex digits")
        data_b64 = body.get("data")
        try:
            if not isinstance(data_b64, str):
                raise ValueError("not a string")
            data = base64.b64decode(data_b64, validate=True)
        except (ValueError, binascii.Error) as err:
            raise BundleRefused("invalid_content", f"chunk data is not base64: {err}") from err
        if len(data) > size:
            raise BundleRefused("invalid_content", f"chunk of {len(data)} bytes in a {size} file")
        where = self.dir / bundle_id
        where.mkdir(parents=True, exist_ok=True)
        # Every chunk of one bundle must describe the same file; the first one sets it.
        meta = f"{count} {size} {sha}"
        meta_file = where / "meta"
        if meta_file.exists():
            if meta_file.read_text() != meta:
                raise BundleRefused(
                    "invalid_content", f"chunk {index} of {bundle_id} describes another file"
                )
        else:
            self._write(meta_file, meta.encode())
        chunk = where / f"{index:06d}.chunk"
        if not chunk.exists():  # a chunk delivered twice is kept once
            self._write(chunk, data)
        have = len(list(where.glob("*.chunk")))
        log.debug("bundle %s: chunk %d, %d of %d", bundle_id, index, have, count)
        if have < count:
            return None
        return self._assemble(where, count, size, sha)

    def _write(self, path: Path, data: bytes) -> None:
        write_atomic(path, data)

    def _assemble(self, where: Path, count: int, size: int, sha: str) -> Path:
        out = where / "bundle"
        digest, total = hashlib.sha256(), 0
        with out.open("wb") as f:
            for i in range(count):
                data = (where / f"{i:06d}.chunk").read_bytes()
                digest.update(data)
                total += len(data)
                f.write(data)
        if total != size or digest.hexdigest() != sha:
            self.discard(where.name)
            raise BundleRefused(
                "corrupted",
                f"assembled bundle {where.name}: {total} bytes, sha256 {digest.hexdigest()[:16]}"
                f"..., expected {size} bytes, {sha[:16]}...",
            )
        return out

    def discard(self, bundle_id: str) -> None:
        shutil.rmtree(self.dir / bundle_id, ignore_errors=True)

    def park(self, bundle_id: str, path: Path, base_seq: int) -> Path:
        """Keep an assembled delta whose base has not been imported yet."""
        self.waiting.mkdir(parents=True, exist_ok=True)
        dest = self.waiting / f"{base_seq:012d}-{bundle_id}.bundle"
        os.replace(path, dest)
        self.discard(bundle_id)
        return dest

    def parked(self) -> list[Path]:
        """Waiting deltas, lowest base first."""
        return sorted(self.waiting.glob("*.bundle")) if self.waiting.exists() else []

    def prune(self, now: float | None = None, max_age_s: float = STALE_S) -> int:
        """Drop chunks and waiting deltas nobody completed or needed within `max_age_s`."""
        t = time.time() if now is None else now
        dropped = 0
        if not self.dir.exists():
            return 0
        for entry in [*self.dir.iterdir(), *self.parked()]:
            if entry == self.waiting or t - entry.stat().st_mtime < max_age_s:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            dropped += 1
        return dropped


def _base_seq(path: Path) -> int | None:
    with path.open("rb") as f:
        return fmt.BundleReader(f).header.base_seq


class BundleReceiver:
    """The daemon's handler for `bundle_chunk` messages (edge/cloud.py). Chunks and imports go
    one at a time, in arrival order, so two bundles cannot race into the cache."""

    def __init__(self, state_dir: Path) -> None:
        self.inbox = BundleInbox(state_dir)
        self._lock = asyncio.Lock()
        self.inbox.prune()

    async def handle(self, box: Box, body: dict[str, Any]) -> str:
        async with self._lock:
            bundle_id = str(body.get("bundle_id", "?"))[:100]
            try:
                path = await asyncio.to_thread(self.inbox.add, body)
            except BundleRefused as err:
                await self._refused(box, bundle_id, err)
                return f"refused: {err.reason}: {err.detail}"
            if path is None:
                return f"chunk {body.get('index')} of {body.get('count')} stored"
            return await self._import(box, bundle_id, path)

    async def _import(self, box: Box, bundle_id: str, path: Path) -> str:
        try:
            result = await box.import_bundle(path)
        except BundleRefused as err:
            if err.reason == "wrong_base" and await self._ahead(box, path):
                base = await asyncio.to_thread(_base_seq, path)
                assert base is not None
                await asyncio.to_thread(self.inbox.park, bundle_id, path, base)
                log.info("bundle %s waits for seq %d before it can be imported", bundle_id, base)
                return f"waiting for seq {base}"
            self.inbox.discard(bundle_id)
            if err.reason == "rollback":
                # Not newer than the active cache: the same bundle by two routes (the site's
                # broadcast and a catch-up), or an old one delivered again. Nothing to do.
                log.info("bundle %s already applied or older: %s", bundle_id, err.detail)
                return f"already applied: {err.detail}"
            await self._refused(box, bundle_id, err)
            return f"refused: {err.reason}: {err.detail}"
        self.inbox.discard(bundle_id)
        log.info("bundle %s imported: seq %d (%s)", bundle_id, result.seq, result.kind)
        done = f"imported seq {result.seq} ({result.kind})"
        await self._import_parked(box)
        return done

    async def _ahead(self, box: Box, path: Path) -> bool:
        """A delta on a base newer than the active cache: an earlier bundle is still coming."""
        svc = box.svc
        assert svc is not None
        try:
            base = await asyncio.to_thread(_base_seq, path)
        except (BundleRefused, OSError):
            return False
        return base is not None and base > await box.db.call(active_seq, svc)

    async def _import_parked(self, box: Box) -> None:
        """Deltas that waited for the bundle just imported (or a later one)."""
        progress = True
        while progress:
            progress = False
            for path in self.inbox.parked():
                bundle_id = path.stem.split("-", 1)[1]
                try:
                    result = await box.import_bundle(path)
                except BundleRefused as err:
                    if err.reason == "wrong_base" and await self._ahead(box, path):
                        continue  # its base has still not come
                    path.unlink(missing_ok=True)
                    await self._refused(box, bundle_id, err)
                    continue
                path.unlink(missing_ok=True)
                log.info("waiting bundle %s imported: seq %d", bundle_id, result.seq)
                progress = True

    async def _refused(self, box: Box, bundle_id: str, err: BundleRefused) -> None:
        log.warning("bundle %s refused: %s", bundle_id, err)
        body = {"bundle_id": bundle_id, "reason": err.reason, "detail": err.detail[:300]}
        await box.record("bundle_refused", body)
