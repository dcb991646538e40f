//! Journal consistency: directory keys whose image is gone, `<prefix><uuid>` images no
//! journal references, per-volume objects without a directory key, ceph-csi's `-temp`
//! clone images left without their volume, and (with `--pv-json`) journal volumes no PV
//! references. `--fix` (see `fix.rs`) removes only what is provably unreferenced.
//!
//! An image counts as referenced when this instance's directory in this pool names it, or
//! when a per-entry object `csi.volume.<uuid>` / `csi.snap.<uuid>` exists next to it: every
//! journal, of any instance and in any pool, keeps that object in the image's pool (ceph-csi
//! adds `csi.journalpool` when the directory lives in another pool). Such images are
//! reported, never removed.

use super::fix::{self, Action};
use super::report::{Check, Verdict};
use super::DoctorArgs;
use crate::error::{Error, Result};
use crate::journal::{Attrs, Journal, JournalError, Kind, IMAGE_ID, IMAGE_NAME, JOURNAL_POOL};
use crate::volid::CsiId;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

/// An entry without `csi.imageid` younger than this may be a create in flight.
const IN_FLIGHT: Duration = Duration::from_secs(300);
const PAGE: usize = 1000;
/// ceph-csi clones a volume through an intermediate image `<volume image>-temp`.
const TEMP_SUFFIX: &str = "-temp";

pub(super) fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Volume => "volume",
        Kind::Snapshot => "snap",
    }
}

pub(super) fn dir_prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Volume => "csi.volumes.",
        Kind::Snapshot => "csi.snaps.",
    }
}

/// `csi.volume.` / `csi.snap.`: prefix of directory keys and of per-entry objects.
pub(super) fn entry_prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Volume => "csi.volume.",
        Kind::Snapshot => "csi.snap.",
    }
}

fn human_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Volume => "volume",
        Kind::Snapshot => "snapshot",
    }
}

pub(super) fn rados_ns(ns: &str) -> String {
    if ns.is_empty() {
        String::new()
    } else {
        format!(" -N {ns}")
    }
}

pub(super) fn image_spec(pool: &str, ns: &str, image: &str) -> String {
    if ns.is_empty() {
        format!("{pool}/{image}")
    } else {
        format!("{pool}/{ns}/{image}")
    }
}

pub(super) fn journal_error(what: &str, e: JournalError) -> Error {
    match e {
        JournalError::Rados(r) => Error::ceph(what, r),
        other => Error::internal(format!("{what}: {other}")),
    }
}

/// The uuid of an image named `<prefix><uuid>`, for the kind the prefix belongs to.
pub(crate) fn image_uuid<'a>(
    name: &'a str,
    vol_prefix: &str,
    snap_prefix: &str,
) -> Option<(Kind, &'a str)> {
    // The longer prefix first, so that one prefix extending the other is not mistaken.
    let mut prefixes = [(vol_prefix, Kind::Volume), (snap_prefix, Kind::Snapshot)];
    prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    prefixes.iter().find_map(|(p, kind)| {
        let rest = name.strip_prefix(*p)?;
        super::looks_like_fsid(rest).then_some((*kind, rest))
    })
}

/// The uuid of the volume whose clone went through `name` = `<vol_prefix><uuid>-temp`.
pub(crate) fn temp_uuid<'a>(name: &'a str, vol_prefix: &str) -> Option<&'a str> {
    let rest = name.strip_prefix(vol_prefix)?.strip_suffix(TEMP_SUFFIX)?;
    super::looks_like_fsid(rest).then_some(rest)
}

/// Volume uuids referenced by the PVs of `kubectl get pv -o json`.
pub(crate) fn pv_uuids(json: &str) -> Result<BTreeSet<String>> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| Error::invalid(format!("not JSON: {e}")))?;
    let items = v.get("items").and_then(|i| i.as_array()).ok_or_else(|| {
        Error::invalid("no \"items\" list: pass the output of `kubectl get pv -o json`")
    })?;
    Ok(items
        .iter()
        .filter_map(|pv| pv.pointer("/spec/csi/volumeHandle")?.as_str())
        .filter_map(|h| CsiId::decode(h).ok())
        .map(|id| id.uuid)
        .collect())
}

/// One directory entry as found.
pub(super) struct DirEntry {
    pub(super) kind: Kind,
    pub(super) name: String,
    pub(super) uuid: String,
    /// The image's pool when the directory value names one other than the journal's.
    pub(super) pool_id: Option<i64>,
    /// The per-entry object's keys (read in the image's pool), None when it does not exist.
    pub(super) attrs: Option<Attrs>,
}

/// Splits a directory value `<uuid>` or `<16-hex pool id>/<uuid>`.
fn parse_dir_value(value: &str) -> (Option<i64>, String) {
    match value.split_once('/') {
        Some((pool, uuid)) => (i64::from_str_radix(pool, 16).ok(), uuid.to_string()),
        None => (None, value.to_string()),
    }
}

/// The io context of pool `pool_id` (None: `io`'s own pool) in `io`'s namespace.
pub(super) fn pool_io(
    conn: &rados::Cluster,
    io: &rados::IoCtx,
    pool_id: Option<i64>,
) -> Result<Option<rados::IoCtx>> {
    match pool_id {
        Some(pid) if pid != io.pool_id() => conn
            .ioctx_by_id(pid, io.namespace())
            .map(Some)
            .map_err(Error::ceph_ctx("open the image pool")),
        _ => Ok(None),
    }
}

/// Every entry of directory `csi.volumes.<instance>` / `csi.snaps.<instance>` in `io`.
pub(super) fn read_dir(
    conn: &rados::Cluster,
    io: &rados::IoCtx,
    kind: Kind,
    instance: &str,
) -> Result<Vec<DirEntry>> {
    let dir = format!("{}{instance}", dir_prefix(kind));
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let page = match io.omap_list(&dir, &after, entry_prefix(kind), PAGE) {
            Ok(p) => p,
            Err(e) if e.kind() == rados::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::ceph(format!("list {dir}"), e)),
        };
        let full = page.len() == PAGE;
        for (key, value) in page {
            after.clone_from(&key);
            let Some(name) = key.strip_prefix(entry_prefix(kind)) else {
                continue;
            };
            let (pool_id, uuid) = parse_dir_value(&String::from_utf8_lossy(&value));
            let pool_id = pool_id.filter(|p| *p != io.pool_id());
            let attrs = match pool_io(conn, io, pool_id) {
                Ok(other) => Journal::new(other.as_ref().unwrap_or(io), kind, instance)
                    .get(&uuid)
                    .map_err(|e| journal_error(&format!("read {}{uuid}", entry_prefix(kind)), e)),
                // The image pool cannot be opened: the presence check reports it.
                Err(_) => Ok(None),
            }?;
            out.push(DirEntry {
                kind,
                name: name.to_string(),
                uuid,
                pool_id,
                attrs,
            });
        }
        if !full {
            return Ok(out);
        }
    }
}

/// The image name an entry stands for.
pub(super) fn entry_image(e: &DirEntry, args: &DoctorArgs) -> String {
    let prefix = match e.kind {
        Kind::Volume => &args.volume_name_prefix,
        Kind::Snapshot => &args.snapshot_name_prefix,
    };
    e.attrs
        .as_ref()
        .and_then(|a| a.get(IMAGE_NAME).cloned())
        .unwrap_or_else(|| format!("{prefix}{}", e.uuid))
}

/// How many snapshots `image` (id `id`) has in any namespace: user snapshots, and those
/// that clone v2 keeps in the trash namespace while clones depend on them. Read from the
/// image header, as librbd lists only user snapshots.
pub(super) fn all_snapshots(io: &rados::IoCtx, id: &str) -> Result<usize> {
    io.omap_list(&format!("rbd_header.{id}"), "", "snapshot_", 4096)
        .map(|v| v.len())
        .map_err(Error::ceph_ctx("read the image header"))
}

fn age(io: &rados::IoCtx, obj: &str) -> Option<Duration> {
    let st = io.stat(obj).ok()?;
    SystemTime::now().duration_since(st.mtime).ok()
}

fn image_gone(io: &rados::IoCtx, image: &str) -> bool {
    matches!(
        rados::rbd::Image::open_read_only(io, image),
        Err(e) if e.kind() == rados::ErrorKind::NotFound
    )
}

/// Runs the journal checks (and with `--fix` the removals) on `pool`/`ns`.
pub(super) fn run(
    args: &DoctorArgs,
    conn: &rados::Cluster,
    cluster_id: &str,
    pool: &str,
    ns: &str,
) -> Vec<Check> {
    let fail = |summary: String, why: &str, fix: String| {
        vec![Check::problem("journal", Verdict::Fail, summary, why, fix)]
    };
    let io = match conn.ioctx(pool, ns) {
        Ok(io) => io,
        Err(e) => {
            return fail(
                format!("cannot open pool {pool:?}: {e}"),
                "the journal lives in the pool",
                "see the ceph.pool check".into(),
            )
        }
    };
    let images: BTreeMap<String, String> = match rados::rbd::list_image_specs(&io) {
        Ok(i) => i.into_iter().map(|s| (s.name, s.id)).collect(),
        Err(e) => {
            return fail(
                format!(
                    "listing the images of pool {pool:?} failed: {e}; nothing was checked or fixed"
                ),
                "orphans can only be told apart from volumes with a complete image listing",
                "see the ceph.pool check".into(),
            )
        }
    };
    let mut entries = Vec::new();
    for kind in [Kind::Volume, Kind::Snapshot] {
        match read_dir(conn, &io, kind, &args.instanceid) {
            Ok(e) => entries.extend(e),
            Err(e) => {
                return fail(
                    format!("reading the journal failed: {e}; nothing was checked or fixed"),
                    "orphans can only be told apart with a complete journal",
                    format!("check the user's caps on pool {pool}: osd 'profile rbd pool={pool}'"),
                )
            }
        }
    }
    let mut out = Vec::new();
    let pvs = read_pvs(args, &mut out);
    let mut scan = Scan {
        args,
        conn,
        io: &io,
        cluster_id,
        pool,
        ns,
        images,
        pvs,
        ref_names: entries.iter().map(|e| entry_image(e, args)).collect(),
        ref_uuids: entries.iter().map(|e| e.uuid.clone()).collect(),
        other_pools: HashMap::new(),
        healthy: 0,
        findings: Vec::new(),
    };
    for e in &entries {
        scan.entry(e);
    }
    let names: Vec<String> = scan.images.keys().cloned().collect();
    for image in &names {
        scan.unreferenced(image);
    }
    if scan.findings.is_empty() {
        out.push(scan.all_well());
        return out;
    }
    let mut findings = std::mem::take(&mut scan.findings);
    if args.fix {
        fix::apply(args, conn, &io, &mut findings);
    }
    out.extend(findings.into_iter().map(|(c, _)| c));
    out
}

fn read_pvs(args: &DoctorArgs, out: &mut Vec<Check>) -> Option<BTreeSet<String>> {
    let p = args.pv_json.as_ref()?;
    let parsed = std::fs::read_to_string(p)
        .map_err(|e| e.to_string())
        .and_then(|t| pv_uuids(&t).map_err(|e| e.to_string()));
    match parsed {
        Ok(u) => Some(u),
        Err(e) => {
            out.push(Check::problem(
                "journal.pv",
                Verdict::Fail,
                format!("{}: {e}", p.display()),
                "volumes are matched to PVs by their volumeHandle",
                "kubectl get pv -o json > pvs.json and pass --pv-json pvs.json",
            ));
            None
        }
    }
}

/// The state of one journal scan.
struct Scan<'a> {
    args: &'a DoctorArgs,
    conn: &'a rados::Cluster,
    io: &'a rados::IoCtx,
    cluster_id: &'a str,
    pool: &'a str,
    ns: &'a str,
    /// Image name → image id, as listed before the journal was read.
    images: BTreeMap<String, String>,
    pvs: Option<BTreeSet<String>>,
    /// Image names and uuids this instance's directory references: never orphans.
    ref_names: BTreeSet<String>,
    ref_uuids: BTreeSet<String>,
    other_pools: HashMap<i64, std::result::Result<BTreeSet<String>, String>>,
    healthy: usize,
    findings: Vec<(Check, Option<Action>)>,
}

impl Scan<'_> {
    fn inst(&self) -> &str {
        &self.args.instanceid
    }

    fn report(&mut self, check: Check, action: Option<Action>) {
        self.findings.push((check, action));
    }

    fn all_well(&self) -> Check {
        let (vp, sp) = (
            &self.args.volume_name_prefix,
            &self.args.snapshot_name_prefix,
        );
        Check::ok(
            "journal",
            format!(
                "journal of instance {:?} in pool {:?}: {} entr{} with an image, no orphaned keys, no orphaned {vp}*/{sp}* images{}",
                self.inst(),
                self.pool,
                self.healthy,
                if self.healthy == 1 { "y" } else { "ies" },
                if self.pvs.is_some() { ", every volume has a PV" } else { "" }
            ),
        )
    }

    /// Whether `image` exists in the entry's image pool; Err when that pool cannot be listed.
    fn present(&mut self, pool_id: Option<i64>, image: &str) -> std::result::Result<bool, String> {
        let Some(pid) = pool_id else {
            return Ok(self.images.contains_key(image));
        };
        let (conn, ns) = (self.conn, self.ns);
        let listed = self.other_pools.entry(pid).or_insert_with(|| {
            conn.ioctx_by_id(pid, ns)
                .and_then(|o| rados::rbd::list_images(&o))
                .map(|v| v.into_iter().collect())
                .map_err(|e| e.to_string())
        });
        match listed {
            Ok(set) => Ok(set.contains(image)),
            Err(e) => Err(e.clone()),
        }
    }

    /// One entry of this instance's directory.
    fn entry(&mut self, e: &DirEntry) {
        let (pool, nsf, inst) = (self.pool, rados_ns(self.ns), self.inst().to_string());
        let image = entry_image(e, self.args);
        let dir = format!("{}{inst}", dir_prefix(e.kind));
        let obj = format!("{}{}", entry_prefix(e.kind), e.uuid);
        let key = format!("{}{}", entry_prefix(e.kind), e.name);
        let word = human_word(e.kind);
        if let Some(attrs) = &e.attrs {
            let owner = attrs.get(e.kind.name_key()).map(String::as_str);
            if owner != Some(e.name.as_str()) {
                self.report(Check::problem(
                    "journal.key",
                    Verdict::Warn,
                    format!(
                        "directory key {key} in {dir} points at {obj}, which belongs to {:?}",
                        owner.unwrap_or("no name")
                    ),
                    "a crash or a concurrent reservation left two names on one uuid; the driver re-reserves the name when it is requested again",
                    format!("if no PV uses {word} {:?}: rados -p {pool}{nsf} rmomapkey {dir} {key}", e.name),
                ), None);
                return;
            }
        }
        match self.present(e.pool_id, &image) {
            Ok(true) => {
                self.healthy += 1;
                if e.kind == Kind::Volume {
                    self.pv_check(
                        &e.name,
                        &e.uuid,
                        e.pool_id,
                        &image,
                        Some((&dir, &key, &obj)),
                    );
                }
            }
            Ok(false) => self.image_gone(e, &image, &dir, &key, &obj),
            Err(err) => {
                let pid = e.pool_id.unwrap_or_default();
                self.report(Check::problem(
                    "journal.key",
                    Verdict::Warn,
                    format!("{word} {:?}: image {image} is in pool id {pid}, which could not be listed: {err}", e.name),
                    "the entry's image lives in another pool",
                    format!("run doctor with --pool set to the pool with id {pid}"),
                ), None);
            }
        }
    }

    /// `--pv-json`: a volume with an image that no PV references.
    fn pv_check(
        &mut self,
        name: &str,
        uuid: &str,
        pool_id: Option<i64>,
        image: &str,
        journal: Option<(&str, &str, &str)>,
    ) {
        let Some(pvs) = &self.pvs else { return };
        if pvs.contains(uuid) {
            return;
        }
        let handle = CsiId::new(self.cluster_id, pool_id.unwrap_or(self.io.pool_id()), uuid)
            .map(|h| h.to_string())
            .unwrap_or_else(|err| format!("(no handle: {err})"));
        let spec = image_spec(self.pool, self.ns, image);
        let forget = match journal {
            Some((dir, key, obj)) => {
                let (pool, nsf) = (self.pool, rados_ns(self.ns));
                format!(" && rados -p {pool}{nsf} rmomapkey {dir} {key} && rados -p {pool}{nsf} rm {obj}")
            }
            None => " and its journal entry".to_string(),
        };
        self.report(Check::problem(
            "journal.no-pv",
            Verdict::Fail,
            format!("volume {name:?} (handle {handle}, image {image}) is in the journal but no PV references it"),
            "a PV deleted while the driver could not delete the volume (or a failed provisioning) leaves the image and its journal entry behind, using space",
            format!("if no PV should own it: rbd rm {spec}{forget} (or recreate a PV with volumeHandle {handle} to keep it)"),
        ), None);
    }

    /// An entry whose image is gone: an orphaned key, unless a create may still be running.
    fn image_gone(&mut self, e: &DirEntry, image: &str, dir: &str, key: &str, obj: &str) {
        let (pool, nsf) = (self.pool, rados_ns(self.ns));
        let word = human_word(e.kind);
        let complete = e.attrs.as_ref().is_some_and(|a| a.contains_key(IMAGE_ID));
        let probe = if e.attrs.is_some() && e.pool_id.is_none() {
            obj
        } else {
            dir
        };
        if !complete && age(self.io, probe).is_some_and(|a| a < IN_FLIGHT) {
            self.report(Check::problem(
                "journal.in-flight",
                Verdict::Warn,
                format!("{word} {:?} (uuid {}) has no image {image} yet and no csi.imageid: probably a create in flight", e.name, e.uuid),
                "the driver reserves the journal entry before it creates the image",
                "run doctor again in a few minutes; if it is still reported as orphaned then, --fix removes it",
            ), None);
            return;
        }
        let what = if e.attrs.is_some() {
            format!("directory key {key} in {dir} and object {obj}")
        } else {
            format!("directory key {key} in {dir} (its object {obj} is missing)")
        };
        let image_pool = e
            .pool_id
            .map(|p| format!("pool id {p}"))
            .unwrap_or_else(|| format!("pool {pool:?}"));
        self.report(Check::problem(
            "journal.orphan-key",
            Verdict::Fail,
            format!("orphaned journal key: {word} {:?} (uuid {}) has no image {image} in {image_pool}: {what}", e.name, e.uuid),
            format!("the image was deleted but the journal entry was not; a new request for {:?} would be answered with a volume that does not exist", e.name),
            format!(
                "ferroceph doctor ... --fix, or: rados -p {pool}{nsf} rmomapkey {dir} {key}{}",
                if e.attrs.is_some() && e.pool_id.is_none() { format!(" && rados -p {pool}{nsf} rm {obj}") } else { String::new() }
            ),
        ), Some(Action::ReleaseKey {
            kind: e.kind,
            name: e.name.clone(),
            uuid: e.uuid.clone(),
            image_pool: e.pool_id,
        }));
    }

    /// An image this instance's directory does not reference.
    fn unreferenced(&mut self, image: &str) {
        if let Some(uuid) = temp_uuid(image, &self.args.volume_name_prefix) {
            self.temp(image, uuid);
            return;
        }
        let Some((kind, uuid)) = image_uuid(
            image,
            &self.args.volume_name_prefix,
            &self.args.snapshot_name_prefix,
        ) else {
            return;
        };
        if self.ref_names.contains(image) || self.ref_uuids.contains(uuid) {
            return;
        }
        // Listed before the journal was read: a delete (image first, journal entry
        // after) may have finished in between. Only an image still there is orphaned.
        if image_gone(self.io, image) {
            return;
        }
        let j = Journal::new(self.io, kind, self.inst());
        match j.get(uuid) {
            Ok(Some(attrs)) => self.owned_elsewhere(kind, uuid, image, &attrs),
            Ok(None) => self.orphan_image(kind, image),
            Err(e) => self.report(
                Check::problem(
                    "journal.dangling-object",
                    Verdict::Warn,
                    format!(
                        "image {image}: reading {} failed: {e}",
                        j.entry_object(uuid)
                    ),
                    "an image whose per-entry object exists belongs to a journal: it is not removed without knowing",
                    "check the user's caps on the pool",
                ),
                None,
            ),
        }
    }

    /// Snapshots of `image` in any namespace; None (and a warning) when unreadable.
    fn snapshots(&mut self, image: &str) -> Option<usize> {
        let id = self.images.get(image).cloned().unwrap_or_default();
        match all_snapshots(self.io, &id) {
            Ok(n) => Some(n),
            Err(e) => {
                self.report(
                    Check::problem(
                        "journal.orphan-image",
                        Verdict::Warn,
                        format!("image {image}: {e}"),
                        "an image with snapshots or clones is never removed, so they must be known",
                        "check the user's caps on the pool",
                    ),
                    None,
                );
                None
            }
        }
    }

    /// `<prefix><uuid>` image without any per-entry object: no journal references it.
    fn orphan_image(&mut self, kind: Kind, image: &str) {
        let Some(snaps) = self.snapshots(image) else {
            return;
        };
        let (pool, ns, inst) = (self.pool, self.ns, self.inst().to_string());
        let spec = image_spec(pool, ns, image);
        let dir = format!("{}{inst}", dir_prefix(kind));
        let word = kind_word(kind);
        if snaps > 0 {
            self.report(Check::problem(
                "journal.orphan-image",
                Verdict::Warn,
                format!("image {spec} has no {word} entry in any journal but {snaps} snapshot(s): not removable"),
                "no journal references it, but snapshots (or clones through snapshots kept in the trash namespace) depend on it",
                format!("inspect it with rbd snap ls --all {spec} and rbd children --all {spec}; remove it only with its clones"),
            ), None);
            return;
        }
        let pool_ns = if ns.is_empty() {
            pool.to_string()
        } else {
            format!("{pool}/{ns}")
        };
        self.report(Check::problem(
            "journal.orphan-image",
            Verdict::Fail,
            format!("orphaned image: {spec} has no {word} entry in {dir} and no per-{word} object"),
            "no journal entry references it, so no CSI volume or snapshot owns it: it was left by a failed delete or create and only uses space (images of a driver instance sharing this pool with the same name prefix keep their per-volume object, so they are never called orphans)",
            format!("if nothing uses it (rbd status {spec}): ferroceph doctor ... --fix, or: rbd trash mv {spec} && rbd trash rm <id from rbd trash ls {pool_ns}>"),
        ), Some(Action::RemoveImage { name: image.to_string(), temp_of: None }));
    }

    /// An unreferenced image whose per-entry object exists: another instance's entry, a
    /// journal in another pool (`csi.journalpool`), or a leftover of an interrupted delete.
    fn owned_elsewhere(&mut self, kind: Kind, uuid: &str, image: &str, attrs: &Attrs) {
        let name = attrs
            .get(kind.name_key())
            .cloned()
            .unwrap_or_else(|| "?".to_string());
        let obj = format!("{}{uuid}", entry_prefix(kind));
        let (pool, nsf, inst) = (self.pool, rados_ns(self.ns), self.inst().to_string());
        let journal_pool = attrs
            .get(JOURNAL_POOL)
            .and_then(|p| i64::from_str_radix(p, 16).ok())
            .filter(|p| *p != self.io.pool_id());
        if let Some(jp) = journal_pool {
            if self.listed_in(jp, kind, &name, uuid) {
                self.healthy += 1;
                if kind == Kind::Volume {
                    self.pv_check(&name, uuid, None, image, None);
                }
                return;
            }
            self.report(Check::problem(
                "journal.elsewhere",
                Verdict::Warn,
                format!("image {image} ({} {name:?}) is journaled in pool id {jp} (csi.journalpool of {obj}), not by instance {inst:?} there or not readable: not checked", human_word(kind)),
                "ceph-csi keeps the directory in the StorageClass's journalPool and the per-volume object next to the image",
                format!("run doctor with --pool set to the pool with id {jp} and that driver's --instanceid"),
            ), None);
            return;
        }
        self.report(Check::problem(
            "journal.dangling-object",
            Verdict::Warn,
            format!(
                "per-{} object {obj} ({} {name:?}, image {image}) has no directory key in {}{inst}: not removed",
                kind_word(kind),
                human_word(kind),
                dir_prefix(kind)
            ),
            "it is another driver instance's entry in this pool (its own --instanceid), or an interrupted delete removed the directory key but not the image and object",
            format!("if no instance's directory (rados -p {pool}{nsf} ls | grep '^{}') has key {}{name}: rbd rm {} && rados -p {pool}{nsf} rm {obj}", dir_prefix(kind), entry_prefix(kind), image_spec(pool, self.ns, image)),
        ), None);
    }

    /// Whether this instance's directory in pool `journal_pool` has `name` → this pool's `uuid`.
    fn listed_in(&self, journal_pool: i64, kind: Kind, name: &str, uuid: &str) -> bool {
        let Ok(jio) = self.conn.ioctx_by_id(journal_pool, self.ns) else {
            return false;
        };
        let dir = format!("{}{}", dir_prefix(kind), self.inst());
        let key = format!("{}{name}", entry_prefix(kind));
        let Ok(got) = jio.omap_get(&dir, &[key.as_str()]) else {
            return false;
        };
        got.get(&key).is_some_and(|v| {
            let (pid, u) = parse_dir_value(&String::from_utf8_lossy(v));
            u == uuid && pid == Some(self.io.pool_id())
        })
    }

    /// `<vol_prefix><uuid>-temp`: in use while its volume exists or a journal knows the
    /// uuid; left over otherwise, and removable only without snapshots (so without clones).
    fn temp(&mut self, image: &str, uuid: &str) {
        let volume = format!("{}{uuid}", self.args.volume_name_prefix);
        if self.images.contains_key(&volume) || self.ref_uuids.contains(uuid) {
            return;
        }
        match Journal::new(self.io, Kind::Volume, self.inst()).get(uuid) {
            Ok(None) => {}
            // A journal (another instance's or pool's) knows the volume, or we cannot tell.
            Ok(Some(_)) | Err(_) => return,
        }
        if image_gone(self.io, image) || !image_gone(self.io, &volume) {
            return;
        }
        let Some(snaps) = self.snapshots(image) else {
            return;
        };
        let spec = image_spec(self.pool, self.ns, image);
        if snaps > 0 {
            self.report(Check::problem(
                "journal.orphan-temp",
                Verdict::Warn,
                format!("clone image {spec} has no volume {volume} but {snaps} snapshot(s): not removable"),
                "ceph-csi clones a volume through <volume>-temp; clones of it still depend on its snapshots",
                format!("inspect it with rbd snap ls --all {spec} and rbd children --all {spec}"),
            ), None);
            return;
        }
        self.report(Check::problem(
            "journal.orphan-temp",
            Verdict::Fail,
            format!("leftover clone image {spec}: its volume {volume} is gone and no journal references uuid {uuid}"),
            "ceph-csi clones a volume through <volume>-temp and removes it with the volume; a failed clone or delete leaves it behind, using space",
            format!("if nothing uses it (rbd status {spec}): ferroceph doctor ... --fix, or: rbd rm {spec}"),
        ), Some(Action::RemoveImage { name: image.to_string(), temp_of: Some(uuid.to_string()) }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_image_names_and_pv_handles() {
        let u = "5db14e3a-f2f0-42dd-893b-202e8d15f48c";
        assert_eq!(
            image_uuid(&format!("csi-vol-{u}"), "csi-vol-", "csi-snap-"),
            Some((Kind::Volume, u))
        );
        assert_eq!(
            image_uuid(&format!("csi-snap-{u}"), "csi-vol-", "csi-snap-"),
            Some((Kind::Snapshot, u))
        );
        assert_eq!(
            image_uuid(&format!("csi-vol-{u}-temp"), "csi-vol-", "csi-snap-"),
            None
        );
        assert_eq!(image_uuid("csi-vol-x", "csi-vol-", "csi-snap-"), None);
        assert_eq!(
            image_uuid(&format!("other-{u}"), "csi-vol-", "csi-snap-"),
            None
        );
        // A prefix that extends the other is matched first.
        assert_eq!(
            image_uuid(&format!("a-snap-{u}"), "a-", "a-snap-"),
            Some((Kind::Snapshot, u))
        );

        let handle = crate::volid::CsiId::new("my-cluster", 2, u)
            .unwrap()
            .to_string();
        let json = serde_json::json!({"items": [
            {"spec": {"csi": {"driver": "rbd.ferroceph.io", "volumeHandle": handle}}},
            {"spec": {"csi": {"volumeHandle": "not-a-handle"}}},
            {"spec": {"hostPath": {"path": "/x"}}}
        ]})
        .to_string();
        let got = pv_uuids(&json).unwrap();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), vec![u.to_string()]);
        assert!(pv_uuids("{}").is_err());
        assert!(pv_uuids("nope").is_err());
    }

    #[test]
    fn temp_clone_names_and_directory_values() {
        let u = "5db14e3a-f2f0-42dd-893b-202e8d15f48c";
        assert_eq!(temp_uuid(&format!("csi-vol-{u}-temp"), "csi-vol-"), Some(u));
        assert_eq!(temp_uuid(&format!("csi-vol-{u}"), "csi-vol-"), None);
        assert_eq!(temp_uuid(&format!("csi-snap-{u}-temp"), "csi-vol-"), None);
        assert_eq!(temp_uuid("csi-vol-x-temp", "csi-vol-"), None);
        assert_eq!(parse_dir_value(u), (None, u.to_string()));
        assert_eq!(
            parse_dir_value(&format!("000000000000000a/{u}")),
            (Some(10), u.to_string())
        );
    }
}
