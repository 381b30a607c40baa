"""Camera scanner: OpenCV capture, pyzbar decode in a child process.

URL: `camera:///dev/video0?symbologies=qrcode,ean13&width=640&height=480&fps=30` (or `camera://0`)

Why the shape:
- cv2 is imported inside open(), so a box without a camera never loads OpenCV.
- A capture thread keeps only the newest frame; a decode thread takes it when the decoder is
  free, so a slow decode never builds a backlog (stale frames are dropped and counted).
- pyzbar (ctypes over libzbar) has a known double free on some images (pyzbar #83), so decoding
  runs in a spawned child process fed through a pipe; when the child dies it is restarted (with
  backoff) and the scanner keeps reading. `crash_on` is a test-only knob: the child calls
  os.abort() when it decodes that text, standing in for the native crash. `fail_restarts=N` is
  another: the first N restarts fail with EAGAIN, as spawn does under pid/memory pressure.
- Both threads are supervised: an unexpected exception is logged and the loop goes on after a
  backoff (a failed decoder restart is retried on the next frame). If a thread dies anyway,
  read() raises and self_test() fails, rather than the gate going blind while looking healthy.
- Most frames at a gate are empty: a scene unchanged since a frame with no code is decoded again
  only every `refresh` seconds (a 1/8-scale thumbnail is compared, block change > `still` grey
  levels counts as a change), which keeps an idle camera cheap.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
import queue
import signal
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

from typing_extensions import override

from drivers.errors import DeviceConfigError, DeviceInitError, DeviceOperationError
from drivers.scanner import Scanner, ScannerOptions
from drivers.url import options, parse_url

log = logging.getLogger(__name__)

# zbar symbology names (pyzbar.ZBarSymbol members) a configuration may name.
SYMBOLOGIES = frozenset(
    {
        "EAN2",
        "EAN5",
        "EAN8",
        "UPCE",
        "ISBN10",
        "UPCA",
        "EAN13",
        "ISBN13",
        "COMPOSITE",
        "I25",
        "DATABAR",
        "DATABAR_EXP",
        "CODABAR",
        "CODE39",
        "PDF417",
        "QRCODE",
        "SQCODE",
        "CODE93",
        "CODE128",
    }
)
# A loop that keeps failing waits this long at most before the next try (doubling from 0.1 s).
MAX_BACKOFF = 2.0
DECODE_TIMEOUT = 2.0  # a decode taking longer than this means a hung child: kill and restart
READ_TIMEOUT = 0.2  # seconds the capture loop lets the source wait for one frame
NO_FRAMES_LIMIT = 5.0  # seconds without a frame before read() reports the camera lost
# A decoded code nobody read for this long is dropped: the visitor has walked off, and a late
# scan must not open the gate for whoever stands there now.
RESULT_MAX_AGE = 3.0


class FrameSource(Protocol):
    def read(self, timeout: float) -> Any:
        """The next frame (numpy uint8, grey HxW or BGR HxWx3), or None if none came in time."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class CameraOptions(ScannerOptions):
    symbologies: str = "qrcode"
    width: int = 640
    height: int = 480
    fps: float = 30.0
    refresh: float = 0.5
    still: float = 12.0
    crash_on: str = ""  # test only, see the module docstring
    fail_restarts: int = 0  # test only, see the module docstring


class _WorkerDied(Exception):
    pass


class CameraStalled(DeviceOperationError):
    """A capture or decode thread is no longer running: the camera cannot see codes."""

    hint = (
        "the camera's worker stopped; restart the gateway service and send its log to support "
        "/ 摄像头扫码线程已停止，请重启网关服务并把日志发给技术支持"
    )


def _worker_main(conn: Connection, symbols: list[str], crash_on: bytes) -> None:
    """Child process: decode grey frames `<width><height><pixels>` until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    from pyzbar import pyzbar

    syms = [pyzbar.ZBarSymbol[s] for s in symbols]
    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            return
        width, height = struct.unpack_from("<II", msg)
        found = pyzbar.decode((msg[8:], width, height), symbols=syms)
        out = [(bytes(r.data), str(r.type)) for r in found]
        if crash_on and any(data == crash_on for data, _ in out):
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file from the test knob
            os.abort()
        conn.send(out)


class DecoderProcess:
    """The child decoder and its pipe; restarted by `decode()` after it dies."""

    def __init__(self, symbols: list[str], crash_on: bytes, fail_restarts: int = 0) -> None:
        self.symbols = symbols
        self.crash_on = crash_on
        self.restarts = 0
        self.starts = 0  # successful starts
        self._fail_restarts = fail_restarts
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None
        self._backoff = 0.0

    def start(self) -> None:
        """Spawn the child; raises OSError (EAGAIN, EMFILE...) when the system refuses."""
        if self.starts > 0 and self._fail_restarts > 0:
            self._fail_restarts -= 1
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable (fail_restarts)")
        parent, child = self._ctx.Pipe()
        try:
            proc = self._ctx.Process(
                target=_worker_main,
                args=(child, self.symbols, self.crash_on),
                name="scanner-decoder",
                daemon=True,
            )
            proc.start()
        except BaseException:
            parent.close()  # a spawn failing again and again must not leak descriptors
            raise
        finally:
            child.close()
        self._proc, self._conn = proc, parent
        self.starts += 1

    def decode(self, frame: Any) -> list[tuple[bytes, str]]:
        """Decode one grey frame; raises _WorkerDied (after restarting the child) if it died, or
        OSError if that restart failed (the next call tries to start it again)."""
        if self._conn is None:
            self.start()
        assert self._conn is not None
        height, width = frame.shape[:2]
        try:
            self._conn.send_bytes(struct.pack("<II", width, height) + frame.tobytes())
            if not self._conn.poll(DECODE_TIMEOUT):
                raise _WorkerDied("decoder did not answer")
            result: list[tuple[bytes, str]] = self._conn.recv()
        except (EOFError, OSError, _WorkerDied) as err:
            code = self._proc.exitcode if self._proc is not None else None
            log.error("scanner decoder died (%s, exit %s); restarting", err, code)
            self.stop()
            self.restarts += 1
            self._backoff = _next_backoff(self._backoff)
            return self._restart_after_backoff()
        self._backoff = 0.0
        return result

    def _restart_after_backoff(self) -> list[tuple[bytes, str]]:
        time.sleep(self._backoff)  # a crash loop on one image must not spin a core
        self.start()
        raise _WorkerDied("decoder restarted")

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else int(self._proc.pid)

    def stop(self) -> None:
        conn, proc = self._conn, self._proc
        self._conn = self._proc = None
        if conn is not None:
            conn.close()  # the child sees EOF and exits
        if proc is not None:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=2)
            proc.close()


class CameraScanner(Scanner):
    """A camera whose frames are decoded by zbar in a child process."""

    def __init__(
        self, name: str, url: str, source: Callable[[], FrameSource] | None = None
    ) -> None:
        parsed = parse_url(name, url, ("camera",))
        opts = options(name, CameraOptions, parsed.params)
        super().__init__(name, url, opts.dedup)
        symbols = [s.strip().upper() for s in opts.symbologies.split(",") if s.strip()]
        bad = [s for s in symbols if s not in SYMBOLOGIES]
        if bad or not symbols:
            known = ", ".join(sorted(SYMBOLOGIES))
            raise DeviceConfigError(name, "symbologies", f"comma-separated names from {known}")
        if opts.width <= 0 or opts.height <= 0 or opts.fps <= 0:
            raise DeviceConfigError(name, "width/height/fps", "must be > 0")
        self.options = opts
        self.symbols = symbols
        self.target = parsed.target
        self.stale = 0  # frames replaced before the decoder took them
        self.skipped = 0  # unchanged empty scenes not decoded again
        self.decoded = 0  # frames sent to the decoder
        self._source_factory = source
        self._source: FrameSource | None = None
        self._decoder = DecoderProcess(symbols, opts.crash_on.encode(), opts.fail_restarts)
        self._results: queue.Queue[tuple[float, bytes, str]] = queue.Queue(maxsize=32)
        self._cond = threading.Condition()
        self._latest: Any = None
        self._last_frame_at = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def restarts(self) -> int:
        """How many times the decoder process died and was restarted."""
        return self._decoder.restarts

    @property
    def decoder_pid(self) -> int | None:
        """The decoder child's pid (for CPU accounting), None when it is not running."""
        return self._decoder.pid

    @override
    def _open(self) -> None:
        try:
            import cv2  # noqa: F401  (only a configured camera pays for OpenCV)
        except ImportError as err:
            raise DeviceInitError(
                self.name, f"OpenCV unavailable: {err}", "install opencv-python-headless"
            ) from err
        self._source = (self._source_factory or self._open_capture)()
        self._stop.clear()
        self._last_frame_at = time.monotonic()
        try:
            self._decoder.start()
        except OSError as err:
            self._close()
            raise DeviceInitError(self.name, f"cannot start the decoder: {err}") from err
        for target, label in ((self._capture_loop, "capture"), (self._decode_loop, "decode")):
            thread = threading.Thread(target=target, name=f"{self.name}-{label}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _open_capture(self) -> FrameSource:
        from drivers.scanner.v4l2 import OpenCvSource

        opts = self.options
        return OpenCvSource(self.name, self.target, opts.width, opts.height, opts.fps)

    @override
    def _close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=DECODE_TIMEOUT + 3)
        self._threads.clear()
        self._decoder.stop()
        source, self._source = self._source, None
        if source is not None:
            source.close()

    @override
    def _read(self, timeout: float) -> tuple[bytes, str | None] | None:
        dead = [t.name for t in self._threads if not t.is_alive()]
        if dead and not self._stop.is_set():
            raise CameraStalled(self.name, f"worker thread stopped: {', '.join(dead)}")
        if time.monotonic() - self._last_frame_at > NO_FRAMES_LIMIT:
            raise DeviceOperationError(
                self.name, f"no frames from the camera for {NO_FRAMES_LIMIT:g} s (unplugged?)"
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                seen, data, symbology = self._results.get(
                    timeout=max(0.0, deadline - time.monotonic())
                )
            except queue.Empty:
                return None
            if time.monotonic() - seen <= RESULT_MAX_AGE:
                return data, symbology
            log.info("scanner %s: dropped a scan nobody read for %g s", self.name, RESULT_MAX_AGE)

    @override
    def _feedback(self, good: bool) -> None:
        """A camera has no beeper; the display hook is the visitor's feedback."""

    def _capture_loop(self) -> None:
        source = self._source
        assert source is not None
        import cv2

        backoff = 0.0
        while not self._stop.is_set():
            try:
                asked = time.monotonic()
                frame = source.read(READ_TIMEOUT)
                if frame is None:
                    # None at once (cap.read() failing on an unplugged camera) must not spin a
                    # core: back off. None after the full wait is just a slow camera.
                    if time.monotonic() - asked < READ_TIMEOUT / 2:
                        backoff = _next_backoff(backoff)
                        self._stop.wait(backoff)
                    continue
                if frame.ndim == 3:
                    frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            except Exception:  # a flaky driver or odd frame must not kill capture
                log.exception("scanner %s: capture failed", self.name)
                backoff = _next_backoff(backoff)
                self._stop.wait(backoff)
                continue
            backoff = 0.0
            with self._cond:
                if self._latest is not None:
                    self.stale += 1
                self._latest = frame
                self._last_frame_at = time.monotonic()
                self._cond.notify()

    def _decode_loop(self) -> None:
        import cv2
        import numpy as np

        empty_thumb: Any = None
        last_decode = 0.0
        backoff = 0.0
        while not self._stop.is_set():
            with self._cond:
                if self._latest is None:
                    self._cond.wait(0.2)
                frame, self._latest = self._latest, None
            if frame is None:
                continue
            try:
                height, width = frame.shape[:2]
                thumb = cv2.resize(frame, (width // 8, height // 8), interpolation=cv2.INTER_AREA)
                now = time.monotonic()
                if empty_thumb is not None and now - last_decode < self.options.refresh:
                    change = np.abs(thumb.astype(np.int16) - empty_thumb).max()
                    if change <= self.options.still:
                        self.skipped += 1
                        continue
                last_decode = now
                self.decoded += 1
                found = self._decoder.decode(frame)
            except _WorkerDied:  # restarted after the decoder's own backoff
                empty_thumb = None
                continue
            except Exception:
                # e.g. the restart's spawn failed (EAGAIN, EMFILE): this thread must live on, or
                # the camera goes blind while capture keeps it looking healthy. The next frame
                # starts the decoder again.
                log.exception("scanner %s: decode failed; retrying", self.name)
                empty_thumb = None
                backoff = _next_backoff(backoff)
                self._stop.wait(backoff)
                continue
            backoff = 0.0
            empty_thumb = None if found else thumb.astype(np.int16)
            for data, symbology in found:
                self._publish((now, data, symbology))

    def _publish(self, item: tuple[float, bytes, str]) -> None:
        # Nobody reading for a while: keep the newest results, not the oldest.
        while True:
            try:
                self._results.put_nowait(item)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._results.get_nowait()


def _next_backoff(backoff: float) -> float:
    """0.1 s, doubling up to MAX_BACKOFF: a persistent fault must not spin a core or flood logs."""
    return min(MAX_BACKOFF, max(0.1, backoff * 2))
