"""The `edge` command: box commands, and the reference cloud tools under `edge hub`.

Exit codes: 0 admit or applied, 3 deny or refused, 2 error (an unexpected exception is 2, never
mistaken for a deny). With --json, every outcome (errors too) is one JSON object on stdout.

The parser and the dispatch live here; the commands in edge/cli_box.py (one box's codes, bundles,
status, doctor), edge/cli_provision.py (init, provision), kiosk_ui/users.py (`edge user`) and
sync/hub/cli.py (`edge hub`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from edge import cli_provision
from edge import config as cfgmod
from edge.cli_box import (
    cmd_api,
    cmd_bundle_import,
    cmd_check,
    cmd_doctor,
    cmd_redeem,
    cmd_scan,
    cmd_status,
    cmd_validate,
)
from edge.cli_common import EXIT_ERROR, box_command, load_config
from edge.decision import SCHEMA_VERSION
from edge.errors import EdgeError
from kiosk_ui.users import register as register_users
from sync.hub.cli import register as register_hub

log = logging.getLogger("edge.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge", description="Edge gateway for stores and scenic sites / 门店与景区边缘网关"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    cli_provision.register(sub)

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
        p = box_command(sub, name, help_, func)
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
    box_command(sub, "status", "cache, ledger, clock and lanes of this box", cmd_status)
    box_command(
        sub, "check", "validate the configuration (file, trust anchor, device URLs)", cmd_check
    )
    p = box_command(
        sub, "doctor", "open each configured device and run a harmless self-test", cmd_doctor
    )
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

    p = box_command(
        sub, "scan", "hand a code to a lane of the running daemon (as if scanned)", cmd_scan
    )
    p.add_argument("code", help="the code, or - to read it from stdin")
    p.add_argument("--lane", required=True, help="lane name from the config")

    p = box_command(
        sub, "api", "call the running daemon's HTTP API (docs/daemon.md)", cmd_api, data=False
    )
    p.add_argument("method", choices=("GET", "POST"))
    p.add_argument("path", help="e.g. /api/v1/status")
    p.add_argument("body", nargs="?", help="JSON body for POST")

    p = sub.add_parser("demo", help="scripted demo: a hub and a box, every kind of code")
    p.add_argument("--dir", type=Path, help="work directory (default: a new temporary one)")
    p.set_defaults(func=cmd_demo)

    register_users(sub, lambda args: load_config(args).state_dir)
    register_hub(sub)
    return parser


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
