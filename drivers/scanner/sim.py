"""The scanner simulator, usable from config: `sim://?kind=serial&...` or `sim://?kind=camera&...`.

kind=serial: a GM65-style serial reader on a pty, driven by the real SerialScanner. `present()`
sends a scan as the reader would (payload + terminator); the reader acknowledges the GM65
commands the driver writes (`02 00 00 01 00 33 31`) and records them in `commands`.
kind=camera: a simulated camera (simcam.SimCamera) driven by the real CameraScanner.

Fault knobs (URL parameters) and what the caller sees:
- split=N, delay=S: the scan goes out N bytes at a time, S seconds apart: still one scan while
  S < gap; with S > gap the partial line is dropped (inter-character timeout).
- garbage=1: a line of line noise precedes every scan: dropped, the scan reads normally.
- overlong=1: a line longer than max_len precedes every scan: dropped, the scan reads normally.
- terminator=none (cr, lf, crlf, tab): what the reader ends a scan with. With the driver's
  suffix=crlf a scan without terminator is dropped after `gap`; with suffix=none it is the scan.
- dup=N: every scan is sent N more times, 50 ms apart: swallowed within `dedup`, read after.
- echo=1: the adapter echoes what the driver writes (feedback commands): taken out of the stream.
- aim=1: scans carry an AIM code id (`]Q1`), which the driver turns into `symbology`.
Camera: blur, rotate, noise, contrast, glare (see simcam.Degrade), fps, module_px, hold (seconds
a presented code stays in view), symbologies, crash_on (test only: the decoder process aborts),
fail_restarts=N (test only: the first N decoder restarts fail with EAGAIN).
"""

from __future__ import annotations

import queue
import select
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from typing_extensions import override

from drivers.errors import DeviceOperationError
from drivers.pty import PtyDevice
from drivers.scanner import Scanner, ScannerOptions, gm65
from drivers.url import options, parse_url

TERMINATOR_BYTES = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n", "tab": b"\t", "none": b""}
GARBAGE = b"\x00\xff\xfe\x13\x80\x80"
DUP_GAP = 0.05


@dataclass(frozen=True)
class SimOptions(ScannerOptions):
    kind: str = field(default="serial", metadata={"choices": ("serial", "camera")})
    # serial reader and the SerialScanner driving it
    terminator: str = field(default="cr", metadata={"choices": tuple(TERMINATOR_BYTES)})
    suffix: str = field(default="crlf", metadata={"choices": ("crlf", "tab", "none")})
    gap: float = 0.1
    max_len: int = 512
    split: int = 0
    delay: float = 0.0
    garbage: bool = False
    overlong: bool = False
    dup: int = 0
    echo: bool = False
    aim: bool = False
    # camera
    symbologies: str = "qrcode"
    fps: float = 30.0
    width: int = 640
    height: int = 480
    module_px: int = 6
    hold: float = 1.0
    blur: float = 0.0
    rotate: float = 0.0
    noise: float = 0.0
    contrast: float = 1.0
    glare: float = 0.0
    crash_on: str = ""
    fail_restarts: int = 0


class SimSerialReader:
    """The reader's end of the pty: sends scans, acknowledges and records GM65 commands."""

    def __init__(self, opts: SimOptions, name: str = "scanner") -> None:
        self.opts = opts
        self.commands: list[tuple[int, int, bytes]] = []  # (type, zone, data) written to us
        self.received = bytearray()  # every byte the driver wrote, for tests
        self._buf = bytearray()
        self._lock = threading.Lock()
        self.device = PtyDevice(self._on_host, name=f"sim-{name}")
        self.path = self.device.path
        self.path_fd = self.device.pty.master
        self._closed = False
        # Scans go out from a thread of their own, so split/delayed/duplicate bytes arrive
        # spread over time while the driver reads, as from a real reader.
        self._outbox: queue.Queue[bytes | None] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._sender = threading.Thread(target=self._send_loop, name=f"sim-{name}-tx", daemon=True)
        self._sender.start()

    def present(self, code: str | bytes) -> None:
        """'Scan' `code`: queue the bytes a reader sends, with this simulator's faults applied.
        Returns at once; `wait_sent()` waits until the last byte went out."""
        self._idle.clear()
        self._outbox.put(code.encode("utf-8") if isinstance(code, str) else bytes(code))

    def wait_sent(self, timeout: float = 5.0) -> bool:
        return self._idle.wait(timeout)

    def _send_loop(self) -> None:
        while True:
            code = self._outbox.get()
            if code is None:
                return
            try:
                self._scan(code)
            except OSError:
                return  # the pty was closed under us
            finally:
                if self._outbox.empty():
                    self._idle.set()

    def _scan(self, payload: bytes) -> None:
        if self.opts.aim:
            payload = b"]Q1" + payload
        term = TERMINATOR_BYTES[self.opts.terminator]
        term_or_cr = term or b"\r"
        if self.opts.garbage:
            self._send(GARBAGE + term_or_cr)
        if self.opts.overlong:
            self._send(b"X" * (self.opts.max_len * 2) + term_or_cr)
        for copy in range(1 + self.opts.dup):
            if copy:
                time.sleep(DUP_GAP)
            self._send(payload + term)

    def _send(self, data: bytes) -> None:
        step = self.opts.split or len(data)
        for start in range(0, len(data), step):
            if start and self.opts.delay:
                time.sleep(self.opts.delay)
            self.device.send(data[start : start + step])

    def _on_host(self, data: bytes) -> bytes:
        reply = bytearray(data if self.opts.echo else b"")
        with self._lock:
            self.received += data
            self._buf += data
            while self._buf:
                n = gm65.frame_length(self._buf)
                if n is None or (n and len(self._buf) < n):
                    break
                if not n or self._buf[:2] != gm65.HEAD:  # not a command: a reader ignores it
                    del self._buf[:1]
                    continue
                kind, zone, value, crc_ok = gm65.decode_command(bytes(self._buf[:n]))
                del self._buf[:n]
                if crc_ok:
                    self.commands.append((kind, zone, value))
                    reply += gm65.ACK
        return bytes(reply)

    def close(self) -> None:
        """Idempotent."""
        if self._closed:
            return
        self._closed = True
        # Let the pty thread take in the driver's last bytes (OUT1 low written on close).
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline and select.select([self.path_fd], [], [], 0)[0]:
            time.sleep(0.005)
        if self._sender.is_alive():
            self._outbox.put(None)
            self._sender.join(timeout=5)
        self.device.close()


class SimScanner(Scanner):
    """A simulated scanner driven by the real serial or camera driver."""

    def __init__(self, name: str, url: str) -> None:
        parsed = parse_url(name, url, ("sim",))
        opts = options(name, SimOptions, parsed.params)
        super().__init__(name, url, opts.dedup)
        self.options = opts
        self.reader: SimSerialReader | None = None
        self.camera: Any = None  # simcam.SimCamera, imported only for kind=camera
        self.inner: Scanner | None = None
        self._recorded: list[tuple[int, int, bytes]] = []

    def present(self, code: str | bytes) -> None:
        """Put a code in front of the simulated reader (the camera holds it `hold` seconds)."""
        if self.reader is not None:
            self.reader.present(code)
        elif self.camera is not None:
            self.camera.present(code, hold=self.options.hold)
        else:
            raise DeviceOperationError(self.name, "present on a simulator that is not open")

    @property
    def commands(self) -> list[tuple[int, int, bytes]]:
        """GM65 commands (type, zone, data) the driver sent to the simulated reader."""
        return list(self.reader.commands) if self.reader is not None else list(self._recorded)

    @override
    def _open(self) -> None:
        o = self.options
        try:
            if o.kind == "serial":
                self.reader = SimSerialReader(o, self.name)
                query = urlencode(
                    {
                        "dedup": 0,
                        "suffix": o.suffix,
                        "gap": o.gap,
                        "max_len": o.max_len,
                        "aim": o.aim,
                        "feedback": "gm65",
                    }
                )
                from drivers.scanner.serial_scanner import SerialScanner

                url = f"serial://{self.reader.path}?{query}"
                self.inner = SerialScanner(f"{self.name}/reader", url)
            else:
                self._open_camera()
            assert self.inner is not None
            self.inner.open()
        except BaseException:
            self._close()
            raise

    def _open_camera(self) -> None:
        from drivers.scanner.camera import CameraScanner
        from drivers.scanner.simcam import Degrade, SimCamera

        o = self.options
        how = Degrade(o.blur, o.rotate, o.noise, o.contrast, o.glare)
        self.camera = SimCamera(o.width, o.height, o.fps, how, o.module_px)
        query = urlencode(
            {
                "dedup": 0,
                "symbologies": o.symbologies,
                "width": o.width,
                "height": o.height,
                "fps": o.fps,
                "crash_on": o.crash_on,
                "fail_restarts": o.fail_restarts,
            }
        )
        camera = self.camera
        self.inner = CameraScanner(
            f"{self.name}/camera", f"camera://sim?{query}", source=lambda: camera
        )

    @override
    def _close(self) -> None:
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.close()
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.close()
            self._recorded = reader.commands
        camera, self.camera = self.camera, None
        if camera is not None:
            camera.close()

    @override
    def _read(self, timeout: float) -> tuple[bytes, str | None] | None:
        if self.inner is None:
            raise DeviceOperationError(self.name, "simulator not open")
        scan = self.inner.read(timeout)
        return None if scan is None else (scan.raw, scan.symbology)

    @override
    def _feedback(self, good: bool) -> None:
        if self.inner is not None:
            self.inner.feedback(good)
