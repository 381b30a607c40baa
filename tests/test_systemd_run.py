"""The gateway and the kiosk as their units start them, without systemd as PID 1: the daemon with
the unit's command line and environment inside the unit's own sandbox (tests/unit_sandbox.py),
talking sd_notify to a fake NOTIFY_SOCKET and reloaded by the unit's ExecReload; the kiosk's
cage + chromium on a headless wlroots output showing the daemon's kiosk UI, and exiting when the
browser dies (so systemd restarts it).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_kit import make_site, running
from tests.unit_sandbox import unit_sections

REPO = Path(__file__).resolve().parent.parent
GATEWAY = REPO / "systemd" / "edge-gateway.service"
KIOSK = REPO / "systemd" / "edge-kiosk.service"
STANDIN_UID = 65534  # the units' users (edge, edge-kiosk) do not exist here


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


def chown_tree(top: Path, uid: int) -> None:
    """As StateDirectory=/RuntimeDirectory= hand their directories to User=."""
    for base, dirs, files in os.walk(top):
        for name in [base, *(os.path.join(base, f) for f in dirs + files)]:
            os.chown(name, uid, uid)


def sandbox_usable() -> str:
    if os.geteuid() != 0:
        return "needs root (mount namespace, seccomp, a stand-in user)"
    try:
        import ctypes

        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return "libseccomp2 missing"
    if run("unshare", "-m", "true").returncode != 0:
        return "no mount namespaces here"
    return ""


def systemd_env(site_home: Path, state: Path, runtime: Path) -> dict[str, str]:
    """What systemd gives the gateway's ExecStart (no EDGE_HOME, no developer's shell)."""
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(state),  # the edge user's home (sysusers.d) is its state directory
        "USER": "edge",
        "LOGNAME": "edge",
        "SHELL": "/usr/sbin/nologin",
        "CONFIGURATION_DIRECTORY": str(site_home),
        "STATE_DIRECTORY": str(state),
        "RUNTIME_DIRECTORY": str(runtime),
    }


def http(url: str, token: str, body: object = None) -> Any:
    req = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_daemon_runs_in_the_gateway_units_sandbox(tmp_path: Path) -> None:
    if why := sandbox_usable():
        pytest.skip(why)
    site = make_site(tmp_path, devices={"receipt": ("printer", "sim://?chinese=raster")})
    state, runtime = tmp_path / "state", tmp_path / "run"
    state.mkdir(mode=0o700)
    runtime.mkdir()
    env = systemd_env(site.home, state, runtime)
    cli = [str(REPO / ".venv/bin/edge")] if (REPO / ".venv/bin/edge").exists() else ["edge"]
    r = run(*cli, "bundle", "import", str(site.bundle), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    chown_tree(state, STANDIN_UID)
    chown_tree(runtime, STANDIN_UID)
    config_before = {p.name: p.stat().st_mtime_ns for p in site.home.iterdir()}
    argv = shlex.split(unit_sections(GATEWAY)["Service"]["ExecStart"][0])
    argv[0] = cli[0]
    name = f"edge-unit-test-{os.getpid()}-{time.monotonic_ns()}"
    log = tmp_path / "daemon.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify, open(log, "wb") as out:
        notify.bind("\0" + name)
        notify.settimeout(0.5)
        sandbox = [sys.executable, "-m", "tests.unit_sandbox", str(GATEWAY)]
        sandbox += ["--uid", str(STANDIN_UID), "--rw", str(state), "--rw", str(runtime)]
        # The checkout (and its venv) stays visible when it lives under /tmp (PrivateTmp=).
        sandbox += ["--ro", str(site.home), "--ro", sys.base_prefix, "--ro", str(REPO)]
        sandbox += ["--", *argv]
        t0 = time.monotonic()
        proc = subprocess.Popen(
            sandbox,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env | {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"},
        )

        def message() -> bytes:
            """The daemon's next sd_notify message; fails with its log when it died."""
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    return notify.recv(4096)
                except TimeoutError:
                    if proc.poll() is not None:
                        how = "killed by the syscall filter" if proc.returncode == -31 else ""
                        tail = log.read_text(errors="replace")[-3000:]
                        raise AssertionError(
                            f"daemon exited {proc.returncode} {how}\n{tail}"
                        ) from None
            raise AssertionError("no sd_notify message for 20 s")

        try:
            while not message().startswith(b"READY=1"):
                pass
            ready_after = time.monotonic() - t0
            pings: list[float] = []
            while len(pings) < 4:
                if message() == b"WATCHDOG=1":
                    pings.append(time.monotonic())
            # A visitor scans at the entry; the kiosk page answers; a receipt prints.
            r = run(*cli, "scan", "--lane", "entry", site.ticket(), env=env)
            assert r.returncode == 0 and "confirmed" in r.stdout, r.stdout + r.stderr
            url = json.loads((state / "daemon.json").read_text())["url"]
            token = (state / "api-token").read_text().strip()
            with urllib.request.urlopen(url + "/kiosk/", timeout=30) as resp:
                assert resp.status == 200 and b"<html" in resp.read().lower()
            job = {"template": "test_page", "data": {}, "target": "receipt", "id": "unit-1"}
            http(url + "/api/v1/print/jobs", token, job)
            deadline = time.monotonic() + 15
            while (jobs := http(url + "/api/v1/print/jobs", token))[0]["state"] != "printed":
                assert time.monotonic() < deadline, jobs
                time.sleep(0.1)
            # `systemctl reload`: the unit's ExecReload, as systemd runs it ($$ -> $, $MAINPID).
            reload = shlex.split(unit_sections(GATEWAY)["Service"]["ExecReload"][0])
            reload = [a.replace("$$", "$") for a in reload]
            assert run(*reload, env=env | {"MAINPID": str(proc.pid)}).returncode == 0
            while not message().startswith(b"RELOADING=1"):
                pass
            while not message().startswith(b"READY=1"):
                pass
            proc.terminate()
            while not message().startswith(b"STOPPING=1"):
                pass
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    text = log.read_text(errors="replace")
    own = re.search(r"ready in (\d+\.\d+) s", text)
    assert own and float(own[1]) < 3.0, text[-3000:]  # the daemon's own start
    assert ready_after < 3.0 + 2.0, text[-3000:]  # plus the interpreter and imports
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < 2.0 and 0.5 < statistics.median(gaps) <= 1.5, gaps  # half of 2 s
    for refused in ("Traceback", "Read-only file system", "not permitted", "Permission denied"):
        assert refused not in text, text[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in site.home.iterdir()} == config_before


def shown_page(devtools: int) -> dict[str, str]:
    """The page the browser shows, from its DevTools endpoint ({} while it is not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{devtools}/json", timeout=5) as r:
            pages = [p for p in json.loads(r.read()) if p.get("type") == "page"]
    except (OSError, ValueError):
        return {}
    return pages[0] if pages else {}


def test_kiosk_shows_the_ui_and_gives_way_when_the_browser_dies(tmp_path: Path) -> None:
    """The unit's ExecStart (bash waits for the port, then becomes cage running chromium) on a
    headless wlroots output instead of the box's screen, as a stand-in user: chromium loads the
    daemon's kiosk UI and runs its scripts; when the browser dies, cage exits, and Restart=always
    (exit status 0 included) starts it again."""
    missing = [
        x
        for x in ("/usr/bin/cage", "/usr/bin/Xwayland", "/usr/bin/chromium")
        if not os.access(x, os.X_OK)
    ]
    if os.geteuid() != 0 or missing or not shutil.which("setpriv"):
        pytest.skip(f"needs root, setpriv and {missing or 'cage'} (make system-deps)")
    svc = unit_sections(KIOSK)["Service"]
    assert svc["Restart"] == ["always"]  # cage exits 0 when its browser dies
    script = shlex.split(svc["ExecStart"][0].replace("$$", "$").replace("%%", "%"))[2]
    defaults = dict(v.split("=", 1) for v in svc["Environment"])
    titles = {
        json.loads((REPO / "kiosk_ui/static/i18n" / f).read_text())["app.title"]
        for f in ("en.json", "zh-CN.json")
    }
    # The kiosk user's directories (not under pytest's root-only tmp).
    home = Path(tempfile.mkdtemp(prefix="edge-kiosk-test-"))
    for sub in ("state", "run", "xdg"):
        (home / sub).mkdir(mode=0o700)
    chown_tree(home, STANDIN_UID)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        devtools = probe.getsockname()[1]
    site = make_site(tmp_path)
    proc = None
    try:
        with running(site, kiosk=True) as d:
            url = d.daemon.url + "/kiosk/"
            env = defaults | {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": str(home / "state"),
                "STATE_DIRECTORY": str(home / "state"),
                "RUNTIME_DIRECTORY": str(home / "run"),
                "XDG_RUNTIME_DIR": str(home / "xdg"),  # pam_systemd's on the box
                "KIOSK_URL": url,
                "KIOSK_BROWSER_FLAGS": f"--remote-debugging-port={devtools}",
                # No screen here: wlroots draws into memory.
                "WLR_BACKENDS": "headless",
                "WLR_RENDERER": "pixman",
                "WLR_LIBINPUT_NO_DEVICES": "1",
            }
            stand_in = [
                "setpriv",
                f"--reuid={STANDIN_UID}",
                f"--regid={STANDIN_UID}",
                "--clear-groups",
            ]
            with open(tmp_path / "kiosk.log", "wb") as log:
                proc = subprocess.Popen(
                    [*stand_in, "/bin/bash", "-c", script],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            page: dict[str, str] = {}
            deadline = time.monotonic() + 30
            while page.get("title") not in titles:  # set by the UI's script once it has run
                why = (page, (tmp_path / "kiosk.log").read_text()[-3000:])
                assert proc.poll() is None and time.monotonic() < deadline, why
                time.sleep(0.3)
                page = shown_page(devtools)
            assert page["url"] == url
            # The browser dies: cage (the unit's main process: bash and setpriv exec'd it) exits.
            browser = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
            os.kill(browser, signal.SIGKILL)
            assert proc.wait(15) == 0
    finally:
        if proc is not None:  # what is left of the session this test started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        shutil.rmtree(home, ignore_errors=True)
