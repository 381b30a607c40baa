"""The print spool on simulated printers (the real ESC/POS driver over TCP to the sim printer):
station routing, once-per-id printing, paper out, failover, reprint, crash recovery, templates,
outcome reporting, pruning, pickup codes kept out of spool.db, site time on tickets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from drivers.errors import DeviceOperationError
from drivers.printer import Printer, PrinterNotReady
from drivers.printer.job import Text
from drivers.printer.sim import SimPrinter
from drivers.printer.simstate import EscposMachine
from edge.bus import Event, EventBus
from edge.config_sections import DeviceConfig, PrintingConfig
from edge.devices import DeviceDown, DeviceSlot, make_slot
from edge.errors import EdgeError, NotFound
from edge.spool import JobIdConflict, PrintSpool
from edge.spool_db import SPOOL_SCHEMA
from edge.store import Schema, open_db
from edge.templates import TEMPLATES, TemplateError, job_from_json, job_to_json, render
from tests.daemon_kit import jobs, make_site, printed, running

NOW = 1_777_600_800.0  # 2026-05-01 02:00 UTC: 10:00 in Shanghai, 22:00 the day before in New York
DAY = 86400.0
SIM = "sim://?profile=tm-t20&timeout=0.3"
DEAD = "sim://?profile=tm-t20&reply=none&timeout=0.2"
KITCHEN = {
    "station": "hot",
    "table": "5",
    "order_no": "K1",
    "items": [{"name": "宫保鸡丁", "qty": 1, "note": "少辣"}],
    "time": "12:30",
}
ORDER = {
    "id": "A17",
    "table": "12",
    "items": [
        {"name": "宫保鸡丁", "qty": 1, "price_cents": 3800, "station": "hot", "note": "少辣"},
        {"name": "啤酒 Beer", "qty": 2, "price_cents": 1200, "station": "bar"},
        {"name": "米饭 Rice", "qty": 2, "price_cents": 200, "station": "hot"},
        {"name": "纸巾 Napkins", "qty": 1, "price_cents": 100},
    ],
}


@dataclass
class Rig:
    spool: PrintSpool
    slots: dict[str, DeviceSlot]
    bus: EventBus
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def machine(self, name: str) -> EscposMachine:
        device = self.slots[name].device
        assert isinstance(device, SimPrinter) and device.server is not None
        return device.server.machine

    def text(self, name: str) -> list[str]:
        return self.machine(name).text

    def seen(self, topic: str, **match: Any) -> list[Event]:
        return [
            e
            for e in self.bus.recent
            if e.topic == topic and all(e.data.get(k) == v for k, v in match.items())
        ]

    async def state(self, job_id: str, *states: str, timeout: float = 5.0) -> dict[str, Any]:
        """Wait until the job is in one of `states`; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.spool.job(job_id)
            assert job is not None
            if job["state"] in states or time.monotonic() > deadline:
                assert job["state"] in states, job
                return job
            await asyncio.sleep(0.02)


def printing(**kw: Any) -> PrintingConfig:
    base: dict[str, Any] = dict(
        receipt="counter",
        stations={"hot": ("hot1",), "bar": ("bar1",)},
        failover_after_s=0.5,
        retry_max_s=0.3,
        shop="测试小馆 Test Bistro",
    )
    return PrintingConfig(**(base | kw))


@contextlib.asynccontextmanager
async def rig(
    path: Path, urls: dict[str, str], cfg: PrintingConfig, *, run: bool = True, **spool_kw: Any
) -> AsyncIterator[Rig]:
    bus = EventBus(recent=1000)
    bus.bind(asyncio.get_running_loop())
    slots = {n: make_slot(DeviceConfig(n, "printer", "sim", u), bus) for n, u in urls.items()}
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    spool: PrintSpool | None = None
    try:
        for slot in slots.values():
            # A printer that does not answer is down from the start (the daemon's reopen loop
            # would keep trying); the spool must cope with both.
            assert await slot.open() or "reply=none" in slot.cfg.url, slot.error
        records: list[tuple[str, dict[str, Any]]] = []
        record = spool_kw.pop("record", lambda k, b: _append(records, k, b))
        spool = spool_kw.pop("cls", PrintSpool)(path, cfg, slots, bus, record, **spool_kw)
        r = Rig(spool, slots, bus, records)
        if run:
            task = asyncio.create_task(spool.run(stop))
        yield r
    finally:
        stop.set()
        if task is not None:
            await task
        if spool is not None:
            await spool.close()
        for slot in slots.values():
            await slot.close()
        bus.close()


def count(lines: list[str], text: str) -> int:
    return sum(text in line for line in lines)


def test_order_split_by_station_with_receipt_and_resubmit_prints_nothing_more(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        urls = {"hot1": SIM, "bar1": SIM, "counter": SIM}
        async with rig(tmp_path / "spool.db", urls, printing()) as r:
            jobs = await r.spool.submit_order(ORDER)
            ids = [j["id"] for j in jobs]
            assert ids == ["order-A17-hot", "order-A17-bar", "order-A17-receipt"]
            assert [j["printer"] for j in jobs] == ["hot1", "bar1", "counter"]
            for job_id in ids:
                await r.state(job_id, "printed")
            hot, bar, counter = r.text("hot1"), r.text("bar1"), r.text("counter")
            assert "1 x 宫保鸡丁" in hot and "2 x 米饭 Rice" in hot
            assert any("备注 Note: 少辣" in line for line in hot)
            assert "桌号 Table 12" in hot and "档口 Station hot" in hot
            assert not any("啤酒" in line for line in hot)
            assert "2 x 啤酒 Beer" in bar and not any("宫保" in line for line in bar)
            # The counter gets every item, napkins too, and the total.
            assert count(counter, "宫保鸡丁 x1") == 1 and count(counter, "纸巾 Napkins x1") == 1
            total = next(line for line in counter if "合计 Total" in line)
            assert total.endswith("￥67.00")  # 38 + 2 x 12 + 2 x 2 + 1
            assert count(counter, "测试小馆 Test Bistro") == 1
            printed = [b for k, b in r.records if k == "print_result" and b["state"] == "printed"]
            assert sorted(b["job"] for b in printed) == sorted(ids)

            before = {n: len(r.text(n)) for n in urls}
            again = await r.spool.submit_order(ORDER)
            assert [j["id"] for j in again] == ids
            assert {j["state"] for j in again} == {"printed"}
            await asyncio.sleep(0.4)
            assert {n: len(r.text(n)) for n in urls} == before
            assert await r.spool.queue_depths() == {"hot1": 0, "bar1": 0, "counter": 0}

    asyncio.run(main())


def test_bad_data_unknown_target_and_station_store_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(
            tmp_path / "spool.db",
            {"hot1": SIM},
            printing(receipt=None, stations={"hot": ("hot1",)}),
        ) as r:
            bad: list[tuple[str, dict[str, Any], str]] = [
                ("kitchen", {k: v for k, v in KITCHEN.items() if k != "table"}, "kitchen.table"),
                ("kitchen", KITCHEN | {"items": [{"name": "面", "qty": "two"}]}, "items[0].qty"),
                ("kitchen", KITCHEN | {"items": [{"name": "面\x1b@", "qty": 1}]}, "items[0].name"),
                ("kitchen", KITCHEN | {"tabel": "5"}, "kitchen.tabel"),
                ("kitchen", KITCHEN | {"items": []}, "kitchen.items"),
                ("menu", {}, "menu"),
            ]
            for template, data, where in bad:
                with pytest.raises(TemplateError, match=rf"print template .*{re.escape(where)}"):
                    await r.spool.submit(template, data, target="hot1", job_id="x1")
            with pytest.raises(ValueError, match="unknown print target 'printer9'"):
                await r.spool.submit("kitchen", KITCHEN, target="printer9")
            with pytest.raises(ValueError, match="unknown print station 'cold'"):
                await r.spool.submit("kitchen", KITCHEN, target="station:cold")
            with pytest.raises(ValueError, match="no receipt printer configured"):
                await r.spool.submit("test_page", {}, target="receipt")
            order = ORDER | {
                "items": [
                    *ORDER["items"][:1],
                    {"name": "沙拉", "qty": 1, "price_cents": 900, "station": "cold"},
                ]
            }
            with pytest.raises(ValueError, match=r"items\[1\].station.*'cold' is not configured"):
                await r.spool.submit_order(order)
            assert await r.spool.jobs() == []
            await asyncio.sleep(0.2)
            assert r.text("hot1") == []

    asyncio.run(main())


def test_paper_out_holds_the_queue_then_prints_each_job_once(tmp_path: Path) -> None:
    async def main() -> None:
        urls = {"p": SIM + "&paper=out"}
        async with rig(tmp_path / "spool.db", urls, printing(receipt="p", stations={})) as r:
            first = await r.spool.submit("kitchen", KITCHEN, target="p", job_id="cloud-1")
            held = await r.state(first["id"], "held")
            assert "缺纸" in held["last_error"] and "paper out" in held["last_error"]
            second = await r.spool.submit("kitchen", KITCHEN | {"table": "6"}, target="receipt")
            assert await r.spool.queue_depths() == {"p": 2}
            alerts = r.seen("device", device="p", alert="printer")
            assert alerts and "paper out" in alerts[0].data["error"]
            with pytest.raises(ValueError, match="still held"):
                await r.spool.reprint(first["id"], "alice")
            await asyncio.sleep(0.5)  # a few status polls while the paper is out
            assert (
                r.text("p") == [] and (await r.spool.job(second["id"]) or {})["state"] == "queued"
            )

            r.machine("p").load_paper()
            await r.state(second["id"], "printed")
            await asyncio.sleep(0.5)
            text = r.text("p")
            assert count(text, "桌号 Table 5") == 1 and count(text, "桌号 Table 6") == 1
            assert text.index("桌号 Table 5") < text.index("桌号 Table 6")  # queue order kept
            assert (await r.spool.job(first["id"]) or {})["state"] == "printed"
            assert r.seen("device", device="p", alert="")  # the alert cleared
            # The same cloud job id again: the existing job, no second ticket.
            again = await r.spool.submit("kitchen", KITCHEN, target="p", job_id="cloud-1")
            assert again["state"] == "printed"
            await asyncio.sleep(0.3)
            assert count(r.text("p"), "桌号 Table 5") == 1

    asyncio.run(main())


def test_paper_running_out_mid_job_is_incomplete_and_not_resent(tmp_path: Path) -> None:
    async def main() -> None:
        urls = {"p": SIM + "&paper_lines=3"}
        async with rig(tmp_path / "spool.db", urls, printing(receipt="p", stations={})) as r:
            job = await r.spool.submit("kitchen", KITCHEN, target="p")
            done = await r.state(job["id"], "incomplete")
            assert "缺纸" in done["last_error"] and "reprint" in done["last_error"]
            # A real printer keeps the rest of the job in its buffer and finishes it once paper
            # is loaded; the spool does not send it again on top of that.
            r.machine("p").load_paper()
            await asyncio.sleep(0.6)
            assert count(r.text("p"), "1 x 宫保鸡丁") == 1
            assert (await r.spool.job(job["id"]) or {})["state"] == "incomplete"
            again = await r.spool.reprint(job["id"], "alice")
            await r.state(again["id"], "printed")
            assert count(r.text("p"), "1 x 宫保鸡丁") == 2 and "重印 REPRINT" in r.text("p")
            assert [b["state"] for k, b in r.records] == ["incomplete", "printed"]

    asyncio.run(main())


def test_dead_primary_fails_over_to_the_station_backup(tmp_path: Path) -> None:
    async def main() -> None:
        urls = {"hot1": DEAD, "hot2": SIM}
        cfg = printing(receipt=None, stations={"hot": ("hot1", "hot2")})
        async with rig(tmp_path / "spool.db", urls, cfg) as r:
            direct = await r.spool.submit("test_page", {"printer": "hot1"}, target="hot1")
            job = await r.spool.submit("kitchen", KITCHEN, target="station:hot")
            assert job["printer"] == "hot1"
            start = time.monotonic()
            done = await r.state(job["id"], "printed")
            assert done["printer"] == "hot2" and time.monotonic() - start >= 0.4
            assert "1 x 宫保鸡丁" in r.text("hot2") and r.text("hot1") == []
            moved = r.seen("print", job=job["id"], state="failover")
            assert moved and moved[0].data["from_printer"] == "hot1"
            # The cloud hears of the failover once, and of the job's outcome once.
            assert [(k, b.get("state")) for k, b in r.records] == [
                ("print_failover", None),
                ("print_result", "printed"),
            ]
            assert r.records[0][1]["jobs"] == [job["id"]] and r.records[0][1]["to"] == ["hot2"]
            # The station's next job goes straight to the backup; a direct job stays queued.
            nxt = await r.spool.submit("kitchen", KITCHEN | {"table": "7"}, target="station:hot")
            assert nxt["printer"] == "hot2"
            await r.state(nxt["id"], "printed", timeout=1.0)
            waiting = await r.state(direct["id"], "queued")
            assert "无响应" in waiting["last_error"] and waiting["printer"] == "hot1"
            assert (await r.spool.queue_depths())["hot1"] == 1

    asyncio.run(main())


def test_reprint_is_a_new_job_with_a_banner(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path / "spool.db", {"counter": SIM}, printing(stations={})) as r:
            data = {
                "order_no": "R9",
                "items": [{"name": "咖啡", "qty": 1, "price_cents": 2500}],
                "paid_at": "2026-05-01 12:00",
            }
            job = await r.spool.submit("receipt", data, target="receipt")
            await r.state(job["id"], "printed")
            assert count(r.text("counter"), "重印 REPRINT") == 0
            again = await r.spool.reprint(job["id"], "alice")
            assert again["id"] != job["id"] and again["reprint_of"] == job["id"]
            assert again["actor"] == "alice"
            await r.state(again["id"], "printed")
            third = await r.spool.reprint(again["id"], "bob")  # names the first job, one banner
            assert third["reprint_of"] == job["id"]
            await r.state(third["id"], "printed")
            text = r.text("counter")
            assert count(text, "重印 REPRINT") == 2
            assert count(text, f"原单 Original job {job['id']}") == 2
            assert count(text, "单号 Order: R9") == 3
            banner = text.index("重印 REPRINT")
            assert banner < text.index("单号 Order: R9", banner)  # the banner comes first
            with pytest.raises(NotFound):
                await r.spool.reprint("nope", "alice")

    asyncio.run(main())


def test_job_left_sending_comes_back_uncertain_and_is_not_resent(tmp_path: Path) -> None:
    async def main() -> None:
        path, cfg = tmp_path / "spool.db", printing(receipt="slow", stations={})
        urls = {"slow": "sim://?profile=tm-t20&timeout=1&delay=0.2"}
        async with rig(path, urls, cfg) as r:
            job = await r.spool.submit("kitchen", KITCHEN, target="slow", source="cloud")
            while not r.seen("print", job=job["id"], state="sending"):
                await asyncio.sleep(0.01)
            await r.spool.close(grace=0.05)  # the box stops hard in the middle of the send
            # The abandoned send finishes on the printer's own thread (the bytes went out).
            await r.slots["slow"].runner.call(lambda: None)
            assert count(r.text("slow"), "1 x 宫保鸡丁") == 1

            again = PrintSpool(path, cfg, r.slots, r.bus, lambda k, b: _append(r.records, k, b))
            stop = asyncio.Event()
            task = asyncio.create_task(again.run(stop))
            try:
                back = await again.job(job["id"])
                assert back is not None and back["state"] == "uncertain"
                assert "may or may not have printed" in back["last_error"]
                assert [b["state"] for k, b in r.records] == ["uncertain"]
                assert await again.queue_depths() == {"slow": 0}
                await asyncio.sleep(0.6)
                assert count(r.text("slow"), "1 x 宫保鸡丁") == 1  # not sent a second time
                # Same id from the cloud again: still the one uncertain job.
                dup = await again.submit("kitchen", KITCHEN, target="slow", job_id=job["id"])
                assert dup["state"] == "uncertain"
            finally:
                stop.set()
                await task
                await again.close()

    asyncio.run(main())


async def _append(
    records: list[tuple[str, dict[str, Any]]], kind: str, body: dict[str, Any]
) -> None:
    records.append((kind, body))


SAMPLES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "kitchen": (KITCHEN, ["桌号 Table 5", "单号 Order K1", "1 x 宫保鸡丁"]),
    "receipt": (
        {
            "order_no": "R1",
            "items": [{"name": "茶", "qty": 2, "price_cents": 500}],
            "paid_at": "12:00",
            "qr": "https://e.example/r/R1",
        },
        ["单号 Order: R1", "谢谢惠顾 Thank you"],
    ),
    "pickup_slip": (
        {
            "locker": "A",
            "door": 7,
            "code": "8412-3390",
            "expires_at": 1_777_600_800.0,
            "order_no": "A17",
            "size": "M",
        },
        ["取货凭条 PICKUP SLIP", "取件码 Pickup code", "8412-3390", "有效期至 Valid until 2026-"],
    ),
    "shift_close": (
        {
            "cashier": "王芳",
            "opened_at": "08:00",
            "closed_at": "16:00",
            "by_product": {"成人票 Adult": 120, "儿童票 Child": 30},
            "by_reason": {"ok": 150, "already_used": 4},
            "total": 154,
        },
        ["交班汇总 SHIFT CLOSE", "按产品 By product", "按结果 By reason"],
    ),
    "redemption": (
        {"product": "成人票 Adult", "fingerprint": "7f3a9c", "time": "10:02", "lane": "entry"},
        ["核销凭证 REDEMPTION", "已核销 Redeemed"],
    ),
    "test_page": ({"printer": "hot1"}, ["打印测试 TEST PAGE", "打印正常 Printer OK"]),
}


def test_every_template_prints_chinese_and_english(tmp_path: Path) -> None:
    assert set(SAMPLES) == set(TEMPLATES)
    for name, (data, _) in SAMPLES.items():  # the stored form gives back the same document
        job = render(name, data, reprint_of="j1", shop="小馆")
        assert job_from_json(job_to_json(job)) == job
        assert isinstance(job.items[1], Text) and job.items[1].text == "重印 REPRINT"

    async def main() -> None:
        async with rig(tmp_path / "spool.db", {"p": SIM}, printing(receipt="p", stations={})) as r:
            for name, (data, _) in SAMPLES.items():
                source = "locker" if name == "pickup_slip" else "kiosk"
                await r.spool.submit(name, data, target="p", job_id=f"t-{name}", source=source)
            for name in SAMPLES:
                await r.state(f"t-{name}", "printed")
            text = r.text("p")
            for name, (_, expected) in SAMPLES.items():
                for line in expected:
                    assert any(line in t for t in text), (name, line)
            assert "8412-3390" in r.machine("p").qr  # the pickup QR carries the code
            assert "https://e.example/r/R1" in r.machine("p").qr
            assert any(t.startswith("柜号 Locker") and t.endswith("A") for t in text)

    asyncio.run(main())


def test_bad_template_data_names_the_field() -> None:
    data = dict(SAMPLES["shift_close"][0]) | {"by_reason": {"ok": -1}}
    with pytest.raises(TemplateError, match=r"shift_close\.by_reason\.ok: must be at least 0"):
        render("shift_close", data)
    data["by_reason"] = {"ok\x1b@": 1}
    with pytest.raises(TemplateError, match=r"shift_close\.by_reason\.ok.*control characters"):
        render("shift_close", data)
    with pytest.raises(TemplateError, match=r"pickup_slip\.door: must be at least 1"):
        render("pickup_slip", SAMPLES["pickup_slip"][0] | {"door": 0})
    with pytest.raises(TemplateError, match=r"receipt\.items\[0\]\.price_cents: missing"):
        render("receipt", {"order_no": "1", "items": [{"name": "茶", "qty": 1}], "paid_at": "x"})


# -- failover, devices, workers ---------------------------------------------------------------


def test_two_dead_station_printers_do_not_toss_a_job_back_and_forth(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = printing(receipt=None, stations={"hot": ("hot1", "hot2")}, failover_after_s=0.2)
        async with rig(tmp_path / "spool.db", {"hot1": DEAD, "hot2": DEAD}, cfg) as r:
            job = await r.spool.submit("kitchen", KITCHEN, target="station:hot")
            await asyncio.sleep(1.5)  # many failover periods
            waiting = await r.spool.job(job["id"])
            assert waiting is not None and waiting["state"] == "queued"
            assert waiting["printer"] == "hot1"  # no working printer to move it to
            assert not r.seen("print", state="failover") and r.records == []
            assert len(r.seen("print")) < 30  # retried with backoff, not spinning

    asyncio.run(main())


def test_a_job_moved_to_a_backup_out_of_paper_waits_there(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = printing(receipt=None, stations={"hot": ("hot1", "hot2")}, failover_after_s=0.2)
        urls = {"hot1": DEAD, "hot2": SIM + "&paper=out"}
        async with rig(tmp_path / "spool.db", urls, cfg) as r:
            job = await r.spool.submit("kitchen", KITCHEN, target="station:hot")
            await r.state(job["id"], "held")
            await asyncio.sleep(1.0)  # hot2 is in trouble too, and hot1 is still down
            assert len(r.seen("print", state="failover")) == 1
            assert [k for k, _ in r.records] == ["print_failover"]
            r.machine("hot2").load_paper()
            done = await r.state(job["id"], "printed")
            assert done["printer"] == "hot2" and count(r.text("hot2"), "1 x 宫保鸡丁") == 1

    asyncio.run(main())


def test_a_printer_that_loses_its_port_goes_down_but_paper_out_does_not() -> None:
    async def main() -> None:
        bus = EventBus(recent=100)
        bus.bind(asyncio.get_running_loop())
        usb = make_slot(
            DeviceConfig("usb", "printer", "sim", "sim://?transport=pty&timeout=0.2"), bus
        )
        empty = make_slot(DeviceConfig("empty", "printer", "sim", SIM + "&paper=out"), bus)
        try:
            assert await usb.open() and await empty.open()
            page = render("test_page", {})
            for _ in range(4):  # the printer answers "paper out": it is there, jobs wait
                with pytest.raises(PrinterNotReady):
                    await empty.call(Printer.print_job, page)
            assert empty.up
            device = usb.device
            assert isinstance(device, SimPrinter) and device.server is not None
            device.server.close()  # the cable is pulled: "serial port gone: EIO"
            for _ in range(3):
                with pytest.raises(DeviceOperationError, match="serial port gone"):
                    await usb.call(Printer.status)
            assert not usb.up and "serial port gone" in usb.error  # keep_open reopens it
            with pytest.raises(DeviceDown):
                await usb.call(Printer.status)
            down = [e.data for e in bus.recent if e.topic == "device" and not e.data["up"]]
            assert [e["device"] for e in down] == ["usb"]
        finally:
            await usb.close()
            await empty.close()
            bus.close()

    asyncio.run(main())


class CrashingSpool(PrintSpool):
    """A spool whose print worker crashes: six times at once, then after working a while."""

    RESTART_MIN_S, RESTART_MAX_S, HEALTHY_S = 0.01, 5.0, 0.3

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.starts: list[float] = []
        self.crashes: list[float] = []

    async def _worker(self, name: str) -> None:
        self.starts.append(time.monotonic())
        n = len(self.starts)
        if n == 7:
            await asyncio.sleep(0.4)  # works for longer than HEALTHY_S
        if n > 7:
            await self._halt.wait()
            return
        self.crashes.append(time.monotonic())
        raise RuntimeError(f"bug {n}")


def test_a_print_worker_that_had_been_working_restarts_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = printing(receipt="p", stations={})
        async with rig(tmp_path / "spool.db", {"p": SIM}, cfg, cls=CrashingSpool) as r:
            spool = r.spool
            assert isinstance(spool, CrashingSpool)
            while len(spool.starts) < 8:
                await asyncio.sleep(0.02)
            assert spool.starts[6] - spool.crashes[5] >= 0.3  # a crash loop backs off ...
            assert spool.starts[7] - spool.crashes[6] < 0.3  # ... a fresh fault starts over

    asyncio.run(main())


# -- job ids, outcomes, config changes ------------------------------------------------------


def test_a_job_id_taken_by_other_content_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        now = [NOW]
        urls = {"hot1": SIM, "bar1": SIM, "counter": SIM}
        async with rig(tmp_path / "spool.db", urls, printing(), clock=lambda: now[0]) as r:
            await r.spool.submit("kitchen", KITCHEN, target="hot1", job_id="cloud-9")
            same = await r.spool.submit("kitchen", KITCHEN, target="hot1", job_id="cloud-9")
            assert same["id"] == "cloud-9"
            other = KITCHEN | {"table": "9"}
            with pytest.raises(JobIdConflict, match="cloud-9") as caught:
                await r.spool.submit("kitchen", other, target="hot1", job_id="cloud-9")
            assert isinstance(caught.value, EdgeError)  # the API answers 409
            # The till sends the order again five minutes later: the same tickets (the time
            # the box stamps on them is not the order's content), nothing printed twice.
            ids = [j["id"] for j in await r.spool.submit_order(ORDER)]
            now[0] += 300
            assert [j["id"] for j in await r.spool.submit_order(ORDER)] == ids
            soup = {"name": "酸辣汤 Soup", "qty": 1, "price_cents": 900, "station": "hot"}
            with pytest.raises(JobIdConflict, match="order-A17-hot"):
                await r.spool.submit_order(ORDER | {"items": [*ORDER["items"], soup]})
            for job_id in ["cloud-9", *ids]:
                await r.state(job_id, "printed")
            await asyncio.sleep(0.3)
            hot = r.text("hot1")
            assert count(hot, "桌号 Table 5") == 1 and count(hot, "桌号 Table 12") == 1
            assert count(hot, "桌号 Table 9") == 0 and count(hot, "酸辣汤") == 0

    asyncio.run(main())


def test_an_outcome_the_outbox_missed_is_sent_again(tmp_path: Path) -> None:
    async def main() -> None:
        path, cfg = tmp_path / "spool.db", printing(receipt="p", stations={})
        sent: list[tuple[str, dict[str, Any]]] = []
        broken = [True]

        async def outbox(kind: str, body: dict[str, Any]) -> None:
            if broken[0]:
                raise OSError("outbox unavailable")
            sent.append((kind, body))

        async with rig(path, {"p": SIM}, cfg, record=outbox) as r:
            await r.spool.submit("test_page", {}, target="p", job_id="j1")
            await r.state("j1", "printed")
            broken[0] = False
            await r.spool.prune(time.time())  # just finished: left to the worker for now
            assert sent == []
            await r.spool.prune(time.time() + 61)  # the daemon's maintenance, a minute on
            assert [(k, b["job"], b["state"]) for k, b in sent] == [
                ("print_result", "j1", "printed")
            ]
            await r.spool.prune(time.time() + 61)
            assert len(sent) == 1
            broken[0] = True
            await r.spool.submit("test_page", {}, target="p", job_id="j2")
            await r.state("j2", "printed")
        # The box stopped before j2's outcome reached the outbox: the next start sends it.
        async with rig(path, {"p": SIM}, cfg) as r:
            await r.spool.open()
            assert [(k, b["job"], b["state"]) for k, b in r.records] == [
                ("print_result", "j2", "printed")
            ]
        async with rig(path, {"p": SIM}, cfg) as r:
            await r.spool.open()
            assert r.records == []  # sent once is enough

    asyncio.run(main())


def test_jobs_for_a_printer_removed_from_the_config_are_moved_or_failed(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "spool.db"
        before = printing(receipt="counter", stations={"hot": ("hot1",)})
        async with rig(path, {"hot1": SIM, "counter": SIM}, before, run=False) as r:
            await r.spool.submit("kitchen", KITCHEN, target="station:hot", job_id="k1")
            await r.spool.submit("test_page", {"printer": "counter"}, target="receipt", job_id="r1")
            await r.spool.submit("test_page", {"printer": "hot1"}, target="hot1", job_id="d1")
        # The kitchen swaps its printers and the counter gets a new till printer.
        after = printing(receipt="till", stations={"hot": ("hot2",)})
        async with rig(path, {"hot2": SIM, "till": SIM}, after) as r:
            assert (await r.state("k1", "printed"))["printer"] == "hot2"
            assert (await r.state("r1", "printed"))["printer"] == "till"
            failed = await r.state("d1", "failed")
            assert "no longer configured" in failed["last_error"]
            assert ("d1", "failed") in [(b["job"], b["state"]) for k, b in r.records]
            assert await r.spool.queue_depths() == {"hot2": 0, "till": 0}
            assert "1 x 宫保鸡丁" in r.text("hot2")

    asyncio.run(main())


# -- pickup slips, pruning, site time ---------------------------------------------------------


def test_a_pickup_slip_keeps_no_code_once_printed_and_is_never_reprinted(tmp_path: Path) -> None:
    async def main() -> None:
        slip = SAMPLES["pickup_slip"][0]
        async with rig(tmp_path / "spool.db", {"p": SIM}, printing(receipt="p", stations={})) as r:
            job = await r.spool.submit("pickup_slip", slip, target="receipt", source="locker")
            done = await r.state(job["id"], "printed")
            assert "8412-3390" in r.text("p") and "8412-3390" in r.machine("p").qr
            assert done["title"] == "pickup slip A 7" and (await r.spool.jobs())[0] == done
            with pytest.raises(ValueError, match="reissue the code from the locker"):
                await r.spool.reprint(job["id"], "alice")
            await r.spool.prune(time.time())  # the daemon's maintenance
            files = list(tmp_path.glob("spool.db*"))
            assert files and all(b"8412-3390" not in f.read_bytes() for f in files)
            await asyncio.sleep(0.2)
            assert count(r.text("p"), "取货凭条 PICKUP SLIP") == 1

    asyncio.run(main())


def test_old_final_jobs_are_pruned_but_their_ids_never_print_again(tmp_path: Path) -> None:
    async def main() -> None:
        urls = {"p": SIM, "q": SIM + "&paper=out"}
        async with rig(tmp_path / "spool.db", urls, printing(receipt="p", stations={})) as r:
            await r.spool.submit("kitchen", KITCHEN, target="p", job_id="cloud-1")
            await r.state("cloud-1", "printed")
            await r.spool.submit("test_page", {}, target="q", job_id="cloud-2")
            await r.state("cloud-2", "held")
            assert await r.spool.prune(time.time() + 29 * DAY) == 0
            assert await r.spool.prune(time.time() + 31 * DAY) == 1
            assert [j["id"] for j in await r.spool.jobs()] == ["cloud-2"]  # waiting: kept
            gone = await r.spool.job("cloud-1")
            assert (
                gone is not None and gone["state"] == "printed" and "pruned" in gone["last_error"]
            )
            again = await r.spool.submit("kitchen", KITCHEN, target="p", job_id="cloud-1")
            assert again["state"] == "printed"
            with pytest.raises(JobIdConflict):
                other = KITCHEN | {"table": "8"}
                await r.spool.submit("kitchen", other, target="p", job_id="cloud-1")
            with pytest.raises(NotFound, match="pruned"):
                await r.spool.reprint("cloud-1", "alice")
            await asyncio.sleep(0.3)
            assert count(r.text("p"), "桌号 Table 5") == 1

    asyncio.run(main())


def test_times_print_in_the_site_timezone(tmp_path: Path) -> None:
    async def main() -> None:
        zone = ["America/New_York"]
        cfg = printing(receipt="p", stations={"hot": ("p",)})
        kw: dict[str, Any] = {"clock": lambda: NOW, "site_tz": lambda: ZoneInfo(zone[0])}
        async with rig(tmp_path / "spool.db", {"p": SIM}, cfg, **kw) as r:
            slip = SAMPLES["pickup_slip"][0]  # expires at NOW
            await r.spool.submit("pickup_slip", slip, target="p", job_id="s1", source="locker")
            noodles = {"name": "面 Noodles", "qty": 1, "price_cents": 900, "station": "hot"}
            await r.spool.submit_order({"id": "T1", "items": [noodles]})
            zone[0] = "Asia/Shanghai"  # a new bundle says where the site is
            await r.spool.submit("pickup_slip", slip, target="p", job_id="s2", source="locker")
            for job_id in ("s1", "order-T1-hot", "order-T1-receipt", "s2"):
                await r.state(job_id, "printed")
            text = r.text("p")
            assert "有效期至 Valid until 2026-04-30 22:00" in text and "下单 Time 22:00" in text
            assert any("Paid 2026-04-30 22:00" in line for line in text)
            assert "有效期至 Valid until 2026-05-01 10:00" in text

    asyncio.run(main())


def test_the_daemon_prints_in_site_time_and_keeps_no_slip_codes(tmp_path: Path) -> None:
    site = make_site(tmp_path)  # the site is in Asia/Shanghai
    with running(site) as d:
        data = {"locker": "wall", "door": 3, "code": "5550123", "expires_at": NOW}
        body = {"template": "pickup_slip", "data": data, "target": "receipt", "id": "slip-1"}
        status, job = d.api("POST", "/api/v1/print/jobs", body)
        assert status == 200, job
        d.wait(lambda: jobs(d)["slip-1"]["state"] == "printed", what="slip printed")
        assert "有效期至 Valid until 2026-05-01 10:00" in printed(d, "receipt")
        status, err = d.api("POST", "/api/v1/print/jobs/slip-1/reprint", {"actor": "staff-li"})
        assert status == 400 and "reissue" in err["detail"], err
        status, err = d.api("POST", "/api/v1/print/jobs", body | {"data": data | {"door": 4}})
        assert status == 409 and "slip-1" in err["detail"], err
        d.run(d.box.maintenance())
        files = list(d.box.config.state_dir.glob("spool.db*"))
        assert files and all(b"5550123" not in f.read_bytes() for f in files)
    # maintenance() used the loop's default executor; daemon_kit closes the loop without waiting
    # for that thread to exit, so wait here rather than race the thread-leak check.
    for thread in threading.enumerate():
        if thread.name.startswith("asyncio_"):
            thread.join(5)


def test_a_spool_db_from_the_last_release_is_migrated_and_its_slip_codes_masked(
    tmp_path: Path,
) -> None:
    path, slip = tmp_path / "spool.db", SAMPLES["pickup_slip"][0]
    v1 = open_db(path, Schema("spool", SPOOL_SCHEMA.migrations[:1]), create=True)
    try:
        for job_id, template, data, state in [
            ("old-slip", "pickup_slip", slip, "printed"),
            ("old-ticket", "kitchen", KITCHEN, "queued"),
        ]:
            doc = json.dumps(job_to_json(render(template, data)), ensure_ascii=False)
            v1.execute(
                "INSERT INTO jobs (id, target, printer, template, title, data, document, state, "
                "created_at, updated_at, source) VALUES (?, 'p', 'p', ?, 't', ?, ?, ?, ?, ?, "
                "'kiosk')",
                (job_id, template, json.dumps(data), doc, state, time.time(), time.time()),
            )
    finally:
        v1.close()

    async def main() -> None:
        async with rig(path, {"p": SIM}, printing(receipt="p", stations={})) as r:
            await r.state("old-ticket", "printed")
            assert await r.spool.prune(time.time()) == 0  # recent: kept, with the code masked
            assert all(b"8412-3390" not in f.read_bytes() for f in tmp_path.glob("spool.db*"))
            # The old outcome is not sent again; the ticket that was still waiting is.
            assert [b["job"] for _, b in r.records] == ["old-ticket"]

    asyncio.run(main())
