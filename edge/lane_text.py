"""What a visitor reads on a lane's display: short lines in Chinese and English (a 2x16 or 4x20
customer display, or the kiosk's big banner)."""

from __future__ import annotations

from edge.decision import REASON_TEXT
from edge.rules import Reason

LINE_PASS = ("请通行", "Please pass")
LINE_FIRE = ("消防疏散 请通行", "Emergency exit open")
LINE_FREE = ("紧急放行 请通行", "Free passage")
LINE_FAULT = ("设备故障 请找工作人员", "Gate fault, ask staff")
LINE_AGAIN = ("请重新扫码", "Please scan again")
LINE_CONFIRM = ("请稍候 收银员确认", "Please wait: cashier confirms")
LINE_NOT_HERE = ("非本柜取件码", "Not a pickup code for this locker")
SHORT_LINES: dict[Reason, tuple[str, str]] = {
    Reason.ALREADY_USED: ("票已使用", "Ticket already used"),
    Reason.USED_ELSEWHERE: ("票已在他处使用", "Used at another gate"),
    Reason.EXPIRED: ("票已过期", "Ticket expired"),
    Reason.NOT_YET_VALID: ("未到使用日期", "Not valid yet"),
    Reason.WRONG_SLOT: ("不在预约时段", "Outside your time slot"),
    Reason.CAPACITY_FULL: ("已满 请稍候", "Full, please wait"),
    Reason.PASSBACK: ("请先出园", "Exit first"),
    Reason.UNKNOWN_CODE: ("无效码", "Unknown code"),
    Reason.MALFORMED: ("无法识别", "Code not readable"),
}


def display_line(reason: Reason) -> tuple[str, str]:
    if reason is Reason.OK:
        return LINE_PASS
    return SHORT_LINES.get(reason, REASON_TEXT[reason])
