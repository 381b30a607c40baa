#!/bin/bash
# Install, update, roll back or remove the edge gateway on a Debian 12 box (as root).
#   install.sh [--wheelhouse DIR] [--site S [--device D]] [--no-kiosk] [--extras usb,wedge]
#              [--health-timeout 60] [--keep 3]
#   install.sh --rollback [--health-timeout 60]
#   install.sh --uninstall [--purge]
#   install.sh --make-wheelhouse DIR [--platform manylinux2014_aarch64] [--extras usb,wedge]
#
# A release is the project's wheel in its own venv plus the systemd files shipped with it:
# /opt/edge/releases/<version>-<8 hex>/{venv,system,RELEASE}. The hex is a hash of the wheel's
# RECORD (file hashes, not the zip's timestamps), the extras and the systemd files, so the same
# input gives the same directory and a second run changes nothing. `current` and `previous` are
# relative links, switched atomically (ln -sfn to a temporary name, then mv -T).
#
# /etc/edge/edge.toml is written only if there is none, and only with --site (what `edge provision`
# writes; it refuses a config for another site or device, so no placeholder is ever written).
# A first install starts the gateway only once `edge check` passes (i.e. after provisioning).
#
# An upgrade stops the gateway, copies every database with SQLite's backup API (consistent for
# WAL) to /var/backups/edge, switches, starts, and waits for READY and /healthz. If the new release
# is not healthy in time, it switches back with the previous release's systemd files and restores
# a database ONLY if the new release changed its schema version (the old release refuses a newer
# schema; an unchanged database may hold redemptions made meanwhile, which a restore would lose).
# What it replaces is kept as *.failed-<release>. Exit: 0 done or unchanged, 1 error, 2 usage,
# 3 rolled back and healthy again, 4 rolled back but the previous release is not healthy either.
#
# Tests redirect every path and command: ROOT (prefix of /opt /etc /var /usr/local), OPT, ETC_EDGE,
# STATE, BACKUPS, UNIT_DIR, UDEV_DIR, SYSUSERS_DIR, TMPFILES_DIR, JOURNALD_DIR, BIN_LINK,
# SYSTEMCTL, UDEVADM, APT, DPKG_QUERY, SYSUSERS, TMPFILES, PYTHON, SYSTEMD_SRC, SRC_DIR, and
# HEALTH_CHECK (a shell command run with EDGE_RELEASE set; exit 0 = healthy).
set -euo pipefail
umask 022 # the service user reads the venv, whatever root's umask is

die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }
usage() { sed -n '3,7p' "$0" | cut -c5- >&2; exit 2; }

SYSTEMD_SRC=${SYSTEMD_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
SRC_DIR=${SRC_DIR:-$(cd "$SYSTEMD_SRC/.." && pwd)}
ROOT=${ROOT:-}
OPT=${OPT:-$ROOT/opt/edge}
RELEASES=$OPT/releases MANIFEST=$OPT/installed-files
ETC_EDGE=${ETC_EDGE:-$ROOT/etc/edge}
STATE=${STATE:-$ROOT/var/lib/edge}
BACKUPS=${BACKUPS:-$ROOT/var/backups/edge}
UNIT_DIR=${UNIT_DIR:-$ROOT/etc/systemd/system}
BIN_LINK=${BIN_LINK:-$ROOT/usr/local/bin/edge}
declare -A KIND_DIR=([units]=$UNIT_DIR [udev]=${UDEV_DIR:-$ROOT/etc/udev/rules.d}
    [sysusers.d]=${SYSUSERS_DIR:-$ROOT/etc/sysusers.d} [tmpfiles.d]=${TMPFILES_DIR:-$ROOT/etc/tmpfiles.d}
    [journald]=${JOURNALD_DIR:-$ROOT/etc/systemd/journald.conf.d})
SYSTEMCTL=${SYSTEMCTL:-systemctl} UDEVADM=${UDEVADM:-udevadm} APT=${APT:-apt-get}
DPKG_QUERY=${DPKG_QUERY:-dpkg-query} SYSUSERS=${SYSUSERS:-systemd-sysusers}
TMPFILES=${TMPFILES:-systemd-tmpfiles} PYTHON=${PYTHON:-/usr/bin/python3}
GATEWAY=edge-gateway.service
# What the daemon needs at run time (the Makefile's list without the test broker), the kiosk's.
PACKAGES=(libzbar0 fonts-wqy-microhei fontconfig python3-venv)
KIOSK_PACKAGES=(cage xwayland chromium)  # cage 0.1.4 stops without Xwayland; Debian does not pull it in

mode=install wheelhouse="" platform="" kiosk=1 extras=usb health_timeout=60 keep=3 purge=0
site="" device=box-1
while (($#)); do
    case $1 in
    --wheelhouse) wheelhouse=$(cd "${2:?}" && pwd) || die "no wheelhouse ${2}"; shift ;;
    --make-wheelhouse) mode=wheelhouse wheelhouse=${2:?}; shift ;;
    --platform) platform=${2:?}; shift ;;
    --no-kiosk) kiosk=0 ;;
    --extras) extras=${2?}; shift ;;
    --health-timeout) health_timeout=${2:?}; shift ;;
    --keep) keep=${2:?}; shift ;;
    --site) site=${2:?}; shift ;;
    --device) device=${2:?}; shift ;;
    --rollback) mode=rollback ;;
    --uninstall) mode=uninstall ;;
    --purge) purge=1 ;;
    -h | --help) usage ;;
    *) printf 'unknown option %s\n' "$1" >&2; usage ;;
    esac
    shift
done
[[ $health_timeout =~ ^[0-9]+$ && $keep =~ ^[0-9]+$ && $extras =~ ^[a-z,]*$ ]] || usage
((keep >= 2)) || keep=2 # current and previous
if [[ -z $ROOT && $EUID -ne 0 && $mode != wheelhouse ]]; then die "run as root: sudo $0"; fi

# The Python side (the system python or a release's): a wheel's identity, the databases.
read -r -d '' PYHELP <<'EOF' || true
import hashlib, os, shutil, sqlite3, sys, zipfile
from pathlib import Path
cmd, args = sys.argv[1], [Path(a) for a in sys.argv[2:]]
def dbs(state):
    return [p.relative_to(state) for p in sorted(state.glob("*.db")) + sorted(state.glob("cache/*.db"))]
def version(path):
    con = sqlite3.connect(path)  # as root: the -wal/-shm it may create go when it closes
    try: return con.execute("PRAGMA user_version").fetchone()[0]
    finally: con.close()
if cmd == "relid":  # WHEEL SYSTEM_TREE EXTRAS -> "version hex"
    h = hashlib.sha256(sys.argv[4].encode())
    with zipfile.ZipFile(args[0]) as z:
        rec = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
        meta = z.read(rec.replace("/RECORD", "/METADATA")).decode().splitlines()
        # Not RECORD itself, nor WHEEL (it names the setuptools version that built it).
        skip = (rec + ",", rec.replace("/RECORD", "/WHEEL,"))
        h.update("\n".join(sorted(l for l in z.read(rec).decode().splitlines() if not l.startswith(skip))).encode())
    for f in sorted(p for p in args[1].rglob("*") if p.is_file()):
        h.update(str(f.relative_to(args[1])).encode() + hashlib.sha256(f.read_bytes()).digest())
    print(next(l[8:].strip() for l in meta if l.startswith("Version:")), h.hexdigest()[:8])
elif cmd == "backup":  # STATE DEST: every database (one step: a consistent snapshot) and its version
    state, dest = args
    dest.mkdir(parents=True, mode=0o700)
    with open(dest / "versions.txt", "w") as out:
        for rel in dbs(state):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            src, dst = sqlite3.connect(state / rel), sqlite3.connect(dest / rel)
            try: src.backup(dst)
            finally: dst.close(); src.close()
            os.chmod(dest / rel, 0o600)
            out.write(f"{version(dest / rel)} {rel}\n")
elif cmd == "restore":  # STATE BACKUP TAG: put back the databases whose schema version changed
    state, backup, tag = args
    for line in (backup / "versions.txt").read_text().splitlines():
        was, rel = line.split(" ", 1)
        live = state / rel
        if live.exists() and version(live) == int(was): continue
        owner = (live if live.exists() else state).stat()
        for suffix in ("", "-wal", "-shm"):  # a -wal left next to the restored file would corrupt it
            if Path(f"{live}{suffix}").exists(): os.replace(f"{live}{suffix}", f"{live}.failed-{tag}{suffix}")
        shutil.copyfile(backup / rel, f"{live}.restoring")
        os.chown(f"{live}.restoring", owner.st_uid, owner.st_gid)
        os.chmod(f"{live}.restoring", 0o600)
        os.replace(f"{live}.restoring", live)
        print(rel)
EOF
pyhelp() { "$1" -I -c "$PYHELP" "${@:2}"; } # -I: never the checkout's edge/ from the cwd

# -- system files ---------------------------------------------------------------------------------
# Convention: functions report a change in globals ($changed, $changed_kinds) and return 0, so that
# none runs in an `if`/`&&` context, where bash would silently ignore its failing commands.
changed=0 changed_kinds="" work=""
shipped() { # TREE: the files of a systemd tree that get installed, as "kind relpath" lines
    local f
    for f in "$1"/*.service "$1"/*.socket "$1"/*.timer "$1"/*.path; do
        [[ -f $f ]] && echo "units ${f##*/}"
    done
    for f in "$1"/udev/*.rules "$1"/sysusers.d/*.conf "$1"/tmpfiles.d/*.conf "$1"/journald/*.conf; do
        [[ -f $f ]] && { f=${f#"$1"/}; echo "${f%%/*} $f"; }
    done
    return 0
}
put_file() { # KIND SRC DST [OLD_SHIPPED]: copy if different (atomic), note the kind as changed
    if [[ -f $3 ]] && cmp -s "$2" "$3" && [[ $(stat -c %a "$3") == 644 ]]; then return 0; fi
    # The udev rules are filled in on the box (/dev/edge names): an edited copy stays; a new
    # shipped version goes next to it as .dist (udev reads only *.rules) for the technician.
    if [[ $1 == udev && -f $3 ]] && ! { [[ -n ${4:-} ]] && cmp -s "$3" "$4"; }; then
        [[ -n ${4:-} ]] && cmp -s "$2" "$4" && return 0 # same shipped file: nothing new to offer
        if ! cmp -s "$2" "$3.dist"; then
            install -m 644 "$2" "$3.dist"
            say "kept your edited $3; the new shipped one is $3.dist / 保留已修改的规则，新版本见 .dist"
        fi
        return 0
    fi
    mkdir -p "${3%/*}"
    install -m 644 "$2" "$3.edge-new"
    mv -f "$3.edge-new" "$3"
    changed_kinds+=" $1"
}
install_system_files() { # TREE [OLD_TREE]: install a release's files, remove what it no longer ships
    local kind rel dst old new_manifest=$work/manifest
    : >"$new_manifest"
    while read -r kind rel; do
        [[ $kiosk == 0 && $rel == edge-kiosk* ]] && continue
        dst=${KIND_DIR[$kind]}/${rel##*/} old=${2:+$2/$rel}
        echo "$dst" >>"$new_manifest"
        put_file "$kind" "$1/$rel" "$dst" "$old"
    done < <(shipped "$1")
    if [[ -f $MANIFEST ]]; then
        while read -r dst; do
            grep -qxF "$dst" "$new_manifest" && continue
            [[ $dst == "$UNIT_DIR"/* ]] && { $SYSTEMCTL disable --now "${dst##*/}" </dev/null || true; }
            rm -f "$dst"
            for kind in "${!KIND_DIR[@]}"; do [[ $dst == "${KIND_DIR[$kind]}"/* ]] && changed_kinds+=" $kind"; done
            say "removed 已删除 $dst"
        done <"$MANIFEST"
        cmp -s "$new_manifest" "$MANIFEST" && return 0
    fi
    install -m 644 "$new_manifest" "$MANIFEST"
}
has() { [[ " $changed_kinds " == *" $1 "* ]]; }
apply_system_changes() { # tell systemd, udev and journald what changed on disk
    [[ -n $changed_kinds ]] && changed=1
    if has units; then $SYSTEMCTL daemon-reload; fi
    if has udev; then
        $UDEVADM control --reload
        # Devices already plugged in get their /dev/edge names now, not at the next replug.
        $UDEVADM trigger --action=add --subsystem-match=tty --subsystem-match=input \
            --subsystem-match=video4linux --subsystem-match=usbmisc || true
    fi
    if has tmpfiles.d; then $TMPFILES ${ROOT:+--root="$ROOT"} --create "${KIND_DIR[tmpfiles.d]}"/*.conf || true; fi
    if has journald; then $SYSTEMCTL restart systemd-journald.service || true; fi
}

# -- users and packages ---------------------------------------------------------------------------
user_exists() {
    if [[ -n $ROOT ]]; then grep -q "^$1:" "$ROOT/etc/passwd" 2>/dev/null; else getent passwd "$1" >/dev/null; fi
}
ensure_users() { # TREE: the users its sysusers.d files declare
    local files=() missing="" u g home prefix=()
    for u in "$1"/sysusers.d/*.conf; do [[ -f $u ]] && files+=("$u"); done
    ((${#files[@]})) || return 0
    while read -r u; do user_exists "$u" || missing+=" $u"; done < <(awk '$1 == "u" { print $2 }' "${files[@]}")
    [[ -n $missing ]] || return 0
    say "creating users 创建用户:$missing"
    changed=1
    if command -v "${SYSUSERS%% *}" >/dev/null; then
        [[ -z $ROOT ]] || mkdir -p "$ROOT/etc"
        $SYSUSERS ${ROOT:+--root="$ROOT"} "${files[@]}"
        return 0
    fi
    # No systemd-sysusers (a chroot, a stripped image): the same users with shadow's tools.
    [[ -n $ROOT ]] && prefix=(--prefix "$ROOT")
    while read -r _ u _ _ home; do
        home=${home%% *}
        user_exists "$u" || useradd "${prefix[@]}" --system --user-group --no-create-home \
            --home-dir "${home:-/nonexistent}" --shell /usr/sbin/nologin "$u" </dev/null
    done < <(awk '$1 == "u"' "${files[@]}" | sed 's/"[^"]*"/-/')
    while read -r _ u g; do
        usermod "${prefix[@]}" -a -G "$g" "$u" </dev/null
    done < <(awk '$1 == "m" { print $1, $2, $3 }' "${files[@]}")
}
ensure_packages() {
    local want=("${PACKAGES[@]}") missing=() p
    ((kiosk)) && want+=("${KIOSK_PACKAGES[@]}")
    [[ ,$extras, == *,usb,* ]] && want+=(libusb-1.0-0)
    for p in "${want[@]}"; do
        # shellcheck disable=SC2016 # ${Status} is dpkg-query's
        [[ $($DPKG_QUERY -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    say "installing system packages 安装系统软件包: ${missing[*]}"
    changed=1
    $APT update -qq || true # offline: the install below says what is missing
    DEBIAN_FRONTEND=noninteractive $APT install -y -qq "${missing[@]}" ||
        die "cannot install ${missing[*]}: install them first (apt-get install ./*.deb) / 无法安装系统软件包"
}

# -- releases -------------------------------------------------------------------------------------
link_id() { if [[ -L $OPT/$1 ]]; then basename "$(readlink "$OPT/$1")"; fi; } # current | previous
relink() { # NAME RELEASE_ID: atomic and relative (valid under ROOT and in an image)
    ln -sfn "releases/$2" "$OPT/.$1.new"
    mv -T "$OPT/.$1.new" "$OPT/$1"
}
copy_tree() { # SRC DEST: the systemd files a release ships, kept with it for a rollback
    local kind rel
    while read -r kind rel; do install -D -m 644 "$1/$rel" "$2/$rel"; done < <(shipped "$1")
}
fetch_wheel() { # sets $wheel: the newest in the wheelhouse, or built from SRC_DIR
    if [[ -n $wheelhouse && $mode != wheelhouse ]]; then
        wheel=$(find "$wheelhouse" -maxdepth 1 -name 'edge_gateway-*.whl' | sort -V | tail -n1)
        [[ -n $wheel ]] || die "no edge_gateway-*.whl in $wheelhouse"
        return 0
    fi
    # From a copy of the tree: the build leaves nothing in the technician's checkout.
    mkdir -p "$work/src"
    tar -C "$SRC_DIR" --exclude=./.venv --exclude=./.git --exclude=./build --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude='.*_cache' --exclude=./test-output -cf - . | tar -C "$work/src" -xf -
    "$PYTHON" -m venv "$work/build-venv"
    "$work/build-venv/bin/pip" wheel -q --no-deps -w "$work/wheel" "$work/src" ||
        die "cannot build the wheel (offline? bring a wheelhouse: --wheelhouse DIR) / 无法构建"
    wheel=$(ls "$work"/wheel/edge_gateway-*.whl)
}
build_release() { # ID: venv + systemd files; RELEASE, written last, marks it complete
    local dir=$RELEASES/$1 spec=$wheel${extras:+[$extras]}
    [[ -f $dir/RELEASE ]] && return 0
    rm -rf "$dir" # an interrupted build
    say "building release 构建版本 $1"
    mkdir -p "$dir"
    # A venv is ~350 MB (opencv, numpy); a card filled to the last byte stops the gate too.
    if (($(df --output=avail -m "$dir" | tail -n1) < ${MIN_FREE_MB:-800})); then
        rmdir "$dir"
        die "less than ${MIN_FREE_MB:-800} MB free under $RELEASES: free some space (journalctl --vacuum-size=100M, old backups in $BACKUPS) / 磁盘空间不足"
    fi
    "$PYTHON" -m venv "$dir/venv"
    if [[ -n $wheelhouse ]]; then
        # The wheelhouse alone: no index, no pip.conf (mirror, constraints), no PIP_* settings.
        env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT \
            PIP_CONFIG_FILE=/dev/null "$dir/venv/bin/pip" install -q --no-compile --no-index \
            --find-links "$wheelhouse" "$spec" || die "pip install from $wheelhouse failed"
    else
        "$dir/venv/bin/pip" install -q --no-compile "$spec" || die "pip install failed"
    fi
    # Compiled now, in parallel: under ProtectSystem=strict /opt is read-only, and every start
    # would compile everything again in memory. Files that do not compile (test data in some
    # packages) are skipped, as pip's own compile step does.
    "$dir/venv/bin/python" -m compileall -q -j0 "$dir/venv/lib" >/dev/null 2>&1 || true
    "$dir/venv/bin/edge" --help >/dev/null || die "release $1 does not run: $dir/venv/bin/edge --help"
    copy_tree "$work/system" "$dir/system"
    printf 'version=%s\nwheel=%s\nextras=%s\nbuilt=%s\n' "${1%-*}" "${wheel##*/}" "$extras" \
        "$(date -u +%FT%TZ)" >"$dir/RELEASE.new"
    mv "$dir/RELEASE.new" "$dir/RELEASE"
    changed=1
}
prune() { # the newest $keep complete releases (current and previous always), $keep backups
    local cur prev budget id
    cur=$(link_id current) prev=$(link_id previous)
    budget=$((keep - 1 - (${#prev} > 0)))
    while read -r id; do
        [[ $id == "$cur" || $id == "$prev" ]] && continue
        if ((budget > 0)); then budget=$((budget - 1)); continue; fi
        rm -rf "${RELEASES:?}/$id"
        say "pruned release 删除旧版本 $id"
    done < <(find "$RELEASES" -mindepth 2 -maxdepth 2 -name RELEASE -printf '%T@ %h\n' | sort -rn | sed 's|.*/||')
    [[ -d $BACKUPS ]] || return 0
    find "$BACKUPS" -mindepth 1 -maxdepth 1 -type d | sort | head -n -"$keep" | xargs -r rm -rf
}

# -- start, health, rollback ----------------------------------------------------------------------
in_release() { # ID CMD...: a command with the config lookup systemd gives the daemon
    CONFIGURATION_DIRECTORY=$ETC_EDGE STATE_DIRECTORY=$STATE EDGE_RELEASE=$RELEASES/$1 "${@:2}"
}
healthy() { # ID: READY (is-active, for Type=notify) and /healthz 200, within the limit
    local deadline=$((SECONDS + health_timeout))
    # shellcheck disable=SC2016 # expanded by the bash that runs the check
    local check=${HEALTH_CHECK:-'$SYSTEMCTL is-active --quiet edge-gateway.service && "$EDGE_RELEASE/venv/bin/edge" api GET /healthz >/dev/null'}
    while :; do
        in_release "$1" env SYSTEMCTL="$SYSTEMCTL" timeout 30 bash -c "$check" && return 0
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}
start_gateway() { # ID: sets $ok; not blocking: a start that hangs is what the wait is for
    ok=0 stopped=0
    $SYSTEMCTL start --no-block "$GATEWAY" || true
    if healthy "$1"; then ok=1; fi
}
go_back() { # FAILED GOOD BACKUP WHY: current to GOOD with its systemd files and the old schemas
    local failed=$1 good=$2 backup=$3 restored=""
    stopped=1
    $SYSTEMCTL stop "$GATEWAY" || true
    relink current "$good"
    install_system_files "$RELEASES/$good/system" "$RELEASES/$failed/system"
    apply_system_changes
    if [[ -n $backup ]] && ! restored=$(pyhelp "$RELEASES/$good/venv/bin/python" restore "$STATE" "$backup" "$failed"); then
        say "DATABASE RESTORE FAILED 数据库恢复失败: the backup is in $backup"
    fi
    say "ROLLED BACK 已回滚: $4; back on 已恢复到 $good"
    if [[ -n $restored ]]; then
        say "  databases restored 已恢复数据库 ($backup): ${restored//$'\n'/ }"
        say "  their schema had changed; the failed release's files are kept as *.failed-$failed"
        say "  新版本已修改其结构；新版本的文件保留为 *.failed-$failed"
    else
        say "  databases kept as they are: no schema change / 数据库结构未变，保持原样"
    fi
    rc=3
    start_gateway "$good"
    ((ok)) && return 0
    say "the previous release $good is NOT healthy either: journalctl -u edge-gateway"
    say "旧版本 $good 也未通过健康检查：请查看 journalctl -u edge-gateway"
    rc=4
}
upgrade() { # NEW OLD: sets $rc (0, 3, 4)
    local new=$1 old=$2 backup before
    before=$(link_id previous)
    stopped=1
    $SYSTEMCTL stop "$GATEWAY" || true # no writer while the databases are copied
    backup=$BACKUPS/$(date -u +%Y%m%dT%H%M%SZ)-$old-to-$new
    mkdir -p "$BACKUPS" "$STATE" && chmod 700 "$BACKUPS"
    pyhelp "$RELEASES/$new/venv/bin/python" backup "$STATE" "$backup" || die "database backup failed"
    relink previous "$old"
    relink current "$new"
    install_system_files "$RELEASES/$new/system" "$RELEASES/$old/system"
    apply_system_changes
    if [[ ! -f $ETC_EDGE/edge.toml ]]; then
        say "UPDATED 已更新 $old -> $new (not started: no $ETC_EDGE/edge.toml / 尚未配置，未启动)"
        stopped=0
        return 0
    fi
    start_gateway "$new"
    if ((ok)); then
        say "UPDATED 已更新 $old -> $new, healthy 运行正常 (previous kept 旧版本保留: $OPT/previous)"
        return 0
    fi
    go_back "$new" "$old" "$backup" \
        "$new did not become healthy within ${health_timeout}s / 新版本 $new 在 ${health_timeout} 秒内未就绪"
    rm -rf "${RELEASES:?}/$new" # broken; the same wheel builds it again
    if [[ -n $before && -f $RELEASES/$before/RELEASE ]]; then relink previous "$before"; else rm -f "$OPT/previous"; fi
}

# -- install, rollback, uninstall, wheelhouse ------------------------------------------------------
default_config() { # ID: /etc/edge/edge.toml only if there is none: never the technician's
    local conf=$ETC_EDGE/edge.toml group gid
    [[ -e $conf ]] && return 0
    if [[ -z $site ]]; then
        say "no $conf yet: provision this box / 尚未配置: edge provision --site SITE --device ID ..."
        return 0
    fi
    mkdir -p "$ETC_EDGE"
    # `edge provision` refuses a config for another site or device: write what it would write.
    "$RELEASES/$1/venv/bin/python" -I -c 'import sys
from edge.config import render_minimal
from sync.provision import ANCHOR_NAME
sys.stdout.write(render_minimal(sys.argv[1], sys.argv[2], ANCHOR_NAME))' "$site" "$device" >"$conf.new"
    group=$(sed -n 's/^Group=//p' "$UNIT_DIR/$GATEWAY" 2>/dev/null | head -n1)
    if [[ -n $ROOT ]]; then gid=$(awk -F: -v g="${group:-edge}" '$1 == g { print $3 }' "$ROOT/etc/group")
    else gid=$(getent group "${group:-edge}" | cut -d: -f3); fi
    chmod 640 "$conf.new"
    [[ -z $gid ]] || chgrp "$gid" "$conf.new" # numeric: under ROOT the name means nothing here
    mv "$conf.new" "$conf"
    say "wrote 已写入 $conf (site $site, device $device)"
    changed=1
}
enable_units() {
    local dst
    while read -r dst; do
        if [[ $dst != "$UNIT_DIR"/* ]] || ! grep -q '^WantedBy=\|^RequiredBy=' "$dst"; then continue; fi
        $SYSTEMCTL is-enabled --quiet "${dst##*/}" </dev/null 2>/dev/null && continue
        $SYSTEMCTL enable "${dst##*/}" </dev/null
        changed=1
    done <"$MANIFEST"
    # The kiosk is WantedBy=graphical.target; a box without a desktop boots multi-user.target.
    if ((kiosk)) && [[ $($SYSTEMCTL get-default 2>/dev/null || true) == multi-user.target ]]; then
        $SYSTEMCTL set-default graphical.target
        changed=1
    fi
}
do_install() {
    local id ver cur
    ensure_packages
    ensure_users "$SYSTEMD_SRC"
    fetch_wheel
    copy_tree "$SYSTEMD_SRC" "$work/system"
    read -r ver id < <(pyhelp "$PYTHON" relid "$wheel" "$work/system" "$extras") || true
    [[ -n ${id:-} ]] || die "cannot read $wheel"
    id=$ver-$id cur=$(link_id current)
    [[ -f $RELEASES/$cur/RELEASE ]] || cur=""
    build_release "$id"
    if [[ -z $cur || $id == "$cur" ]]; then
        [[ $id == "$cur" ]] || relink current "$id"
        install_system_files "$RELEASES/$id/system" "${cur:+$RELEASES/$cur/system}"
        apply_system_changes
    fi
    default_config "$id"
    if [[ "$(readlink "$BIN_LINK" 2>/dev/null)" != /opt/edge/current/venv/bin/edge ]]; then
        mkdir -p "${BIN_LINK%/*}" # `edge doctor` for the technician, whatever the release
        ln -sfn /opt/edge/current/venv/bin/edge "$BIN_LINK"
    fi
    if [[ -z $cur ]]; then
        if in_release "$id" "$RELEASES/$id/venv/bin/edge" check >/dev/null 2>&1; then
            start_gateway "$id"
            ((ok)) || die "installed $id, but the gateway is not healthy: journalctl -u edge-gateway / 网关未就绪"
            ((kiosk)) && $SYSTEMCTL start --no-block edge-kiosk.service
        else
            say "not started 未启动: \`edge check\` does not pass yet (provision first / 请先完成配置)"
        fi
        say "INSTALLED 已安装 $id"
    elif [[ $id != "$cur" ]]; then
        upgrade "$id" "$cur"
    elif has units && [[ -f $ETC_EDGE/edge.toml ]]; then
        $SYSTEMCTL try-restart "$GATEWAY"
    fi
    enable_units
    prune
    ((rc || changed)) || say "unchanged 无变化: $id is installed and current / 已是当前版本"
}
do_rollback() { # to `previous`, which then names the release left
    local cur prev backup
    cur=$(link_id current) prev=$(link_id previous)
    [[ -n $prev && -f $RELEASES/$prev/RELEASE ]] || die "no previous release to roll back to / 没有可回滚的旧版本"
    backup=$(find "$BACKUPS" -mindepth 1 -maxdepth 1 -type d -name "*-$prev-to-$cur" 2>/dev/null | sort | tail -n1)
    go_back "$cur" "$prev" "$backup" "asked by --rollback / 按要求回滚"
    relink previous "$cur"
    ((rc == 3)) && rc=0
}
do_uninstall() { # keeps /etc/edge, /var/lib/edge and the backups unless --purge
    local dst kind rel files=() u tree removed=0
    tree=$OPT/current/system
    [[ -d $tree ]] || tree=$SYSTEMD_SRC
    { # what was installed, and what is shipped (a --purge after an uninstall finds the rest)
        [[ ! -f $MANIFEST ]] || cat "$MANIFEST"
        while read -r kind rel; do echo "${KIND_DIR[$kind]}/${rel##*/}"; done < <(shipped "$tree")
    } | sort -u >"$work/remove"
    while read -r dst; do
        [[ -e $dst || -e $dst.dist ]] || continue
        [[ $dst == "$UNIT_DIR"/* ]] && { $SYSTEMCTL disable --now "${dst##*/}" </dev/null || true; }
        # Rules filled in on this box are the technician's work, like /etc/edge.
        if [[ $dst == "${KIND_DIR[udev]}"/* && -f $dst ]] && ((!purge)) && ! cmp -s "$dst" "$tree/udev/${dst##*/}"; then
            say "kept your edited 保留已修改的 $dst (--purge removes it)"
            continue
        fi
        rm -f "$dst" "$dst.dist"
        removed=1
    done <"$work/remove"
    if ((removed)); then
        $SYSTEMCTL daemon-reload || true
        $UDEVADM control --reload || true
    fi
    for u in "$tree"/sysusers.d/*.conf; do [[ -f $u ]] && files+=("$u"); done
    while read -r u; do
        user_exists "$u" || continue
        userdel ${ROOT:+--prefix "$ROOT"} "$u" </dev/null
        # Debian removes the user's group with it; a prefix (no login.defs) does not.
        if grep -q "^$u:" "${ROOT:-}/etc/group"; then groupdel ${ROOT:+--prefix "$ROOT"} "$u" || true; fi
    done < <(awk '$1 == "u" { print $2 }' "${files[@]}" /dev/null)
    rm -f "$BIN_LINK"
    rm -rf "${OPT:?}"
    if ((purge)); then
        rm -rf "${ETC_EDGE:?}" "${STATE:?}" "${BACKUPS:?}" "${STATE%/*}/edge-kiosk"
        say "UNINSTALLED 已卸载, config and data removed 配置与数据已删除"
    else
        say "UNINSTALLED 已卸载; kept 保留 $ETC_EDGE $STATE $BACKUPS (--purge removes them)"
    fi
}
make_wheelhouse() { # DIR: the project's wheel and every dependency, for an offline install
    local spec
    fetch_wheel
    mkdir -p "$wheelhouse"
    cp "$wheel" "$wheelhouse/"
    spec=$wheel${extras:+[$extras]}
    if [[ -n $platform ]]; then # another box's CPU: binary wheels only
        "$work/build-venv/bin/pip" download -q -d "$wheelhouse" --only-binary=:all: \
            --platform "$platform" --python-version 3.11 --implementation cp "$spec"
    else
        "$work/build-venv/bin/pip" wheel -q -w "$wheelhouse" "$spec"
    fi
    (cd "$wheelhouse" && sha256sum -- *.whl >SHA256SUMS)
    say "wheelhouse 离线安装包: $wheelhouse ($(find "$wheelhouse" -name '*.whl' | wc -l) wheels)"
}

# shellcheck disable=SC2317 # run by the EXIT trap
finish() { # never leave a gate stopped because this script died half-way
    rm -rf "$work"
    if ((stopped)); then
        say "install.sh stopped early: starting the gateway again on $(link_id current) / 中途退出，已重新启动网关" >&2
        $SYSTEMCTL start --no-block "$GATEWAY" || true
    fi
}
work=$(mktemp -d)
trap finish EXIT
rc=0 ok=0 stopped=0 wheel=""
case $mode in
wheelhouse) make_wheelhouse ;;
uninstall) do_uninstall ;;
*)
    mkdir -p "$RELEASES"
    exec 9>>"$OPT/.lock" # >>: taking the lock changes nothing on disk
    flock -n 9 || die "another install.sh is running / 另一个安装正在进行"
    if [[ $mode == rollback ]]; then do_rollback; else do_install; fi
    ;;
esac
exit "$rc"
