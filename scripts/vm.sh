#!/usr/bin/env bash
# Real kernel clients for the tests: boots Debian bookworm's own kernel under QEMU (software
# emulation: KVM here only runs PVM guests) with the host's root filesystem shared read-only
# over 9p and a tmpfs overlay on top, so the guest runs this machine's rbd, rbd-nbd,
# mount.ceph, mkfs tools and freshly built binaries with the rbd, nbd and ceph modules loaded.
# The guest reaches the dev cluster on the host's 127.0.0.1 and nothing else.
#
#   scripts/vm.sh prepare             install QEMU, fetch and unpack the kernel, build the initramfs
#   scripts/vm.sh boot DIR [SECONDS]  boot once; the guest runs DIR/plan (see scripts/vm/guest.sh)
#                                     and writes its results into DIR; the VM is killed after SECONDS
#   scripts/vm.sh shell               boot with an interactive shell in the guest (exit to power off)
#
# Scenarios are Rust tests (crates/ferroceph/tests/kernel.rs): `cargo test --test kernel -- --ignored NAME`
# boots the VM and runs the matching scenarios inside it. State: ${FERROCEPH_VM_DIR:-/var/tmp/ferroceph-vm}.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VMDIR=${FERROCEPH_VM_DIR:-/var/tmp/ferroceph-vm}
MEM=${FERROCEPH_VM_MEM:-3072}
# The stall watchdog: seconds from power-on until the guest must have started its plan (a
# healthy TCG boot takes 10-40 s), and seconds the guest may spend on one scenario (the guest
# itself stops a scenario after 360 s; a healthy one takes 5-60 s).
BOOT_LIMIT=${FERROCEPH_VM_BOOT_LIMIT:-240}
STALL_LIMIT=${FERROCEPH_VM_STALL_LIMIT:-420}
log() { echo "vm: $*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# Modules the initramfs loads to reach the host's root; the guest's modprobe loads the rest
# from the unpacked kernel's module tree.
INITRD_MODULES=(virtio_pci virtio_net 9pnet_virtio 9p overlay)

ensure_packages() {
    local SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    local missing=() p
    for p in busybox-static cpio kmod nftables iproute2; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    local need_qemu=0
    command -v qemu-system-x86_64 >/dev/null 2>&1 || need_qemu=1
    if ((${#missing[@]} == 0 && need_qemu == 0)); then
        return
    fi
    local -a qemu_target=()
    if ((need_qemu)); then
        # qemu-system-x86 must match the installed qemu-utils: on these machines that is the
        # bookworm-backports build, so add that suite when qemu-utils comes from it.
        if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
            if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
                log "adding bookworm-backports to apt's sources (for qemu-system-x86)"
                printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
                    $SUDO tee /etc/apt/sources.list.d/ferroceph-backports.sources >/dev/null
            fi
            qemu_target=(-t bookworm-backports)
        fi
    fi
    log "installing ${missing[*]} $( ((need_qemu)) && echo qemu-system-x86)"
    $SUDO apt-get update -q >/dev/null
    if ((${#missing[@]})); then
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if ((need_qemu)); then
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
            "${qemu_target[@]}" qemu-system-x86 >/dev/null
    fi
}

# The versioned kernel package linux-image-amd64 points at, e.g. linux-image-6.1.0-57-amd64.
kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}

prepare_kernel() {
    local pkg
    pkg=$(kernel_package)
    [ -n "$pkg" ] || die "apt knows no linux-image-amd64 (run apt-get update)"
    if [ -f "$VMDIR/kernel/$pkg.ok" ]; then
        return
    fi
    log "fetching $pkg (unpacked into $VMDIR/kernel, never installed)"
    rm -rf "$VMDIR/kernel" "$VMDIR/dl"
    mkdir -p "$VMDIR/dl"
    chmod 0777 "$VMDIR/dl" # apt's download runs as _apt
    (cd "$VMDIR/dl" && apt-get download -q "$pkg" >/dev/null 2>&1) ||
        (apt-get update -q >/dev/null && cd "$VMDIR/dl" && apt-get download -q "$pkg" >/dev/null 2>&1) ||
        die "apt-get download $pkg failed"
    dpkg-deb -x "$VMDIR"/dl/"$pkg"_*.deb "$VMDIR/kernel"
    rm -rf "$VMDIR/dl"
    # The package leaves modules.dep to its postinst; make it here, inside the scratch tree.
    depmod -b "$VMDIR/kernel" "$(kernel_release)"
    touch "$VMDIR/kernel/$pkg.ok"
}

kernel_release() {
    local d
    d=$(ls -d "$VMDIR"/kernel/lib/modules/*/ 2>/dev/null | head -n 1)
    [ -n "$d" ] || die "no unpacked kernel in $VMDIR/kernel: run scripts/vm.sh prepare"
    basename "$d"
}

# Module files in load order (dependencies first), from modules.dep.
resolve_modules() {
    local mdir=$1
    shift
    declare -A seen=()
    local order=()
    visit() {
        local path=$1 deps d
        [[ -n ${seen[$path]:-} ]] && return
        seen[$path]=1
        deps=$(awk -v m="$path:" '$1 == m {for (i = 2; i <= NF; i++) print $i}' "$mdir/modules.dep")
        for d in $deps; do visit "$d"; done
        order+=("$path")
    }
    local name path
    for name in "$@"; do
        path=$(awk -v n="/$name.ko:" 'index($1, n) && substr($1, length($1) - length(n) + 1) == n {sub(":", "", $1); print $1; exit}' "$mdir/modules.dep")
        [ -n "$path" ] || die "module $name not in $mdir/modules.dep"
        visit "$path"
    done
    printf '%s\n' "${order[@]}"
}

build_initramfs() {
    local rel mdir stamp
    rel=$(kernel_release)
    mdir=$VMDIR/kernel/lib/modules/$rel
    stamp="$rel $(cat "$HERE/vm/init" "$0" | sha256sum | cut -c1-16)"
    if [ -f "$VMDIR/initramfs.cpio.gz" ] && [ "$(cat "$VMDIR/initramfs.stamp" 2>/dev/null)" = "$stamp" ]; then
        return
    fi
    log "building the initramfs for $rel"
    local root
    root=$(mktemp -d)
    mkdir -p "$root"/{bin,dev,proc,sys,modules,newroot}
    cp /bin/busybox "$root/bin/busybox"
    cp "$HERE/vm/init" "$root/init"
    chmod 0755 "$root/init"
    local m mods
    mods=$(resolve_modules "$mdir" "${INITRD_MODULES[@]}")
    : >"$root/modules/order"
    for m in $mods; do
        cp "$mdir/$m" "$root/modules/"
        basename "$m" >>"$root/modules/order"
    done
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$VMDIR/initramfs.cpio.gz.tmp"
    mv "$VMDIR/initramfs.cpio.gz.tmp" "$VMDIR/initramfs.cpio.gz"
    echo "$stamp" >"$VMDIR/initramfs.stamp"
    rm -rf "$root"
}

prepare() {
    mkdir -p "$VMDIR"
    ensure_packages
    [ -x /bin/busybox ] || die "busybox-static did not install /bin/busybox"
    prepare_kernel
    build_initramfs
    log "ready: kernel $(kernel_release), $(qemu-system-x86_64 --version | head -n 1)"
}

# Runs QEMU once with SMP vCPUs; returns its exit code, 124 when LIMIT ran out, 125 when the
# guest stalled: it did not start its plan within BOOT_LIMIT seconds, or finished no scenario
# for STALL_LIMIT seconds. (Under TCG a starved vCPU has been seen to stop the guest's timers
# for good: RCU stall reports on the console and no progress for the rest of the limit.)
run_qemu() {
    local share=$1 limit=$2 smp=$3 interactive=$4 accel=$5 cmdline=$6
    local serial=(-serial "file:$share/console.log")
    ((interactive)) && serial=(-serial mon:stdio)
    local cmd=(qemu-system-x86_64
        -name ferroceph-vm -machine q35 -accel "$accel" -cpu max -smp "$smp" -m "$MEM"
        -nodefaults -no-user-config -nographic -no-reboot -display none
        "${serial[@]}"
        -kernel "$VMDIR/kernel/boot/vmlinuz-$rel" -initrd "$VMDIR/initramfs.cpio.gz"
        -append "$cmdline"
        -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap
        -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
        -fsdev local,id=results,path="$share",security_model=none,multidevs=remap
        -device virtio-9p-pci,fsdev=results,mount_tag=results
        -netdev user,id=n0,net=10.0.2.0/24,host=10.0.2.2,ipv6=off
        -device virtio-net-pci,netdev=n0,romfile=
        -device virtio-rng-pci)
    if ((interactive)); then
        local rc=0
        timeout --foreground -k 10 "$limit" "${cmd[@]}" || rc=$?
        return "$rc"
    fi
    "${cmd[@]}" &
    local pid=$! t0=$SECONDS last=$SECONDS seen=0 now
    while kill -0 "$pid" 2>/dev/null; do
        sleep 2
        now=$(progress "$share")
        if ((now != seen)); then
            seen=$now
            last=$SECONDS
        fi
        local quiet=$((SECONDS - last)) stalled=0
        if ((seen == 0 && quiet >= BOOT_LIMIT)) || ((seen > 0 && quiet >= STALL_LIMIT)); then
            stalled=1
        fi
        if ((SECONDS - t0 >= limit || stalled)); then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            ((stalled)) && return 125
            return 124
        fi
    done
    local rc=0
    wait "$pid" || rc=$?
    return "$rc"
}

# How far the guest got: 0 before it starts its plan, then 1 + the scenarios finished.
progress() {
    [ -f "$1/started" ] || {
        echo 0
        return
    }
    local n
    n=$(find "$1" -maxdepth 1 -name '*.rc' | wc -l)
    echo $((n + 1))
}

# Boots the VM; the guest runs scripts/vm/guest.sh with the share DIR mounted at /results.
# A guest that stalls is killed and booted once more for the scenarios it had not finished;
# the stalled attempt's console is kept.
boot() {
    local share=$1 limit=${2:-1200} interactive=${3:-0}
    command -v qemu-system-x86_64 >/dev/null 2>&1 || die "qemu-system-x86_64 is not installed: run scripts/vm.sh prepare"
    [ -f "$VMDIR/initramfs.cpio.gz" ] || die "no initramfs in $VMDIR: run scripts/vm.sh prepare"
    local rel # seen by run_qemu (bash locals are dynamically scoped)
    rel=$(kernel_release)
    mkdir -p "$share"
    share=$(cd "$share" && pwd)
    local accel=tcg,thread=multi
    # KVM only where it runs an ordinary guest (not on a PVM host, where Debian's kernel hangs).
    if [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && [ "${FERROCEPH_VM_KVM:-1}" = 1 ]; then
        accel=kvm
    fi
    local cmdline="console=ttyS0 panic=-1 oops=panic loglevel=4 FERRO_GUEST=$HERE/vm/guest.sh FERRO_KREL=$rel FERRO_KDIR=$VMDIR/kernel FERRO_INTERACTIVE=$interactive"
    # One vCPU: as fast here as two (112 s against 108 s for the kernel scenarios), and it
    # leaves a host core to the cluster; with two under TCG, one stalled for good once.
    local smp=${FERROCEPH_VM_SMP:-1} attempt rc=0 t0=$SECONDS left
    for attempt in 1 2; do
        left=$((limit - (SECONDS - t0)))
        rm -f "$share/started"
        log "booting $rel ($accel, $smp vCPU, ${MEM} MiB) for at most ${left}s; console: $share/console.log"
        rc=0
        run_qemu "$share" "$left" "$smp" "$interactive" "$accel" "$cmdline" || rc=$?
        ((rc == 125)) || break
        mv "$share/console.log" "$share/console.stalled-$attempt.log"
        log "the guest stalled (no scenario finished for ${STALL_LIMIT}s, or none started within ${BOOT_LIMIT}s); console kept in $share/console.stalled-$attempt.log:"
        grep -m 3 -i 'stall' "$share/console.stalled-$attempt.log" >&2 || true
        ((attempt == 1)) && [ -f "$share/plan" ] && drop_finished "$share"
    done
    if ((rc == 125)); then
        die "the guest stalled twice; see $share/console.stalled-*.log"
    fi
    if ((rc == 124 || rc == 137)); then
        die "the VM did not power off within ${limit}s (killed); see $share/console.log"
    fi
    ((rc == 0)) || die "qemu exited with $rc; see $share/console.log"
}

# Rewrites DIR/plan without the scenarios that already have a result.
drop_finished() {
    local plan=$1/plan name
    {
        head -n 1 "$plan"
        tail -n +2 "$plan" | while read -r name; do
            [ -f "$1/$name.rc" ] || echo "$name"
        done
    } >"$plan.tmp"
    mv "$plan.tmp" "$plan"
}

case "${1:-}" in
prepare) prepare ;;
boot)
    [ -n "${2:-}" ] || die "usage: scripts/vm.sh boot DIR [SECONDS]"
    boot "$2" "${3:-1200}"
    ;;
shell)
    d=$(mktemp -d /tmp/ferroceph-vm-shell.XXXXXX)
    boot "$d" 36000 1
    ;;
*)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
