//! Snapshots of a volume's subvolume: create, delete, and their size and creation time
//! (from our journal keys, or from Ceph for snapshots ceph-csi made).

use super::create::refuse_backing;
use super::info::{existing, Existing};
use super::{
    find, jerr, merr, reserve_new, FsPlace, SnapRef, CLONE_FROM_KEY, CREATED_KEY, EAGAIN,
    GROUP_KEY, SIZE_KEY,
};
use crate::ceph::crash_point;
use crate::error::{Error, Result};
use crate::journal::{self, Attrs};
use serde_json::Value;

pub struct SnapshotInfo {
    pub uuid: String,
    pub size: u64,
    pub created_nanos: i64,
    pub source_sub: String,
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Parses Ceph's `2024-01-02 03:04:05.678901` (UTC on the mgr) into unix nanoseconds.
pub fn parse_ceph_time(s: &str) -> Option<i64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // days from civil (Howard Hinnant)
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let frac: String = frac.chars().take(9).collect();
    let nanos = format!("{frac:0<9}").parse::<i64>().ok()?;
    Some((days * 86400 + hh * 3600 + mm * 60 + ss) * 1_000_000_000 + nanos)
}

pub fn snapshot_info(uuid: &str, attrs: &Attrs) -> SnapshotInfo {
    SnapshotInfo {
        uuid: uuid.to_string(),
        size: attrs
            .get(SIZE_KEY)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        created_nanos: attrs
            .get(CREATED_KEY)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        source_sub: attrs.get(journal::SOURCE).cloned().unwrap_or_default(),
    }
}

/// A snapshot's size and creation time: from our journal keys, or for a snapshot ceph-csi
/// made (which has none of them) from `fs subvolume snapshot info` and the source's quota
/// (what ceph-csi reports as a snapshot's size).
pub fn read_snapshot_info(place: &FsPlace<'_>, uuid: &str, attrs: &Attrs) -> SnapshotInfo {
    if attrs.contains_key(SIZE_KEY) && attrs.contains_key(CREATED_KEY) {
        return snapshot_info(uuid, attrs);
    }
    let Some(r) = place.snapshot_ref(uuid, attrs) else {
        return snapshot_info(uuid, attrs);
    };
    match place.mgr().snapshot_info(&r.group, &r.sub, &r.snap) {
        Ok(Some(v)) => complete_snapshot_info(place, uuid, attrs, &r, &v),
        Ok(None) => snapshot_info(uuid, attrs),
        Err(e) => {
            tracing::debug!(snapshot = %r.snap, "snapshot size and time unknown: {e}");
            snapshot_info(uuid, attrs)
        }
    }
}

/// Fills what the journal lacks from `fs subvolume snapshot info` (`v`).
fn complete_snapshot_info(
    place: &FsPlace<'_>,
    uuid: &str,
    attrs: &Attrs,
    r: &SnapRef,
    v: &Value,
) -> SnapshotInfo {
    let mut info = snapshot_info(uuid, attrs);
    if !attrs.contains_key(CREATED_KEY) {
        info.created_nanos = v["created_at"]
            .as_str()
            .and_then(parse_ceph_time)
            .unwrap_or(0);
    }
    if !attrs.contains_key(SIZE_KEY) {
        let quota = match place.mgr().info(&r.group, &r.sub) {
            Ok(Some(i)) => i.quota,
            _ => None,
        };
        info.size = quota.or_else(|| v["size"].as_u64()).unwrap_or(0);
    }
    info
}

/// Snapshots the subvolume of volume `source_uuid` as `<prefix><uuid>`.
pub fn create_snapshot(
    place: &FsPlace<'_>,
    name: &str,
    source_uuid: &str,
    source_id: &str,
    prefix: &str,
) -> Result<SnapshotInfo> {
    let missing = || Error::not_found(format!("source volume {source_id} does not exist"));
    let vol_attrs = place
        .volumes()
        .get(source_uuid)
        .map_err(|e| jerr("read volume journal", e))?
        .ok_or_else(missing)?;
    refuse_backing(&vol_attrs, source_id, "snapshotted")?;
    let (group, sub) = place.volume_names(source_uuid, &vol_attrs);
    let journal = place.snaps();
    let found = find(&journal, name)?;
    let mgr = place.mgr();
    if let Some(entry) = &found {
        if entry.attr(journal::SOURCE) != Some(sub.as_str()) {
            return Err(Error::AlreadyExists(format!(
                "snapshot {name:?} already exists for another source volume ({:?})",
                entry.attr(journal::SOURCE).unwrap_or("")
            )));
        }
        super::backed::refuse_deleted(place, source_id, &entry.uuid, name)?;
        if let Some(r) = place.snapshot_ref(&entry.uuid, &entry.attrs) {
            if let Some(v) = mgr
                .snapshot_info(&r.group, &r.sub, &r.snap)
                .map_err(|e| merr("read the snapshot", &e))?
            {
                return Ok(complete_snapshot_info(
                    place,
                    &entry.uuid,
                    &entry.attrs,
                    &r,
                    &v,
                ));
            }
        }
    }
    let quota = match existing(place, &group, &sub, vol_attrs.contains_key(CLONE_FROM_KEY))? {
        Existing::Ready(i) => i.quota,
        Existing::Cloning(s) => {
            return Err(Error::Aborted(format!(
            "source volume {source_id} is still being cloned ({s}); snapshot it when it is ready"
        )))
        }
        Existing::Absent | Existing::Failed(_) => {
            if let Some(entry) = &found {
                let _ = journal.release(&entry.uuid, Some(name));
            }
            return Err(missing());
        }
    };
    let entry = match found {
        Some(entry) => entry,
        None => {
            let created = now_nanos().to_string();
            reserve_new(&journal, name, |uuid| {
                Attrs::from([
                    (journal::IMAGE_NAME.to_string(), format!("{prefix}{uuid}")),
                    (journal::SOURCE.to_string(), sub.clone()),
                    (GROUP_KEY.to_string(), group.clone()),
                    (CREATED_KEY.to_string(), created.clone()),
                    (SIZE_KEY.to_string(), quota.unwrap_or(0).to_string()),
                ])
            })?
        }
    };
    crash_point("cephfs.snapshot.reserved");
    let snap = entry
        .attrs
        .get(journal::IMAGE_NAME)
        .cloned()
        .unwrap_or_else(|| format!("{prefix}{}", entry.uuid));
    if let Err(e) = mgr.snapshot_create(&group, &sub, &snap) {
        let st = merr("create the snapshot", &e);
        if let Err(e) = journal.release(&entry.uuid, Some(name)) {
            tracing::warn!(name, "rollback could not release the journal entry: {e}");
        }
        return Err(st);
    }
    crash_point("cephfs.snapshot.created");
    Ok(snapshot_info(&entry.uuid, &entry.attrs))
}

/// Removes a snapshot and its journal entry. Idempotent. A subvolume deleted earlier with
/// its snapshots retained disappears with its last snapshot.
pub fn delete_snapshot(place: &FsPlace<'_>, uuid: &str) -> Result<()> {
    let journal = place.snaps();
    let attrs = journal
        .get(uuid)
        .map_err(|e| jerr("read snapshot journal", e))?;
    if let Some(r) = attrs.as_ref().and_then(|a| place.snapshot_ref(uuid, a)) {
        // Asked first, as ceph-csi does: the mgr may hold the removal until the clones are
        // done and then remove it, after the CO gave up waiting.
        let info = place
            .mgr()
            .snapshot_info(&r.group, &r.sub, &r.snap)
            .map_err(|e| merr("read the snapshot", &e))?;
        if info.is_some_and(|i| i["has_pending_clones"] == "yes") {
            return Err(Error::precondition(format!(
                "snapshot {} is in use: clones are still being made from it; retry when they are done",
                r.snap
            )));
        }
        place
            .mgr()
            .snapshot_remove(&r.group, &r.sub, &r.snap)
            .map_err(|e| {
                if e.errno == EAGAIN {
                    Error::precondition(format!(
                        "snapshot {} is in use: clones are still being made from it ({e}); retry when they are done",
                        r.snap
                    ))
                } else {
                    merr("remove the snapshot", &e)
                }
            })?;
    }
    crash_point("cephfs.snapshot.removed");
    journal
        .release(uuid, None)
        .map_err(|e| jerr("remove journal entry", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceph_times() {
        assert_eq!(parse_ceph_time("1970-01-01 00:00:01"), Some(1_000_000_000));
        assert_eq!(
            parse_ceph_time("2024-03-01 12:00:00.5"),
            Some(1_709_294_400_500_000_000)
        );
        assert_eq!(parse_ceph_time("garbage"), None);
    }
}
