"""sync.protocol.parse_json: orjson where it gives json.loads' result, json where it would not
(huge integers it reads as floats, NaN and 1e400 it refuses, lone surrogates)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.protocol import parse_json

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: beyond 64 bits too
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.sampled_from(["\ud800", "a\udfffb", "入口", "\u2028"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(VALUES, st.booleans(), st.sampled_from([None, (",", ":"), (" ,\n ", " :\t")]))
def test_parse_json_is_json_loads(
    value: Any, ascii_only: bool, separators: tuple[str, str] | None
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, separators=separators)
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate written raw: only \\u escapes can carry it
        data = json.dumps(value, separators=separators).encode()
    # repr tells int from float and shows NaN, which == cannot compare.
    assert repr(parse_json(data)) == repr(json.loads(data))
    assert repr(parse_json(data.decode())) == repr(json.loads(data))


def test_the_cases_orjson_reads_differently() -> None:
    for raw in (
        b"[18446744073709551616]",
        b"[123456789012345678901234567890]",
        b"[-9" + b"9" * 30 + b"]",
        b"[-9223372036854775809]",
    ):
        got = parse_json(raw)
        assert isinstance(got[0], int) and got == json.loads(raw)
    assert parse_json(b"[1e400, NaN]")[0] == float("inf")
    assert parse_json(b'["\\ud800"]') == ["\ud800"]
    assert parse_json(b"[18446744073709551615, 1.5]") == [2**64 - 1, 1.5]


def outcome(parse: Any, data: bytes | str) -> str:
    try:
        return repr(parse(data))
    except (ValueError, UnicodeError) as err:
        return f"raises {type(err).__name__}"


def test_text_input_is_read_as_json_reads_it() -> None:
    for text in ("\ufeff{}", '"\ud800"', '{"a": "\ud800"}', " [1] ", "[1]\n\n"):
        assert outcome(parse_json, text) == outcome(json.loads, text), repr(text)


def test_digits_inside_strings_do_not_cost_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hex ids often hold 19 decimal digits in a row: only a run where a number can start
    sends the text to json."""
    real = json.loads
    calls: list[object] = []

    def counted(data: Any) -> Any:
        calls.append(data)
        return real(data)

    monkeypatch.setattr(json, "loads", counted)  # what parse_json falls back to
    assert parse_json(b'{"id":"a1234567890123456789012b","rid":"1234567890123456789ff"}')
    assert parse_json(b'{"f":0.12345678901234567890}') == {"f": 0.12345678901234568}
    assert calls == []
    long_ones = (
        b"12345678901234567890",
        b'{"n": 12345678901234567890}',
        b"[1,-1234567890123456789]",
    )
    for raw in long_ones:
        assert repr(parse_json(raw)) == repr(real(raw))
    assert calls == list(long_ones)
