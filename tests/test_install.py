"""systemd/install.sh into a scratch root: first install, a second run, an upgrade, a failing
upgrade that rolls back, --rollback, --uninstall.

Real: the wheelhouse (install.sh --make-wheelhouse: the project's wheel and its dependencies), the
venvs (python3 -m venv + pip install --no-index from the wheelhouse, one per release), the users
(systemd-sysusers --root into the scratch /etc), the databases (made and migrated by the project's
own code), the backup and restore. Stubs: systemctl, udevadm, apt-get, dpkg-query and
systemd-tmpfiles only (small scripts recording their calls; systemctl keeps the units' state), and
the health check, which plays the new daemon's start: it opens the ledger with the release's own
code (migrating it) and passes or fails as the stage asks. What needs systemd as PID 1 (a real
READY, /healthz, udev) is not verified here.

The stages share one scratch box and run in order (each fixture needs the one before): building a
release's venv takes ~10 s, so each is built once.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import sqlite3
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.ledger import Ledger
from edge.spool_db import SPOOL_SCHEMA
from edge.store import open_db, transaction

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "systemd" / "install.sh"
pytestmark = pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or not Path("/usr/bin/python3").exists(),
    reason="needs Debian's systemd-sysusers and /usr/bin/python3",
)

SYSTEMCTL = r"""#!/bin/bash
echo "systemctl $*" >>"$STUB_LOG"
args=(); for a in "$@"; do [[ $a == --* ]] || args+=("$a"); done
s=$STUB_STATE/${args[1]:-none}
case ${args[0]} in
is-active) [[ -f $s.active ]] ;;
is-enabled) [[ -f $s.enabled ]] ;;
enable) touch "$s.enabled" ;;
disable) rm -f "$s.enabled" "$s.active" ;;
start | restart) touch "$s.active" ;;
stop) rm -f "$s.active" ;;
get-default) cat "$STUB_STATE/default" 2>/dev/null || echo multi-user.target ;;
set-default) echo "${args[1]}" >"$STUB_STATE/default" ;;
esac
"""
RECORD = '#!/bin/bash\necho "${0##*/} $*" >>"$STUB_LOG"\n'
DPKG_QUERY = '#!/bin/bash\ngrep -qx "${!#}" "$STUB_STATE/debs" && printf "install ok installed"\n'
APT = RECORD + '[[ $1 == install ]] && printf "%s\\n" "${@:4}" >>"$STUB_STATE/debs"; exit 0\n'
# The new daemon's start as far as the databases go, then its health as the stage wants it.
HEALTH = """\
import os, sqlite3, sys
from pathlib import Path
from edge.ledger import Ledger
state, release = Path(os.environ["STATE_DIRECTORY"]), Path(os.environ["EDGE_RELEASE"])
with open(os.environ["HEALTH_LOG"], "a") as log:
    log.write(release.name + "\\n")
if (state / "ledger.db").exists():
    Ledger(state / "ledger.db").conn.close()  # migrates, as the daemon's start would
bad = os.environ.get("BAD_VERSION")
if bad and f"version={bad}\\n" in (release / "RELEASE").read_text():
    con = sqlite3.connect(state / "spool.db")  # a print job made before it failed
    con.execute("INSERT OR IGNORE INTO pruned VALUES ('job-new', NULL, 'counter', NULL, 'p1', "
                "'receipt', 'made by the failed release', 'printed', 0, 0, 'kiosk', 0)")
    con.commit()
    con.close()
    sys.exit(1)
"""
BUMP_LEDGER = (
    "\nLEDGER_SCHEMA = Schema(LEDGER_SCHEMA.name, "
    '(*LEDGER_SCHEMA.migrations, "CREATE TABLE upgrade_probe (x INTEGER);"))\n'
)


def rewheel(src: Path, dest: Path, version: str, append: dict[str, str] | None = None) -> None:
    """A copy of the project's wheel at another version (optionally with code appended to a
    module), in a wheelhouse that links the same dependencies."""
    dest.mkdir()
    for dep in src.parent.glob("*.whl"):
        if not dep.name.startswith("edge_gateway-"):
            (dest / dep.name).symlink_to(dep)
    files: dict[str, bytes] = {}
    with zipfile.ZipFile(src) as z:
        info = next(n.split("/")[0] for n in z.namelist() if n.endswith(".dist-info/RECORD"))
        old = info.removeprefix("edge_gateway-").removesuffix(".dist-info")
        for name in z.namelist():
            data = z.read(name)
            if name.endswith(".dist-info/RECORD"):
                continue
            if name.startswith(info + "/"):
                name = f"edge_gateway-{version}.dist-info" + name.removeprefix(info)
                data = data.replace(
                    f"\nVersion: {old}\n".encode(), f"\nVersion: {version}\n".encode()
                )
            files[name] = data + (append or {}).get(name, "").encode()
    record = f"edge_gateway-{version}.dist-info/RECORD"
    lines = [
        f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},"
        f"{len(d)}"
        for n, d in files.items()
    ]
    with zipfile.ZipFile(dest / f"edge_gateway-{version}-py3-none-any.whl", "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
        z.writestr(record, "\n".join([*lines, f"{record},,"]) + "\n")


Snapshot = dict[str, tuple[int, int, int, str]]  # path -> mode, size, mtime, content hash


@dataclass
class Run:
    rc: int
    out: str
    calls: list[str]
    health: list[str]


@dataclass
class Box:
    dir: Path
    root: Path
    wheelhouse: Path
    env: dict[str, str]

    def run(self, *args: str | Path, **env: str) -> Run:
        log, health = Path(self.env["STUB_LOG"]), Path(self.env["HEALTH_LOG"])
        log.write_text("")
        health.write_text("")
        proc = subprocess.run(
            ["bash", str(SCRIPT), *map(str, args)],
            env=self.env | env,
            cwd=REPO,  # as a technician would, from the checkout: its edge/ must not leak in
            capture_output=True,
            text=True,
            timeout=300,
        )
        return Run(
            proc.returncode,
            proc.stdout + proc.stderr,
            log.read_text().splitlines(),
            health.read_text().split(),
        )

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def release(self, link: str) -> str:
        return os.readlink(self.path(f"/opt/edge/{link}")).removeprefix("releases/")

    def releases(self) -> set[str]:
        return {p.name for p in self.path("/opt/edge/releases").iterdir()}

    def users(self) -> set[str]:
        return {line.split(":")[0] for line in self.path("/etc/passwd").read_text().splitlines()}

    def snapshot(self) -> Snapshot:
        """Every file: mode, size, mtime, and the content's hash outside the venvs."""
        out = {}
        for p in sorted(self.root.rglob("*")):
            if p.is_file() and not p.is_symlink():
                st = p.stat()
                digest = "" if "/venv/" in str(p) else hashlib.sha256(p.read_bytes()).hexdigest()
                out[str(p.relative_to(self.root))] = (
                    st.st_mode,
                    st.st_size,
                    st.st_mtime_ns,
                    digest,
                )
            elif p.is_symlink():
                out[str(p.relative_to(self.root))] = (0, 0, 0, os.readlink(p))
        return out


def shipped_files(shipped: Path) -> dict[str, Path]:
    """What install.sh must lay down: /etc path -> file in systemd/ (whatever is there)."""
    out = {f"/etc/systemd/system/{p.name}": p for p in shipped.glob("*.service")}
    for sub, dest in [
        ("udev", "/etc/udev/rules.d"),
        ("sysusers.d", "/etc/sysusers.d"),
        ("tmpfiles.d", "/etc/tmpfiles.d"),
        ("journald", "/etc/systemd/journald.conf.d"),
    ]:
        out |= {f"{dest}/{p.name}": p for p in (shipped / sub).glob("*.*")}
    return out


def user_version(path: Path) -> int:
    con = sqlite3.connect(path)
    try:
        return int(con.execute("PRAGMA user_version").fetchone()[0])
    finally:
        con.close()


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Box:
    d = tmp_path_factory.mktemp("install")
    # The systemd files as they are now: the same ones for every stage, whatever changes in the
    # checkout meanwhile.
    shutil.copytree(REPO / "systemd", d / "systemd", ignore=shutil.ignore_patterns("install.sh"))
    stubs, state = d / "stubs", d / "stub-state"
    stubs.mkdir()
    state.mkdir()
    for name, text in [
        ("systemctl", SYSTEMCTL),
        ("udevadm", RECORD),
        ("systemd-tmpfiles", RECORD),
        ("apt-get", APT),
        ("dpkg-query", DPKG_QUERY),
    ]:
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    (state / "debs").write_text("libzbar0\nfontconfig\npython3-venv\n")
    (d / "health.py").write_text(HEALTH)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "EDGE_"))
    }
    env |= {
        "ROOT": str(d / "root"),
        "SRC_DIR": str(REPO),
        "SYSTEMD_SRC": str(d / "systemd"),
        "STUB_LOG": str(d / "calls.log"),
        "STUB_STATE": str(state),
        "HEALTH_LOG": str(d / "health.log"),
        "SYSTEMCTL": str(stubs / "systemctl"),
        "UDEVADM": str(stubs / "udevadm"),
        "APT": str(stubs / "apt-get"),
        "DPKG_QUERY": str(stubs / "dpkg-query"),
        "TMPFILES": str(stubs / "systemd-tmpfiles"),
        "HEALTH_CHECK": f'"$EDGE_RELEASE/venv/bin/python" -I {d / "health.py"}',
    }
    b = Box(d, d / "root", d / "wheels-0.1", env)
    made = b.run("--make-wheelhouse", str(b.wheelhouse))
    assert made.rc == 0, made.out
    return b


@pytest.fixture(scope="module")
def first(box: Box) -> Run:
    return box.run("--wheelhouse", box.wheelhouse, "--site", "zoo-east", "--device", "gate-3")


def test_first_install_lays_down_a_release_units_users_and_config(box: Box, first: Run) -> None:
    assert first.rc == 0, first.out
    cur = box.release("current")
    assert cur.startswith("0.1.0-") and box.releases() == {cur}
    edge = box.path(f"/opt/edge/releases/{cur}/venv/bin/edge")
    help_ = subprocess.run([edge, "--help"], capture_output=True, text=True, cwd="/", check=True)
    assert "门店与景区边缘网关" in help_.stdout and "provision" in help_.stdout
    assert os.readlink(box.path("/usr/local/bin/edge")) == "/opt/edge/current/venv/bin/edge"
    for dest, src in shipped_files(box.dir / "systemd").items():
        assert box.path(dest).read_bytes() == src.read_bytes(), dest
    assert box.path("/etc/systemd/system/edge-gateway.service").exists()
    assert {"edge", "edge-kiosk"} <= box.users()  # systemd-sysusers --root
    conf = box.path("/etc/edge/edge.toml")
    assert 'site = "zoo-east"' in conf.read_text() and 'device = "gate-3"' in conf.read_text()
    gid = next(
        line.split(":")[2]
        for line in box.path("/etc/group").read_text().splitlines()
        if line.startswith("edge:")
    )
    assert (oct(conf.stat().st_mode & 0o777), conf.stat().st_gid) == ("0o640", int(gid))
    apt = [c for c in first.calls if c.startswith("apt-get install")]
    assert apt == ["apt-get install -y -qq fonts-wqy-microhei cage xwayland chromium libusb-1.0-0"]
    for call in [
        "systemctl daemon-reload",
        "udevadm control --reload",
        "systemctl enable edge-gateway.service",
        "systemctl enable edge-kiosk.service",
        "systemctl set-default graphical.target",
    ]:
        assert call in first.calls
    # Not provisioned yet (no trust anchor): not started, and the technician is told.
    assert "systemctl start --no-block edge-gateway.service" not in first.calls
    assert "not started" in first.out and "INSTALLED 已安装" in first.out


@pytest.fixture(scope="module")
def second(box: Box, first: Run) -> tuple[Run, Snapshot, Snapshot]:
    # The technician's work on the box, which no later run may undo.
    conf = box.path("/etc/edge/edge.toml")
    conf.write_text(conf.read_text() + "# gate 3 by the north entrance\n")
    rules = box.path("/etc/udev/rules.d/70-edge-devices.rules")
    rules.write_text(rules.read_text() + 'KERNEL=="ttyUSB0", SYMLINK+="edge/locker0"\n')
    before = box.snapshot()
    run = box.run("--wheelhouse", box.wheelhouse, "--site", "zoo-east", "--device", "gate-3")
    return run, before, box.snapshot()


def test_second_run_changes_nothing(box: Box, second: tuple[Run, Snapshot, Snapshot]) -> None:
    run, before, after = second
    assert run.rc == 0, run.out
    assert "unchanged 无变化" in run.out
    assert after == before  # contents, modes and mtimes, the venv included; no new release
    queries = ("systemctl is-enabled", "systemctl get-default")
    assert [c for c in run.calls if not c.startswith(queries)] == []
    assert "gate 3 by the north entrance" in box.path("/etc/edge/edge.toml").read_text()
    assert not box.path("/etc/udev/rules.d/70-edge-devices.rules.dist").exists()


@dataclass
class Upgrade:
    run: Run
    old: str
    probe_in_db_file_alone: bool  # the row a plain `cp ledger.db` would have carried
    ledger_version: int


@pytest.fixture(scope="module")
def upgrade(box: Box, second: object) -> Upgrade:
    state = box.path("/var/lib/edge")
    state.mkdir(parents=True)
    open_db(state / "spool.db", SPOOL_SCHEMA, create=True).close()
    # Two releases from long ago: pruning keeps 3 (current, previous and the newest other).
    for n, rid in enumerate(["0.0.1-aaaaaaaa", "0.0.2-bbbbbbbb"]):
        (box.path(f"/opt/edge/releases/{rid}")).mkdir()
        box.path(f"/opt/edge/releases/{rid}/RELEASE").write_text("version=0.0.1\n")
        os.utime(box.path(f"/opt/edge/releases/{rid}/RELEASE"), (1000 + n, 1000 + n))
    rewheel(box.wheelhouse / "edge_gateway-0.1.0-py3-none-any.whl", box.dir / "wheels-0.2", "0.2.0")
    old = box.release("current")
    # A ledger whose last event is still only in its WAL (as after a power cut): the backup
    # must carry it. The connection stays open during the upgrade so nothing checkpoints it.
    Ledger(state / "ledger.db").conn.close()  # made, and checkpointed on close
    ledger = Ledger(state / "ledger.db")
    try:
        ledger.conn.execute("PRAGMA wal_autocheckpoint=0")
        with transaction(ledger.conn):
            ledger.append_event("probe", {"before": "upgrade"}, at=1.0)
        alone = box.dir / "file-alone.db"
        shutil.copyfile(state / "ledger.db", alone)
        in_file = outbox_types(alone) == ["probe"]
        run = box.run("--wheelhouse", box.dir / "wheels-0.2")
    finally:
        ledger.conn.close()
    return Upgrade(run, old, in_file, user_version(state / "ledger.db"))


def outbox_types(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT type FROM outbox ORDER BY seq")]
    finally:
        con.close()


def test_upgrade_keeps_the_previous_release_and_backs_up_the_databases(
    box: Box, upgrade: Upgrade
) -> None:
    run = upgrade.run
    assert run.rc == 0, run.out
    new = box.release("current")
    assert new.startswith("0.2.0-") and box.release("previous") == upgrade.old
    assert box.releases() == {new, upgrade.old, "0.0.2-bbbbbbbb"}  # pruned to 3
    assert "UPDATED 已更新" in run.out
    # Stopped before the copy, started after the switch, and the new release checked.
    stop = run.calls.index("systemctl stop edge-gateway.service")
    assert run.calls.index("systemctl start --no-block edge-gateway.service") > stop
    assert run.health and set(run.health) == {new}
    (backup,) = box.path("/var/backups/edge").iterdir()
    assert backup.name.endswith(f"-{upgrade.old}-to-{new}")
    assert not upgrade.probe_in_db_file_alone  # the event was only in the WAL...
    assert outbox_types(backup / "ledger.db") == ["probe"]  # ...and the backup has it
    assert (backup / "versions.txt").read_text().splitlines() == [
        f"{upgrade.ledger_version} ledger.db",
        f"{len(SPOOL_SCHEMA.migrations)} spool.db",
    ]
    assert oct(backup.stat().st_mode & 0o777) == "0o700"


@pytest.fixture(scope="module")
def failed(box: Box, upgrade: Upgrade) -> tuple[Run, str]:
    good = box.release("current")
    rewheel(
        box.wheelhouse / "edge_gateway-0.1.0-py3-none-any.whl",
        box.dir / "wheels-0.3",
        "0.3.0",
        {"edge/ledger_schema.py": BUMP_LEDGER},  # a release with one more ledger migration
    )
    return box.run(
        "--wheelhouse", box.dir / "wheels-0.3", "--health-timeout", "1", BAD_VERSION="0.3.0"
    ), good


def test_failing_upgrade_rolls_back_and_restores_only_migrated_databases(
    box: Box, upgrade: Upgrade, failed: tuple[Run, str]
) -> None:
    run, good = failed
    assert run.rc == 3, run.out
    assert "ROLLED BACK 已回滚" in run.out and "did not become healthy within 1s" in run.out
    assert "未就绪" in run.out and "databases restored 已恢复数据库" in run.out
    assert box.release("current") == good and box.release("previous") == upgrade.old
    bad = next(r for r in run.health if r.startswith("0.3.0-"))
    assert bad not in box.releases()
    assert run.health[-1] == good  # the old release was started and checked again
    state = box.path("/var/lib/edge")
    # The ledger was migrated by the failed release: the old one would refuse it, so it is
    # restored, and the migrated file kept aside.
    assert user_version(state / "ledger.db") == upgrade.ledger_version
    assert user_version(state / f"ledger.db.failed-{bad}") == upgrade.ledger_version + 1
    assert outbox_types(state / "ledger.db") == ["probe"]
    # The spool was not migrated: what the failed release printed meanwhile stays.
    con = sqlite3.connect(state / "spool.db")
    try:
        assert con.execute("SELECT title FROM pruned").fetchall() == [
            ("made by the failed release",)
        ]
    finally:
        con.close()
    assert not list(state.glob("spool.db.failed-*"))


def test_rollback_command_goes_back_to_previous(box: Box, failed: tuple[Run, str]) -> None:
    _, was = failed
    before = box.release("previous")
    run = box.run("--rollback", "--health-timeout", "5")
    assert run.rc == 0, run.out
    assert box.release("current") == before and box.release("previous") == was
    assert "ROLLED BACK 已回滚" in run.out and "no schema change" in run.out
    assert run.health == [before]


def test_uninstall_keeps_config_and_state_unless_purged(box: Box, failed: object) -> None:
    run = box.run("--uninstall")
    assert run.rc == 0, run.out
    assert "systemctl disable --now edge-gateway.service" in run.calls
    for dest in shipped_files(box.dir / "systemd"):
        if "udev" not in dest:
            assert not box.path(dest).exists(), dest
    # The rules the technician filled in stay, like the config.
    assert "edge/locker0" in box.path("/etc/udev/rules.d/70-edge-devices.rules").read_text()
    assert not box.path("/opt/edge").exists() and not box.path("/usr/local/bin/edge").is_symlink()
    assert not {"edge", "edge-kiosk"} & box.users()
    assert "gate 3 by the north entrance" in box.path("/etc/edge/edge.toml").read_text()
    assert box.path("/var/lib/edge/ledger.db").exists() and box.path("/var/backups/edge").exists()

    purge = box.run("--uninstall", "--purge")
    assert purge.rc == 0, purge.out
    for gone in [
        "/etc/edge",
        "/var/lib/edge",
        "/var/backups/edge",
        "/etc/udev/rules.d/70-edge-devices.rules",
    ]:
        assert not box.path(gone).exists(), gone


def test_install_sh_is_shellcheck_clean() -> None:
    """make test installs shellcheck: every warning level counts (quoting bugs in an
    installer that runs as root are the expensive kind)."""
    exe = shutil.which("shellcheck")
    assert exe, "shellcheck missing: make test installs it (apt package shellcheck)"
    out = subprocess.run(
        [exe, "--severity=style", str(SCRIPT)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and not out.stdout, out.stdout
