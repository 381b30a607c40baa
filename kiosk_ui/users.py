"""Kiosk users: roles, PIN policy and hashing, the kiosk.db schema, and the `edge user` command.

Users live in `kiosk.db` in the box's state directory (opened through edge.store, WAL). The file
is shared by the daemon (logins, sessions, attempt counters) and the `edge user` CLI; every access
is one short transaction and nothing is cached in memory, so a PIN reset or a removal by the CLI
takes effect at the daemon's next request, running or not.

PINs are hashed with scrypt (standard library) under a per-user salt; the parameters are stored
with each hash, so raising them later re-hashes a user's PIN at their next good login.
"""

from __future__ import annotations

import argparse
import base64
import enum
import hashlib
import hmac
import itertools
import json
import logging
import re
import secrets
import sqlite3
import sys
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from getpass import getpass
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from edge.store import Schema, open_db, transaction

log = logging.getLogger(__name__)

DB_NAME = "kiosk.db"


class Role(enum.IntEnum):
    """Ordered: a higher role may do everything a lower one may."""

    CASHIER = 1
    SUPERVISOR = 2
    TECHNICIAN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls[value.strip().upper()]
        except KeyError:
            names = ", ".join(r.label for r in cls)
            raise UserError(
                f"未知角色 {value!r}（可选 {names}）", f"unknown role {value!r} ({names})"
            ) from None


class UserError(EdgeError):
    """Bad input about a user (name, role, PIN) or a user that does not exist."""

    def __init__(self, zh: str, en: str) -> None:
        self.zh, self.en = zh, en
        super().__init__(f"{zh} / {en}")


# --- PINs -----------------------------------------------------------------------------------

# A privileged PIN opens gates and clears fire mode: two more digits are 100x the guesses.
MIN_PIN = {Role.CASHIER: 4, Role.SUPERVISOR: 6, Role.TECHNICIAN: 6}
MAX_PIN = 12


def pin_problem(pin: str, role: Role) -> UserError | None:
    """Why this PIN is refused for this role, or None. Refused: not 4-12 digits (6 for
    supervisor/technician), one digit repeated (0000), a run up or down (1234, 987654), or a
    repeated pair (1212) — the first PINs anyone would try."""
    low = MIN_PIN[role]
    if not (pin.isascii() and pin.isdigit()) or not low <= len(pin) <= MAX_PIN:
        return UserError(
            f"PIN 须为 {low}-{MAX_PIN} 位数字",
            f"a PIN is {low} to {MAX_PIN} digits for {role.label}",
        )
    steps = {int(b) - int(a) for a, b in itertools.pairwise(pin)}
    if (
        len(set(pin)) == 1
        or steps in ({1}, {-1})
        or len(set(pin[0::2])) == len(set(pin[1::2])) == 1
    ):
        return UserError(
            "PIN 太简单（重复、连续或成对重复的数字），请换一个",
            "PIN too easy to guess (repeated, sequential or paired digits); choose another",
        )
    return None


@dataclass(frozen=True)
class KdfParams:
    n: int
    r: int
    p: int

    @property
    def maxmem(self) -> int:
        return 128 * self.n * self.r * self.p + (1 << 20)


# ~80 ms per verify on the reference machine (2 vCPU, measured in docs/kiosk.md), 16 MiB.
# Raise these when the boxes get faster: stored hashes keep their own parameters.
KDF = KdfParams(n=1 << 14, r=8, p=2)
_HASH_RE = re.compile(r"scrypt\$n=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_pin(pin: str, params: KdfParams = KDF) -> str:
    """`scrypt$n=..,r=..,p=..$salt$key` (base64)."""
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(
        pin.encode(), salt=salt, n=params.n, r=params.r, p=params.p, maxmem=params.maxmem, dklen=32
    )
    return f"scrypt$n={params.n},r={params.r},p={params.p}${_b64(salt)}${_b64(key)}"


def _parse_hash(encoded: str) -> tuple[KdfParams, bytes, bytes]:
    m = _HASH_RE.fullmatch(encoded)
    if m is None:
        raise ValueError("not a PIN hash this release understands")
    params = KdfParams(int(m[1]), int(m[2]), int(m[3]))
    return params, base64.b64decode(m[4]), base64.b64decode(m[5])


def verify_pin(pin: str, encoded: str) -> bool:
    """Constant-time comparison; a hash that cannot be read never matches."""
    try:
        params, salt, want = _parse_hash(encoded)
    except ValueError:
        log.error("unreadable PIN hash in %s; reset that user's PIN", DB_NAME)
        return False
    got = hashlib.scrypt(
        pin.encode(), salt=salt, n=params.n, r=params.r, p=params.p, maxmem=params.maxmem, dklen=32
    )
    return hmac.compare_digest(got, want)


def needs_rehash(encoded: str) -> bool:
    try:
        return _parse_hash(encoded)[0] != KDF
    except ValueError:
        return False


# --- names ----------------------------------------------------------------------------------

_NAME_RE = re.compile(r"[\w.-]{1,32}")


def normalize_name(name: str) -> str:
    """NFKC + casefold, so 'Wang', 'wang' and full-width 'ｗａｎｇ' are one user. Letters (any
    script), digits, '.', '_' and '-'; 1-32 characters."""
    norm = unicodedata.normalize("NFKC", name.strip()).casefold()
    if not _NAME_RE.fullmatch(norm):
        raise UserError(
            "用户名须为 1-32 个字母、数字或 . _ -",
            "a user name is 1-32 letters, digits, '.', '_', '-'",
        )
    return norm


# --- the database ---------------------------------------------------------------------------

SCHEMA = Schema(
    "kiosk",
    [
        """
        CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL CHECK (role IN ('cashier', 'supervisor', 'technician')),
            pin_hash TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE sessions (
            id_hash BLOB PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            csrf TEXT NOT NULL,
            addr TEXT NOT NULL,
            created_at REAL NOT NULL,
            last_seen REAL NOT NULL,
            idle_s REAL NOT NULL,
            expires_at REAL NOT NULL
        );
        CREATE INDEX sessions_user ON sessions (user_id);
        CREATE TABLE attempts (
            kind TEXT NOT NULL CHECK (kind IN ('name', 'addr')),
            key TEXT NOT NULL,
            failures INTEGER NOT NULL,
            last_failure REAL NOT NULL,
            locked_until REAL NOT NULL,
            PRIMARY KEY (kind, key)
        );
        """
    ],
)


def open_kiosk_db(state_dir: Path, *, full_check: bool = False) -> sqlite3.Connection:
    return open_db(
        state_dir / DB_NAME, SCHEMA, create=True, synchronous="FULL", full_check=full_check
    )


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: Role
    created_at: float
    updated_at: float
    disabled: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.label,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "disabled": self.disabled,
        }


_USER_COLS = "id, name, role, created_at, updated_at, disabled"


def _user(row: tuple[Any, ...]) -> User:
    return User(row[0], row[1], Role.parse(row[2]), row[3], row[4], bool(row[5]))


class UserStore:
    """Users in kiosk.db. Used on the thread that opened `conn` (the daemon's auth runner, or
    the CLI's main thread). Changing a PIN, disabling or removing a user ends their sessions."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float] = time.time) -> None:
        self.conn, self.clock = conn, clock

    def get(self, name: str) -> tuple[User, str] | None:
        """The user and their PIN hash (`name` already normalized)."""
        row = self.conn.execute(
            f"SELECT {_USER_COLS}, pin_hash FROM users WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else (_user(row[:6]), row[6])

    def by_id(self, user_id: int) -> User | None:
        row = self.conn.execute(
            f"SELECT {_USER_COLS} FROM users WHERE id = ?", (user_id,)
        ).fetchone()
        return None if row is None else _user(row)

    def list(self) -> list[tuple[User, float]]:
        """Every user with the time their name is locked until (0: not locked)."""
        rows = self.conn.execute(
            f"SELECT {', '.join('u.' + c for c in _USER_COLS.split(', '))}, "
            "COALESCE(a.locked_until, 0) FROM users u "
            "LEFT JOIN attempts a ON a.kind = 'name' AND a.key = u.name ORDER BY u.name"
        ).fetchall()
        return [(_user(r[:6]), r[6]) for r in rows]

    def add(self, name: str, role: Role, pin: str) -> User:
        name = normalize_name(name)
        if (bad := pin_problem(pin, role)) is not None:
            raise bad
        pin_hash, now = hash_pin(pin), self.clock()
        with transaction(self.conn):
            if self.get(name) is not None:
                raise UserError(f"用户 {name} 已存在", f"user {name} already exists")
            self.conn.execute(
                "INSERT INTO users (name, role, pin_hash, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, role.label, pin_hash, now, now),
            )
            # A name someone failed to guess before it existed starts clean.
            self.conn.execute("DELETE FROM attempts WHERE kind = 'name' AND key = ?", (name,))
        log.info("kiosk user %s added as %s", name, role.label)
        return self._must(name)

    def reset_pin(self, name: str, pin: str) -> User:
        user = self._must(normalize_name(name))
        if (bad := pin_problem(pin, user.role)) is not None:
            raise bad
        pin_hash = hash_pin(pin)
        with transaction(self.conn):
            self.conn.execute(
                "UPDATE users SET pin_hash = ?, updated_at = ? WHERE id = ?",
                (pin_hash, self.clock(), user.id),
            )
            self._end(user)
        log.info("kiosk user %s: PIN reset", user.name)
        return self._must(user.name)

    def set_hash(self, user_id: int, pin_hash: str) -> None:
        """Store a re-hash under the current KDF parameters (same PIN, sessions kept)."""
        with transaction(self.conn):
            self.conn.execute("UPDATE users SET pin_hash = ? WHERE id = ?", (pin_hash, user_id))

    def set_disabled(self, name: str, disabled: bool) -> User:
        user = self._must(normalize_name(name))
        with transaction(self.conn):
            self.conn.execute(
                "UPDATE users SET disabled = ?, updated_at = ? WHERE id = ?",
                (int(disabled), self.clock(), user.id),
            )
            if disabled:
                self._end(user)
        return self._must(user.name)

    def unlock(self, name: str) -> User:
        user = self._must(normalize_name(name))
        with transaction(self.conn):
            self.conn.execute("DELETE FROM attempts WHERE kind = 'name' AND key = ?", (user.name,))
        return user

    def remove(self, name: str) -> User:
        user = self._must(normalize_name(name))
        with transaction(self.conn):
            self.conn.execute("DELETE FROM users WHERE id = ?", (user.id,))  # sessions cascade
            self.conn.execute("DELETE FROM attempts WHERE kind = 'name' AND key = ?", (user.name,))
        log.info("kiosk user %s removed", user.name)
        return user

    def _end(self, user: User) -> None:
        self.conn.execute("DELETE FROM sessions WHERE user_id = ?", (user.id,))
        self.conn.execute("DELETE FROM attempts WHERE kind = 'name' AND key = ?", (user.name,))

    def _must(self, name: str) -> User:
        found = self.get(name)
        if found is None:
            raise UserError(f"没有用户 {name}", f"no user named {name}")
        return found[0]


# --- `edge user` ------------------------------------------------------------------------------


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    state_dir: Callable[[argparse.Namespace], Path],
) -> None:
    """Add `edge user ...`; `state_dir(args)` finds the box's state directory (--config/--home
    and the usual lookup)."""
    user = sub.add_parser(
        "user",
        help="kiosk users and PINs / 收银台用户与PIN",
        description="Kiosk users and their PINs; roles cashier < supervisor < technician "
        "(docs/kiosk.md) / 收银台用户与PIN",
    )
    us = user.add_subparsers(dest="user_cmd", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str, fn: Callable[[UserStore, argparse.Namespace], int]) -> Any:
        p = us.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", help="config file (default lookup: see README)")
        p.add_argument("--home", help="box directory holding edge.toml and the state")
        if name != "list":
            p.add_argument("name", help="user name / 用户名")

        def run(args: argparse.Namespace) -> int:
            conn = open_kiosk_db(state_dir(args))
            try:
                return fn(UserStore(conn), args)
            finally:
                conn.close()

        p.set_defaults(func=run)
        return p

    p = cmd("add", "add a user with a PIN / 添加用户", _add)
    p.add_argument("--role", required=True, choices=[r.label for r in Role])
    p.add_argument("--pin-stdin", action="store_true", help="read the PIN from stdin (scripts)")
    p = cmd("reset-pin", "set a new PIN; ends the user's sessions / 重置PIN", _reset)
    p.add_argument("--pin-stdin", action="store_true", help="read the PIN from stdin (scripts)")
    cmd("remove", "remove a user; ends their sessions / 删除用户", _remove)
    cmd("disable", "refuse a user's logins until enabled / 停用用户", _disable)
    cmd("enable", "allow a disabled user again / 启用用户", _enable)
    cmd("unlock", "clear a user's failed-PIN lockout / 解除锁定", _unlock)
    p = cmd("list", "list users (never their PINs) / 用户列表", _list)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _read_pin(args: argparse.Namespace) -> str:
    if args.pin_stdin:
        return sys.stdin.readline().strip()
    if not sys.stdin.isatty():
        raise UserError("没有终端：请用 --pin-stdin 输入PIN", "no terminal: pass --pin-stdin")
    first = getpass("PIN 密码: ")
    if getpass("PIN again 再次输入: ") != first:
        raise UserError("两次输入的PIN不一致", "the two PINs differ")
    return first


def _add(store: UserStore, args: argparse.Namespace) -> int:
    role = Role.parse(args.role)
    normalize_name(args.name)  # refuse a bad name before asking for the PIN
    u = store.add(args.name, role, _read_pin(args))
    print(f"用户 {u.name} 已添加（{u.role.label}） / user {u.name} added as {u.role.label}")
    return 0


def _reset(store: UserStore, args: argparse.Namespace) -> int:
    store._must(normalize_name(args.name))
    u = store.reset_pin(args.name, _read_pin(args))
    print(f"用户 {u.name} 的PIN已重置，已登出 / PIN of {u.name} reset; their sessions ended")
    return 0


def _remove(store: UserStore, args: argparse.Namespace) -> int:
    u = store.remove(args.name)
    print(f"用户 {u.name} 已删除 / user {u.name} removed")
    return 0


def _disable(store: UserStore, args: argparse.Namespace) -> int:
    u = store.set_disabled(args.name, True)
    print(f"用户 {u.name} 已停用 / user {u.name} disabled; their sessions ended")
    return 0


def _enable(store: UserStore, args: argparse.Namespace) -> int:
    u = store.set_disabled(args.name, False)
    print(f"用户 {u.name} 已启用 / user {u.name} enabled")
    return 0


def _unlock(store: UserStore, args: argparse.Namespace) -> int:
    u = store.unlock(args.name)
    print(f"用户 {u.name} 已解除锁定 / user {u.name} unlocked")
    return 0


def _list(store: UserStore, args: argparse.Namespace) -> int:
    now = store.clock()
    users = store.list()
    if args.json:
        docs = [u.to_json() | {"locked_until": lk if lk > now else None} for u, lk in users]
        print(json.dumps({"users": docs}, ensure_ascii=False))
        return 0
    if not users:
        print("没有用户：用 edge user add 添加 / no users yet: add one with `edge user add`")
    for u, locked in users:
        state = "disabled 已停用" if u.disabled else "active 正常"
        if locked > now:
            state += f", locked 锁定 {int(locked - now) + 1} s"
        print(f"{u.name:<20} {u.role.label:<11} {state}")
    return 0
