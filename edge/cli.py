"""The `edge` command: box commands, and the reference cloud tools under `edge hub`.

Exit codes: 0 admit or applied, 3 deny or refused, 2 error (an unexpected exception is 2, never
mistaken for a deny). With --json, every outcome (errors too) is one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from edge import client, provision_flow
from edge import config as cfgmod
from edge.client import daemon_url
from edge.decision import REASON_TEXT, SCHEMA_VERSION, Decision, iso
from edge.doctor import DeviceCheck, config_problems, render_table, run_doctor
from edge.errors import BundleRefused, EdgeError
from edge.http_tls import tls_info
from edge.rules import Reason
from edge.service import RedemptionService
from edge.store import WriteLock
from edge.trust import TrustAnchor
from kiosk_ui.users import register as register_users
from sync.hub.cli import register as register_hub

EXIT_OK, EXIT_ERROR, EXIT_DENY = 0, 2, 3
log = logging.getLogger("edge.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge", description="Edge gateway for stores and scenic sites / 门店与景区边缘网关"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def box_cmd(
        name: str, help_: str, func: Callable[[argparse.Namespace], int], data: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", help="config file (default lookup: see README)")
        p.add_argument("--home", help="box directory holding edge.toml and the state")
        if data:
            p.add_argument("--json", action="store_true", help="print one JSON object")
        p.set_defaults(func=func)
        return p

    p = sub.add_parser("init", help="create a minimal box config in DIR")
    p.add_argument("--home", required=True, type=Path)
    p.add_argument("--site", required=True)
    p.add_argument("--device", default="box-1")
    p.add_argument("--trust-anchor", required=True, type=Path, help="the hub's trust-anchor.json")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "provision",
        help="enroll this box with the hub: key, certificate, trust anchor, [sync] config",
        description="Make this box's key (it never leaves the box), get its certificate with a "
        "one-time claim (--enroll) or from a directory (--from), accept the trust anchor only "
        "if its fingerprint matches, and write the config. / 设备注册",
    )
    p.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="ask the questions (also with no arguments on a terminal): identity, enrollment, "
        "which attached device does what; writes the config, enrolls, runs doctor / 交互式注册",
    )
    p.add_argument("--site")
    p.add_argument("--device", help="this box's id (its certificate CN)")
    p.add_argument("--broker", help="HOST:PORT of the MQTT broker")
    p.add_argument("--anchor-fingerprint", help="as given by the operator")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--enroll", help="the hub's enrollment URL, https://HOST:PORT")
    src.add_argument(
        "--from",
        dest="from_dir",
        type=Path,
        help="offline: a directory with device.crt, device.key, broker-ca.crt, trust-anchor.json",
    )
    p.add_argument("--claim", help="the one-time claim token (with --enroll)")
    p.add_argument("--enroll-ca", type=Path, help="pin the enrollment endpoint's CA (optional)")
    p.add_argument(
        "--device-map",
        action="append",
        default=[],
        metavar="ROLE[:DRIVER]=PATH",
        help="write the config's devices and lanes from roles, e.g. "
        "locker-board:8a=/dev/edge/locker0?board=1&doors=24 (repeat; docs/technician.md)",
    )
    p.add_argument("--gate-list", help="check-in list of the gate lanes (default: default)")
    p.add_argument(
        "--force", action="store_true", help="replace an existing config (kept as .bak-...)"
    )
    p.add_argument("--config", help="config file to write")
    p.add_argument("--home", help="box directory (DIR/edge.toml, state in DIR)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_provision)

    bundle = sub.add_parser("bundle", help="signed code bundles")
    bs = bundle.add_subparsers(dest="bundle_cmd", required=True, metavar="COMMAND")
    p = bs.add_parser("import", help="verify and activate a bundle file")
    p.add_argument("file", type=Path)
    p.add_argument("--config")
    p.add_argument("--home")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--at", help="import time, ISO 8601 with UTC offset (default: now)")
    p.set_defaults(func=cmd_bundle_import)

    for name, help_, func in (
        ("validate", "check a code without redeeming it (dry run)", cmd_validate),
        ("redeem", "redeem a code on a counter lane", cmd_redeem),
    ):
        p = box_cmd(name, help_, func)
        p.add_argument(
            "code", help="the code, or - to read it from stdin (keeps it out of history)"
        )
        p.add_argument("--lane", default="counter", help="lane name from the config")
        if name == "redeem":
            p.add_argument(
                "--id",
                help="redemption id (32 hex digits) to reuse when retrying the same scan",
            )
        p.add_argument("--at", help="decision time, ISO 8601 with UTC offset (default: now)")
    box_cmd("status", "cache, ledger, clock and lanes of this box", cmd_status)
    box_cmd("check", "validate the configuration (file, trust anchor, device URLs)", cmd_check)
    p = box_cmd("doctor", "open each configured device and run a harmless self-test", cmd_doctor)
    p.add_argument("--test-page", action="store_true", help="printers also print a test page")

    p = sub.add_parser(
        "run",
        help="run the gateway daemon (lanes, printers, lockers, HTTP API)",
        description="Run the gateway daemon. Config lookup: --config, --home, $EDGE_HOME, "
        "$CONFIGURATION_DIRECTORY, /etc/edge/edge.toml. --demo runs a simulated demo site.",
    )
    p.add_argument("--config", help="config file")
    p.add_argument("--home", help="box directory holding edge.toml and the state")
    p.add_argument(
        "--demo", action="store_true", help="every device simulated, demo site and codes"
    )
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_run)

    p = box_cmd("scan", "hand a code to a lane of the running daemon (as if scanned)", cmd_scan)
    p.add_argument("code", help="the code, or - to read it from stdin")
    p.add_argument("--lane", required=True, help="lane name from the config")

    p = box_cmd("api", "call the running daemon's HTTP API (docs/daemon.md)", cmd_api, data=False)
    p.add_argument("method", choices=("GET", "POST"))
    p.add_argument("path", help="e.g. /api/v1/status")
    p.add_argument("body", nargs="?", help="JSON body for POST")

    p = sub.add_parser("demo", help="scripted demo: a hub and a box, every kind of code")
    p.add_argument("--dir", type=Path, help="work directory (default: a new temporary one)")
    p.set_defaults(func=cmd_demo)

    register_users(sub, lambda args: _load_config(args).state_dir)
    register_hub(sub)
    return parser


def parse_at(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as err:
        raise ValueError(
            f"--at {value!r}: expected ISO 8601, e.g. 2026-05-01T09:30:00+08:00"
        ) from err
    if dt.tzinfo is None:
        raise ValueError(f"--at {value!r}: give a UTC offset, e.g. +08:00")
    return dt.timestamp()


def _load_config(args: argparse.Namespace) -> cfgmod.BoxConfig:
    path, state = cfgmod.locate(getattr(args, "config", None), getattr(args, "home", None))
    return cfgmod.load(path, state)


@contextmanager
def _service(args: argparse.Namespace, write: bool) -> Iterator[RedemptionService]:
    config = _load_config(args)
    if write:
        with WriteLock(config.state_dir) as lock:
            svc = RedemptionService(config, full_check=lock.unclean)
            try:
                yield svc
            finally:
                svc.close()
    else:
        svc = RedemptionService(config)
        try:
            yield svc
        finally:
            svc.close()


def _read_code(arg: str) -> str:
    if arg != "-":
        return arg
    return sys.stdin.readline().rstrip("\r\n")


def _emit(args: argparse.Namespace, doc: dict[str, Any], human: str) -> None:
    print(json.dumps(doc, ensure_ascii=False) if getattr(args, "json", False) else human)


def _show_decision(args: argparse.Namespace, d: Decision) -> int:
    zh, en = REASON_TEXT[d.reason]
    head = "ADMIT 通过" if d.admit else "DENY 拒绝"
    lines = [f"{head}  {d.reason}: {zh} / {en}"]
    if d.detail:
        lines.append(f"  detail: {d.detail}")
    for w in d.warnings:
        lines.append(f"  warning 警告: {w}: {' / '.join(REASON_TEXT[w])}")
    if d.canonical_id:
        lines.append(
            f"  {d.kind} {d.canonical_id}  product {d.product_name or d.product}"
            f"  persons {d.persons}  remaining {'∞' if d.remaining is None else d.remaining}"
        )
    if d.redemption_id:
        lines.append(f"  redemption {d.redemption_id} ({d.state})")
    lines.append(f"  lane {d.lane}  cache seq {d.cache_seq}  clock suspect {d.clock_suspect}")
    _emit(args, d.to_json(), "\n".join(lines))
    return EXIT_OK if d.admit else EXIT_DENY


def cmd_init(args: argparse.Namespace) -> int:
    home: Path = args.home
    anchor = TrustAnchor.load(args.trust_anchor)
    conf = home / cfgmod.CONFIG_NAME
    if conf.exists():
        raise EdgeError(f"{conf} already exists; edit it, or choose another --home")
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.trust_anchor, home / "trust-anchor.json")
    conf.write_text(cfgmod.render_minimal(args.site, args.device, "trust-anchor.json"))
    cfgmod.load(conf, home)
    print(f"box config written to {conf}")
    print(f"trust anchor fingerprint 信任根指纹: {anchor.fingerprint}")
    print("check it against the fingerprint the operator gave you / 请与运营方提供的指纹核对")
    return EXIT_OK


def _provision_steps() -> provision_flow.Steps[Any]:
    """Enrollment (sync/provision.py) for the wizard and --device-map (edge/provision_flow.py)."""
    from sync import provision

    def obtain(plan: provision_flow.Plan) -> provision.Material:
        if plan.from_dir is not None:
            return provision.from_directory(plan.from_dir, plan.device, plan.fingerprint)
        return provision.enroll(
            plan.enroll_url or "",
            site=plan.site,
            device=plan.device,
            claim=plan.claim or "",
            fingerprint=plan.fingerprint,
            cafile=plan.enroll_ca,
        )

    def install(material: provision.Material, plan: provision_flow.Plan) -> str:
        provision.install(
            material,
            config=plan.config,
            state_dir=plan.state_dir,
            site=plan.site,
            device=plan.device,
            broker=plan.broker,
        )
        return material.anchor.fingerprint

    return provision_flow.Steps(obtain, install)


def cmd_provision(args: argparse.Namespace) -> int:
    from sync import provision

    given = ("site", "device", "broker", "anchor_fingerprint", "enroll", "from_dir", "claim")
    bare = not any(getattr(args, k) for k in given) and not args.device_map
    if args.interactive or (bare and sys.stdin.isatty()):
        from edge import provision_wizard

        path, state = provision_flow.locate(args.config, args.home)
        return provision_wizard.run(
            _provision_steps(),
            ask=input,
            say=print,
            config=path,
            state_dir=state,
            defaults=vars(args),
            force=args.force,
        )
    if args.device_map:
        plan = provision_flow.plan_from_flags(args)
        out = provision_flow.execute(plan, _provision_steps())
        _emit(args, out.to_json(plan), provision_flow.report(plan, out))
        return EXIT_OK if out.provisioned else EXIT_ERROR
    provision_flow.require_flags(args)
    path, hint = cfgmod.locate(args.config, args.home)
    state = hint or path.parent
    if path.exists():
        with contextlib.suppress(EdgeError):  # a mismatch is refused by install()
            state = cfgmod.load(path, hint).state_dir
    try:
        if args.from_dir is not None:
            material = provision.from_directory(args.from_dir, args.device, args.anchor_fingerprint)
        else:
            if not args.claim:
                raise provision.ProvisionError("no_claim", "--enroll needs --claim TOKEN")
            material = provision.enroll(
                args.enroll,
                site=args.site,
                device=args.device,
                claim=args.claim,
                fingerprint=args.anchor_fingerprint,
                cafile=args.enroll_ca,
            )
        conf = provision.install(
            material,
            config=path,
            state_dir=state,
            site=args.site,
            device=args.device,
            broker=args.broker,
        )
    except provision.ProvisionError as err:
        doc = {"provisioned": False, "reason": err.reason, "detail": err.detail}
        _emit(args, doc, f"NOT PROVISIONED 注册失败  {err.reason}: {err.detail}")
        return EXIT_ERROR
    doc = {
        "provisioned": True,
        "config": str(conf),
        "site": args.site,
        "device": args.device,
        "anchor_fingerprint": material.anchor.fingerprint,
    }
    _emit(
        args,
        doc,
        f"PROVISIONED 注册完成  {args.device} @ {args.site}\n  config {conf}\n"
        f"  trust anchor 信任根 {material.anchor.fingerprint}\n  start it: edge run",
    )
    return EXIT_OK


def _daemon_state(args: argparse.Namespace) -> Path | None:
    """The state directory when a daemon runs on it (then it is the only writer)."""
    config = _load_config(args)
    return config.state_dir if daemon_url(config.state_dir) is not None else None


def cmd_bundle_import(args: argparse.Namespace) -> int:
    if (state := _daemon_state(args)) is not None:
        at = parse_at(args.at)  # refuse a time without a UTC offset here too
        body = {"path": str(args.file.resolve()), "at": None if at is None else iso(at)}
        try:
            doc = client.call(state, "POST", "/api/v1/bundles/import", body, timeout=600)
        except client.DaemonError as err:
            if err.status != 422:
                raise
            doc = {
                "schema": SCHEMA_VERSION,
                "decision": "refused",
                "reason": "refused",
                "detail": err.detail,
            }
        if doc.get("decision") == "refused":
            _emit(args, doc, f"REFUSED 拒绝导入  {doc['reason']}: {doc['detail']}")
            return EXIT_DENY
        _emit(
            args,
            doc,
            f"APPLIED 已导入  {doc['kind']} seq {doc['seq']}  {json.dumps(doc['counts'])}",
        )
        return EXIT_OK
    with _service(args, write=True) as svc:
        try:
            r = svc.import_bundle(args.file, parse_at(args.at))
        except BundleRefused as err:
            doc = {
                "schema": SCHEMA_VERSION,
                "decision": "refused",
                "reason": err.reason,
                "detail": err.detail,
            }
            _emit(
                args,
                doc,
                f"REFUSED 拒绝导入  {err.reason}: {err.detail}\n"
                "the active cache is unchanged / 当前数据未改变",
            )
            return EXIT_DENY
        doc = {
            "schema": SCHEMA_VERSION,
            "decision": "applied",
            "reason": "ok",
            "seq": r.seq,
            "kind": r.kind,
            "counts": r.counts,
            "cache_seq": r.seq,
        }
        _emit(args, doc, f"APPLIED 已导入  {r.kind} seq {r.seq}  {json.dumps(r.counts)}")
        return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    with _service(args, write=False) as svc:
        return _show_decision(
            args, svc.validate(_read_code(args.code), args.lane, parse_at(args.at))
        )


def cmd_redeem(args: argparse.Namespace) -> int:
    if (state := _daemon_state(args)) is not None:
        if args.at:
            raise EdgeError("--at cannot be used while the daemon runs (it decides at its time)")
        body = {"code": _read_code(args.code), "lane": args.lane, "redemption_id": args.id}
        return _show_json_decision(args, client.call(state, "POST", "/api/v1/redeem", body))
    with _service(args, write=True) as svc:
        lane = svc.config.lanes.get(args.lane)
        if lane is not None and lane.kind != "counter":
            raise EdgeError(f"lane {args.lane} is a {lane.kind} lane; the CLI redeems on counters")
        rid = bytes.fromhex(args.id) if args.id else None
        if rid is not None and len(rid) != 16:
            raise ValueError("--id: a redemption id is 32 hex digits")
        return _show_decision(
            args,
            svc.redeem(_read_code(args.code), args.lane, redemption_id=rid, at=parse_at(args.at)),
        )


def _show_json_decision(args: argparse.Namespace, doc: dict[str, Any]) -> int:
    admit = doc.get("decision") == "admit"
    reason = doc.get("reason", "")
    text = REASON_TEXT.get(Reason(reason)) if reason in set(Reason) else None
    human = f"{'ADMIT 通过' if admit else 'DENY 拒绝'}  {reason}"
    if text:
        human += f": {text[0]} / {text[1]}"
    for key in ("detail", "redemption_id", "state", "passed", "line_zh"):
        if doc.get(key):
            human += f"\n  {key}: {doc[key]}"
    _emit(args, doc, human)
    return EXIT_OK if admit else EXIT_DENY


def cmd_scan(args: argparse.Namespace) -> int:
    state = _daemon_state(args)
    if state is None:
        raise EdgeError("no daemon is running for this box: start it with `edge run`")
    doc = client.call(
        state, "POST", f"/api/v1/lanes/{args.lane}/scan", {"code": _read_code(args.code)}
    )
    if doc.get("duplicate"):
        _emit(args, doc, "IGNORED 忽略: the same ticket was just read on this lane / 重复读取")
        return EXIT_OK
    if doc.get("decision") == "free_passage":
        _emit(args, doc, f"FREE PASSAGE 自由通行: {doc.get('line_zh')} / {doc.get('line_en')}")
        return EXIT_OK
    if doc.get("decision") == "confirm":  # a voucher at a counter: the cashier's tap redeems
        _emit(args, doc, "CONFIRM 待确认: valid voucher, not redeemed yet / 有效券，尚未核销")
        return EXIT_OK
    return _show_json_decision(args, doc)


def cmd_api(args: argparse.Namespace) -> int:
    state = _daemon_state(args)
    if state is None:
        raise EdgeError("no daemon is running for this box: start it with `edge run`")
    try:
        body = json.loads(args.body) if args.body else ({} if args.method == "POST" else None)
    except ValueError as err:
        raise ValueError(f"body: not valid JSON: {err}") from err
    path = args.path if args.path.startswith("/") else "/" + args.path
    print(json.dumps(client.call(state, args.method, path, body), ensure_ascii=False, indent=2))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from edge.daemon import run_daemon
    from edge.logfmt import setup_logging

    setup_logging(args.log_level, args.log_format)
    bundle = None
    on_ready = None
    if args.demo:
        from edge import demo

        real = demo.real_anchor_installed()
        home = Path(args.home) if args.home else demo.default_demo_home()
        if real is None and (home / cfgmod.CONFIG_NAME).exists() and not (home / "DEMO").exists():
            real = home / cfgmod.CONFIG_NAME
        if real is not None:
            raise EdgeError(
                f"refusing --demo: a real trust anchor is installed ({real}); "
                "run `edge run` without --demo / 已安装正式信任根，不能运行演示"
            )
        site = demo.prepare_demo(home)
        config = cfgmod.load(site.config_path, home)
        bundle = site.bundle_path

        def on_ready(d: Any) -> None:
            exe = Path(sys.argv[0])
            command = str(exe) if exe.name == "edge" and exe.exists() else "edge"
            print(demo.render_samples(site, d.url, command=command), flush=True)

    else:
        path, state = cfgmod.locate(args.config, args.home)
        if not path.exists():
            raise EdgeError(
                f"no configuration at {path}. Provision this box (`edge provision`, see "
                "systemd/README.md), pass --config/--home, or try `edge run --demo` "
                "/ 未找到配置：请先配置本机，或运行 edge run --demo 体验演示"
            )
        config = cfgmod.load(path, state)
    extensions: list[Any] = []
    if config.sync is not None:
        from edge.cloud import CloudLink

        extensions.append(CloudLink(config.sync))
    from kiosk_ui.extension import Kiosk

    extensions.append(Kiosk())  # the cashier's web UI and its logins
    return run_daemon(config, bundle=bundle, on_ready=on_ready, extensions=extensions)


def cmd_status(args: argparse.Namespace) -> int:
    with _service(args, write=False) as svc:
        st = svc.status()
        st["tls"] = tls_info(svc.config, create=False)  # never makes a certificate
    cache = st["cache"]
    lines = [f"site {st['site']}  device {st['device']}", f"trust anchor {st['trust_anchor']}"]
    if cache["active"]:
        lines.append(
            f"cache seq {cache['seq']}  issued {cache['issued_at']}  age {cache['age_s']} s"
            f"  {'STALE 过旧' if cache['stale'] else 'fresh'}  {cache['counts']}"
        )
    else:
        lines.append("cache: none — import a bundle / 尚未导入票务数据")
    lines.append(
        f"clock {'SUSPECT 异常: ' + st['clock']['why'] if st['clock']['suspect'] else 'ok'}"
    )
    lines.append(f"ledger {st['ledger']['redemptions']}  outbox {st['ledger']['outbox_depth']}")
    lines.append(_tls_line(st["tls"]))
    _emit(args, st, "\n".join(lines))
    return EXIT_OK


def _tls_line(tls: dict[str, Any]) -> str:
    if not tls["enabled"]:
        return "https off (loopback only) / 未启用 HTTPS（仅本机访问）"
    if tls["fingerprint"] is None:
        return "https on: the certificate is made at the daemon's start / 证书将在服务启动时生成"
    return (
        f"https {tls['source']} certificate, SHA-256 fingerprint 证书指纹 {tls['fingerprint']}"
        f"  until {tls['not_after']}"
    )


def cmd_check(args: argparse.Namespace) -> int:
    config = _load_config(args)
    problems = config_problems(config)
    doc = {
        "schema": SCHEMA_VERSION,
        "config": str(config.path),
        "ok": not problems,
        "problems": problems,
        "lanes": sorted(config.lanes),
        "devices": sorted(config.devices),
    }
    if problems:
        human = "\n".join(
            [f"{config.path}: configuration problems / 配置错误:"] + [f"  {p}" for p in problems]
        )
    else:
        human = (
            f"{config.path}: OK / 配置正确 ({len(config.lanes)} lanes, "
            f"{len(config.devices)} devices, state in {config.state_dir})"
        )
    _emit(args, doc, human)
    return EXIT_OK if not problems else EXIT_ERROR


def cmd_doctor(args: argparse.Namespace) -> int:
    config = _load_config(args)
    if daemon_url(config.state_dir) is not None:
        # The daemon holds the ports: ask it instead of opening them a second time.
        if args.test_page:
            raise EdgeError("stop the daemon for --test-page, or print one from the kiosk")
        st = client.call(config.state_dir, "GET", "/api/v1/status")
        checks = [
            DeviceCheck(
                d["name"],
                d["class"],
                d["driver"],
                config.devices[d["name"]].url if d["name"] in config.devices else "",
                bool(d["up"]),
                "up (daemon running) / 运行中" if d["up"] else f"down: {d['error']}",
                d["hint"],
                0.0,
            )
            for d in st["devices"]
        ]
    else:
        checks = run_doctor(config.devices, test_page=args.test_page)
    doc = {
        "schema": SCHEMA_VERSION,
        "devices": [c.to_json() for c in checks],
        "ok": all(c.ok for c in checks),
    }
    _emit(args, doc, render_table(checks))
    return EXIT_OK if doc["ok"] else EXIT_DENY


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.app import run_scripted_demo

    return run_scripted_demo(args.dir)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        code: int = args.func(args)
        return code
    except (EdgeError, ValueError, OSError) as err:
        return _error(args, err)
    except Exception as err:
        log.exception("unexpected error")
        return _error(args, err)


def _error(args: argparse.Namespace, err: BaseException) -> int:
    msg = f"{type(err).__name__}: {err}"
    if getattr(args, "json", False):
        print(
            json.dumps(
                {
                    "schema": SCHEMA_VERSION,
                    "decision": "error",
                    "reason": "error",
                    "error": msg,
                    "canonical_id": None,
                    "redemption_id": None,
                    "cache_seq": None,
                    "clock_suspect": None,
                },
                ensure_ascii=False,
            )
        )
    else:
        print(f"error 错误: {msg}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
