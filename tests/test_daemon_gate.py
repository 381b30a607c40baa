"""End to end: the daemon on simulated scanners and turnstiles, driven through the sim devices."""

from __future__ import annotations

from pathlib import Path

from tests.daemon_kit import make_site, running


def test_admit_and_pass_confirms(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    code = site.ticket()
    with running(site) as d:
        out = d.scan("entry", code)
        assert out["decision"] == "admit", out
        assert out["state"] == "confirmed" and out["passed"] == 1
        assert out["line_zh"] == "请通行"
        again = d.scan("entry", code)
        assert again.get("duplicate") is True
