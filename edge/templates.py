"""Print templates: validated job data -> a printer-independent Job, every label in Chinese and
English; plus the Job <-> JSON form the print spool stores (a job is rendered once, at submit).

Data comes from outside (the cloud, the kiosk), so it is checked field by field: a missing or
wrong field, an unknown field (a typo would otherwise print a ticket without the table number) or a
control character (ESC/POS commands hidden in a dish name) raises TemplateError naming the
template and the field, before anything is stored or printed. Times given as Unix seconds print in
the site's timezone (the caller passes it: the box may run on UTC at a site in Asia/Shanghai).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any, NamedTuple, NoReturn

from drivers.printer.job import (
    Barcode,
    Columns,
    Cut,
    Divider,
    Feed,
    Item,
    Job,
    JobBuilder,
    OrderLine,
    Qr,
    Text,
    money,
    receipt,
)

MAX_TEXT = 200  # characters in one field: a ticket, not a novel
MAX_ITEMS = 200  # lines on one ticket
MASK = "****"  # what a secret (a pickup code) becomes once its job is final
# Fields that hold a secret the spool must not keep after printing, per template.
SECRETS: dict[str, tuple[str, ...]] = {"pickup_slip": ("code",)}


class TemplateError(ValueError):
    """Job data that a template cannot print; `template` and `field` say which and where."""

    def __init__(self, template: str, field: str, problem: str) -> None:
        self.template, self.field, self.problem = template, field, problem
        where = f"{template}.{field}" if field else template
        super().__init__(f"print template {where}: {problem}")


class _Check:
    """Field access for one template's data, raising TemplateError with the field's path."""

    def __init__(self, template: str, data: Any, prefix: str = "", tz: tzinfo = UTC) -> None:
        self.template, self.prefix, self.tz = template, prefix, tz
        if not isinstance(data, Mapping):
            self.fail("", "must be an object (a JSON dict)")
        self.data: Mapping[str, Any] = data

    def fail(self, field: str, problem: str) -> NoReturn:
        raise TemplateError(self.template, f"{self.prefix}{field}".rstrip("."), problem)

    def only(self, *fields: str) -> None:
        unknown = sorted(set(self.data) - set(fields))
        if unknown:
            self.fail(unknown[0], f"unknown field (expected some of: {', '.join(fields)})")

    def text(self, field: str, *, required: bool = True) -> str:
        value = self.data.get(field)
        if value is None or value == "":
            if required:
                self.fail(field, "missing (a non-empty text is required)")
            return ""
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # order and table numbers often arrive as numbers
        if not isinstance(value, str):
            self.fail(field, f"must be text, not {type(value).__name__}")
        self._line(field, value)
        return value

    def _line(self, field: str, value: str) -> None:
        if len(value) > MAX_TEXT:
            self.fail(field, f"longer than {MAX_TEXT} characters")
        if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
            self.fail(field, "must be one line of text without control characters")

    def when(self, field: str) -> str:
        """A time as text, or as Unix seconds (shown in the site's timezone)."""
        value = self.data.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not 0 < value < 1e11:
                self.fail(field, "not a plausible time (Unix seconds)")
            return datetime.fromtimestamp(value, self.tz).strftime("%Y-%m-%d %H:%M")
        return self.text(field)

    def integer(self, field: str, *, minimum: int = 0, required: bool = True) -> int:
        value = self.data.get(field)
        if value is None and not required:
            return 0
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(field, "missing" if value is None else "must be a whole number")
        if value < minimum:
            self.fail(field, f"must be at least {minimum}")
        return int(value)

    def rows(self, field: str, *, required: bool = True) -> list[_Check]:
        value = self.data.get(field)
        if value is None and not required:
            return []
        if not isinstance(value, list) or (required and not value):
            self.fail(field, "must be a non-empty list")
        if len(value) > MAX_ITEMS:
            self.fail(field, f"more than {MAX_ITEMS} entries")
        return [
            _Check(self.template, v, f"{self.prefix}{field}[{i}].", self.tz)
            for i, v in enumerate(value)
        ]

    def counts(self, field: str) -> list[tuple[str, int]]:
        """A {label: count} object, e.g. redemptions by product."""
        value = self.data.get(field, {})
        if not isinstance(value, Mapping):
            self.fail(field, "must be an object of name -> count")
        sub = _Check(self.template, value, f"{self.prefix}{field}.", self.tz)
        out = []
        for key in value:
            if not isinstance(key, str) or not key:
                sub.fail("", "names must be non-empty text")
            sub._line(key, key)  # the name itself is printed: same rules as any text
            out.append((key, sub.integer(key)))
        return out


def _kitchen(c: _Check, shop: str) -> Job:
    c.only("station", "table", "order_no", "items", "time")
    station, table, order_no = c.text("station"), c.text("table"), c.text("order_no")
    time = c.text("time", required=False)
    lines = []
    for row in c.rows("items"):
        row.only("name", "qty", "note")
        name, qty = row.text("name"), row.integer("qty", minimum=1)
        lines.append(OrderLine(name, qty, note=row.text("note", required=False)))
    # Large bold dish names, notes underneath, so the kitchen reads it at arm's length.
    b = JobBuilder(title=f"kitchen {station} {order_no}")
    b.text(f"档口 Station {station}", bold=True, double=True, align="center")
    b.text(f"桌号 Table {table}", bold=True, double=True, align="center")
    b.text(f"单号 Order {order_no}", align="center")
    if time:
        b.text(f"下单 Time {time}", align="center")
    b.divider("=")
    for line in lines:
        b.text(f"{line.qty} x {line.name}", bold=True, double=True)
        if line.note:
            b.text(f"   备注 Note: {line.note}", bold=True)
    b.divider("=")
    b.columns("合计 Items", str(sum(line.qty for line in lines)))
    return b.cut().build()


def _receipt(c: _Check, shop: str) -> Job:
    c.only("order_no", "items", "paid_at", "qr", "table")
    order_no, paid_at = c.text("order_no"), c.text("paid_at")
    qr, table = c.text("qr", required=False), c.text("table", required=False)
    lines = []
    for row in c.rows("items"):
        row.only("name", "qty", "price_cents", "note")
        lines.append(
            OrderLine(row.text("name"), row.integer("qty", minimum=1), row.integer("price_cents"))
        )
    job = receipt(shop or "收据 Receipt", order_no, lines, paid_at=f"时间 Paid {paid_at}", qr=qr)
    if table:  # after the shop name and order number
        items = list(job.items)
        items.insert(2, Text(f"桌号 Table {table}", align="center"))
        job = Job(tuple(items), job.title)
    return job


def _pickup_slip(c: _Check, shop: str) -> Job:
    c.only("locker", "door", "code", "expires_at", "order_no", "size")
    locker, door = c.text("locker"), c.integer("door", minimum=1)
    code, expires = c.text("code"), c.when("expires_at")
    order_no, size = c.text("order_no", required=False), c.text("size", required=False)
    b = JobBuilder(title=f"pickup slip {locker} {door}")
    if shop:
        b.text(shop, bold=True, align="center")
    b.text("取货凭条 PICKUP SLIP", bold=True, double=True, align="center")
    b.divider()
    if order_no:
        b.columns("单号 Order", order_no)
    b.columns("柜号 Locker", locker).columns("格口 Door", f"{door} {size}".strip())
    b.text("取件码 Pickup code", align="center")
    b.text(code, bold=True, double=True, align="center")
    b.qr(code, 8)
    b.text(f"有效期至 Valid until {expires}", align="center")
    b.text("请在柜机扫码或输入取件码 Scan or type the code at the locker", align="center")
    return b.cut().build()


def _shift_close(c: _Check, shop: str) -> Job:
    c.only("cashier", "opened_at", "closed_at", "by_product", "by_reason", "total")
    cashier, opened, closed = c.text("cashier"), c.text("opened_at"), c.text("closed_at")
    by_product, by_reason, total = c.counts("by_product"), c.counts("by_reason"), c.integer("total")
    b = JobBuilder(title=f"shift close {cashier} {closed}")
    if shop:
        b.text(shop, bold=True, align="center")
    b.text("交班汇总 SHIFT CLOSE", bold=True, double=True, align="center")
    b.columns("收银员 Cashier", cashier)
    b.columns("开班 Opened", opened).columns("交班 Closed", closed)
    b.divider().text("按产品 By product", bold=True)
    for name, n in by_product or [("-", 0)]:
        b.columns(name, str(n))
    b.divider().text("按结果 By reason", bold=True)
    for name, n in by_reason or [("-", 0)]:
        b.columns(name, str(n))
    b.divider().columns("合计 Total", str(total), bold=True)
    b.feed().text("签字 Signature: ____________")
    return b.cut().build()


def _redemption(c: _Check, shop: str) -> Job:
    c.only("product", "fingerprint", "time", "lane", "persons")
    product, fingerprint = c.text("product"), c.text("fingerprint")
    when, lane = c.text("time"), c.text("lane")
    persons = c.integer("persons", minimum=1, required=False)
    b = JobBuilder(title=f"redemption {fingerprint}")
    if shop:
        b.text(shop, bold=True, align="center")
    b.text("核销凭证 REDEMPTION", bold=True, double=True, align="center")
    b.divider()
    b.columns("产品 Product", product)
    if persons:
        b.columns("人数 Persons", str(persons))
    b.columns("券码 Code", fingerprint).columns("时间 Time", when).columns("通道 Lane", lane)
    b.divider().text("已核销 Redeemed", bold=True, align="center")
    return b.cut().build()


def _test_page(c: _Check, shop: str) -> Job:
    c.only("printer", "time")
    printer, when = c.text("printer", required=False), c.text("time", required=False)
    b = JobBuilder(title="test page")
    b.text("打印测试 TEST PAGE", bold=True, double=True, align="center")
    if shop:
        b.text(shop, align="center")
    if printer:
        b.columns("打印机 Printer", printer)
    if when:
        b.columns("时间 Time", when)
    b.divider()
    b.text("中文 Chinese: 宫保鸡丁（少辣）", bold=True)
    b.columns("金额 Amount", money(3800))
    b.text("大字 LARGE", double=True)
    b.divider().qr("EDGE TEST " + (printer or "page"))
    b.text("打印正常 Printer OK", align="center")
    return b.cut().build()


TEMPLATES: dict[str, Callable[[_Check, str], Job]] = {
    "kitchen": _kitchen,
    "receipt": _receipt,
    "pickup_slip": _pickup_slip,
    "shift_close": _shift_close,
    "redemption": _redemption,
    "test_page": _test_page,
}


def reprint_banner(original: str) -> tuple[Item, ...]:
    # Short enough in double size for a 58 mm printer (16 cells), so it never wraps.
    return (
        Divider("*"),
        Text("重印 REPRINT", bold=True, double=True, align="center"),
        Text(f"原单 Original job {original}", align="center"),
        Divider("*"),
    )


def with_banner(job: Job, original: str) -> Job:
    return Job(reprint_banner(original) + job.items, f"reprint {job.title}".strip())


def without_banner(job: Job, original: str) -> Job:
    """The document as first printed, from a reprint of it (so a reprint of a reprint has one
    banner, not two)."""
    banner = reprint_banner(original)
    if job.items[: len(banner)] != banner:
        return job
    return Job(job.items[len(banner) :], job.title.removeprefix("reprint "))


def render(
    template: str,
    data: dict[str, Any],
    *,
    reprint_of: str | None = None,
    shop: str = "",
    tz: tzinfo = UTC,
) -> Job:
    """Validate `data` for `template` and build the Job (times in `tz`, the site's timezone).
    Raises TemplateError."""
    build = TEMPLATES.get(template) if isinstance(template, str) else None
    if build is None:
        raise TemplateError(template, "", f"unknown template (one of: {', '.join(TEMPLATES)})")
    job = build(_Check(template, data, tz=tz), shop)
    return with_banner(job, reprint_of) if reprint_of else job


def masked_data(template: str, data: dict[str, Any]) -> dict[str, Any]:
    """`data` with the template's secrets (a pickup slip's code) replaced by MASK."""
    return data | {k: MASK for k in SECRETS.get(template, ()) if data.get(k)}


def scrub(
    template: str, data: dict[str, Any], document: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A final job's stored data and document (job_to_json form) with its secrets masked
    wherever they appear (the code line, the QR); None when the template keeps none. The title
    and everything else a job listing shows stay as they were."""
    secrets = [
        str(data[k]) for k in SECRETS.get(template, ()) if isinstance(data.get(k), str | int)
    ]
    secrets = sorted((s for s in secrets if s and s != MASK), key=len, reverse=True)
    if not secrets:
        return None

    def mask(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        for secret in secrets:
            value = value.replace(secret, MASK)
        return value

    items = [{k: mask(v) for k, v in item.items()} for item in document.get("items", [])]
    return masked_data(template, data), document | {"items": items}


# -- an order, split into its tickets --

ORDER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


class OrderTicket(NamedTuple):
    job_id: str  # from the order id: a resubmitted order maps to the same jobs
    template: str
    target: str
    data: dict[str, Any]
    stamped: tuple[str, ...] = ()  # fields the box filled in (the time): not the order's content


def order_tickets(
    order: Any, stations: Collection[str], *, receipt: bool, now: float, tz: tzinfo = UTC
) -> list[OrderTicket]:
    """An order {id, table, items [{name, qty, price_cents, station, note}], paid_at, qr} as one
    kitchen ticket per station (items in order) and, with `receipt`, the full receipt (times in
    `tz`). Items without a station go on the receipt only. Raises TemplateError ("order") for a
    bad order or an item for a station that is not configured."""
    c = _Check("order", order)
    order_id = c.text("id")
    if not ORDER_ID.fullmatch(order_id):
        c.fail("id", "1-64 letters, digits or . _ : - (first a letter or digit)")
    table = c.text("table", required=False) or "外带 Takeaway"
    by_station: dict[str, list[dict[str, Any]]] = {}
    counter: list[dict[str, Any]] = []
    for row in c.rows("items"):
        station = row.text("station", required=False)
        if station and station not in stations:
            known = ", ".join(stations) or "none configured"
            row.fail("station", f"station {station!r} is not configured (stations: {known})")
        item = row.data
        if station:
            kitchen = {k: item[k] for k in ("name", "qty", "note") if k in item}
            by_station.setdefault(station, []).append(kitchen)
        counter.append({k: item[k] for k in ("name", "qty", "price_cents") if k in item})
    local = datetime.fromtimestamp(now, tz)
    out = [
        OrderTicket(
            f"order-{order_id}-{station}",
            "kitchen",
            f"station:{station}",
            {
                "station": station,
                "table": table,
                "order_no": order_id,
                "items": rows,
                "time": local.strftime("%H:%M"),
            },
            ("time",),
        )
        for station, rows in by_station.items()
    ]
    if receipt:
        paid = c.text("paid_at", required=False)
        stamped = () if paid else ("paid_at",)
        paid = paid or local.strftime("%Y-%m-%d %H:%M")
        data = {"order_no": order_id, "items": counter, "paid_at": paid, "table": table}
        if qr := c.text("qr", required=False):
            data["qr"] = qr
        out.append(OrderTicket(f"order-{order_id}-receipt", "receipt", "receipt", data, stamped))
    return out


# -- the stored form of a Job --

_KINDS: dict[str, type[Item]] = {
    "text": Text,
    "columns": Columns,
    "divider": Divider,
    "qr": Qr,
    "barcode": Barcode,
    "feed": Feed,
    "cut": Cut,
}
_NAMES = {cls: name for name, cls in _KINDS.items()}


def job_to_json(job: Job) -> dict[str, Any]:
    items = [{"type": _NAMES[type(it)], **dataclasses.asdict(it)} for it in job.items]
    return {"v": 1, "title": job.title, "items": items}


def job_from_json(doc: dict[str, Any]) -> Job:
    """Raises ValueError for a document this release cannot read."""
    if doc.get("v") != 1:
        raise ValueError(f"print document version {doc.get('v')!r} is not supported")
    items: list[Item] = []
    for raw in doc["items"]:
        fields = dict(raw)
        cls = _KINDS.get(fields.pop("type", ""))
        if cls is None:
            raise ValueError(f"print document item of unknown type {raw.get('type')!r}")
        items.append(cls(**fields))
    return Job(tuple(items), str(doc.get("title", "")))
