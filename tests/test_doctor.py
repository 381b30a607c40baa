"""`edge doctor` and the [devices] section of edge.toml, on simulated and missing devices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.config import load
from edge.errors import ConfigError
from tests.conftest import Box
from tests.test_cli import edge_main

SIM_DEVICES = """
[devices.locker0]
class = "locker"
driver = "sim"
url = "sim://?dialect=8a&doors=8"

[devices.gate-in]
class = "gate"
driver = "sim"
url = "sim://"

[devices.kitchen]
class = "printer"
driver = "sim"
url = "sim://"

[devices.counter-scanner]
class = "scanner"
driver = "sim"
url = "sim://"
"""

BROKEN_DEVICES = """
[devices.locker9]
class = "locker"
driver = "8a"
url = "/dev/edge/no-such-locker"

[devices.typo]
class = "locker"
driver = "8a"
url = "/dev/ttyUSB0?baud=9600"
"""


def edge_json(command: str, home: Path, *extra: str) -> tuple[int, dict[str, object]]:
    """`edge COMMAND --json` through its main() in this process (the devices it opens are
    closed before it returns: the thread-leak guard checks)."""
    r = edge_main(command, "--home", str(home), "--json", *extra)
    return r.returncode, json.loads(r.stdout)


def doctor(home: Path, *extra: str) -> tuple[int, dict[str, object]]:
    return edge_json("doctor", home, *extra)


def test_simulated_devices_all_pass(box: Box) -> None:
    box.config_text(SIM_DEVICES)
    code, doc = doctor(box.home)
    devices = doc["devices"]
    assert isinstance(devices, list)
    assert [d["name"] for d in devices] == ["locker0", "gate-in", "kitchen", "counter-scanner"]
    assert all(d["ok"] for d in devices), devices
    assert code == 0


def test_test_page_is_printed_only_when_asked(box: Box) -> None:
    # Without the scanner: its self-test listens 2 s for a scan, in each of the two runs.
    box.config_text(SIM_DEVICES.split("[devices.counter-scanner]")[0])
    code, doc = doctor(box.home, "--test-page")
    kitchen = next(d for d in doc["devices"] if d["name"] == "kitchen")  # type: ignore[attr-defined]
    assert code == 0 and "test page printed" in kitchen["detail"]
    _, doc = doctor(box.home)
    kitchen = next(d for d in doc["devices"] if d["name"] == "kitchen")  # type: ignore[attr-defined]
    assert "test page" not in kitchen["detail"]


def test_missing_port_and_unknown_parameter_fail_with_hints(box: Box) -> None:
    box.config_text(BROKEN_DEVICES)
    code, doc = doctor(box.home)
    devices = {d["name"]: d for d in doc["devices"]}  # type: ignore[attr-defined]
    assert code == 3 and doc["ok"] is False
    missing = devices["locker9"]
    assert not missing["ok"] and "does not exist" in missing["hint"]
    typo = devices["typo"]
    assert not typo["ok"] and "baud" in typo["detail"] and "baud" in typo["hint"]


def test_unknown_class_or_driver_is_a_config_error(box: Box) -> None:
    box.config_text('\n[devices.x]\nclass = "fridge"\ndriver = "sim"\nurl = "sim://"\n')
    with pytest.raises(ConfigError, match=r"devices\.x\.class"):
        load(box.home / "edge.toml", box.home)
    box.config_text('\n[devices.x]\nclass = "locker"\ndriver = "acme"\nurl = "sim://"\n')
    with pytest.raises(ConfigError, match=r"devices\.x\.driver"):
        load(box.home / "edge.toml", box.home)


def check(home: Path) -> tuple[int, dict[str, object]]:
    return edge_json("check", home)


def test_check_validates_without_opening_anything(box: Box) -> None:
    box.config_text(SIM_DEVICES + BROKEN_DEVICES.replace("locker9", "locker-missing"))
    code, doc = check(box.home)
    assert code == 2 and doc["ok"] is False
    problems = doc["problems"]
    assert isinstance(problems, list) and len(problems) == 1  # a missing port is doctor's job
    assert problems[0].startswith("devices.typo.url: baud: unknown parameter")
    box.config_text(SIM_DEVICES)
    code, doc = check(box.home)
    assert (
        code == 0
        and doc["ok"]
        and doc["devices"] == sorted(["locker0", "gate-in", "kitchen", "counter-scanner"])
    )
    (box.home / "trust-anchor.json").write_text("{}")
    code, doc = check(box.home)
    assert code == 2 and "box.trust_anchor" in doc["problems"][0]  # type: ignore[index]
