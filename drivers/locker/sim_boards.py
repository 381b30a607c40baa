"""Simulated lock boards on the far end of a pty, speaking the real bytes through the codecs.

A driver opens `board.path` like a serial port. Door state is deterministic: a door opens on its
unlock and stays open until the test calls `close_door` (a visitor shutting it); a stuck door
never opens. Every request frame the board parses is logged with the time it was read, so tests
can count unlocks on the wire and the bench can time them.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from drivers.locker import FrameError
from drivers.locker import codec_8a as c8a
from drivers.locker import codec_cu48 as c48
from drivers.locker import codec_kerong as ckr
from drivers.pty import PtyDevice

SPLIT_GAP = 0.003  # seconds between the pieces of a split reply


@dataclass(frozen=True)
class Faults:
    no_reply: bool = False  # parse requests, never answer
    bad_checksum: bool = False  # answer with the last byte corrupted
    split: bool = False  # write each reply one byte at a time, with a gap
    delay_ms: float = 0.0  # wait before answering
    echo: bool = False  # echo each request first, like an RS485 adapter with local echo
    # The demo's "person": a door opened shuts again this many seconds later (0: stays open
    # until close_door(), as tests drive it).
    auto_close: float = 0.0


class SimBoard(ABC):
    default_board: int
    default_doors: int
    default_channel_base: int
    request_len: ClassVar[int] = 5  # the 8A and CU16 requests used here are all 5 bytes

    def __init__(
        self,
        *,
        board: int | None = None,
        doors: int | None = None,
        channel_base: int | None = None,
        open_bit: int = 0,
        faults: Faults = Faults(),
        stuck: Iterable[int] = (),
        items: Iterable[int] = (),
    ) -> None:
        self.board = self.default_board if board is None else board
        self.doors = self.default_doors if doors is None else doors
        self.channel_base = self.default_channel_base if channel_base is None else channel_base
        self.open_bit = open_bit
        self.faults = faults
        self._lock = threading.Lock()
        self._open: set[int] = set()
        self._opened_at: dict[int, float] = {}
        self._stuck = set(stuck)
        self._items = set(items)
        self._buf = bytearray()
        self.frames: list[tuple[float, bytes]] = []  # (perf_counter when read, request)
        self.device = PtyDevice(self._on_bytes, name=type(self).__name__)
        self.path = self.device.path

    def close(self) -> None:
        self.device.close()

    # Knobs a test or the demo turns.
    def close_door(self, door: int) -> None:
        with self._lock:
            self._open.discard(door)

    def set_stuck(self, door: int, stuck: bool = True) -> None:
        with self._lock:
            (self._stuck.add if stuck else self._stuck.discard)(door)

    def set_item(self, door: int, present: bool = True) -> None:
        with self._lock:
            (self._items.add if present else self._items.discard)(door)

    def is_open(self, door: int) -> bool:
        with self._lock:
            self._auto_close(door)
            return door in self._open

    def _auto_close(self, door: int) -> None:
        """With the lock held: a door left open longer than `auto_close` has been shut."""
        at = self._opened_at.get(door)
        limit = self.faults.auto_close
        if limit > 0 and at is not None and time.monotonic() - at >= limit:
            self._open.discard(door)
            del self._opened_at[door]

    def unlocks(self) -> list[bytes]:
        """Every unlock request seen on the wire, whatever its address."""
        return [frame for _, frame in list(self.frames) if self._is_unlock(frame)]

    def last_unlock(self) -> tuple[float, bytes] | None:
        """(perf_counter when read, frame) of the latest unlock request, or None."""
        frames = self.frames  # only ever appended to, so indexing back from the end is safe
        for i in range(len(frames) - 1, -1, -1):
            if self._is_unlock(frames[i][1]):
                return frames[i]
        return None

    # The board's side.
    def _door(self, channel: int) -> int | None:
        door = channel - self.channel_base + 1
        return door if 1 <= door <= self.doors else None

    def _unlock(self, door: int) -> None:
        with self._lock:
            if door not in self._stuck:
                self._open.add(door)
                self._opened_at[door] = time.monotonic()

    def _signal(self, door: int) -> bool:
        """The sensor bit a door shows: `open_bit` when open."""
        with self._lock:
            self._auto_close(door)
            is_open = door in self._open
        return bool(self.open_bit) == is_open

    def _on_bytes(self, data: bytes) -> bytes:
        now = time.perf_counter()
        out = bytearray(data if self.faults.echo else b"")
        self._buf += data
        while len(self._buf) >= self.request_len:
            frame = bytes(self._buf[: self.request_len])
            try:
                reply = self._handle(frame)
            except FrameError:
                del self._buf[:1]  # resynchronise on the next byte, as a board does
                continue
            del self._buf[: self.request_len]
            self.frames.append((now, frame))
            if reply and not self.faults.no_reply:
                if self.faults.bad_checksum:
                    reply = reply[:-1] + bytes([reply[-1] ^ 0x5A])
                out += reply
        if not (self.faults.split or self.faults.delay_ms):
            return bytes(out)
        if self.faults.delay_ms:
            time.sleep(self.faults.delay_ms / 1000)
        pieces = [out[i : i + 1] for i in range(len(out))] if self.faults.split else [out]
        for piece in pieces:
            try:
                self.device.send(bytes(piece))
            except OSError:
                return b""  # the pty closed under us
            if self.faults.split:
                time.sleep(SPLIT_GAP)
        return b""

    @abstractmethod
    def _handle(self, frame: bytes) -> bytes | None:
        """Act on one request; the reply, or None for silence. FrameError: not a request."""

    @abstractmethod
    def _is_unlock(self, frame: bytes) -> bool: ...


class SimBoard8A(SimBoard):
    """An 8A/80 board: answers unlocks and queries addressed to it, silent otherwise.

    `channels` is the board's own channel count (default: the last door's channel); a board with
    more channels than doors wired still sends all its groups, and its unwired channels read 1
    (a pulled-up input). `report_door` makes the board send the unsolicited `82` report of that
    door ahead of every reply; `queue_report(door)` does it once, ahead of the next reply."""

    default_board = 1
    default_doors = 24
    default_channel_base = 1

    def __init__(
        self, *, channels: int | None = None, report_door: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        last = self.doors - 1 + self.channel_base
        self.channels = last if channels is None else channels
        if self.channels < last:
            raise ValueError(f"channels {self.channels} < the last door's channel {last}")
        self.report_door = report_door
        self._reports: list[int] = []

    def queue_report(self, door: int) -> None:
        """Send the unsolicited report of `door` ahead of the next reply."""
        with self._lock:
            self._reports.append(door)

    def _handle(self, frame: bytes) -> bytes | None:
        reply = self._answer(frame)
        if not reply:
            return reply
        with self._lock:
            doors, self._reports = self._reports, []
        if self.report_door is not None:
            doors.append(self.report_door)
        reports = b"".join(
            c8a.encode_report(self.board, d - 1 + self.channel_base, self._signal(d)) for d in doors
        )
        return reports + reply

    def _answer(self, frame: bytes) -> bytes | None:
        req = c8a.decode_request(frame)
        if req.head not in (c8a.UNLOCK, c8a.QUERY):
            raise FrameError(f"unknown header {req.head:02x}")
        if req.board != self.board:
            return None
        if req.head == c8a.UNLOCK and req.cmd == c8a.UNLOCK_CMD:
            if req.lock == 0:
                for door in range(1, self.doors + 1):
                    self._unlock(door)
                return c8a.encode_unlock_reply(self.board, 0, False)
            target = self._door(req.lock)
            if target is None:
                return None
            self._unlock(target)
            return c8a.encode_unlock_reply(self.board, req.lock, self._signal(target))
        if req.head == c8a.QUERY and req.cmd == c8a.QUERY_CMD:
            if req.lock == 0:
                bits = (1 << self.channels) - 1  # unwired channels read 1
                for door in range(1, self.doors + 1):
                    if not self._signal(door):
                        bits &= ~(1 << (door - 1 + self.channel_base - 1))
                return c8a.encode_status_all(self.board, bits, self.channels)
            target = self._door(req.lock)
            if target is None:
                return None
            return c8a.encode_status_one(self.board, req.lock, self._signal(target))
        return None

    def _is_unlock(self, frame: bytes) -> bool:
        return frame[0] == c8a.UNLOCK and frame[3] == c8a.UNLOCK_CMD


class SimKerongCU16(SimBoard):
    """A Kerong CU16: unlock unanswered, 0x30 answered with the 9-byte status (locks and IR)."""

    default_board = 0
    default_doors = 16
    default_channel_base = 0

    def _handle(self, frame: bytes) -> bytes | None:
        req = ckr.decode_request(frame)
        if req.board != self.board:
            return None
        if req.cmd == ckr.CMD_UNLOCK:
            door = self._door(req.lock)
            if door is not None:
                self._unlock(door)
            return None
        if req.cmd == ckr.CMD_STATUS:
            locks = items = 0
            with self._lock:
                present = set(self._items)
            for door in range(1, self.doors + 1):
                bit = door - 1 + self.channel_base
                locks |= int(self._signal(door)) << bit
                items |= int(door in present) << bit
            return ckr.encode_status(self.board, locks, items)
        return None

    def _is_unlock(self, frame: bytes) -> bool:
        return frame[2] == ckr.CMD_UNLOCK


class SimKerongCU48(SimBoard):
    """A Kerong CU48 speaking one firmware dialect ("a" or "b"): its open is unanswered, its
    status query is answered, and the other dialect's commands get silence (what detection
    relies on; a real board's reaction to them is not documented)."""

    default_board = 0
    default_doors = 48
    default_channel_base = 0
    request_len = c48.REQUEST_LEN

    def __init__(self, *, firmware: str = "a", **kwargs: Any) -> None:
        self.dialect = c48.DIALECTS[firmware]
        super().__init__(**kwargs)

    def _handle(self, frame: bytes) -> bytes | None:
        req = c48.decode_request(frame)
        if req.board != self.board:
            return None
        if req.cmd == self.dialect.unlock:
            door = self._door(req.lock)
            if door is not None:
                self._unlock(door)
            return None
        if req.cmd == self.dialect.query:
            locks = sensors = 0
            with self._lock:
                present = set(self._items)
            for door in range(1, self.doors + 1):
                bit = door - 1 + self.channel_base
                locks |= int(self._signal(door)) << bit
                sensors |= int(door in present) << bit
            return c48.encode_status(self.dialect, self.board, locks, sensors)
        return None

    def _is_unlock(self, frame: bytes) -> bool:
        # Either dialect's open counts: a driver in the wrong dialect must still show up.
        return frame[3] in (c48.A.unlock, c48.B.unlock)
