"""The camera's capture and decode threads survive faults, and a dead one is reported, not hidden.

Regression: a decoder restart whose spawn failed (EAGAIN/EMFILE) killed the decode thread while
capture kept the camera looking alive, so read() returned None forever and self_test said ok.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from drivers.scanner.camera import CameraScanner, CameraStalled
from drivers.scanner.sim import SimScanner
from drivers.scanner.simcam import SimCamera


class _ThreadKill(BaseException):
    """Escapes the loops' `except Exception` supervision: stands in for a thread that died."""


class _PoisonFrame(np.ndarray):
    """A grey frame that kills whichever thread serialises it for the decoder."""

    def tobytes(self, order: Any = "C") -> bytes:
        raise _ThreadKill("decode thread killed by the test")


class FaultySource:
    """A real SimCamera whose frames `after` .. `after + count - 1` are replaced by `bad`."""

    def __init__(self, bad: Any, count: int, after: int = 3) -> None:
        self.camera = SimCamera(320, 240, 30.0)
        self.bad = bad
        self.after = after
        self.count = count
        self.served = 0

    def read(self, timeout: float) -> Any:
        frame = self.camera.read(timeout)
        if frame is None:
            return None
        self.served += 1
        if self.after <= self.served < self.after + self.count:
            bad = self.bad
            return bad(frame) if callable(bad) else bad
        return frame

    def close(self) -> None:
        self.camera.close()


@contextmanager
def faulty_camera(bad: Any, count: int) -> Iterator[tuple[CameraScanner, FaultySource]]:
    source = FaultySource(bad, count)
    scanner = CameraScanner(
        "cam-9", "camera://sim?dedup=0&width=320&height=240", source=lambda: source
    )
    scanner.open()
    try:
        yield scanner, source
    finally:
        scanner.close()
        source.close()


def alive(name: str) -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith(name) and t.is_alive())


def test_failed_decoder_restarts_are_retried_and_the_camera_reads_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="drivers.scanner.camera")
    with SimScanner("cam-7", "sim://?kind=camera&crash_on=POISON&hold=0.3&fail_restarts=2") as cam:
        cam.present("BEFORE")
        assert cam.read(5.0) is not None
        cam.present("POISON")  # the child aborts; the next two spawns fail with EAGAIN
        assert cam.read(1.0) is None
        cam.camera.present("AFTER", hold=8.0)  # in view until the decoder is back
        scan = cam.read(8.0)
        assert scan is not None and scan.text == "AFTER"
        spawn_failures = [
            r for r in caplog.records if r.exc_info and "fail_restarts" in str(r.exc_info[1])
        ]
        assert len(spawn_failures) == 2  # both failed restarts were logged with their traceback
        assert alive("cam-7/camera") == ["cam-7/camera-capture", "cam-7/camera-decode"]
        assert cam.self_test(0.1).ok


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dead_decode_thread_makes_read_raise_and_self_test_fail() -> None:
    # Every frame from the third on: the decode thread drops stale frames, so one could be missed.
    with faulty_camera(lambda frame: frame.view(_PoisonFrame), 10**9) as (cam, _source):
        with pytest.raises(CameraStalled):  # before the fix: None forever, nothing logged
            for _ in range(50):
                cam.read(0.1)
        assert alive("cam-9") == ["cam-9-capture"]  # capture still feeds frames
        result = cam.self_test(0.1)
        assert not result.ok
        assert "cam-9-decode" in result.detail
        assert result.hint == CameraStalled.hint


def test_bad_frame_does_not_kill_capture() -> None:
    # Two channels: cvtColor refuses it. Capture logs it and carries on with the next frame.
    with faulty_camera(np.zeros((240, 320, 2), np.uint8), 2) as (cam, source):
        deadline = time.monotonic() + 5.0
        while source.served < source.after + source.count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert source.served >= source.after + source.count  # both bad frames went to capture
        source.camera.present("CAPTURED", hold=5.0)
        scan = cam.read(5.0)
        assert scan is not None and scan.text == "CAPTURED"
        assert alive("cam-9") == ["cam-9-capture", "cam-9-decode"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dead_capture_thread_makes_read_raise_at_once() -> None:
    def kill(frame: Any) -> Any:
        raise _ThreadKill("capture thread killed by the test")

    with faulty_camera(kill, 1) as (cam, _source):
        with pytest.raises(CameraStalled, match="cam-9-capture"):
            for _ in range(50):  # well before NO_FRAMES_LIMIT would notice the silence
                cam.read(0.05)
        assert not cam.self_test(0.1).ok


class UnpluggedSource:
    """What OpenCvSource.read does once the camera is unplugged: None at once, every time."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self, timeout: float) -> Any:
        self.reads += 1
        return None

    def close(self) -> None:
        pass


def test_unplugged_camera_does_not_spin_the_capture_loop() -> None:
    source = UnpluggedSource()
    scanner = CameraScanner("cam-u", "camera://sim?dedup=0", source=lambda: source)
    scanner.open()
    try:
        before = source.reads
        time.sleep(1.0)
        reads = source.reads - before  # before the fix: millions (a full core)
        assert reads <= 10
        assert alive("cam-u") == ["cam-u-capture", "cam-u-decode"]
    finally:
        scanner.close()
