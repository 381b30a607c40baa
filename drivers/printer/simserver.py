"""A simulated ESC/POS printer on the other end of a TCP socket (like port 9100) or a pty.

    server = SimPrinterServer(SimKnobs(paper="near-end"))
    url = server.start_tcp()        # "tcp://127.0.0.1:PORT", for EscposPrinter
    path = server.start_pty()       # a pty path, for serial:// or file:// URLs
    ...; server.machine.lines; server.close()

Replies go out after `delay` and, with `split`, one byte per write; all waits are interruptible so
close() returns promptly. close() is idempotent and joins the server thread.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading

from drivers.printer.simstate import EscposMachine, SimKnobs
from drivers.pty import PtyDevice

SPLIT_GAP = 0.02


class SimPrinterServer:
    def __init__(self, knobs: SimKnobs | None = None, encoding: str = "gb18030") -> None:
        self.knobs = knobs or SimKnobs()
        self.machine = EscposMachine(self.knobs, encoding, emit=self._emit)
        self._stop = threading.Event()
        self._send_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._pty: PtyDevice | None = None
        self.accepted = 0
        self.port = 0  # the TCP port, once start_tcp() has run

    @property
    def connections(self) -> int:
        """Open client connections (0 once a driver has closed and released its socket)."""
        with self._send_lock:
            return len(self._conns)

    def drop_connections(self) -> None:
        """Close every client socket, as a printer does after an idle timeout or a reboot."""
        with self._send_lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):  # FIN first, as a printer hanging up sends
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def set_knobs(self, knobs: SimKnobs) -> None:
        """Change the reply knobs (delay, split, reply) of a running printer."""
        with self.machine.lock:
            self.knobs = self.machine.knobs = knobs

    def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._listener = socket.create_server((host, port))
        self._thread = threading.Thread(target=self._serve, name="sim-printer-tcp", daemon=True)
        self._thread.start()
        self.port = self._listener.getsockname()[1]
        return f"tcp://{host}:{self.port}"

    def start_pty(self) -> str:
        self._pty = PtyDevice(self._on_pty_bytes, name="sim-printer")
        return self._pty.path

    def close(self) -> None:
        if self._wake_w < 0:
            return  # closed already: the pipe's fd numbers may belong to someone else by now
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._pty is not None:
            self._pty.close()
            self._pty = None
        with self._send_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # -- replies, shaped by the delay/split knobs --

    def _pieces(self, data: bytes) -> list[bytes]:
        if self.knobs.delay:
            self._stop.wait(self.knobs.delay)
        return [data[i : i + 1] for i in range(len(data))] if self.knobs.split else [data]

    def _emit(self, data: bytes) -> None:
        """Unprompted output (a held GS r reply once paper is loaded), to whoever is connected."""
        if self._pty is not None:
            self._pty.send(data)
            return
        with self._send_lock:
            conns = list(self._conns)
        if conns:
            self._send(conns[-1], data)

    def _send(self, conn: socket.socket, data: bytes) -> None:
        for i, piece in enumerate(self._pieces(data)):
            if i:
                self._stop.wait(SPLIT_GAP)
            with self._send_lock, contextlib.suppress(OSError):
                conn.sendall(piece)

    def _on_pty_bytes(self, data: bytes) -> bytes:
        reply = self.machine.feed(data)
        if not reply:
            return b""
        pieces = self._pieces(reply)
        for piece in pieces[:-1]:
            assert self._pty is not None
            self._pty.send(piece)
            self._stop.wait(SPLIT_GAP)
        return pieces[-1]

    # -- the TCP server thread --

    def _serve(self) -> None:
        assert self._listener is not None
        listener = self._listener
        while not self._stop.is_set():
            with self._send_lock:  # fileno() under the lock: drop_connections() makes it -1
                conns = [c for c in self._conns if c.fileno() >= 0]
                fds = [listener.fileno(), self._wake_r, *(c.fileno() for c in conns)]
            try:
                ready, _, _ = select.select(fds, [], [])
            except (OSError, ValueError):  # a socket closed by drop_connections() meanwhile
                continue
            if self._wake_r in ready or self._stop.is_set():
                return
            if listener.fileno() in ready:
                conn, _ = listener.accept()
                self.accepted += 1
                with self._send_lock:
                    self._conns.append(conn)
            for conn in conns:
                if conn.fileno() in ready:
                    self._receive(conn)

    def _receive(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if not data:  # the driver closed its end: release ours
            # drop_connections() may have removed it already (the printer hung up first).
            with self._send_lock, contextlib.suppress(ValueError):
                self._conns.remove(conn)
            conn.close()
            return
        reply = self.machine.feed(data)
        if reply:
            self._send(conn, reply)
