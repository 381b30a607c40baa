"""A simulated camera: frames of a scene with real QR codes (cv2.QRCodeEncoder), degraded the
way a gate camera sees a phone screen (blur, rotation, noise, low contrast, glare), so that
pyzbar really decodes them. Imported only when a camera (sim or real) is configured."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

BACKGROUND = 150  # grey level of the scene behind the code


@dataclass(frozen=True)
class Degrade:
    blur: float = 0.0  # Gaussian sigma, pixels
    rotate: float = 0.0  # degrees
    noise: float = 0.0  # Gaussian noise sigma, grey levels
    contrast: float = 1.0  # 1 = full contrast, 0.3 = washed out
    glare: float = 0.0  # 0..1, brightness of a specular blob over the code


def render_qr(text: str, module_px: int = 6) -> Any:
    """A QR code with its 4-module quiet zone, black 20 on white 235, as a grey image."""
    modules = cv2.QRCodeEncoder.create().encode(text)
    img: Any = np.where(modules > 127, 235, 20).astype(np.uint8)
    img = cv2.copyMakeBorder(img, 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=235)
    return cv2.resize(img, None, fx=module_px, fy=module_px, interpolation=cv2.INTER_NEAREST)


def scene(width: int, height: int, seed: int = 0) -> Any:
    """An empty background with a gentle lighting gradient."""
    x = np.linspace(-12, 12, width, dtype=np.float32)
    y = np.linspace(-8, 8, height, dtype=np.float32)[:, None]
    noise = np.random.default_rng(seed).normal(0, 1, (height, width))
    base: Any = BACKGROUND + x[None, :] + y + noise
    return np.clip(base, 0, 255).astype(np.uint8)


def compose(
    text: str | None,
    width: int,
    height: int,
    how: Degrade,
    rng: np.random.Generator,
    module_px: int = 6,
    at: tuple[int, int] | None = None,
) -> Any:
    """One frame: the scene with `text` as a QR code (None: empty) after degradation."""
    img = scene(width, height).astype(np.float32)
    if text is not None:
        code = render_qr(text, module_px).astype(np.float32)
        h, w = code.shape
        if h > height or w > width:
            raise ValueError(f"code {w}x{h} px does not fit a {width}x{height} frame")
        if at is None:
            at = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)))
        top, left = min(at[0], height - h), min(at[1], width - w)
        code = BACKGROUND + (code - BACKGROUND) * how.contrast
        img[top : top + h, left : left + w] = code
        if how.rotate:
            centre = (left + w / 2, top + h / 2)
            matrix = cv2.getRotationMatrix2D(centre, how.rotate, 1.0)
            img = cv2.warpAffine(img, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)
        if how.glare:
            yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
            cy, cx = top + h * 0.35, left + w * 0.65
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (w / 5) ** 2))
            img = img + how.glare * 255 * blob
    if how.blur:
        img = cv2.GaussianBlur(img, (0, 0), how.blur)
    if how.noise:
        img = img + rng.normal(0, how.noise, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


class SimCamera:
    """A FrameSource at `fps` showing whatever was last presented. A few noisy variants of each
    scene are rendered once and cycled, so the simulator itself costs almost no CPU."""

    VARIANTS = 4

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        how: Degrade = Degrade(),
        module_px: int = 6,
        seed: int = 0,
    ) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.how, self.module_px = how, module_px
        self.frames = 0
        self.shown_at: float | None = None  # monotonic time the current code's first frame left
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._current: list[Any] = self._render(None)
        self._code: str | None = None
        self._pending_show = False
        self._hide_at: float | None = None
        self._next = time.monotonic()
        self._closed = threading.Event()

    def _render(self, text: str | None) -> list[Any]:
        noisy = Degrade(noise=max(self.how.noise, 2.0))
        how = self.how if text is not None else noisy
        at = (
            int(self._rng.integers(0, self.height // 2)),
            int(self._rng.integers(0, self.width // 2)),
        )
        return [
            compose(text, self.width, self.height, how, self._rng, self.module_px, at)
            for _ in range(self.VARIANTS)
        ]

    def present(self, text: str | bytes | None, hold: float | None = None) -> None:
        """Show `text` as a QR code from the next frame on (None: empty scene), for `hold` s."""
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        frames = self._render(text)
        with self._lock:
            self._current, self._code = frames, text
            self._pending_show = text is not None
            self._hide_at = None if hold is None else time.monotonic() + hold
            self.shown_at = None

    def read(self, timeout: float) -> Any:
        now = time.monotonic()
        wait = self._next - now
        if wait > timeout:
            self._closed.wait(timeout)
            return None
        if wait > 0 and self._closed.wait(wait):
            return None
        self._next = max(self._next + 1 / self.fps, time.monotonic() - 1 / self.fps)
        if self._hide_at is not None and time.monotonic() >= self._hide_at:
            self.present(None)
        with self._lock:
            frame = self._current[self.frames % self.VARIANTS]
            self.frames += 1
            if self._pending_show:
                self._pending_show = False
                self.shown_at = time.monotonic()
        return frame

    def close(self) -> None:
        self._closed.set()
