"""Locker deposit and pickup with box-minted codes, on the simulated lock board (real driver,
real pty, real ledger file). The staff and the customers are played by a task that shuts any
door that has been open for a moment, as a person would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from drivers.locker.sim import SimBoard, SimLocker
from edge.bus import EventBus
from edge.codes import CodeError, parse_code
from edge.config_sections import DeviceConfig, LockerBankConfig
from edge.devices import DeviceSlot, make_slot
from edge.errors import Stopping
from edge.ledger import Ledger
from edge.ledger_schema import LEDGER_SCHEMA
from edge.locker_errors import DoorNotClosed, LockerError, LockerFull, LockerUnavailable
from edge.lockers import LockerBank, PrintSlip
from edge.pickup_codes import is_pickup_code, new_code
from edge.pickups import PickupStore
from edge.runner import Runner
from edge.store import Schema, open_db, transaction
from edge.templates import render
from edge.textcodec import damm_check_digit, damm_valid

URL = "sim://?dialect=8a&doors=8&confirm_timeout=0.3"
SIZES = {"S": (1, 2), "M": (3, 4, 5, 6), "L": (7, 8)}
NOW = 1_777_600_800.0
LANE = "locker-scan"


@dataclass
class Clock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    bank: LockerBank
    slot: DeviceSlot
    db: Runner
    store: PickupStore
    bus: EventBus
    path: Path
    clock: Clock
    slips: list[dict[str, Any]] = field(default_factory=list)
    audits: list[tuple[str, str, str, str]] = field(default_factory=list)

    @property
    def board(self) -> SimBoard:
        return cast(SimLocker, self.slot.device).board

    async def outbox(self, etype: str | None = None) -> list[dict[str, Any]]:
        rows = await self.db.call(self.store.ledger.outbox, 1000)
        return [doc for _, doc in rows if etype is None or doc["type"] == etype]

    async def states(self) -> dict[int, str]:
        return {row["door"]: row["state"] for row in await self.bank.grid()}

    async def audit_rows(self) -> list[tuple[str, str, str]]:
        rows = await self.db.call(
            lambda: self.store.conn.execute("SELECT actor, action, target FROM audit").fetchall()
        )
        return [tuple(r) for r in rows]


async def shut_doors(
    board: SimBoard, after: float = 0.1, doors: Iterable[int] = range(1, 9)
) -> None:
    """A person: any door seen open is shut `after` seconds later."""
    loop = asyncio.get_running_loop()
    seen: dict[int, float] = {}
    while True:
        for d in doors:
            if board.is_open(d):
                seen.setdefault(d, loop.time())
                if loop.time() - seen[d] >= after:
                    board.close_door(d)
                    seen.pop(d)
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    *,
    close_timeout: float = 3.0,
    person: bool = True,
    print_slip: PrintSlip | None = None,
    **kw: Any,
) -> AsyncIterator[Rig]:
    bus = EventBus()
    bus.bind(asyncio.get_running_loop())
    slot = make_slot(DeviceConfig("wall", "locker", "sim", URL), bus)
    db = Runner("db")
    path = tmp_path / "ledger.db"
    ledger: Ledger | None = None
    task: asyncio.Task[None] | None = None
    r: Rig | None = None
    try:
        assert await slot.open(), slot.error
        ledger = await db.call(Ledger, path)
        store = await db.call(PickupStore, ledger)  # resolves a crash's intents, on its thread
        clock = Clock()
        cfg = LockerBankConfig("wall", SIZES, 48.0, close_timeout)
        r = Rig(None, slot, db, store, bus, path, clock)  # type: ignore[arg-type]

        async def keep_slip(slip: dict[str, Any]) -> None:
            r.slips.append(slip)

        async def audit(actor: str, action: str, target: str, detail: str) -> None:
            def write() -> None:  # the real audit table of schema 3
                with transaction(store.conn):
                    store.conn.execute(
                        "INSERT INTO audit (at, actor, action, target, detail) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (clock(), actor, action, target, detail),
                    )

            await db.call(write)
            r.audits.append((actor, action, target, detail))

        kw.setdefault("poll_s", 0.05)
        slips = print_slip or keep_slip
        r.bank = LockerBank(cfg, slot, db, store, bus, slips, audit, clock, **kw)
        if person:
            task = asyncio.create_task(shut_doors(r.board))
        yield r
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if r is not None and r.bank is not None:
            await r.bank.close()  # as the Box does: pickups in flight recorded, then the ledger
        if ledger is not None:
            await db.call(ledger.close)
        db.close()
        await slot.close()


async def settled(r: Rig) -> None:
    """Wait until every pickup in flight has seen its door close and been recorded."""
    while r.bank.pending_tasks:
        await asyncio.wait(set(r.bank.pending_tasks), timeout=5)


async def until(cond: Any, what: str, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def typo(code: str) -> str:
    """The same code with its second digit mistyped."""
    return code[0] + str((int(code[1]) + 1) % 10) + code[2:]


def test_deposit_then_pickup_confirms_a_redemption_and_keeps_no_clear_code(
    tmp_path: Path,
) -> None:
    async def main() -> tuple[str, str]:
        async with rig(tmp_path) as r:
            sub = r.bus.subscribe({"locker"})
            got = await r.bank.deposit("A1001", "M", actor="staff-1")
            assert got["door"] == 3 and got["order_no"] == "A1001" and got["printed"]
            code = got["code"]
            assert len(code) == 7 and code.isdigit() and damm_valid(code)
            assert got["expires_at"] == pytest.approx(NOW + 48 * 3600)
            assert r.slips == [{k: v for k, v in got.items() if k != "printed"}]
            row = (await r.bank.grid())[2]
            assert (row["door"], row["state"], row["order_no"]) == (3, "occupied", "A1001")

            res = await r.bank.pickup(code, LANE)
            assert res["ok"] and res["reason"] == "ok" and res["door"] == 3
            assert "3号" in res["line_zh"] and "Door 3" in res["line_en"]
            await settled(r)  # the person shut the door: the pickup is recorded
            assert not r.board.is_open(3) and (await r.states())[3] == "free"
            events = [e.data for e in sub.pending()]
            assert {"door_open", "deposit", "picked"} <= {e.get("event") for e in events}
            assert [e["door_closed"] for e in events if e.get("event") == "picked"] == [True]

            (deposit,) = await r.outbox("locker_deposit")
            (picked,) = await r.outbox("locker_pickup")
            assert deposit["body"]["door"] == 3 and deposit["body"]["order_no"] == "A1001"
            assert picked["body"]["state"] == "confirmed" and picked["body"]["lane"] == LANE
            assert picked["body"]["door_closed"] is True
            rid = picked["body"]["redemption_id"]
            assert len(bytes.fromhex(rid)) == 16 and res["redemption_id"] == rid
            again = await r.bank.pickup(code, LANE)
            assert not again["ok"] and again["reason"] == "already_used"

            second = await r.bank.deposit("A1002", "M")
            return code, second["code"]

    code, kept = asyncio.run(main())
    files = [p for p in tmp_path.iterdir() if p.name.startswith("ledger.db")]
    blob = b"".join(p.read_bytes() for p in files)
    assert b"locker_pickup" in blob  # the bytes read are the ledger's
    assert code.encode() not in blob and kept.encode() not in blob
    ledger = Ledger(tmp_path / "ledger.db")  # after a restart the parcel can still be picked
    try:
        assert PickupStore(ledger).lookup(kept, NOW + 60).reason == "ok"
        assert PickupStore(ledger).lookup(code, NOW + 60).reason == "already_used"
    finally:
        ledger.close()


def test_wrong_code_typo_and_expired_code_open_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            code = (await r.bank.deposit("B7", "S"))["code"]
            unlocks = len(r.board.unlocks())
            swapped = code[1] + code[0] + code[2:]
            other = next(c for c in iter(new_code, None) if c != code)
            tries = {
                typo(code): "malformed",
                "12345678": "malformed",  # 8 digits: a cloud voucher's namespace
                "abc": "malformed",
                other: "unknown_code",
            }
            if swapped != code:
                tries[swapped] = "malformed"
            for i, (text, reason) in enumerate(tries.items()):
                res = await r.bank.pickup(text, f"lane-{i}")
                assert (res["ok"], res["reason"], res["door"]) == (False, reason, None)
                assert res["line_zh"] and res["line_en"]
            assert len(r.board.unlocks()) == unlocks  # no door moved

            r.clock.now += 49 * 3600
            res = await r.bank.pickup(code, "late")
            assert res["reason"] == "expired" and "过期" in res["line_zh"]
            sub = r.bus.subscribe({"locker"})
            (exp,) = await r.bank.expire()
            assert exp["door"] == 1 and exp["state"] == "expired"
            assert any(e.data.get("alert") for e in sub.pending())
            assert [e["body"]["order_no"] for e in await r.outbox("locker_expired")] == ["B7"]
            assert (await r.states())[1] == "expired"
            assert (await r.bank.deposit("B8", "S"))["door"] == 2  # door 1 still holds B7
            assert (await r.bank.pickup(code, "late2"))["reason"] == "expired"

            opened = await r.bank.open_door(1, "tech-1", "remove expired parcel")
            assert opened["opened"] and opened["cleared"]
            await asyncio.sleep(0.3)  # the technician shuts it
            assert (await r.states())[1] == "free"

    asyncio.run(main())


def test_a_stuck_door_on_pickup_is_reported_and_the_code_stays_valid(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            code = (await r.bank.deposit("C1", "L"))["code"]
            r.board.set_stuck(7)
            sub = r.bus.subscribe({"locker"})
            res = await r.bank.pickup(code, LANE)
            assert not res["ok"] and res["reason"] == "door_fault" and res["door"] == 7
            assert "仍然有效" in res["line_zh"] and "still valid" in res["line_en"]
            assert any(e.data.get("alert") and e.data.get("door") == 7 for e in sub.pending())
            (fault,) = await r.outbox("locker_door_fault")
            assert fault["body"]["door"] == 7 and fault["body"]["code_still_valid"] is True
            assert await r.outbox("locker_pickup") == []
            assert (await r.states())[7] == "fault"

            r.board.set_stuck(7, False)  # freed by hand; the customer tries again
            res = await r.bank.pickup(code, LANE)
            assert res["ok"] and res["door"] == 7
            await settled(r)
            assert len(await r.outbox("locker_pickup")) == 1
            voided = await r.outbox("locker_pickup_voided")  # the attempt at the stuck door
            assert [v["body"]["why"] for v in voided] == ["not seen open after unlock"]

    asyncio.run(main())


def test_a_door_that_does_not_open_on_deposit_is_skipped_until_a_technician_opens_it(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            r.board.set_stuck(3)
            assert (await r.bank.deposit("D1", "M"))["door"] == 4
            assert (await r.bank.deposit("D2", "M"))["door"] == 5  # 3 is not tried again
            assert [e["body"]["door"] for e in await r.outbox("locker_door_fault")] == [3]
            assert (await r.states())[3] == "fault"

            still = await r.bank.open_door(3, "tech-1", "check lock")
            assert not still["opened"] and (await r.states())[3] == "fault"
            r.board.set_stuck(3, False)
            fixed = await r.bank.open_door(3, "tech-1", "lock replaced")
            assert fixed["opened"] and fixed["cleared"]
            rows = [
                ("tech-1", "locker_open_door_start", "wall:3"),
                ("tech-1", "locker_open_door", "wall:3"),
            ]
            assert await r.audit_rows() == rows * 2
            assert "lock replaced" in r.audits[-1][3]
            await asyncio.sleep(0.3)
            assert (await r.bank.deposit("D3", "M"))["door"] == 3

    asyncio.run(main())


def test_sizes_are_respected_and_a_full_size_is_a_clear_error(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            both = await asyncio.gather(r.bank.deposit("L1", "L"), r.bank.deposit("L2", "L"))
            assert sorted(d["door"] for d in both) == [7, 8]  # two staff, two doors
            with pytest.raises(LockerFull) as info:
                await r.bank.deposit("L3", "L")
            assert info.value.size == "L" and "size L" in str(info.value)
            assert (await r.bank.deposit("S1", "S"))["door"] == 1
            assert (await r.bank.deposit("any"))["door"] == 2  # no size: smallest that is free
            assert (await r.bank.deposit("any2"))["door"] == 3
            with pytest.raises(LockerError, match="unknown size"):
                await r.bank.deposit("X", "XXL")
            with pytest.raises(LockerError, match="order number"):
                await r.bank.deposit("  ")
            grid = await r.bank.grid()
            assert [g["state"] for g in grid] == ["occupied"] * 3 + ["free"] * 3 + ["occupied"] * 2
            assert {g["door"]: g["order_no"] for g in grid if g["order_no"]}[8] in {"L1", "L2"}

    asyncio.run(main())


def test_a_deposit_door_left_open_keeps_the_compartment_out_of_use(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path, close_timeout=0.4, person=False) as r:
            with pytest.raises(DoorNotClosed) as info:
                await r.bank.deposit("E1", "S")
            assert info.value.door == 1
            assert await r.outbox("locker_deposit") == []  # no code was minted
            r.board.close_door(1)  # closed later: the parcel may well be inside
            row = (await r.bank.grid())[0]
            assert row["state"] == "open" and row["order_no"] == "E1"
            task = asyncio.create_task(shut_doors(r.board))
            try:
                assert (await r.bank.deposit("E2", "S"))["door"] == 2
                assert (await r.bank.open_door(1, "tech-2", "check E1"))["cleared"]
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    asyncio.run(main())


def test_repeated_wrong_codes_rate_limit_the_bank_for_a_while(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            code = (await r.bank.deposit("F1", "M"))["code"]
            for _ in range(5):
                assert (await r.bank.pickup(typo(code), LANE))["reason"] == "malformed"
                r.clock.now += 5
            res = await r.bank.pickup(code, LANE)  # even the right code waits
            assert res["reason"] == "rate_limited" and not res["ok"] and "稍候" in res["line_zh"]
            # The budget is the bank's: another reader of the same wall is locked too.
            assert (await r.bank.pickup(code, "other-lane"))["reason"] == "rate_limited"
            r.clock.now += 61
            assert (await r.bank.pickup(code, LANE))["ok"]

    asyncio.run(main())


def test_open_all_opens_every_door_and_is_audited(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path, person=False) as r:
            r.board.set_stuck(6)
            sub = r.bus.subscribe({"locker"})
            res = await r.bank.open_all("tech-9", "fire drill")
            assert res["opened"] == [1, 2, 3, 4, 5, 7, 8] and res["failed"] == [6]
            assert all(r.board.is_open(d) for d in res["opened"])
            assert await r.audit_rows() == [
                ("tech-9", "locker_open_all_start", "wall"),  # on record before a door moves
                ("tech-9", "locker_open_all", "wall"),
            ]
            assert "fire drill" in r.audits[1][3] and "[6]" in r.audits[1][3]
            told = [e.data for e in sub.pending() if e.data["event"] == "technician_open"]
            assert [(d["door"], d["opened"], d["actor"]) for d in told][5] == (6, False, "tech-9")
            assert (await r.states())[6] == "fault"
            with pytest.raises(LockerError, match="no door 9"):
                await r.bank.open_door(9, "tech-9", "typo")

    asyncio.run(main())


def test_a_resent_code_replaces_the_old_one_and_cancel_takes_the_parcel_back(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            old = (await r.bank.deposit("G1", "M"))["code"]
            new = await r.bank.reissue(3, "staff-3")
            assert new["code"] != old and new["door"] == 3 and new["printed"] and new["reissued"]
            assert r.slips[-1]["code"] == new["code"]
            assert (await r.bank.pickup(old, "l1"))["reason"] == "revoked"
            assert (await r.bank.pickup(new["code"], "l2"))["ok"]
            await settled(r)  # the customer shut door 3: it is free again

            code = (await r.bank.deposit("G2", "M"))["code"]
            back = await r.bank.cancel(3, "staff-3", "customer cancelled the order")
            assert back["opened"] and back["cancelled"]
            assert (await r.bank.pickup(code, "l3"))["reason"] == "revoked"
            actions = [a for _, a, _ in await r.audit_rows()]
            assert actions == ["locker_reissue", "locker_cancel_start", "locker_cancel"]
            with pytest.raises(LockerError, match="no active pickup"):
                await r.bank.reissue(4, "staff-3")

    asyncio.run(main())


def test_a_board_that_is_down_refuses_deposits_and_keeps_codes_valid(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            code = (await r.bank.deposit("H1", "S"))["code"]
            r.slot.mark_down("unplugged", "check the RS485 cable")
            with pytest.raises(LockerUnavailable, match="unplugged"):
                await r.bank.deposit("H2", "S")
            res = await r.bank.pickup(code, LANE)
            assert res["reason"] == "locker_down" and "still valid" in res["line_en"]
            assert [g["sensor"] for g in await r.bank.grid()] == [None] * 8
            assert (await r.bank.grid())[0]["state"] == "occupied"
            r.slot.mark_up()
            assert (await r.bank.pickup(code, LANE))["ok"]

    asyncio.run(main())


def test_codes_are_seven_digits_outside_the_cloud_namespace(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    try:
        assert ledger.conn.execute("PRAGMA user_version").fetchone()[0] == LEDGER_SCHEMA.version
        assert LEDGER_SCHEMA.version >= 4
        store = PickupStore(ledger)
        codes = [store.mint("wall", door, f"O{door}", "M", NOW + 3600, NOW) for door in range(200)]
        assert len(set(codes)) == 200
        for code in codes:
            assert len(code) == 7 and damm_valid(code) and is_pickup_code(code)
            with pytest.raises(CodeError):  # the cloud-code parser refuses every pickup code
                parse_code(code)
        statements: list[str] = []
        ledger.conn.set_trace_callback(statements.append)
        for n in range(8, 17):  # well-formed cloud short codes of every length
            body = "7" * (n - 1)
            cloud = body + damm_check_digit(body)
            assert not is_pickup_code(cloud)
            assert store.lookup(cloud, NOW).reason == "malformed"
        assert store.lookup(typo(codes[0]), NOW).reason == "malformed"
        assert not [s for s in statements if "pickups" in s]  # nothing was looked up
        ledger.conn.set_trace_callback(None)

        old = store.lookup(codes[0], NOW).pickup
        assert old is not None
        new, p = store.reissue(old.id, NOW + 10, "staff-2")
        assert new != codes[0] and p.door == old.door and p.replaces == old.id
        assert store.lookup(codes[0], NOW + 11).reason == "revoked"
        assert store.lookup(new, NOW + 11).reason == "ok"
        bodies = [json.loads(b) for (b,) in ledger.conn.execute("SELECT body FROM outbox")]
        assert bodies[-2]["type"] == "locker_cancelled"
        assert bodies[-1]["body"]["replaces"] == old.id.hex()
        assert not any(c in json.dumps(bodies) for c in [*codes, new])
        with pytest.raises(sqlite3.IntegrityError):  # one active pickup per door
            store.mint("wall", 5, "dup", "M", NOW + 1, NOW)
    finally:
        ledger.close()


# -- regression tests for the review of the lockers -----------------------------------------------


async def mint(r: Rig, door: int, order_no: str, expires_at: float = NOW + 3600) -> str:
    """A parcel already in `door` (no person needed at the wall)."""
    return await r.db.call(r.store.mint, "wall", door, order_no, "M", expires_at, NOW)


def test_a_pickup_answers_once_the_door_is_open_and_is_recorded_when_it_closes(
    tmp_path: Path,
) -> None:
    """Finding 10: the lane's turn is not held while the customer stands at the open door."""

    async def main() -> None:
        async with rig(tmp_path, close_timeout=3.0, person=False) as r:
            code = await mint(r, 3, "K1")
            t0 = asyncio.get_running_loop().time()
            res = await r.bank.pickup(code, LANE)
            assert asyncio.get_running_loop().time() - t0 < 1.0  # not the 3 s close timeout
            assert res["ok"] and res["door"] == 3 and r.board.is_open(3)
            assert len(r.bank.pending_tasks) == 1
            assert await r.outbox("locker_pickup") == []  # not taken yet: the door is open
            (opening,) = await r.outbox("locker_pickup_opening")  # but on record already
            assert opening["body"]["redemption_id"] == res["redemption_id"]

            r.board.close_door(3)
            await settled(r)
            (picked,) = await r.outbox("locker_pickup")
            assert picked["body"]["door_closed"] is True
            assert picked["body"]["redemption_id"] == res["redemption_id"]
            assert (await r.states())[3] == "free"

            # Left open at shutdown: close() records it (door_closed False), never lost.
            other = await mint(r, 4, "K2")
            assert (await r.bank.pickup(other, LANE))["ok"] and r.board.is_open(4)
            await asyncio.wait_for(r.bank.close(), 2.0)
            await r.bank.close()  # idempotent
            assert not r.bank.pending_tasks
            bodies = [e["body"] for e in await r.outbox("locker_pickup")]
            assert [(b["door"], b["door_closed"]) for b in bodies] == [(3, True), (4, False)]
            assert (await r.bank.pickup(code, LANE))["reason"] == "locker_down"

    asyncio.run(main())


def test_a_pickup_that_expires_while_its_door_is_open_is_still_recorded(tmp_path: Path) -> None:
    """Finding 2: maintenance's expiry does not steal a pickup whose door is open, and staff
    cannot cancel or re-send a code while its door is in use."""

    async def main() -> None:
        async with rig(tmp_path, person=False) as r:
            code = await mint(r, 3, "X1", expires_at=NOW + 10)
            r.clock.now = NOW + 9  # the customer scans just in time
            pick = asyncio.create_task(r.bank.pickup(code, LANE))
            await until(lambda: r.board.is_open(3), "door 3 open")
            r.clock.now = NOW + 30  # ... and is still at the door when maintenance runs
            assert await r.bank.expire() == []
            with pytest.raises(LockerError, match="in use"):
                await r.bank.cancel(3, "staff", "customer called")
            with pytest.raises(LockerError, match="in use"):
                await r.bank.reissue(3, "staff")
            assert (await pick)["ok"]
            r.board.close_door(3)
            await settled(r)
            assert len(await r.outbox("locker_pickup")) == 1
            assert (
                await r.outbox("locker_expired") == [] and await r.outbox("locker_cancelled") == []
            )
            assert (await r.states())[3] == "free"
            assert await r.audit_rows() == []  # nothing was done by staff

            # The store itself: a pickup found expired when its door opened is still taken,
            # and the door's `expired` hold goes with it.
            late = await mint(r, 5, "X2", expires_at=NOW + 20)
            (p,) = await r.db.call(r.store.expire, NOW + 30, "wall")
            assert p.door == 5 and (await r.states())[5] == "expired"
            await r.db.call(r.store.mark_picked, p.id, NOW + 31, LANE)
            assert (await r.states())[5] == "free"
            assert (await r.bank.pickup(late, LANE))["reason"] == "already_used"

    asyncio.run(main())


def test_a_crash_mid_pickup_or_mid_deposit_is_resolved_at_the_next_start(tmp_path: Path) -> None:
    """Finding 3: the intents are durable before the doors move; a crash leaves them behind and
    the next start resolves them on the safe side, with an alert for staff."""
    ledger = Ledger(tmp_path / "ledger.db")
    try:
        store = PickupStore(ledger, now=NOW)
        code = store.mint("wall", 3, "P1", "M", NOW + 3600, NOW)
        p = store.lookup(code, NOW).pickup
        assert p is not None
        began = store.begin_pickup(p.id, LANE, NOW + 1)  # what the bank commits before unlock
        assert began.ok and began.pickup is not None and began.pickup.state == "opening"
        store.begin_deposit("wall", 5, "P2", NOW + 2)  # ... and before a deposit's unlock
        rid = began.pickup.redemption_id
        assert rid is not None
    finally:
        ledger.close()  # the box dies here: nothing resolves either intent

    async def main() -> None:
        async with rig(tmp_path) as r:
            assert sorted(x["door"] for x in r.bank.recovered) == [3, 5]
            alerts = [e.data for e in r.bus.recent if e.data.get("event") == "alert"]
            assert sorted(a["door"] for a in alerts) == [3, 5]
            (picked,) = await r.outbox("locker_pickup")
            assert picked["body"]["door_closed"] is None
            assert picked["body"]["redemption_id"] == rid.hex()  # the id announced at opening
            assert (await r.bank.pickup(code, LANE))["reason"] == "already_used"
            held = [e["body"] for e in await r.outbox("locker_door_fault")]
            assert [(h["door"], h["order_no"]) for h in held] == [(5, "P2")]
            grid = {g["door"]: g for g in await r.bank.grid()}
            assert (grid[3]["state"], grid[5]["state"], grid[5]["order_no"]) == (
                "free",
                "open",
                "P2",
            )
            doors = [(await r.bank.deposit(f"P{n}", "M"))["door"] for n in (3, 4, 5)]
            assert doors == [3, 4, 6]  # door 5 waits for staff: the parcel may be inside

    asyncio.run(main())
    ledger = Ledger(tmp_path / "ledger.db")  # resolved once: a later start finds nothing
    try:
        assert PickupStore(ledger).recovered == []
    finally:
        ledger.close()


def test_a_deposit_whose_code_cannot_be_recorded_keeps_its_door_for_staff(
    tmp_path: Path,
) -> None:
    """Finding 3: the ledger refuses writes after the parcel went in (as on a full disk):
    the deposit fails clearly and its door is never handed to the next deposit."""

    async def main() -> None:
        async with rig(tmp_path, person=False) as r:

            async def hand_then_disk_full() -> None:
                await until(lambda: r.board.is_open(1), "door 1 open")
                await r.db.call(r.store.conn.execute, "PRAGMA query_only=1")
                r.board.close_door(1)

            hand = asyncio.create_task(hand_then_disk_full())
            with pytest.raises(LockerError, match="held for staff"):
                await r.bank.deposit("Q1", "S")
            await hand
            await r.db.call(r.store.conn.execute, "PRAGMA query_only=0")
            assert await r.outbox("locker_deposit") == []
            row = (await r.bank.grid())[0]
            assert (row["state"], row["order_no"]) == ("open", "Q1")
            person = asyncio.create_task(shut_doors(r.board))
            try:
                assert (await r.bank.deposit("Q2", "S"))["door"] == 2
            finally:
                person.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await person

    asyncio.run(main())
    ledger = Ledger(tmp_path / "ledger.db")  # after a restart door 1 is still held for Q1
    try:
        store = PickupStore(ledger)
        assert [(x["door"], x["order_no"]) for x in store.recovered] == [(1, "Q1")]
        assert store.door_flags("wall")[1].held == "open"
    finally:
        ledger.close()


def test_wrong_codes_count_per_bank_double_the_lockout_and_survive_a_restart(
    tmp_path: Path,
) -> None:
    """Finding 6: one budget for the whole wall, a longer lockout each time, a staff alert, and
    another bank's code answered exactly like a code that does not exist."""

    async def main() -> None:
        async with rig(tmp_path) as r:
            code = await mint(r, 3, "R1")
            hall = await r.db.call(r.store.mint, "hall", 1, "H1", "M", NOW + 3600, NOW)
            nobody = next(c for c in iter(new_code, None) if c not in (code, hall))
            a = await r.bank.pickup(hall, "lane-1")
            b = await r.bank.pickup(nobody, "lane-2")
            assert (
                (a["reason"], a["detail"])
                == (b["reason"], b["detail"])
                == (
                    "unknown_code",
                    "no pickup with this code",
                )
            )
            sub = r.bus.subscribe({"locker"})
            for n in range(3):  # five wrong codes from five readers
                await r.bank.pickup(typo(code), f"lane-{n + 3}")
            assert (await r.bank.pickup(code, "lane-9"))["reason"] == "rate_limited"
            (alert,) = [e.data for e in sub.pending() if e.data["event"] == "rate_limited"]
            assert alert["alert"] and alert["lockout_s"] == 60
            (rec,) = await r.outbox("locker_rate_limited")
            assert rec["body"]["lockout_s"] == 60

            r.clock.now += 61
            for _ in range(5):
                await r.bank.pickup(nobody, "lane-1")
            r.clock.now += 61  # a second lockout lasts twice as long
            assert (await r.bank.pickup(code, "lane-1"))["reason"] == "rate_limited"
            again = LockerBank(r.bank.cfg, r.slot, r.db, r.store, r.bus, clock=r.clock)
            assert (await again.pickup(code, "lane-1"))["reason"] == "rate_limited"  # restart
            r.clock.now += 60
            assert (await r.bank.pickup(code, "lane-1"))["ok"]

    asyncio.run(main())


def test_a_reissued_slip_prints_with_the_real_template(tmp_path: Path) -> None:
    """Finding 7: the re-sent code's slip passes the pickup_slip template."""

    async def main() -> None:
        async with rig(tmp_path) as r:
            await r.bank.deposit("S1", "M")
            new = await r.bank.reissue(3, "staff")
            assert new["reissued"] and new["printed"]
            job = render("pickup_slip", r.slips[-1])
            assert any(new["code"] in str(item) for item in job.items)
            render("pickup_slip", r.slips[0])

    asyncio.run(main())


def test_without_a_receipt_printer_the_deposit_says_the_slip_was_not_printed(
    tmp_path: Path,
) -> None:
    """Finding 8: the Box's slip printer refuses when none is configured."""
    from edge.box import Box
    from edge.config import BoxConfig, Policy
    from edge.spool import PrintSpool

    async def main() -> None:
        cfg = BoxConfig(
            tmp_path / "edge.toml", "site", "box", tmp_path / "anchor.json", tmp_path, Policy(), {}
        )
        box = Box(cfg, token="t")
        box.spool = PrintSpool(tmp_path / "spool.db", cfg.printing, {}, box.bus)  # no printer
        try:
            async with rig(tmp_path, print_slip=box._print_slip) as r:
                sub = r.bus.subscribe({"locker"})
                got = await r.bank.deposit("N1", "S")
                assert got["printed"] is False and len(got["code"]) == 7
                whats = [e.data.get("what", "") for e in sub.pending()]
                assert any("not printed" in w and "receipt" in w for w in whats), whats
        finally:
            await box.close()

    asyncio.run(main())


def test_a_wall_without_lock_power_is_unavailable_not_all_faulty(tmp_path: Path) -> None:
    """Finding 9: the second door in a row that does not open stops the deposit."""

    async def main() -> None:
        async with rig(tmp_path) as r:
            for door in range(1, 9):
                r.board.set_stuck(door)
            with pytest.raises(LockerUnavailable, match="lock power"):
                await r.bank.deposit("W1")
            assert len(r.board.unlocks()) == 2
            assert [e["body"]["door"] for e in await r.outbox("locker_door_fault")] == [1]
            states = await r.states()
            assert states[1] == "fault" and all(states[d] == "free" for d in range(2, 9))

    asyncio.run(main())


def test_a_stopping_bank_takes_no_new_deposits_or_pickups(tmp_path: Path) -> None:
    """Finding 15."""

    async def main() -> None:
        async with rig(tmp_path) as r:
            code = await mint(r, 3, "T1")
            r.bank.stopping = True  # what the Box sets when it starts stopping
            with pytest.raises(Stopping):
                await r.bank.deposit("T2", "S")
            res = await r.bank.pickup(code, LANE)
            assert res["reason"] == "locker_down" and "still valid" in res["line_en"]
            with pytest.raises(Stopping):
                await r.bank.cancel(3, "staff", "late")
            assert r.board.unlocks() == [] and await r.outbox("locker_pickup_opening") == []
            assert (await r.states())[3] == "occupied"

    asyncio.run(main())


def test_technician_door_commands_are_on_record_before_the_door_moves(tmp_path: Path) -> None:
    """Finding 16: open_door and cancel write their audit intent first; no record, no move."""

    async def main() -> None:
        async with rig(tmp_path, person=False) as r:
            await mint(r, 3, "U1")
            seen: list[tuple[str, bool]] = []
            audit = r.bank.audit
            assert audit is not None

            async def watching(actor: str, action: str, target: str, detail: str) -> None:
                seen.append((action, r.board.is_open(3)))
                await audit(actor, action, target, detail)

            r.bank.audit = watching
            await r.bank.open_door(3, "tech", "look inside")
            r.board.close_door(3)
            await r.bank.cancel(3, "tech", "order cancelled")
            assert seen == [
                ("locker_open_door_start", False),
                ("locker_open_door", True),
                ("locker_cancel_start", False),
                ("locker_cancel", True),
            ]

            async def broken(actor: str, action: str, target: str, detail: str) -> None:
                raise sqlite3.OperationalError("disk I/O error")

            r.board.close_door(3)
            r.bank.audit = broken
            unlocks = len(r.board.unlocks())
            with pytest.raises(sqlite3.OperationalError):
                await r.bank.open_door(3, "tech", "unrecorded")
            with pytest.raises(sqlite3.OperationalError):
                await r.bank.open_all("tech", "unrecorded")
            assert len(r.board.unlocks()) == unlocks and not r.board.is_open(3)

    asyncio.run(main())


def test_a_second_scan_during_a_pickup_gets_the_first_scans_answer(tmp_path: Path) -> None:
    """Finding 21: the same slip scanned twice while its stuck door is tried is not told
    "door open"; and while the door really is open it is, with the same redemption."""

    async def main() -> None:
        async with rig(tmp_path, person=False) as r:
            code = await mint(r, 3, "V1")
            r.board.set_stuck(3)
            a, b = await asyncio.gather(r.bank.pickup(code, "l1"), r.bank.pickup(code, "l2"))
            assert (a["reason"], b["reason"]) == ("door_fault", "door_fault")
            assert len(r.board.unlocks()) == 1  # one unlock for both scans
            await r.bank.open_door(3, "tech", "freed the latch")  # clears the fault
            r.board.set_stuck(3, False)
            r.board.close_door(3)
            first = await r.bank.pickup(code, "l1")
            again = await r.bank.pickup(code, "l2")
            assert first["ok"] and again["ok"] and again["door"] == 3
            assert again["redemption_id"] == first["redemption_id"]
            r.board.close_door(3)
            await settled(r)
            assert (await r.bank.pickup(code, "l3"))["reason"] == "already_used"
            assert len(await r.outbox("locker_pickup")) == 1

    asyncio.run(main())


def test_a_version_3_ledger_keeps_its_pickups_and_doors_when_migrated(tmp_path: Path) -> None:
    """Migration 4 rebuilds the two tables (new states) without losing a row."""
    v3 = tmp_path / "v3.db"
    conn = open_db(v3, Schema("ledger", LEDGER_SCHEMA.migrations[:3]), create=True)
    conn.execute(
        "INSERT INTO pickups (id, code_hash, code_fp, device, door, order_no, size, state, "
        "created_at, expires_at, updated_at) VALUES (x'01', x'02', '02', 'wall', 3, 'O1', 'M', "
        "'active', 1, 2, 1)"
    )
    conn.execute(
        "INSERT INTO locker_doors (device, door, held, order_no, updated_at) "
        "VALUES ('wall', 4, 'open', 'O2', 1)"
    )
    conn.close()
    ledger = Ledger(v3)
    try:
        assert ledger.conn.execute("PRAGMA user_version").fetchone()[0] == LEDGER_SCHEMA.version
        store = PickupStore(ledger, now=NOW)
        assert store.get(b"\x01").order_no == "O1" and set(store.active("wall")) == {3}
        assert store.door_flags("wall")[4].held == "open"
        store.begin_deposit("wall", 5, "O3", NOW)  # the new states are accepted
        assert store.door_flags("wall")[5].held == "deposit"
    finally:
        ledger.close()
