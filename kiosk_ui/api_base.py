"""Shared pieces of the kiosk API routers: JSON bodies validated with a size limit and errors in
the kiosk's shape (`{"detail": "中文 / English"}`), never FastAPI's list of pydantic errors and
never a 500 for bad input."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from edge.box import Box

MAX_BODY = 16 * 1024  # a kiosk request is a code and a note: anything bigger is not ours
M = TypeVar("M", bound=BaseModel)
LaneName = Annotated[str, Field(min_length=1, max_length=64)]


class NoBody(BaseModel):
    """A POST that takes nothing (an empty body, or `{}`)."""

    model_config = ConfigDict(extra="forbid")


def fail(status: int, zh: str, en: str) -> HTTPException:
    return HTTPException(status, f"{zh} / {en}", headers={"Cache-Control": "no-store"})


def shown_name(name: str) -> str:
    """A name from the URL, safe to echo in an error (short, printable)."""
    text = name[:64]
    return text if text.isprintable() else repr(text)


def _too_large(limit: int) -> HTTPException:
    return fail(413, "请求过大", f"request body over {limit} bytes")


async def read_body(
    request: Request,
    limit: int = MAX_BODY,
    too_large: Callable[[int], HTTPException] = _too_large,
) -> bytes:
    """The body, read no further than `limit` bytes (a lying Content-Length too); over it
    `too_large(limit)` is raised (the login's own error shape passes its own)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise too_large(limit)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise too_large(limit)
    return bytes(data)


def json_body(model: type[M], *, empty_ok: bool = False) -> Callable[[Request], Awaitable[M]]:
    """A dependency: the request body parsed as `model` (extra fields refused), else 413/422
    with what is wrong (the values are not echoed back). `empty_ok`: no body means `{}`."""

    async def dependency(request: Request) -> M:
        raw = await read_body(request)
        if empty_ok and not raw.strip():
            raw = b"{}"
        try:
            return model.model_validate_json(raw)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                for e in err.errors(include_url=False, include_input=False)
            )
            raise fail(422, f"请求格式错误：{problems}", f"malformed request: {problems}") from err

    return dependency


def body_schema(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """`openapi_extra` for a route whose body is read by `json_body` (so /docs shows it)."""
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, default=str)


def version() -> str:
    try:
        return importlib.metadata.version("edge-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


async def tls_info(box: Box) -> dict[str, Any]:
    """Whether the box serves HTTPS and its certificate's SHA-256 fingerprint (edge makes or
    reads the certificate once: off the loop)."""
    info = await asyncio.to_thread(box.tls_info)
    return {"enabled": bool(info.get("enabled")), "fingerprint": info.get("fingerprint")}
