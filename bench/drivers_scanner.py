"""Camera scanner figures (issue 3, Performance): present -> decode latency at 640x480, CPU on a
stream of empty frames, decode rate on degraded frames. Runs the real CameraScanner (capture
thread, decode thread, zbar in a child process) on the simulated camera."""

from __future__ import annotations

import os
import time

import numpy as np

from bench.stats import percentile
from drivers.scanner.camera import CameraScanner, DecoderProcess
from drivers.scanner.simcam import Degrade, SimCamera, compose

WIDTH, HEIGHT, FPS = 640, 480, 30.0
_TICK = os.sysconf("SC_CLK_TCK")


def _child_cpu(pid: int | None) -> float:
    """utime + stime of a process in seconds (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _scanner(source: SimCamera, query: str = "") -> CameraScanner:
    url = f"camera://sim?dedup=0&width={WIDTH}&height={HEIGHT}&fps={FPS}{query}"
    return CameraScanner("bench-cam", url, source=lambda: source)


def present_to_decode(samples: int) -> list[float]:
    """ms from the first frame showing a new code leaving the camera to read() returning it."""
    source = SimCamera(WIDTH, HEIGHT, FPS, seed=7)
    scanner = _scanner(source)
    out: list[float] = []
    with scanner:
        time.sleep(0.5)  # decoder process up
        for i in range(samples):
            source.present(None)
            time.sleep(0.12)
            while scanner.read(0) is not None:
                pass  # the previous code, decoded again from later frames (dedup is off)
            text = f"T1:BENCH{i:05d}"
            source.present(text)
            deadline = time.monotonic() + 2.0
            scan = None
            while scan is None or scan.text != text:
                scan = scanner.read(max(0.0, deadline - time.monotonic()))
                if scan is None:
                    break
            done = time.monotonic()
            if scan is None or source.shown_at is None:
                out.append(2000.0)  # a miss counts as the timeout, not as nothing
                continue
            out.append((done - source.shown_at) * 1000)
    return out


def empty_cpu_pct(seconds: float, query: str = "") -> float:
    """CPU of capture + decode (this process's threads and the decoder child), % of one core."""
    source = SimCamera(WIDTH, HEIGHT, FPS, seed=3)
    scanner = _scanner(source, query)
    with scanner:
        time.sleep(1.0)  # past the decoder's start-up
        pid = scanner.decoder_pid
        cpu0, child0, wall0 = time.process_time(), _child_cpu(pid), time.monotonic()
        time.sleep(seconds)  # the bench thread sleeps: process_time is the scanner's threads
        cpu1, child1, wall1 = time.process_time(), _child_cpu(pid), time.monotonic()
    return 100 * ((cpu1 - cpu0) + (child1 - child0)) / (wall1 - wall0)


def degraded_rate(frames: int) -> tuple[float, float]:
    """Share of degraded frames decoded, and the median decode ms, through the decoder child."""
    rng = np.random.default_rng(11)
    decoder = DecoderProcess(["QRCODE"], b"")
    decoder.start()
    hits, times = 0, []
    try:
        for i in range(frames):
            how = _random_degradation(rng)
            text = f"T1:{i:06d}:{rng.integers(1 << 40):011X}"
            frame = compose(text, WIDTH, HEIGHT, how, rng, module_px=int(rng.integers(4, 8)))
            start = time.perf_counter()
            found = decoder.decode(frame)
            times.append((time.perf_counter() - start) * 1000)
            hits += any(data == text.encode() for data, _ in found)
    finally:
        decoder.stop()
    return hits / frames, percentile(times, 50)


def _random_degradation(rng: np.random.Generator) -> Degrade:
    """One of blur, rotation, low contrast, glare, noise at a random strength, or a moderate
    mix of all of them, as a phone screen under a gate camera looks."""
    kind = int(rng.integers(0, 6))
    u = float(rng.random())
    if kind == 0:
        return Degrade(blur=0.8 + 1.2 * u)
    if kind == 1:
        return Degrade(rotate=5 + 40 * u)
    if kind == 2:
        return Degrade(contrast=0.6 - 0.3 * u)
    if kind == 3:
        return Degrade(glare=0.2 + 0.3 * u)
    if kind == 4:
        return Degrade(noise=3 + 9 * u)
    return Degrade(blur=0.6 + 0.6 * u, rotate=10 + 20 * u, noise=3, contrast=0.5, glare=0.2)


def figures(quick: bool) -> list[tuple[str, float, str]]:
    latencies = present_to_decode(10 if quick else 120)
    cpu = empty_cpu_pct(1.0 if quick else 10.0)
    cpu_all = empty_cpu_pct(1.0 if quick else 5.0, "&refresh=0")
    rate, decode_ms = degraded_rate(30 if quick else 300)
    return [
        ("camera_present_to_decode_p50_ms", percentile(latencies, 50), "ms"),
        ("camera_present_to_decode_p99_ms", percentile(latencies, 99), "ms"),
        ("camera_empty_cpu_pct", cpu, "%"),
        ("camera_empty_cpu_pct_every_frame", cpu_all, "%"),
        ("camera_degraded_decode_rate", rate, "ratio"),
        ("camera_degraded_decode_p50_ms", decode_ms, "ms"),
    ]


if __name__ == "__main__":
    import sys

    for name, value, unit in figures("--quick" in sys.argv):
        print(f"{name}={value:.3f} {unit}")
