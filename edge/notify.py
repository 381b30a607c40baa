"""systemd notification without depending on systemd: READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

The protocol is one datagram per message to the AF_UNIX socket named by $NOTIFY_SOCKET (a path,
or an abstract name starting with "@"). Without the variable (not started by systemd, a test, a
developer's shell) every call does nothing. The watchdog interval comes from $WATCHDOG_USEC (and
$WATCHDOG_PID, when set, must be this process). Callers send WATCHDOG=1 from the main loop after a
health check, never from a free-running thread, so a stuck loop is restarted.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s: float | None = int(usec) / 1e6 if usec.isdigit() and mine else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        """Send `KEY=value` lines as one message; False (logged) when it could not be sent."""
        if not self.address:
            return False
        message = "\n".join(lines).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall(message)
        except OSError as err:  # systemd gone or the socket wrong: never fatal for the daemon
            log.warning("sd_notify %s failed: %s", lines[0] if lines else "", err)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))
