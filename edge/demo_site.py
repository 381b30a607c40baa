"""What the embedded demo site (edge/demo.py, `edge run --demo`) is: its site, catalogue, vouchers
and the demo box's config, with every device simulated. Data only; edge/demo.py makes the home,
the keys and the codes from it."""

from __future__ import annotations

from typing import Any

SITE = "west-lake"
OTHER_SITE = "yellow-mountain"
TIMEZONE = "Asia/Shanghai"
ROLLOVER_HOUR = 4

PRODUCTS: list[dict[str, Any]] = [
    {"id": "adult", "name": "成人票 Adult"},
    {"id": "family", "name": "家庭票 Family"},
    {"id": "child", "name": "儿童票 Child"},
    {"id": "tea-set", "name": "龙井茶套餐 Longjing tea set"},
    {"id": "pastries", "name": "西湖点心 West Lake pastries"},
]
ZONES: list[dict[str, Any]] = [
    {"id": "main", "name": "西湖景区 West Lake scenic area", "capacity": 200}
]
LISTS: list[dict[str, Any]] = [
    {
        "id": "main-gate",
        "name": "主入口闸机 Main gate",
        "products": ["adult", "family", "child"],
        "zone": "main",
        "anti_passback": "hard",
        "slot_grace_before_min": 15,
        "slot_grace_after_min": 30,
    },
    {"id": "default", "name": "柜台 Counter", "products": ["*"]},
]
SITE_INFO = {"timezone": TIMEZONE, "rollover_hour": ROLLOVER_HOUR, "name": "西湖景区 West Lake"}
VOUCHERS = (
    ("tea-set", "龙井茶套餐券", "Voucher: Longjing tea set"),
    ("pastries", "点心券", "Voucher: pastries"),
)

CONFIG = """\
# Demo box (edge run --demo). Every device is simulated (sim://, knobs in drivers/*/sim.py):
# each sim driver starts a device on a pty or socket that speaks the real bytes, driven by the
# real protocol driver.
[box]
site = "west-lake"
device = "demo-box"
trust_anchor = "trust-anchor.json"
state_dir = "state"

[policy]
stale_cache_hours = 48
# The demo has no cloud to sync its clock with: do not flag the clock after a week without sync.
clock_max_unsynced_hours = 87600

[http]
listen = "127.0.0.1:8800"

[devices]
scanner-in = { class = "scanner", driver = "sim", url = "sim://?kind=serial" }
gate-in = { class = "gate", driver = "sim", url = "sim://?board=modbus&pass_delay_ms=300" }
scanner-out = { class = "scanner", driver = "sim", url = "sim://?kind=serial" }
gate-out = { class = "gate", driver = "sim", url = "sim://?board=modbus&pass_delay_ms=300" }
kitchen-hot = { class = "printer", driver = "sim", url = "sim://?profile=xp-80" }
kitchen-bar = { class = "printer", driver = "sim", url = "sim://?profile=xp-58" }
receipt = { class = "printer", driver = "sim", url = "sim://?profile=tm-t20" }
locker-wall = { class = "locker", driver = "sim", url = "sim://?dialect=8a&doors=24&auto_close=4" }
locker-scanner = { class = "scanner", driver = "sim", url = "sim://?kind=serial" }
counter-scanner = { class = "scanner", driver = "sim", url = "sim://?kind=serial" }

[lanes.entry]
kind = "gate"
direction = "entry"
scanner = "scanner-in"
gate = "gate-in"
list = "main-gate"

[lanes.exit]
kind = "gate"
direction = "exit"
scanner = "scanner-out"
gate = "gate-out"
list = "main-gate"

[lanes.counter]
kind = "counter"
scanner = "counter-scanner"
list = "default"

[lanes.lockers]
kind = "locker"
scanner = "locker-scanner"
locker = "locker-wall"
list = "default"

[printing]
receipt = "receipt"
shop = "西湖茶馆 West Lake Teahouse"
stations = { hot = ["kitchen-hot", "kitchen-bar"], bar = ["kitchen-bar", "kitchen-hot"] }

[zones]
main = { warn = 150, full = 200 }

[lockers.locker-wall]
pickup_hours = 48
sizes = { S = "1-12", M = "13-20", L = "21-24" }
"""

MARKER_TEXT = (
    "This directory is an edge gateway demo home (edge run --demo); its keys and codes are for\n"
    "trying the product only. 此目录为演示环境，密钥与票码仅供体验。\n"
)
