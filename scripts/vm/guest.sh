#!/bin/bash
# PID 1 of the test VM (after scripts/vm/init): the host's root is mounted read-only under a
# tmpfs overlay, the results share at /results. Mounts the kernel filesystems, loads the
# modules production nodes have, confines the network to the host's loopback, then runs the
# plan the host wrote and powers off.
#
# /results/plan: the first line is a test binary, each further line one test name; every test
# runs as `BINARY --exact NAME --nocapture` with FERRO_IN_VM=1, its output in /results/NAME.log,
# its exit code in NAME.rc, its duration in seconds in NAME.secs and the driver logs it kept in
# /results/logs/NAME/. /results/started is written once the guest is up, before the plan (the
# host's boot watchdog waits for it); /results/done when all have run. There is no udevd here,
# as in a container.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
say() { echo "guest: $*" >/dev/console; }
poweroff_now() {
    sync
    echo o >/proc/sysrq-trigger
    sleep 30
}
trap poweroff_now EXIT

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# /tmp stays the overlay's (writable, in memory): a checkout under the host's /tmp must stay
# visible to the guest
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=0755 tmpfs /var/lib/kubelet 2>/dev/null || true
# kubelet's mounts propagate both ways (Bidirectional), so node plugins in mount namespaces
# of their own still mount where the host sees it
mount --make-rshared /
echo 1 >/proc/sys/kernel/sysrq
hostname ferroceph-vm

# What a production node has loaded or can load.
for m in loop ext4 xfs fuse rbd nbd ceph nf_tables nft_nat nft_chain_nat nf_nat; do
    modprobe "$m" || say "modprobe $m failed"
done
: >/results/modules.log
lsmod >>/results/modules.log 2>&1

# Network: QEMU's user network; the host's 127.0.0.1 is 10.0.2.2 from here. The cluster's
# maps name 127.0.0.1, so connections to its ports are rewritten to 10.0.2.2; there is no
# default route and anything else leaving eth0 is dropped.
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
sysctl -qw net.ipv4.conf.all.route_localnet=1
nft -f - <<'NFT' || say "nft failed"
table ip ferroceph_vm {
    chain output_nat {
        type nat hook output priority -100;
        ip daddr 127.0.0.1 tcp dport { 3300, 6789, 6800-7300 } dnat to 10.0.2.2
    }
    chain postrouting_nat {
        type nat hook postrouting priority 100;
        oifname "eth0" masquerade
    }
    chain output_filter {
        type filter hook output priority 0;
        oifname "eth0" ip daddr != 10.0.2.2 drop
    }
}
NFT
ip route >/results/network.log 2>&1
nft list ruleset >>/results/network.log 2>&1

if [ "${FERRO_INTERACTIVE:-0}" = 1 ]; then
    say "interactive shell; exit to power off"
    setsid -c bash -i </dev/ttyS0 >/dev/ttyS0 2>&1
    exit 0
fi

# The host's watchdog waits for this: a guest that never gets here hung while booting.
date +%s >/results/started
plan=/results/plan
if [ ! -f "$plan" ]; then
    say "no $plan"
    exit 0
fi
bin=$(head -n 1 "$plan")
say "running $(($(wc -l <"$plan") - 1)) scenario(s) of $bin"
while read -r name; do
    [ -n "$name" ] || continue
    start=$(date +%s.%N)
    mkdir -p "/results/logs/$name"
    FERRO_IN_VM=1 FERRO_KEPT_LOGS="/results/logs/$name" timeout -k 10 360 "$bin" --exact "$name" --include-ignored --nocapture --test-threads=1 \
        >"/results/$name.log" 2>&1 </dev/null
    rc=$?
    end=$(date +%s.%N)
    echo "$rc" >"/results/$name.rc"
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f\n", b - a }' >"/results/$name.secs"
    say "$name: exit $rc ($(cat "/results/$name.secs") s)"
done < <(tail -n +2 "$plan")
dmesg >/results/dmesg.log 2>&1
date +%s >/results/done
