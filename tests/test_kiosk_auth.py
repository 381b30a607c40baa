"""Kiosk login (issue 6): users and PINs through the real `edge user` CLI, sessions, CSRF,
roles, lockout and enumeration resistance through FastAPI's test client on a real kiosk.db."""

# No `from __future__ import annotations`: FastAPI resolves the route signatures built inside
# make_app, whose Depends(...) refer to locals.
import io
import json
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.testclient import TestClient

from edge.cli import main
from kiosk_ui.auth_api import COOKIE, CSRF_HEADER, KioskAuth
from kiosk_ui.users import (
    DB_NAME,
    KdfParams,
    Role,
    User,
    UserStore,
    hash_pin,
    open_kiosk_db,
    verify_pin,
)

T0 = 1_777_600_800.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def add_user(state: Path, name: str, role: Role, pin: str) -> None:
    conn = open_kiosk_db(state)
    try:
        UserStore(conn).add(name, role, pin)
    finally:
        conn.close()


@contextmanager
def served(
    state: Path, clock: Clock, audit: list[tuple[str, dict[str, Any]]] | None = None, **kw: Any
) -> Iterator[TestClient]:
    async def hook(action: str, detail: dict[str, Any]) -> None:
        if audit is not None:
            audit.append((action, detail))

    base_url = kw.pop("base_url", "http://testserver")
    auth = KioskAuth(state, audit=hook, clock=clock, **kw)
    app = FastAPI()
    app.include_router(auth.router)
    api = APIRouter(prefix="/api/v1")

    @api.post("/gate/open")
    async def gate_open(user: Annotated[User, Depends(auth.require(Role.SUPERVISOR))]) -> Any:
        return {"opened_by": user.name}

    @api.get("/counter")
    async def counter(user: Annotated[User, Depends(auth.require(Role.CASHIER))]) -> Any:
        return {"cashier": user.name}

    @api.post("/recheck")  # a grave action that asks for the user's PIN again
    async def recheck(
        request: Request, user: Annotated[User, Depends(auth.require(Role.CASHIER))]
    ) -> Any:
        pin = (await request.json())["pin"]
        return {"ok": await auth.verify_user_pin(user.name, pin, request)}

    app.include_router(api)
    try:
        with TestClient(app, base_url=base_url) as client:
            yield client
    finally:
        auth.close()


def login(client: TestClient, name: str, pin: str) -> Any:
    return client.post("/api/v1/session", json={"name": name, "pin": pin})


def csrf_of(r: Any) -> dict[str, str]:
    return {CSRF_HEADER: r.json()["csrf_token"]}


@pytest.fixture(scope="module")
def staff_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three users, added once (each PIN costs a real scrypt hash, ~0.1 s)."""
    d = tmp_path_factory.mktemp("staff")
    add_user(d, "wang", Role.CASHIER, "2580")
    add_user(d, "li", Role.SUPERVISOR, "139246")
    add_user(d, "zhao", Role.TECHNICIAN, "864213")
    assert [p.name for p in d.iterdir()] == [DB_NAME]  # closed: nothing left in a WAL
    return d / DB_NAME


@pytest.fixture
def state(tmp_path: Path, staff_db: Path) -> Path:
    """A state directory of the test's own, with a copy of the users' kiosk.db."""
    shutil.copy2(staff_db, tmp_path / DB_NAME)
    return tmp_path


# --- the CLI ---------------------------------------------------------------------------------


def cli(monkeypatch: pytest.MonkeyPatch, home: Path, *argv: str, stdin: str = "") -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return main(["user", *argv, "--home", str(home)])


def test_cli_add_list_reset_remove(box: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    home: Path = box.home
    assert (
        cli(monkeypatch, home, "add", "Wang", "--role", "cashier", "--pin-stdin", stdin="2580\n")
        == 0
    )
    assert "user wang added as cashier" in capsys.readouterr().out
    assert (
        cli(monkeypatch, home, "add", "li", "--role", "supervisor", "--pin-stdin", stdin="139246\n")
        == 0
    )
    capsys.readouterr()
    assert cli(monkeypatch, home, "list", "--json") == 0
    out = capsys.readouterr().out
    users = json.loads(out)["users"]
    assert [(u["name"], u["role"], u["disabled"]) for u in users] == [
        ("li", "supervisor", False),
        ("wang", "cashier", False),
    ]
    assert "scrypt" not in out and "2580" not in out
    clock = Clock()
    with served(home, clock) as client:
        assert login(client, "wang", "2580").status_code == 200
        assert client.get("/api/v1/counter").status_code == 200
        # A PIN reset on the CLI ends the live session and the old PIN.
        assert cli(monkeypatch, home, "reset-pin", "WANG", "--pin-stdin", stdin="7391\n") == 0
        assert "PIN of wang reset" in capsys.readouterr().out
        assert client.get("/api/v1/counter").status_code == 401
        assert login(client, "wang", "2580").status_code == 401
        assert login(client, "wang", "7391").status_code == 200
        assert cli(monkeypatch, home, "remove", "wang") == 0
        assert "user wang removed" in capsys.readouterr().out
        assert client.get("/api/v1/counter").status_code == 401
        assert login(client, "wang", "7391").status_code == 401
    assert cli(monkeypatch, home, "list") == 0
    listing = capsys.readouterr().out
    assert "li" in listing and "wang" not in listing


@pytest.mark.parametrize(
    ("argv", "stdin", "says"),
    [
        (("add", "a", "--role", "cashier", "--pin-stdin"), "1234\n", "too easy"),
        (("add", "a", "--role", "cashier", "--pin-stdin"), "0000\n", "too easy"),
        (("add", "a", "--role", "cashier", "--pin-stdin"), "1212\n", "too easy"),
        (("add", "a", "--role", "cashier", "--pin-stdin"), "987\n", "4 to 12 digits"),
        (("add", "a", "--role", "cashier", "--pin-stdin"), "12a45\n", "4 to 12 digits"),
        (("add", "a", "--role", "supervisor", "--pin-stdin"), "2580\n", "6 to 12 digits"),
        (("add", "bad name!", "--role", "cashier", "--pin-stdin"), "2580\n", "user name is"),
        (("add", "a", "--role", "cashier"), "2580\n", "--pin-stdin"),  # no terminal
        (("reset-pin", "nobody", "--pin-stdin"), "2580\n", "no user named nobody"),
        (("remove", "nobody"), "", "no user named nobody"),
    ],
)
def test_cli_refuses_bad_input(
    box: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    argv: tuple[str, ...],
    stdin: str,
    says: str,
) -> None:
    assert cli(monkeypatch, box.home, *argv, stdin=stdin) == 2
    err = capsys.readouterr().err
    assert says in err and "错误" in err


def test_cli_disable_enable_unlock(box: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    home: Path = box.home
    assert (
        cli(monkeypatch, home, "add", "wang", "--role", "cashier", "--pin-stdin", stdin="2580\n")
        == 0
    )
    clock = Clock()
    clock.now = time.time()  # the CLI's `list` tells the lock against the real clock
    with served(home, clock) as client:
        login(client, "wang", "2580")
        assert cli(monkeypatch, home, "disable", "wang") == 0
        assert client.get("/api/v1/counter").status_code == 401  # logged out at once
        refused = login(client, "wang", "2580")
        assert refused.status_code == 401  # told apart from a wrong PIN by nobody
        assert refused.json() == login(client, "wang", "1111").json()
        assert cli(monkeypatch, home, "enable", "wang") == 0
        for _ in range(3):
            login(client, "wang", "1111")
        assert login(client, "wang", "2580").status_code == 429  # 5 failures: locked
        capsys.readouterr()
        assert cli(monkeypatch, home, "list") == 0
        assert "locked 锁定 30 s" in capsys.readouterr().out
        assert cli(monkeypatch, home, "unlock", "wang") == 0
        assert login(client, "wang", "2580").status_code == 200


def test_cli_duplicate_and_bad_role(box: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    assert (
        cli(monkeypatch, box.home, "add", "a", "--role", "cashier", "--pin-stdin", stdin="2580\n")
        == 0
    )
    assert (
        cli(monkeypatch, box.home, "add", "A", "--role", "cashier", "--pin-stdin", stdin="3691\n")
        == 2
    )
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli(monkeypatch, box.home, "add", "b", "--role", "boss", "--pin-stdin", stdin="2580\n")
    assert exc.value.code == 2


# --- login, sessions, roles, CSRF -------------------------------------------------------------


def test_login_whoami_logout_and_cookie(state: Path) -> None:
    audit: list[tuple[str, dict[str, Any]]] = []
    with served(state, Clock(), audit) as client:
        assert client.get("/api/v1/session").json()["detail"]["reason"] == "not_logged_in"
        r = login(client, "Wang", "2580")
        assert r.status_code == 200, r.text
        cookie = r.headers["set-cookie"]
        assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "Path=/" in cookie and "Secure" not in cookie
        assert r.headers["cache-control"] == "no-store"
        me = client.get("/api/v1/session").json()
        assert (me["user"], me["role"], me["idle_timeout_s"]) == ("wang", "cashier", 3600)
        assert me["csrf_token"] == r.json()["csrf_token"]
        assert client.delete("/api/v1/session").status_code == 403  # logout needs the token
        assert client.delete("/api/v1/session", headers=csrf_of(r)).status_code == 204
        assert client.get("/api/v1/counter").status_code == 401
        assert client.delete("/api/v1/session").status_code == 204  # nothing left to end
    assert [a for a, _ in audit] == ["login", "logout"]
    assert audit[0][1]["user"] == "wang" and audit[0][1]["role"] == "cashier"
    # The database keeps a digest of the session id, never the cookie's value.
    sid = cookie.split(";")[0].split("=", 1)[1]
    assert all(sid.encode() not in f.read_bytes() for f in state.glob("kiosk.db*"))


def test_secure_cookie_over_tls(state: Path) -> None:
    with served(state, Clock(), base_url="https://testserver") as client:
        r = login(client, "wang", "2580")
        assert "Secure" in r.headers["set-cookie"]


def test_roles_and_csrf(state: Path) -> None:
    audit: list[tuple[str, dict[str, Any]]] = []
    with served(state, Clock(), audit) as client:
        r = login(client, "wang", "2580")
        denied = client.post("/api/v1/gate/open", headers=csrf_of(r))
        assert denied.status_code == 403
        assert denied.json()["detail"]["reason"] == "forbidden_role"
        assert "supervisor" in denied.json()["detail"]["en"]
        assert client.get("/api/v1/counter").json() == {"cashier": "wang"}
        for name, pin in (("li", "139246"), ("zhao", "864213")):
            r = login(client, name, pin)
            token = csrf_of(r)
            assert client.post("/api/v1/gate/open").json()["detail"]["reason"] == "csrf"
            wrong = client.post("/api/v1/gate/open", headers={CSRF_HEADER: "x" * 43})
            assert wrong.status_code == 403 and wrong.json()["detail"]["reason"] == "csrf"
            evil = client.post(
                "/api/v1/gate/open", headers=token | {"Origin": "http://evil.example"}
            )
            assert evil.status_code == 403 and evil.json()["detail"]["reason"] == "bad_origin"
            referer = {"Referer": "http://evil.example/page"}
            assert client.post("/api/v1/gate/open", headers=token | referer).status_code == 403
            ok = client.post("/api/v1/gate/open", headers=token | {"Origin": "http://testserver"})
            assert ok.json() == {"opened_by": name}
        # A session's token is no good for another session.
        client.cookies.clear()
        login(client, "li", "139246")
        assert client.post("/api/v1/gate/open", headers=token).status_code == 403
        # A login from another site's page is refused before the PIN is looked at.
        cross = client.post(
            "/api/v1/session", json={"name": "li", "pin": "139246"}, headers={"Origin": "null"}
        )
        assert cross.json()["detail"]["reason"] == "bad_origin"
    assert ("denied", "wang") in [(a, d["user"]) for a, d in audit]


def test_idle_and_absolute_expiry(state: Path) -> None:
    clock = Clock()
    with served(state, clock) as client:
        login(client, "li", "139246")  # supervisor: 15 min idle
        clock.now += 14 * 60
        assert client.get("/api/v1/counter").status_code == 200  # use renews it
        clock.now += 14 * 60
        assert client.get("/api/v1/session").status_code == 200  # asking does not
        clock.now += 2 * 60
        r = client.get("/api/v1/counter")
        assert r.status_code == 401 and r.json()["detail"]["reason"] == "session_expired"
        assert client.get("/api/v1/session").json()["detail"]["reason"] == "not_logged_in"

        client.cookies.clear()
        login(client, "wang", "2580")  # cashier: 1 h idle, 12 h absolute
        for _ in range(23):
            clock.now += 30 * 60
            assert client.get("/api/v1/counter").status_code == 200
        clock.now += 30 * 60 + 1
        assert client.get("/api/v1/counter").json()["detail"]["reason"] == "session_expired"


# --- lockout and enumeration ------------------------------------------------------------------


def test_lockout_doubles_and_persists(state: Path) -> None:
    clock = Clock()
    audit: list[tuple[str, dict[str, Any]]] = []
    with served(state, clock, audit) as client:
        for _ in range(4):
            assert login(client, "wang", "1111").status_code == 401
        r = login(client, "wang", "1111")
        assert r.status_code == 429 and r.headers["retry-after"] == "30"
        d = r.json()["detail"]
        assert d["retry_after_s"] == 30 and "30 秒" in d["zh"] and "30 s" in d["en"]
        assert login(client, "wang", "2580").status_code == 429  # even the right PIN waits
        clock.now += 31
        r = login(client, "wang", "1111")
        assert r.status_code == 429 and r.json()["detail"]["retry_after_s"] == 60
    assert [a for a, _ in audit].count("lockout") == 2
    assert [a for a, _ in audit].count("login_failed") == 6
    # A new process on the same kiosk.db: the lock and the count are still there.
    with served(state, clock) as client:
        clock.now += 30
        r = login(client, "wang", "2580")
        assert r.status_code == 429 and r.json()["detail"]["retry_after_s"] == 30
        clock.now += 31
        r = login(client, "wang", "1111")
        assert r.json()["detail"]["retry_after_s"] == 120
        clock.now += 121
        assert login(client, "wang", "2580").status_code == 200  # success resets the count
        for _ in range(4):
            assert login(client, "wang", "1111").status_code == 401


def test_a_burst_of_wrong_pins_asked_again_is_checked_one_by_one(state: Path) -> None:
    """The PIN asked again (free passage) is counted like a login: a burst of guesses is
    checked one at a time, so the lockout stops it after 5, and the right PIN queued behind
    them meets the lockout instead of clearing it."""
    audit: list[tuple[str, dict[str, Any]]] = []
    with served(state, Clock(), audit, max_waiting=16) as client:
        token = csrf_of(login(client, "li", "139246"))

        def recheck(pin: str) -> Any:
            return client.post("/api/v1/recheck", json={"pin": pin}, headers=token)

        with ThreadPoolExecutor(13) as pool:
            burst = [pool.submit(recheck, "000000") for _ in range(12)]
            time.sleep(0.1)  # the right PIN arrives while the guesses are being checked
            right = pool.submit(recheck, "139246")
            answers = [f.result() for f in burst]
            late = right.result()
        assert [a for a, _ in audit].count("pin_check_failed") <= 5
        assert sum(a.status_code == 429 for a in answers) >= 7, [a.text for a in answers]
        assert not any(a.status_code == 200 and a.json()["ok"] for a in answers)
        assert late.status_code == 429 and late.json()["detail"]["reason"] == "locked"
        again = recheck("139246")  # the lockout is still there
        assert again.status_code == 429 and again.json()["detail"]["retry_after_s"] == 30


def test_lockout_caps_and_minutes(state: Path) -> None:
    clock = Clock()
    with served(state, clock) as client:
        waits = []
        for _ in range(11):
            r = login(client, "wang", "1111")
            if r.status_code == 429:
                waits.append(r.json()["detail"]["retry_after_s"])
                clock.now += waits[-1] + 1
        assert waits == [30, 60, 120, 240, 480, 900, 900]
        assert "15 分钟" in r.json()["detail"]["zh"] and "15 min" in r.json()["detail"]["en"]


def test_unknown_user_looks_like_wrong_pin(state: Path) -> None:
    clock = Clock()
    with served(state, clock) as client:
        for i in range(5):
            known, unknown = login(client, "wang", "1111"), login(client, "nobody", "1111")
            assert known.status_code == unknown.status_code == (401 if i < 4 else 429)
            assert known.json() == unknown.json()
        # Timing: the unknown name pays for a full scrypt too (a lower bound survives noise).
        kdf = min(_timed(lambda: verify_pin("2580", hash_pin("1357"))) for _ in range(3)) / 2
        clock.now += 10_000
        assert _timed(lambda: login(client, "ghost", "1111")) >= 0.5 * kdf


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_address_lockout_spans_names(state: Path) -> None:
    with served(state, Clock()) as client:
        for i in range(19):
            assert login(client, f"guess{i}", "1111").status_code == 401
        r = login(client, "guess19", "1111")
        assert r.status_code == 429 and r.json()["detail"]["scope"] == "addr"
        assert "device" in r.json()["detail"]["en"]
        assert login(client, "li", "139246").status_code == 429


# --- bad input, KDF upgrades ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 422),
        (b'{"name": "wang"}', 422),
        (b'{"name": "wang", "pin": 2580}', 422),
        (b'{"name": "wang", "pin": "25x0"}', 422),
        (b'{"name": "wang", "pin": "2580", "role": "technician"}', 422),
        (json.dumps({"name": "w" * 65, "pin": "2580"}).encode(), 422),
        (b'{"name": "no spaces allowed", "pin": "2580"}', 422),
        (b"[]", 422),
        (json.dumps({"name": "wang", "pin": "2580", "x": "y" * 10_000}).encode(), 413),
    ],
)
def test_malformed_login_bodies(state: Path, body: bytes, status: int) -> None:
    with served(state, Clock()) as client:
        r = client.post(
            "/api/v1/session", content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == status, r.text
        assert r.json()["detail"]["reason"] in {"malformed", "too_large"}
        assert "2580" not in r.text  # a PIN is never echoed
        assert COOKIE not in r.headers.get("set-cookie", "")
        assert login(client, "wang", "2580").status_code == 200  # and it counted as no attempt


def test_weaker_hash_upgraded_at_login(state: Path) -> None:
    conn = open_kiosk_db(state)
    try:
        store = UserStore(conn)
        user = store.get("wang")
        assert user is not None
        store.set_hash(user[0].id, hash_pin("2580", KdfParams(n=1 << 10, r=8, p=1)))
    finally:
        conn.close()
    with served(state, Clock()) as client:
        assert login(client, "wang", "2580").status_code == 200
    db = sqlite3.connect(state / "kiosk.db")
    try:
        (stored,) = db.execute("SELECT pin_hash FROM users WHERE name = 'wang'").fetchone()
    finally:
        db.close()
    assert stored.startswith("scrypt$n=16384,r=8,p=2$") and verify_pin("2580", stored)
