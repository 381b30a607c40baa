"""Device URLs: `scheme://target?param=value&...`, parsed once into a frozen value.

A device is configured as a driver name plus a URL. The scheme names the transport (`serial`
for anything pyserial's `serial_for_url` opens: a path, `/dev/serial/by-id/...`, `socket://`,
`loop://`, a pty; `tcp`; `usb`; `file`; `sim`). The query holds the driver's options, which are
parsed into the driver's own typed dataclass; an unknown or mistyped parameter is refused with the
device's name and the parameter.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from drivers.errors import DeviceConfigError

T = TypeVar("T")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class DeviceUrl:
    device: str  # the configured device name, for messages
    scheme: str
    target: str  # path, or host:port
    params: Mapping[str, str]

    @property
    def serial_url(self) -> str:
        """What to hand to serial.serial_for_url: the target for `serial:`, else the URL."""
        if self.scheme == "serial":
            return self.target
        return f"{self.scheme}://{self.target}"


def parse_url(device: str, url: str, schemes: tuple[str, ...]) -> DeviceUrl:
    """Split a device URL; the scheme must be one of `schemes`. Repeated parameters are refused."""
    if "://" not in url:
        url = f"serial://{url}" if url.startswith("/") else url
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise DeviceConfigError(device, "url", f"scheme must be one of {', '.join(schemes)}")
    target = parts.netloc + parts.path if parts.netloc else parts.path
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError as err:
        raise DeviceConfigError(device, "url", f"bad query string: {err}") from err
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise DeviceConfigError(device, key, "given more than once")
        params[key] = value
    return DeviceUrl(device, parts.scheme, target, types.MappingProxyType(params))


def options(device: str, cls: type[T], params: Mapping[str, str]) -> T:
    """Build the dataclass `cls` from URL parameters, converting to each field's type.

    Unknown parameters, values that do not convert, and values outside a field's `choices`
    metadata (`field(metadata={"choices": (...)})`) raise DeviceConfigError naming the parameter.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(params) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise DeviceConfigError(device, unknown[0], f"unknown parameter (known: {known})")
    values: dict[str, Any] = {}
    for name, raw in params.items():
        values[name] = _convert(device, name, raw, hints[name])
        choices = fields[name].metadata.get("choices")
        if choices is not None and values[name] not in choices:
            raise DeviceConfigError(device, name, f"one of {', '.join(map(str, choices))}")
    return cls(**values)


def _convert(device: str, name: str, raw: str, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if raw.lower() in ("", "none", "null"):
            return None
        hint = inner[0]
    try:
        if hint is bool:
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw, 0)
        if hint is float:
            return float(raw)
        if hint is str:
            return raw
    except ValueError as err:
        raise DeviceConfigError(device, name, f"expected {hint.__name__}, got {raw!r}") from err
    raise DeviceConfigError(device, name, f"unsupported option type {hint!r}")
