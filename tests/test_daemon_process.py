"""The daemon as systemd runs it: a subprocess, sd_notify, SIGTERM, SIGKILL and restart, and the
CLI going through the running daemon."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_kit import Site, make_site
from tests.test_cli import edge

SLOW_GATE = "sim://?board=modbus&queue=0&window_s=4"


class Proc:
    def __init__(self, site: Site, env: dict[str, str] | None = None) -> None:
        self.site = site
        if not (site.home / "cache").exists():
            r = edge("bundle", "import", "--home", str(site.home), str(site.bundle))
            assert r.returncode == 0, r.stdout + r.stderr
        self.log = open(site.root / "daemon.log", "ab")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "run", "--home", str(site.home)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        info = self.site.home / "daemon.json"
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise AssertionError(f"daemon exited {self.p.returncode}: {self.output()}")
            if info.exists():
                try:
                    doc = json.loads(info.read_text())
                except ValueError:
                    doc = {}
                if doc.get("pid") == self.p.pid:  # not the file a killed daemon left behind
                    return str(doc["url"])
            time.sleep(0.05)
        raise AssertionError("daemon not ready: " + self.output())

    def wait_gate_open(self, lane: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.api("GET", "/api/v1/lanes")[lane]["busy"]:
            assert time.monotonic() < deadline, "gate never opened"
            time.sleep(0.05)

    def output(self) -> str:
        return (self.site.root / "daemon.log").read_text(errors="replace")

    def api(self, method: str, path: str, body: Any = None) -> Any:
        url = json.loads((self.site.home / "daemon.json").read_text())["url"]
        token = (self.site.home / "api-token").read_text().strip()
        req = urllib.request.Request(
            url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> float:
        start = time.monotonic()
        if self.p.poll() is None:
            self.p.send_signal(sig)
        self.p.wait(timeout)
        self.log.close()
        return time.monotonic() - start


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    made: list[Proc] = []
    yield made
    for p in made:
        if p.p.poll() is None:
            p.p.kill()
            p.p.wait(10)
        p.log.close()


def scan_command(site: Site, lane: str, code: str) -> list[str]:
    """`edge scan` for a lane of the daemon running on `site` (as a technician types it)."""
    return [
        sys.executable,
        "-m",
        "edge.cli",
        "scan",
        "--home",
        str(site.home),
        "--lane",
        lane,
        code,
    ]


def ledger_rows(site: Site, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{site.home / 'ledger.db'}?mode=ro", uri=True) as conn:
        return conn.execute(sql).fetchall()


def test_sd_notify_ready_watchdog_stopping(tmp_path: Path, procs: list[Proc]) -> None:
    site = make_site(tmp_path)
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(10)
        start = time.monotonic()
        p = Proc(site, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
        procs.append(p)
        messages: list[tuple[float, bytes]] = []
        while not any(m.startswith(b"READY=1") for _, m in messages):
            messages.append((time.monotonic() - start, sock.recv(4096)))
        ready_at = messages[-1][0]
        assert ready_at < 3.0 + 2.0, messages  # READY within 3 s (+ interpreter start-up)
        watchdogs: list[float] = []
        while len(watchdogs) < 3:
            at, msg = time.monotonic(), sock.recv(4096)
            if msg == b"WATCHDOG=1":
                watchdogs.append(at)
        gaps = [b - a for a, b in itertools.pairwise(watchdogs)]
        assert all(g < 1.0 for g in gaps), gaps  # at least twice per WATCHDOG_USEC
        p.p.send_signal(signal.SIGTERM)
        while True:
            msg = sock.recv(4096)
            if msg.startswith(b"STOPPING=1"):
                break
        assert p.stop() < 5.0
        assert p.p.returncode == 0


def test_sigterm_during_a_passage_stops_within_5s_and_voids(
    tmp_path: Path, procs: list[Proc]
) -> None:
    site = make_site(tmp_path, devices={"gate-in": ("gate", SLOW_GATE)})
    code = site.ticket()
    p = Proc(site)
    procs.append(p)
    p.wait_ready()
    scan = subprocess.Popen(
        scan_command(site, "entry", code),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    p.wait_gate_open("entry")
    took = p.stop(signal.SIGTERM)
    out, _ = scan.communicate(timeout=10)
    assert took < 5.0, took
    assert p.p.returncode == 0
    assert "voided" in out  # the visitor at the gate is told, the ticket is not burnt
    rows = ledger_rows(site, "SELECT state, note FROM redemptions")
    assert [r[0] for r in rows] == ["voided"], rows
    # Usable again after the restart.
    p2 = Proc(site)
    procs.append(p2)
    p2.wait_ready()
    r = edge("redeem", "--home", str(site.home), "--lane", "counter", "--json", code)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["state"] == "confirmed"
    p2.stop()


def test_sigkill_then_restart_loses_and_doubles_nothing(tmp_path: Path, procs: list[Proc]) -> None:
    site = make_site(
        tmp_path,
        devices={
            "gate-in": ("gate", SLOW_GATE),
            "receipt": ("printer", "sim://?profile=tm-t20&paper=out"),
        },
    )
    code = site.ticket()
    p = Proc(site)
    procs.append(p)
    p.wait_ready()
    voucher = p.api("POST", "/api/v1/redeem", {"code": site.vouchers[0], "lane": "counter"})
    assert voucher["state"] == "confirmed"
    job = p.api(
        "POST",
        "/api/v1/print/jobs",
        {"template": "test_page", "data": {}, "target": "receipt", "id": "job-1"},
    )
    assert job["id"] == "job-1"
    scan = subprocess.Popen(
        scan_command(site, "entry", code),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    p.wait_gate_open("entry")
    held = [j for j in p.api("GET", "/api/v1/print/jobs") if j["id"] == "job-1"]
    assert held and held[0]["state"] in ("held", "queued")
    p.stop(signal.SIGKILL)
    scan.wait(10)
    # The technician fixes the printer; the box restarts.
    toml = (site.home / "edge.toml").read_text().replace("paper=out", "paper=ok")
    (site.home / "edge.toml").write_text(toml)
    p2 = Proc(site)
    procs.append(p2)
    p2.wait_ready()
    deadline = time.monotonic() + 15
    while True:
        jobs = {j["id"]: j for j in p2.api("GET", "/api/v1/print/jobs")}
        if jobs["job-1"]["state"] == "printed":
            break
        assert time.monotonic() < deadline, jobs["job-1"]
        time.sleep(0.1)
    assert len([j for j in jobs.values() if j.get("reprint_of") is None]) == 1
    p2.stop()
    states = ledger_rows(site, "SELECT kind, state FROM redemptions ORDER BY created_at")
    assert states == [("short", "confirmed"), ("signed", "voided")], states
    kinds = [k for (k,) in ledger_rows(site, "SELECT type FROM outbox ORDER BY seq")]
    assert kinds.count("redemption") == 2
    assert kinds.count("redemption_voided") == 1


def test_run_without_config_says_what_to_do(tmp_path: Path) -> None:
    r = edge("run", "--home", str(tmp_path / "nothing"))
    assert r.returncode == 2
    assert "edge run --demo" in r.stderr and "no configuration" in r.stderr


def test_demo_refused_where_a_real_anchor_is_installed(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    r = edge("run", "--demo", env={"EDGE_HOME": str(site.home)})
    assert r.returncode == 2 and "refusing --demo" in r.stderr


def test_doctor_and_status_while_the_daemon_holds_the_devices(
    tmp_path: Path, procs: list[Proc]
) -> None:
    site = make_site(tmp_path)
    p = Proc(site)
    procs.append(p)
    p.wait_ready()
    r = edge("doctor", "--home", str(site.home), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] and {d["name"] for d in doc["devices"]} >= {"gate-in", "wall", "hot"}
    assert all("daemon running" in d["detail"] for d in doc["devices"])
    r = edge("status", "--home", str(site.home), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["cache"]["active"]
    assert p.stop() < 5.0
