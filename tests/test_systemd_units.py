"""The box's systemd files, checked without systemd as PID 1 (systemd/README.md says what only a
real box shows): the units lint clean and keep their exposure score and their contract with
`edge run`, and the udev rules, sysusers.d, tmpfiles.d and journald files are read by the real
tools. tests/test_systemd_run.py runs the daemon and the kiosk as the units start them."""

from __future__ import annotations

import dataclasses
import grp
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge import config as cfgmod
from edge.cli import build_parser, cmd_run
from tests.unit_sandbox import unit_sections

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
GATEWAY = UNITS / "edge-gateway.service"
KIOSK = UNITS / "edge-kiosk.service"
RULES = UNITS / "udev" / "70-edge-devices.rules"
SYSUSERS = UNITS / "sysusers.d" / "edge.conf"
TMPFILES = UNITS / "tmpfiles.d" / "edge.conf"
JOURNALD = UNITS / "journald" / "edge.conf"
# Executables a box gets from install.sh or apt that this machine need not have.
INSTALLED_ON_THE_BOX = {"/opt/edge/current/venv/bin/edge"}


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


def exec_paths(path: Path) -> list[str]:
    """Absolute executables named by the Exec*= lines (systemd's prefixes stripped)."""
    out = []
    for key, values in unit_sections(path)["Service"].items():
        if key.startswith("Exec"):
            out += [shlex.split(v)[0].lstrip("-+@!:") for v in values]
    return out


def sysusers() -> tuple[set[str], dict[str, set[str]]]:
    """Users declared in sysusers.d/edge.conf and, per user, the groups it is made a member of."""
    users, groups = set(), dict[str, set[str]]()
    for line in SYSUSERS.read_text().splitlines():
        f = line.split()
        if f and f[0] == "u":
            users.add(f[1])
        elif f and f[0] == "m":
            groups.setdefault(f[1], set()).add(f[2])
    return users, groups


def test_verify_prints_nothing_for_either_unit(tmp_path: Path) -> None:
    # `verify --root` checks the files themselves, byte for byte: a scratch root holds a copy of
    # the system's units (targets, getty@...), ours, and stand-ins for the executables.
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in (GATEWAY, KIOSK):
        shutil.copy(unit, root / "etc/systemd/system")
        for exe in exec_paths(unit):
            assert exe in INSTALLED_ON_THE_BOX or os.access(exe, os.X_OK), f"{unit.name}: {exe}"
            stub = root / exe.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
    typo = GATEWAY.read_text().replace("WatchdogSec=", "WatchdogSecs=")
    (root / "etc/systemd/system/edge-typo.service").write_text(typo)
    r = run("systemd-analyze", "verify", "--man=no", f"--root={root}", GATEWAY.name, KIOSK.name)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr
    # verify exits 0 on a typo and only says it: the check above fails on any output.
    r = run("systemd-analyze", "verify", "--man=no", f"--root={root}", "edge-typo.service")
    assert r.returncode == 0 and "Unknown key 'WatchdogSecs'" in r.stderr, r.stderr


def test_gateway_exposure_at_most_2_5() -> None:
    r = run("systemd-analyze", "security", "--offline=yes", "--no-pager", str(GATEWAY))
    found = re.search(r"Overall exposure level for edge-gateway\.service: (\d+\.\d+)", r.stdout)
    assert found, r.stdout[-2000:] + r.stderr
    assert float(found[1]) <= 2.5, r.stdout


def test_gateway_unit_is_what_a_box_nobody_visits_needs() -> None:
    u = unit_sections(GATEWAY)
    unit, svc = u["Unit"], u["Service"]
    assert svc["Type"] == ["notify"] and svc["Restart"] == ["always"] and "WatchdogSec" in svc
    assert unit["StartLimitIntervalSec"] == ["0"]  # never gives up restarting
    assert svc["KillMode"] == ["mixed"]  # SIGTERM to the daemon only: it stops its link child
    assert "network-online.target" not in " ".join(unit.get("After", []) + unit.get("Wants", []))
    # The command line is one `edge run` understands, and the lookup it leads to is the unit's
    # directories: config in /etc/edge, state in /var/lib/edge (not beside the read-only config).
    argv = shlex.split(svc["ExecStart"][0])
    assert argv[0] == "/opt/edge/current/venv/bin/edge"
    args = build_parser().parse_args(argv[1:])
    assert args.func is cmd_run and not args.demo
    env = {
        "CONFIGURATION_DIRECTORY": "/etc/" + svc["ConfigurationDirectory"][0],
        "STATE_DIRECTORY": "/var/lib/" + svc["StateDirectory"][0],
    }
    with pytest.MonkeyPatch.context() as mp:
        for k in ("EDGE_HOME", *env):
            mp.delenv(k, raising=False)
        for k, v in env.items():
            mp.setenv(k, v)
        assert cfgmod.locate(args.config, args.home) == (
            Path("/etc/edge/edge.toml"),
            Path("/var/lib/edge"),
        )
    # Its user and groups come from sysusers.d; its devices stay reachable.
    users, member_of = sysusers()
    assert svc["User"] == ["edge"] and svc["Group"] == ["edge"] and "edge" in users
    wanted = set(" ".join(svc["SupplementaryGroups"]).split())
    assert wanted == {"dialout", "lp", "input", "video"} == member_of["edge"]
    allowed = {tuple(v.split()) for v in svc["DeviceAllow"]}
    for cls in ("ttyS", "ttyUSB", "ttyACM", "usb", "usb_device", "input", "video4linux"):
        assert (f"char-{cls}", "rw") in allowed, cls
    assert svc["DevicePolicy"] == ["closed"]
    # PrivateDevices would hide /dev/tty*; PrivateUsers would drop the device groups.
    assert svc.get("PrivateDevices", ["no"]) == ["no"] and svc.get("PrivateUsers", ["no"]) == ["no"]


def test_kiosk_unit_shows_the_gateways_kiosk_page(tmp_path: Path) -> None:
    u = unit_sections(KIOSK)
    unit, svc = u["Unit"], u["Service"]
    assert svc["Restart"] == ["always"] and unit["StartLimitIntervalSec"] == ["0"]
    assert "edge-gateway.service" in unit["After"] and "edge-gateway.service" in unit["Wants"]
    users, member_of = sysusers()
    assert svc["User"] == ["edge-kiosk"] and "edge-kiosk" in users
    assert not member_of["edge-kiosk"] & {"dialout", "lp", "input"}  # not the gateway's devices
    # The default URL is the daemon's default listen address and the kiosk path.
    listen = next(
        f.default for f in dataclasses.fields(cfgmod.BoxConfig) if f.name == "http_listen"
    )
    env = dict(v.split("=", 1) for v in svc["Environment"])
    assert env["KIOSK_URL"] == f"http://{listen}/kiosk/"
    # ExecStart as systemd hands it to bash ($$ -> $, %% -> %), with a stand-in for cage that
    # records what it was given: it waits for the gateway's port, then runs chromium in kiosk
    # mode on the URL, with the profile in the state directory and the extra flags.
    bash = shlex.split(svc["ExecStart"][0].replace("$$", "$").replace("%%", "%"))
    assert bash[:2] == ["/bin/bash", "-c"] and "exec /usr/bin/cage " in bash[2]
    cage = tmp_path / "cage"
    cage.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/argv\n')
    cage.chmod(0o755)
    with socket.create_server(("127.0.0.1", 0)) as srv:
        url = f"http://127.0.0.1:{srv.getsockname()[1]}/kiosk/"
        run_env = env | {
            "PATH": os.environ["PATH"],
            "KIOSK_URL": url,
            "KIOSK_BROWSER_FLAGS": "--lang=zh-CN --force-device-scale-factor=1.25",
            "STATE_DIRECTORY": "/var/lib/edge-kiosk",
            "RUNTIME_DIRECTORY": "/run/edge-kiosk",
        }
        t0 = time.monotonic()
        script = bash[2].replace("/usr/bin/cage", str(cage))
        r = run("/bin/bash", "-c", script, env=run_env)
    assert r.returncode == 0 and time.monotonic() - t0 < 5, r.stdout + r.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[:3] == [env["KIOSK_CAGE_FLAGS"], "--", "/usr/bin/chromium"] and "--kiosk" in argv
    assert "--user-data-dir=/var/lib/edge-kiosk/chromium" in argv
    assert argv[-3:] == ["--lang=zh-CN", "--force-device-scale-factor=1.25", url]


RULE_KEYS = {  # key -> (may match, may assign), from udev(7)
    **dict.fromkeys(("ACTION", "DEVPATH", "KERNEL", "KERNELS", "SUBSYSTEMS", "DRIVER"), (1, 0)),
    **dict.fromkeys(("SUBSYSTEM", "DRIVERS", "ATTRS", "TAGS", "TEST", "PROGRAM", "RESULT"), (1, 0)),
    **dict.fromkeys(("NAME", "SYMLINK", "ENV", "ATTR", "SYSCTL", "TAG", "CONST"), (1, 1)),
    **dict.fromkeys(("OWNER", "GROUP", "MODE", "RUN", "LABEL", "GOTO", "IMPORT"), (0, 1)),
    "OPTIONS": (0, 1),
}
PAIR = re.compile(r'([A-Z]+)(\{[^}]*\})?(==|!=|\+=|-=|:=|=)"([^"]*)"')


def rule_lines() -> list[tuple[int, str]]:
    """Active rules and example rules (a commented-out rule: `#KEY...`), with line numbers."""
    out = []
    for n, line in enumerate(RULES.read_text().splitlines(), 1):
        if re.match(r"#?[A-Z]+(\{[^}]*\})?(==|!=)", line):
            out.append((n, line.removeprefix("#")))
    return out


def readme_names() -> set[str]:
    table = (UNITS / "README.md").read_text().split("## Device names", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`([a-z][a-z0-9-]*)`", table))


def test_udev_rules_are_well_formed_and_use_the_documented_names() -> None:
    lines = rule_lines()
    assert len(lines) >= 10
    groups = set(" ".join(unit_sections(GATEWAY)["Service"]["SupplementaryGroups"]).split())
    names = readme_names()
    for n, line in lines:
        pairs = [p.strip() for p in line.split(", ")]
        parsed = [PAIR.fullmatch(p) for p in pairs]
        assert all(parsed), f"line {n}: {line}"
        seen: dict[str, str] = {}
        for m in parsed:
            assert m is not None
            key, attr, op, value = m.groups()
            match_ok, assign_ok = RULE_KEYS[key]
            assert match_ok if op in ("==", "!=") else assign_ok, f"line {n}: {key}{op}"
            assert bool(attr) == (key in ("ENV", "ATTR", "ATTRS", "SYSCTL", "CONST")) or key in (
                "IMPORT",
                "RUN",
                "TEST",
            ), f"line {n}: {key}{attr or ''}"
            seen[key] = value
        assert "SUBSYSTEM" in seen, f"line {n}: a rule for one device class only"
        if "GROUP" in seen:
            assert seen["GROUP"] in groups and seen.get("MODE") == "0660", f"line {n}"
        if "SYMLINK" in seen:
            prefix, _, name = seen["SYMLINK"].partition("/")
            assert prefix == "edge" and name in names, f"line {n}: /dev/{seen['SYMLINK']}"
    # After the rules that provide ID_SERIAL / ID_PATH for ttys, input, cameras and USB devices.
    for provider in ("50-udev-default", "60-serial", "60-persistent-input", "60-persistent-v4l"):
        assert RULES.name > provider + ".rules"


@pytest.fixture
def isolated_udev(tmp_path: Path) -> Iterator[Path]:
    """A rules dir for `udevadm test`, which on systemd 252 really creates links and db files:
    it runs in a private mount namespace with empty /dev and /run so the machine is untouched."""
    if os.geteuid() != 0 or not shutil.which("udevadm") or not shutil.which("unshare"):
        pytest.skip("needs root, udevadm and unshare")
    if run("unshare", "-m", "true").returncode != 0:
        pytest.skip("no mount namespaces here")
    rules = tmp_path / "rules.d"
    rules.mkdir()
    yield rules


def test_udevadm_parses_the_rules_and_every_example(isolated_udev: Path) -> None:
    text = "\n".join(line for _, line in rule_lines()) + "\n"
    (isolated_udev / RULES.name).write_text(text)
    (isolated_udev / "71-broken.rules").write_text('SUBSYSTEM=="tty", SYMLNK+="x"\n')
    script = f"""set -e
        mount --make-rprivate /
        mount -t tmpfs -o mode=0755 tmpfs /run
        mount -t tmpfs -o mode=0755 tmpfs /dev
        mknod -m 0666 /dev/null c 1 3
        test ! -e /dev/tty
        mount --bind {shlex.quote(str(isolated_udev))} /etc/udev/rules.d
        udevadm test /sys/class/mem/null 2>&1"""
    r = run("unshare", "-m", "sh", "-c", script)
    assert r.returncode == 0, r.stdout + r.stderr
    read = re.findall(r"^Reading rules file: (\S+)", r.stdout, re.M)
    ours = f"/etc/udev/rules.d/{RULES.name}"
    assert ours in read, r.stdout
    assert read.index(ours) > max(i for i, f in enumerate(read) if "/60-" in f)
    assert "71-broken.rules:1 Invalid key 'SYMLNK'" in r.stdout  # errors do get reported
    problems = [ln for ln in r.stdout.splitlines() if ln.startswith(ours + ":")]
    assert not problems, problems


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    """A root holding this machine's account files, for sysusers/tmpfiles --root."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        if Path("/etc", name).exists():
            shutil.copy(Path("/etc", name), root / "etc" / name)
    return root


def accounts(root: Path, name: str) -> dict[str, list[str]]:
    return {
        f[0]: f for f in (ln.split(":") for ln in (root / "etc" / name).read_text().splitlines())
    }


def test_sysusers_makes_edge_a_member_of_debians_device_groups(scratch_root: Path) -> None:
    r = run("systemd-sysusers", f"--root={scratch_root}", str(SYSUSERS))
    assert r.returncode == 0 and "rror" not in r.stderr, r.stderr
    users, groups = accounts(scratch_root, "passwd"), accounts(scratch_root, "group")
    assert users["edge"][5:] == ["/var/lib/edge", "/usr/sbin/nologin"]
    assert users["edge-kiosk"][5] == "/var/lib/edge-kiosk"
    host = {g.gr_name: g.gr_gid for g in grp.getgrall()}
    for name in ("dialout", "lp", "input", "video"):
        assert "edge" in groups[name][3].split(","), name
        if name in host:  # Debian's group, not a new one of the same name
            assert groups[name][2] == str(host[name]), name
    assert "edge-kiosk" not in groups["dialout"][3]
    before = {p.name: p.read_bytes() for p in (scratch_root / "etc").iterdir()}
    assert run("systemd-sysusers", f"--root={scratch_root}", str(SYSUSERS)).returncode == 0
    after = {p.name: p.read_bytes() for p in (scratch_root / "etc").iterdir()}
    assert {k: v for k, v in after.items() if not k.endswith("-")} == {
        k: v for k, v in before.items() if not k.endswith("-")
    }  # a second run changes nothing


def test_tmpfiles_hands_the_state_back_to_edge(scratch_root: Path) -> None:
    assert run("systemd-sysusers", f"--root={scratch_root}", str(SYSUSERS)).returncode == 0
    uid = int(accounts(scratch_root, "passwd")["edge"][2])
    r = run("systemd-tmpfiles", "--create", f"--root={scratch_root}", str(TMPFILES))
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr
    state = scratch_root / "var/lib/edge"
    assert state.stat().st_uid == uid and state.stat().st_mode & 0o777 == 0o700
    # A technician ran `sudo edge ...` with the daemon stopped: root's files, fixed at boot.
    (state / "ledger.db-wal").write_bytes(b"x")
    (state / "certs").mkdir()
    (state / "certs" / "box.key").write_bytes(b"k")
    outside = scratch_root / "secret"
    outside.write_text("root only")
    (state / "link").symlink_to(outside)
    r = run("systemd-tmpfiles", "--create", f"--root={scratch_root}", str(TMPFILES))
    assert r.returncode == 0, r.stderr
    for p in ("ledger.db-wal", "certs", "certs/box.key"):
        assert (state / p).stat().st_uid == uid, p
    assert outside.stat().st_uid == 0  # a link is not followed


def test_journald_dropin_caps_the_journal() -> None:
    journald = next(
        p for p in ("/usr/lib/systemd/systemd-journald", "/lib/systemd/systemd-journald")
    )
    known = set(re.findall(rb"Journal\.([A-Za-z]+)", Path(journald).read_bytes()))
    sections = unit_sections(JOURNALD)
    assert list(sections) == ["Journal"]
    conf = {k: v[-1] for k, v in sections["Journal"].items()}
    assert {k.encode() for k in conf} <= known, set(conf) - {k.decode() for k in known}
    size = re.compile(r"\d+[KMG]")
    for key in ("SystemMaxUse", "SystemKeepFree", "SystemMaxFileSize", "RuntimeMaxUse"):
        assert size.fullmatch(conf[key]), key
    assert conf["Storage"] == "persistent" and conf["SystemMaxUse"].endswith("M")
    assert int(conf["SystemMaxUse"][:-1]) <= 500
    for key in ("MaxRetentionSec", "RateLimitIntervalSec"):
        assert run("systemd-analyze", "timespan", conf[key]).returncode == 0, conf[key]
