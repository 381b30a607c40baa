"""The `edge` command end to end, as a technician runs it: real processes, exit codes, JSON."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import build_parser, main

EDGE = [sys.executable, "-m", "edge.cli"]


def edge(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGE, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def edge_main(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`edge ARGS` through the same main() in this process, with its own stdin, stdout and
    stderr: what a process would show, without the ~0.5 s of interpreter start-up and imports.
    The tests below that are about the command itself keep real processes."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exited:  # argparse: --help, a usage error
                code = exited.code if isinstance(exited.code, int) else int(exited.code is not None)
    finally:
        sys.stdin = saved
    return subprocess.CompletedProcess(["edge", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    hub, box = tmp_path / "hub", tmp_path / "box"
    assert edge_main("hub", "init", "--dir", str(hub), "--keys", "2").returncode == 0
    r = edge_main(
        "init", "--home", str(box), "--site", "s1", "--trust-anchor", str(hub / "trust-anchor.json")
    )
    assert r.returncode == 0 and "fingerprint" in r.stdout
    return {"hub": hub, "box": box, "tmp": tmp_path}


def mint(site: dict[str, Path], *extra: str) -> str:
    r = edge("hub", "mint", "--dir", str(site["hub"]), "--site", "s1", "--product", "adult", *extra)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


def test_full_loop_with_exit_codes_and_json(site: dict[str, Path]) -> None:
    hub, box = str(site["hub"]), str(site["box"])
    ticket = mint(site, "--product-name", "成人票")
    voucher = mint(site, "--kind", "short")
    assert voucher.isdigit() and len(voucher) == 12
    out = str(site["tmp"] / "snap.bundle")
    assert edge("hub", "bundle", "--dir", hub, "--site", "s1", "--out", out).returncode == 0
    r = edge("bundle", "import", out, "--home", box, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["seq"] == 1
    r = edge("bundle", "import", out, "--home", box, "--json")
    assert r.returncode == 3 and json.loads(r.stdout)["reason"] == "rollback"

    r = edge("validate", "-", "--home", box, "--json", stdin=ticket + "\n")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["decision"] == "admit" and doc["schema"] == 1
    assert doc["product_name"] == "成人票" and doc["cache_seq"] == 1
    assert doc["clock_suspect"] is False and doc["redemption_id"] is None
    r = edge("redeem", ticket, "--home", box, "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and len(doc["redemption_id"]) == 32
    r = edge("redeem", ticket, "--home", box, "--json")
    assert r.returncode == 3 and json.loads(r.stdout)["reason"] == "already_used"
    r = edge("redeem", voucher, "--home", box)
    assert r.returncode == 0 and "ADMIT" in r.stdout
    r = edge("validate", "NOT-A-CODE", "--home", box)
    assert r.returncode == 3 and "malformed" in r.stdout
    r = edge("status", "--home", box, "--json")
    st = json.loads(r.stdout)
    assert r.returncode == 0 and st["cache"]["seq"] == 1
    assert st["ledger"]["redemptions"] == {"confirmed": 2}


def test_rotating_display_and_delta(site: dict[str, Path]) -> None:
    hub, box, tmp = str(site["hub"]), str(site["box"]), site["tmp"]
    key = tmp / "holder.key"
    ticket = mint(site, "--kind", "rotating", "--holder-key-out", str(key), "--entries", "0")
    assert (key.stat().st_mode & 0o777) == 0o600
    snap = str(tmp / "a.bundle")
    edge("hub", "bundle", "--dir", hub, "--site", "s1", "--out", snap)
    assert edge("bundle", "import", snap, "--home", box).returncode == 0
    shown = edge("hub", "display", "--holder-key", str(key), "--ticket", "-", stdin=ticket)
    live = shown.stdout.strip()
    assert edge("redeem", live, "--home", box).returncode == 0
    r = edge("redeem", live, "--home", box, "--json")
    assert json.loads(r.stdout)["reason"] == "replayed"
    (tmp / "revoke.toml").write_text(f'revocations = ["{"ab" * 16}"]\n')
    delta = str(tmp / "d.bundle")
    r = edge(
        "hub",
        "bundle",
        "--dir",
        hub,
        "--site",
        "s1",
        "--out",
        delta,
        "--delta",
        "--input",
        str(tmp / "revoke.toml"),
    )
    assert r.returncode == 0, r.stderr
    r = edge("bundle", "import", delta, "--home", box, "--json")
    assert json.loads(r.stdout)["kind"] == "delta"


def test_errors_exit_2_with_json(site: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[box]\nsite = "s1"\ntrust_anchor = "x.json"\nsurprise = 1\n')
    r = edge("validate", "X", "--config", str(bad), "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 2 and doc["decision"] == "error" and "box.surprise" in doc["error"]
    r = edge("validate", "X", "--home", str(site["box"]), "--at", "2026-05-01T10:00:00")
    assert r.returncode == 2 and "UTC offset" in r.stderr
    r = edge("validate", "X", "--home", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "edge init" in r.stderr


def test_config_lookup_from_edge_home(site: dict[str, Path]) -> None:
    r = edge("status", "--json", env={"EDGE_HOME": str(site["box"])})
    assert r.returncode == 0 and json.loads(r.stdout)["site"] == "s1"


def _all_commands() -> list[list[str]]:
    parser = build_parser()
    found: list[list[str]] = [[]]

    def walk(p: object, prefix: list[str]) -> None:
        for action in getattr(p, "_actions", []):
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):
                for name, sub in choices.items():
                    found.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(parser, [])
    return found


def test_help_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _all_commands()
    assert ["hub", "mint"] in commands and ["bundle", "import"] in commands
    # One real process proves `python -m edge.cli` starts and prints help; the ~40 others go
    # through the same main() in-process (a process each cost ~0.5 s of imports, ~20 s in all).
    r = edge("hub", "send", "print", "--help")
    assert r.returncode == 0 and "usage: edge hub send print" in r.stdout, r.stderr
    for cmd in commands:
        with pytest.raises(SystemExit) as exited:
            main([*cmd, "--help"])
        out = capsys.readouterr().out
        assert exited.value.code == 0 and "usage:" in out, cmd
        assert f"usage: {' '.join(['edge', *cmd])}" in " ".join(out.split()), (cmd, out[:200])


def test_demo_runs_every_kind(tmp_path: Path) -> None:
    r = edge("demo", "--dir", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stderr
    for reason in (
        "already_used",
        "expired",
        "wrong_slot",
        "revoked",
        "bad_signature",
        "replayed",
        "stale_code",
        "unknown_code",
        "holder_required",
    ):
        assert reason in r.stdout
    assert r.stdout.count("ADMIT") >= 4
