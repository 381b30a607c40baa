"""`edge hub ...`, the sync side: register, serve, revoke, crl, claim, send, status (the reference
hub over MQTT, sync/hub/serve.py). sync/hub/cli.py's `register` adds these commands."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sync import protocol
from sync.hub.issuer import Hub

if TYPE_CHECKING:
    from sync.hub.revoke import BrokerReload

DAY = 86400


def register_sync(hs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = hs.add_parser("register", help="bind a box identity (its certificate CN) to a site")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--box", required=True, help="the box's certificate CN ([box] device)")
    p.add_argument("--site", required=True)
    p.set_defaults(func=cmd_register)

    p = hs.add_parser("serve", help="run the reference hub against an MQTT broker (mTLS)")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--broker", required=True, help="HOST:PORT")
    p.add_argument("--ca", required=True, type=Path, help="the broker's CA certificate")
    p.add_argument("--cert", required=True, type=Path, help="the hub's client certificate (CN hub)")
    p.add_argument("--key", required=True, type=Path)
    p.add_argument("--db", type=Path, help="default: DIR/hub.db")
    p.add_argument(
        "--device-ca", type=Path, help="device CA directory: signs enrollment and renewal CSRs"
    )
    p.add_argument("--cert-days", type=float, default=30.0, help="device certificate lifetime")
    p.add_argument("--enroll-listen", help="HOST:PORT of the HTTPS enrollment endpoint")
    p.add_argument("--enroll-cert", type=Path, help="its server certificate (e.g. the broker's)")
    p.add_argument("--enroll-key", type=Path)
    _broker_reload_options(p)
    p.set_defaults(func=cmd_serve)

    p = hs.add_parser("revoke", help="revoke a box: its certificates, its session, its data")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--box", required=True, help="the box id (its certificate CN)")
    p.add_argument("--reason", default="revoked by the operator", help="recorded and shown")
    p.add_argument("--device-ca", type=Path, help="device CA directory: puts its certs on the CRL")
    p.add_argument("--db", type=Path, help="default: DIR/hub.db")
    p.add_argument(
        "--broker", help="HOST:PORT: cut the box's live session (with --ca/--cert/--key)"
    )
    p.add_argument("--ca", type=Path, help="the broker's CA certificate")
    p.add_argument("--cert", type=Path, help="the hub's client certificate (CN hub)")
    p.add_argument("--key", type=Path)
    _broker_reload_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_revoke)

    p = hs.add_parser(
        "crl", help="rewrite the device CA's CRL before its nextUpdate and reload the broker (cron)"
    )
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--device-ca", required=True, type=Path, help="device CA directory")
    _broker_reload_options(p)
    p.add_argument("--force", action="store_true", help="rewrite it even with 7+ days left")
    p.set_defaults(func=cmd_crl)

    p = hs.add_parser("claim", help="make a one-time claim token for enrolling a box")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--box", required=True, help="the box id (its certificate CN)")
    p.add_argument("--site", required=True)
    p.add_argument("--ttl-hours", type=float, default=24.0)
    p.set_defaults(func=cmd_claim)

    p = hs.add_parser("send", help="queue a signed message for a box (delivered when it is up)")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--box", required=True)
    p.add_argument("--db", type=Path, help="default: DIR/hub.db")
    p.add_argument(
        "--ttl",
        type=float,
        help="seconds the message stays valid (default 600; a config: 7 days, so a box that is "
        "offline meanwhile still gets it)",
    )
    p.add_argument("--id", help="message id (default: random); the box acts on an id once")
    ss = p.add_subparsers(dest="send_type", required=True, metavar="TYPE")
    q = ss.add_parser("print", help="a print job for the box's spool")
    q.add_argument("--template", required=True)
    q.add_argument("--target", required=True, help="e.g. station:hot or printer:receipt")
    q.add_argument("--data", default="{}", help="the template's data, a JSON object")
    q = ss.add_parser("command", help="open_door, reload_config or request_status")
    q.add_argument("name", choices=protocol.COMMANDS)
    q.add_argument("--door", type=int, help="open_door: door number (from 1)")
    q.add_argument("--locker", help="open_door: locker bank name (default: the box's only one)")
    q = ss.add_parser(
        "config",
        help="the site-managed config: [policy], [devices.*], [lanes.*], [printing], [zones.*], "
        "[lockers.*] as TOML, each replacing the box's own section (docs/sync.md)",
    )
    q.add_argument("--config-file", "--file", dest="config_file", required=True, type=Path)
    q.add_argument(
        "--revision", required=True, type=int, help="above the box's current; older is ignored"
    )
    p.set_defaults(func=cmd_send)

    p = hs.add_parser("status", help="boxes, event counts, last ack, conflicts, refusals")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--db", type=Path, help="default: DIR/hub.db")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)


def _broker_reload_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--broker-pid", type=Path, help="broker pid file: SIGHUP it after a CRL change")
    g.add_argument("--broker-reload", help='or a command, e.g. "systemctl reload mosquitto"')


def _broker_reload(args: argparse.Namespace) -> BrokerReload | None:
    from sync.hub.revoke import BrokerReload

    if args.broker_pid is None and args.broker_reload is None:
        return None
    return BrokerReload(pid_file=args.broker_pid, command=args.broker_reload)


def cmd_revoke(args: argparse.Namespace) -> int:
    from sync.hub.revoke import BrokerAccess, revoke_box
    from sync.pki import Ca

    broker = None
    if args.broker:
        if not (args.ca and args.cert and args.key):
            raise ValueError("--broker needs --ca, --cert and --key (the hub's own)")
        host, port = _host_port("--broker", args.broker)
        broker = BrokerAccess(host, port, args.ca, args.cert, args.key)
    ca = Ca.load(args.device_ca) if args.device_ca else None
    res = revoke_box(
        args.dir,
        args.box,
        reason=args.reason,
        ca=ca,
        reload=_broker_reload(args),
        broker=broker,
        db_path=args.db,
    )
    text = json.dumps(res.as_dict(), ensure_ascii=False, sort_keys=True)
    print(text if args.json else "\n".join(res.report()))
    return 0


def cmd_crl(args: argparse.Namespace) -> int:
    from sync.hub.crl_upkeep import refresh_crl
    from sync.pki import Ca, crl_next_update

    ca = Ca.load(args.device_ca)
    reload = _broker_reload(args)
    if reload is not None:
        reload.check()  # before anything changes
    rewritten, reloaded = refresh_crl(args.dir, ca, reload, force=args.force)
    until = crl_next_update(ca.crl_path)
    left = (until - time.time()) / DAY
    yes = {True: "yes", False: "no"}
    print(
        f"crl 吊销列表 {ca.crl_path}: nextUpdate {_when(until)} "
        f"({left:.1f} days left 剩余天数); rewritten 已更新={yes[rewritten]} "
        f"broker reloaded={yes[reloaded]}"
    )
    if rewritten and reload is None:
        print(
            "warning 警告: the broker was not told (--broker-pid or --broker-reload): it keeps "
            "the old CRL until its next SIGHUP",
            file=sys.stderr,
        )
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from sync.hub.registry import REGISTRY, register_box

    register_box(args.dir, args.box, args.site)
    print(f"box {args.box} -> site {args.site} ({args.dir / REGISTRY})")
    return 0


def _host_port(option: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{option} {value!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def cmd_claim(args: argparse.Namespace) -> int:
    from sync.hub.enroll import make_claim

    token = make_claim(args.dir, args.box, args.site, args.ttl_hours * 3600)
    print(token)
    print(
        f"one-time claim for box {args.box} at {args.site}, valid {args.ttl_hours:g} h "
        f"/ 一次性认领码; trust anchor fingerprint 信任根指纹: {Hub(args.dir).anchor.fingerprint}",
        file=sys.stderr,
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # Imported here: paho and the hub database are not needed by the box's own commands.
    from sync.hub.enroll import Enroller, EnrollServer, Signer
    from sync.hub.serve import HubServer
    from sync.pki import Ca

    host, port = _host_port("--broker", args.broker)
    logging.getLogger("sync.hub").setLevel(logging.INFO)  # one line per batch
    hub = Hub(args.dir)
    signer = Signer(Ca.load(args.device_ca), args.cert_days * DAY) if args.device_ca else None
    if args.enroll_listen and (signer is None or not args.enroll_cert or not args.enroll_key):
        raise ValueError("--enroll-listen needs --device-ca, --enroll-cert and --enroll-key")
    server = HubServer(
        hub,
        host=host,
        port=port,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        db_path=args.db,
        signer=signer,
        broker_reload=_broker_reload(args),
    )
    enroll = None
    if args.enroll_listen:
        assert signer is not None
        ehost, eport = _host_port("--enroll-listen", args.enroll_listen)
        enroller = Enroller(hub, signer, args.ca)
        enroll = EnrollServer(enroller, ehost, eport, args.enroll_cert, args.enroll_key)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("sync.hub").info("hub: signal %d, stopping", signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        if enroll is not None:
            enroll.start()
        while not stop.wait(1.0):
            pass
    finally:
        if enroll is not None:
            enroll.close()
        server.close()
        for s, handler in old.items():
            signal.signal(s, handler)
    return 0


def _send_body(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.ttl is None:
        args.ttl = 7 * DAY if args.send_type == "config" else 600.0
    if args.ttl <= 0:
        raise ValueError("--ttl: seconds, above 0")
    if args.send_type == "config":
        return "config", _config_body(args.config_file, args.revision)
    if args.send_type == "print":
        try:
            data = json.loads(args.data)
        except ValueError as err:
            raise ValueError(f"--data: not JSON ({err})") from err
        if not isinstance(data, dict):
            raise ValueError("--data: a JSON object")
        return "print", {"template": args.template, "target": args.target, "data": data}
    body: dict[str, Any] = {"command": args.name}
    if args.name == "open_door":
        if args.door is None or args.door < 1:
            raise ValueError("open_door needs --door N (from 1)")
        body["door"] = args.door
        if args.locker:
            body["locker"] = args.locker
    return "command", body


def _config_body(path: Path, revision: int) -> dict[str, Any]:
    """Checked here as far as the hub can (the box validates it against its own edge.toml)."""
    import tomllib

    from edge.config import MANAGED_SECTIONS

    if revision < 1:
        raise ValueError("--revision: a whole number from 1")
    try:
        text = path.read_text(encoding="utf-8")
        sections = tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--config-file {path}: cannot read: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"--config-file {path}: not valid TOML: {err}") from err
    local = sorted(set(sections) - set(MANAGED_SECTIONS))
    if local:
        raise ValueError(
            f"--config-file {path}: [{local[0]}] stays in the box's own edge.toml; "
            f"a config message sets {', '.join(MANAGED_SECTIONS)}"
        )
    return {"revision": revision, "toml": text}


def cmd_send(args: argparse.Namespace) -> int:
    from sync.hub.serve import queue_message
    from sync.hub.store import HUB_DB, HubStore

    msg_type, body = _send_body(args)
    store = HubStore(args.db or args.dir / HUB_DB)
    try:
        msg_id = queue_message(store, Hub(args.dir), args.box, msg_type, body, args.ttl, args.id)
    finally:
        store.close()
    print(f"queued {msg_type} {msg_id} for {args.box} (valid {args.ttl:g} s)")
    return 0


def _when(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at).astimezone().isoformat("T", "seconds")


def cmd_status(args: argparse.Namespace) -> int:
    from sync.hub.registry import load_revoked
    from sync.hub.store import HUB_DB, HubStore

    path = args.db or args.dir / HUB_DB
    if not path.exists():
        raise ValueError(f"no hub database at {path}: start `edge hub serve` first")
    store = HubStore(path, create=False)
    try:
        summary = store.summary()
    finally:
        store.close()
    summary["revoked"] = load_revoked(args.dir)
    for box in summary["revoked"]:
        if box in summary["boxes"]:
            summary["boxes"][box]["revoked"] = True
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, sort_keys=True))
        return 0
    print(f"boxes 设备 ({len(summary['boxes'])}):")
    for box, b in summary["boxes"].items():
        ack = b.get("last_ack") or {}
        print(
            f"  {box} site={b.get('site', '?')} "
            f"{'online 在线' if b.get('online') else 'offline 离线'} "
            f"last_seen={_when(b.get('last_seen'))} events={b.get('events', 0)} "
            f"acked_through={ack.get('acked_through', '-')} epoch={ack.get('epoch', '-')} "
            f"downlink_pending={b.get('downlink_pending', 0)}"
            + (" REVOKED 已吊销" if b.get("revoked") else "")
        )
    conflicts = summary["conflicts"]
    print(f"conflicts 冲突 ({len(conflicts)}):")
    for c in conflicts:
        state = f"resolved: {c['note']}" if c["resolved_at"] else "FLAGGED 待处理"
        print(
            f"  {c['id'][:12]} site={c['site']} ticket={c['canonical_id']} list={c['list_id']} "
            f"{c['box_a']} / {c['box_b']} detected={_when(c['detected_at'])} {state}"
        )
    for r in summary["refusals"]:
        print(f"refused 拒收 {r['box']} {r['reason']} x{r['count']}: {r['last_detail']}")
    for box, r in summary["revoked"].items():
        print(
            f"revoked 已吊销 {box} site={r.get('site') or '-'} at={_when(r.get('at'))} "
            f"reason={r.get('reason', '')} certificates={len(r.get('serials', []))}"
        )
    return 0
