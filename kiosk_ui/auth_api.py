"""Kiosk login: /api/v1/session (log in, who am I, log out) and `require(role)` for the routers.

    auth = KioskAuth(state_dir, audit=hook)         # opens kiosk.db on its own thread
    app.include_router(auth.router)                 # POST/GET/DELETE /api/v1/session
    @router.post("/lanes/{lane}/open")
    async def open_(user: Annotated[User, Depends(auth.require(Role.SUPERVISOR))]) -> ...
    auth.close()

The session id travels in an HttpOnly, SameSite=Strict cookie (Secure over TLS). Every
state-changing request also needs the session's CSRF token in X-CSRF-Token and, when the browser
names one, a same-origin Origin (or Referer). PIN checks run one at a time on their own thread
(scrypt costs ~80 ms of CPU; the event loop never waits for it), and a name that no user has is
checked against a dummy hash, counted and locked exactly like a real one. Error bodies are
`{"detail": {"reason", "message" (zh / en), "zh", "en", ...}}`; see docs/kiosk.md.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.runner import Runner
from kiosk_ui.api_base import read_body
from kiosk_ui.sessions import Lockout, Session, SessionStore
from kiosk_ui.users import (
    Role,
    User,
    UserError,
    hash_pin,
    needs_rehash,
    normalize_name,
    open_kiosk_db,
    verify_pin,
)

log = logging.getLogger(__name__)

AuditHook = Callable[[str, dict[str, Any]], Awaitable[None]]
COOKIE = "edge_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_LOGIN_BODY = 4096
ROLE_ZH = {Role.CASHIER: "收银员", Role.SUPERVISOR: "主管", Role.TECHNICIAN: "技术员"}


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=64)]
    pin: Annotated[str, Field(pattern=r"^[0-9]{4,12}$", description="4-12 digits")]


class SessionOut(BaseModel):
    user: str
    role: str
    csrf_token: str = Field(description=f"send it in {CSRF_HEADER} on every POST/PUT/PATCH/DELETE")
    expires_at: str = Field(description="ISO 8601 UTC: the end if not used again")
    expires_in_s: int
    idle_timeout_s: int
    absolute_expires_at: str


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _error(status: int, reason: str, zh: str, en: str, **extra: Any) -> HTTPException:
    detail = {"reason": reason, "message": f"{zh} / {en}", "zh": zh, "en": en, **extra}
    headers = {"Cache-Control": "no-store"}
    if "retry_after_s" in extra:
        headers["Retry-After"] = str(extra["retry_after_s"])
    return HTTPException(status, detail, headers=headers)


def _locked(lock: Lockout | tuple[str, float]) -> HTTPException:
    scope, seconds = (lock.scope, lock.seconds) if isinstance(lock, Lockout) else lock
    wait = max(1, math.ceil(seconds))
    zh_t, en_t = (
        (f"{wait} 秒", f"{wait} s")
        if wait < 120
        else (f"{-(-wait // 60)} 分钟", f"{-(-wait // 60)} min")
    )
    who_zh, who_en = ("本设备", "from this device") if scope == "addr" else ("", "")
    return _error(
        429,
        "locked",
        f"{who_zh}PIN错误次数过多，请 {zh_t} 后再试",
        f"too many wrong PINs{' ' + who_en if who_en else ''}: try again in {en_t}",
        retry_after_s=wait,
        scope=scope,
    )


def _origin(url: str) -> str | None:
    """scheme://host[:port] with the default port dropped, or None when it is not a URL."""
    try:
        u = urlsplit(url.strip().lower())
        port = u.port
    except ValueError:
        return None
    if u.scheme not in ("http", "https") or not u.hostname:
        return None
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    if port is None or port == {"http": 80, "https": 443}[u.scheme]:
        return f"{u.scheme}://{host}"
    return f"{u.scheme}://{host}:{port}"


def _too_large(limit: int) -> HTTPException:
    return _error(413, "too_large", "请求过大", f"request body over {limit} bytes")


@dataclass(frozen=True)
class _Checked:
    """The outcome of one PIN check: `lock` is the lockout a failure started ("", 0 when
    none); `why` says what was wrong (unknown_user, disabled, wrong_pin)."""

    user: User | None
    pin_hash: str | None
    ok: bool
    why: str
    lock: tuple[str, float]


class KioskAuth:
    """kiosk.db sessions for one running box. `close()` when the box stops."""

    def __init__(
        self,
        state_dir: Path,
        *,
        audit: AuditHook | None = None,
        clock: Callable[[], float] = time.time,
        trusted_origins: Collection[str] = (),
        full_check: bool = False,
        max_waiting: int = 8,
    ) -> None:
        self.audit_hook, self.clock, self.max_waiting = audit, clock, max_waiting
        self.trusted = {o for o in map(_origin, trusted_origins) if o}
        self._db = Runner("kiosk-auth")
        self._kdf = Runner("kiosk-kdf")
        try:
            conn = self._db.run_sync(open_kiosk_db, state_dir, full_check=full_check)
        except BaseException:
            self._db.close()
            self._kdf.close()
            raise
        self.store = SessionStore(conn, clock)
        # Submitted first, so it is ready on the KDF thread before any PIN check needs it.
        self._dummy = self._kdf.submit(hash_pin, secrets.token_hex(6))
        self._locks: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._waiting = 0
        self._closed = False
        self.router = self._build_router()

    def close(self) -> None:
        """Idempotent: close kiosk.db on its thread, then both threads."""
        if self._closed:
            return
        self._closed = True
        try:
            self._db.run_sync(self.store.conn.close)
        finally:
            self._db.close()
            self._kdf.close()

    # --- for the other routers ------------------------------------------------------------

    def require(self, role: Role) -> Callable[[Request], Awaitable[User]]:
        """A dependency: the logged-in user when their role is `role` or higher; for a
        state-changing method also a same-origin request with the session's CSRF token."""

        async def dependency(request: Request) -> User:
            session = await self._session(request, touch=True)
            if request.method not in SAFE_METHODS:
                self._check_origin(request)
                self._check_csrf(request, session)
            user = session.user
            if user.role < role:
                await self._audit("denied", user.name, user.role, request, path=request.url.path)
                raise _error(
                    403,
                    "forbidden_role",
                    f"需要{ROLE_ZH[role]}权限",
                    f"this needs the {role.label} role",
                    needs=role.label,
                )
            return user

        return dependency

    async def session_alive(self, request: Request) -> bool:
        """Whether the request's session is still live (not logged out, expired or disabled);
        asking does not renew it. A long-lived response (the event stream) asks again and
        again, so it ends with its session."""
        session, _ = await self._db.call(
            self.store.lookup, request.cookies.get(COOKIE, ""), touch=False
        )
        return session is not None

    async def verify_user_pin(self, user_name: str, pin: str, request: Request) -> bool:
        """The logged-in user's PIN asked again before a grave action (free passage). Counted
        and locked exactly like a login (a stolen session cannot guess on): False for a wrong
        PIN, HTTP 429 `locked` while or once locked (even for the right PIN); a good PIN resets
        the name's count."""
        try:
            name = normalize_name(user_name)
        except UserError:
            return False
        checked = await self._check_pin(name, pin, request)
        if not checked.ok:
            await self._failed("pin_check_failed", name, checked, request, path=request.url.path)
        return checked.ok

    # --- the routes -----------------------------------------------------------------------

    def _build_router(self) -> APIRouter:
        router = APIRouter(prefix="/api/v1", tags=["session"])
        no_store = {"Cache-Control": "no-store"}

        @router.post(
            "/session",
            response_model=SessionOut,
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": LoginIn.model_json_schema()}},
                }
            },
        )
        async def login(request: Request, response: Response) -> SessionOut:
            """Log in with name and PIN: sets the session cookie, returns the CSRF token."""
            self._check_origin(request)
            raw = await read_body(request, MAX_LOGIN_BODY, _too_large)
            try:
                body = LoginIn.model_validate_json(raw)
                name = normalize_name(body.name)
            except ValidationError as err:
                # Never echo the input: it may hold a PIN.
                problems = [
                    f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                    for e in err.errors(include_url=False, include_input=False)
                ]
                text = "; ".join(problems)
                raise _error(
                    422, "malformed", f"请求格式错误：{text}", f"malformed: {text}"
                ) from err
            except UserError as err:
                raise _error(422, "malformed", err.zh, err.en) from err
            session, sid = await self._attempt(name, body.pin, request)
            response.set_cookie(
                COOKIE,
                sid,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path="/",
            )
            response.headers.update(no_store)
            return self._out(session)

        @router.get("/session", response_model=SessionOut)
        async def whoami(request: Request, response: Response) -> SessionOut:
            """Who is logged in, their role, the CSRF token and when the session ends (asking
            does not renew it)."""
            session = await self._session(request, touch=False)
            response.headers.update(no_store)
            return self._out(session)

        @router.delete("/session", status_code=204)
        async def logout(request: Request) -> Response:
            """Log out (needs the CSRF token); without a live session it only clears the cookie."""
            session, _ = await self._db.call(
                self.store.lookup, request.cookies.get(COOKIE, ""), touch=False
            )
            if session is not None:
                self._check_origin(request)
                self._check_csrf(request, session)
                await self._db.call(self.store.end, session.id_hash)
                await self._audit("logout", session.user.name, session.user.role, request)
            out = Response(status_code=204, headers=no_store)
            out.delete_cookie(
                COOKIE,
                path="/",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
            return out

        return router

    # --- internals ------------------------------------------------------------------------

    def _lock(self) -> asyncio.Lock:
        """One PIN check at a time (bounds the CPU an attacker can take, and no parallel burst
        slips past a lockout); one lock per event loop (tests run several)."""
        loop = asyncio.get_running_loop()
        if self._locks is None or self._locks[0] is not loop:
            self._locks = (loop, asyncio.Lock())
        return self._locks[1]

    def _verify(self, pin: str, pin_hash: str | None) -> bool:
        """On the KDF thread. An unknown name costs the same scrypt as a known one."""
        return verify_pin(pin, pin_hash if pin_hash is not None else self._dummy.result())

    async def _check_pin(self, name: str, pin: str, request: Request) -> _Checked:
        """One PIN check, for a login and for a PIN asked again: the lock check, the KDF and
        the count of the outcome all run under the one PIN lock, so a burst of guesses is
        checked one by one (the lockout stops it after the threshold) and a right PIN that
        queued behind them meets the lockout instead of clearing it. HTTP 429 when locked,
        503 `busy` when too many checks wait already."""
        if self._waiting >= self.max_waiting:
            raise _error(503, "busy", "登录请求过多，请稍后再试", "too many logins at once: retry")
        addr = request.client.host if request.client else "unknown"

        def before() -> tuple[User, str] | None:
            self.store.check_locks(name, addr)
            return self.store.users.get(name)

        self._waiting += 1
        try:
            async with self._lock():
                try:
                    found = await self._db.call(before)
                except Lockout as locked:
                    log.info("PIN of %s not checked while locked (%s)", name, locked)
                    raise _locked(locked) from None
                user, pin_hash = found if found is not None else (None, None)
                good = await self._kdf.call(self._verify, pin, pin_hash)
                if user is not None and not user.disabled and good:
                    await self._db.call(self.store.record_success, name)
                    return _Checked(user, pin_hash, True, "", ("", 0.0))
                started = await self._db.call(self.store.record_failure, name, addr)
        finally:
            self._waiting -= 1
        why = "unknown_user" if user is None else "disabled" if user.disabled else "wrong_pin"
        return _Checked(user, pin_hash, False, why, started)

    async def _failed(
        self, action: str, name: str, checked: _Checked, request: Request, **extra: Any
    ) -> None:
        """Audit a wrong PIN; raise HTTP 429 when it started a lockout (audited too)."""
        role = checked.user.role if checked.user else None
        await self._audit(action, name, role, request, **extra)
        if checked.lock[1]:
            scope, seconds = checked.lock
            await self._audit("lockout", name, role, request, scope=scope, locked_s=seconds)
            raise _locked(checked.lock)

    async def _attempt(self, name: str, pin: str, request: Request) -> tuple[Session, str]:
        addr = request.client.host if request.client else "unknown"
        checked = await self._check_pin(name, pin, request)
        user, pin_hash = checked.user, checked.pin_hash
        if user is None or not checked.ok:
            await self._failed("login_failed", name, checked, request, why=checked.why)
            raise _error(401, "bad_credentials", "用户名或PIN错误", "wrong name or PIN")
        try:  # a login the audit log cannot record does not happen
            await self._audit("login", user.name, user.role, request, strict=True)
        except Exception as err:
            log.exception("audit failed; login of %s refused", user.name)
            raise _error(
                503,
                "audit_unavailable",
                "无法记录登录，请联系技术员",
                "cannot record the login: call a technician",
            ) from err

        def succeed() -> tuple[str, Session]:
            self.store.prune()
            return self.store.create(user, addr)

        sid, session = await self._db.call(succeed)
        if pin_hash is not None and needs_rehash(pin_hash):
            new_hash = await self._kdf.call(hash_pin, pin)
            await self._db.call(self.store.users.set_hash, user.id, new_hash)
            log.info("PIN hash of %s upgraded to the current KDF parameters", user.name)
        return session, sid

    async def _session(self, request: Request, *, touch: bool) -> Session:
        session, why = await self._db.call(
            self.store.lookup, request.cookies.get(COOKIE, ""), touch=touch
        )
        if session is not None:
            return session
        if why == "expired":
            raise _error(
                401, "session_expired", "登录已超时，请重新登录", "session timed out: log in again"
            )
        raise _error(401, "not_logged_in", "请先登录", "please log in")

    def _check_origin(self, request: Request) -> None:
        """A browser names the page that sent the request: it must be this box (or a trusted
        origin). Clients that send neither header (curl, the CLI) rely on the CSRF token."""
        claimed = request.headers.get("origin") or request.headers.get("referer")
        if claimed is None:
            return
        host = request.headers.get("host", "")
        allowed = self.trusted | {_origin(f"{request.url.scheme}://{host}")}
        if _origin(claimed) not in allowed - {None}:
            raise _error(
                403, "bad_origin", "拒绝来自其他网站的请求", "request from another site refused"
            )

    def _check_csrf(self, request: Request, session: Session) -> None:
        token = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(token.encode(), session.csrf.encode()):
            raise _error(
                403,
                "csrf",
                "安全令牌缺失或错误，请刷新页面",
                f"missing or wrong {CSRF_HEADER}: reload the page",
            )

    def _out(self, s: Session) -> SessionOut:
        end = s.deadline()
        return SessionOut(
            user=s.user.name,
            role=s.user.role.label,
            csrf_token=s.csrf,
            expires_at=_iso(end),
            expires_in_s=max(0, int(end - self.clock())),
            idle_timeout_s=int(s.idle_s),
            absolute_expires_at=_iso(s.expires_at),
        )

    async def _audit(
        self,
        action: str,
        name: str,
        role: Role | None,
        request: Request,
        *,
        strict: bool = False,
        **extra: Any,
    ) -> None:
        """Hand an entry to the daemon's audit hook. A failure is logged, except for `strict`
        entries (a successful login), where it is the caller's to handle."""
        addr = request.client.host if request.client else "unknown"
        detail = {"user": name, "role": role.label if role else None, "addr": addr, **extra}
        log.info("kiosk %s %s", action, detail)
        if self.audit_hook is None:
            return
        try:
            await self.audit_hook(action, detail)
        except Exception:
            if strict:
                raise
            log.exception("audit hook failed for %s", action)
