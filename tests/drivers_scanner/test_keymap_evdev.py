"""The wedge key table against the real evdev package: its key codes and its InputEvent objects.

(The machines that run CI have no /dev/input or uinput, so the grab itself is only exercised with
real hardware: EDGE_HW_SCANNER_URL=evdev:///dev/input/by-id/...-event-kbd.)
"""

from __future__ import annotations

import evdev
from evdev import ecodes

from drivers.scanner import keymap

# What each code must be called in linux/input-event-codes.h for our character to be right.
NAMES = {
    **{f"KEY_{c.upper()}": c for c in "abcdefghijklmnopqrstuvwxyz1234567890"},
    "KEY_MINUS": "-",
    "KEY_EQUAL": "=",
    "KEY_LEFTBRACE": "[",
    "KEY_RIGHTBRACE": "]",
    "KEY_SEMICOLON": ";",
    "KEY_APOSTROPHE": "'",
    "KEY_GRAVE": "`",
    "KEY_BACKSLASH": "\\",
    "KEY_COMMA": ",",
    "KEY_DOT": ".",
    "KEY_SLASH": "/",
    "KEY_SPACE": " ",
    "KEY_KPASTERISK": "*",
    "KEY_KPMINUS": "-",
    "KEY_KPPLUS": "+",
    "KEY_KPDOT": ".",
    "KEY_KPSLASH": "/",
    **{f"KEY_KP{d}": d for d in "0123456789"},
}


def test_every_code_in_the_table_is_the_key_evdev_names() -> None:
    for name, char in NAMES.items():
        assert keymap.KEYS[ecodes.ecodes[name]][0] == char, name
    assert len(keymap.KEYS) == len(NAMES)
    assert keymap.KEY_ENTER == ecodes.KEY_ENTER and keymap.KEY_KPENTER == ecodes.KEY_KPENTER
    assert keymap.KEY_LEFTSHIFT == ecodes.KEY_LEFTSHIFT
    assert keymap.KEY_RIGHTSHIFT == ecodes.KEY_RIGHTSHIFT
    assert keymap.KEY_CAPSLOCK == ecodes.KEY_CAPSLOCK and keymap.EV_KEY == ecodes.EV_KEY


def test_real_input_events_decode() -> None:
    def key(code: int, value: int) -> object:
        return evdev.InputEvent(0, 0, ecodes.EV_KEY, code, value)

    syn = evdev.InputEvent(0, 0, ecodes.EV_SYN, ecodes.SYN_REPORT, 0)
    events = [
        key(ecodes.KEY_RIGHTSHIFT, 1),
        key(ecodes.KEY_T, 1),
        syn,
        key(ecodes.KEY_T, 0),
        key(ecodes.KEY_RIGHTSHIFT, 0),
        key(ecodes.KEY_1, 1),
        key(ecodes.KEY_1, 2),
        key(ecodes.KEY_KPENTER, 1),
    ]
    done, state = keymap.decode_keys(events, keymap.KeyState())
    assert done == ["T1"] and state.text == ""
