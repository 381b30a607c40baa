"""Structured logging for the daemon: one line per record, as JSON or as logfmt-style text.

Fields travel as `log.info("decision", extra={"lane": "entry", "reason": "ok", "ms": 4.1})`;
both formatters write every such field. JSON is for journald and log shippers, text for a
person at a terminal. Whole codes never go into a field: log `edge.codes.code_fingerprint(code)`.
A record whose message or fields cannot be rendered is still written (with str() of the odd
value), never dropped with a traceback on stderr.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, Final, TextIO

log = logging.getLogger(__name__)

FORMATS: Final = ("json", "text")
# Everything a bare LogRecord carries, plus what Formatter.format adds: any other attribute
# came from `extra=`. Computed, so attributes added by newer Pythons (taskName) are covered.
_STANDARD: Final = frozenset(logging.LogRecord("", logging.INFO, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_OWN_KEYS: Final = ("ts", "level", "logger", "msg", "exc", "stack")


def _timestamp(created: float) -> str:
    when = dt.datetime.fromtimestamp(created, dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _message(record: logging.LogRecord) -> str:
    """record.getMessage(), or a readable stand-in when the call's arguments do not fit."""
    try:
        return record.getMessage()
    except Exception:
        return f"{_safe_str(record.msg)} (bad log arguments: {_safe_str(record.args)})"


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's `extra=` fields, in the order they were given. A field named like one of
    ours (ts, level, ...) is kept with a trailing underscore rather than overwriting it."""
    fields: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key in _STANDARD or key.startswith("_"):  # _x: a library's private mark, not data
            continue
        fields[f"{key}_" if key in _OWN_KEYS else key] = value
    return fields


def _json_value(value: Any) -> Any:
    """`value` if json.dumps takes it as is, else its str()."""
    try:
        json.dumps(value, allow_nan=False, default=_safe_str)
    except (TypeError, ValueError, RecursionError):
        return _safe_str(value)
    return value


class JsonFormatter(logging.Formatter):
    """{"ts": ..., "level": ..., "logger": ..., "msg": ..., <extra fields>, "exc": ...}"""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": _message(record),
        }
        doc.update(extra_fields(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        try:
            return json.dumps(doc, ensure_ascii=False, allow_nan=False, default=_safe_str)
        except (TypeError, ValueError, RecursionError):
            # Non-str dict keys, NaN, a cycle: only then pay for checking field by field.
            safe = {k: _json_value(v) for k, v in doc.items()}
            return json.dumps(safe, ensure_ascii=False, allow_nan=False, default=_safe_str)


def _text_value(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, str | int | float):
        text = str(value)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_safe_str)
        except (TypeError, ValueError, RecursionError):
            text = _safe_str(value)
    if text == "" or any(c.isspace() or c in '"=\\' or not c.isprintable() for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """`ts level logger msg key=value ...`; a value with spaces, quotes or `=` is quoted.

    The message itself stays bare (it is prose) but newlines in it are escaped so a record is
    one line; a traceback follows on its own lines, as a person reading a terminal expects.
    """

    def format(self, record: logging.LogRecord) -> str:
        msg = _message(record).replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        parts = [_timestamp(record.created), record.levelname, record.name, msg]
        parts += [f"{k}={_text_value(v)}" for k, v in extra_fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.strip().upper())
    if not isinstance(value, int):
        raise ValueError(
            f"unknown log level {level!r}: expected DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    return value


def setup_logging(
    level: str | int = "INFO", fmt: str = "json", stream: TextIO | None = None
) -> logging.Handler:
    """Make the root logger write `fmt` lines to `stream` (default: stderr at call time).

    Replaces whatever handlers root had (the CLI's basicConfig, an earlier call), so every
    record is written once. Returns the installed handler.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    numeric = _parse_level(level)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler
