"""Server-side kiosk sessions and the failed-PIN counters that lock names and addresses out.

A session id is 32 random bytes the browser keeps in an HttpOnly cookie; kiosk.db keeps only
its SHA-256, so a copy of the file holds no live session. Each session has an idle timeout
(renewed by use) and an absolute expiry, both set from the role at login.

Failed PINs are counted per typed name and per client address in kiosk.db (durable across
restarts). A name is counted whether or not a user has it, so the counters and lockouts answer
the same for a name that exists and one that does not.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge.store import transaction
from kiosk_ui.users import Role, User, UserStore

# Idle timeout, absolute expiry. A cashier keeps the counter for a shift and re-enters a short
# PIN after an hour of no use; the roles that open gates and change the box time out quickly.
TIMEOUTS: dict[Role, tuple[float, float]] = {
    Role.CASHIER: (60 * 60.0, 12 * 3600.0),
    Role.SUPERVISOR: (15 * 60.0, 12 * 3600.0),
    Role.TECHNICIAN: (15 * 60.0, 4 * 3600.0),
}
TOUCH_EVERY_S = 30.0  # renew last_seen at most this often: fewer writes to the SD card
MAX_SESSIONS_PER_USER = 10  # the oldest is ended beyond this (a lost phone, many tabs)


@dataclass(frozen=True)
class Throttle:
    """After `threshold` failures, each further one locks for base * 2^k s, capped; the count
    starts again after `forget_s` without a failure."""

    threshold: int
    base_s: float
    cap_s: float
    forget_s: float

    def lock_s(self, failures: int) -> float:
        if failures < self.threshold:
            return 0.0
        return float(min(self.base_s * 2 ** min(failures - self.threshold, 30), self.cap_s))


# A name: 5 tries, then 30 s, 60 s, ... up to 15 min; a good PIN or `edge user unlock` resets it.
NAME_THROTTLE = Throttle(threshold=5, base_s=30.0, cap_s=900.0, forget_s=24 * 3600.0)
# An address: every cashier at the box's own screen shares 127.0.0.1, so it allows more; a
# success does not reset it (one known PIN must not launder guesses at other names).
ADDR_THROTTLE = Throttle(threshold=20, base_s=30.0, cap_s=900.0, forget_s=3600.0)
THROTTLES = {"name": NAME_THROTTLE, "addr": ADDR_THROTTLE}


@dataclass(frozen=True)
class Session:
    id_hash: bytes
    user: User
    csrf: str
    addr: str
    created_at: float
    last_seen: float
    idle_s: float
    expires_at: float

    def deadline(self) -> float:
        """When it ends if not used again."""
        return min(self.last_seen + self.idle_s, self.expires_at)


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


class Lockout(Exception):
    """A login refused without checking the PIN: the name or the address is locked."""

    def __init__(self, scope: str, seconds: float) -> None:
        self.scope, self.seconds = scope, seconds
        super().__init__(f"{scope} locked for {seconds:.0f} s")


class SessionStore:
    """Sessions and attempt counters in kiosk.db; used on the thread that opened `conn`."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float] = time.time) -> None:
        self.conn, self.clock = conn, clock
        self.users = UserStore(conn, clock)

    # --- sessions ---------------------------------------------------------------------------

    def create(self, user: User, addr: str) -> tuple[str, Session]:
        """A new session for `user`: (the id for the cookie, the session)."""
        sid, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(32), self.clock()
        idle, absolute = TIMEOUTS[user.role]
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO sessions (id_hash, user_id, csrf, addr, created_at, last_seen, "
                "idle_s, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (_digest(sid), user.id, csrf, addr, now, now, idle, now + absolute),
            )
            self.conn.execute(
                "DELETE FROM sessions WHERE user_id = ? AND id_hash NOT IN (SELECT id_hash FROM "
                "sessions WHERE user_id = ? ORDER BY created_at DESC LIMIT ?)",
                (user.id, user.id, MAX_SESSIONS_PER_USER),
            )
        return sid, Session(_digest(sid), user, csrf, addr, now, now, idle, now + absolute)

    def lookup(self, session_id: str, *, touch: bool) -> tuple[Session | None, str]:
        """(the live session, "") or (None, why: "none", "expired" or "disabled"). An ended
        session is deleted; `touch` renews the idle timeout (the user did something)."""
        if not session_id or len(session_id) > 128:
            return None, "none"
        key, now = _digest(session_id), self.clock()
        row = self.conn.execute(
            "SELECT user_id, csrf, addr, created_at, last_seen, idle_s, expires_at "
            "FROM sessions WHERE id_hash = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None, "none"
        user = self.users.by_id(row[0])
        if user is None:  # removed (the cascade normally took the session with it)
            return None, "none"
        s = Session(key, user, *row[1:])
        if now >= s.deadline() or user.disabled:
            with transaction(self.conn):
                self.conn.execute("DELETE FROM sessions WHERE id_hash = ?", (key,))
            return None, "disabled" if user.disabled else "expired"
        if touch and now - s.last_seen >= TOUCH_EVERY_S:
            with transaction(self.conn):
                self.conn.execute("UPDATE sessions SET last_seen = ? WHERE id_hash = ?", (now, key))
            s = Session(key, user, s.csrf, s.addr, s.created_at, now, s.idle_s, s.expires_at)
        return s, ""

    def end(self, id_hash: bytes) -> None:
        with transaction(self.conn):
            self.conn.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))

    def prune(self) -> int:
        """Drop ended sessions and forgotten attempt counters (cheap; run at each login)."""
        now = self.clock()
        with transaction(self.conn):
            n = self.conn.execute(
                "DELETE FROM sessions WHERE expires_at <= ? OR last_seen + idle_s <= ?", (now, now)
            ).rowcount
            for kind, t in THROTTLES.items():
                self.conn.execute(
                    "DELETE FROM attempts "
                    "WHERE kind = ? AND last_failure < ? AND locked_until <= ?",
                    (kind, now - t.forget_s, now),
                )
        return n

    # --- failed PINs ------------------------------------------------------------------------

    def check_locks(self, name: str, addr: str) -> None:
        """Raise Lockout when the address or the name is locked now."""
        now = self.clock()
        for kind, key in (("addr", addr), ("name", name)):
            row = self.conn.execute(
                "SELECT locked_until FROM attempts WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
            if row is not None and row[0] > now:
                raise Lockout(kind, row[0] - now)

    def record_failure(self, name: str, addr: str) -> tuple[str, float]:
        """Count a wrong PIN against the name and the address, in one transaction. Returns the
        lock it started ("name"/"addr", seconds) or ("", 0)."""
        now = self.clock()
        started = ("", 0.0)
        with transaction(self.conn):
            for kind, key in (("addr", addr), ("name", name)):
                t = THROTTLES[kind]
                row = self.conn.execute(
                    "SELECT failures, last_failure FROM attempts WHERE kind = ? AND key = ?",
                    (kind, key),
                ).fetchone()
                failures = 1 if row is None or now - row[1] > t.forget_s else row[0] + 1
                lock = t.lock_s(failures)
                self.conn.execute(
                    "INSERT INTO attempts (kind, key, failures, last_failure, locked_until) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, key) DO UPDATE SET "
                    "failures = excluded.failures, last_failure = excluded.last_failure, "
                    "locked_until = excluded.locked_until",
                    (kind, key, failures, now, now + lock if lock else 0.0),
                )
                if lock > started[1]:
                    started = (kind, lock)
        return started

    def record_success(self, name: str) -> None:
        with transaction(self.conn):
            self.conn.execute("DELETE FROM attempts WHERE kind = 'name' AND key = ?", (name,))
