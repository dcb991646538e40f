//! What `ferroceph bench` prints: a table of medians beside their floors, and one JSON
//! line with every figure.

use super::*;

/// The RBD controller figures, driver and floor.
pub(super) struct Rbd {
    pub(super) seq_create: Stats,
    pub(super) seq_delete: Stats,
    pub(super) f_seq_c: Stats,
    pub(super) f_seq_d: Stats,
    pub(super) con_create: Stats,
    pub(super) con_delete: Stats,
    pub(super) con_create_rate: f64,
    pub(super) con_delete_rate: f64,
    pub(super) con_gone_rate: f64,
    pub(super) f_con_c: f64,
    pub(super) f_con_d: f64,
    pub(super) f_con_gone: f64,
}

/// Everything a full run measured.
pub(super) struct Full {
    pub(super) rbd: Rbd,
    pub(super) snap_t: Stats,
    pub(super) restore_t: Stats,
    pub(super) startup: Stats,
    pub(super) rss_idle: u64,
    pub(super) threads_idle: u64,
    pub(super) rss_after: u64,
    pub(super) threads_after: u64,
    pub(super) anon_after: u64,
    pub(super) rss_end: u64,
    pub(super) node: NodeFigures,
    pub(super) fs: Option<FsFigures>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

pub(super) fn print_quick(args: &BenchArgs, pool: &str, r: &Rbd) {
    let Rbd {
        seq_create,
        seq_delete,
        f_seq_c,
        f_seq_d,
        con_create_rate,
        con_delete_rate,
        con_gone_rate,
        f_con_c,
        f_con_d,
        f_con_gone,
        ..
    } = r;
    let (con_create_rate, con_delete_rate, con_gone_rate, f_con_c, f_con_d, f_con_gone) = (
        *con_create_rate,
        *con_delete_rate,
        *con_gone_rate,
        *f_con_c,
        *f_con_d,
        *f_con_gone,
    );
    println!(
        "ferroceph bench --quick: {} volumes per run, {} in flight, pool {pool}",
        args.n, args.concurrency
    );
    for (name, s, f) in [
        ("RBD CreateVolume, sequential", seq_create, f_seq_c),
        ("RBD DeleteVolume, sequential", seq_delete, f_seq_d),
    ] {
        println!(
            "{name:<44} {:>8.1}ms floor {:>8.1}ms {:>7.2}x",
            s.median(),
            f.median(),
            ratio(s.median(), f.median())
        );
    }
    for (name, r, f) in [
        ("RBD CreateVolume throughput", con_create_rate, f_con_c),
        ("RBD DeleteVolume throughput", con_delete_rate, f_con_d),
        (
            "RBD DeleteVolume + trash removal",
            con_gone_rate,
            f_con_gone,
        ),
    ] {
        println!(
            "{:<44} {r:>8.1}/s floor {f:>8.1}/s {:>7.2}x",
            format!("{name}, {} in flight", args.concurrency),
            ratio(r, f)
        );
    }
    println!(
        "{}",
        json!({
            "create_seq_ms": seq_create.median(), "floor_create_seq_ms": f_seq_c.median(),
            "delete_seq_ms": seq_delete.median(), "floor_delete_seq_ms": f_seq_d.median(),
            "create_concurrent_per_s": con_create_rate, "floor_create_concurrent_per_s": f_con_c,
            "delete_concurrent_per_s": con_delete_rate, "floor_delete_concurrent_per_s": f_con_d,
        })
    );
}

pub(super) fn print_table(args: &BenchArgs, pool: &str, f: &Full) {
    let Full {
        rbd,
        snap_t,
        restore_t,
        startup,
        node,
        fs,
        ..
    } = f;
    let Rbd {
        seq_create,
        seq_delete,
        f_seq_c,
        f_seq_d,
        con_create,
        con_delete,
        ..
    } = rbd;
    println!(
        "ferroceph bench: {} volumes per run, {} in flight, pool {}",
        args.n, args.concurrency, pool
    );
    println!(
        "{:<44} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "figure", "median", "p90", "max", "floor", "ratio"
    );
    let row = |name: &str, s: &Stats, floor: Option<&Stats>| {
        let f = floor.map(|f| f.median()).unwrap_or(0.0);
        println!(
            "{:<44} {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>10} {:>8}",
            name,
            s.median(),
            s.pct(0.9),
            s.max(),
            if f > 0.0 {
                format!("{f:.1}ms")
            } else {
                "-".into()
            },
            if f > 0.0 {
                format!("{:.2}x", ratio(s.median(), f))
            } else {
                "-".into()
            }
        );
    };
    row("RBD CreateVolume, sequential", seq_create, Some(f_seq_c));
    row("RBD DeleteVolume, sequential", seq_delete, Some(f_seq_d));
    row(
        &format!("RBD CreateVolume, {} in flight (latency)", args.concurrency),
        con_create,
        None,
    );
    row(
        &format!("RBD DeleteVolume, {} in flight (latency)", args.concurrency),
        con_delete,
        None,
    );
    row("CreateSnapshot", snap_t, None);
    row("CreateVolume from snapshot", restore_t, None);
    row("exec -> first Probe answered", startup, None);
    row(
        "RBD NodeStage+NodePublish (FUSE)",
        &node.stage_publish,
        None,
    );
    row(
        "RBD NodeUnpublish+NodeUnstage (FUSE)",
        &node.unpublish_unstage,
        None,
    );
    if let Some(f) = &fs {
        row("CephFS CreateVolume, sequential", &f.create, None);
        row("CephFS DeleteVolume, sequential", &f.delete, None);
        row("CephFS CreateSnapshot", &f.snap_create, None);
        row("CephFS DeleteSnapshot", &f.snap_delete, None);
        let names = [
            "CephFS NodeStage+NodePublish (ceph-fuse)",
            "CephFS NodeUnpublish+NodeUnstage (ceph-fuse)",
        ];
        match &f.node {
            Ok(n) => {
                row(names[0], &n.stage_publish, None);
                row(names[1], &n.unpublish_unstage, None);
            }
            Err(why) => {
                for name in names {
                    println!("{name:<44} skipped: {why}");
                }
            }
        }
    }
    print_throughput(args, rbd);
}

/// The concurrent rows: volumes per second beside the floor's.
fn print_throughput(args: &BenchArgs, rbd: &Rbd) {
    let Rbd {
        con_create_rate,
        con_delete_rate,
        con_gone_rate,
        f_con_c,
        f_con_d,
        f_con_gone,
        ..
    } = rbd;
    let (con_create_rate, con_delete_rate, con_gone_rate, f_con_c, f_con_d, f_con_gone) = (
        *con_create_rate,
        *con_delete_rate,
        *con_gone_rate,
        *f_con_c,
        *f_con_d,
        *f_con_gone,
    );
    println!(
        "{:<44} {:>10.0}/s {:>21} {:>8.0}/s {:>7.2}x",
        format!(
            "RBD CreateVolume throughput, {} in flight",
            args.concurrency
        ),
        con_create_rate,
        "",
        f_con_c,
        ratio(con_create_rate, f_con_c)
    );
    println!(
        "{:<44} {:>10.0}/s {:>21} {:>8.0}/s {:>7.2}x",
        format!(
            "RBD DeleteVolume throughput, {} in flight",
            args.concurrency
        ),
        con_delete_rate,
        "",
        f_con_d,
        ratio(con_delete_rate, f_con_d)
    );
    println!(
        "{:<44} {:>10.0}/s {:>21} {:>8.0}/s {:>7.2}x",
        format!(
            "RBD DeleteVolume + trash removal, {} in flight",
            args.concurrency
        ),
        con_gone_rate,
        "",
        f_con_gone,
        ratio(con_gone_rate, f_con_gone)
    );
}

pub(super) fn print_memory_and_json(args: &BenchArgs, f: &Full) {
    let Full {
        rbd,
        snap_t,
        restore_t,
        startup,
        rss_idle,
        threads_idle,
        rss_after,
        threads_after,
        anon_after,
        rss_end,
        node,
        fs,
    } = f;
    let (rss_idle, threads_idle, rss_after, threads_after, anon_after, rss_end) = (
        *rss_idle,
        *threads_idle,
        *rss_after,
        *threads_after,
        *anon_after,
        *rss_end,
    );
    let Rbd {
        seq_create,
        seq_delete,
        f_seq_c,
        f_seq_d,
        con_create_rate,
        con_delete_rate,
        con_gone_rate,
        f_con_c,
        f_con_d,
        f_con_gone,
        ..
    } = rbd;
    let (con_create_rate, con_delete_rate, con_gone_rate, f_con_c, f_con_d, f_con_gone) = (
        *con_create_rate,
        *con_delete_rate,
        *con_gone_rate,
        *f_con_c,
        *f_con_d,
        *f_con_gone,
    );
    println!(
        "controller RSS: idle {:.1} MiB ({} threads), after {} creates {:.1} MiB ({} threads; {:.1} MiB of it anonymous, the rest mapped code of the binary and the Ceph client libraries), after deleting them {:.1} MiB",
        rss_idle as f64 / 1024.0,
        threads_idle,
        args.rss_creates,
        rss_after as f64 / 1024.0,
        threads_after,
        anon_after as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    println!(
        "node plugin RSS: idle {:.1} MiB ({} threads), after {} FUSE stage/publish rounds {:.1} MiB ({} threads)",
        node.idle.0 as f64 / 1024.0,
        node.idle.1,
        args.node_rounds,
        node.after.0 as f64 / 1024.0,
        node.after.1
    );
    let fs_node = fs.as_ref().and_then(|f| f.node.as_ref().ok());
    let out = json!({
        "n": args.n, "concurrency": args.concurrency,
        "create_seq_ms": {"median": seq_create.median(), "p90": seq_create.pct(0.9), "max": seq_create.max()},
        "delete_seq_ms": {"median": seq_delete.median(), "p90": seq_delete.pct(0.9), "max": seq_delete.max()},
        "floor_create_seq_ms": f_seq_c.median(), "floor_delete_seq_ms": f_seq_d.median(),
        "create_seq_ratio": ratio(seq_create.median(), f_seq_c.median()),
        "create_concurrent_per_s": con_create_rate, "floor_create_concurrent_per_s": f_con_c,
        "create_concurrent_ratio": ratio(con_create_rate, f_con_c),
        "delete_concurrent_per_s": con_delete_rate, "floor_delete_concurrent_per_s": f_con_d,
        "delete_concurrent_removed_per_s": con_gone_rate, "floor_delete_concurrent_removed_per_s": f_con_gone,
        "snapshot_ms": snap_t.median(), "restore_ms": restore_t.median(),
        "startup_ms": startup.median(),
        "cephfs_create_seq_ms": fs.as_ref().map(|f| f.create.median()),
        "cephfs_delete_seq_ms": fs.as_ref().map(|f| f.delete.median()),
        "cephfs_snapshot_ms": fs.as_ref().map(|f| summary(&f.snap_create)),
        "cephfs_delete_snapshot_ms": fs.as_ref().map(|f| summary(&f.snap_delete)),
        "cephfs_stage_publish_ms": fs_node.map(|n| summary(&n.stage_publish)),
        "cephfs_unpublish_unstage_ms": fs_node.map(|n| summary(&n.unpublish_unstage)),
        "cephfs_node_skipped": fs.as_ref().and_then(|f| f.node.as_ref().err()),
        "rss_idle_kib": rss_idle, "rss_after_creates_kib": rss_after, "rss_anon_after_creates_kib": anon_after, "rss_after_deletes_kib": rss_end,
        "threads_idle": threads_idle, "threads_after": threads_after,
        "node_rounds": args.node_rounds,
        "node_stage_publish_ms": summary(&node.stage_publish),
        "node_unpublish_unstage_ms": summary(&node.unpublish_unstage),
        "node_rss_idle_kib": node.idle.0, "node_rss_after_kib": node.after.0,
        "node_threads_idle": node.idle.1, "node_threads_after": node.after.1,
    });
    println!("{out}");
}
