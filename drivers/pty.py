"""Pseudo-terminal pairs for device simulators: the driver opens the slave path like a real
serial port, the simulator reads and writes the master fd.

Both ends are set raw at once: a fresh pty has ECHO, ICANON, ICRNL and IXON on, and swallows
0x11 (XON, which is also the 8A board's unlock opcode) or turns CR into CRLF.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import tty
from collections.abc import Callable


class PtyPair:
    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class PtyDevice:
    """A simulated serial device: a thread feeds bytes from the master fd to `on_bytes` and
    writes whatever it returns. `close()` stops the thread and closes both ends (idempotent)."""

    def __init__(self, on_bytes: Callable[[bytes], bytes], name: str = "sim") -> None:
        self.pty = PtyPair()
        self.path = self.pty.path
        self._on_bytes = on_bytes
        self._stop_r, self._stop_w = os.pipe()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"pty-{name}", daemon=True)
        self._thread.start()

    def send(self, data: bytes) -> None:
        """Write unsolicited bytes to the driver (e.g. a scanner's scan)."""
        with self._lock:
            os.write(self.pty.master, data)

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self.pty.master, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                data = os.read(self.pty.master, 4096)
            except OSError:
                return
            if not data:
                return
            reply = self._on_bytes(data)
            if reply:
                with self._lock:
                    os.write(self.pty.master, reply)

    def close(self) -> None:
        if self._thread.is_alive():
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pty.close()
