"""Real-time status (DLE EOT 1-4) and the end-of-job reply (GS r 1), as pure codecs.

Every DLE EOT reply is one byte shaped 0xx1xx10 (bit 7 = 0, bit 4 = 1, bit 1 = 1, bit 0 = 0);
a GS r reply has bits 4 and 7 clear. So the two kinds can be told apart in one byte stream, which
lets the driver poll real-time status while it waits for the end-of-job reply.

Bits (Epson ESC/POS reference, also followed by Xprinter, Rongta, Gprinter):
- n=1 printer:       bit 3 offline; bit 2 drawer connector pin 3 high.
- n=2 offline cause: bit 2 cover open; bit 3 feeding by button; bit 5 stopped by paper end;
                     bit 6 error occurred.
- n=3 error cause:   bit 2 recoverable error; bit 3 autocutter error; bit 5 unrecoverable error;
                     bit 6 auto-recoverable error (head too hot, cover opened while printing).
- n=4 paper sensor:  bits 2+3 roll paper near end; bits 5+6 roll paper end.
"""

from __future__ import annotations

from dataclasses import dataclass

from escpos.constants import GS, RT_STATUS

STATUS_QUERIES = (1, 2, 3, 4)
# All four queries in one write: real-time commands are answered in order, one byte each, so
# one round trip gives the whole picture (four sequential exchanges cost four over a network).
STATUS_REQUEST = b"".join(RT_STATUS + bytes((n,)) for n in STATUS_QUERIES)
# GS r 1 is *not* real-time: the printer answers it only after everything sent before it has been
# processed, which makes it the end-of-job marker (DLE EOT alone can answer while the job still
# sits in the receive buffer).
END_OF_JOB_REQUEST = GS + b"r\x01"


def is_status_byte(b: int) -> bool:
    return b & 0x93 == 0x12


def is_end_of_job_byte(b: int) -> bool:
    return b & 0x90 == 0x00


@dataclass(frozen=True)
class PrinterStatus:
    online: bool
    paper_near_end: bool
    paper_out: bool
    cover_open: bool
    cutter_error: bool
    other_error: bool  # unrecoverable or auto-recoverable error (e.g. head overheated)
    drawer_pin3_high: bool
    raw: bytes  # the four reply bytes, for logs

    @property
    def ready(self) -> bool:
        """Fit to print: online, paper present, cover closed, no error."""
        return (
            self.online
            and not self.paper_out
            and not self.cover_open
            and not self.cutter_error
            and not self.other_error
        )

    @property
    def problems(self) -> tuple[str, ...]:
        """What stops printing, most actionable first."""
        out = []
        if self.paper_out:
            out.append("paper out")
        if self.cover_open:
            out.append("cover open")
        if self.cutter_error:
            out.append("cutter error")
        if self.other_error:
            out.append("printer error")
        if not self.online and not out:
            out.append("offline")
        return tuple(out)

    @property
    def warnings(self) -> tuple[str, ...]:
        return ("paper near end",) if self.paper_near_end and not self.paper_out else ()

    def __str__(self) -> str:
        words = self.problems + self.warnings
        return ", ".join(words) if words else "ready"


def decode_status(raw: bytes) -> PrinterStatus:
    """The status from the four DLE EOT 1..4 reply bytes, in query order."""
    if len(raw) != len(STATUS_QUERIES) or not all(is_status_byte(b) for b in raw):
        raise ValueError(f"not four DLE EOT replies: {raw.hex(' ')}")
    printer, offline, error, paper = raw
    cutter = bool(error & 0x08)
    return PrinterStatus(
        online=not printer & 0x08,
        paper_near_end=paper & 0x0C == 0x0C,
        paper_out=paper & 0x60 == 0x60 or bool(offline & 0x20),
        cover_open=bool(offline & 0x04),
        cutter_error=cutter,
        other_error=bool(error & 0x64),
        drawer_pin3_high=bool(printer & 0x04),
        raw=bytes(raw),
    )


def encode_status(
    *,
    paper_near_end: bool = False,
    paper_out: bool = False,
    cover_open: bool = False,
    cutter_error: bool = False,
    drawer_pin3_high: bool = False,
) -> bytes:
    """The four reply bytes a printer in this state sends (the simulator's side of the codec)."""
    offline = paper_out or cover_open or cutter_error
    printer = 0x12 | (0x08 if offline else 0) | (0x04 if drawer_pin3_high else 0)
    cause = 0x12 | (0x04 if cover_open else 0) | (0x20 if paper_out else 0)
    cause |= 0x40 if cutter_error else 0
    error = 0x12 | (0x08 if cutter_error else 0)
    paper = 0x12 | (0x0C if paper_near_end else 0) | (0x60 if paper_out else 0)
    return bytes((printer, cause, error, paper))
