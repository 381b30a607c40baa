"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.notify import Notifier


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def test_messages_reach_the_socket(systemd: tuple[socket.socket, str]) -> None:
    sock, path = systemd
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000"})
    assert n.enabled and n.watchdog_s == 20.0
    assert n.ready("2 lanes up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=2 lanes up"
    assert n.watchdog() and sock.recv(4096) == b"WATCHDOG=1"
    assert n.status("cache seq 7") and sock.recv(4096) == b"STATUS=cache seq 7"
    assert n.stopping() and sock.recv(4096) == b"STOPPING=1"


def test_abstract_socket_names(tmp_path: Path) -> None:
    name = f"edge-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096) == b"READY=1"


def test_without_systemd_nothing_happens_and_nothing_fails(tmp_path: Path) -> None:
    assert not Notifier({}).enabled and Notifier({}).ready() is False
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "no-such.sock")})
    assert gone.ready() is False  # logged, never raised


def test_watchdog_belongs_to_the_named_pid() -> None:
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    mine = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_s == 1.0
