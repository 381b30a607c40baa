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
from edge.config import DeviceConfig, LockerBankConfig
from edge.devices import DeviceSlot, make_slot
from edge.ledger import LEDGER_SCHEMA, Ledger
from edge.lockers import DoorNotClosed, LockerBank, LockerError, LockerFull, LockerUnavailable
from edge.pickups import PickupStore, is_pickup_code, new_code
from edge.runner import Runner
from edge.store import transaction
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
    tmp_path: Path, *, close_timeout: float = 3.0, person: bool = True, **kw: Any
) -> AsyncIterator[Rig]:
    bus = EventBus()
    bus.bind(asyncio.get_running_loop())
    slot = make_slot(DeviceConfig("wall", "locker", "sim", URL), bus)
    db = Runner("db")
    path = tmp_path / "ledger.db"
    ledger: Ledger | None = None
    task: asyncio.Task[None] | None = None
    try:
        assert await slot.open(), slot.error
        ledger = await db.call(Ledger, path)
        store = PickupStore(ledger)
        clock = Clock()
        cfg = LockerBankConfig("wall", SIZES, 48.0, close_timeout)
        r = Rig(None, slot, db, store, bus, path, clock)  # type: ignore[arg-type]

        async def print_slip(slip: dict[str, Any]) -> None:
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
        r.bank = LockerBank(cfg, slot, db, store, bus, print_slip, audit, clock, **kw)
        if person:
            task = asyncio.create_task(shut_doors(r.board))
        yield r
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if ledger is not None:
            await db.call(ledger.close)
        db.close()
        await slot.close()


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
            assert res["door_closed"] and not r.board.is_open(3)
            assert (await r.states())[3] == "free"
            events = [e.data.get("event") for e in sub.pending()]
            assert "door_open" in events and "deposit" in events

            (deposit,) = await r.outbox("locker_deposit")
            (picked,) = await r.outbox("locker_pickup")
            assert deposit["body"]["door"] == 3 and deposit["body"]["order_no"] == "A1001"
            assert picked["body"]["state"] == "confirmed" and picked["body"]["lane"] == LANE
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
            assert len(await r.outbox("locker_pickup")) == 1

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
            assert await r.audit_rows() == [("tech-1", "locker_open_door", "wall:3")] * 2
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


def test_repeated_wrong_codes_rate_limit_the_lane_for_a_while(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            code = (await r.bank.deposit("F1", "M"))["code"]
            for _ in range(5):
                assert (await r.bank.pickup(typo(code), LANE))["reason"] == "malformed"
                r.clock.now += 5
            res = await r.bank.pickup(code, LANE)  # even the right code waits
            assert res["reason"] == "rate_limited" and not res["ok"] and "稍候" in res["line_zh"]
            assert (await r.bank.pickup("1234567", "other-lane"))["reason"] != "rate_limited"
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
            assert new["code"] != old and new["door"] == 3 and new["printed"]
            assert r.slips[-1]["code"] == new["code"] and r.slips[-1]["reissued"]
            assert (await r.bank.pickup(old, "l1"))["reason"] == "revoked"
            assert (await r.bank.pickup(new["code"], "l2"))["ok"]

            code = (await r.bank.deposit("G2", "M"))["code"]
            back = await r.bank.cancel(3, "staff-3", "customer cancelled the order")
            assert back["opened"] and back["cancelled"]
            assert (await r.bank.pickup(code, "l3"))["reason"] == "revoked"
            actions = [a for _, a, _ in await r.audit_rows()]
            assert actions == ["locker_reissue", "locker_cancel"]
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
        assert ledger.conn.execute("PRAGMA user_version").fetchone()[0] == 3
        assert LEDGER_SCHEMA.version == 3
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
