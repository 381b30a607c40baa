"""`edge provision --interactive`: the technician's questions, in Chinese and English.

Site and box id, broker, claim token or offline directory, trust-anchor fingerprint; then the
devices found on this box (edge/devscan.py: read from /dev and /sys, nothing is opened), each
given a role or skipped; a summary; then provisioning (edge/provision_flow.py). Nothing is
written before the last question is answered. A bad answer is said plainly and asked again.

Input and output are injected (`ask` like input(), `say` like print()) so tests drive the wizard
with scripted answers; device discovery takes a root directory for a fake /dev + /sys tree.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from drivers.printer.profiles import PROFILES
from edge import provision_flow as flow
from edge import site_plan
from edge.config import BoxConfig
from edge.devscan import KIND_TEXT, SERIAL, Found, discover
from edge.doctor import DeviceCheck
from edge.site_plan import ROLES, Assignment, PlanError, Role

log = logging.getLogger(__name__)

Ask = Callable[[str], str]
Say = Callable[[str], None]
MAX_TRIES = 5
OFFLINE_FILES = ("device.crt", "device.key", "broker-ca.crt", "trust-anchor.json")
# A /dev/edge/NAME link (our udev rules) suggests a role by its name; first match wins.
SUGGEST = (
    ("locker-scanner", "locker-scanner"),
    ("locker", "locker-board"),
    ("gate-in", "gate-in-board"),
    ("gate-out", "gate-out-board"),
    ("gate", "gate-board"),
    ("scanner-in", "gate-in-scanner"),
    ("camera-in", "gate-in-scanner"),
    ("scanner-out", "gate-out-scanner"),
    ("camera-out", "gate-out-scanner"),
    ("counter-scanner", "counter-scanner"),
    ("receipt", "receipt-printer"),
    ("kitchen", "kitchen-printer"),
)


class Aborted(Exception):
    """The technician quit, or gave up after repeated bad answers: nothing was written."""


def _int_in(lo: int, hi: int, what: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if not text.isdigit() or not lo <= int(text) <= hi:
            raise ValueError(f"{what}: a number from {lo} to {hi} / 请输入 {lo}-{hi} 的数字")
        return str(int(text))

    return check


def _optional(check: Callable[[str], str]) -> Callable[[str], str]:
    return lambda text: text and check(text)


def _profile(text: str) -> str:
    if text not in PROFILES:
        raise ValueError(f"printer model: one of {', '.join(PROFILES)} / 打印机型号")
    return text


# Per driver: (URL parameter, question, check); a serial link also asks its speed.
PARAM_QUESTIONS: dict[str, list[tuple[str, str, Callable[[str], str]]]] = {
    "8a": [
        ("board", "板地址（拨码开关） board address (DIP switches)", _int_in(1, 64, "board")),
        ("doors", "接线门数 doors wired", _int_in(1, 512, "doors")),
    ],
    "cu16": [
        ("board", "板地址（拨码开关） board address (DIP switches)", _int_in(0, 15, "board")),
        ("doors", "接线门数 doors wired", _int_in(1, 16, "doors")),
    ],
    "cu48": [
        ("board", "板地址 board address", _int_in(0, 255, "board")),
        ("doors", "接线门数 doors wired", _int_in(1, 48, "doors")),
    ],
    "modbus-relay": [
        (
            "slave",
            "继电器板地址（拨码开关） Modbus address (DIP switches)",
            _int_in(1, 247, "slave"),
        ),
        (
            "fire_input",
            "消防输入端子号，未接请回车 fire alarm input DI number, Enter if not wired",
            _optional(_int_in(1, 32, "fire_input")),
        ),
    ],
    "escpos": [("profile", f"打印机型号 printer model ({', '.join(PROFILES)})", _profile)],
}
SERIAL_SPEED = {"serial": "baud", "escpos": "baudrate"}


class Wizard:
    """Asks the questions and returns a Plan (or None when the technician quits)."""

    def __init__(
        self,
        ask: Ask,
        say: Say,
        *,
        config: Path,
        state_dir: Path,
        root: Path = Path("/"),
        defaults: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> None:
        self.ask, self.say, self.root = ask, say, root
        self.config, self.state_dir, self.force = config, state_dir, force
        self.defaults = {k: v for k, v in (defaults or {}).items() if v is not None}

    # -- primitives --------------------------------------------------------------------------------

    def prompt(self, question: str, check: Callable[[str], str], default: str | None = None) -> str:
        """Ask until `check` accepts the answer (Enter takes the default); Aborted after
        MAX_TRIES bad answers."""
        shown = f" [{default}]" if default else ""
        for _ in range(MAX_TRIES):
            answer = self.ask(f"{question}{shown}: ").strip()
            if not answer and default is not None:
                answer = default
            try:
                return check(answer)
            except ValueError as err:
                self.say(f"  ✗ {err}\n    请重新输入 / please answer again")
        raise Aborted(f"no valid answer to: {question}")

    def yes(self, question: str, default: bool) -> bool:
        def check(text: str) -> str:
            if text.lower() not in ("y", "yes", "n", "no", "是", "否"):
                raise ValueError("y (是 yes) or n (否 no)")
            return text.lower()

        answer = self.prompt(f"{question} (y/n)", check, "y" if default else "n")
        return answer in ("y", "yes", "是")

    def choose(self, question: str, options: list[str], default: str | None = None) -> str:
        """One of `options`, by name or by its number."""

        def check(text: str) -> str:
            if text.isdigit() and 1 <= int(text) <= len(options):
                return options[int(text) - 1]
            if text in options:
                return text
            raise ValueError(f"one of / 请选择: {', '.join(options)}")

        listed = "  ".join(f"{i}) {o}" for i, o in enumerate(options, 1))
        return self.prompt(f"{question}  {listed}", check, default)

    # -- the questions -----------------------------------------------------------------------------

    def gather(self) -> flow.Plan | None:
        self.say(
            "edge provision — 设备注册向导 / provisioning wizard\n"
            "  Enter accepts the [default]; nothing is written before the last question.\n"
            "  回车接受 [默认值]；回答完最后一个问题之前不会写入任何文件。"
        )
        keep = False
        existing = flow.existing_identity(self.config) if self.config.exists() else None
        if self.config.exists() and not self.force:
            who = f"site {existing[0]}, device {existing[1]}" if existing else "unreadable"
            self.say(f"\n{self.config} already exists / 配置文件已存在 ({who}).")
            options = ["keep", "replace", "quit"]
            self.say(
                "  keep 保留: keep its devices and lanes, only enroll (its [sync] is replaced)\n"
                "  replace 替换: write a new one; the old file is kept as "
                f"{self.config.name}.bak-…\n"
                "  quit 退出: change nothing"
            )
            answer = self.choose("现有配置 existing config", options, "quit")
            if answer == "quit":
                return None
            keep = answer == "keep"
            if keep and existing is None:
                raise Aborted(f"{self.config} cannot be read: choose replace, or fix it first")
        if keep and existing is not None:
            site, device = existing
            self.say(f"站点 site: {site}   设备编号 device id: {device} (from the existing config)")
        else:
            d = existing or (None, None)
            site = self.prompt("站点编号 site id", flow.check_site, self.defaults.get("site", d[0]))
            device = self.prompt(
                "本机设备编号 device id (its certificate name, e.g. wl-gate-01)",
                flow.check_device,
                self.defaults.get("device", d[1]),
            )
        broker = self.prompt(
            "消息服务器 MQTT broker HOST:PORT", flow.check_broker, self.defaults.get("broker")
        )
        plan = flow.Plan(site, device, broker, "", self.config, self.state_dir)
        plan.write_config = not keep
        plan.enroll_ca = self.defaults.get("enroll_ca")
        self._enrollment(plan)
        if not keep:
            plan.assignments = self._devices()
            if any(a.role.key == "gate-board" for a in plan.assignments):
                plan.gate_list = self.prompt(
                    "闸机检票列表 check-in list for the gates (from the site's bundle)",
                    flow.check_site,
                    self.defaults.get("gate_list", "default"),
                )
        self._summary(plan)
        return plan if self.yes("写入配置并注册？ Write the config and enroll now?", True) else None

    def _enrollment(self, plan: flow.Plan) -> None:
        default = "offline" if self.defaults.get("from_dir") else "online"
        mode = self.choose("注册方式 enrollment", ["online", "offline"], default)
        self.say(
            "  online 在线: the hub's enrollment URL and a one-time claim token\n"
            "  offline 离线: a directory (USB stick) with " + ", ".join(OFFLINE_FILES)
        )
        if mode == "online":
            plan.enroll_url = self.prompt(
                "注册地址 enrollment URL (https://HOST:PORT)", _https, self.defaults.get("enroll")
            )
            plan.claim = self.prompt("一次性注册码 claim token", _claim, self.defaults.get("claim"))
        else:
            given = self.defaults.get("from_dir")
            plan.from_dir = Path(
                self.prompt(
                    "证书目录 directory with the certificate files",
                    _offline_dir,
                    None if given is None else str(given),
                )
            )
        plan.fingerprint = self.prompt(
            "信任根指纹 trust anchor fingerprint (64 hex, from the operator)",
            flow.check_fingerprint,
            self.defaults.get("anchor_fingerprint"),
        )

    def _devices(self) -> list[Assignment]:
        for _ in range(3):
            assignments = self._assign_all()
            problems = site_plan.problems(assignments)
            if not problems:
                return assignments
            self.say("\n".join(f"  ✗ {p}" for p in problems) + "\n  请重新分配 / assign again")
        raise Aborted("the device roles do not fit together")

    def _assign_all(self) -> list[Assignment]:
        found = discover(self.root)
        self.say("\n本机检测到的设备 / devices found on this box (nothing was opened):")
        if not found:
            self.say("  none / 无 — check cables, then `ls /dev/serial/by-id /dev/input/by-id`")
        for i, f in enumerate(found, 1):
            self.say(f"  {i}) {KIND_TEXT[f.kind]}: {f.describe()}")
        self.say(
            "\n用途 / roles:\n" + "\n".join(f"  {i}) {r.label}" for i, r in enumerate(ROLES, 1))
        )
        self.say("  0) 跳过 skip (Enter)")
        out: list[Assignment] = []
        for i, f in enumerate(found, 1):
            role = self._role(f"设备 {i} 的用途 role of device {i} ({f.path})", f.kind, _suggest(f))
            if role is not None:
                out.append(self._details(role, f.path))
        while True:
            target = self.ask(
                "其他设备：路径或地址，完成请回车 / another device: path or URL "
                "(/dev/ttyS1, tcp://192.168.1.60:9100), Enter when done: "
            ).strip()
            if not target:
                return out
            kind = site_plan.target_kind(target, self.root)
            role = self._role(f"{target} 的用途 role", kind, None)
            if role is not None:
                out.append(self._details(role, target))

    def _role(self, question: str, kind: str, default: Role | None) -> Role | None:
        def check(text: str) -> str:
            if text in ("", "0"):
                return "0"
            if not text.isdigit() or not 1 <= int(text) <= len(ROLES):
                raise ValueError(f"a role number 1-{len(ROLES)}, or 0 to skip / 请输入用途编号")
            role = ROLES[int(text) - 1]
            if kind not in role.kinds:
                raise ValueError(f"a {kind} device cannot be a {role.en} / 该设备不能用作{role.zh}")
            return text

        shown = None if default is None else str(ROLES.index(default) + 1)
        answer = self.prompt(question, check, shown)
        return None if answer == "0" else ROLES[int(answer) - 1]

    def _details(self, role: Role, target: str) -> Assignment:
        driver = None
        if role.device_class != "scanner" and len(role.drivers) > 1:
            driver = self.choose(
                f"  {role.zh}驱动 {role.en} driver", list(role.drivers), role.drivers[0]
            )
        try:
            a = site_plan.assign(role, target, self.root, driver)
        except PlanError as err:  # the role menu checked the kind: only a bad ?query gets here
            raise Aborted(str(err)) from err
        params = dict(a.params)
        questions = list(PARAM_QUESTIONS.get(a.driver, []))
        if a.kind == SERIAL and a.driver in SERIAL_SPEED:
            questions.append(
                (SERIAL_SPEED[a.driver], "波特率 baud rate", _int_in(1200, 921600, "baud"))
            )
        for key, question, check in questions:
            default = params.get(key, "9600" if key in SERIAL_SPEED.values() else None)
            value = self.prompt(f"  {question}", check, default)
            if value:
                params[key] = value
            else:
                params.pop(key, None)
        return Assignment(a.role, a.driver, a.target, params, a.kind)

    def _summary(self, plan: flow.Plan) -> None:
        how = f"online {plan.enroll_url}" if plan.from_dir is None else f"offline {plan.from_dir}"
        lines = [
            "\n摘要 / summary:",
            f"  config 配置 {plan.config}  (state 数据 {plan.state_dir})",
            f"  site 站点 {plan.site}  device 设备 {plan.device}  broker {plan.broker}",
            f"  enrollment 注册 {how}",
        ]
        if not plan.write_config:
            lines.append("  devices and lanes: kept from the existing config / 保留现有设备配置")
        for name, a in zip(site_plan.names(plan.assignments), plan.assignments, strict=True):
            lines.append(f"  {name:<16} {a.role.label}: {site_plan.device_url(a)}")
        if plan.write_config:
            cmd = site_plan.command_line(
                plan.site, plan.device, plan.broker, plan.assignments, plan.gate_list
            )
            lines += ["  the same without questions / 同样配置的命令:", "  " + cmd]
        self.say("\n".join(lines))


def _suggest(f: Found) -> Role | None:
    for path in (f.path, *f.aliases):
        if path.startswith("/dev/edge/"):
            name = posixpath.basename(path)
            for prefix, key in SUGGEST:
                role = site_plan.ROLE_BY_KEY[key]
                if name.startswith(prefix) and f.kind in role.kinds:
                    return role
    return None


def _https(text: str) -> str:
    if not text.startswith("https://") or len(text) <= len("https://"):
        raise ValueError("an https:// URL, e.g. https://hub.example.com:8443 / 以 https:// 开头")
    return text


def _claim(text: str) -> str:
    if not text or text.startswith("-") or any(c.isspace() for c in text):
        raise ValueError("the claim token as printed by `edge hub claim` / 请输入完整的注册码")
    return text


def _offline_dir(text: str) -> str:
    path = Path(text)
    absent = [n for n in OFFLINE_FILES if not (path / n).is_file()]
    if not text or absent:
        raise ValueError(f"{text or '(empty)'} lacks {', '.join(absent)} / 目录中缺少证书文件")
    return text


def run(
    steps: flow.Steps[Any],
    *,
    ask: Ask,
    say: Say,
    config: Path,
    state_dir: Path,
    root: Path = Path("/"),
    defaults: Mapping[str, Any] | None = None,
    force: bool = False,
    doctor: Callable[[BoxConfig], list[DeviceCheck]] | None = None,
) -> int:
    """The whole interactive provisioning; the exit code (0 provisioned, 2 not)."""
    wizard = Wizard(
        ask, say, config=config, state_dir=state_dir, root=root, defaults=defaults, force=force
    )
    try:
        plan = wizard.gather()
    except (Aborted, EOFError, KeyboardInterrupt) as err:
        say(f"\n已取消 aborted: {err or 'input closed'}\n  nothing was written / 未写入任何文件")
        return 2
    if plan is None:
        say("nothing was written / 未写入任何文件")
        return 2
    say("注册中 enrolling…")
    out = flow.execute(plan, steps, root, doctor)
    say(flow.report(plan, out))
    return 0 if out.provisioned else 2
