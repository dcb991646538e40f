//! One writer at a time: before a single-node-writer volume is attached read-write, no other
//! client may have its image open. Kubernetes' Multi-Attach check (attachRequired) is the
//! first line of defence; this one also holds when that check is raced (a rolling update
//! moves a pod before the old node let go), switched off, or bypassed (static volumes,
//! other orchestrators). Every client that maps or exports an image keeps a watch on its
//! header, so the image's watchers are its users.

use super::AttachEnv;
use crate::error::{Error, Result};
use crate::node::inuse;
use crate::node::record::ImageLocation;
use std::path::Path;

/// A client of the image found by [`refuse_other_users`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub id: u64,
    pub addr: String,
}

/// Fails with FailedPrecondition naming the clients that have `loc` open, other than
/// `ignore` (this node's own previous attachment, known dead) and this node's own krbd
/// mappings of the image that nothing uses (left by a crash; the attach reuses them).
pub(crate) async fn refuse_other_users(
    env: &AttachEnv,
    volume_id: &str,
    loc: &ImageLocation,
    key: &str,
    ignore: &[u64],
) -> Result<()> {
    let cfg = env.ceph.connect_config(&loc.monitors, &loc.user, key);
    let l = loc.clone();
    let (fsid, me, watchers) = env
        .ceph
        .run(cfg, move |cluster| {
            let fsid = cluster
                .fsid()
                .map_err(Error::ceph_ctx("read the cluster fsid"))?;
            let io = cluster
                .ioctx(&l.pool, &l.namespace)
                .map_err(Error::ceph_ctx("open pool"))?;
            let img = rados::rbd::Image::open_read_only(&io, &l.image)
                .map_err(Error::ceph_ctx("open image"))?;
            let watchers = img
                .watchers()
                .map_err(Error::ceph_ctx("list the image's watchers"))?;
            Ok((fsid, cluster.instance_id(), watchers))
        })
        .await?;
    let stale = stale_krbd_clients(loc, &fsid);
    let others: Vec<User> = watchers
        .into_iter()
        .filter_map(|w| {
            let id = u64::try_from(w.id).ok()?;
            (id != me && !ignore.contains(&id) && !stale.contains(&id))
                .then_some(User { id, addr: w.addr })
        })
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    Err(Error::precondition(in_use_message(
        volume_id,
        &loc.spec(),
        &others,
    )))
}

fn in_use_message(volume_id: &str, spec: &str, users: &[User]) -> String {
    let list: Vec<String> = users
        .iter()
        .map(|u| format!("client.{} at {}", u.id, u.addr))
        .collect();
    let first = users.first().map(|u| u.addr.as_str()).unwrap_or_default();
    format!(
        "volume {volume_id} (image {spec}) is a single-node read-write volume and another client has it open: {}. \
         If a pod is moving to this node, its old node has not released the volume yet (it will after NodeUnstageVolume there; kubelet retries). \
         If that node is dead, its watch expires within 30 s, or fence it now: ceph osd blocklist add {first}",
        list.join(", ")
    )
}

/// Client ids of this kernel's krbd mappings of `loc` that nothing mounts or holds open.
fn stale_krbd_clients(loc: &ImageLocation, fsid: &str) -> Vec<u64> {
    let sys = Path::new(super::krbd::SYSFS_DEVICES);
    let Ok(entries) = std::fs::read_dir(sys) else {
        return Vec::new();
    };
    let read = |d: &Path, f: &str| {
        std::fs::read_to_string(d.join(f))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let mounts = inuse::mount_table();
    let mut out = Vec::new();
    for e in entries.flatten() {
        let d = e.path();
        if read(&d, "pool") != loc.pool
            || read(&d, "pool_ns") != loc.namespace
            || read(&d, "name") != loc.image
            || read(&d, "cluster_fsid") != fsid
        {
            continue;
        }
        let dev = super::krbd::device_for_id(&e.file_name().to_string_lossy())
            .display()
            .to_string();
        let used = mounts.iter().any(|m| m.source == dev)
            || !inuse::openers(std::slice::from_ref(&dev)).is_empty();
        if let (false, Some(id)) = (used, parse_client_id(&read(&d, "client_id"))) {
            out.push(id);
        }
    }
    out
}

/// `client4207` → 4207.
fn parse_client_id(s: &str) -> Option<u64> {
    s.trim().strip_prefix("client")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        assert_eq!(parse_client_id("client4207\n"), Some(4207));
        assert_eq!(parse_client_id("4207"), None);
        assert_eq!(parse_client_id("clientx"), None);
    }

    #[test]
    fn message_names_the_clients_and_the_fixes() {
        let m = in_use_message(
            "vol-1",
            "rbd/csi-vol-1",
            &[User {
                id: 4207,
                addr: "10.0.0.5:0/123".into(),
            }],
        );
        assert!(m.contains("client.4207 at 10.0.0.5:0/123"), "{m}");
        assert!(m.contains("ceph osd blocklist add 10.0.0.5:0/123"), "{m}");
        assert!(m.contains("NodeUnstageVolume"), "{m}");
    }
}
