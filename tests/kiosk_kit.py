"""What the kiosk API tests share: a browser-like client (its own cookie jar and the session's
CSRF token) and the test users."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

from kiosk_ui.users import Role, UserStore, open_kiosk_db

KIOSK = "/api/v1/kiosk"
USERS = {
    "cashier1": (Role.CASHIER, "2580"),
    "super1": (Role.SUPERVISOR, "135790"),
    "super2": (Role.SUPERVISOR, "246813"),
    "tech1": (Role.TECHNICIAN, "246802"),
}


def add_users(home: Path, names: tuple[str, ...] = tuple(USERS)) -> None:
    """Create the named test users in the box's kiosk.db (before or while the daemon runs)."""
    conn = open_kiosk_db(home)
    try:
        for name in names:
            role, pin = USERS[name]
            UserStore(conn).add(name, role, pin)
    finally:
        conn.close()


class Client:
    """One browser: its own cookie jar and the session's CSRF token."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.csrf = ""

    def call(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.csrf:
            headers["X-CSRF-Token"] = self.csrf
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with self.opener.open(req, timeout=30) as resp:
                return resp.status, _parse(resp.read())
        except urllib.error.HTTPError as err:
            with err:
                return err.code, _parse(err.read())

    def get(self, path: str) -> tuple[int, Any]:
        return self.call("GET", KIOSK + path)

    def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return self.call("POST", KIOSK + path, body, **kw)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, doc = self.call(method, KIOSK + path, body)
        assert status == 200, (path, status, doc)
        return doc

    def login(self, name: str) -> Client:
        status, doc = self.call("POST", "/api/v1/session", {"name": name, "pin": USERS[name][1]})
        assert status == 200, doc
        assert any(c.name == "edge_session" for c in self.jar)
        self.csrf = doc["csrf_token"]
        return self

    def cookie(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)


def _parse(raw: bytes) -> Any:
    """JSON, or the text of a body that is not (a server error's plain text)."""
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode(errors="replace")
