//! No cephx key in any process argument list or environment, any file left behind, or the
//! log, while a volume goes through its life (controller and, where served, node).

mod common;
use common::*;
use csi::v1 as pb;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Scans every process's argv and environment (except this test process) for the keys.
fn scan_processes(keys: &[String], me: u32) -> Vec<String> {
    let mut hits = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return hits;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        for what in ["cmdline", "environ"] {
            if let Ok(raw) = std::fs::read(e.path().join(what)) {
                let text = String::from_utf8_lossy(&raw);
                for k in keys {
                    if text.contains(k.as_str()) {
                        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                        hits.push(format!(
                            "pid {pid} {what}: {}",
                            String::from_utf8_lossy(&cmd).replace('\0', " ")
                        ));
                    }
                }
            }
        }
    }
    hits
}

#[tokio::test]
async fn keys_never_leak_during_a_volume_life() {
    let keys = cluster().all_keys();
    assert!(!keys.is_empty());
    let d = Driver::rbd();
    let stop = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (stop, hits, keys) = (stop.clone(), hits.clone(), keys.clone());
        let me = std::process::id();
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                let found = scan_processes(&keys, me);
                if !found.is_empty() {
                    hits.lock().unwrap().extend(found);
                }
                rounds += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            rounds
        })
    };

    let mut ctl = d.controller().await;
    let vol = ctl
        .create_volume(create_req(&unique("pvc-secret"), 64 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let snap = ctl
        .create_snapshot(pb::CreateSnapshotRequest {
            name: unique("snap-secret"),
            source_volume_id: vol.volume_id.clone(),
            secrets: cluster().rbd_secrets(),
            parameters: Default::default(),
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();

    // the node side, where keys are handed to child processes
    let mut node = d.node().await;
    let caps = node
        .node_get_capabilities(pb::NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let stages = caps.capabilities.iter().any(|c| {
        matches!(&c.r#type, Some(pb::node_service_capability::Type::Rpc(r))
            if r.r#type == pb::node_service_capability::rpc::Type::StageUnstageVolume as i32)
    });
    if stages {
        let staging = d.dir.path().join("staging");
        let target = d.dir.path().join("target");
        std::fs::create_dir_all(&staging).unwrap();
        node.node_stage_volume(stage_req(
            &vol.volume_id,
            &vol.volume_context,
            &staging,
            rwo(),
            cluster().rbd_secrets(),
        ))
        .await
        .unwrap();
        let mut publish = publish_req(
            &vol.volume_id,
            &vol.volume_context,
            &staging,
            &target,
            rwo(),
            false,
        );
        // a key where NodePublish takes none must not leak either
        publish.secrets = cluster().rbd_secrets();
        node.node_publish_volume(publish).await.unwrap();
        std::fs::write(target.join("hello"), b"hello ceph").unwrap();
        // while staged, nothing in the keys dir and the staging area holds a key
        for k in &keys {
            let (found, _) = grep_tree(d.dir.path(), k);
            assert!(found.is_empty(), "key found in {found:?}");
        }
        node.node_unpublish_volume(unpublish_req(&vol.volume_id, &target))
            .await
            .unwrap();
        node.node_unstage_volume(unstage_req(&vol.volume_id, &staging))
            .await
            .unwrap();
    }
    ctl.delete_snapshot(pb::DeleteSnapshotRequest {
        snapshot_id: snap.snapshot_id,
        secrets: cluster().rbd_secrets(),
    })
    .await
    .unwrap();
    ctl.delete_volume(del_req(&vol.volume_id)).await.unwrap();

    stop.store(true, Ordering::Relaxed);
    let rounds = sampler.join().unwrap();
    assert!(rounds > 3, "the process sampler did not run");
    let hits = hits.lock().unwrap().clone();
    assert!(hits.is_empty(), "keys visible in processes: {hits:?}");
    // no file under the driver's directory (keys dir, log, records) holds a key
    for k in &keys {
        let (found, files) = grep_tree(d.dir.path(), k);
        assert!(
            found.is_empty(),
            "key found in {found:?} ({files} files scanned)"
        );
    }
    let keys_dir = d.dir.path().join("keys");
    if keys_dir.exists() {
        assert_eq!(
            std::fs::read_dir(&keys_dir).unwrap().count(),
            0,
            "key files left in {}",
            keys_dir.display()
        );
    }
}

/// Files under `root` (not following symlinks or mounts) whose content contains `needle`.
fn grep_tree(root: &std::path::Path, needle: &str) -> (Vec<String>, usize) {
    let mut found = Vec::new();
    let mut scanned = 0;
    let root_dev = std::fs::metadata(root)
        .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
        .unwrap_or(0);
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if std::os::unix::fs::MetadataExt::dev(&meta) != root_dev {
            continue; // a mounted volume
        }
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() && meta.len() < 16 << 20 {
            scanned += 1;
            if let Ok(data) = std::fs::read(&p) {
                if String::from_utf8_lossy(&data).contains(needle) {
                    found.push(p.display().to_string());
                }
            }
        }
    }
    (found, scanned)
}
