"""The daemon's config sections: every mistake names the file, the key and what is expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import load
from edge.errors import ConfigError

BASE = """
[box]
site = "s1"
trust_anchor = "trust-anchor.json"

[devices.scan1]
class = "scanner"
driver = "sim"
url = "sim://"

[devices.gate1]
class = "gate"
driver = "sim"
url = "sim://"

[devices.p1]
class = "printer"
driver = "sim"
url = "sim://"

[devices.wall]
class = "locker"
driver = "sim"
url = "sim://?doors=8"
"""


def write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(BASE + extra)
    return path


def test_a_full_daemon_config_loads(tmp_path: Path) -> None:
    cfg = load(
        write(
            tmp_path,
            """
[http]
listen = "0.0.0.0:9000"
[lanes.entry]
kind = "gate"
list = "main"
scanner = "scan1"
gate = "gate1"
dedupe_s = 5
[zones.main]
warn = 10
full = 20
[printing]
receipt = "p1"
stations.hot = ["p1"]
failover_after_s = 12
[lockers.wall]
sizes.S = "1-4,6"
sizes.L = "5,7-8"
pickup_hours = 24
""",
        )
    )
    lane = cfg.lanes["entry"]
    assert (lane.scanner, lane.gate, lane.gate_side, lane.dedupe_s) == ("scan1", "gate1", "in", 5.0)
    assert cfg.http_listen == "0.0.0.0:9000"
    assert cfg.zones["main"].warn == 10 and cfg.zones["main"].full == 20
    assert cfg.printing.stations == {"hot": ("p1",)} and cfg.printing.failover_after_s == 12
    assert cfg.lockers["wall"].sizes == {"S": (1, 2, 3, 4, 6), "L": (5, 7, 8)}


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        ('[lanes.a]\nlist = "x"\nscanner = "nope"\n', "lanes.a.scanner", "[devices.X] scanner"),
        ('[lanes.a]\nlist = "x"\nscanner = "gate1"\n', "lanes.a.scanner", "gate1 is a gate"),
        ('[lanes.a]\nlist = "x"\ngate = "p1"\n', "lanes.a.gate", "p1 is a printer"),
        (
            '[lanes.a]\nlist = "x"\nscanner = "scan1"\n[lanes.b]\nlist = "x"\nscanner = "scan1"\n',
            "lanes.b.scanner",
            "already feeds a",
        ),
        ('[lanes.a]\nlist = "x"\ngate_side = "up"\n', "lanes.a.gate_side", "in or out"),
        ('[http]\nlisten = "8800"\n', "http.listen", "HOST:PORT"),
        ("[zones.z]\nwarn = 30\nfull = 20\n", "zones.z.warn", "at most full"),
        (
            '[printing]\nstations.hot = ["gate1"]\n',
            "printing.stations.hot",
            "not a [devices.X] printer",
        ),
        ("[printing]\nstations.hot = []\n", "printing.stations.hot", "a list of printer names"),
        ('[printing]\nreceipt = "scan1"\n', "printing.receipt", "a printer device"),
        ('[lockers.p1]\nsizes.S = "1-2"\n', "lockers.p1", "a [devices.X] locker"),
        (
            '[lockers.wall]\nsizes.S = "1-4"\nsizes.L = "4-8"\n',
            "lockers.wall.sizes.L",
            "one size only",
        ),
        ('[lockers.wall]\nsizes.S = "a-b"\n', "lockers.wall.sizes.S", "door numbers"),
        ('[lockers.wall]\nsizes.S = "4-1"\n', "lockers.wall.sizes.S", "low-high"),
        ('[lockers.wall]\ncolour = "red"\n', "lockers.wall.colour", "unknown key"),
    ],
)
def test_mistakes_name_the_file_key_and_expectation(
    tmp_path: Path, extra: str, key: str, expected: str
) -> None:
    path = write(tmp_path, extra)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert err.value.path == str(path)
    assert err.value.key == key
    assert expected in err.value.expected
