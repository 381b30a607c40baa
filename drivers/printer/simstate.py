"""The simulated printer's insides: an ESC/POS stream parser that keeps what was printed and
answers status queries from its state. No I/O here; simserver.py puts it behind a socket or pty.

Like a real printer, it stops processing (but keeps receiving) while offline (paper out, cover
open, cutter error): DLE EOT is still answered at once (real-time), while GS r 1 and everything
else wait until the fault is cleared. Text in Kanji mode (after FS &) is decoded two bytes at a
time with the printer's code (GB18030 or Big5); outside it, bytes >= 0x80 are code page 437, so a
single-byte code-page mix shows up garbled, as on paper.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.printer.status import encode_status


@dataclass(frozen=True)
class SimKnobs:
    paper: str = field(default="ok", metadata={"choices": ("ok", "near-end", "out")})
    cover: str = field(default="closed", metadata={"choices": ("closed", "open")})
    # error: from the start; jam: the first cut jams the knife
    cutter: str = field(default="ok", metadata={"choices": ("ok", "error", "jam")})
    reply: str = field(default="ok", metadata={"choices": ("ok", "none")})
    delay: float = 0.0  # seconds before each reply
    split: bool = False  # replies trickle out one byte per write, 20 ms apart
    paper_lines: int = 0  # the roll runs out after this many printed lines (0: never)


@dataclass(frozen=True)
class PrintedLine:
    text: str
    bold: bool
    double: bool
    align: str


@dataclass(frozen=True)
class SimImage:
    width: int  # dots
    height: int
    data: bytes  # GS v 0 raster, 1 = black


_ALIGN = {0: "left", 1: "center", 2: "right", 48: "left", 49: "center", 50: "right"}
_ESC_ARGS = {b"@": 0, b"2": 0, b"i": 0, b"m": 0, b"p": 3, b"B": 2, b"$": 2, b"\\": 2}
_GS_ARGS = {b"P": 2, b"L": 2, b"W": 2, b"$": 2, b"\\": 2}
_FS_ARGS = {b"&": 0, b".": 0, b"S": 2, b"p": 2}


class EscposMachine:
    def __init__(
        self,
        knobs: SimKnobs,
        encoding: str = "gb18030",
        emit: Callable[[bytes], None] | None = None,
    ) -> None:
        self.knobs = knobs
        self.encoding = "big5" if encoding == "big5" else "gb18030"
        self.emit = emit
        self.lock = threading.Lock()
        self.paper_out = knobs.paper == "out"
        self.near_end = knobs.paper == "near-end"
        self.cover_open = knobs.cover == "open"
        self.cutter_error = knobs.cutter == "error"
        self.lines: list[PrintedLine] = []
        self.cuts: list[bool] = []  # partial?
        self.qr: list[str] = []
        self.barcodes: list[str] = []
        self.images: list[SimImage] = []
        self.drawer: list[int] = []  # pins pulsed
        self.beeps = 0
        self.feeds = 0
        self.unknown: list[bytes] = []
        self._buf = bytearray()  # received, not yet processed
        self._line: list[str] = []
        self._short_roll = knobs.paper_lines > 0
        self._reset_modes()

    def _reset_modes(self) -> None:
        self.kanji = False
        self.bold = self.double = False
        self.align = "left"
        self._qr_data = b""

    @property
    def offline(self) -> bool:
        return self.paper_out or self.cover_open or self.cutter_error

    def status_bytes(self) -> bytes:
        return encode_status(
            paper_near_end=self.near_end,
            paper_out=self.paper_out,
            cover_open=self.cover_open,
            cutter_error=self.cutter_error,
        )

    @property
    def text(self) -> list[str]:
        with self.lock:
            return [line.text for line in self.lines]

    # -- the technician's hands --

    def load_paper(self) -> None:
        self._fix(lambda: setattr(self, "paper_out", False))

    def close_cover(self) -> None:
        self._fix(lambda: setattr(self, "cover_open", False))

    def clear_cutter(self) -> None:
        self._fix(lambda: setattr(self, "cutter_error", False))

    def _fix(self, action: Callable[[], None]) -> None:
        with self.lock:
            action()
            self.near_end = self.near_end and not self.paper_out
            out = self._process()
        if out and self.emit is not None and self.knobs.reply == "ok":
            self.emit(out)

    # -- the wire --

    def feed(self, data: bytes) -> bytes:
        """Take received bytes; return the immediate replies."""
        with self.lock:
            if self.offline:
                out = self._realtime_only(data)
            else:
                self._buf += data
                out = self._process()
        return out if self.knobs.reply == "ok" else b""

    def _realtime_only(self, data: bytes) -> bytes:
        """Offline: answer DLE EOT now, keep the rest for later (as the receive buffer does)."""
        out, i = bytearray(), 0
        while (j := data.find(b"\x10\x04", i)) >= 0 and j + 2 < len(data):
            self._buf += data[i:j]
            out += self._status(data[j + 2])
            i = j + 3
        self._buf += data[i:]
        return bytes(out)

    def _status(self, n: int) -> bytes:
        return bytes((self.status_bytes()[n - 1],)) if 1 <= n <= 4 else b""

    def _process(self) -> bytes:
        out = bytearray()
        while self._buf and not self.offline:
            used = self._step(self._buf, out)
            if used is None:
                break  # an incomplete command: wait for more bytes
            del self._buf[:used]
        return bytes(out)

    def _step(self, b: bytearray, out: bytearray) -> int | None:
        c = b[0]
        if c == 0x0A:
            self._end_line()
            return 1
        if c in (0x0D, 0x07, 0x00):
            return 1
        if c == 0x10:
            return self._dle(b, out)
        if c == 0x1B:
            return self._esc(b)
        if c == 0x1D:
            return self._gs(b, out)
        if c == 0x1C:
            return self._fs(b)
        if c >= 0x80 and self.kanji:
            if len(b) < 2:
                return None
            self._line.append(bytes(b[:2]).decode(self.encoding, errors="replace"))
            return 2
        self._line.append(bytes(b[:1]).decode("cp437"))
        return 1

    def _end_line(self) -> None:
        self.lines.append(PrintedLine("".join(self._line), self.bold, self.double, self.align))
        self._line = []
        if self._short_roll and len(self.lines) >= self.knobs.paper_lines:
            self.paper_out = True
            self._short_roll = False  # the roll loaded next is a full one

    def _dle(self, b: bytearray, out: bytearray) -> int | None:
        if len(b) < 3:
            return None
        if b[1] == 0x04:
            out += self._status(b[2])
            return 3
        if b[1] == 0x14:  # DLE DC4 fn m t: real-time drawer pulse
            if len(b) < 5:
                return None
            self.drawer.append(2 if b[3] == 0 else 5)
            return 5
        return 3

    def _esc(self, b: bytearray) -> int | None:
        if len(b) < 2:
            return None
        cmd = bytes(b[1:2])
        need = 2 + _ESC_ARGS.get(cmd, 1)
        if len(b) < need:
            return None
        arg = b[2] if need > 2 else 0
        if cmd == b"@":
            self._reset_modes()
        elif cmd in (b"E", b"G"):
            self.bold = bool(arg & 1)
        elif cmd == b"!":
            self.bold = bool(arg & 0x08)
            self.double = bool(arg & 0x30)
        elif cmd == b"a":
            self.align = _ALIGN.get(arg, "left")
        elif cmd in (b"d", b"J"):
            self.feeds += arg
        elif cmd in (b"i", b"m"):
            self._cut(cmd == b"m")
        elif cmd == b"p":
            self.drawer.append(2 if arg in (0, 48) else 5)
        elif cmd == b"B":
            self.beeps += arg
        elif cmd == b"*":  # column image: m nL nH data
            if len(b) < 5:
                return None
            need = 5 + (b[3] + 256 * b[4]) * (3 if b[2] in (32, 33) else 1)
            return need if len(b) >= need else None
        elif cmd not in (b"-", b"M", b"t", b"2", b"3", b"R", b"{", b"V", b" ", b"=", b"U", b"$"):
            self.unknown.append(bytes(b[:need]))
        return need

    def _gs(self, b: bytearray, out: bytearray) -> int | None:
        if len(b) < 3:
            return None
        cmd, arg = bytes(b[1:2]), b[2]
        if cmd == b"!":
            self.double = arg != 0
        elif cmd == b"V":
            if arg in (65, 66):
                if len(b) < 4:
                    return None
                self._cut(arg == 66)
                return 4
            self._cut(arg in (1, 49))
        elif cmd == b"r":
            paper = (0x0C if self.paper_out else 0) | (0x03 if self.near_end else 0)
            out.append(paper)
        elif cmd == b"k":
            return self._barcode(b)
        elif cmd == b"(":
            if len(b) < 5:
                return None
            need = 5 + b[3] + 256 * b[4]
            if len(b) < need:
                return None
            if arg == ord("k"):
                self._qr(bytes(b[5:need]))
            return need
        elif cmd == b"v":
            if len(b) < 8:
                return None
            width, height = b[4] + 256 * b[5], b[6] + 256 * b[7]
            need = 8 + width * height
            if len(b) < need:
                return None
            self.images.append(SimImage(width * 8, height, bytes(b[8:need])))
            return need
        elif cmd in _GS_ARGS:
            need = 2 + _GS_ARGS[cmd]
            return need if len(b) >= need else None
        elif cmd not in (b"h", b"w", b"H", b"f", b"B", b"b", b"a", b"I", b"E"):
            self.unknown.append(bytes(b[:3]))
        return 3

    def _fs(self, b: bytearray) -> int | None:
        if len(b) < 2:
            return None
        cmd = bytes(b[1:2])
        need = 2 + _FS_ARGS.get(cmd, 1)
        if len(b) < need:
            return None
        if cmd == b"&":
            self.kanji = True
        elif cmd == b".":
            self.kanji = False
        elif cmd not in (b"!", b"C", b"-", b"W"):
            self.unknown.append(bytes(b[:need]))
        return need

    def _cut(self, partial: bool) -> None:
        if self.knobs.cutter == "jam" and not self.cuts:
            self.cutter_error = True  # the knife stalls mid-cut; the printer goes offline
        self.cuts.append(partial)

    def _barcode(self, b: bytearray) -> int | None:
        m = b[2]
        if m <= 6:  # function A: NUL-terminated
            end = b.find(b"\x00", 3)
            if end < 0:
                return None
            self.barcodes.append(bytes(b[3:end]).decode("ascii", "replace"))
            return end + 1
        if len(b) < 4 or len(b) < 4 + b[3]:
            return None
        data = bytes(b[4 : 4 + b[3]]).decode("ascii", "replace")
        self.barcodes.append(data[2:] if data[:2] in ("{A", "{B", "{C") else data)
        return 4 + b[3]

    def _qr(self, body: bytes) -> None:
        if len(body) < 2 or body[0] != 0x31:
            return
        if body[1] == 0x50:  # store: cn fn m d1..dk
            self._qr_data = body[3:]
        elif body[1] == 0x51 and self._qr_data:  # print what was stored
            self.qr.append(self._qr_data.decode("utf-8", "replace"))
