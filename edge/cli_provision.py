"""`edge init` and `edge provision` (edge/cli.py): a box's first config and its enrollment with
the hub, by flags, from a --device-map, or by the wizard (edge/provision_wizard.py).

Composition root (tests/check_layers.py): enrollment itself is sync/provision.py.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from pathlib import Path
from typing import Any

from edge import config as cfgmod
from edge import provision_flow
from edge.cli_common import EXIT_ERROR, EXIT_OK, emit
from edge.errors import EdgeError
from edge.trust import TrustAnchor


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `edge init` and `edge provision`."""
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


def provision_steps() -> provision_flow.Steps[Any]:
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
            provision_steps(),
            ask=input,
            say=print,
            config=path,
            state_dir=state,
            defaults=vars(args),
            force=args.force,
        )
    if args.device_map:
        plan = provision_flow.plan_from_flags(args)
        out = provision_flow.execute(plan, provision_steps())
        emit(args, out.to_json(plan), provision_flow.report(plan, out))
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
        emit(args, doc, f"NOT PROVISIONED 注册失败  {err.reason}: {err.detail}")
        return EXIT_ERROR
    doc = {
        "provisioned": True,
        "config": str(conf),
        "site": args.site,
        "device": args.device,
        "anchor_fingerprint": material.anchor.fingerprint,
    }
    emit(
        args,
        doc,
        f"PROVISIONED 注册完成  {args.device} @ {args.site}\n  config {conf}\n"
        f"  trust anchor 信任根 {material.anchor.fingerprint}\n  start it: edge run",
    )
    return EXIT_OK
