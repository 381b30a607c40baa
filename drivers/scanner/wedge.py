"""HID keyboard-wedge scanners through evdev, grabbed exclusively so scans never reach a console.

URL: `evdev:///dev/input/by-id/usb-<vendor>_Barcode_Scanner-event-kbd?tab_ends=0`
Needs the `evdev` package (pip install evdev, imported only when a wedge opens) and read access
to the event node (the `input` group or a udev rule). Some scanners expose two event nodes and
only one carries the keystrokes: configure the `-event-kbd` one. A wedge has no command channel:
feedback is the display hook only. Payloads are what a US layout can type (no GBK: use CDC mode).
"""

from __future__ import annotations

import contextlib
import select
import time
from dataclasses import dataclass
from typing import Any

from typing_extensions import override

from drivers.errors import DeviceInitError, DeviceOperationError
from drivers.port import open_hint
from drivers.scanner import Scanner, ScannerOptions
from drivers.scanner.keymap import KeyState, decode_keys
from drivers.url import options, parse_url


@dataclass(frozen=True)
class WedgeOptions(ScannerOptions):
    tab_ends: bool = False
    grab: bool = True


class WedgeScanner(Scanner):
    """A keyboard-wedge scanner read from its /dev/input event node."""

    def __init__(self, name: str, url: str) -> None:
        parsed = parse_url(name, url, ("evdev",))
        opts = options(name, WedgeOptions, parsed.params)
        super().__init__(name, url, opts.dedup)
        self.options = opts
        self.path = parsed.target
        self._dev: Any = None
        self._state = KeyState()
        self._done: list[str] = []

    @override
    def _open(self) -> None:
        try:
            import evdev
        except ImportError as err:
            raise DeviceInitError(
                self.name, "python-evdev is not installed", "pip install evdev"
            ) from err
        try:
            self._dev = evdev.InputDevice(self.path)
            if self.options.grab:
                self._dev.grab()  # EVIOCGRAB: the scan must not also type into a console
        except OSError as err:
            self._close()
            raise DeviceInitError(
                self.name,
                f"cannot open {self.path}: {err}",
                open_hint(err, self.path).replace("dialout", "input"),
            ) from err
        self._state = KeyState()

    @override
    def _close(self) -> None:
        dev, self._dev = self._dev, None
        if dev is not None:
            with contextlib.suppress(OSError):
                dev.close()  # closing the fd also releases the grab

    @override
    def _read(self, timeout: float) -> tuple[bytes, str | None] | None:
        deadline = time.monotonic() + timeout
        while not self._done:
            left = deadline - time.monotonic()
            if left <= 0 or self._dev is None:
                return None
            try:
                ready, _, _ = select.select([self._dev.fd], [], [], left)
                if not ready:
                    return None
                events = list(self._dev.read())
            except BlockingIOError:
                continue
            except OSError as err:
                raise DeviceOperationError(self.name, f"input device lost: {err}") from err
            done, self._state = decode_keys(events, self._state, self.options.tab_ends)
            self._done += done
        return self._done.pop(0).encode("utf-8"), None

    @override
    def _feedback(self, good: bool) -> None:
        """A wedge has no command channel; the display hook is the only feedback."""
