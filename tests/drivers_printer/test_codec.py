"""Pure codecs: Kanji-mode bytes against a golden, status bytes, layout helpers."""

from __future__ import annotations

import pytest
from escpos.printer import Dummy

from drivers.printer.job import (
    Columns,
    JobBuilder,
    OrderLine,
    Text,
    display_width,
    fit_columns,
    kitchen_ticket,
    receipt,
)
from drivers.printer.profiles import PROFILES
from drivers.printer.render import encode_kanji, render
from drivers.printer.simstate import EscposMachine, SimKnobs
from drivers.printer.status import STATUS_REQUEST, decode_status, encode_status

# The golden kitchen ticket, as an 80 mm Xprinter in Kanji mode (GB18030 two-byte codes) reads it.
GOLDEN_JOB = (
    JobBuilder("golden")
    .text("热菜 桌8", bold=True, double=True, align="center")
    .text("宫保鸡丁（少辣）", bold=True)
    .columns("合计", "¥38.00")
    .cut()
    .build()
)
GOLDEN_HEX = " ".join(
    [
        "1b 40",  # ESC @: initialise (clears styles; Kanji mode is set again below)
        "1c 26",  # FS &: Kanji mode on, so bytes >= 0x80 are read in pairs
        "1b 61 01",  # ESC a 1: centre
        "1b 45 01",  # ESC E 1: bold (applies to Kanji too)
        "1d 21 11",  # GS ! 0x11: double width and height; ESC ! would leave Kanji small
        "c8 c8 b2 cb 20 d7 c0 38 0a",  # 热 C8C8, 菜 B2CB, space, 桌 D7C0, "8", LF
        "1b 61 00",  # ESC a 0: left (bold stays on: only changes are sent)
        "1d 21 00",  # GS ! 0: normal size
        # 宫 B9AC 保 B1A3 鸡 BCA6 丁 B6A1, full-width （ A3A8, 少 C9D9 辣 C0B1, ） A3A9: the
        # brackets stay two-byte GB codes, never a code-page byte
        "b9 ac b1 a3 bc a6 b6 a1 a3 a8 c9 d9 c0 b1 a3 a9 0a",
        "1b 45 00",  # ESC E 0: bold off
        # 合 BACF 计 BCC6, then 37 spaces: 48 columns - 4 (two CJK) - 7 ("￥38.00", ￥ is wide)
        "ba cf bc c6 "
        + "20 " * 37
        # ¥ (U+00A5) has only a four-byte GB18030 code (81 30 84 36) that printers misread, and
        # python-escpos would send ESC t 0 + 9D; the full-width ￥ is GB A3A4
        + "a3 a4 33 38 2e 30 30 0a",
        "1b 64 06",  # ESC d 6: feed the last line past the knife
        "1d 56 01",  # GS V 1: partial cut
        "1c 2e",  # FS .: Kanji mode off, leaving the printer as we found it
    ]
)


def test_kitchen_ticket_kanji_bytes_match_the_golden() -> None:
    data = render(GOLDEN_JOB, PROFILES["xp-80"], chinese="kanji", encoding="gb18030")
    assert data.hex(" ") == GOLDEN_HEX


def test_golden_reads_back_on_the_simulated_printer() -> None:
    m = EscposMachine(SimKnobs())
    assert m.feed(bytes.fromhex(GOLDEN_HEX)) == b""
    assert m.text == ["热菜 桌8", "宫保鸡丁（少辣）", "合计" + " " * 37 + "￥38.00"]
    assert [(x.bold, x.double, x.align) for x in m.lines] == [
        (True, True, "center"),
        (True, False, "left"),
        (False, False, "left"),
    ]
    assert m.cuts == [True] and m.unknown == []


def test_python_escpos_magic_encode_garbles_yen_which_is_why_we_encode_ourselves() -> None:
    d = Dummy()
    d.text("¥12.50\n")
    assert b"\x1bt" in d.output  # a code-page switch: in Kanji mode the next byte pairs up
    assert b"\xa3\xa4" not in d.output


def test_big5_for_traditional_chinese() -> None:
    assert encode_kanji("宮保雞丁（少辣）¥", "big5").hex(" ") == (
        "ae 63 ab 4f c2 fb a4 42 a1 5d a4 d6 bb b6 a1 5e a2 44"
    )
    job = JobBuilder().text("宮保雞丁").build()
    m = EscposMachine(SimKnobs(), encoding="big5")
    m.feed(render(job, PROFILES["tm-t20"], encoding="big5"))
    assert m.text == ["宮保雞丁"]


def test_text_cannot_inject_commands_or_four_byte_codes() -> None:
    assert encode_kanji("a\x1b@\x1dV") == b"a?@?V"  # ESC/GS in text print as "?"
    assert encode_kanji("𠀀") == b"?"  # extension B: four bytes in GB18030, unprintable


def test_double_size_and_raster_render() -> None:
    job = kitchen_ticket("热菜", "8", "0042", [OrderLine("宫保鸡丁", 2, note="少辣")])
    raster = render(job, PROFILES["tm-t20"], chinese="raster")
    assert b"\x1c\x26" not in raster and b"\x1dv0" in raster  # no Kanji mode, GS v 0 images
    m = EscposMachine(SimKnobs())
    m.feed(raster)
    assert m.images and all(img.width == 576 for img in m.images)
    assert all(img.height <= 255 for img in m.images)  # sliced for small printer buffers
    assert sum(img.height for img in m.images) > 6 * 24
    assert m.cuts == [True] and m.text == []


@pytest.mark.parametrize(
    ("state", "raw"),
    [
        ({}, "12 12 12 12"),
        ({"paper_near_end": True}, "12 12 12 1e"),
        ({"paper_out": True}, "1a 32 12 72"),
        ({"cover_open": True}, "1a 16 12 12"),
        ({"cutter_error": True}, "1a 52 1a 12"),
    ],
)
def test_status_codec(state: dict[str, bool], raw: str) -> None:
    data = encode_status(**state)
    assert data.hex(" ") == raw
    st = decode_status(data)
    assert st.paper_near_end == state.get("paper_near_end", False)
    assert st.paper_out == state.get("paper_out", False)
    assert st.cover_open == state.get("cover_open", False)
    assert st.cutter_error == state.get("cutter_error", False)
    assert st.ready == (not state or state == {"paper_near_end": True})


def test_status_request_and_bad_replies() -> None:
    assert STATUS_REQUEST.hex(" ") == "10 04 01 10 04 02 10 04 03 10 04 04"
    with pytest.raises(ValueError):
        decode_status(b"\x12\x12\x12")
    with pytest.raises(ValueError):
        decode_status(b"\x12\x12\x12\xff")
    # python-escpos's masks agree: 0x72 is its RT_MASK_NOPAPER, 0x1e its RT_MASK_LOWPAPER
    assert decode_status(bytes.fromhex("12 12 12 72")).paper_out


def test_columns_count_wide_characters_twice() -> None:
    assert display_width("宫保鸡丁 x1") == 11
    line = fit_columns("宫保鸡丁 x1", "￥38.00", 32)
    assert display_width(line) == 32 and line.endswith("￥38.00")
    assert display_width(fit_columns("很" * 40, "1", 32)) == 32


def test_receipt_builder() -> None:
    job = receipt("小店", "7", [OrderLine("米饭", 2, 150), OrderLine("可乐", 1, 300)], qr="T1")
    rows = [i for i in job.items if isinstance(i, Columns)]
    assert rows[-1].right == "￥6.00"
    with pytest.raises(ValueError):
        Text("two\nlines")
