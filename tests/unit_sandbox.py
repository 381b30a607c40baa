"""Run a command inside the sandbox a systemd unit asks for, as far as it can be built without
systemd as PID 1 (tests only; needs root):

    python -m tests.unit_sandbox UNIT [--rw DIR]... [--ro DIR]... -- COMMAND...

Built from the unit's own lines, so a change to the unit changes what the tests run under:
- SystemCallFilter=, SystemCallArchitectures=native, NoNewPrivileges=: a seccomp allow list with
  the groups resolved by the installed systemd (`systemd-analyze syscall-filter`). A refused call
  KILLS the process here, where the unit says EPERM: stricter, so a refused call cannot hide.
- RestrictAddressFamilies=: socket() of another family fails with EAFNOSUPPORT (as systemd does).
- MemoryDenyWriteExecute=: systemd's rules (mmap W+X, mprotect/pkey_mprotect adding X, shmat
  SHM_EXEC fail with EPERM).
- RestrictNamespaces=yes: clone3 fails with ENOSYS (glibc falls back to clone, as under systemd),
  unshare, setns and clone with a CLONE_NEW* flag with EPERM.
- CapabilityBoundingSet= (empty): the bounding set is dropped, so even root has no capability
  after exec.
- ProtectSystem=strict, ProtectKernelTunables=, PrivateTmp=, ProtectHome=: a mount namespace in
  which every mount is read-only but /dev, /proc (its /proc/sys read-only) and the --rw
  directories (StateDirectory=, RuntimeDirectory=); fresh /tmp and /var/tmp; /home, /root and
  /run/user empty (systemd makes them inaccessible; here --ro may bring back the test machine's
  Python runtime when it lives in a home, as pyenv's does). --ro directories
  (ConfigurationDirectory=) are bound read-only wherever they live, /tmp included.
- UMask=.
User=/Group= are stood in for by --uid (the service user does not exist on a test machine), with
the unit's SupplementaryGroups= as the host names them.
Not built here: DevicePolicy=/DeviceAllow= (a cgroup BPF program), ProtectClock=,
ProtectKernelModules=/Logs=, ProtectHostname=, ProtectProc=, LockPersonality=, RestrictRealtime=,
RestrictSUIDSGID=.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import functools
import grp
import os
import socket
import subprocess
import sys
from pathlib import Path

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ, SCMP_CMP_GT, SCMP_CMP_MASKED_EQ = 4, 6, 7
AF_MAX = 46  # PF_MAX of Linux 6.x; socket() refuses anything at or above it anyway
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
CLONE_NEW = (0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
CAP_LAST = 63
PR_CAPBSET_DROP = 24
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
CLONE_NEWNS = 0x20000
MOUNT_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}


def errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def unit_sections(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as systemd reads it: section -> key -> every value given, in order
    (continuation lines joined, comments dropped)."""
    out: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] = {}
    text = path.read_text().replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def unit_service(path: Path) -> dict[str, list[str]]:
    return unit_sections(path).get("Service", {})


def syscall_groups() -> dict[str, list[str]]:
    """The installed systemd's syscall groups (members may be other @groups)."""
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.split()[0]
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def allowed_syscalls(filters: list[str], groups: dict[str, list[str]]) -> set[str]:
    """systemd's reading of SystemCallFilter= lines that start with an allow list."""

    def expand(item: str) -> set[str]:
        if not item.startswith("@"):
            return {item}
        return set().union(*(expand(x) for x in groups[item]))

    assert filters and not filters[0].startswith("~"), "only allow lists are emulated"
    allowed: set[str] = set()
    for line in filters:
        deny = line.startswith("~")
        items = set().union(*(expand(x) for x in line.lstrip("~").split()))
        allowed = allowed - items if deny else allowed | items
    return allowed


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


@functools.cache
def _libseccomp() -> ctypes.CDLL:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


class _Filter:
    """One seccomp filter program (systemd also loads one per feature)."""

    def __init__(self, default: int) -> None:
        self.lib = _libseccomp()
        self.ctx = self.lib.seccomp_init(default)
        if not self.ctx:
            raise OSError("seccomp_init failed")

    def rule(self, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not a syscall of this architecture (or unknown to libseccomp)
            return
        arr = (_ArgCmp * max(len(cmps), 1))(*(_ArgCmp(*c) for c in cmps))
        rc = self.lib.seccomp_rule_add_array(self.ctx, action, nr, len(cmps), arr)
        if rc < 0:
            raise OSError(-rc, f"seccomp rule for {name}: {os.strerror(-rc)}")

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        self.lib.seccomp_release(self.ctx)
        if rc < 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")


def load_seccomp(svc: dict[str, list[str]]) -> None:
    # Feature filters first: the allow list, once loaded, may refuse seccomp() itself.
    if "RestrictAddressFamilies" in svc:
        families = {getattr(socket, n) for v in svc["RestrictAddressFamilies"] for n in v.split()}
        f = _Filter(SCMP_ACT_ALLOW)
        refuse = errno_action(errno.EAFNOSUPPORT)
        for fam in range(AF_MAX):
            if fam not in families:
                f.rule(refuse, "socket", (0, SCMP_CMP_EQ, fam, 0))
        f.rule(refuse, "socket", (0, SCMP_CMP_GT, AF_MAX - 1, 0))
        f.load()
    if svc.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        f = _Filter(SCMP_ACT_ALLOW)
        eperm = errno_action(errno.EPERM)
        wx = PROT_WRITE | PROT_EXEC
        f.rule(eperm, "mmap", (2, SCMP_CMP_MASKED_EQ, wx, wx))
        f.rule(eperm, "mprotect", (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        f.rule(eperm, "pkey_mprotect", (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        f.rule(eperm, "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        f.load()
    if svc.get("RestrictNamespaces", ["no"])[-1] == "yes":
        f = _Filter(SCMP_ACT_ALLOW)
        eperm = errno_action(errno.EPERM)
        f.rule(errno_action(errno.ENOSYS), "clone3")
        f.rule(eperm, "unshare")
        f.rule(eperm, "setns")
        for flag in CLONE_NEW:
            f.rule(eperm, "clone", (0, SCMP_CMP_MASKED_EQ, flag, flag))
        f.load()
    if "SystemCallFilter" in svc:
        assert svc.get("SystemCallArchitectures") == ["native"]  # libseccomp's default context
        f = _Filter(SCMP_ACT_KILL_PROCESS)
        for name in sorted(allowed_syscalls(svc["SystemCallFilter"], syscall_groups())):
            f.rule(SCMP_ACT_ALLOW, name)
        f.load()


def _mount(libc: ctypes.CDLL, src: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:  # fmt: skip
    enc = [None if s is None else s.encode() for s in (src, target, fstype, data)]
    if libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _mounts() -> list[tuple[str, int]]:
    """Mount points of this namespace with the per-mount flags to keep on a remount."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = fields[4].encode().decode("unicode_escape")
        flags = 0
        for opt in fields[5].split(","):
            flags |= MOUNT_FLAGS.get(opt, 0)
        out.append((point, flags))
    return out


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def build_mounts(svc: dict[str, list[str]], rw: list[str], ro: list[str]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    # The directories the service may see, held open before /tmp is replaced by a fresh one.
    keep = [(d, os.open(d, os.O_PATH | os.O_DIRECTORY), d in rw) for d in rw + ro]
    if svc.get("ProtectSystem", ["no"])[-1] == "strict":
        for point, flags in _mounts():
            api = any(_under(point, top) for top in ("/dev", "/proc"))
            if api and not _under(point, "/proc/sys"):
                continue
            try:
                _mount(libc, None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
            except OSError as err:  # a mount under a hidden one (EACCES/ENOENT): unreachable
                if err.errno not in (errno.ENOENT, errno.EACCES, errno.EINVAL):
                    raise
        if Path("/proc/sys").exists():
            _mount(libc, "/proc/sys", "/proc/sys", None, MS_BIND | MS_REC)
            _mount(libc, None, "/proc/sys", None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    if svc.get("PrivateTmp", ["no"])[-1] == "yes":
        for tmp in ("/tmp", "/var/tmp"):
            _mount(libc, "tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    if svc.get("ProtectHome", ["no"])[-1] == "yes":
        for home in ("/home", "/root", "/run/user"):
            if Path(home).is_dir():
                _mount(libc, "tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for path, fd, writable in keep:
        os.makedirs(path, exist_ok=True)  # in the fresh /tmp when it lived there
        _mount(libc, f"/proc/self/fd/{fd}", path, None, MS_BIND)
        _mount(libc, None, path, None, MS_REMOUNT | MS_BIND | (0 if writable else MS_RDONLY))
        os.close(fd)


def drop_capabilities() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(CAP_LAST + 1):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            raise OSError(ctypes.get_errno(), f"PR_CAPBSET_DROP {cap}")


def switch_user(svc: dict[str, list[str]], uid: int) -> None:
    """The unit's User= (a stand-in uid: the service user does not exist here) with its
    SupplementaryGroups= as the host names them."""
    groups = []
    for name in " ".join(svc.get("SupplementaryGroups", [])).split():
        with contextlib.suppress(KeyError):
            groups.append(grp.getgrnam(name).gr_gid)
    os.setgroups(groups)
    os.setgid(uid)
    os.setuid(uid)


def main(argv: list[str]) -> None:
    if "--" not in argv:
        raise SystemExit("usage: python -m tests.unit_sandbox UNIT [--rw DIR] [--ro DIR] -- CMD...")
    split = argv.index("--")
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("unit", type=Path)
    ap.add_argument("--rw", action="append", default=[], help="a writable directory (state)")
    ap.add_argument("--ro", action="append", default=[], help="a read-only directory (config)")
    ap.add_argument("--uid", type=int, help="run as this uid (the unit's User= stands for it)")
    args = ap.parse_args(argv[:split])
    command = argv[split + 1 :]
    svc = unit_service(args.unit)
    build_mounts(svc, [os.path.abspath(d) for d in args.rw], [os.path.abspath(d) for d in args.ro])
    if svc.get("CapabilityBoundingSet") == [""]:
        drop_capabilities()
    if args.uid is not None:
        switch_user(svc, args.uid)
    if "UMask" in svc:
        os.umask(int(svc["UMask"][-1], 8))
    if "WATCHDOG_USEC" in os.environ:  # systemd names the main process; exec keeps our pid
        os.environ["WATCHDOG_PID"] = str(os.getpid())
    load_seccomp(svc)  # last: it may refuse what the steps above needed
    os.execvpe(command[0], command, os.environ)


if __name__ == "__main__":
    main(sys.argv[1:])
