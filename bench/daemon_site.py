"""The site around the daemon under test: simulated hardware in the bench process, the daemon in a
subprocess (`python -m edge.cli run --home DIR`, as systemd starts it), and a small API client.

The daemon drives its devices with the real drivers (serial scanner, Modbus relay gate, ESC/POS
over TCP) on ptys and sockets whose far ends are the simulators here, so its process holds what a
box holds and nothing of the simulators (their records would count in its RSS). Both processes
stamp with time.monotonic() (CLOCK_MONOTONIC, one clock for the whole machine), so a scan stamped
here as it goes out and the relay command stamped here as it comes in span the daemon's work.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.gate import modbus as mb
from drivers.gate.simboard import ModbusRelayBoard, Turnstile
from drivers.printer.simserver import SimPrinterServer
from drivers.printer.simstate import SimKnobs
from drivers.scanner.sim import SimOptions, SimSerialReader

LANES = 8
SITE = "west-lake"  # bench.fixture.SITE
LIST_ID = "default"  # bench.fixture.LIST_ID: every product
PASS_DELAY_MS = 10  # the visitor is through 10 ms after the unlock (a gate that passes quickly)
PULSE_MS = 100  # the shortest pulse the controllers take; the driver then waits 100 ms more
GATE_GAP_S = PULSE_MS / 1000 + 0.1 + 0.005  # drivers.gate.passage.PULSE_GAP_S, and a margin
KITCHEN = ("hot", "cold")  # stations, one printer each; "receipt" prints the order's receipt
JOB_START = b"\x1b@"  # ESC @: every rendered job begins with it (drivers/printer/render.py)


class StampedReader(SimSerialReader):
    """The GM65-style reader: each scan is stamped just before its bytes go out on the pty, and
    each OUT1 feedback command (the beep/LED the lane asks for) as it arrives."""

    def __init__(self, name: str) -> None:
        super().__init__(SimOptions(kind="serial"), name)
        self.sent_at: list[float] = []
        self.feedback_at: list[float] = []

    def _send(self, data: bytes) -> None:
        self.sent_at.append(time.monotonic())
        super()._send(data)

    def _on_host(self, data: bytes) -> bytes:
        now = time.monotonic()
        before = len(self.commands)
        reply = super()._on_host(data)
        self.feedback_at.extend([now] * (len(self.commands) - before))
        self.received.clear()  # a test record; the bench does not need it
        return reply


class StampedBoard(ModbusRelayBoard):
    """The Modbus relay board: wakes whoever waits for an unlock, notes when the driver last
    read the inputs, and forgets old passages (the simulator keeps them all, and scans the list
    at every input read)."""

    def __init__(self, turnstile: Turnstile) -> None:
        self.cond = threading.Condition()
        self.last_read = 0.0
        self._handled = 0
        super().__init__(turnstile)

    def _handle(self, req: mb.Request, now: float) -> bytes:
        pulses = len(self.pulses)
        reply = super()._handle(req, now)
        if req.function == mb.READ_INPUTS:
            self.last_read = now
        self._handled += 1
        if self._handled % 256 == 0:
            self._prune(now)
        if len(self.pulses) != pulses:
            with self.cond:
                self.cond.notify_all()
        return reply

    def _prune(self, now: float) -> None:
        t = self.turnstile
        with t._lock:
            t._events[:] = [e for e in t._events if e[2] > now - 1.0]
            t.passages.clear()
        self.frames.clear()

    def wait_pulse(self, count: int, timeout: float) -> float | None:
        """The stamp of pulse number `count` (from 0) once it has come, None after `timeout`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.pulses) <= count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.pulses[count].at

    def wait_read_after(self, at: float, timeout: float) -> bool:
        """Wait until the driver read the inputs at or after `at` (it saw PASS)."""
        deadline = time.monotonic() + timeout
        while self.last_read < at:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True


class PrinterTap:
    """A simulated printer on TCP whose received bytes are watched for the start of each job."""

    def __init__(self) -> None:
        self.server = SimPrinterServer(SimKnobs())
        self.url = self.server.start_tcp()
        self.cond = threading.Condition()
        self.job_starts: list[float] = []
        self._feed = self.server.machine.feed
        self._tail = b""
        self.server.machine.feed = self._stamped  # type: ignore[method-assign]

    def _stamped(self, data: bytes) -> bytes:
        now = time.monotonic()
        seen = (self._tail + data).count(JOB_START) - self._tail.count(JOB_START)
        self._tail = data[-1:]
        if seen:
            with self.cond:
                self.job_starts.extend([now] * seen)
                self.cond.notify_all()
        self.server.machine.lines.clear()  # the printed text: not needed, grows without end
        return self._feed(data)

    def wait_job(self, count: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.job_starts) <= count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.job_starts[count]

    def close(self) -> None:
        self.server.close()


@dataclass
class Lane:
    name: str
    reader: StampedReader
    board: StampedBoard


@dataclass
class Hardware:
    lanes: list[Lane] = field(default_factory=list)
    printers: dict[str, PrinterTap] = field(default_factory=dict)

    @classmethod
    def start(cls) -> Hardware:
        hw = cls()
        try:
            for i in range(1, LANES + 1):
                reader = StampedReader(f"scanner-{i}")
                turnstile = Turnstile(
                    fire_input=3, pass_delay_ms=PASS_DELAY_MS, pass_pulse_ms=100, queue=-1
                )
                hw.lanes.append(Lane(f"gate-{i}", reader, StampedBoard(turnstile)))
            for name in (*KITCHEN, "receipt", "measure"):
                hw.printers[name] = PrinterTap()
        except BaseException:
            hw.close()
            raise
        return hw

    def close(self) -> None:
        for lane in self.lanes:
            lane.reader.close()
            lane.board.close()
        for printer in self.printers.values():
            printer.close()

    def config(self, anchor: str) -> str:
        """edge.toml for this hardware: 8 entry gate lanes on the bundle's default list."""
        out = [
            "[box]",
            f'site = "{SITE}"',
            'device = "bench-daemon"',
            f'trust_anchor = "{anchor}"',
            "",
            "[policy]",
            "clock_max_unsynced_hours = 87600",  # the bench box never syncs with a cloud
            "",
            "[http]",
            'listen = "127.0.0.1:0"',
            "",
        ]
        gate_q = f"pulse_ms={PULSE_MS}&window_s=2&fire_input=3"
        for i, lane in enumerate(self.lanes, 1):
            out += _device(
                f"scanner-{i}", "scanner", "serial", f"serial://{lane.reader.path}?feedback=gm65"
            )
            out += _device(
                f"gate-{i}", "gate", "modbus-relay", f"serial://{lane.board.path}?{gate_q}"
            )
        for name, tap in self.printers.items():
            out += _device(f"printer-{name}", "printer", "escpos", f"{tap.url}?profile=tm-t20")
        for i, lane in enumerate(self.lanes, 1):
            out += [
                f"[lanes.{lane.name}]",
                'kind = "gate"',
                f'list = "{LIST_ID}"',
                'direction = "entry"',
                f'scanner = "scanner-{i}"',
                f'gate = "gate-{i}"',
                "",
            ]
        out += ["[printing]", 'receipt = "printer-receipt"']
        out += [f'stations.{s} = ["printer-{s}"]' for s in KITCHEN]
        return "\n".join(out) + "\n"


def _device(name: str, cls: str, driver: str, url: str) -> list[str]:
    return [f"[devices.{name}]", f'class = "{cls}"', f'driver = "{driver}"', f'url = "{url}"', ""]


def proc_status_kb(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile ... of a process, in kB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0])
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class CpuMeter:
    """Share of one core a process used since the meter was made, in %."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu, self.wall = proc_cpu_s(pid), time.monotonic()

    def percent(self) -> float:
        return 100 * (proc_cpu_s(self.pid) - self.cpu) / (time.monotonic() - self.wall)


class DaemonProc:
    """`python -m edge.cli run --home HOME` with NOTIFY_SOCKET on a datagram socket of ours."""

    def __init__(self, home: Path, work: Path) -> None:
        self.home = home
        self.log_path = work / "daemon.log"
        self.sock_path = work / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, bytes]] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        # systemd always reads the socket; so must we, or the daemon's notifications block.
        self._drain = threading.Thread(target=self._read_notify, name="bench-notify", daemon=True)
        self._drain.start()
        self.p: subprocess.Popen[bytes] | None = None

    def _read_notify(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), msg))
            if msg.startswith(b"READY=1"):
                self._ready.set()

    def start(self, timeout: float = 60.0) -> float:
        """Start the daemon; seconds from just before the process is created to READY=1."""
        assert self.p is None or self.p.poll() is not None, "daemon already running"
        self._ready.clear()
        env = {**os.environ, "NOTIFY_SOCKET": str(self.sock_path)}
        env.pop("WATCHDOG_USEC", None)
        with open(self.log_path, "ab") as log:
            start = time.monotonic()
            self.p = subprocess.Popen(
                [sys.executable, "-m", "edge.cli", "run", "--home", str(self.home)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = start + timeout
        while not self._ready.wait(0.05):
            if self.p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon not ready (exit {self.p.poll()}): {self.tail()}")
        ready_at = next(t for t, m in reversed(self.messages) if m.startswith(b"READY=1"))
        return ready_at - start

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def status_kb(self) -> dict[str, int]:
        return proc_status_kb(self.pid)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> tuple[int | None, float]:
        """SIGTERM; (exit status, seconds to exit). Killed if it does not stop in time."""
        if self.p is None or self.p.poll() is not None:
            return (None if self.p is None else self.p.returncode), 0.0
        start = time.monotonic()
        self.p.send_signal(signal.SIGTERM)
        try:
            code = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(10)
            return None, time.monotonic() - start
        return code, time.monotonic() - start

    def close(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)
        self._stop.set()
        self._drain.join(5)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()


class Api:
    """The daemon's HTTP API over one keep-alive connection (one per thread)."""

    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        host, _, port = url.removeprefix("http://").rpartition(":")
        self.url, self.token = url, token
        self.host, self.port, self.timeout = host, int(port), timeout
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.conn: http.client.HTTPConnection | None = None

    @classmethod
    def of(cls, home: Path) -> Api:
        info = json.loads((home / "daemon.json").read_text())
        return cls(info["url"], (home / "api-token").read_text().strip())

    def clone(self) -> Api:
        """Another client of the same daemon (for another thread)."""
        return Api(self.url, self.token, self.timeout)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, data, self.headers)
                resp = self.conn.getresponse()
                raw = resp.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()  # a dropped keep-alive connection: once more on a fresh one
                if attempt:
                    raise
                continue
            ctype = resp.headers.get("content-type", "")
            return resp.status, (json.loads(raw) if "json" in ctype else raw.decode())
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def poll_until(cond: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True
