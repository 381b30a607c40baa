"""The embedded demo site that `edge run --demo` starts on.

A demo home holds everything a demo box needs, created on the first start:

    DEMO               marker: this directory is a demo (`edge run --demo` refuses real installs)
    edge.toml          the box config: every device simulated (sim://), four lanes, printing
    trust-anchor.json  copy of the demo hub's root key (the box's trust anchor)
    snapshot.bundle    the site's current signed snapshot (the daemon imports it at start)
    holder.key         the demo visitor's phone key, for the holder-bound ticket's live code
    demo.json          what a later start must reuse (the revoked ticket id, the vouchers)
    hub/               the reference cloud side (sync/hub) that issues the codes and bundles
    state/             the box's state (ledger, cache, spool), as for a real box

A later start reuses all of it (same keys, site and vouchers) but issues a fresh snapshot when
the current one is about to go stale or expire, and mints the time-bound sample tickets again so
that they are valid today, whenever the demo is started. This module is part of the composition
root: it wires the reference hub (sync/) into a box (edge/). What the site is (its catalogue,
vouchers and the box's config) is edge/demo_site.py.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shlex
import shutil
import sqlite3
import time
import tomllib
import unicodedata
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any

from edge import bundle as fmt
from edge.cache import CacheStore
from edge.codes import Ticket
from edge.config import CONFIG_NAME, SYSTEM_CONFIG, load
from edge.decision import REASON_TEXT
from edge.demo_site import (
    CONFIG,
    LISTS,
    MARKER_TEXT,
    OTHER_SITE,
    PRODUCTS,
    ROLLOVER_HOUR,
    SITE,
    SITE_INFO,
    TIMEZONE,
    VOUCHERS,
    ZONES,
)
from edge.errors import BundleRefused, ConfigError, EdgeError
from edge.rules import Reason, SiteClock, zone_info
from edge.trust import TrustAnchor
from sync.hub.issuer import (
    BundleContent,
    Hub,
    ShortCodeSpec,
    load_private,
    new_holder_key,
    random_short_code,
)

log = logging.getLogger(__name__)

MARKER = "DEMO"
ANCHOR_NAME = "trust-anchor.json"
BUNDLE_NAME = "snapshot.bundle"
HOLDER_KEY = "holder.key"
STATE_NAME = "demo.json"
HOUR = 3600
DAY = 86400
BUNDLE_DAYS = 30.0
# Half the default stale_cache_hours (48): a demo started now keeps a fresh cache for a day.
REFRESH_AFTER_S = 24 * HOUR
VOUCHER_DAYS = 365
VOUCHER_RENEW_S = 30 * DAY
# Sample tickets are valid for the business day, but never for less than this from the start,
# so a demo started at 03:55 (rollover 04:00) does not show tickets that die in five minutes.
TICKET_MIN_LIFE_S = 12 * HOUR


@dataclass(frozen=True)
class Sample:
    """A code a newcomer can scan, the lane it is meant for and what the box should decide.
    `hint`: an extra step (the holder ticket's live-code command)."""

    label_zh: str
    label_en: str
    code: str
    lane: str
    expect: Reason
    hint: str = ""


@dataclass(frozen=True)
class DemoSite:
    """`bundle_path`: the snapshot to import at start, or None when the box already has it."""

    home: Path
    config_path: Path
    bundle_path: Path | None
    samples: list[Sample]

    @property
    def holder_key(self) -> Path:
        return self.home / HOLDER_KEY


def default_demo_home() -> Path:
    """$EDGE_DEMO_HOME, else $XDG_STATE_HOME/edge-demo, else ~/.local/state/edge-demo."""
    if home := os.environ.get("EDGE_DEMO_HOME"):
        return Path(home).expanduser()
    if state := os.environ.get("XDG_STATE_HOME"):
        return Path(state).expanduser() / "edge-demo"
    return Path.home() / ".local" / "state" / "edge-demo"


def prepare_demo(home: Path, now: float | None = None) -> DemoSite:
    """Create the demo home on the first start, refresh what time has worn out on later ones.

    Raises ConfigError when `home` holds files but no DEMO marker (never overwrite a directory
    that is not ours), or is a demo home with parts missing.
    """
    at = int(time.time() if now is None else now)
    home = home.expanduser().absolute()
    if not (home / MARKER).is_file():
        _create(home, at)
    with _locked(home):
        try:
            state = json.loads((home / STATE_NAME).read_text(encoding="utf-8"))
            hub = Hub(home / "hub")
            renewed = _renew_vouchers(hub, state, at)
            if renewed:
                _write_json(home / STATE_NAME, state)
            header = _bundle_header(home / BUNDLE_NAME)
            if renewed or header is None or _due(header, at):
                header = _write_snapshot(hub, home, state, at)
            samples = _mint_samples(hub, home, state, at)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(
                home, "", f"damaged demo home ({err!r}); remove it to start a new demo"
            ) from err
        config_path = home / CONFIG_NAME
        imported = _imported_seq(config_path, home)
        current = imported is not None and imported >= header.seq
        return DemoSite(home, config_path, None if current else home / BUNDLE_NAME, samples)


def real_anchor_installed(
    environ: Mapping[str, str] | None = None, *, system_config: Path = SYSTEM_CONFIG
) -> Path | None:
    """The config of a real (non-demo) install that the normal lookup finds, or None.

    Every place of the lookup ($EDGE_HOME, $CONFIGURATION_DIRECTORY, /etc/edge/edge.toml) is
    looked at, not only the first that is set: an $EDGE_HOME left pointing elsewhere must not
    hide a real box's /etc/edge. Real = the config exists, its trust anchor exists, and its
    directory has no DEMO marker.
    """
    env = os.environ if environ is None else environ
    candidates: list[Path] = []
    if edge_home := env.get("EDGE_HOME"):
        candidates.append(Path(edge_home) / CONFIG_NAME)
    if conf_dir := env.get("CONFIGURATION_DIRECTORY"):
        candidates.append(Path(conf_dir.split(":")[0]) / CONFIG_NAME)
    candidates.append(system_config)
    for path in candidates:
        if _is_real_install(path):
            return path
    return None


def render_samples(site: DemoSite, kiosk_url: str, *, command: str = "edge") -> str:
    """What `edge run --demo` prints at start: the kiosk address, the sample codes (each on a
    line of its own under its row, whole for copying), how to scan one. `command`: how to call
    the CLI (e.g. .venv/bin/edge)."""
    rows = [("#", "示例 Sample", "通道 Lane", "预期 Expected")]
    for i, s in enumerate(site.samples, 1):
        zh, en = REASON_TEXT[s.expect]
        rows.append((str(i), f"{s.label_zh} {s.label_en}", s.lane, f"{s.expect} {zh} / {en}"))
    widths = [max(_width(r[c]) for r in rows) for c in range(3)]

    def row(r: tuple[str, str, str, str]) -> str:
        return "  " + "".join(_pad(c, w + 2) for c, w in zip(r, widths, strict=False)) + r[3]

    lines = [row(rows[0])]
    for r, s in zip(rows[1:], site.samples, strict=True):
        lines += [row(r), f"      {s.code}"]
        if s.hint:
            cli = command + s.hint.removeprefix("edge")
            lines.append(f"      live code 动态码: {cli}")
            lines.append(
                f'      scan it 扫码: {command} scan --home {site.home} --lane {s.lane} "$({cli})"'
            )
    first = next((s for s in site.samples if s.expect is Reason.OK and s.lane == "entry"), None)
    return (
        f"Edge gateway demo 演示站点 {SITE} (西湖景区 West Lake), home {site.home}\n"
        f"Kiosk 收银台界面: {kiosk_url}\n"
        "Lanes 通道: entry 入口 (scanner-in, gate-in), exit 出口 (scanner-out, gate-out),\n"
        "  counter 柜台 (counter-scanner), lockers 自助柜 (locker-scanner, locker-wall: 24 doors)\n"
        "Printers 打印机: kitchen-hot 热菜, kitchen-bar 水吧 (each the other's backup), receipt\n\n"
        "Sample codes 示例码, valid today; expected result of the first scan 首次扫码预期:\n"
        + "\n".join(lines)
        + "\n\nTry one 试一试: this scans the code into the lane's simulated scanner 模拟扫码\n"
        f"  {command} scan --home {site.home} --lane entry {first.code if first else 'CODE'}\n"
        "The same code again within a few seconds is the same visitor and does nothing; later it\n"
        "is 票已使用 already_used. At --lane exit it lets the visitor out.\n"
        "Locker 自助柜: deposit an order (the door opens, shuts 4 s later, a pickup slip with a\n"
        "7-digit code prints), then scan that code at the locker lane:\n"
        f"  {command} api --home {site.home} POST /api/v1/lockers/locker-wall/deposit "
        '\'{"order_no": "A001", "size": "S"}\'\n'
        f"  {command} scan --home {site.home} --lane lockers CODE\n"
        "Kitchen 后厨: an order split by station (hot, bar) plus the receipt:\n"
        f'  {command} api --home {site.home} POST /api/v1/print/orders \'{{"id": "T7-1", '
        '"table": "7", "items": [{"name": "宫保鸡丁", "qty": 1, "station": '
        '"hot", "price_cents": 3800}, {"name": "龙井茶", "qty": 2, "station": '
        '"bar", "price_cents": 2800}]}\'\n'
        f"  {command} api --home {site.home} GET /api/v1/print/jobs\n"
        f"Start over 重新开始: stop the demo and remove {shlex.quote(str(site.home))}\n"
    )


# -- creation ------------------------------------------------------------------------------------


def _create(home: Path, at: int) -> None:
    """Build the demo home beside it and rename it into place, so a crash never leaves a
    half-made home that looks finished."""
    if home.exists() and (not home.is_dir() or any(home.iterdir())):
        raise ConfigError(
            home, "", "exists and is not a demo home (no DEMO marker); pass another --home"
        )
    home.parent.mkdir(parents=True, exist_ok=True)
    tmp = home.parent / f".{home.name}.new-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        hub = Hub.init(tmp / "hub", keys=1, label="edge demo hub 演示", not_before=at - DAY)
        shutil.copyfile(tmp / "hub" / ANCHOR_NAME, tmp / ANCHOR_NAME)
        (tmp / CONFIG_NAME).write_text(CONFIG, encoding="utf-8")
        new_holder_key(tmp / HOLDER_KEY)
        state: dict[str, Any] = {
            "v": 1,
            "created_at": at,
            "revoked_ticket_id": secrets.token_hex(16),
            "vouchers": [],
        }
        _renew_vouchers(hub, state, at)
        _write_json(tmp / STATE_NAME, state)
        (tmp / MARKER).write_text(MARKER_TEXT, encoding="utf-8")
        try:
            os.rename(tmp, home)  # replaces an empty directory; fails on a non-empty one
        except OSError:
            if not (home / MARKER).is_file():  # not another demo start that won the race
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("demo home created in %s", home)


def _renew_vouchers(hub: Hub, state: dict[str, Any], at: int) -> bool:
    """Mint the sample vouchers when missing or about to expire; True when it minted."""
    old = {v["product"]: v for v in state["vouchers"]}
    if len(old) == len(VOUCHERS) and all(
        v["valid_until"] - at > VOUCHER_RENEW_S for v in old.values()
    ):
        return False
    state["vouchers"] = []
    for product, _, _ in VOUCHERS:
        spec = ShortCodeSpec(
            random_short_code(12),
            secrets.token_bytes(16),
            product,
            at - HOUR,
            at + VOUCHER_DAYS * DAY,
            kind="voucher",
        )
        hub.mint_short(SITE, spec)
        state["vouchers"].append(
            {"product": product, "code": spec.code, "valid_until": spec.valid_until}
        )
    return True


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    os.replace(tmp, path)


@contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Two demo starts at once must not both issue the next bundle sequence."""
    fd = os.open(home / "demo.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- the bundle ----------------------------------------------------------------------------------


def _bundle_header(path: Path) -> fmt.Header | None:
    try:
        with path.open("rb") as f:
            return fmt.BundleReader(f).header
    except (OSError, BundleRefused):
        return None


def _due(header: fmt.Header, at: int) -> bool:
    """About to go stale or expire, or issued in the future (the clock was set back): a box
    would flag its clock as suspect behind a bundle issued later than now."""
    return (
        at - header.issued_at >= REFRESH_AFTER_S
        or header.expires_at - at <= REFRESH_AFTER_S
        or header.issued_at > at + 300
    )


def _write_snapshot(hub: Hub, home: Path, state: dict[str, Any], at: int) -> fmt.Header:
    content = BundleContent(
        site_info=dict(SITE_INFO),
        products=[dict(p) for p in PRODUCTS],
        zones=[dict(z) for z in ZONES],
        lists=[dict(x) for x in LISTS],
        short_codes=hub.minted_short_codes(SITE),
        revocations=[bytes.fromhex(state["revoked_ticket_id"])],
    )
    path = home / BUNDLE_NAME
    hub.write_bundle(SITE, path, content, snapshot=True, now=at, expires_days=BUNDLE_DAYS)
    header = _bundle_header(path)
    assert header is not None, "the bundle just written must read back"
    log.info("demo snapshot seq=%d issued", header.seq)
    return header


def _imported_seq(config_path: Path, home: Path) -> int | None:
    """The sequence of the box's active cache; None when it has none or cannot be read (the
    daemon then imports the bundle and reports whatever is wrong)."""
    try:
        cfg = load(config_path, home)
        store = CacheStore(cfg.state_dir, TrustAnchor.load(cfg.trust_anchor), cfg.site)
        if store.active_path() is None:
            return None
        view = store.view()
        try:
            return view.state.seq if view.refresh() and view.state is not None else None
        finally:
            view.close()
    except (EdgeError, sqlite3.Error, OSError, ValueError) as err:
        log.warning("demo: cannot read the box's cache (%s); offering the bundle again", err)
        return None


# -- samples -------------------------------------------------------------------------------------


def _day_window(at: int) -> tuple[int, int]:
    """The business day `at` falls in (starts at the rollover hour), stretched to at least
    TICKET_MIN_LIFE_S from `at`."""
    day = SiteClock(TIMEZONE, ROLLOVER_HOUR).business_day(at)
    start = int(datetime.combine(day, dtime(ROLLOVER_HOUR), zone_info(TIMEZONE)).timestamp())
    return start, max(start + DAY, at + TICKET_MIN_LIFE_S)


def _mint_samples(hub: Hub, home: Path, state: dict[str, Any], at: int) -> list[Sample]:
    start, end = _day_window(at)
    kid = hub.active_kid()

    def ticket(**kw: Any) -> str:
        base: dict[str, Any] = dict(
            kid=kid,
            ticket_id=secrets.token_bytes(16),
            site=SITE,
            product="adult",
            valid_from=start,
            valid_until=end,
        )
        return hub.mint_ticket(Ticket(**(base | kw)))

    holder_pub = load_private(home / HOLDER_KEY).public_key().public_bytes_raw()
    holder = ticket(holder_key=holder_pub)
    slot = (at + 2 * HOUR) // 1800 * 1800  # on the half hour, at least 1.5 h ahead
    voucher_codes = {v["product"]: v["code"] for v in state["vouchers"]}
    first_voucher = voucher_codes[VOUCHERS[0][0]]
    key = shlex.quote(str(home / HOLDER_KEY))
    family = {"product": "family", "persons": 4}
    later = {"slot": (slot, slot + HOUR)}
    yesterday = {"valid_from": start - 2 * DAY, "valid_until": start - DAY}
    revoked = {"ticket_id": bytes.fromhex(state["revoked_ticket_id"])}
    specs: list[tuple[str, str, Reason, dict[str, Any]]] = [
        ("成人票（单次入园）", "Adult ticket, one entry", Reason.OK, {}),
        ("两次入园票", "Ticket for 2 entries", Reason.OK, {"entries": 2}),
        ("家庭票（4人）", "Family group ticket, 4 persons", Reason.OK, family),
        ("预约时段未到（今天稍后）", "Time slot later today", Reason.WRONG_SLOT, later),
        ("过期票（昨天）", "Expired ticket (yesterday)", Reason.EXPIRED, yesterday),
        ("已作废的票", "Revoked ticket", Reason.REVOKED, revoked),
        ("黄山景区的票", "Ticket for another site", Reason.WRONG_SITE, {"site": OTHER_SITE}),
    ]  # fmt: skip
    samples = [Sample(zh, en, ticket(**kw), "entry", why) for zh, en, why, kw in specs]
    for product, zh, en in VOUCHERS:
        samples.append(Sample(zh, en, voucher_codes[product], "counter", Reason.OK))
    samples += [
        Sample(
            "实名票静态码（截图）",
            "Holder ticket, static code (screenshot)",
            holder,
            "entry",
            Reason.HOLDER_REQUIRED,
            hint=f"edge hub display --holder-key {key} --ticket {holder}",
        ),
        Sample(
            "输错一位的券码",
            "Voucher with one digit mistyped",
            _mistype(first_voucher),
            "counter",
            Reason.MALFORMED,
        ),
    ]
    return samples


def _mistype(code: str) -> str:
    """One digit changed: the Damm check digit catches every single-digit error."""
    i = len(code) // 2
    return code[:i] + str((int(code[i]) + 1) % 10) + code[i + 1 :]


# -- real installs -------------------------------------------------------------------------------


def _is_real_install(config: Path) -> bool:
    if not config.is_file() or (config.parent / MARKER).exists():
        return False
    try:
        doc = tomllib.loads(config.read_text(encoding="utf-8"))
    except PermissionError:
        return True  # a config we may not read is a real box's (root-owned), not a demo's
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        doc = {}
    box = doc.get("box")
    name = box.get("trust_anchor") if isinstance(box, dict) else None
    anchor = config.parent / (name if isinstance(name, str) else ANCHOR_NAME)
    return anchor.is_file()


# -- text layout ---------------------------------------------------------------------------------


def _width(text: str) -> int:
    """Terminal columns: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))
