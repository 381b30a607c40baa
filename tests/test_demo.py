"""The embedded demo site (edge/demo.py): made once, reused, kept fresh, never over a real box."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.registry import load as driver_class
from edge.codes import display_rotating
from edge.config import load
from edge.demo import (
    DemoSite,
    default_demo_home,
    prepare_demo,
    real_anchor_installed,
    render_samples,
)
from edge.errors import BundleRefused, ConfigError
from edge.rules import Reason
from edge.service import RedemptionService
from sync.hub.issuer import load_private

NOW = 1_777_600_800  # 2026-05-01 10:00 in Asia/Shanghai
DAY = 86400
EARLY = NOW - 6.5 * 3600  # 03:30 in Shanghai: before the 04:00 rollover, still "yesterday"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def services(clock: Clock) -> Iterator[list[RedemptionService]]:
    opened: list[RedemptionService] = []
    yield opened
    for svc in opened:
        svc.close()


def open_box(site: DemoSite, clock: Clock, opened: list[RedemptionService]) -> RedemptionService:
    svc = RedemptionService(load(site.config_path, site.home), clock=clock)
    opened.append(svc)
    if site.bundle_path is not None:
        svc.import_bundle(site.bundle_path)
    return svc


def decisions(svc: RedemptionService, site: DemoSite) -> dict[str, Reason]:
    return {s.label_en: svc.validate(s.code, s.lane).reason for s in site.samples}


def vouchers(site: DemoSite) -> list[str]:
    return [s.code for s in site.samples if s.code.isdigit()]


def expected(site: DemoSite) -> dict[str, Reason]:
    return {s.label_en: s.expect for s in site.samples}


@pytest.mark.parametrize("now", [NOW, EARLY], ids=["10:00", "03:30"])
def test_every_sample_gets_its_expected_decision(
    tmp_path: Path, clock: Clock, services: list[RedemptionService], now: float
) -> None:
    clock.now = now
    site = prepare_demo(tmp_path / "demo", now)
    assert site.bundle_path is not None  # a fresh box has no cache yet
    svc = open_box(site, clock, services)
    assert decisions(svc, site) == expected(site)
    # A newcomer sees every kind of outcome, not only admits.
    assert {s.expect for s in site.samples} >= {
        Reason.OK,
        Reason.WRONG_SLOT,
        Reason.EXPIRED,
        Reason.REVOKED,
        Reason.WRONG_SITE,
        Reason.HOLDER_REQUIRED,
        Reason.MALFORMED,
    }
    vouchers = [s for s in site.samples if s.code.isdigit() and s.expect is Reason.OK]
    assert len(vouchers) == 2 and all(len(v.code) == 12 for v in vouchers)
    group = svc.validate(next(s.code for s in site.samples if "Family" in s.label_en), "entry")
    assert group.persons == 4
    # Admits are real: the adult ticket opens the gate once, then is used.
    adult = site.samples[0].code
    assert svc.redeem(adult, "counter").admit  # counter list takes every product
    assert svc.redeem(adult, "counter").reason is Reason.ALREADY_USED


def test_holder_ticket_live_code_admits(
    tmp_path: Path, clock: Clock, services: list[RedemptionService]
) -> None:
    site = prepare_demo(tmp_path / "demo", NOW)
    svc = open_box(site, clock, services)
    holder = next(s for s in site.samples if s.expect is Reason.HOLDER_REQUIRED)
    assert "edge hub display" in holder.hint and str(site.holder_key) in holder.hint
    live = display_rotating(holder.code, load_private(site.holder_key), int(NOW))
    assert svc.validate(live, "entry").reason is Reason.OK


def test_second_start_reuses_the_site_and_keeps_codes_valid(
    tmp_path: Path, clock: Clock, services: list[RedemptionService]
) -> None:
    home = tmp_path / "demo"
    first = prepare_demo(home, NOW)
    anchor = (home / "trust-anchor.json").read_text()
    root_key = (home / "hub" / "root.key").read_bytes()
    config = first.config_path.read_text()
    svc = open_box(first, clock, services)
    seq = svc.status()["cache"]["seq"]

    clock.now = NOW + 20 * 60  # before the slot sample's slot opens
    second = prepare_demo(home, clock.now)
    assert second.bundle_path is None  # the box already holds the current bundle
    assert (home / "trust-anchor.json").read_text() == anchor
    assert (home / "hub" / "root.key").read_bytes() == root_key
    assert second.config_path.read_text() == config
    assert svc.status()["cache"]["seq"] == seq
    assert vouchers(second) == vouchers(first)
    # The first start's codes and the second's both still decide as announced.
    assert decisions(svc, first) == expected(first)
    assert decisions(svc, second) == expected(second)


def test_demo_left_ten_days_gets_a_fresh_bundle(
    tmp_path: Path, clock: Clock, services: list[RedemptionService]
) -> None:
    home = tmp_path / "demo"
    svc = open_box(prepare_demo(home, NOW), clock, services)
    old_seq = svc.status()["cache"]["seq"]

    clock.now = NOW + 10 * DAY
    later = prepare_demo(home, clock.now)
    assert later.bundle_path is not None
    svc.import_bundle(later.bundle_path)
    status = svc.status()
    assert status["cache"]["seq"] > old_seq and not status["cache"]["stale"]
    assert decisions(svc, later) == expected(later)
    assert not any(svc.validate(s.code, s.lane).warnings for s in later.samples)
    # Started again the same day: nothing new to import.
    assert prepare_demo(home, clock.now + 60).bundle_path is None


def test_bundle_past_its_expiry_is_replaced(
    tmp_path: Path, clock: Clock, services: list[RedemptionService]
) -> None:
    home = tmp_path / "demo"
    prepare_demo(home, NOW)
    clock.now = NOW + 60 * DAY  # the first bundle (30 days) is long expired
    site = prepare_demo(home, clock.now)
    assert site.bundle_path is not None
    svc = open_box(site, clock, services)
    assert decisions(svc, site) == expected(site)


def test_config_loads_and_every_reference_resolves(tmp_path: Path) -> None:
    site = prepare_demo(tmp_path / "demo", NOW)
    cfg = load(site.config_path, site.home)
    assert cfg.site == "west-lake"
    assert cfg.http_listen == "127.0.0.1:8800"
    assert set(cfg.lanes) == {"entry", "exit", "counter", "lockers"}
    lanes = cfg.lanes
    assert (lanes["entry"].kind, str(lanes["entry"].direction)) == ("gate", "entry")
    assert (lanes["exit"].kind, str(lanes["exit"].direction)) == ("gate", "exit")
    assert {lanes["entry"].list_id, lanes["exit"].list_id} == {"main-gate"}
    assert lanes["lockers"].locker == "locker-wall" and lanes["counter"].kind == "counter"
    for lane in lanes.values():
        for ref in (lane.scanner, lane.gate, lane.locker):
            assert ref is None or ref in cfg.devices
    assert cfg.printing.receipt == "receipt"
    assert cfg.printing.stations == {
        "hot": ("kitchen-hot", "kitchen-bar"),
        "bar": ("kitchen-bar", "kitchen-hot"),
    }
    assert "West Lake Teahouse" in cfg.printing.shop
    assert (cfg.zones["main"].warn, cfg.zones["main"].full) == (150, 200)
    bank = cfg.lockers["locker-wall"]
    assert sorted(d for doors in bank.sizes.values() for d in doors) == list(range(1, 25))
    assert len(bank.sizes["S"]) == 12
    # Every device is simulated and its URL is accepted by its driver (constructed, not opened).
    for dev in cfg.devices.values():
        assert dev.driver == "sim"
        driver_class(dev.name, dev.device_class, dev.driver)(dev.name, dev.url)
    assert cfg.state_dir == site.home / "state"


def test_bundle_lists_match_the_lanes(
    tmp_path: Path, clock: Clock, services: list[RedemptionService]
) -> None:
    site = prepare_demo(tmp_path / "demo", NOW)
    svc = open_box(site, clock, services)
    assert svc.status()["cache"]["lists"] == ["default", "main-gate"]
    gate = svc.view.lists["main-gate"]
    assert gate.zone == "main" and gate.products == frozenset({"adult", "family", "child"})
    assert str(gate.anti_passback) == "hard"
    state = svc.view.state
    assert state is not None and state.zones["main"]["capacity"] == 200
    assert all(" " in p["name"] for p in state.products.values())  # Chinese and English
    voucher = next(s for s in site.samples if s.code.isdigit())
    assert svc.validate(voucher.code, "entry").reason is Reason.NOT_ON_LIST


def test_a_directory_that_is_not_a_demo_is_left_alone(tmp_path: Path) -> None:
    home = tmp_path / "box"
    home.mkdir()
    (home / "edge.toml").write_text("# a real box\n")
    with pytest.raises(ConfigError, match="not a demo home"):
        prepare_demo(home, NOW)
    assert sorted(p.name for p in home.iterdir()) == ["edge.toml"]
    assert [p.name for p in tmp_path.iterdir()] == ["box"]  # no half-made home left beside it


def test_an_empty_directory_becomes_a_demo_home(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    home.mkdir()
    site = prepare_demo(home, NOW)
    assert (home / "DEMO").is_file() and site.config_path.is_file()


def test_stale_bundle_import_is_refused_as_rollback(
    tmp_path: Path, clock: Clock, services: list[RedemptionService]
) -> None:
    """bundle_path None means it: importing the same bundle again would be refused."""
    home = tmp_path / "demo"
    svc = open_box(prepare_demo(home, NOW), clock, services)
    assert prepare_demo(home, NOW).bundle_path is None
    with pytest.raises(BundleRefused, match="rollback"):
        svc.import_bundle(home / "snapshot.bundle")


def write_real_box(home: Path) -> Path:
    home.mkdir(parents=True)
    (home / "edge.toml").write_text(
        '[box]\nsite = "s"\ntrust_anchor = "anchor.json"\n', encoding="utf-8"
    )
    (home / "anchor.json").write_text("{}")
    return home / "edge.toml"


def test_real_anchor_found_and_demo_ignored(tmp_path: Path) -> None:
    nothing = tmp_path / "no-such" / "edge.toml"
    real = write_real_box(tmp_path / "real")
    assert real_anchor_installed({"EDGE_HOME": str(real.parent)}, system_config=nothing) == real
    assert (
        real_anchor_installed({"CONFIGURATION_DIRECTORY": str(real.parent)}, system_config=nothing)
        == real
    )
    assert real_anchor_installed({}, system_config=real) == real
    # An $EDGE_HOME pointing at a demo does not hide the real box behind it.
    demo = prepare_demo(tmp_path / "demo", NOW).home
    assert real_anchor_installed({"EDGE_HOME": str(demo)}, system_config=real) == real

    assert real_anchor_installed({"EDGE_HOME": str(demo)}, system_config=nothing) is None
    assert real_anchor_installed({}, system_config=nothing) is None
    (real.parent / "anchor.json").unlink()  # a config without its anchor is not provisioned
    assert real_anchor_installed({"EDGE_HOME": str(real.parent)}, system_config=nothing) is None


def test_real_anchor_uses_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = write_real_box(tmp_path / "real")
    monkeypatch.setenv("EDGE_HOME", str(real.parent))
    monkeypatch.delenv("CONFIGURATION_DIRECTORY", raising=False)
    assert real_anchor_installed(system_config=tmp_path / "none.toml") == real


def test_default_demo_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_DEMO_HOME", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_demo_home() == tmp_path / "a"
    monkeypatch.delenv("EDGE_DEMO_HOME")
    assert default_demo_home() == tmp_path / "state" / "edge-demo"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert default_demo_home() == tmp_path / "me" / ".local" / "state" / "edge-demo"


def test_render_samples_shows_kiosk_codes_and_how_to_scan(tmp_path: Path) -> None:
    site = prepare_demo(tmp_path / "demo", time.time())
    text = render_samples(site, "http://127.0.0.1:8800/")
    assert "http://127.0.0.1:8800/" in text
    assert "scan --home" in text
    lines = text.splitlines()
    for s in site.samples:
        at = lines.index(f"      {s.code}")  # whole, on a line of its own, for copying
        row = lines[at - 1]
        assert s.label_en in row and s.label_zh in row and s.lane in row and str(s.expect) in row
    holder = next(s for s in site.samples if s.hint)
    assert '--lane entry "$(edge hub display --holder-key' in text
    assert holder.hint in text


def test_damaged_demo_home_says_what_to_do(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    prepare_demo(home, NOW)
    (home / "demo.json").unlink()
    with pytest.raises(ConfigError, match="remove it to start a new demo"):
        prepare_demo(home, NOW)
