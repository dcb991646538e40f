#!/usr/bin/python3
"""Helper for scripts/dev-cluster.sh.

Talks to the dev cluster as client.admin over ONE librados connection, which
is much faster than spawning the `ceph` CLI (70-500 ms per call) for every
mon command and every poll of the health loop.

Run with the system python (/usr/bin/python3): python3-rados and python3-rbd
come with ceph-common there; a pyenv/venv python usually lacks them.

Sub-commands (all take --conf):
  osd-new UUID ID          register the OSD in the osdmap
  setup                    pools, CephFS, fs settings, `rbd pool init`
  wait [--timeout S]       until the cluster is usable (see problems())
  check                    one-shot version of wait (exit 0 = usable)
  warmup                   create+remove a throwaway subvolume in a throwaway group
  selftest KEYDIR          exercise the CSI users' caps like a CSI driver would
"""

import argparse
import json
import os
import sys
import time

import rados

FS_NAME = "cephfs"
RBD_POOL = "rbd"
FS_META_POOL = "cephfs_metadata"
FS_DATA_POOL = "cephfs_data"
PG_NUM = 8

# Health checks that may stay raised without making the cluster unusable for
# ferroceph's tests. Everything else (including any HEALTH_ERR) keeps `up`
# waiting and finally fails it.
#   MON_DISK_LOW        the host file system is fuller than mon_data_avail_warn
#                       (we lower the threshold to 2 %, but it is the host's business)
#   RECENT_CRASH        a daemon crashed in the past (e.g. a test killed it);
#                       informational, archived with `ceph crash archive-all`
#   POOL_NO_REDUNDANCY  size-1 pools; silenced by mon_warn_on_pool_no_redundancy
#                       but harmless if someone turns it back on
#   AUTH_INSECURE_GLOBAL_ID_RECLAIM*  only about old clients
# FERROCEPH_CLUSTER_ACCEPT_WARN (comma separated) extends the list.
ACCEPTABLE_WARN = {
    "MON_DISK_LOW",
    "RECENT_CRASH",
    "POOL_NO_REDUNDANCY",
    "AUTH_INSECURE_GLOBAL_ID_RECLAIM",
    "AUTH_INSECURE_GLOBAL_ID_RECLAIM_ALLOWED",
}
ACCEPTABLE_WARN |= {
    w.strip() for w in os.environ.get("FERROCEPH_CLUSTER_ACCEPT_WARN", "").split(",") if w.strip()
}

OK_PG_STATE_PARTS = {"active", "clean", "snaptrim", "snaptrim_wait", "scrubbing", "deep"}

VERBOSE = os.environ.get("FERROCEPH_CLUSTER_VERBOSE") == "1"
# start time of the calling dev-cluster.sh (epoch seconds), for consistent log stamps
T0 = float(os.environ.get("FERROCEPH_CLUSTER_T0") or time.time())


def log(msg):
    print("dev-cluster: %s" % msg, file=sys.stderr, flush=True)


def vlog(msg):
    if VERBOSE:
        log("[%.1fs] %s" % (time.time() - T0, msg))


class CephError(Exception):
    pass


def connect(conf, timeout=10, name="client.admin", keyring=None):
    opts = {
        "client_mount_timeout": str(timeout),
        "rados_mon_op_timeout": "30",
        "rados_osd_op_timeout": "30",
    }
    if keyring:
        opts["keyring"] = keyring
    c = rados.Rados(conffile=conf, name=name, conf=opts)
    c.connect(timeout=timeout)
    return c


def mon(c, prefix, ok_errnos=(), timeout=30, **args):
    cmd = dict(prefix=prefix, format="json", **args)
    ret, out, errs = c.mon_command(json.dumps(cmd), b"", timeout=timeout)
    if ret != 0 and -ret not in ok_errnos:
        raise CephError("mon command %s failed: %d %s" % (json.dumps(cmd), ret, errs))
    vlog("mon %s -> %d %s" % (prefix, ret, errs.strip()))
    return json.loads(out) if out.strip() else None


def mgr(c, prefix, timeout=60, **args):
    cmd = dict(prefix=prefix, **args)
    ret, out, errs = c.mgr_command(json.dumps(cmd), b"", timeout=timeout)
    return ret, out, errs


# ---------------------------------------------------------------- bootstrap --

def cmd_osd_new(a):
    c = connect(a.conf, timeout=20)
    try:
        mon(c, "osd new", uuid=a.uuid, id=int(a.id))
    finally:
        c.shutdown()


def cmd_setup(a):
    import errno
    c = connect(a.conf, timeout=20)
    try:
        # Clone v2 (cloning unprotected snapshots) needs this; the conf option
        # mon_osd_initial_require_min_compat_client also sets it for new clusters.
        mon(c, "osd set-require-min-compat-client", version="mimic", ok_errnos=(errno.EPERM,))
        for pool in (RBD_POOL, FS_META_POOL, FS_DATA_POOL):
            mon(c, "osd pool create", pool=pool, pg_num=PG_NUM, pgp_num=PG_NUM,
                autoscale_mode="off")
        # The mgr's devicehealth module creates this pool (1 PG) soon after it
        # becomes active, i.e. maybe after `up` has seen all PGs active+clean;
        # create it now so that `up` waits for its PG too.
        mon(c, "osd pool create", pool="device_health_metrics", pg_num=1, pgp_num=1,
            autoscale_mode="off")
        mon(c, "osd pool application enable", pool="device_health_metrics",
            app="mgr_devicehealth")
        mon(c, "fs new", fs_name=FS_NAME, metadata=FS_META_POOL, data=FS_DATA_POOL,
            ok_errnos=(errno.EEXIST,))
        # No standby MDS on a one-node cluster: do not warn about it.
        # session_timeout 30 is the minimum: a killed client holds caps that long.
        for var, val in (("standby_count_wanted", "0"),
                         ("session_timeout", "30"),
                         ("session_autoclose", "60")):
            mon(c, "fs set", fs_name=FS_NAME, var=var, val=val)
        # == `rbd pool init rbd`: application "rbd" + self-managed snapshots.
        import rbd
        with c.open_ioctx(RBD_POOL) as io:
            rbd.RBD().pool_init(io, False)
        vlog("rbd pool init done")
    finally:
        c.shutdown()


# ------------------------------------------------------------------ health --

def problems(c, need_volumes=True):
    """What still keeps the cluster from being usable; [] when it is usable."""
    p = []
    st = mon(c, "status", timeout=10)
    h = st["health"]
    checks = h.get("checks", {})
    bad = sorted(k for k in checks if k not in ACCEPTABLE_WARN)
    if bad or h["status"] == "HEALTH_ERR":
        p.append("%s: %s" % (h["status"], "; ".join(
            "%s (%s)" % (k, checks[k].get("summary", {}).get("message", "")) for k in bad)))

    om = st["osdmap"].get("osdmap", st["osdmap"])  # nested before pacific
    if om.get("num_osds", 0) < 1 or om.get("num_up_osds") != om.get("num_osds") \
            or om.get("num_in_osds") != om.get("num_osds"):
        p.append("osds: %s/%s up, %s in" % (om.get("num_up_osds"), om.get("num_osds"),
                                            om.get("num_in_osds")))

    # PGs: every PG of every pool is reported and active+clean. The pgmap comes
    # from the mgr and lags the osdmap, so compare against the pools' pg_num.
    dump = mon(c, "osd dump", timeout=10)
    want = sum(pool["pg_num"] for pool in dump["pools"])
    pg = st["pgmap"]
    states = {s["state_name"]: s["count"] for s in pg.get("pgs_by_state", [])}
    # active+clean, possibly while trimming snapshots or scrubbing
    clean = sum(n for s, n in states.items()
                if {"active", "clean"} <= set(s.split("+")) <= OK_PG_STATE_PARTS)
    if pg.get("num_pgs", 0) != want or clean != want:
        p.append("pgs: %d/%d active+clean (%s)" % (
            clean, want, ", ".join("%d %s" % (n, s) for s, n in sorted(states.items())) or "none reported"))

    fsmap = st.get("fsmap", {})
    ranks = fsmap.get("by_rank", [])
    if not ranks or any(r.get("status") != "up:active" for r in ranks):
        p.append("mds: %s" % (", ".join("%s %s" % (r.get("name"), r.get("status")) for r in ranks)
                              or "no active rank"))

    if not st.get("mgrmap", {}).get("available"):
        p.append("mgr: not available")
    elif need_volumes and not p:
        # Only ask the mgr when the rest is fine: the volumes module answers
        # once it has loaded (4-9 s after the mgr starts).
        ret, _, errs = mgr(c, "fs subvolumegroup ls", vol_name=FS_NAME, timeout=10)
        if ret != 0:
            p.append("mgr volumes module: %d %s" % (ret, errs.strip()))
    return p


def cmd_wait(a):
    deadline = time.monotonic() + a.timeout
    c = None
    last = None
    while True:
        try:
            if c is None:
                c = connect(a.conf, timeout=max(1, min(10, int(deadline - time.monotonic()))))
            p = problems(c, need_volumes=not a.no_volumes)
        except (rados.Error, CephError, KeyError, ValueError) as e:
            p = ["cannot query cluster: %s" % e]
            if c is not None:
                try:
                    c.shutdown()
                except Exception:
                    pass
                c = None
        if not p:
            vlog("cluster usable")
            if c is not None:
                c.shutdown()
            return 0
        if p != last:
            vlog("waiting: " + " | ".join(p))
            last = p
        if time.monotonic() >= deadline:
            if a.timeout > 0:
                log("timed out after %ds waiting for the cluster: %s" % (a.timeout, " | ".join(p)))
            elif not a.quiet:
                log("not usable: " + " | ".join(p))
            if c is not None:
                c.shutdown()
            return 1
        time.sleep(0.25)


def cmd_warmup(a):
    """The first `fs subvolume create` after the mgr starts can take ~40 s
    (the volumes module sets up its libcephfs mount and the MDS hands out the
    first caps); do it once so later timings are not skewed."""
    c = connect(a.conf, timeout=20)
    group = "_ferroceph_warmup"
    try:
        steps = [
            ("fs subvolumegroup create", dict(vol_name=FS_NAME, group_name=group)),
            ("fs subvolume create", dict(vol_name=FS_NAME, sub_name="warmup", group_name=group,
                                         size=1 << 20)),
            ("fs subvolume getpath", dict(vol_name=FS_NAME, sub_name="warmup", group_name=group)),
            ("fs subvolume rm", dict(vol_name=FS_NAME, sub_name="warmup", group_name=group)),
            ("fs subvolumegroup rm", dict(vol_name=FS_NAME, group_name=group)),
        ]
        for prefix, args in steps:
            t = time.monotonic()
            ret, out, errs = mgr(c, prefix, timeout=a.timeout, **args)
            vlog("warm-up: %s -> %d in %.2fs" % (prefix, ret, time.monotonic() - t))
            if ret != 0:
                raise CephError("%s failed: %d %s" % (prefix, ret, errs.strip()))
    finally:
        c.shutdown()


# ---------------------------------------------------------------- selftest --

def cmd_selftest(a):
    """Do, as the least-privilege CSI users, what ferroceph does."""
    import errno
    import uuid
    import rbd
    ok = True

    def step(name, fn):
        nonlocal ok
        t = time.monotonic()
        try:
            fn()
            print("  ok   %-55s %6.0f ms" % (name, (time.monotonic() - t) * 1000))
        except Exception as e:  # report and continue
            ok = False
            print("  FAIL %-55s %s" % (name, e))

    tag = uuid.uuid4().hex[:8]

    print("client.csi-rbd:")
    c = connect(a.conf, name="client.csi-rbd", keyring=os.path.join(a.keydir, "keyring.csi-rbd"))
    io = c.open_ioctx(RBD_POOL)
    r = rbd.RBD()
    img, clone = "selftest-%s" % tag, "selftest-%s-clone" % tag
    feats = (rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK | rbd.RBD_FEATURE_OBJECT_MAP
             | rbd.RBD_FEATURE_FAST_DIFF | rbd.RBD_FEATURE_DEEP_FLATTEN)

    def omap():
        with rados.WriteOpCtx() as op:
            io.set_omap(op, ("csi.volume.selftest-%s" % tag,), (b"x",))
            io.operate_write_op(op, "csi.volumes.selftest-%s" % tag)
        io.remove_object("csi.volumes.selftest-%s" % tag)

    def ns():
        io.set_namespace("selftest")
        io.write_full("o-%s" % tag, b"x")
        io.remove_object("o-%s" % tag)
        io.set_namespace("")

    def snap_clone():
        with rbd.Image(io, img) as i:
            i.write(b"hello", 0)
            i.create_snap("s1")
        r.clone(io, img, "s1", io, clone, features=feats)  # clone v2: snapshot not protected
        with rbd.Image(io, clone) as i:
            i.flatten()
            i.resize(2 << 20)

    def trash():
        with rbd.Image(io, clone) as i:
            iid = i.id()
        r.trash_move(io, clone, 0)
        r.trash_remove(io, iid)
        with rbd.Image(io, img) as i:
            i.remove_snap("s1")
        r.remove(io, img)

    def mgr_task():
        # DeleteVolume in ceph-csi: trash the image, then `ceph rbd task add trash remove`
        r.create(io, img, 1 << 20, old_format=False, features=feats)
        with rbd.Image(io, img) as i:
            iid = i.id()
        r.trash_move(io, img, 0)
        ret, out, errs = c.mgr_command(json.dumps({
            "prefix": "rbd task add trash remove", "image_id_spec": "%s/%s" % (RBD_POOL, iid)}),
            b"", timeout=30)
        if ret != 0:
            raise CephError("rbd task add trash remove: %d %s" % (ret, errs))
        for _ in range(100):
            if not any(e["id"] == iid for e in r.trash_list(io)):
                return
            time.sleep(0.1)
        raise CephError("trash entry still there")

    step("omap write/read (journal)", omap)
    step("rados namespace", ns)
    step("image create (all features)", lambda: r.create(io, img, 1 << 20, old_format=False,
                                                         features=feats))
    step("snapshot + clone (v2, unprotected) + flatten + resize", snap_clone)
    step("trash move + remove, image remove", trash)
    step("mgr rbd task add trash remove", mgr_task)
    io.close()
    c.shutdown()

    print("client.csi-cephfs:")
    c = connect(a.conf, name="client.csi-cephfs", keyring=os.path.join(a.keydir, "keyring.csi-cephfs"))
    group = "selftest-%s" % tag

    def m(prefix, **args):
        ret, out, errs = mgr(c, prefix, vol_name=FS_NAME, **args)
        if ret != 0:
            raise CephError("%s: %d %s" % (prefix, ret, errs.strip()))
        return out

    def fsls():
        fs = mon(c, "fs ls")
        if not any(f["name"] == FS_NAME for f in fs):
            raise CephError("fs ls does not show %s: %s" % (FS_NAME, fs))
        mon(c, "fs dump")

    def journal():
        dump = mon(c, "fs get", fs_name=FS_NAME)
        pool_id = dump["mdsmap"]["metadata_pool"]
        with c.open_ioctx2(pool_id) as io2:
            io2.set_namespace("csi")
            with rados.WriteOpCtx() as op:
                io2.set_omap(op, ("csi.volume.selftest",), (b"x",))
                io2.operate_write_op(op, "csi.volumes.selftest-%s" % tag)
            io2.remove_object("csi.volumes.selftest-%s" % tag)

    sub = "sv-%s" % tag
    step("fs ls / fs dump / fs get", fsls)
    step("omap in metadata pool, namespace csi (journal)", journal)
    step("subvolumegroup create (group missing before)", lambda: m(
        "fs subvolumegroup create", group_name=group))
    step("subvolume create with quota", lambda: m(
        "fs subvolume create", sub_name=sub, group_name=group, size=10 << 20, mode="0777"))
    step("subvolume getpath", lambda: m("fs subvolume getpath", sub_name=sub, group_name=group))
    step("subvolume resize", lambda: m(
        "fs subvolume resize", sub_name=sub, group_name=group, new_size="20971520"))
    step("subvolume snapshot create", lambda: m(
        "fs subvolume snapshot create", sub_name=sub, group_name=group, snap_name="s1"))

    def clone_and_wait():
        m("fs subvolume snapshot clone", sub_name=sub, group_name=group, snap_name="s1",
          target_sub_name=sub + "-c", target_group_name=group)
        for _ in range(300):
            out = json.loads(m("fs clone status", clone_name=sub + "-c", group_name=group))
            state = out["status"]["state"]
            if state == "complete":
                return
            if state in ("failed", "canceled"):
                raise CephError("clone %s" % state)
            time.sleep(0.1)
        raise CephError("clone did not complete")

    step("subvolume snapshot clone", clone_and_wait)
    step("snapshot rm, subvolume rm x2, group rm", lambda: (
        m("fs subvolume snapshot rm", sub_name=sub, group_name=group, snap_name="s1"),
        m("fs subvolume rm", sub_name=sub + "-c", group_name=group),
        m("fs subvolume rm", sub_name=sub, group_name=group),
        m("fs subvolumegroup rm", group_name=group)))
    c.shutdown()
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conf", required=True)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("osd-new")
    s.add_argument("uuid")
    s.add_argument("id")
    sub.add_parser("setup")
    s = sub.add_parser("wait")
    s.add_argument("--timeout", type=float, default=60)
    s.add_argument("--no-volumes", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s = sub.add_parser("warmup")
    s.add_argument("--timeout", type=float, default=120)
    s = sub.add_parser("selftest")
    s.add_argument("keydir")
    a = ap.parse_args()
    try:
        if a.cmd == "osd-new":
            return cmd_osd_new(a) or 0
        if a.cmd == "setup":
            return cmd_setup(a) or 0
        if a.cmd == "wait":
            return cmd_wait(a)
        if a.cmd == "warmup":
            return cmd_warmup(a) or 0
        if a.cmd == "selftest":
            return cmd_selftest(a)
    except (rados.Error, CephError) as e:
        log("%s: %s" % (a.cmd, e))
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
