"""The camera scanner on the simulated camera: real QR frames, real pyzbar in a child process."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from drivers.errors import DeviceConfigError
from drivers.scanner.camera import CameraScanner
from drivers.scanner.sim import SimScanner


@contextmanager
def camera(query: str = "") -> Iterator[SimScanner]:
    scanner = SimScanner("cam-1", "sim://?kind=camera" + (f"&{query}" if query else ""))
    scanner.open()
    try:
        yield scanner
    finally:
        scanner.close()


def inner(scanner: SimScanner) -> CameraScanner:
    assert isinstance(scanner.inner, CameraScanner)
    return scanner.inner


def test_presented_qr_is_decoded_with_symbology() -> None:
    with camera() as cam:
        cam.present("T1:MFRGGZDFMZTWQ2LK")
        scan = cam.read(5.0)
        assert scan is not None
        got = (scan.text, scan.symbology, scan.scanner)
        assert got == ("T1:MFRGGZDFMZTWQ2LK", "QRCODE", "cam-1")


def test_code_held_in_view_is_read_once() -> None:
    with camera("hold=1.0") as cam:
        cam.present("HELD")
        assert cam.read(5.0) is not None
        assert cam.read(0.6) is None  # still in view, decoded again and again, swallowed
        assert cam.duplicates > 0


def test_degraded_frames_still_decode() -> None:
    with camera("blur=1.0&rotate=15&noise=4&contrast=0.5&glare=0.25") as cam:
        cam.present("T1:DEGRADED")
        scan = cam.read(5.0)
        assert scan is not None and scan.text == "T1:DEGRADED"


def test_decode_restricted_to_configured_symbologies() -> None:
    with camera("symbologies=ean13,code128") as cam:
        cam.present("T1:NOT-WANTED")
        assert cam.read(1.0) is None
        assert inner(cam).decoded > 0  # frames were decoded, the QR was not looked for


def test_unchanged_empty_scene_is_not_decoded_every_frame() -> None:
    with camera() as cam:
        time.sleep(1.0)
        cam_inner = inner(cam)
        assert cam_inner.skipped > 2 * cam_inner.decoded


def test_decoder_crash_is_contained_and_restarted() -> None:
    with camera("crash_on=POISON&hold=0.3") as cam:
        cam.present("BEFORE")
        assert cam.read(5.0) is not None
        cam.present("POISON")  # the child calls os.abort() on this frame, like pyzbar #83
        assert cam.read(1.0) is None
        assert inner(cam).restarts >= 1
        cam.present("AFTER")
        scan = cam.read(8.0)
        assert scan is not None and scan.text == "AFTER"


def test_stale_frames_are_dropped_not_queued() -> None:
    with camera("fps=300&hold=2") as cam:  # frames arrive faster than zbar decodes them
        cam.present("FAST")
        start = time.monotonic()
        assert cam.read(5.0) is not None
        assert time.monotonic() - start < 1.0
        time.sleep(0.5)
        assert inner(cam).stale > 0


def test_bad_symbology_is_refused_at_start_up() -> None:
    with pytest.raises(DeviceConfigError) as err:
        CameraScanner("cam-2", "camera:///dev/video0?symbologies=qrcode,martian")
    assert err.value.param == "symbologies"


def test_opencv_is_not_imported_until_a_camera_opens() -> None:
    code = (
        "import sys, drivers.registry as r\n"
        "for d in r.BACKENDS['scanner']: r.load('x', 'scanner', d)\n"
        "from drivers.scanner.camera import CameraScanner\n"
        "CameraScanner('c', 'camera:///dev/video0')\n"
        "assert 'cv2' not in sys.modules and 'pyzbar' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
