//! `doctor --fix`: removes what the journal check found orphaned, after printing the plan.
//! Every removal is re-checked right before it happens, against the journal as it is then,
//! and refused when anything may still reference or depend on the object.

use super::journal::{
    all_snapshots, dir_prefix, entry_prefix, image_spec, journal_error, kind_word, pool_io,
    read_dir,
};
use super::report::{Check, Verdict};
use super::DoctorArgs;
use crate::error::{Error, Result};
use crate::journal::{Journal, Kind, IMAGE_NAME};
use std::collections::BTreeSet;
use std::io::Write;

/// What `--fix` does for one finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// `Journal::release(uuid, Some(name))`: the directory key, then the per-entry object
    /// (in the image's pool when the directory value names another one).
    ReleaseKey {
        kind: Kind,
        name: String,
        uuid: String,
        image_pool: Option<i64>,
    },
    /// Trash then remove the image (no watchers, no snapshots in any namespace, and no
    /// journal reference now). `temp_of`: the uuid of the volume a `-temp` image served.
    RemoveImage {
        name: String,
        temp_of: Option<String>,
    },
}

fn describe(a: &Action, io: &rados::IoCtx, inst: &str) -> String {
    let pool = io.pool_name();
    match a {
        Action::ReleaseKey {
            kind, name, uuid, ..
        } => format!(
            "journal key {p}{name} in {}{inst} and object {p}{uuid} (pool {pool:?})",
            dir_prefix(*kind),
            p = entry_prefix(*kind),
        ),
        Action::RemoveImage { name, .. } => {
            format!("image {}", image_spec(pool, io.namespace(), name))
        }
    }
}

/// Prints what will be removed (stdout, or stderr with --json), then removes it.
pub(super) fn apply(
    args: &DoctorArgs,
    conn: &rados::Cluster,
    io: &rados::IoCtx,
    findings: &mut [(Check, Option<Action>)],
) {
    let inst = &args.instanceid;
    let plan: Vec<String> = findings
        .iter()
        .filter_map(|(_, a)| a.as_ref())
        .map(|a| format!("  {}\n", describe(a, io, inst)))
        .collect();
    let mut text = String::new();
    if plan.is_empty() {
        text.push_str("--fix: nothing to remove\n");
    } else {
        text.push_str("--fix will remove:\n");
        plan.iter().for_each(|l| text.push_str(l));
    }
    text.push('\n');
    if args.json {
        let _ = std::io::stderr().write_all(text.as_bytes());
    } else {
        let mut so = std::io::stdout();
        let _ = so.write_all(text.as_bytes());
        let _ = so.flush();
    }
    if plan.is_empty() {
        return;
    }
    let refs = references_now(conn, io, args);
    for (check, action) in findings.iter_mut() {
        let Some(a) = action.take() else { continue };
        let result = match &a {
            Action::ReleaseKey {
                kind,
                name,
                uuid,
                image_pool,
            } => release_key(args, conn, io, *kind, name, uuid, *image_pool),
            Action::RemoveImage { name, temp_of } => match &refs {
                Err(e) => Err(format!(
                    "the journal could not be re-read ({e}): not removed"
                )),
                Ok(refs) => remove_if_unreferenced(args, io, refs, name, temp_of.as_deref()),
            },
        };
        let what = describe(&a, io, inst);
        match result {
            Ok(()) => *check = Check::ok(check.id.clone(), format!("fixed: removed {what}")),
            Err(e) => {
                check.status = Verdict::Fail;
                check.summary = format!("{} -- --fix could not remove {what}: {e}", check.summary);
            }
        }
    }
}

/// Image names and uuids this instance's directory references now.
struct References {
    names: BTreeSet<String>,
    uuids: BTreeSet<String>,
}

fn references_now(
    conn: &rados::Cluster,
    io: &rados::IoCtx,
    args: &DoctorArgs,
) -> Result<References> {
    let mut refs = References {
        names: BTreeSet::new(),
        uuids: BTreeSet::new(),
    };
    for kind in [Kind::Volume, Kind::Snapshot] {
        for e in read_dir(conn, io, kind, &args.instanceid)? {
            if let Some(n) = e.attrs.as_ref().and_then(|a| a.get(IMAGE_NAME)) {
                refs.names.insert(n.clone());
            }
            refs.uuids.insert(e.uuid);
        }
    }
    Ok(refs)
}

fn exists(io: &rados::IoCtx, image: &str) -> std::result::Result<bool, String> {
    match rados::rbd::Image::open_read_only(io, image) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == rados::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// An orphaned key: released only if the entry's image is still absent from its pool.
fn release_key(
    args: &DoctorArgs,
    conn: &rados::Cluster,
    io: &rados::IoCtx,
    kind: Kind,
    name: &str,
    uuid: &str,
    image_pool: Option<i64>,
) -> std::result::Result<(), String> {
    let other = pool_io(conn, io, image_pool).map_err(|e| format!("{e}: not removed"))?;
    let image_io = other.as_ref().unwrap_or(io);
    let inst = &args.instanceid;
    let prefix = match kind {
        Kind::Volume => &args.volume_name_prefix,
        Kind::Snapshot => &args.snapshot_name_prefix,
    };
    let entry = Journal::new(image_io, kind, inst);
    let image = entry
        .get(uuid)
        .map_err(|e| format!("the entry could not be re-read ({e}): not removed"))?
        .and_then(|at| at.get(IMAGE_NAME).cloned())
        .unwrap_or_else(|| format!("{prefix}{uuid}"));
    match exists(image_io, &image) {
        Err(e) => return Err(format!("the image could not be checked ({e}): not removed")),
        Ok(true) => return Err("its image exists now: not removed".to_string()),
        Ok(false) => {}
    }
    Journal::new(io, kind, inst)
        .release(uuid, Some(name))
        .map_err(|e| e.to_string())?;
    if other.is_some() {
        entry.release(uuid, Some(name)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Removes `name` only if no journal references it now (this instance's directory, or a
/// per-entry object of any journal next to it) and, for a `-temp` image, its volume is
/// still gone.
fn remove_if_unreferenced(
    args: &DoctorArgs,
    io: &rados::IoCtx,
    refs: &References,
    name: &str,
    temp_of: Option<&str>,
) -> std::result::Result<(), String> {
    let (kind, uuid) = match temp_of {
        Some(u) => (Kind::Volume, u),
        None => {
            super::journal::image_uuid(name, &args.volume_name_prefix, &args.snapshot_name_prefix)
                .ok_or("its name is not <prefix><uuid>: not removed")?
        }
    };
    if refs.names.contains(name) || refs.uuids.contains(uuid) {
        return Err("a journal entry references it now: not removed".to_string());
    }
    match Journal::new(io, kind, &args.instanceid).get(uuid) {
        Ok(None) => {}
        Ok(Some(_)) => {
            return Err(format!(
                "per-{} object {}{uuid} exists now: not removed",
                kind_word(kind),
                entry_prefix(kind)
            ))
        }
        Err(e) => return Err(format!("{}: not removed", journal_error("re-read", e))),
    }
    if temp_of.is_some() {
        let volume = format!("{}{uuid}", args.volume_name_prefix);
        if exists(io, &volume)? {
            return Err(format!("its volume {volume} exists now: not removed"));
        }
    }
    remove_image(io, name).map_err(|e| e.to_string())
}

fn remove_image(io: &rados::IoCtx, name: &str) -> Result<()> {
    let img =
        rados::rbd::Image::open_read_only(io, name).map_err(Error::ceph_ctx("open the image"))?;
    let watchers = img.watchers().map_err(Error::ceph_ctx("list watchers"))?;
    if !watchers.is_empty() {
        return Err(Error::precondition(format!(
            "it has {} watcher(s) (in use by a client): not removed; find them with rbd status",
            watchers.len()
        )));
    }
    let id = img.id().map_err(Error::ceph_ctx("read the image id"))?;
    drop(img);
    let snaps = all_snapshots(io, &id)?;
    if snaps > 0 {
        return Err(Error::precondition(format!(
            "it has {snaps} snapshot(s) (clones may depend on them): not removed; inspect them with rbd snap ls --all"
        )));
    }
    rados::rbd::trash_move(io, name, 0).map_err(Error::ceph_ctx("move to the trash"))?;
    rados::rbd::trash_remove(io, &id, false).map_err(|e| {
        Error::ceph(
            format!("moved to the trash (id {id}) but not removed from it"),
            e,
        )
    })
}
