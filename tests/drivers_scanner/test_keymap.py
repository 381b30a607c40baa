"""The wedge key decoder, fed synthetic events with the kernel's (= evdev's) key codes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from drivers.errors import DeviceInitError
from drivers.scanner.keymap import KeyState, decode_keys
from drivers.scanner.wedge import WedgeScanner

EV_SYN, EV_KEY, EV_MSC = 0, 1, 4
LSHIFT, RSHIFT, CAPS, ENTER, KPENTER, TAB = 42, 54, 58, 28, 96, 15
CODE = {c: 30 + i for i, c in enumerate("asdfghjkl")} | {"t": 20, "1": 2, "2": 3, ";": 39}


@dataclass(frozen=True)
class InputEvent:  # the shape of evdev.InputEvent
    type: int
    code: int
    value: int


def tap(code: int) -> list[tuple[int, int, int]]:
    """A key press as a scanner sends it: MSC scan code, down, SYN, up, SYN."""
    return [
        (EV_MSC, 4, 0x70000),
        (EV_KEY, code, 1),
        (EV_SYN, 0, 0),
        (EV_KEY, code, 0),
        (EV_SYN, 0, 0),
    ]


def typed(text: str, shift_key: int = LSHIFT) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for ch in text:
        if ch.isupper() or ch == ":":
            base = ch.lower() if ch.isalpha() else ";"
            out += [(EV_KEY, shift_key, 1), *tap(CODE[base]), (EV_KEY, shift_key, 0)]
        else:
            out += tap(CODE[ch])
    return out


def test_letters_digits_and_enter() -> None:
    done, state = decode_keys([*typed("ad12"), *tap(ENTER)])
    assert done == ["ad12"] and state == KeyState()


@pytest.mark.parametrize("shift", [LSHIFT, RSHIFT])
def test_either_shift(shift: int) -> None:
    done, _ = decode_keys([*typed("Ta:a", shift), *tap(ENTER)])
    assert done == ["Ta:a"]


def test_caps_lock_flips_letters_only_and_shift_undoes_it() -> None:
    events = [
        *tap(CAPS),
        *tap(CODE["a"]),
        *tap(CODE["1"]),
        (EV_KEY, LSHIFT, 1),
        *tap(CODE["s"]),
        (EV_KEY, LSHIFT, 0),
        *tap(KPENTER),
    ]
    done, state = decode_keys(events)
    assert done == ["A1s"] and state.caps_lock


def test_partial_scan_carries_over_between_calls_and_empty_enter_is_skipped() -> None:
    done, state = decode_keys(typed("as"))
    assert done == [] and state.text == "as"
    done, state = decode_keys([*typed("d"), *tap(ENTER), *tap(ENTER), *typed("f")], state)
    assert done == ["asd"] and state.text == "f"


def test_autorepeat_ignored_and_event_objects_accepted() -> None:
    events = [
        InputEvent(EV_KEY, CODE["a"], 1),
        InputEvent(EV_KEY, CODE["a"], 2),
        InputEvent(EV_KEY, CODE["a"], 0),
        InputEvent(EV_KEY, ENTER, 1),
    ]
    assert decode_keys(events)[0] == ["a"]


def test_tab_ends_a_scan_only_when_configured() -> None:
    events = [*typed("a"), *tap(TAB), *typed("s"), *tap(ENTER)]
    assert decode_keys(events)[0] == ["a\ts"]
    assert decode_keys(events, tab_ends=True)[0] == ["a", "s"]


def test_wedge_open_failure_is_an_init_error_with_a_hint() -> None:
    scanner = WedgeScanner("gate-5", "evdev:///dev/input/by-id/no-such-scanner-event-kbd")
    with pytest.raises(DeviceInitError) as err:
        scanner.open()  # evdev missing, or the node missing: either way a hint, not a crash
    assert err.value.hint
    scanner.close()
