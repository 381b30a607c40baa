"""Printer profiles: paper, columns and capabilities of common kitchen and receipt printers.

`escpos_profile` names the python-escpos capability profile used to generate commands; it must
agree with ours on what matters to python-escpos (media width in dots, cutter features).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    model: str
    paper_mm: int
    dots: int  # printable width in dots (raster images are this wide)
    columns: int  # font A columns; a CJK character takes two
    cutter: bool
    drawer: bool
    qr: bool  # native QR (GS ( k); otherwise QR codes are sent as raster images
    barcode: bool  # native 1D barcodes (GS k)
    buzzer: bool  # ESC B n t (Chinese kitchen models)
    escpos_profile: str


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("tm-t20", "Epson TM-T20/TM-T20II", 80, 576, 48, True, True, True, True, False,
                "TM-T20II"),
        Profile("tm-t88", "Epson TM-T88IV/TM-T88V", 80, 512, 42, True, True, True, True, False,
                "TM-T88V"),
        Profile("xp-58", "Xprinter XP-58 series", 58, 384, 32, False, True, True, True, False,
                "POS-5890"),
        Profile("xp-80", "Xprinter XP-80 series (kitchen)", 80, 576, 48, True, True, True, True,
                True, "TM-T20II"),
        # Unknown models: assume the least (raster QR, no buzzer) so nothing is silently dropped.
        Profile("generic-58", "generic 58 mm ESC/POS", 58, 384, 32, False, False, False, False,
                False, "POS-5890"),
        Profile("generic-80", "generic 80 mm ESC/POS", 80, 576, 48, True, True, False, True,
                False, "TM-T20II"),
    )
}  # fmt: skip
