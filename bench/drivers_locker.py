"""Locker figures (issue 3, Performance): unlock call -> unlock bytes read by the board.

The sim locker is the real protocol driver on a simulated board over a pty. Each sample times
`open_door` from the call to the moment the board's pty thread read the unlock request (both on
`time.perf_counter`), then the door is closed again by the simulated visitor.
"""

from __future__ import annotations

import time

from bench.stats import percentile
from drivers.locker.sim import SimLocker

WARMUP = 20


def _samples(dialect: str, n: int) -> tuple[list[float], list[float]]:
    """(call -> unlock on the wire, call -> confirmed result) in milliseconds."""
    wire: list[float] = []
    total: list[float] = []
    # settle=0: the CU16's pause after an unlock is not part of the wire latency.
    url = f"sim://?dialect={dialect}&doors=16&settle=0"
    with SimLocker(f"bench-{dialect}", url) as locker:
        board = locker.board
        for i in range(n + WARMUP):
            door = i % 16 + 1
            start = time.perf_counter()
            result = locker.open_door(door)
            done = time.perf_counter()
            if not result.opened:
                raise RuntimeError(f"bench: door {door} did not open: {result}")
            last = board.last_unlock()
            if last is None:
                raise RuntimeError("bench: no unlock reached the board")
            board.close_door(door)
            if i >= WARMUP:
                wire.append((last[0] - start) * 1000)
                total.append((done - start) * 1000)
    return wire, total


def figures(quick: bool) -> list[tuple[str, float, str]]:
    n = 200 if quick else 3000
    out: list[tuple[str, float, str]] = []
    for dialect, prefix in (("8a", "locker_unlock_wire"), ("cu16", "locker_cu16_unlock_wire")):
        wire, total = _samples(dialect, n)
        out += [
            (f"{prefix}_p50_ms", percentile(wire, 50), "ms"),
            (f"{prefix}_p99_ms", percentile(wire, 99), "ms"),
        ]
        if dialect == "8a":
            out += [
                ("locker_open_confirmed_p50_ms", percentile(total, 50), "ms"),
                ("locker_open_confirmed_p99_ms", percentile(total, 99), "ms"),
            ]
    out.append(("locker_unlock_wire_samples", float(n), "count"))
    return out


if __name__ == "__main__":
    for name, value, unit in figures(quick=False):
        print(f"{name}={value:.3f} {unit}")
