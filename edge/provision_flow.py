"""Provisioning as one sequence, shared by the wizard and the flags of a mass roll-out:
validate the config -> get the certificate (online claim or offline stick) -> write the config ->
install the certificate and [sync] -> `edge doctor` -> what is left to do.

The enrollment itself is sync/provision.py, which edge/ may not import (tests/check_layers.py):
the composition root (edge/cli.py) hands it in as `Steps`. Order matters for a technician: the
certificate is obtained (and every check on it made) before anything is written, so a refused
claim or a wrong fingerprint leaves the box as it was; a refusal while installing puts the
previous config back.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from edge import config as cfgmod
from edge import site_plan
from edge.client import daemon_url
from edge.config import BoxConfig
from edge.doctor import DeviceCheck, render_table, run_doctor
from edge.errors import EdgeError
from edge.site_plan import Assignment
from edge.trust import normalise_fingerprint

log = logging.getLogger(__name__)

M = TypeVar("M")
SERVICE = "edge-gateway"
SITE_RE = re.compile(r"[A-Za-z0-9._-]{1,32}")
DEVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")  # a config name and a certificate CN


@dataclass
class Plan:
    """Everything provisioning needs, from the wizard's answers or from flags."""

    site: str
    device: str
    broker: str
    fingerprint: str
    config: Path
    state_dir: Path
    enroll_url: str | None = None
    claim: str | None = None
    from_dir: Path | None = None
    enroll_ca: Path | None = None
    assignments: list[Assignment] = field(default_factory=list)
    gate_list: str = "default"
    write_config: bool = True  # False: keep the existing config's devices, only enroll


@dataclass(frozen=True)
class Steps(Generic[M]):
    """Enrollment, from the composition root. `obtain` checks everything and writes nothing;
    `install` writes the key, certificates, trust anchor and [sync]; returns the anchor's
    fingerprint. Both raise EdgeError (with `reason` and `detail` where they have them)."""

    obtain: Callable[[Plan], M]
    install: Callable[[M, Plan], str]


@dataclass
class Outcome:
    provisioned: bool
    reason: str = ""
    detail: str = ""
    config: Path | None = None
    kept: Path | None = None  # the previous config, copied aside
    fingerprint: str = ""
    checks: list[DeviceCheck] = field(default_factory=list)
    doctor_skipped: str = ""
    todo: list[str] = field(default_factory=list)

    def to_json(self, plan: Plan) -> dict[str, Any]:
        return {
            "provisioned": self.provisioned,
            "reason": self.reason or None,
            "detail": self.detail or None,
            "config": None if self.config is None else str(self.config),
            "previous_config": None if self.kept is None else str(self.kept),
            "site": plan.site,
            "device": plan.device,
            "anchor_fingerprint": self.fingerprint or None,
            "devices": [c.to_json() for c in self.checks],
            "doctor_ok": all(c.ok for c in self.checks),
            "todo": self.todo,
        }


def check_site(text: str) -> str:
    if not SITE_RE.fullmatch(text):
        raise ValueError("site: 1-32 of A-Z a-z 0-9 . _ - / 站点编号：1-32 位字母、数字或 . _ -")
    return text


def check_device(text: str) -> str:
    if not DEVICE_RE.fullmatch(text):
        raise ValueError(
            "device id: 1-32 of A-Z a-z 0-9 . _ -, starting with a letter or digit / "
            "设备编号：1-32 位字母、数字或 . _ -，以字母或数字开头"
        )
    return text


def check_broker(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError("broker: HOST:PORT, e.g. mqtt.example.com:8883 / 格式为 主机:端口")
    return text


def check_fingerprint(text: str) -> str:
    if len(normalise_fingerprint(text)) != 64 or not text.strip():
        raise ValueError(
            "fingerprint: 64 hex digits (spaces allowed), as the operator gave it / "
            "指纹为 64 位十六进制数字"
        )
    return text.strip()


def locate(config: str | None, home: str | None) -> tuple[Path, Path]:
    """The config to write and its state directory (as `edge provision` always found them)."""
    path, hint = cfgmod.locate(config, home)
    state = hint or path.parent
    if path.exists():
        with contextlib.suppress(EdgeError):
            state = cfgmod.load(path, hint).state_dir
    return path, state


def existing_identity(path: Path) -> tuple[str, str] | None:
    """(site, device) of an existing config, or None when there is none or it is unreadable."""
    try:
        box = tomllib.loads(path.read_text(encoding="utf-8")).get("box", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return str(box.get("site", "?")), str(box.get("device", "box-1"))


def execute(
    plan: Plan,
    steps: Steps[M],
    root: Path = Path("/"),
    doctor: Callable[[BoxConfig], list[DeviceCheck]] | None = None,
) -> Outcome:
    """Provision as described in the module docstring; never raises for a refusal."""
    text = ""
    if plan.write_config:
        text = site_plan.render(plan.site, plan.device, plan.assignments, plan.gate_list)
        try:
            site_plan.validate(text, plan.config, plan.state_dir)
        except EdgeError as err:
            return Outcome(False, "invalid_config", str(err))
    try:
        material = steps.obtain(plan)
    except EdgeError as err:
        return _refused(err)
    kept = None
    if plan.write_config:
        kept = site_plan.write_config(plan.config, text)
    try:
        fingerprint = steps.install(material, plan)
    except EdgeError as err:
        if plan.write_config:
            site_plan.restore(plan.config, kept)
        return _refused(err)
    _hand_to_service_user(plan.state_dir)
    out = Outcome(True, config=plan.config, kept=kept, fingerprint=fingerprint)
    config = cfgmod.load(plan.config, plan.state_dir)
    running = daemon_url(config.state_dir) is not None
    if running:
        # The daemon holds the ports; opening them a second time would fight it.
        out.doctor_skipped = "the daemon is running / 服务正在运行"
    else:
        out.checks = (doctor or (lambda c: run_doctor(c.devices)))(config)
    out.todo = todo(plan, out, root, running)
    return out


def _refused(err: EdgeError) -> Outcome:
    reason = str(getattr(err, "reason", "") or type(err).__name__)
    return Outcome(False, reason, str(getattr(err, "detail", "") or err))


def _hand_to_service_user(state_dir: Path) -> None:
    """Run as root, provisioning writes root-owned files (the key is 0600) into a state directory
    the service user owns (install.sh made it): hand them over, or the daemon cannot read its
    own key. systemd's StateDirectory= would not: it re-owns only a directory whose top has the
    wrong owner."""
    if os.geteuid() != 0:
        return
    try:
        st = state_dir.stat()
    except OSError:
        return
    if st.st_uid == 0:
        return
    for path in [state_dir / "tls", *sorted((state_dir / "tls").rglob("*"))]:
        with contextlib.suppress(OSError):
            os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)


def todo(plan: Plan, out: Outcome, root: Path, running: bool) -> list[str]:
    """The technician's checklist after provisioning (bilingual)."""
    items: list[str] = []
    for a, path in site_plan.missing(plan.assignments, root):
        items.append(
            f"connect the {a.role.en} ({path}): not found on this box now; check the cable and "
            f"`ls -l /dev/edge /dev/serial/by-id` / 未找到{a.role.zh}，请检查接线"
        )
    for a in plan.assignments:
        if a.target.startswith(("/dev/ttyUSB", "/dev/ttyACM", "/dev/video", "/dev/usb/lp")):
            items.append(
                f"{a.target} is a kernel name that can change after a replug: give it a stable "
                "name (/dev/serial/by-id, or a rule in systemd/udev/, docs/technician.md) / "
                "该设备名重插后可能变化，请使用固定名称"
            )
    for c in out.checks:
        if not c.ok:
            items.append(
                f"fix {c.name} ({c.device_class}): {c.hint or c.detail} / 修复设备 {c.name}"
            )
        elif "fire ALARM" in c.detail:
            items.append(
                f"{c.name}: the fire input reads ALARM, so its lanes let everyone through. No "
                "fire? Check the fire loop's wiring and fire_input/fire_level (docs/technician.md) "
                "/ 消防输入为报警状态：如无火警，请检查消防线路及 fire_input/fire_level 设置"
            )
    keys = {a.role.key for a in plan.assignments}
    for side, zh in (("in", "入口"), ("out", "出口")):
        if f"gate-{side}-board" in keys and f"gate-{side}-scanner" not in keys:
            items.append(
                f"the {side} gate has no scanner: only the kiosk can open it / "
                f"{zh}闸机未配扫码器，只能在收银台开闸"
            )
    if "gate-board" in keys and not keys & {"gate-in-scanner", "gate-out-scanner"}:
        items.append(
            "the gate has no scanner: only the kiosk can open it / 闸机未配扫码器，只能在收银台开闸"
        )
    if not (plan.state_dir / "kiosk.db").exists():
        items.append(
            "create kiosk users / 创建收银台用户: edge user add NAME --role "
            "cashier|supervisor|technician"
        )
    if running:
        items.append(
            f"restart the service to use the new config / 重启服务: systemctl restart {SERVICE}, "
            "then run `edge doctor`"
        )
    else:
        items.append(f"start the service / 启动服务: systemctl enable --now {SERVICE}")
    items.append(
        f"watch it start / 查看启动日志: journalctl -u {SERVICE} -f (READY within a minute; "
        "a new box first fetches the site's ticket data / 新设备先同步票务数据)"
    )
    return items


def report(plan: Plan, out: Outcome) -> str:
    """The human-readable result (bilingual)."""
    if not out.provisioned:
        lines = [
            f"NOT PROVISIONED 注册失败  {out.reason}: {out.detail}",
            "  nothing was changed on this box / 本机未作任何更改",
        ]
        if plan.write_config and plan.assignments:
            lines += [
                "  to retry without answering again (fill in FP and TOKEN) / 重试命令:",
                "  "
                + site_plan.command_line(
                    plan.site, plan.device, plan.broker, plan.assignments, plan.gate_list
                ),
            ]
        return "\n".join(lines)
    lines = [f"PROVISIONED 注册完成  {plan.device} @ {plan.site}", f"  config 配置 {out.config}"]
    if out.kept is not None:
        lines.append(f"  previous config kept as 原配置已备份为 {out.kept}")
    lines += [f"  trust anchor 信任根 {out.fingerprint}", ""]
    if out.doctor_skipped:
        lines.append(f"edge doctor: not run, {out.doctor_skipped}")
    else:
        lines += ["edge doctor:", render_table(out.checks)]
    lines += ["", "TO DO 待办:"] + [f"  [ ] {item}" for item in out.todo]
    return "\n".join(lines)


# -- the flags form (mass roll-out) ----------------------------------------------------------------

REQUIRED = ("site", "device", "broker", "anchor_fingerprint")


def require_flags(args: argparse.Namespace) -> None:
    """The flags the non-interactive form cannot do without; raises EdgeError naming them."""
    lacking = [f"--{k.replace('_', '-')}" for k in REQUIRED if not getattr(args, k, None)]
    if args.enroll is None and args.from_dir is None:
        lacking.append("--enroll URL --claim TOKEN, or --from DIR")
    if lacking:
        raise EdgeError(
            f"edge provision needs {', '.join(lacking)}, or --interactive on a terminal / "
            "缺少参数，或使用 --interactive 交互式注册"
        )


def plan_from_flags(args: argparse.Namespace, root: Path = Path("/")) -> Plan:
    """A Plan from `edge provision` flags with at least one --device-map; raises EdgeError."""
    require_flags(args)
    try:
        check_site(args.site)
        check_device(args.device)
        check_broker(args.broker)
        check_fingerprint(args.anchor_fingerprint)
    except ValueError as err:
        raise EdgeError(str(err)) from err
    path, state = locate(args.config, args.home)
    if path.exists() and not args.force:
        raise EdgeError(
            f"{path} exists: --force replaces its devices and lanes (the old file is kept as "
            f"{path.name}.bak-...), or leave out --device-map to only enroll / 配置已存在"
        )
    assignments = [site_plan.parse_device_map(s, root) for s in args.device_map]
    if found := site_plan.problems(assignments):
        raise EdgeError("; ".join(found))
    return Plan(
        args.site,
        args.device,
        args.broker,
        args.anchor_fingerprint,
        path,
        state,
        enroll_url=args.enroll,
        claim=args.claim,
        from_dir=args.from_dir,
        enroll_ca=args.enroll_ca,
        assignments=assignments,
        gate_list=args.gate_list or "default",
    )
