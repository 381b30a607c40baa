"""A print job as a device-independent document, and builders for receipts and kitchen tickets.

A Job says what to print (styled lines, two-column rows, QR codes, barcodes, cuts); the printer's
profile and Chinese mode decide how (columns, Kanji text or raster). Column widths count display
cells: a CJK or full-width character takes two, as it does on the printer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Align = Literal["left", "center", "right"]


@dataclass(frozen=True)
class Text:
    text: str
    bold: bool = False
    double: bool = False  # double width and height (kitchen tickets: dish names, table number)
    align: Align = "left"

    def __post_init__(self) -> None:
        if "\n" in self.text or "\r" in self.text:
            raise ValueError("one Text per line: split on newlines first")


@dataclass(frozen=True)
class Columns:
    """`left` and `right` on one line, padded to the printer's width (item ... price)."""

    left: str
    right: str
    bold: bool = False
    double: bool = False


@dataclass(frozen=True)
class Divider:
    char: str = "-"


@dataclass(frozen=True)
class Qr:
    data: str
    size: int = 6  # module size in dots, 1-16

    def __post_init__(self) -> None:
        if not self.data or not 1 <= self.size <= 16:
            raise ValueError("QR needs data and a module size of 1-16 dots")


SYMBOLOGIES = ("CODE128", "CODE39", "EAN13", "EAN8", "UPC-A", "ITF")


@dataclass(frozen=True)
class Barcode:
    data: str
    symbology: str = "CODE128"  # one of SYMBOLOGIES
    height: int = 64  # dots

    def __post_init__(self) -> None:
        if self.symbology not in SYMBOLOGIES:
            raise ValueError(f"barcode symbology: one of {', '.join(SYMBOLOGIES)}")
        if not self.data or not self.data.isascii() or not 1 <= self.height <= 255:
            raise ValueError("barcode data must be ASCII; height 1-255 dots")


@dataclass(frozen=True)
class Feed:
    lines: int = 1


@dataclass(frozen=True)
class Cut:
    partial: bool = True  # a partial cut leaves the ticket hanging instead of dropping it


Item = Text | Columns | Divider | Qr | Barcode | Feed | Cut


@dataclass(frozen=True)
class Job:
    items: tuple[Item, ...]
    title: str = ""  # for logs and the spooler, not printed

    @property
    def text_lines(self) -> list[str]:
        return [i.text for i in self.items if isinstance(i, Text)]


@dataclass
class JobBuilder:
    title: str = ""
    items: list[Item] = field(default_factory=list)

    def text(
        self, text: str = "", *, bold: bool = False, double: bool = False, align: Align = "left"
    ) -> JobBuilder:
        for line in text.splitlines() or [""]:
            self.items.append(Text(line, bold, double, align))
        return self

    def columns(
        self, left: str, right: str, *, bold: bool = False, double: bool = False
    ) -> JobBuilder:
        self.items.append(Columns(left, right, bold, double))
        return self

    def divider(self, char: str = "-") -> JobBuilder:
        self.items.append(Divider(char))
        return self

    def qr(self, data: str, size: int = 6) -> JobBuilder:
        self.items.append(Qr(data, size))
        return self

    def barcode(self, data: str, symbology: str = "CODE128", height: int = 64) -> JobBuilder:
        self.items.append(Barcode(data, symbology, height))
        return self

    def feed(self, lines: int = 1) -> JobBuilder:
        self.items.append(Feed(lines))
        return self

    def cut(self, partial: bool = True) -> JobBuilder:
        self.items.append(Cut(partial))
        return self

    def build(self) -> Job:
        return Job(tuple(self.items), self.title)


def display_width(text: str) -> int:
    """Cells on the printer: ASCII takes one, anything else two. In Kanji mode every non-ASCII
    character is a two-byte code printed in a full 24-dot cell, even the "ambiguous" × and ¥."""
    return sum(1 if c.isascii() else 2 for c in text)


def fit_columns(left: str, right: str, columns: int) -> str:
    """`left` padded so that `right` ends at the last column; `left` is cut if both don't fit."""
    room = columns - display_width(right) - 1
    while display_width(left) > room and left:
        left = left[:-1]
    return left + " " * (columns - display_width(left) - display_width(right)) + right


@dataclass(frozen=True)
class OrderLine:
    name: str
    qty: int
    price_cents: int = 0
    note: str = ""  # kitchen note, e.g. 少辣 (less spicy)


def money(cents: int) -> str:
    # Full-width yen sign: the half-width ¥ (U+00A5) has no two-byte GB code, see render.py.
    return f"￥{cents // 100}.{cents % 100:02d}"


def receipt(
    shop: str,
    order_no: str,
    lines: list[OrderLine],
    *,
    paid_at: str = "",
    qr: str = "",
    footer: str = "谢谢惠顾 Thank you",
) -> Job:
    b = JobBuilder(title=f"receipt {order_no}")
    b.text(shop, bold=True, double=True, align="center")
    b.text(f"单号 Order: {order_no}", align="center")
    if paid_at:
        b.text(paid_at, align="center")
    b.divider()
    total = 0
    for line in lines:
        amount = line.qty * line.price_cents
        total += amount
        b.columns(f"{line.name} x{line.qty}", money(amount))
    b.divider()
    b.columns("合计 Total", money(total), bold=True)
    if qr:
        b.feed().qr(qr)
    b.text(footer, align="center").cut()
    return b.build()


def kitchen_ticket(
    station: str, table: str, order_no: str, lines: list[OrderLine], *, time: str = ""
) -> Job:
    """Large bold dish names, notes underneath, so the kitchen reads it at arm's length."""
    b = JobBuilder(title=f"kitchen {station} {order_no}")
    b.text(f"{station} 桌号 {table}", bold=True, double=True, align="center")
    b.text(f"单号 {order_no}  {time}".rstrip(), align="center")
    b.divider("=")
    for line in lines:
        b.text(f"{line.qty} x {line.name}", bold=True, double=True)
        if line.note:
            b.text(f"   （{line.note}）", bold=True)
    b.divider("=")
    b.cut()
    return b.build()
