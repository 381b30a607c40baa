"""What the `edge` subcommands share (edge/cli.py): exit codes, config lookup, the one-shot
service, and output that is one JSON object with --json or lines for a person without it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from edge import config as cfgmod
from edge.client import daemon_url
from edge.decision import REASON_TEXT, Decision
from edge.rules import Reason
from edge.service import RedemptionService
from edge.store import WriteLock

EXIT_OK, EXIT_ERROR, EXIT_DENY = 0, 2, 3


def box_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_: str,
    func: Callable[[argparse.Namespace], int],
    data: bool = True,
) -> argparse.ArgumentParser:
    """A subcommand on one box: --config/--home to find it, --json when it prints data."""
    p = sub.add_parser(name, help=help_, description=help_)
    p.add_argument("--config", help="config file (default lookup: see README)")
    p.add_argument("--home", help="box directory holding edge.toml and the state")
    if data:
        p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=func)
    return p


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


def load_config(args: argparse.Namespace) -> cfgmod.BoxConfig:
    path, state = cfgmod.locate(getattr(args, "config", None), getattr(args, "home", None))
    return cfgmod.load(path, state)


@contextmanager
def service(args: argparse.Namespace, write: bool) -> Iterator[RedemptionService]:
    config = load_config(args)
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


def daemon_state(args: argparse.Namespace) -> Path | None:
    """The state directory when a daemon runs on it (then it is the only writer)."""
    config = load_config(args)
    return config.state_dir if daemon_url(config.state_dir) is not None else None


def read_code(arg: str) -> str:
    if arg != "-":
        return arg
    return sys.stdin.readline().rstrip("\r\n")


def emit(args: argparse.Namespace, doc: dict[str, Any], human: str) -> None:
    print(json.dumps(doc, ensure_ascii=False) if getattr(args, "json", False) else human)


def show_decision(args: argparse.Namespace, d: Decision) -> int:
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
    emit(args, d.to_json(), "\n".join(lines))
    return EXIT_OK if d.admit else EXIT_DENY


def show_json_decision(args: argparse.Namespace, doc: dict[str, Any]) -> int:
    """A decision as the daemon's API answered it."""
    admit = doc.get("decision") == "admit"
    reason = doc.get("reason", "")
    text = REASON_TEXT.get(Reason(reason)) if reason in set(Reason) else None
    human = f"{'ADMIT 通过' if admit else 'DENY 拒绝'}  {reason}"
    if text:
        human += f": {text[0]} / {text[1]}"
    for key in ("detail", "redemption_id", "state", "passed", "line_zh"):
        if doc.get(key):
            human += f"\n  {key}: {doc[key]}"
    emit(args, doc, human)
    return EXIT_OK if admit else EXIT_DENY
