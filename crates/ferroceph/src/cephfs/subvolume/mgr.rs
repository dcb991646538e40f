//! The mgr `volumes` module's commands (JSON over librados, no CLI) for one filesystem,
//! and the parsing of their answers.

use super::{SnapRef, EOPNOTSUPP};
use rados::{Cluster, ErrorKind};
use serde_json::{json, Value};

/// The mgr `volumes` module for one filesystem.
pub struct Volumes<'a> {
    pub cluster: &'a Cluster,
    pub fs: &'a str,
}

/// What `fs subvolume info` says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubInfo {
    pub state: String,
    pub path: String,
    /// None: no quota ("infinite").
    pub quota: Option<u64>,
    pub used: u64,
    pub data_pool: String,
    pub kind: String,
}

impl SubInfo {
    pub fn parse(v: &Value) -> SubInfo {
        SubInfo {
            state: v["state"].as_str().unwrap_or("complete").to_string(),
            path: v["path"].as_str().unwrap_or("").to_string(),
            quota: v["bytes_quota"].as_u64().filter(|q| *q > 0),
            used: v["bytes_used"].as_u64().unwrap_or(0),
            data_pool: v["data_pool"].as_str().unwrap_or("").to_string(),
            kind: v["type"].as_str().unwrap_or("").to_string(),
        }
    }
}

/// What `fs clone status` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneState {
    /// pending or in-progress; the text describes it for the CO.
    Running(String),
    Complete,
    /// failed or canceled, with Ceph's reason.
    Failed(String),
}

pub fn parse_clone_status(v: &Value) -> CloneState {
    let s = &v["status"];
    let state = s["state"].as_str().unwrap_or("unknown");
    let source = &s["source"];
    let from = match (source["subvolume"].as_str(), source["snapshot"].as_str()) {
        (Some(sub), Some(snap)) => format!(
            " from {}/{sub}@{snap}",
            source["group"].as_str().unwrap_or("_nogroup")
        ),
        _ => String::new(),
    };
    match state {
        "complete" => CloneState::Complete,
        "failed" | "canceled" | "cancelled" => {
            let f = &s["failure"];
            let why = match (f["errno"].as_str(), f["error_msg"].as_str()) {
                (Some(n), Some(m)) => format!("{m} (errno {n})"),
                (None, Some(m)) => m.to_string(),
                _ => "no reason given".to_string(),
            };
            CloneState::Failed(format!("clone {state}{from}: {why}"))
        }
        other => {
            let mut text = format!("clone {other}{from}");
            // Newer Ceph (Reef+) reports progress; Pacific reports the state only.
            let p = &s["progress_report"];
            if let Some(pct) = p["percentage cloned"].as_str() {
                text.push_str(&format!(", {pct} cloned"));
            }
            if let Some(amount) = p["amount cloned"].as_str() {
                text.push_str(&format!(" ({amount})"));
            }
            if let Some(files) = p["files cloned"].as_str() {
                text.push_str(&format!(", {files} files"));
            }
            CloneState::Running(text)
        }
    }
}

fn group_missing(e: &rados::Error) -> bool {
    e.kind() == ErrorKind::NotFound
        && e.detail
            .as_deref()
            .is_some_and(|d| d.contains("group") && d.contains("does not exist"))
}

impl<'a> Volumes<'a> {
    pub fn new(cluster: &'a Cluster, fs: &'a str) -> Self {
        Volumes { cluster, fs }
    }

    fn cmd(&self, mut v: Value) -> rados::Result<Value> {
        v["vol_name"] = json!(self.fs);
        v["format"] = json!("json");
        let out = self.cluster.mgr_command(&v.to_string(), &[])?;
        if out.out.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_slice(&out.out).unwrap_or(Value::Null))
    }

    pub fn group_create(&self, group: &str) -> rados::Result<()> {
        self.cmd(json!({"prefix": "fs subvolumegroup create", "group_name": group}))
            .map(drop)
    }

    /// Runs `f`; when it fails because the subvolume group is missing, creates the group
    /// and runs `f` once more (ceph-csi leaves the claim Pending instead, #4548).
    pub fn in_group<T>(&self, group: &str, f: impl Fn() -> rados::Result<T>) -> rados::Result<T> {
        match f() {
            Err(e) if group_missing(&e) => {
                tracing::info!(fs = self.fs, group, "creating the missing subvolume group");
                self.group_create(group)?;
                f()
            }
            r => r,
        }
    }

    pub fn create(
        &self,
        group: &str,
        sub: &str,
        size: Option<u64>,
        pool: Option<&str>,
    ) -> rados::Result<()> {
        let mut c = json!({"prefix": "fs subvolume create", "sub_name": sub, "group_name": group});
        if let Some(s) = size {
            c["size"] = json!(s);
        }
        if let Some(p) = pool {
            c["pool_layout"] = json!(p);
        }
        self.in_group(group, || self.cmd(c.clone())).map(drop)
    }

    /// None when the subvolume (or its group) does not exist.
    pub fn info(&self, group: &str, sub: &str) -> rados::Result<Option<SubInfo>> {
        match self.cmd(json!({"prefix": "fs subvolume info", "sub_name": sub, "group_name": group}))
        {
            Ok(v) => Ok(Some(SubInfo::parse(&v))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// None when the subvolume does not exist; Complete for a subvolume that is not a clone.
    pub fn clone_status(&self, group: &str, sub: &str) -> rados::Result<Option<CloneState>> {
        match self.cmd(json!({"prefix": "fs clone status", "clone_name": sub, "group_name": group}))
        {
            Ok(v) => Ok(Some(parse_clone_status(&v))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) if e.errno == EOPNOTSUPP => Ok(Some(CloneState::Complete)),
            Err(e) => Err(e),
        }
    }

    pub fn clone_cancel(&self, group: &str, sub: &str) -> rados::Result<()> {
        self.cmd(json!({"prefix": "fs clone cancel", "clone_name": sub, "group_name": group}))
            .map(drop)
    }

    pub fn resize(&self, group: &str, sub: &str, size: u64) -> rados::Result<()> {
        self.cmd(json!({
            "prefix": "fs subvolume resize", "sub_name": sub, "group_name": group,
            "new_size": size.to_string(), "no_shrink": true
        }))
        .map(drop)
    }

    pub fn remove(&self, group: &str, sub: &str, retain_snapshots: bool) -> rados::Result<()> {
        let mut c = json!({"prefix": "fs subvolume rm", "sub_name": sub, "group_name": group, "force": true});
        if retain_snapshots {
            c["retain_snapshots"] = json!(true);
        }
        self.cmd(c).map(drop)
    }

    pub fn snapshot_create(&self, group: &str, sub: &str, snap: &str) -> rados::Result<()> {
        self.cmd(json!({
            "prefix": "fs subvolume snapshot create", "sub_name": sub, "group_name": group, "snap_name": snap
        }))
        .map(drop)
    }

    /// None when the snapshot (or its subvolume) does not exist.
    pub fn snapshot_info(
        &self,
        group: &str,
        sub: &str,
        snap: &str,
    ) -> rados::Result<Option<Value>> {
        match self.cmd(json!({
            "prefix": "fs subvolume snapshot info", "sub_name": sub, "group_name": group, "snap_name": snap
        })) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn snapshot_remove(&self, group: &str, sub: &str, snap: &str) -> rados::Result<()> {
        match self.cmd(json!({
            "prefix": "fs subvolume snapshot rm", "sub_name": sub, "group_name": group,
            "snap_name": snap, "force": true
        })) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            r => r.map(drop),
        }
    }

    pub fn clone(
        &self,
        src: &SnapRef,
        group: &str,
        target: &str,
        pool: Option<&str>,
    ) -> rados::Result<()> {
        let mut c = json!({
            "prefix": "fs subvolume snapshot clone", "sub_name": src.sub, "group_name": src.group,
            "snap_name": src.snap, "target_sub_name": target, "target_group_name": group
        });
        if let Some(p) = pool {
            c["pool_layout"] = json!(p);
        }
        match self.in_group(group, || self.cmd(c.clone())) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            r => r.map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_subvolume_info() {
        let v: Value = serde_json::from_str(
            r#"{"bytes_quota": 10485760, "bytes_used": 5, "path": "/volumes/csi/x/u",
            "state": "complete", "type": "subvolume", "data_pool": "cephfs_data"}"#,
        )
        .unwrap();
        let i = SubInfo::parse(&v);
        assert_eq!(i.quota, Some(10485760));
        assert_eq!(i.path, "/volumes/csi/x/u");
        let v: Value = serde_json::from_str(r#"{"bytes_quota": "infinite"}"#).unwrap();
        assert_eq!(SubInfo::parse(&v).quota, None);
    }

    #[test]
    fn parses_clone_status() {
        let v: Value = serde_json::from_str(
            r#"{"status": {"state": "in-progress", "source": {"volume": "cephfs",
            "subvolume": "csi-vol-a", "snapshot": "csi-snap-b", "group": "csi"},
            "progress_report": {"percentage cloned": "12.5%", "amount cloned": "1/8", "files cloned": "3/9"}}}"#,
        )
        .unwrap();
        match parse_clone_status(&v) {
            CloneState::Running(s) => {
                assert!(
                    s.contains("in-progress from csi/csi-vol-a@csi-snap-b"),
                    "{s}"
                );
                assert!(s.contains("12.5% cloned"), "{s}");
            }
            other => panic!("{other:?}"),
        }
        let v: Value = serde_json::from_str(
            r#"{"status": {"state": "failed", "failure": {"errno": "122", "error_msg": "Disk quota exceeded"}}}"#,
        )
        .unwrap();
        assert_eq!(
            parse_clone_status(&v),
            CloneState::Failed("clone failed: Disk quota exceeded (errno 122)".into())
        );
        let v: Value = serde_json::from_str(r#"{"status": {"state": "complete"}}"#).unwrap();
        assert_eq!(parse_clone_status(&v), CloneState::Complete);
    }
}
