"""Splitting a serial reader's byte stream into scans (pure: time is passed in).

Rules, in the order a technician would ask about them:
- A scan ends at a terminator byte (CR or LF for suffix "crlf", so CRLF gives one scan and an
  empty line, which is skipped; TAB for "tab").
- Inter-character timeout: a partial line followed by a gap of `gap` seconds is DROPPED (and
  logged) when the reader is configured with a suffix, because a truncated code can be a valid
  shorter code; with suffix "none" (reader sends no terminator) the gap is what ends a scan, so
  the partial line is the scan.
- Length cap: a line longer than `max_len` bytes is discarded up to its terminator, with a log.
- GM65 command frames at the start of a line (our own commands echoed back by the adapter) and
  the reader's acknowledgements are taken out of the stream and kept in `frames`.
"""

from __future__ import annotations

import logging
from collections import deque

from drivers.scanner import gm65

log = logging.getLogger(__name__)

TERMINATORS = {"crlf": b"\r\n", "tab": b"\t", "none": b""}


FRAMES_KEPT = 64


class LineAssembler:
    def __init__(self, device: str, suffix: str, max_len: int, gap: float) -> None:
        self.device = device
        self.terminators = TERMINATORS[suffix]
        self.max_len = max_len
        self.gap = gap
        # Echoed commands and reader replies, the latest ones only (diagnostics): a reader acks
        # every feedback command, so an unbounded list grew ~50-300 bytes per scan.
        self.frames: deque[bytes] = deque(maxlen=FRAMES_KEPT)
        self.dropped = 0  # partial, over-long lines dropped
        self._buf = bytearray()
        self._overflow = False
        self._last = 0.0

    @property
    def pending(self) -> bool:
        return bool(self._buf) or self._overflow

    def deadline(self) -> float | None:
        """When the pending partial line expires (monotonic), or None if nothing is pending."""
        return self._last + self.gap if self.pending else None

    def feed(self, data: bytes, now: float) -> list[bytes]:
        out: list[bytes] = []
        if not data:
            return out
        flushed = self.expire(now)
        if flushed is not None:
            out.append(flushed)
        self._last = now
        self._buf += data
        while self._buf:
            if not self._overflow:
                n = gm65.frame_length(self._buf)
                if n is None or (n and len(self._buf) < n):
                    break  # wait for the rest of the frame (the gap clears a stuck one)
                if n:
                    self.frames.append(bytes(self._buf[:n]))
                    del self._buf[:n]
                    continue
            idx = self._find_terminator()
            if idx < 0:
                if len(self._buf) > self.max_len:
                    self._log_overflow(bytes(self._buf))
                    self._buf.clear()
                    self._overflow = True
                break
            line = bytes(self._buf[:idx])
            del self._buf[: idx + 1]
            if self._overflow:
                self._overflow = False  # the tail of an over-long line
            elif len(line) > self.max_len:
                self._log_overflow(line)
            elif line:
                out.append(line)
        return out

    def expire(self, now: float) -> bytes | None:
        """Apply the inter-character timeout; returns the scan it ends (suffix "none")."""
        if not self.pending or now - self._last < self.gap:
            return None
        line, overflow = bytes(self._buf), self._overflow
        self._buf.clear()
        self._overflow = False
        if overflow or not line:
            return None
        if not self.terminators and gm65.frame_length(line) == 0 and len(line) <= self.max_len:
            return line
        self.dropped += 1
        log.warning(
            "scanner %s: dropped %d bytes with no terminator after a %.0f ms gap: %r",
            self.device,
            len(line),
            self.gap * 1000,
            line[:40],
        )
        return None

    def _find_terminator(self) -> int:
        hits = [i for i in (self._buf.find(t) for t in self.terminators) if i >= 0]
        return min(hits) if hits else -1

    def _log_overflow(self, sample: bytes) -> None:
        self.dropped += 1
        log.warning(
            "scanner %s: discarded a line over %d bytes: %r...",
            self.device,
            self.max_len,
            sample[:40],
        )
