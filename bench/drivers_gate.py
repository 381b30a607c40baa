"""Gate pulse latency: `open()` called -> the FC05 flash bytes read on the simulator's side of the
pty (issue 3: within 5 ms p99).

The real ModbusRelayGate drives a ModbusRelayBoard simulator over a pty. The lane has a fire
input wired, so every open() first reads the inputs (one FC02 exchange) and then pulses: that is
the path a real gate with a fire loop takes. `pass_wired=false` makes open() return at the pulse
so samples are quick; waiting for PASS happens after the pulse and does not change the figure.
A second figure is the lane without any input to read (pulse only).
"""

from __future__ import annotations

import time
from contextlib import ExitStack

from bench.stats import percentile
from drivers.gate.modbus_relay import ModbusRelayGate
from drivers.gate.simboard import ModbusRelayBoard, Turnstile

LANES = 4  # lanes in rotation, so no relay is pulsed again before its pulse and gap are over
PULSE_MS = 100
SETTLE_S = (PULSE_MS / 1000 + 0.1) / (2 * LANES) + 0.002  # per sample, so no sample waits


def _samples(count: int, params: str) -> list[float]:
    with ExitStack() as stack:
        lanes: list[tuple[ModbusRelayBoard, ModbusRelayGate]] = []
        for i in range(LANES):
            board = ModbusRelayBoard(Turnstile(fire_input=3))
            stack.callback(board.close)
            gate = ModbusRelayGate(f"bench-lane-{i}", f"{board.path}?pulse_ms={PULSE_MS}&{params}")
            stack.callback(gate.close)
            gate.open()
            lanes.append((board, gate))
        out: list[float] = []
        for n in range(count + 2 * LANES):  # the first round warms up the ports and is dropped
            board, gate = lanes[n % LANES]
            direction = "in" if (n // LANES) % 2 == 0 else "out"
            before = len(board.pulses)
            time.sleep(SETTLE_S)
            start = time.monotonic()
            passage = gate.open(direction)
            assert passage.passed == 1, passage
            pulse = board.pulses[before]
            if n >= 2 * LANES:
                out.append((pulse.at - start) * 1000)
        return out


def figures(quick: bool) -> list[tuple[str, float, str]]:
    count = 60 if quick else 800
    fire = _samples(count, "pass_wired=false&fire_input=3")
    bare = _samples(count // 2, "pass_wired=false")
    return [
        ("gate_pulse_wire_p50_ms", percentile(fire, 50), "ms"),
        ("gate_pulse_wire_p99_ms", percentile(fire, 99), "ms"),
        ("gate_pulse_wire_nofire_p99_ms", percentile(bare, 99), "ms"),
        ("gate_pulse_samples", float(len(fire)), "count"),
    ]


if __name__ == "__main__":
    for name, value, unit in figures(quick=False):
        print(f"{name}={value:.3f} {unit}")
