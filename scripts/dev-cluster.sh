#!/usr/bin/env bash
# A real single-node Ceph 16.2 (pacific) on 127.0.0.1 for ferroceph development and tests.
#
#   scripts/dev-cluster.sh [-v] up        bootstrap, or restart, or just check (idempotent)
#   scripts/dev-cluster.sh [-v] down      stop the daemons, keep the data
#   scripts/dev-cluster.sh [-v] stop D    stop one daemon (mon|mgr|osd|mds), for outage tests
#   scripts/dev-cluster.sh [-v] status    daemons + `ceph -s`; exit 1 if not usable
#   scripts/dev-cluster.sh env            KEY=VALUE lines for tests (also in $DIR/env)
#   scripts/dev-cluster.sh [-v] purge     down + remove the state directory
#   scripts/dev-cluster.sh selftest       do what a CSI driver does, as the CSI users
#
# State: ${FERROCEPH_CLUSTER_DIR:-/var/tmp/ferroceph-cluster}. Verbose: -v or
# FERROCEPH_CLUSTER_VERBOSE=1. FERROCEPH_CLUSTER_TIMEOUT (default 90 s): how long
# `up` waits. FERROCEPH_CLUSTER_ACCEPT_WARN=CHECK1,CHECK2: more health checks to
# tolerate. Keys: $DIR/keyring.{admin,csi-rbd,csi-cephfs}, bare keys in
# $DIR/csi-{rbd,cephfs}.key (all 0600). Admin CLI: `ceph -c $DIR/ceph.conf ...` (the conf
# names the admin keyring; never export CEPH_KEYRING: librados would then use it
# for every identity and the CSI users could not authenticate).
#
# Layout: 1 mon (mon.a, v2 3300 + v1 6789), 1 mgr (mgr.x), 1 bluestore OSD (osd.0,
# sparse 10 GiB file), 1 MDS (mds.a); pool `rbd`, CephFS `cephfs`
# (cephfs_metadata + cephfs_data); users client.csi-rbd and client.csi-cephfs.
# The subvolume group `csi` is deliberately NOT created: the driver must create it.
#
# "Usable" (what `up` waits for and `status` checks): no health check other than
# the harmless ones listed in scripts/dev-cluster/helper.py (MON_DISK_LOW,
# RECENT_CRASH, POOL_NO_REDUNDANCY, AUTH_INSECURE_GLOBAL_ID_RECLAIM*), the OSD
# up+in, all PGs active+clean, the MDS rank up:active, and the mgr volumes module
# answering `fs subvolumegroup ls cephfs`.
set -euo pipefail

DIR=${FERROCEPH_CLUSTER_DIR:-/var/tmp/ferroceph-cluster}
DIR=${DIR%/}
CONF=$DIR/ceph.conf
LOCK=$DIR.lock # next to the state dir so that purge can hold it while removing the dir
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HELPER=$HERE/dev-cluster/helper.py
PY=/usr/bin/python3 # the system python has python3-rados/-rbd (ceph-common deps)
VERBOSE=${FERROCEPH_CLUSTER_VERBOSE:-0}
UP_TIMEOUT=${FERROCEPH_CLUSTER_TIMEOUT:-90}

FS_NAME=cephfs
RBD_POOL=rbd
OSD_SIZE=10G
DAEMONS=(mon.a mgr.x osd.0 mds.a)
PACKAGES=(ceph-mon ceph-osd ceph-mgr ceph-mds ceph-common ceph-fuse rbd-fuse rbd-nbd)

T0=$EPOCHREALTIME
log() { echo "dev-cluster: $*" >&2; }
vlog() { if [[ $VERBOSE == 1 ]]; then log "[$(elapsed)s] $*"; fi; }
BOOTSTRAPPING=0
MKFS_PID=
die() {
    log "ERROR: $*"
    if [[ -n $MKFS_PID ]]; then
        kill "$MKFS_PID" 2>/dev/null || true
        wait "$MKFS_PID" 2>/dev/null || true
    fi
    if ((BOOTSTRAPPING)); then
        log "stopping the half-bootstrapped cluster; logs stay in $DIR/log, the next 'up' starts afresh"
        BOOTSTRAPPING=0
        stop_all || true
    fi
    exit 1
}
elapsed() {
    local us=$((${EPOCHREALTIME/./} - ${T0/./}))
    printf '%d.%d' $((us / 1000000)) $((us % 1000000 / 100000))
}

helper() {
    FERROCEPH_CLUSTER_VERBOSE=$VERBOSE FERROCEPH_CLUSTER_T0=$T0 "$PY" "$HELPER" --conf "$CONF" "$@"
}

# ------------------------------------------------------------------ packages --
ensure_packages() {
    local missing=() p st
    for p in "${PACKAGES[@]}"; do
        st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
        [[ $st == installed ]] || missing+=("$p")
    done
    command -v ss >/dev/null || missing+=(iproute2)
    [[ -x $PY ]] || missing+=(python3)
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) == 0 ]] || die "missing packages (${missing[*]}) and not root"
    log "installing ${missing[*]} (and the rest of the Ceph packages)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}" iproute2 >&2
}

# ------------------------------------------------------------------ processes --
# Alive = exists and is not a zombie (exited processes here can stay zombies for
# a while, so `kill -0` is not enough).
pid_alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z && ${stat:0:1} != X ]]
}

any_alive() {
    local p
    for p in "$@"; do pid_alive "$p" && return 0; done
    return 1
}

# PIDs of live processes running daemon $1 (e.g. osd.0) with OUR ceph.conf. The
# pid files are only a hint: a kill -9 leaves a stale one, and a mgr that restarts
# itself (module enable) changes PID; so look at the command lines.
daemon_pids() {
    local type=${1%%.*} id=${1#*.} p args i match
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        mapfile -d "" -t args 2>/dev/null <"/proc/$p/cmdline" || continue
        ((${#args[@]} >= 5)) || continue
        [[ ${args[0]##*/} == "ceph-$type" ]] || continue
        match=0
        for ((i = 1; i < ${#args[@]} - 1; i++)); do
            [[ ${args[i]} == -c && ${args[i + 1]} == "$CONF" ]] && match=$((match + 1))
            [[ ${args[i]} == -i && ${args[i + 1]} == "$id" ]] && match=$((match + 1))
        done
        ((match == 2)) && pid_alive "$p" && echo "$p"
    done
    return 0
}

# Start a daemon in the background with no inherited descriptors: the flock fd
# would otherwise be held by the daemon and deadlock the next `up`, and a
# captured stdout/stderr pipe would make `$(dev-cluster.sh up)` hang forever.
spawn() {
    local name=$1 fd
    shift
    vlog "starting $name"
    (
        for fd in /proc/"$BASHPID"/fd/*; do
            fd=${fd##*/}
            if ((fd > 2)); then exec {fd}>&-; fi
        done 2>/dev/null
        exec "$@"
    ) </dev/null >>"$DIR/log/$name.out" 2>&1
}

# ceph-mon would retry the bind for 10 s before it gives up: fail fast
check_mon_ports() {
    local busy
    busy=$(ss -Htlnp 'sport = :3300 or sport = :6789' 2>/dev/null || true)
    [[ -z $busy ]] || die "the mon ports are taken (another cluster running?):"$'\n'"$busy"
}

start_daemon() {
    local name=$1 type=${1%%.*} id=${1#*.}
    if [[ -n $(daemon_pids "$name") ]]; then
        vlog "$name already running"
        return 0
    fi
    [[ $type != mon ]] || check_mon_ports
    rm -f "$DIR/run/$name.pid"
    # Daemonised (default): mon and osd return once initialised, mgr and mds at once.
    spawn "$name" "ceph-$type" -i "$id" -c "$CONF" ||
        die "ceph-$type -i $id failed to start; $(tail_logs "$name")"
}

now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }

# stop_daemons GRACE_S KILL_NOTE NAME...: SIGTERM, wait up to GRACE_S seconds,
# then SIGKILL. KILL_NOTE "quiet" logs the SIGKILL only with -v (expected case).
stop_daemons() {
    local grace=$1 note=$2 d p pids=() deadline
    shift 2
    for d in "$@"; do
        for p in $(daemon_pids "$d"); do
            vlog "stopping $d (pid $p)"
            kill -TERM "$p" 2>/dev/null || true
            pids+=("$p")
        done
    done
    ((${#pids[@]})) || return 0
    deadline=$(($(now_ms) + grace * 1000))
    while (($(now_ms) < deadline)); do
        any_alive "${pids[@]}" || return 0
        sleep 0.1
    done
    for p in "${pids[@]}"; do
        if pid_alive "$p"; then
            if [[ $note == quiet ]]; then
                vlog "pid $p still running after ${grace}s: SIGKILL"
            else
                log "pid $p did not stop in ${grace}s: SIGKILL"
            fi
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    for _ in {1..50}; do
        any_alive "${pids[@]}" || return 0
        sleep 0.1
    done
    log "could not stop pids ${pids[*]}"
    return 1
}

# Stop everything, in an order that lets each daemon stop cleanly and fast.
stop_all() {
    # The mgr first. It exits on SIGTERM without closing its CephFS sessions
    # (volumes module); the MDS would persist them and, after a restart, wait
    # mds_reconnect_timeout (10 s) for clients that never come back. So evict
    # the dead mgr's sessions while the MDS still runs. Other clients (e.g. a
    # ceph-fuse mount) keep their sessions and reconnect after `up`.
    stop_daemons 10 loud mgr.x || return 1
    if [[ -n $(daemon_pids mds.a) && -n $(daemon_pids mon.a) ]]; then
        vlog "evicting the stopped mgr's CephFS sessions"
        timeout 15 ceph -c "$CONF" --connect-timeout 10 tell mds.a client evict \
            client_metadata.entity_id=x >/dev/null 2>&1 || log "could not evict the mgr's CephFS sessions"
    fi
    # Then the MDS, alone: it writes to the OSD while it stops. It normally exits
    # within ~2 s of SIGTERM, but Ceph 16.2.15 sometimes hangs in its shutdown
    # when it was purging strays (e.g. of just removed subvolumes) at that moment.
    # It has left the MDS map by then and its journal is on RADOS, so SIGKILL is
    # as safe as a crash, which CephFS is built to recover from.
    stop_daemons 4 quiet mds.a || return 1
    # The OSD tells the mon it goes down (osd_fast_shutdown); the mon last.
    stop_daemons 10 loud osd.0 || return 1
    stop_daemons 10 loud mon.a
}

all_running() {
    local d
    for d in "${DAEMONS[@]}"; do
        [[ -n $(daemon_pids "$d") ]] || return 1
    done
}

tail_logs() {
    local d out=""
    for d in "${@:-${DAEMONS[@]}}"; do
        for f in "$DIR/log/$d.log" "$DIR/log/$d.out"; do
            [[ -s $f ]] || continue
            out+=$'\n'"--- tail $f"$'\n'$(tail -n 15 "$f")
        done
    done
    printf '%s\n' "$out"
}

# Nothing of ours may listen anywhere but 127.0.0.1.
check_listen() {
    local d p bad=""
    for d in "${DAEMONS[@]}"; do
        for p in $(daemon_pids "$d"); do
            bad+=$(ss -tlnpH | awk -v pat="pid=$p," 'index($0, pat) && $4 !~ /^127\.0\.0\.1:/ { print "  " $4 " " $6 }')
        done
    done
    [[ -z $bad ]] || die "daemons listen outside 127.0.0.1:"$'\n'"$bad"
}

# ---------------------------------------------------------------------- keys --
keyring_key() { # file -> key
    awk '$1 == "key" { print $3; exit }' "$1"
}

write_secret() { # file content
    (umask 077 && printf '%s\n' "$2" >"$1.tmp") && mv -f "$1.tmp" "$1"
}

env_lines() {
    local fsid
    fsid=$(awk '$1 == "fsid" { print $3; exit }' "$CONF")
    cat <<EOF
FERRO_MONITORS=127.0.0.1:6789
FERRO_MONITORS_V2=127.0.0.1:3300
FERRO_FSID=$fsid
FERRO_ADMIN_ID=admin
FERRO_ADMIN_KEY=$(keyring_key "$DIR/keyring.admin")
FERRO_RBD_USER=csi-rbd
FERRO_RBD_KEY=$(keyring_key "$DIR/keyring.csi-rbd")
FERRO_CEPHFS_USER=csi-cephfs
FERRO_CEPHFS_KEY=$(keyring_key "$DIR/keyring.csi-cephfs")
FERRO_RBD_POOL=$RBD_POOL
FERRO_FS_NAME=$FS_NAME
FERRO_CEPH_CONF=$CONF
FERRO_ADMIN_KEYRING=$DIR/keyring.admin
EOF
}

write_env() {
    write_secret "$DIR/env" "$(env_lines)"
}

# ----------------------------------------------------------------- bootstrap --
# ceph.conf is generated, and regenerated by `up` before it starts daemons (so
# that improvements here reach existing clusters); change settings at run time
# with `ceph config set` instead of editing it.
write_conf() { # fsid [file]
    local fsid=$1 out=${2:-$CONF}
    # shellcheck disable=SC2016 # $name, $id are Ceph metavariables
    cat >"$out" <<EOF
# Generated by scripts/dev-cluster.sh. Tiny single-node cluster on 127.0.0.1.
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:3300,v1:127.0.0.1:6789]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv4 = true
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
crash_dir = $DIR/crash
# one OSD: size 1 pools, no redundancy warnings, few PGs, no autoscaler
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
# clone v2 (clones of unprotected snapshots) needs mimic clients
mon_osd_initial_require_min_compat_client = mimic
# the host disk is not ours to police
mon_data_avail_warn = 2
mon_data_avail_crit = 1
# the default also starts restful and nfs; volumes is always on
mgr_initial_modules = iostat
# daemons report to the mgr, and the mgr to the mon, every second (default 5 s):
# PG states show up sooner in 'ceph -s'
mgr_stats_period = 1
mon_mgr_digest_period = 1

[client.admin]
keyring = $DIR/keyring.admin

[mon]
mon_data = $DIR/mon/\$id
keyring = $DIR/mon/\$id/keyring
log_file = $DIR/log/\$name.log
pid_file = $DIR/run/\$name.pid
admin_socket = $DIR/run/\$name.asok
# pool and fs creation in ~1 s instead of ~6 s
paxos_propose_interval = 0.1

[mgr]
mgr_data = $DIR/mgr/\$id
keyring = $DIR/mgr/\$id/keyring
log_file = $DIR/log/\$name.log
pid_file = $DIR/run/\$name.pid
admin_socket = $DIR/run/\$name.asok

[osd]
osd_data = $DIR/osd/\$id
keyring = $DIR/osd/\$id/keyring
log_file = $DIR/log/\$name.log
pid_file = $DIR/run/\$name.pid
admin_socket = $DIR/run/\$name.asok
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = $OSD_SIZE
bluestore_fsck_on_mkfs = false
# osd_memory_target cannot go below 896 MiB: fix the cache size instead
bluestore_cache_autotune = false
bluestore_cache_size = 128M
# The OSD opens and closes the block file ~7 times while it starts (once per op
# shard, to ask whether it is rotational); each close waits for the aio thread's
# poll (default 250 ms). 10 ms makes the OSD start in ~0.8 s instead of ~2.5 s.
bdev_aio_poll_ms = 10

[mds]
mds_data = $DIR/mds/\$id
keyring = $DIR/mds/\$id/keyring
log_file = $DIR/log/\$name.log
pid_file = $DIR/run/\$name.pid
admin_socket = $DIR/run/\$name.asok
mds_reconnect_timeout = 10
# Beacon every second (default 4 s): the mon walks a new MDS through
# replay/reconnect/rejoin/active faster, and SIGTERM waits one beacon interval.
mds_beacon_interval = 1
# The metrics pinger thread sleeps this long; SIGTERM waits for it (default 5 s).
mds_ping_interval = 1
EOF
}

# keyring section: name key caps...
keyring_entry() {
    local name=$1 key=$2
    shift 2
    printf '[%s]\n\tkey = %s\n' "$name" "$key"
    while (($#)); do
        printf '\tcaps %s = "%s"\n' "$1" "$2"
        shift 2
    done
}

bootstrap() {
    local fsid osd_uuid k_mon k_admin k_osd k_mgr k_mds k_rbd k_fs mkfs_pid v
    log "bootstrapping a new cluster in $DIR"
    check_mon_ports
    BOOTSTRAPPING=1
    mkdir -p "$DIR"/{mon/a,mgr/x,osd/0,mds/a,log,run,crash}
    chmod 700 "$DIR"/{mon,mgr,osd,mds}
    fsid=$(cat /proc/sys/kernel/random/uuid)
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    write_conf "$fsid"

    for v in k_mon k_admin k_osd k_mgr k_mds k_rbd k_fs; do
        printf -v "$v" '%s' "$(ceph-authtool --gen-print-key)"
    done
    # shellcheck disable=SC2154 # assigned through printf -v above
    {
        write_secret "$DIR/keyring.admin" "$(keyring_entry client.admin "$k_admin" \
            mon 'allow *' osd 'allow *' mds 'allow *' mgr 'allow *')"
        write_secret "$DIR/keyring.csi-rbd" "$(keyring_entry client.csi-rbd "$k_rbd")"
        write_secret "$DIR/keyring.csi-cephfs" "$(keyring_entry client.csi-cephfs "$k_fs")"
        # bare keys, for ceph-fuse --keyfile / rbd --keyfile
        write_secret "$DIR/csi-rbd.key" "$k_rbd"
        write_secret "$DIR/csi-cephfs.key" "$k_fs"
        write_secret "$DIR/osd/0/keyring" "$(keyring_entry osd.0 "$k_osd")"
        write_secret "$DIR/mgr/x/keyring" "$(keyring_entry mgr.x "$k_mgr")"
        write_secret "$DIR/mds/a/keyring" "$(keyring_entry mds.a "$k_mds")"
        # Every entity goes into the mon's initial keyring with its caps: the mon
        # imports them at mkfs, which saves one `ceph auth` round trip each.
        write_secret "$DIR/mon-initial.keyring" "$(
            keyring_entry mon. "$k_mon" mon 'allow *'
            keyring_entry client.admin "$k_admin" mon 'allow *' osd 'allow *' mds 'allow *' mgr 'allow *'
            keyring_entry osd.0 "$k_osd" mon 'allow profile osd' mgr 'allow profile osd' osd 'allow *'
            keyring_entry mgr.x "$k_mgr" mon 'allow profile mgr' osd 'allow *' mds 'allow *'
            keyring_entry mds.a "$k_mds" mon 'allow profile mds' osd 'allow rwx' mds 'allow' mgr 'allow profile mds'
            # The CSI users, with exactly the caps of ceph-csi's documentation.
            keyring_entry client.csi-rbd "$k_rbd" \
                mon 'profile rbd' osd "profile rbd pool=$RBD_POOL" mgr "profile rbd pool=$RBD_POOL"
            keyring_entry client.csi-cephfs "$k_fs" \
                mon "allow r fsname=$FS_NAME" mgr 'allow rw' \
                osd "allow rw tag cephfs metadata=$FS_NAME, allow rw tag cephfs data=$FS_NAME" \
                mds "allow r fsname=$FS_NAME path=/volumes, allow rws fsname=$FS_NAME path=/volumes/csi"
        )"
    }

    # bluestore mkfs (~1.5 s) needs no mon: run it while the mon is set up
    ceph-osd --mkfs -i 0 -c "$CONF" --osd-uuid "$osd_uuid" --no-mon-config \
        </dev/null >>"$DIR/log/osd-mkfs.out" 2>&1 &
    mkfs_pid=$!
    MKFS_PID=$mkfs_pid

    monmaptool --create --fsid "$fsid" --addv a '[v2:127.0.0.1:3300,v1:127.0.0.1:6789]' \
        "$DIR/monmap" >/dev/null
    ceph-mon --mkfs -i a -c "$CONF" --monmap "$DIR/monmap" --keyring "$DIR/mon-initial.keyring" \
        >>"$DIR/log/mon-mkfs.out" 2>&1 || die "ceph-mon --mkfs failed; $(tail -n 20 "$DIR/log/mon-mkfs.out")"
    rm -f "$DIR/mon-initial.keyring"
    vlog "mon mkfs done"

    start_daemon mon.a
    start_daemon mgr.x
    start_daemon mds.a
    helper osd-new "$osd_uuid" 0 || die "ceph osd new failed; $(tail_logs mon.a)"
    wait "$mkfs_pid" || die "ceph-osd --mkfs failed; $(tail -n 20 "$DIR/log/osd-mkfs.out")"
    MKFS_PID=
    vlog "osd mkfs done"
    # ceph-osd returns once it is initialised. Create the pools only then: pools
    # that exist before the OSD boots take seconds longer to get active PGs.
    start_daemon osd.0
    helper setup || die "creating pools / CephFS failed; $(tail_logs)"
    vlog "pools and CephFS created"
    wait_usable
    vlog "warming up the volumes module"
    helper warmup || die "volumes warm-up failed; $(tail_logs mgr.x mds.a)"
    write_env
    touch "$DIR/bootstrapped"
    BOOTSTRAPPING=0
}

refresh_conf() {
    local fsid
    fsid=$(awk '$1 == "fsid" { print $3; exit }' "$CONF")
    [[ -n $fsid ]] || die "no fsid in $CONF"
    write_conf "$fsid" "$CONF.new"
    if cmp -s "$CONF" "$CONF.new"; then
        rm -f "$CONF.new"
    else
        log "updating $CONF (old one kept as $CONF.old)"
        cp -p "$CONF" "$CONF.old"
        mv -f "$CONF.new" "$CONF"
    fi
}

wait_usable() {
    helper wait --timeout "$UP_TIMEOUT" || die "cluster not usable after ${UP_TIMEOUT}s; $(tail_logs)"
}

# ------------------------------------------------------------------ commands --
cmd_up() {
    ensure_packages
    if [[ -f $DIR/bootstrapped ]]; then
        if all_running && helper wait --timeout 0 --quiet; then
            write_env
            log "already up ($(elapsed)s)"
            return 0
        fi
        log "starting the daemons in $DIR"
        refresh_conf
        # the mon first; ceph-mon and ceph-osd return once initialised, so start
        # the OSD in the background while the mgr and the MDS start
        start_daemon mon.a
        start_daemon osd.0 &
        local osd_pid=$!
        start_daemon mgr.x
        start_daemon mds.a
        wait "$osd_pid" || die "ceph-osd failed to start; $(tail_logs osd.0)"
        wait_usable
        write_env
    else
        if [[ -e $DIR ]]; then
            log "$DIR holds an unfinished bootstrap: removing it"
            stop_all || die "could not stop the daemons of $DIR"
            rm -rf "$DIR"
        fi
        bootstrap
    fi
    check_listen
    log "up ($(elapsed)s): ceph -c $CONF status"
}

cmd_down() {
    [[ -d $DIR ]] || {
        log "no cluster in $DIR"
        return 0
    }
    stop_all || die "could not stop the daemons"
    rm -f "$DIR"/run/*.pid
    log "down ($(elapsed)s), data kept in $DIR"
}

# Stop one daemon (SIGTERM, wait for it to exit; SIGKILL after 10 s) to simulate an
# outage; `up` starts it again.
cmd_stop() {
    local d
    case $1 in
    mon) d=mon.a ;;
    mgr) d=mgr.x ;;
    osd) d=osd.0 ;;
    mds) d=mds.a ;;
    *) usage ;;
    esac
    [[ -f $DIR/bootstrapped ]] || die "no cluster bootstrapped in $DIR"
    stop_daemons 10 loud "$d" || die "could not stop $d"
    rm -f "$DIR/run/$d.pid"
    log "$d stopped ($(elapsed)s); '$0 up' starts it again"
}

cmd_purge() {
    cmd_down
    rm -rf "$DIR"
    log "purged $DIR"
}

cmd_status() {
    local d pids rc=0
    [[ -f $DIR/bootstrapped ]] || {
        log "no cluster bootstrapped in $DIR"
        return 1
    }
    for d in "${DAEMONS[@]}"; do
        pids=$(daemon_pids "$d" | tr '\n' ' ')
        if [[ -n $pids ]]; then
            printf '%-6s running  pid %s\n' "$d" "$pids"
        else
            printf '%-6s STOPPED\n' "$d"
            rc=1
        fi
    done
    if [[ -n $(daemon_pids mon.a) ]]; then
        timeout 15 ceph -c "$CONF" --connect-timeout 10 status || rc=1
    fi
    if ((rc == 0)); then
        helper wait --timeout 0 || rc=1
    fi
    ((rc == 0)) && check_listen
    return "$rc"
}

cmd_env() {
    [[ -f $DIR/bootstrapped ]] || die "no cluster bootstrapped in $DIR (run: $0 up)"
    write_env
    env_lines
}

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

main() {
    while (($#)) && [[ $1 == -* ]]; do
        case $1 in
        -v | --verbose) VERBOSE=1 ;;
        -h | --help) usage ;;
        *) usage ;;
        esac
        shift
    done
    if (($# == 2)) && [[ $1 == stop ]]; then
        mkdir -p "$(dirname "$LOCK")"
        exec {lockfd}>"$LOCK"
        flock -w 300 "$lockfd" || die "timed out waiting for $LOCK"
        cmd_stop "$2"
        return
    fi
    (($# == 1)) || usage
    case $1 in
    up | down | purge)
        mkdir -p "$(dirname "$LOCK")"
        exec {lockfd}>"$LOCK"
        if ! flock -n "$lockfd"; then
            log "another dev-cluster.sh holds $LOCK: waiting"
            flock -w 300 "$lockfd" || die "timed out waiting for $LOCK"
        fi
        "cmd_$1"
        ;;
    status) cmd_status ;;
    env) cmd_env ;;
    selftest)
        [[ -f $DIR/bootstrapped ]] || die "no cluster bootstrapped in $DIR"
        helper selftest "$DIR"
        ;;
    *) usage ;;
    esac
}

main "$@"
