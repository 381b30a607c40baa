"""Raster Chinese: text lines drawn with a CJK font into a 1-bit image the width of the paper.

No code pages at all, so any character the font has prints (Odoo's IoT box prints receipts this
way). The font comes from fontconfig (`fc-list :lang=zh-cn`), preferring a monospaced CJK face so
two-column rows line up; `make test` installs fonts-wqy-microhei, and a font file can be given per
printer instead (option `font`).
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from drivers.printer.job import Align, display_width

# Most wanted first: monospaced faces keep receipt columns aligned.
_PREFERRED = (
    "WenQuanYi Micro Hei Mono",
    "Noto Sans Mono CJK SC",
    "WenQuanYi Zen Hei Mono",
    "Noto Sans CJK SC",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
)
FONT_HINT = "no CJK font: install fonts-wqy-microhei (apt) or set the printer option font=/path.ttf"


@dataclass(frozen=True)
class FontRef:
    path: str
    index: int = 0


@functools.lru_cache(maxsize=1)
def find_cjk_font() -> FontRef:
    """The best CJK font fontconfig knows; raises LookupError when there is none."""
    try:
        out = subprocess.run(
            ["fc-list", "-f", "%{file}|%{index}|%{family}\n", ":lang=zh-cn"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise LookupError(f"fc-list failed ({err}); {FONT_HINT}") from err
    found: list[tuple[int, FontRef]] = []
    for row in out.splitlines():
        path, _, rest = row.partition("|")
        index, _, families = rest.partition("|")
        names = families.split(",")
        rank = min((_PREFERRED.index(n) for n in names if n in _PREFERRED), default=len(_PREFERRED))
        found.append((rank, FontRef(path, int(index or 0))))
    if not found:
        raise LookupError(FONT_HINT)
    return min(found, key=lambda f: (f[0], f[1].path))[1]


@functools.lru_cache(maxsize=16)
def _font(ref: FontRef, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(ref.path, size, index=ref.index)


@dataclass(frozen=True)
class RasterLine:
    text: str
    bold: bool
    double: bool
    align: Align


@functools.lru_cache(maxsize=8192)
def _glyph(font: FontRef, cell: int, cells: int, bold: bool, ch: str) -> Image.Image:
    """One character drawn once into its cells (mask, 255 = ink). Drawing text costs Pillow
    ~0.5 ms a line (twice that with a bold stroke); a kitchen prints the same few hundred
    characters all day, so pasting cached glyphs makes a ticket ~10x cheaper."""
    size = 2 * cell  # a CJK glyph fills two cells, as the printer's 24x24 Kanji font does
    base = _font(font, size)
    f, adv = base, base.getlength(ch)
    if adv > cells * cell:  # e.g. a monospaced CJK font's Latin is 0.6 em: shrink it to fit
        f = _font(font, max(8, int(size * cells * cell / adv)))
        adv = f.getlength(ch)
    stroke = 1 if bold else 0
    mask = Image.new("L", (cells * cell, size * 5 // 4), 0)
    x = (cells * cell - adv) / 2
    ascent = base.getmetrics()[0]
    ImageDraw.Draw(mask).text(
        (x, ascent), ch, font=f, fill=255, anchor="ls", stroke_width=stroke, stroke_fill=255
    )
    return mask


def _wrap(text: str, columns: int) -> list[str]:
    lines, cur, used = [], "", 0
    for ch in text:
        w = display_width(ch)
        if cur and used + w > columns:
            lines.append(cur)
            cur, used = "", 0
        cur += ch
        used += w
    return [*lines, cur]


def render_lines(
    lines: Sequence[RasterLine], dots: int, columns: int, font: FontRef
) -> Image.Image:
    """A mode '1' image `dots` wide where a set pixel is ink (ESC/POS raster's sense), one
    printer line per entry, on the same cell grid as text mode so that columns line up."""
    laid: list[tuple[str, RasterLine, int]] = []
    height = 0
    for line in lines:
        scale = 2 if line.double else 1
        cell = dots // columns * scale
        for part in _wrap(line.text, columns // scale):
            laid.append((part, line, cell))
            height += 2 * cell * 5 // 4  # line spacing like ESC 2 (1/6 inch)
    img = Image.new("L", (dots, max(height, 1)), 0)
    y = 0
    for part, line, cell in laid:
        w = display_width(part) * cell
        x = 0 if line.align == "left" else (dots - w) // (2 if line.align == "center" else 1)
        for ch in part:
            cells = display_width(ch)
            if not ch.isspace():
                img.paste(255, (x, y), _glyph(font, cell, cells, line.bold, ch))
            x += cells * cell
        y += 2 * cell * 5 // 4
    return img.point(lambda v: 255 if v >= 128 else 0, mode="1")


def raster_commands(img: Image.Image, slice_rows: int = 255) -> bytes:
    """GS v 0 commands for a mode '1' image (set = ink) whose width is a multiple of 8, in slices
    of at most `slice_rows` rows: cheap printers overflow their buffer on taller images."""
    width, height = img.size
    out = bytearray()
    for top in range(0, height, slice_rows):
        rows = min(slice_rows, height - top)
        out += b"\x1dv0\x00" + (width // 8).to_bytes(2, "little") + rows.to_bytes(2, "little")
        out += img.crop((0, top, width, top + rows)).tobytes()
    return bytes(out)
