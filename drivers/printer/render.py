"""Job -> ESC/POS bytes, with Chinese in Kanji text mode or as raster images.

python-escpos (its Dummy printer) generates the commands; text bytes are written here, because
its MagicEncode flips between single-byte code pages (ESC t) and GB18030 by a regex: "¥12.50"
becomes ESC t 0 + 0x9D, which a printer in Kanji mode pairs with the next byte and garbles.

Kanji mode: FS & once after ESC @, every line encoded in one two-byte code (GB18030's two-byte
part, i.e. GBK, or Big5 for Traditional), FS . at the end. Characters the printer's code lacks
(GB18030 gives ¥ U+00A5 a four-byte code that printers do not understand) are replaced by their
full-width twin (￥ A3 A4), else by "?". Sizes use GS ! (ESC ! does not enlarge Kanji).
"""

from __future__ import annotations

import qrcode  # type: ignore[import-untyped]
from escpos.constants import QR_ECLEVEL_M
from escpos.printer import Dummy

from drivers.printer.job import (
    Barcode,
    Columns,
    Cut,
    Divider,
    Feed,
    Item,
    Job,
    Qr,
    Text,
    display_width,
    fit_columns,
)
from drivers.printer.profiles import Profile
from drivers.printer.raster import (
    FontRef,
    RasterLine,
    find_cjk_font,
    raster_commands,
    render_lines,
)

KANJI_ON = b"\x1c\x26"  # FS &
KANJI_OFF = b"\x1c\x2e"  # FS .
LF = b"\n"

# Control characters in text would be commands to the printer: print them as "?".
_CONTROLS = {i: "?" for i in (*range(0x20), 0x7F)}
_SUBSTITUTES = {"¥": "￥", "￥": "¥", "\u00a0": " ", "€": "EUR"}
_CODECS = {"gb18030": "gb18030", "gbk": "gbk", "big5": "big5"}


def _fits(ch: str, codec: str) -> bool:
    try:
        return len(ch.encode(codec)) <= 2
    except UnicodeEncodeError:
        return False


def normalize_kanji(text: str, encoding: str = "gb18030") -> str:
    """`text` with what the printer's two-byte code lacks replaced (¥ -> ￥ for GB), so that
    column layout measures what will actually print."""
    text = text.translate(_CONTROLS)
    if text.isascii():
        return text
    codec = _CODECS[encoding]
    try:
        data = text.encode(codec)
        # GB18030 has four-byte codes; printers read only one- and two-byte ones.
        if len(data) == 2 * len(text) - sum(c.isascii() for c in text):
            return text
    except UnicodeEncodeError:
        pass
    out = []
    for ch in text:
        if not _fits(ch, codec):
            sub = _SUBSTITUTES.get(ch, "?")
            ch = sub if all(_fits(c, codec) for c in sub) else "?"
        out.append(ch)
    return "".join(out)


def encode_kanji(text: str, encoding: str = "gb18030") -> bytes:
    """Text as a printer in Kanji mode reads it: ASCII single bytes, all else two bytes."""
    return normalize_kanji(text, encoding).encode(_CODECS[encoding])


class _Renderer:
    def __init__(self, profile: Profile, chinese: str, encoding: str, font: FontRef | None):
        self.p = profile
        self.kanji = chinese == "kanji"
        self.encoding = encoding
        self.font = font
        self.d = Dummy(profile=profile.escpos_profile)
        self.bold, self.size, self.align = False, 1, "left"
        self.pending: list[RasterLine] = []

    def style(self, bold: bool, double: bool, align: str) -> None:
        """Send only what changed: fewer bytes, and a stable golden for the tests."""
        if align != self.align:
            self.d.set(align=align)
            self.align = align
        if bold != self.bold:
            self.d.set(bold=bold)
            self.bold = bold
        size = 2 if double else 1
        if size != self.size:
            self.d.set(custom_size=True, width=size, height=size)
            self.size = size

    def line(self, text: str, bold: bool, double: bool, align: str) -> None:
        if not self.kanji:
            self.pending.append(RasterLine(text, bold, double, align))  # type: ignore[arg-type]
            return
        self.style(bold, double, align)
        self.d._raw(encode_kanji(text, self.encoding) + LF)

    def flush_raster(self) -> None:
        if not self.pending:
            return
        assert self.font is not None
        img = render_lines(self.pending, self.p.dots, self.p.columns, self.font)
        self.pending = []
        self.style(False, False, "left")
        # Not python-escpos image(): it converts RGBA -> RGB -> L -> 1 per slice, 30 ms a ticket.
        self.d._raw(raster_commands(img))

    def item(self, it: Item) -> None:
        cols = self.p.columns
        if isinstance(it, Text):
            self.line(it.text, it.bold, it.double, it.align)
            return
        if isinstance(it, Columns):
            width = cols // 2 if it.double else cols
            left, right = it.left, it.right
            if self.kanji:
                left = normalize_kanji(left, self.encoding)
                right = normalize_kanji(right, self.encoding)
            self.line(fit_columns(left, right, width), it.bold, it.double, "left")
            return
        if isinstance(it, Divider):
            self.line(it.char * (cols // max(display_width(it.char), 1)), False, False, "left")
            return
        self.flush_raster()
        if isinstance(it, Qr):
            self.style(False, False, "center")
            if self.p.qr:
                self.d.qr(it.data, ec=QR_ECLEVEL_M, size=it.size, native=True)
            else:
                code = qrcode.QRCode(
                    box_size=it.size, border=2, error_correction=qrcode.constants.ERROR_CORRECT_M
                )
                code.add_data(it.data)
                self.d.image(
                    code.make_image().get_image().convert("L"),
                    center=True,
                    impl="bitImageRaster",
                    fragment_height=255,
                )
        elif isinstance(it, Barcode):
            self.barcode(it)
        elif isinstance(it, Feed):
            self.d.print_and_feed(it.lines)
        elif isinstance(it, Cut):
            self.d.cut(mode="PART" if it.partial else "FULL")

    def barcode(self, it: Barcode) -> None:
        data = it.data
        if it.symbology == "CODE128" and not data.startswith("{"):
            data = "{B" + data  # GS k 73 wants the code set first; B covers printable ASCII
        # _hw_barcode is barcode() minus its print() to stdout and its profile gate (our profile
        # decides); function type B (GS k m n d1..dn) is the one with CODE128.
        self.d._hw_barcode(data, it.symbology, it.height, 2, "BELOW", "A", True, "B", True)
        self.align = "center"

    def render(self, job: Job) -> bytes:
        self.d.hw("INIT")
        if self.kanji:
            self.d._raw(KANJI_ON)
        for it in job.items:
            self.item(it)
        self.flush_raster()
        if self.kanji:
            self.d._raw(KANJI_OFF)
        out: bytes = self.d.output
        return out


def render(
    job: Job,
    profile: Profile,
    *,
    chinese: str = "kanji",
    encoding: str = "gb18030",
    font: FontRef | None = None,
) -> bytes:
    """The bytes of `job` for a printer with `profile`. Raises ValueError for what the printer
    cannot print (bad barcode data, no CJK font for raster mode)."""
    if chinese == "raster" and font is None:
        try:
            font = find_cjk_font()
        except LookupError as err:
            raise ValueError(str(err)) from err
    try:
        return _Renderer(profile, chinese, encoding, font).render(job)
    except ValueError:
        raise
    except Exception as err:  # python-escpos raises its own Error types for bad barcodes
        raise ValueError(f"cannot render {job.title or 'job'}: {err}") from err
