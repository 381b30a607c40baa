"""Barcode and QR scanners: serial/USB-CDC readers, HID keyboard wedges, cameras, and a sim.

Contract (every scanner driver):
- `read(timeout)` waits at most `timeout` seconds (>= 0) for one scan and returns a `Scan`, or
  None when nothing was scanned in time (an idle reader is normal, not an error). Raises
  DeviceOperationError when the device is not open or has gone away (cable pulled).
- A `Scan` keeps the raw bytes as the reader sent them; `text` is those bytes decoded as UTF-8,
  else GB18030 (a superset of GBK, which Chinese readers emit), else UTF-8 with U+FFFD for the
  undecodable bytes. `symbology` is a zbar-style name (QRCODE, EAN13, CODE128...) when the reader
  says (camera, AIM code id) and None otherwise. `timestamp` is wall-clock seconds (time.time()).
- Duplicate reads: a scan whose text equals one this scanner returned, or suppressed, less than
  `dedup` seconds ago is swallowed (URL parameter `dedup`, seconds, default 2; 0 turns it off).
  The window slides with every sighting, so a code held under a camera fires once, not every
  `dedup` seconds; the lane above also dedupes by canonical ticket id.
- `feedback(good)` signals the visitor: beep and LED through the reader's own command set where
  it has one (GM65-style readers: see gm65.py), a no-op where it has none. It also shows
  `line` on the customer display when the daemon has set `display_hook`. It never raises for a
  display failure (logged) and is called from the same worker thread as `read()`.
- Bad bytes from outside (garbage, over-long lines, undecodable payloads) never raise: they are
  dropped with a log line, and the next scan reads normally.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from typing_extensions import override

from drivers.base import Device, SelfTest
from drivers.errors import DeviceConfigError, DeviceOperationError, DriverError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scan:
    raw: bytes
    text: str
    symbology: str | None
    timestamp: float  # time.time() when the scan was complete
    scanner: str  # the configured device name


@dataclass(frozen=True)
class ScannerOptions:
    """URL parameters every scanner accepts; drivers subclass this for their own."""

    dedup: float = 2.0  # seconds; identical text within this window is swallowed


def decode_text(raw: bytes) -> str:
    """UTF-8, else GB18030 (so GBK payloads read right), else UTF-8 with replacement chars."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("gb18030")
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace")


class Deduper:
    """Sliding-window duplicate suppression of identical text (see the module contract)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._seen: dict[str, float] = {}

    def is_duplicate(self, text: str, now: float) -> bool:
        if self.window <= 0:
            return False
        # Prune so a scanner running for months does not grow this without bound.
        expired = [t for t, at in self._seen.items() if now - at >= self.window]
        for t in expired:
            del self._seen[t]
        duplicate = text in self._seen
        self._seen[text] = now
        return duplicate


class Scanner(Device):
    """A code reader. See the module docstring for the contract."""

    device_class = "scanner"

    def __init__(self, name: str, url: str, dedup: float) -> None:
        super().__init__(name, url)
        if dedup < 0:
            raise DeviceConfigError(name, "dedup", "seconds >= 0")
        self.display_hook: Callable[[str], None] | None = None
        self.duplicates = 0  # reads swallowed by duplicate suppression, for metrics
        self._dedup = Deduper(dedup)
        self._is_open = False

    @property
    def is_open(self) -> bool:
        return self._is_open

    @override
    def open(self) -> None:
        """Acquire the reader. Raises DeviceInitError with a hint. A second call is a no-op."""
        if self._is_open:
            return
        log.info("scanner %s: opening %s", self.name, self.url)
        self._open()
        self._is_open = True

    @override
    def close(self) -> None:
        """Release the reader. Idempotent, safe after a failed open()."""
        self._is_open = False
        self._close()

    def read(self, timeout: float) -> Scan | None:
        """One scan within `timeout` seconds, or None. Duplicates are swallowed (see contract)."""
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        if not self._is_open:
            raise DeviceOperationError(self.name, "read on a scanner that is not open")
        deadline = time.monotonic() + timeout
        while True:
            got = self._read(max(0.0, deadline - time.monotonic()))
            if got is not None:
                raw, symbology = got
                text = decode_text(raw)
                if not self._dedup.is_duplicate(text, time.monotonic()):
                    log.info(
                        "scanner %s: scan of %d chars (%s)", self.name, len(text), symbology or "?"
                    )
                    return Scan(raw, text, symbology, time.time(), self.name)
                self.duplicates += 1
                log.debug("scanner %s: duplicate read swallowed", self.name)
            if time.monotonic() >= deadline:
                return None

    def feedback(self, good: bool, line: str | None = None) -> None:
        """Beep/LED for a good or bad scan where the reader can, and `line` on the display."""
        if not self._is_open:
            raise DeviceOperationError(self.name, "feedback on a scanner that is not open")
        log.info("scanner %s: feedback %s", self.name, "good" if good else "bad")
        self._feedback(bool(good))
        hook = self.display_hook
        if line is not None and hook is not None:
            try:
                hook(line)
            except Exception:  # a broken display must never stop the lane
                log.exception("scanner %s: display hook failed", self.name)

    @override
    def self_test(self, listen: float = 2.0) -> SelfTest:
        """Listen `listen` seconds for one scan; silence is ok (nobody may be scanning)."""
        try:
            self.open()
            scan = self.read(listen)
        except DriverError as err:
            return SelfTest(
                False,
                f"scanner error: {err}",
                getattr(err, "hint", "")
                or "check the reader's cable and configuration / 检查扫码器连接和配置",
            )
        if scan is None:
            return SelfTest(
                True,
                f"opened; no scan within {listen:g} s",
                "present a code to confirm the reader reads / 请扫一个码确认扫码器工作正常",
            )
        return SelfTest(True, f"scan seen: {scan.text!r} ({scan.symbology or 'symbology ?'})")

    @abstractmethod
    def _open(self) -> None:
        """Acquire the device; raise DeviceInitError."""

    @abstractmethod
    def _close(self) -> None:
        """Release everything; idempotent."""

    @abstractmethod
    def _read(self, timeout: float) -> tuple[bytes, str | None] | None:
        """The next raw scan (bytes, symbology or None) within `timeout`, before dedup."""

    @abstractmethod
    def _feedback(self, good: bool) -> None:
        """Signal the visitor through the reader, or do nothing if it cannot."""
