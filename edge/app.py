"""Composition root. Until the daemon exists, it holds the scripted demo that `make run` runs:
a reference hub and a box, a bundle imported, and codes of every kind validated and redeemed.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from pathlib import Path

from edge.codes import Ticket, display_rotating
from edge.config import load, render_minimal
from edge.decision import REASON_TEXT, Decision
from edge.doctor import render_table, run_doctor
from edge.service import RedemptionService
from edge.store import WriteLock
from edge.textcodec import b32decode_strict, b32encode
from sync.hub.issuer import (
    BundleContent,
    Hub,
    ShortCodeSpec,
    load_private,
    new_holder_key,
    random_short_code,
)

SITE = "west-lake"
# Every device simulated: each `sim` driver starts a device on a pty or socket that speaks the
# real bytes, driven by the real protocol driver.
DEMO_DEVICES = """
[devices.gate-in]
class = "gate"
driver = "sim"
url = "sim://?board=modbus"

[devices.locker-wall]
class = "locker"
driver = "sim"
url = "sim://?dialect=8a&doors=24"

[devices.kitchen-hot]
class = "printer"
driver = "sim"
url = "sim://?profile=tm-t20"

[devices.bar]
class = "printer"
driver = "sim"
url = "sim://?profile=xp-58&paper=near-end"

[devices.counter-scanner]
class = "scanner"
driver = "sim"
url = "sim://"
"""
HOUR = 3600


def _line(label: str, d: Decision) -> None:
    zh, en = REASON_TEXT[d.reason]
    verdict = "ADMIT 通过" if d.admit else "DENY  拒绝"
    extra = f" remaining={d.remaining}" if d.admit and d.remaining is not None else ""
    print(f"  {label:<44} {verdict}  {d.reason:<17} {zh} / {en}{extra}")


def _tamper(code: str) -> str:
    raw = bytearray(b32decode_strict(code, 1024))
    raw[30] ^= 0x01  # one bit inside the signed payload
    return b32encode(bytes(raw))


def run_scripted_demo(workdir: Path | None = None) -> int:
    root = workdir or Path(tempfile.mkdtemp(prefix="edge-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    print(f"Edge gateway demo 演示 — work directory {root}\n")

    hub = Hub.init(root / "hub", keys=2)
    print(
        f"1. hub (reference cloud) created; trust anchor fingerprint:\n   {hub.anchor.fingerprint}"
    )
    box = root / "box"
    box.mkdir()
    (box / "trust-anchor.json").write_text((root / "hub" / "trust-anchor.json").read_text())
    (box / "edge.toml").write_text(
        render_minimal(SITE, "counter-1", "trust-anchor.json") + DEMO_DEVICES
    )
    print(f"2. box configured in {box} (site {SITE}, one counter lane)")

    voucher = ShortCodeSpec(
        random_short_code(12),
        secrets.token_bytes(16),
        "tea-set",
        now - HOUR,
        now + 30 * 24 * HOUR,
        kind="voucher",
    )
    hub.mint_short(SITE, voucher)
    content = BundleContent(
        site_info={"timezone": "Asia/Shanghai", "rollover_hour": 4, "name": "西湖景区 West Lake"},
        products=[
            {"id": "adult", "name": "成人票 Adult"},
            {"id": "family", "name": "家庭票 Family"},
            {"id": "tea-set", "name": "龙井茶套餐 Longjing tea set"},
        ],
        lists=[
            {
                "id": "default",
                "name": "主入口 Main gate",
                "products": ["*"],
                "slot_grace_before_min": 15,
                "slot_grace_after_min": 30,
            }
        ],
        short_codes=hub.minted_short_codes(SITE),
    )
    hub.write_bundle(SITE, root / "snapshot.bundle", content, snapshot=True, now=now)

    def ticket(**kw: object) -> Ticket:
        base: dict[str, object] = dict(
            kid=hub.active_kid(),
            ticket_id=secrets.token_bytes(16),
            site=SITE,
            product="adult",
            valid_from=now - HOUR,
            valid_until=now + 8 * HOUR,
        )
        return Ticket(**(base | kw))  # type: ignore[arg-type]

    good = hub.mint_ticket(ticket())
    expired = hub.mint_ticket(ticket(valid_from=now - 48 * HOUR, valid_until=now - 24 * HOUR))
    later_slot = hub.mint_ticket(ticket(slot=(now + 3 * HOUR, now + 4 * HOUR)))
    group = hub.mint_ticket(ticket(product="family", persons=4))
    to_revoke = ticket()
    revoked = hub.mint_ticket(to_revoke)
    other_site = hub.mint_ticket(ticket(site="yellow-mountain"))
    holder_pub = new_holder_key(root / "holder.key")
    holder_ticket = hub.mint_ticket(ticket(holder_key=holder_pub, entries=2))
    holder_key = load_private(root / "holder.key")

    with WriteLock(box) as lock:
        svc = RedemptionService(load(box / "edge.toml", box), full_check=lock.unclean)
        try:
            r = svc.import_bundle(root / "snapshot.bundle")
            print(f"3. snapshot imported: seq {r.seq}, {r.counts['short_add']} short code(s)")
            hub.write_bundle(
                SITE,
                root / "delta.bundle",
                BundleContent(revocations=[to_revoke.ticket_id]),
                snapshot=False,
            )
            r = svc.import_bundle(root / "delta.bundle")
            print(f"4. delta imported: seq {r.seq}, {r.counts['revoke']} revocation\n")
            print("5. decisions at the counter 柜台核销结果:")
            _line("signed ticket, dry run (validate) 预检", svc.validate(good, "counter"))
            _line("signed ticket, first scan 首次", svc.redeem(good, "counter"))
            _line("same ticket again 再次扫码", svc.redeem(good, "counter"))
            _line("same ticket, Caps Lock (lower case) 小写", svc.redeem(good.lower(), "counter"))
            _line("expired ticket 过期票", svc.redeem(expired, "counter"))
            _line("slot in 3 hours 预约时段未到", svc.redeem(later_slot, "counter"))
            _line("revoked ticket 已作废", svc.redeem(revoked, "counter"))
            _line("tampered ticket 篡改", svc.redeem(_tamper(good), "counter"))
            _line("ticket for another site 他处票", svc.redeem(other_site, "counter"))
            _line("group ticket, 4 persons 团体票", svc.redeem(group, "counter"))
            _line(
                "holder ticket, screenshot of static code 截图",
                svc.redeem(holder_ticket, "counter"),
            )
            live = display_rotating(holder_ticket, holder_key, int(time.time()))
            _line("holder ticket, live rotating code 动态码", svc.redeem(live, "counter"))
            _line("same live code replayed 重放", svc.redeem(live, "counter"))
            old = display_rotating(holder_ticket, holder_key, int(time.time()) - 120)
            _line("live code from 2 minutes ago 旧动态码", svc.redeem(old, "counter"))
            _line(f"voucher {voucher.code} 券码", svc.redeem(voucher.code, "counter"))
            _line("voucher again 券码再次", svc.redeem(voucher.code, "counter"))
            typo = voucher.code[:-2] + voucher.code[-1] + voucher.code[-2]
            _line("voucher with two digits swapped 输错", svc.redeem(typo, "counter"))
            _line("unknown voucher 不存在的券", svc.redeem(random_short_code(12), "counter"))
            st = svc.status()
            print(
                f"\n6. ledger {st['ledger']['redemptions']}, outbox depth "
                f"{st['ledger']['outbox_depth']} (events waiting for the cloud)"
            )
        finally:
            svc.close()
    print("\n7. devices (simulated) checked by `edge doctor` 设备自检:")
    print(render_table(run_doctor(load(box / "edge.toml", box).devices)))
    print(
        f"\nTry it yourself / 自己试试:\n  .venv/bin/edge validate --home {box} '{good}'\n"
        f"  .venv/bin/edge status --home {box}\n  .venv/bin/edge doctor --home {box}"
    )
    return 0
