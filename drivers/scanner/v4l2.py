"""A real camera through cv2.VideoCapture (imported only when a camera scanner opens)."""

from __future__ import annotations

import logging
from typing import Any

import cv2

from drivers.errors import DeviceInitError

log = logging.getLogger(__name__)


class OpenCvSource:
    """Frames from a V4L2 device (`/dev/video0`, `/dev/v4l/by-id/...`) or a camera index."""

    def __init__(self, device: str, target: str, width: int, height: int, fps: float) -> None:
        self.device = device
        where: int | str = int(target) if target.isdigit() else target
        self._cap = cv2.VideoCapture(where)
        if not self._cap.isOpened():
            self._cap.release()
            raise DeviceInitError(
                device,
                f"cannot open camera {target}",
                "check `ls /dev/v4l/by-id/`, the cable, and that the service user is in the "
                "video group / 检查摄像头连接和 video 用户组",
            )
        self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self._cap.set(cv2.CAP_PROP_FPS, fps)
        # One buffered frame: the driver's queue would otherwise hand us stale frames.
        self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)

    def read(self, timeout: float) -> Any:
        """The next frame; V4L2 reads block for one frame interval, bounded by the driver."""
        ok, frame = self._cap.read()
        return frame if ok else None

    def close(self) -> None:
        self._cap.release()
