"""`edge run --demo` as a newcomer meets it (what `make run` starts): a real process that builds its
demo home, prints the kiosk address and sample codes, takes `edge scan` / `edge redeem` from
another terminal, stops cleanly on SIGTERM and starts again on the same home.

The demo listens on its fixed 127.0.0.1:8800. When something else holds that port (another demo
on this machine), the test builds the demo home first and moves the demo to a free port, so the
test does not depend on what else runs here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.demo import prepare_demo
from tests.test_cli import edge_main

EDGE = [sys.executable, "-m", "edge.cli"]
DEMO_PORT = 8800
DEDUPE_S = 3.0  # the entry's dedupe window for the second start (the demo's default is 8 s)


# No real box may be found by the lookup, and no systemd around.
BOX_ENV = (
    "EDGE_HOME",
    "CONFIGURATION_DIRECTORY",
    "STATE_DIRECTORY",
    "EDGE_DEMO_HOME",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in BOX_ENV}


@pytest.fixture(autouse=True)
def no_box_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same clean environment for the commands run in this process (cli below)."""
    for key in BOX_ENV:
        monkeypatch.delenv(key, raising=False)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`edge ARGS` typed in another terminal: the same main() in this process, talking to the
    demo (the real process) over its API; a process per command cost ~0.4 s of start-up."""
    return edge_main(*args)


@dataclass(frozen=True)
class Sample:
    label: str
    lane: str
    expect: str
    code: str


class Demo:
    """One `edge run --demo --home HOME` process; its stdout collected by a thread."""

    def __init__(self, home: Path, log: Path) -> None:
        self.log = log.open("ab")
        self.lines: list[str] = []
        self.p = subprocess.Popen(
            [*EDGE, "run", "--demo", "--home", str(home)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=clean_env(),
        )
        self._reader = threading.Thread(target=self._read, name="demo-stdout")
        self._reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def banner(self, timeout: float = 30.0) -> list[str]:
        """The whole start-up text (it ends with the "Start over" line)."""
        deadline = time.monotonic() + timeout
        while not any(line.startswith("Start over") for line in self.lines):
            if self.p.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"demo exited {self.p.returncode}: {self.output()}")
            assert time.monotonic() < deadline, f"no sample codes printed: {self.output()}"
            time.sleep(0.05)
        return list(self.lines)

    def output(self) -> str:
        return "\n".join(self.lines) + "\n--- stderr ---\n" + Path(self.log.name).read_text()

    def stop(self, timeout: float = 10.0) -> float:
        start = time.monotonic()
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout)
        finally:
            took = time.monotonic() - start
            self.close()
        return took

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)
        self._reader.join(10)
        if self.p.stdout is not None:
            self.p.stdout.close()
        self.log.close()


@pytest.fixture
def demos() -> Iterator[list[Demo]]:
    started: list[Demo] = []
    yield started
    for demo in started:
        demo.close()


def kiosk_url(lines: list[str]) -> str:
    found = [m.group(1) for line in lines if (m := re.search(r"Kiosk .*: (http://\S+)", line))]
    assert found, lines
    return found[0]


def samples(lines: list[str]) -> list[Sample]:
    """The sample table: a row `  N  label  lane  expect text`, the code on the next line."""
    out = []
    for i, line in enumerate(lines):
        if re.match(r"^  \d+  ", line):
            cols = re.split(r"\s{2,}", line.strip())
            assert len(cols) == 4, cols
            out.append(Sample(cols[1], cols[2], cols[3].split()[0], lines[i + 1].strip()))
    assert out, lines
    return out


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthz(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url + "/healthz", timeout=10) as resp:
        doc: dict[str, object] = json.loads(resp.read())
        return doc


def test_demo_runs_takes_scans_and_redeems_stops_and_starts_again(
    tmp_path: Path, demos: list[Demo]
) -> None:
    home = tmp_path / "demo"
    if not port_free(DEMO_PORT):  # another demo holds 8800: same demo, another port
        prepare_demo(home)
        toml = home / "edge.toml"
        port = free_port()
        toml.write_text(toml.read_text().replace(f'"127.0.0.1:{DEMO_PORT}"', f'"127.0.0.1:{port}"'))
    first = Demo(home, tmp_path / "demo.log")
    demos.append(first)
    lines = first.banner()
    assert (home / "DEMO").is_file() and (home / "state").is_dir()
    url = kiosk_url(lines)
    assert healthz(url)["status"] == "ok"  # every simulated device came up
    table = samples(lines)
    admit = next(s for s in table if s.lane == "entry" and s.expect == "ok")
    assert f"--lane entry {admit.code}" in "\n".join(lines)  # the "try one" command
    voucher = next(s for s in table if s.lane == "counter" and s.expect == "ok")
    mistyped = next(s for s in table if s.lane == "counter" and s.expect == "malformed")

    # A newcomer follows the printed hint from another terminal.
    r = cli("scan", "--home", str(home), "--lane", "entry", admit.code)
    assert r.returncode == 0 and "ADMIT" in r.stdout and "confirmed" in r.stdout, r
    r = cli("scan", "--home", str(home), "--lane", "entry", admit.code)
    assert r.returncode == 0 and "IGNORED" in r.stdout, r  # still at the reader: nothing
    # The counter redeems a voucher through the running daemon (it is the only writer).
    r = cli("redeem", "--home", str(home), "--lane", "counter", "--json", voucher.code)
    assert r.returncode == 0, r
    doc = json.loads(r.stdout)
    assert doc["decision"] == "admit" and doc["state"] == "confirmed" and doc["kind"] == "short"
    r = cli("redeem", "--home", str(home), "--lane", "counter", "--json", voucher.code)
    assert r.returncode == 3 and json.loads(r.stdout)["reason"] == "already_used", r
    r = cli("redeem", "--home", str(home), "--lane", "counter", "--json", mistyped.code)
    assert r.returncode == 3 and json.loads(r.stdout)["reason"] == "malformed", r

    took = first.stop()
    assert first.p.returncode == 0 and took < 5.0, (first.p.returncode, took, first.output())
    assert not (home / "state" / "daemon.json").exists()
    r = cli("scan", "--home", str(home), "--lane", "entry", admit.code)
    assert r.returncode == 2 and "no daemon is running" in r.stderr, r

    # The technician shortens the entry's dedupe window (the demo's default is 8 s) in the
    # demo's edge.toml, which a second start keeps.
    toml = home / "edge.toml"
    text = toml.read_text()
    assert "[lanes.entry]\n" in text and "dedupe_s" not in text
    toml.write_text(text.replace("[lanes.entry]\n", f"[lanes.entry]\ndedupe_s = {DEDUPE_S}\n"))

    # A second start on the same home: same site and vouchers, the tickets minted afresh.
    second = Demo(home, tmp_path / "demo2.log")
    demos.append(second)
    lines2 = second.banner()
    assert kiosk_url(lines2) == url
    table2 = samples(lines2)
    assert [(s.label, s.lane, s.expect) for s in table2] == [
        (s.label, s.lane, s.expect) for s in table
    ]
    assert {s.code for s in table2 if s.lane == "counter"} == {
        s.code for s in table if s.lane == "counter"
    }
    # Tickets are minted again at each start (the revoked sample keeps its fixed id, so its
    # deterministic signature may repeat: only the codes meant to admit are compared).
    tickets = {s.code for s in table if s.lane == "entry" and s.expect == "ok"}
    assert not tickets & {s.code for s in table2 if s.lane == "entry" and s.expect == "ok"}
    admit2 = next(s for s in table2 if s.lane == "entry" and s.expect == "ok")
    r = cli("scan", "--home", str(home), "--lane", "entry", admit2.code)
    scanned_at = time.monotonic()
    assert r.returncode == 0 and "ADMIT" in r.stdout, r
    r = cli("scan", "--home", str(home), "--lane", "entry", admit2.code)
    assert r.returncode == 0 and "IGNORED" in r.stdout, r  # within the window: nothing
    # What the first run recorded is still there: the old ticket and voucher stay used.
    r = cli("scan", "--home", str(home), "--lane", "entry", admit.code)
    assert r.returncode == 3 and "already_used" in r.stdout, r
    r = cli("redeem", "--home", str(home), "--lane", "counter", "--json", voucher.code)
    assert r.returncode == 3 and json.loads(r.stdout)["reason"] == "already_used", r
    # Later, past the window, the same ticket at the entry: used.
    time.sleep(max(0.0, scanned_at + DEDUPE_S + 0.3 - time.monotonic()))
    r = cli("scan", "--home", str(home), "--lane", "entry", admit2.code)
    assert r.returncode == 3 and "already_used" in r.stdout and "票已使用" in r.stdout, r
    took = second.stop()
    assert second.p.returncode == 0 and took < 5.0, (second.p.returncode, took, second.output())
