"""`edge provision --interactive` and `--device-map`: scripted answers, a fake /dev + /sys tree,
offline material on a "stick" (made as in tests/test_provision.py), the real enrollment code
(edge/cli.py's steps over sync/provision.py) and the real `edge doctor`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from drivers.gate.simboard import ModbusRelayBoard
from edge import config as cfgmod
from edge import provision_wizard
from edge.cli import main
from edge.cli_provision import provision_steps
from edge.devscan import INPUT, PRINTER, SERIAL, VIDEO, discover
from sync.hub.enroll import Enroller, EnrollServer, Signer, make_claim
from sync.hub.issuer import Hub
from sync.hub.store import load_registry
from sync.pki import cert_info
from tests.broker import Pki, pki_fixture  # noqa: F401

BOX = "wl-gate-01"
SITE = "west-lake"
FTDI = "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A9ABCDEF-if00-port0"
WEDGE = "/dev/input/by-id/usb-Netum_Barcode_Scanner-event-kbd"


def _file(root: Path, rel: str, text: str = "") -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def _link(root: Path, rel: str, target: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.symlink_to(target)


def fake_box(root: Path, *extra_nodes: str) -> Path:
    """/dev and /sys of a box with an FTDI and a CH340 adapter (the latter named by our udev
    rules), a CDC port with no stable name, a wedge scanner, a UVC camera, a USB printer."""
    for node in ("dev/ttyUSB0", "dev/ttyUSB1", "dev/ttyACM0", "dev/ttyS0", "dev/input/event3"):
        _file(root, node)
    for node in ("dev/input/event4", "dev/video0", "dev/video1", "dev/usb/lp0", *extra_nodes):
        _file(root, node)
    _link(root, FTDI.lstrip("/"), "../../ttyUSB0")
    _link(root, "dev/edge/locker0", "../ttyUSB1")
    _link(root, WEDGE.lstrip("/"), "../event3")
    _link(root, "dev/input/by-id/usb-Netum_Barcode_Scanner-if01-event-mouse", "../event4")
    # ttyUSB0: sysfs only (the USB device's attributes two levels above the port).
    usb = "sys/devices/pci0000:00/usb1/1-1"
    for name, value in (("idVendor", "0403"), ("manufacturer", "FTDI"), ("serial", "A9ABCDEF")):
        _file(root, f"{usb}/{name}", value + "\n")
    _file(root, f"{usb}/product", "FT232R USB UART\n")
    tty = f"{usb}/1-1:1.0/ttyUSB0/tty/ttyUSB0"
    _file(root, f"{tty}/dev", "188:0\n")
    _link(root, f"{tty}/device", "../../../ttyUSB0")
    _link(
        root,
        "sys/class/tty/ttyUSB0",
        "../../devices/pci0000:00/usb1/1-1/1-1:1.0/ttyUSB0/tty/ttyUSB0",
    )
    # ttyUSB1 and lp0: the udev database.
    _file(root, "sys/class/tty/ttyUSB1/dev", "188:1\n")
    _file(root, "run/udev/data/c188:1", "S:edge/locker0\nE:ID_SERIAL=1a86_USB_Serial\n")
    _file(root, "sys/class/usbmisc/lp0/dev", "180:0\n")
    _file(root, "run/udev/data/c180:0", "E:ID_SERIAL=EPSON_TM-T20II_X5PQ001\n")
    _file(root, "sys/class/input/event3/device/name", "Netum Barcode Scanner\n")
    _file(root, "sys/class/video4linux/video0/name", "USB Camera: USB Camera\n")
    _file(root, "sys/class/video4linux/video0/index", "0\n")
    _file(root, "sys/class/video4linux/video1/index", "1\n")  # the metadata node
    return root


class Script:
    """Scripted answers for `ask`; a transcript of prompts, answers and what was said."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.lines: list[str] = []

    def ask(self, prompt: str) -> str:
        if not self.answers:
            raise EOFError
        answer = self.answers.pop(0)
        self.lines.append(f"{prompt}{answer}")
        return answer

    def say(self, text: str) -> None:
        self.lines.append(text)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def stick(tmp_path: Path, pki: Pki) -> tuple[Path, str]:
    """A directory with a certificate for BOX, its key, the broker CA and the trust anchor."""
    hub = Hub.init(tmp_path / "hub")
    d = tmp_path / "stick"
    d.mkdir()
    files = pki.issue(BOX, days=30)
    (d / "device.crt").write_bytes(files.cert.read_bytes())
    (d / "device.key").write_bytes(files.key.read_bytes())
    (d / "broker-ca.crt").write_bytes(pki.ca_file.read_bytes())
    (d / "trust-anchor.json").write_text((hub.dir / "trust-anchor.json").read_text())
    return d, hub.anchor.fingerprint


def run_wizard(tmp_path: Path, script: Script, root: Path, **kw: object) -> int:
    return provision_wizard.run(
        provision_steps(),
        ask=script.ask,
        say=script.say,
        config=tmp_path / "etc" / "edge.toml",
        state_dir=tmp_path / "state",
        root=root,
        **kw,  # type: ignore[arg-type]
    )


def test_discovery_lists_stable_names_without_opening_anything(tmp_path: Path) -> None:
    found = discover(fake_box(tmp_path / "root"))
    by_path = {f.path: f for f in found}
    assert [f.path for f in found] == [
        "/dev/edge/locker0",
        FTDI,
        "/dev/ttyACM0",
        WEDGE,
        "/dev/video0",
        "/dev/usb/lp0",
    ]  # no ttyS0 (a built-in UART), no mouse node, no camera metadata node
    assert [f.kind for f in found] == [SERIAL, SERIAL, SERIAL, INPUT, VIDEO, PRINTER]
    locker = by_path["/dev/edge/locker0"]
    assert (locker.node, locker.label, locker.stable) == ("/dev/ttyUSB1", "1a86_USB_Serial", True)
    assert by_path[FTDI].label == "FTDI_FT232R_USB_UART_A9ABCDEF"  # as udev's ID_SERIAL
    assert by_path[FTDI].aliases == ("/dev/ttyUSB0",)
    assert not by_path["/dev/ttyACM0"].stable
    assert "may change when replugged" in by_path["/dev/ttyACM0"].describe()
    assert by_path[WEDGE].label == "Netum Barcode Scanner"
    assert by_path["/dev/video0"].label == "USB Camera: USB Camera"
    assert by_path["/dev/usb/lp0"].label == "EPSON_TM-T20II_X5PQ001"


def test_the_wizard_writes_a_valid_config_enrolls_and_runs_doctor(
    tmp_path: Path, stick: tuple[Path, str]
) -> None:
    stick_dir, fp = stick
    with ModbusRelayBoard() as board:  # the turnstile's relay board, on a pty
        root = fake_box(tmp_path / "root", board.path.lstrip("/"))
        script = Script(
            "west lake",  # bad: a space
            SITE,
            BOX,
            "mqtt.example.com",  # bad: no port
            "mqtt.example.com:8883",
            "2",  # offline
            str(tmp_path / "nowhere"),  # bad: no certificate files there
            str(stick_dir),
            "abc",  # bad: not a fingerprint
            fp,
            # devices 1-6 as discovered
            "",  # /dev/edge/locker0: Enter takes the suggested locker board
            "",  # driver 8a
            "",  # board address 1
            "16",  # doors
            "8",  # FTDI: counter scanner
            "",  # 9600 baud
            "0",  # ttyACM0: skip
            "6",  # the wedge as a locker board: refused
            "1",  # gate entry scanner
            "",  # camera: skip
            "9",  # the USB printer: receipt printer
            "tm-t21",  # bad model
            "tm-t20",
            # devices typed in
            board.path,
            "3",  # gate board (both directions)
            "",  # modbus-relay
            "",  # slave 1
            "3",  # fire input on DI3
            "/dev/ttyS4",  # a built-in RS485 port, not on this box
            "10",  # kitchen printer
            "xp-80",
            "",  # 9600 baud
            "tcp://127.0.0.1:1",  # a network kitchen printer (refuses at once)
            "10",
            "",  # generic-80
            "",  # done
            "main-gate",
            "",  # yes: write and enroll
        )
        assert run_wizard(tmp_path, script, root) == 0, script.text
    out = script.text
    for err in ("site: 1-32", "broker: HOST:PORT", "lacks device.crt", "fingerprint: 64 hex"):
        assert err in out
    assert "cannot be a locker board" in out and "printer model: one of" in out
    assert out.count("please answer again") == 6

    conf = tmp_path / "etc" / "edge.toml"
    config = cfgmod.load(conf, tmp_path / "state")
    assert (config.site, config.device) == (SITE, BOX)
    urls = {name: d.url for name, d in config.devices.items()}
    assert urls == {
        "locker0": "serial:///dev/edge/locker0?board=1&doors=16",
        "counter-scanner": f"serial://{FTDI}?baud=9600",
        "scanner-in": f"evdev://{WEDGE}",
        "receipt": "file:///dev/usb/lp0?profile=tm-t20",
        "gate": f"serial://{board.path}?slave=1&fire_input=3",
        "kitchen1": "serial:///dev/ttyS4?profile=xp-80&baudrate=9600",
        "kitchen2": "tcp://127.0.0.1:1?profile=generic-80",
    }
    entry = config.lanes["entry"]
    assert (entry.kind, entry.scanner, entry.gate, entry.list_id) == (
        "gate",
        "scanner-in",
        "gate",
        "main-gate",
    )
    assert "exit" not in config.lanes  # no exit scanner
    assert config.lanes["lockers"].locker == "locker0"
    assert config.lanes["counter"].scanner == "counter-scanner"
    assert config.lockers["locker0"].sizes == {"M": tuple(range(1, 17))}
    assert config.printing.receipt == "receipt"
    assert config.printing.stations == {"kitchen": ("kitchen1", "kitchen2")}
    assert config.sync is not None and config.sync.host == "mqtt.example.com"
    key = tmp_path / "state" / "tls" / "device.key"
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert (tmp_path / "etc" / "trust-anchor.json").exists()
    # edge doctor ran: the relay board on the pty passes; what is not on this machine fails and
    # is on the to-do list, with the unplugged port and the service to start.
    assert re.search(r"^gate +gate +modbus-relay +PASS", out, re.M), out
    assert "1/7 devices pass" in out
    assert "fix locker0 (locker)" in out and "fix kitchen2 (printer)" in out
    assert "connect the kitchen printer (/dev/ttyS4): not found" in out
    assert "gate: the fire input reads ALARM" in out  # the sim board's DI3 is low: fire_level 0
    assert "systemctl enable --now edge-gateway" in out
    assert "edge user add" in out


def test_online_enrollment_with_a_claim(tmp_path: Path, pki: Pki) -> None:
    hub = Hub.init(tmp_path / "hub")
    root = fake_box(tmp_path / "root")
    enroller = Enroller(hub, Signer(pki.ca, 3600), pki.ca_file)
    with EnrollServer(enroller, "127.0.0.1", 0, pki.server.cert, pki.server.key) as enr:
        claim = make_claim(hub.dir, BOX, SITE)
        url = f"https://127.0.0.1:{enr.port}"
        script = Script(SITE, BOX, "mqtt.example.com:8883", "", "http://hub", url, "-x", claim)
        script.answers += [hub.anchor.fingerprint, "0", "0", "0", "0", "0", "0", "", "y"]
        assert run_wizard(tmp_path, script, root) == 0, script.text
    assert "an https:// URL" in script.text and "the claim token as printed" in script.text
    assert cert_info((tmp_path / "state" / "tls" / "device.crt").read_bytes()).cn == BOX
    assert load_registry(hub.dir) == {BOX: SITE}
    assert "PROVISIONED" in script.text


def test_edge_provision_interactive_asks_with_the_flags_as_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = Script("", "")  # Enter twice, then the input ends (Ctrl-D)
    monkeypatch.setattr("builtins.input", script.ask)
    home = tmp_path / "box"
    assert main(["provision", "-i", "--home", str(home), "--site", SITE, "--device", BOX]) == 2
    assert f"site id [{SITE}]: " in script.text and f"[{BOX}]: " in script.text
    assert "nothing was written" in capsys.readouterr().out
    assert not home.exists()


def test_an_existing_config_is_never_silently_replaced(
    tmp_path: Path, stick: tuple[Path, str]
) -> None:
    stick_dir, fp = stick
    root = fake_box(tmp_path / "root")
    conf = tmp_path / "etc" / "edge.toml"
    conf.parent.mkdir()
    before = cfgmod.render_minimal(SITE, BOX, "trust-anchor.json")
    conf.write_text(before)
    # Enter takes the safe default: quit, nothing changes.
    script = Script("")
    assert run_wizard(tmp_path, script, root) == 2
    assert "already exists" in script.text and "nothing was written" in script.text
    assert conf.read_text() == before and not (tmp_path / "state").exists()
    # Input closed half-way (Ctrl-D): nothing written either.
    script = Script("replace", SITE, BOX)
    assert run_wizard(tmp_path, script, root) == 2
    assert "aborted" in script.text and conf.read_text() == before
    # keep: only enrolled, the lanes kept; the site and device come from the file.
    script = Script("keep", "mqtt.example.com:8883", "offline", str(stick_dir), fp, "y")
    assert run_wizard(tmp_path, script, root) == 0, script.text
    text = conf.read_text()
    assert text.startswith(before) and text.count("[sync]") == 1
    assert not list(conf.parent.glob("edge.toml.bak-*"))
    # replace: the new file is written and the old one kept beside it.
    answers = ["replace", "", "", "mqtt.example.com:8883", "2", str(stick_dir), fp]
    script = Script(*answers, "0", "0", "0", "0", "0", "0", "", "y")
    assert run_wizard(tmp_path, script, root) == 0, script.text
    kept = list(conf.parent.glob("edge.toml.bak-*"))
    assert len(kept) == 1 and kept[0].read_text() == text
    assert "previous config kept as" in script.text
    assert set(cfgmod.load(conf, tmp_path / "state").lanes) == {"counter"}


def test_a_refused_enrollment_changes_nothing(tmp_path: Path, stick: tuple[Path, str]) -> None:
    stick_dir, fp = stick
    root = fake_box(tmp_path / "root")
    other = "00" * 32
    script = Script(SITE, BOX, "mqtt.example.com:8883", "2", str(stick_dir), other)
    script.answers += ["", "", "", "", "0", "0", "0", "0", "0", "", "y"]
    assert run_wizard(tmp_path, script, root) == 2, script.text
    assert "NOT PROVISIONED" in script.text and "anchor_mismatch" in script.text
    assert not (tmp_path / "etc").exists() and not (tmp_path / "state").exists()
    # The answers are not lost: the same box as one command.
    assert "--device-map 'locker-board:8a=/dev/edge/locker0?board=1&doors=24'" in script.text

    # Install refuses after the config was written (another trust anchor is installed there):
    # the previous config is put back.
    conf = tmp_path / "etc" / "edge.toml"
    conf.parent.mkdir()
    conf.write_text(before := cfgmod.render_minimal(SITE, BOX, "trust-anchor.json"))
    (tmp_path / "etc" / "trust-anchor.json").write_text('{"another": "anchor"}')
    script = Script("replace", "", "", "mqtt.example.com:8883", "2", str(stick_dir), fp)
    script.answers += ["0", "0", "0", "0", "0", "0", "", "y"]
    assert run_wizard(tmp_path, script, root) == 2, script.text
    assert "anchor_differs" in script.text
    assert conf.read_text() == before and not list(conf.parent.glob("edge.toml.bak-*"))


def test_device_map_flags_for_mass_roll_out(
    tmp_path: Path, stick: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    stick_dir, fp = stick
    home = tmp_path / "box"
    base = ["provision", "--site", SITE, "--device", BOX, "--home", str(home), "--json"]
    base += ["--broker", "mqtt.example.com:8883", "--from", str(stick_dir)]
    base += ["--anchor-fingerprint", fp, "--gate-list", "main-gate"]
    argv = [*base, "--device-map", "gate-board:lcus=/dev/edge/gate0"]
    argv += ["--device-map", f"gate-in-scanner={WEDGE}"]
    argv += ["--device-map", "gate-out-scanner=/dev/edge/scanner-out?baud=115200"]
    argv += ["--device-map", "locker-board:cu16=/dev/edge/locker0?board=2"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["provisioned"] is True and doc["doctor_ok"] is False
    assert len(doc["devices"]) == 4
    assert any("/dev/edge/gate0): not found" in t for t in doc["todo"])
    config = cfgmod.load(home / "edge.toml", home)
    assert config.devices["gate"].url == "serial:///dev/edge/gate0?pass_wired=false"
    assert config.devices["locker0"].url == "serial:///dev/edge/locker0?board=2&doors=16"
    assert config.devices["scanner-out"].url == "serial:///dev/edge/scanner-out?baud=115200"
    assert config.devices["scanner-in"].driver == "evdev"
    exit_lane = config.lanes["exit"]
    assert (exit_lane.gate, exit_lane.gate_side, exit_lane.list_id) == ("gate", "out", "main-gate")
    assert config.sync is not None
    # Again without --force: refused, nothing changes; with it, the old file is kept.
    before = (home / "edge.toml").read_text()
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().out
    # A relay board per direction this time, the entry one without a scanner.
    maps = ["gate-in-board:lcus=/dev/edge/gate-in", "gate-out-board=/dev/edge/gate-out?slave=2"]
    maps += ["gate-out-scanner=/dev/edge/scanner-out", "receipt-printer=file:///dev/edge/receipt"]
    assert main([*base, "--force", *(x for m in maps for x in ("--device-map", m))]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert any("the in gate has no scanner" in t for t in doc["todo"])
    assert [p.read_text() for p in home.glob("edge.toml.bak-*")] == [before]
    config = cfgmod.load(home / "edge.toml", home)
    lanes = {n: (x.gate, x.gate_side, x.scanner) for n, x in config.lanes.items() if x.gate}
    assert lanes == {"entry": ("gate-in", "in", None), "exit": ("gate-out", "in", "scanner-out")}
    assert config.devices["gate-out"].url == "serial:///dev/edge/gate-out?slave=2"
    # A USB printer not plugged in yet: its scheme says what it is.
    assert config.devices["receipt"].url == "file:///dev/edge/receipt?profile=generic-80"
    assert any("receipt printer (/dev/edge/receipt): not found" in t for t in doc["todo"])
    # Bad maps are refused with the reason, before anything is asked of the hub.
    assert main([*base, "--force", "--device-map", "locker-board=" + WEDGE]) == 2
    assert "cannot be a locker board" in capsys.readouterr().out
    assert main([*base, "--force", "--device-map", "gate-in-scanner=" + WEDGE]) == 2
    assert "needs a gate board" in capsys.readouterr().out
    assert main([*base, "--force", "--device-map", "turnstile=/dev/ttyUSB0"]) == 2
    assert "ROLE one of gate-in-scanner" in capsys.readouterr().out
    assert len(list(home.glob("edge.toml.bak-*"))) == 1


def test_without_arguments_off_a_terminal_it_says_what_is_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # pytest's stdin is not a terminal: no wizard, a clear message instead of a prompt.
    assert main(["provision"]) == 2
    err = capsys.readouterr().err
    assert "needs --site, --device, --broker, --anchor-fingerprint" in err
    assert "--interactive" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files away")
def test_run_as_root_the_key_goes_to_the_state_directorys_owner(
    tmp_path: Path, stick: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """install.sh makes /var/lib/edge for the service user; provisioning runs as root. A key
    left root-owned (0600) would keep the daemon from starting."""
    stick_dir, fp = stick
    home = tmp_path / "box"
    home.mkdir()
    os.chown(home, 65534, 65534)
    argv = ["provision", "--site", SITE, "--device", BOX, "--home", str(home), "--from"]
    argv += [str(stick_dir), "--broker", "mqtt.example.com:8883", "--anchor-fingerprint", fp]
    assert main([*argv, "--device-map", "receipt-printer=tcp://127.0.0.1:1"]) == 0
    capsys.readouterr()
    for path in (home / "tls", home / "tls" / "device.key", home / "tls" / "device.crt"):
        assert (os.stat(path).st_uid, os.stat(path).st_gid) == (65534, 65534), path
    assert os.stat(home / "tls" / "device.key").st_mode & 0o777 == 0o600
