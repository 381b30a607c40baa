"""HID keyboard-wedge decoding: Linux input key events -> scanned text (pure, no evdev needed).

A wedge scanner "types" its scan on a US layout. Characters are built on key-down (value 1;
auto-repeat, value 2, is ignored: a scanner never holds a key). Both shift keys are tracked, caps
lock toggles letters only (as on a real keyboard), KEY_ENTER / KEY_KPENTER end a scan (KEY_TAB
too when `tab_ends` is set). Events may be evdev InputEvents or anything with `type`, `code`,
`value` attributes, or plain (type, code, value) tuples; non-key events (EV_SYN, EV_MSC) are
skipped. Codes are the kernel's (linux/input-event-codes.h), the same numbers evdev uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

EV_KEY = 1
KEY_ENTER, KEY_KPENTER, KEY_TAB = 28, 96, 15
KEY_LEFTSHIFT, KEY_RIGHTSHIFT, KEY_CAPSLOCK = 42, 54, 58
DOWN, UP = 1, 0


def _rows(start: int, plain: str, shifted: str) -> dict[int, tuple[str, str]]:
    return {start + i: (p, s) for i, (p, s) in enumerate(zip(plain, shifted, strict=True))}


# code -> (unshifted, shifted) on a US layout.
KEYS: dict[int, tuple[str, str]] = {
    **_rows(2, "1234567890-=", "!@#$%^&*()_+"),
    **_rows(16, "qwertyuiop[]", "QWERTYUIOP{}"),
    **_rows(30, "asdfghjkl;'`", 'ASDFGHJKL:"~'),
    **_rows(43, "\\zxcvbnm,./", "|ZXCVBNM<>?"),
    57: (" ", " "),
    55: ("*", "*"),
    74: ("-", "-"),
    78: ("+", "+"),
    83: (".", "."),
    98: ("/", "/"),
    **_rows(71, "789", "789"),
    **_rows(75, "456", "456"),
    **_rows(79, "123", "123"),
    82: ("0", "0"),
}


@dataclass(frozen=True)
class KeyState:
    left_shift: bool = False
    right_shift: bool = False
    caps_lock: bool = False
    text: str = ""  # the scan typed so far


def _fields(event: Any) -> tuple[int, int, int]:
    if isinstance(event, tuple):
        return int(event[0]), int(event[1]), int(event[2])
    return int(event.type), int(event.code), int(event.value)


def decode_keys(
    events: Iterable[Any], state: KeyState = KeyState(), tab_ends: bool = False
) -> tuple[list[str], KeyState]:
    """Feed key events; returns the scans completed by them and the state to continue from.
    Empty scans (Enter alone) are skipped; keys with no character (F1, arrows) are ignored."""
    done: list[str] = []
    for event in events:
        etype, code, value = _fields(event)
        if etype != EV_KEY:
            continue
        if code in (KEY_LEFTSHIFT, KEY_RIGHTSHIFT):
            if value in (DOWN, UP):
                if code == KEY_LEFTSHIFT:
                    state = replace(state, left_shift=value == DOWN)
                else:
                    state = replace(state, right_shift=value == DOWN)
            continue
        if value != DOWN:
            continue
        if code == KEY_CAPSLOCK:
            state = replace(state, caps_lock=not state.caps_lock)
        elif code in (KEY_ENTER, KEY_KPENTER) or (tab_ends and code == KEY_TAB):
            if state.text:
                done.append(state.text)
            state = replace(state, text="")
        elif code in KEYS:
            plain, shifted = KEYS[code]
            shift = state.left_shift or state.right_shift
            if plain.isalpha() and state.caps_lock:
                shift = not shift
            state = replace(state, text=state.text + (shifted if shift else plain))
        elif code == KEY_TAB:
            state = replace(state, text=state.text + "\t")
    return done, state
