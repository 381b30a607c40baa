"""The commands on one box (edge/cli.py): bundle import, validate, redeem, scan, the running
daemon's API, status, check and doctor. While a daemon runs on the box's state, the commands that
write go through its API (it is then the only writer).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from edge import client
from edge.cli_common import (
    EXIT_DENY,
    EXIT_ERROR,
    EXIT_OK,
    daemon_state,
    emit,
    load_config,
    parse_at,
    read_code,
    service,
    show_decision,
    show_json_decision,
)
from edge.client import daemon_url
from edge.decision import SCHEMA_VERSION, iso
from edge.doctor import DeviceCheck, config_problems, render_table, run_doctor
from edge.errors import BundleRefused, EdgeError
from edge.http_tls import tls_info


def cmd_bundle_import(args: argparse.Namespace) -> int:
    if (state := daemon_state(args)) is not None:
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
            emit(args, doc, f"REFUSED 拒绝导入  {doc['reason']}: {doc['detail']}")
            return EXIT_DENY
        emit(
            args,
            doc,
            f"APPLIED 已导入  {doc['kind']} seq {doc['seq']}  {json.dumps(doc['counts'])}",
        )
        return EXIT_OK
    with service(args, write=True) as svc:
        try:
            r = svc.import_bundle(args.file, parse_at(args.at))
        except BundleRefused as err:
            doc = {
                "schema": SCHEMA_VERSION,
                "decision": "refused",
                "reason": err.reason,
                "detail": err.detail,
            }
            emit(
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
        emit(args, doc, f"APPLIED 已导入  {r.kind} seq {r.seq}  {json.dumps(r.counts)}")
        return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    with service(args, write=False) as svc:
        return show_decision(args, svc.validate(read_code(args.code), args.lane, parse_at(args.at)))


def cmd_redeem(args: argparse.Namespace) -> int:
    if (state := daemon_state(args)) is not None:
        if args.at:
            raise EdgeError("--at cannot be used while the daemon runs (it decides at its time)")
        body = {"code": read_code(args.code), "lane": args.lane, "redemption_id": args.id}
        return show_json_decision(args, client.call(state, "POST", "/api/v1/redeem", body))
    with service(args, write=True) as svc:
        lane = svc.config.lanes.get(args.lane)
        if lane is not None and lane.kind != "counter":
            raise EdgeError(f"lane {args.lane} is a {lane.kind} lane; the CLI redeems on counters")
        rid = bytes.fromhex(args.id) if args.id else None
        if rid is not None and len(rid) != 16:
            raise ValueError("--id: a redemption id is 32 hex digits")
        return show_decision(
            args,
            svc.redeem(read_code(args.code), args.lane, redemption_id=rid, at=parse_at(args.at)),
        )


def cmd_scan(args: argparse.Namespace) -> int:
    state = daemon_state(args)
    if state is None:
        raise EdgeError("no daemon is running for this box: start it with `edge run`")
    doc = client.call(
        state, "POST", f"/api/v1/lanes/{args.lane}/scan", {"code": read_code(args.code)}
    )
    if doc.get("duplicate"):
        emit(args, doc, "IGNORED 忽略: the same ticket was just read on this lane / 重复读取")
        return EXIT_OK
    if doc.get("decision") == "free_passage":
        emit(args, doc, f"FREE PASSAGE 自由通行: {doc.get('line_zh')} / {doc.get('line_en')}")
        return EXIT_OK
    if doc.get("decision") == "confirm":  # a voucher at a counter: the cashier's tap redeems
        emit(args, doc, "CONFIRM 待确认: valid voucher, not redeemed yet / 有效券，尚未核销")
        return EXIT_OK
    return show_json_decision(args, doc)


def cmd_api(args: argparse.Namespace) -> int:
    state = daemon_state(args)
    if state is None:
        raise EdgeError("no daemon is running for this box: start it with `edge run`")
    try:
        body = json.loads(args.body) if args.body else ({} if args.method == "POST" else None)
    except ValueError as err:
        raise ValueError(f"body: not valid JSON: {err}") from err
    path = args.path if args.path.startswith("/") else "/" + args.path
    print(json.dumps(client.call(state, args.method, path, body), ensure_ascii=False, indent=2))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    with service(args, write=False) as svc:
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
    emit(args, st, "\n".join(lines))
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
    config = load_config(args)
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
    emit(args, doc, human)
    return EXIT_OK if not problems else EXIT_ERROR


def cmd_doctor(args: argparse.Namespace) -> int:
    config = load_config(args)
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
    emit(args, doc, render_table(checks))
    return EXIT_OK if doc["ok"] else EXIT_DENY
