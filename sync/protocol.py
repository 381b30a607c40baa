"""Sync protocol v1 (docs/sync.md): topics, payloads, signing and validation, shared by the box's
link (sync/link.py) and the reference hub (sync/hub/serve.py).

Every payload is JSON with "v": 1. Downlink messages are signed by a hub key that the box's trust
anchor certifies (the key certificate travels inside the message), so a broker cannot forge a
print job or a door command. Everything that arrives is validated here; a bad payload raises
ProtocolError with a reason and never reaches a handler.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.errors import EdgeError, TrustError
from edge.trust import USAGE_BUNDLES, TrustAnchor, parse_key_cert

VERSION = 1
MAX_BATCH_BYTES = 128 * 1024
MAX_IN_FLIGHT = 20
CTX_DOWNLINK = b"EDGE-DOWN1"
DOWN_TYPES = (
    "bundle_chunk",
    "print",
    "command",
    "config",
    "certificate",
    "conflict",
    "caught_up",
)
COMMANDS = ("open_door", "reload_config", "request_status")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
_HEX = re.compile(r"[0-9a-f]+")


class ProtocolError(EdgeError):
    """A payload that is not valid protocol v1; `reason` is short and stable (for metrics)."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


# -- topics ------------------------------------------------------------------------------------


def up_events(box: str) -> str:
    return f"gw/{box}/up/events"


def up_status(box: str) -> str:
    return f"gw/{box}/up/status"


def up_csr(box: str) -> str:
    return f"gw/{box}/up/csr"


def down_ack(box: str) -> str:
    return f"gw/{box}/down/ack"


def down_msg(box: str) -> str:
    return f"gw/{box}/down/msg"


def box_of(topic: str) -> str:
    """The box identity in a gw/ID/... topic."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != "gw" or not _ID.fullmatch(parts[1]):
        raise ProtocolError("bad_topic", topic[:120])
    return parts[1]


# -- JSON --------------------------------------------------------------------------------------


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_json(doc: dict[str, Any]) -> bytes:
    """An uplink event's JSON, made by orjson: a tenth of json's time, and the link encodes every
    event it sends (its CPU on the box during a drain). Keys sorted and no spaces, as
    canonical(); the bytes differ only in how some floats are spelled (below 1e-4: 0.00001 for
    1e-05, 1e-6 for 1e-06), the same numbers once parsed: the uplink is parsed by the hub and
    never signed. NaN and infinities, which JSON does not have, become null. What orjson
    refuses (keys that are not strings, integers beyond 64 bits) goes through canonical()."""
    try:
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return canonical(doc)


# An integer orjson could read as a float: 19 digits or more (below -2**63 has 19 already) where
# a JSON number can start: after ":", ",", "[", "-" or white space, or at the very start. Two
# C-speed passes find one (those characters to "c", digits to "1", the rest to "0"; then a
# substring search): a regex costs more than orjson saves, and a run anywhere (ids in hex have
# 19 decimal digits in a row often enough) would send half of the hub's batches to json.
_NUMBER_MAP = bytes(
    0x31 if 0x30 <= i <= 0x39 else 0x63 if i in b":,[- \t\r\n" else 0x30 for i in range(256)
)
_LONG_NUMBER = b"c" + b"1" * 19


def parse_json(data: bytes | str) -> Any:
    """json.loads(data), made by orjson (a third of the time) whenever that gives the same
    result: what orjson refuses (NaN, 1e400, lone surrogates, a byte order mark) or could read
    as a float (an integer of 19 digits or more) goes to json."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if _LONG_NUMBER not in b"c" + raw.translate(_NUMBER_MAP):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def load(payload: bytes) -> dict[str, Any]:
    """Parse a payload and check its version. Raises ProtocolError."""
    if len(payload) > 4 * MAX_BATCH_BYTES:
        raise ProtocolError("too_large", f"{len(payload)} bytes")
    try:
        doc = parse_json(payload)
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolError("malformed", f"not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise ProtocolError("malformed", "not a JSON object")
    if doc.get("v") != VERSION:
        raise ProtocolError("unknown_version", f"v={doc.get('v')!r}; this box speaks v{VERSION}")
    return doc


def _get(doc: dict[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    value = doc.get(key)
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
        raise ProtocolError("malformed", f"{key}: expected {getattr(typ, '__name__', typ)}")
    return value


# -- uplink: events and acks -------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    seq: int
    id: str  # 32 hex
    type: str
    at: float
    body: dict[str, Any]
    redemption_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "seq": self.seq,
            "id": self.id,
            "type": self.type,
            "at": self.at,
            "body": self.body,
        }
        if self.redemption_id:
            doc["redemption_id"] = self.redemption_id
        return doc


@dataclass(frozen=True)
class Batch:
    box: str
    site: str
    epoch: str
    events: tuple[Event, ...]
    # Each event's event_json, when batches() made it already (sizing the batch): encode()
    # then joins them instead of serialising every event a second time (the link's CPU).
    encoded: tuple[bytes, ...] | None = field(default=None, compare=False, repr=False)

    def encode(self) -> bytes:
        """The whole document with keys sorted at every level (the events sit between "epoch"
        and "site"), each event as event_json made it (canonical() but for the spelling of
        floats below 1e-4)."""
        head, tail = canonical(
            {"v": VERSION, "box": self.box, "site": self.site, "epoch": self.epoch, "events": []}
        ).split(b'"events":[]', 1)
        parts = self.encoded
        if parts is None or len(parts) != len(self.events):
            parts = tuple(event_json(e.to_json()) for e in self.events)
        return head + b'"events":[' + b",".join(parts) + b"]" + tail


def batches(box: str, site: str, epoch: str, events: Iterable[Event]) -> Iterator[Batch]:
    """Consecutive events in batches of at most MAX_BATCH_BYTES encoded."""
    pending: list[Event] = []
    parts: list[bytes] = []
    empty = len(Batch(box, site, epoch, ()).encode())
    size = empty
    for e in events:
        one = event_json(e.to_json())
        n = len(one) + 1
        if pending and size + n > MAX_BATCH_BYTES:
            yield Batch(box, site, epoch, tuple(pending), tuple(parts))
            pending, parts, size = [], [], empty
        pending.append(e)
        parts.append(one)
        size += n
    if pending:
        yield Batch(box, site, epoch, tuple(pending), tuple(parts))


def parse_batch(payload: bytes, topic_box: str) -> Batch:
    """The hub's side. The batch must name the box its topic (and certificate) belongs to."""
    doc = load(payload)
    box, site, epoch = (_get(doc, k, str) for k in ("box", "site", "epoch"))
    if box != topic_box:
        raise ProtocolError("wrong_box", f"{box!r} published on {topic_box!r}'s topic")
    if not (len(epoch) == 16 and _HEX.fullmatch(epoch)):
        raise ProtocolError("malformed", "epoch: 16 hex digits")
    raw = _get(doc, "events", list)
    events = []
    for item in raw:
        if not isinstance(item, dict):
            raise ProtocolError("malformed", "events: a list of objects")
        seq, eid, typ = _get(item, "seq", int), _get(item, "id", str), _get(item, "type", str)
        at, body = _get(item, "at", (int, float)), _get(item, "body", dict)
        if seq < 1 or not (len(eid) == 32 and _HEX.fullmatch(eid)):
            raise ProtocolError("malformed", "event seq >= 1 and id of 32 hex digits")
        rid = item.get("redemption_id")
        if rid is not None and not (isinstance(rid, str) and _HEX.fullmatch(rid)):
            raise ProtocolError("malformed", "redemption_id: hex")
        events.append(Event(seq, eid, typ, float(at), body, rid))
    if not events:
        raise ProtocolError("malformed", "an empty batch")
    first = events[0].seq
    if [e.seq for e in events] != list(range(first, first + len(events))):
        raise ProtocolError("malformed", "events must have consecutive seqs")
    return Batch(box, site, epoch, tuple(events))


def encode_ack(epoch: str, acked_through: int, hub_time: float) -> bytes:
    return canonical(
        {"v": VERSION, "epoch": epoch, "acked_through": acked_through, "hub_time": hub_time}
    )


@dataclass(frozen=True)
class Ack:
    epoch: str
    acked_through: int
    hub_time: float


def parse_ack(payload: bytes) -> Ack:
    doc = load(payload)
    return Ack(
        _get(doc, "epoch", str),
        _get(doc, "acked_through", int),
        float(_get(doc, "hub_time", (int, float))),
    )


# -- downlink: signed messages -----------------------------------------------------------------


@dataclass(frozen=True)
class Down:
    id: str
    type: str
    issued_at: float
    ttl_s: float
    body: dict[str, Any]

    def expired(self, now: float) -> bool:
        return now > self.issued_at + self.ttl_s


def sign_down(
    msg_type: str,
    body: dict[str, Any],
    *,
    msg_id: str,
    issued_at: float,
    ttl_s: float,
    key: Ed25519PrivateKey,
    cert_hex: str,
) -> bytes:
    if msg_type not in DOWN_TYPES:
        raise ValueError(f"downlink type: one of {', '.join(DOWN_TYPES)}")
    doc: dict[str, Any] = {
        "v": VERSION,
        "id": msg_id,
        "type": msg_type,
        "issued_at": issued_at,
        "ttl_s": ttl_s,
        "body": body,
        "cert": cert_hex,
    }
    doc["sig"] = base64.b64encode(key.sign(CTX_DOWNLINK + canonical(doc))).decode()
    return canonical(doc)


def verify_down(payload: bytes, anchor: TrustAnchor, site: str, now: float) -> Down:
    """The box's side: a message signed by a hub key the anchor certifies for this site, not
    expired. Raises ProtocolError (reasons: malformed, unknown_version, unsigned, bad_signature,
    untrusted_key, expired, unknown_type)."""
    doc = load(payload)
    sig_b64, cert_hex = doc.pop("sig", None), doc.get("cert")
    if not isinstance(sig_b64, str) or not isinstance(cert_hex, str):
        raise ProtocolError("unsigned", "a downlink message needs cert and sig")
    try:
        sig = base64.b64decode(sig_b64, validate=True)
        cert = parse_key_cert(bytes.fromhex(cert_hex), anchor)
    except (ValueError, TrustError) as err:
        raise ProtocolError("untrusted_key", str(err)) from err
    if not cert.allows(USAGE_BUNDLES, site, now):
        raise ProtocolError("untrusted_key", f"key {cert.kid} not valid for {site} now")
    try:
        cert.key.verify(sig, CTX_DOWNLINK + canonical(doc))
    except InvalidSignature as err:
        raise ProtocolError("bad_signature", "downlink signature does not verify") from err
    msg_id, msg_type = _get(doc, "id", str), _get(doc, "type", str)
    if not _ID.fullmatch(msg_id):
        raise ProtocolError("malformed", "id: 1-100 of A-Z a-z 0-9 . _ : -")
    if msg_type not in DOWN_TYPES:
        raise ProtocolError("unknown_type", msg_type[:40])
    issued = float(_get(doc, "issued_at", (int, float)))
    ttl = float(_get(doc, "ttl_s", (int, float)))
    down = Down(msg_id, msg_type, issued, ttl, _get(doc, "body", dict))
    if down.expired(now):
        raise ProtocolError("expired", f"issued {now - issued:.0f} s ago, TTL {ttl:g} s")
    return down
