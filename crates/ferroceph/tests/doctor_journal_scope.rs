//! `ferroceph doctor --fix` never removes what another journal references (issue 14
//! item 6): volumes of another driver instance, volumes whose journal is in another pool,
//! and temporary clones still in use.

mod common;

use common::doctor::*;

#[test]
fn journal_fix_keeps_the_volumes_of_another_instance() {
    let c = common::cluster();
    let pool = c.get("FERRO_RBD_POOL");
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &key);
    let conn = admin();
    let tag = common::unique("doctorinst");
    // Another driver instance (its own --instanceid) with the same name prefixes in the
    // same pool: its volume has a directory key in csi.volumes.<other> only.
    let mut other = mess(&conn, &pool, &format!("{tag}-other"));
    let u = uuid::Uuid::new_v4().to_string();
    let (name, image) = (format!("pvc-{u}"), format!("{tag}-vol-{u}"));
    other.entry(&name, &u, &image);
    other.image(&image);
    let r = journal_doctor(&cfg, &sec, &pool, &tag, &["--fix"]);
    assert!(
        other.image_exists(&image),
        "another instance's volume was removed: {}",
        r.stdout
    );
    assert!(
        other.object_exists(&format!("csi.volume.{u}")),
        "{}",
        r.stdout
    );
    assert!(other.key_exists(&name), "{}", r.stdout);
    for f in mentioning(&r, &u) {
        assert_ne!(f["status"], "fail", "reported as an orphan: {f}");
    }
    assert_eq!(r.code, 0, "{}", r.stdout);
    r.assert_no_keys(&[]);
}

/// Objects written by hand in another pool, removed when dropped.
struct Objects<'a> {
    io: &'a rados::IoCtx,
    names: Vec<String>,
}

impl Drop for Objects<'_> {
    fn drop(&mut self) {
        for o in &self.names {
            let _ = self.io.remove_object(o);
        }
    }
}

#[test]
fn journal_fix_keeps_volumes_whose_journal_is_in_another_pool() {
    let c = common::cluster();
    let pool = c.get("FERRO_RBD_POOL");
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &key);
    let conn = admin();
    let tag = common::unique("doctorxpool");
    // ceph-csi with StorageClass journalPool=cephfs_data, pool=rbd: the directory is in the
    // journal pool with the value <image pool id>/<uuid>; the per-volume object, with
    // csi.journalpool, and the image are in the image pool.
    let journal_io = conn.ioctx("cephfs_data", "").expect("journal pool");
    let m = {
        let mut m = mess(&conn, &pool, &tag);
        let u = uuid::Uuid::new_v4().to_string();
        m.image(&format!("{tag}-vol-{u}"));
        (m, u)
    };
    let (mut m, u) = m;
    let (name, image) = (format!("pvc-{u}"), format!("{tag}-vol-{u}"));
    let per_volume = format!("csi.volume.{u}");
    m.io.create_with_omap(
        &per_volume,
        &[
            ("csi.volname", name.as_bytes()),
            ("csi.imagename", image.as_bytes()),
            ("csi.imageid", b"1234abcd"),
            (
                "csi.journalpool",
                format!("{:016x}", journal_io.pool_id()).as_bytes(),
            ),
        ],
    )
    .expect("per-volume object");
    m.objects.push(per_volume.clone());
    let directory = format!("csi.volumes.{tag}");
    let mut journal = Objects {
        io: &journal_io,
        names: Vec::new(),
    };
    journal_io
        .omap_set(
            &directory,
            &[(
                format!("csi.volume.{name}").as_str(),
                format!("{:016x}/{u}", m.io.pool_id()).as_bytes(),
            )],
        )
        .expect("directory key");
    journal.names.push(directory.clone());

    // From the image pool: the image and its object belong to a journal elsewhere.
    let r = journal_doctor(&cfg, &sec, &pool, &tag, &["--fix"]);
    assert!(
        m.image_exists(&image),
        "a volume journaled in another pool was removed: {}",
        r.stdout
    );
    assert!(m.object_exists(&per_volume), "{}", r.stdout);
    for f in mentioning(&r, &u) {
        assert_ne!(f["status"], "fail", "reported as an orphan: {f}");
    }

    // From the journal pool (a user who may read it): the entry's image is in pool rbd, so
    // the entry is healthy and --fix leaves the key.
    let (_, admin_sec) = setup(
        dir.path(),
        &[c.monitors()],
        "admin",
        &c.get("FERRO_ADMIN_KEY"),
    );
    let r = journal_doctor(&cfg, &admin_sec, "cephfs_data", &tag, &["--fix"]);
    let keys = journal_io
        .omap_list(&directory, "", "", 10)
        .expect("read directory");
    assert_eq!(
        keys.len(),
        1,
        "the journal key of a live volume was removed: {}",
        r.stdout
    );
    for f in mentioning(&r, &u) {
        assert_ne!(f["status"], "fail", "reported as an orphan: {f}");
    }
    assert!(m.image_exists(&image));
    let j = r.check("journal");
    assert_eq!(j["status"], "ok", "{}", r.stdout);
    assert!(s(&j["summary"]).contains("1 entry with an image"), "{j}");
    drop(journal);
}

#[test]
fn journal_temp_clones_in_use_are_kept_and_leftovers_removed() {
    let c = common::cluster();
    let pool = c.get("FERRO_RBD_POOL");
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &key);
    let conn = admin();
    let tag = common::unique("doctortemp");
    let mut m = mess(&conn, &pool, &tag);
    let vol = |u: &str| format!("{tag}-vol-{u}");
    let uuid = || uuid::Uuid::new_v4().to_string();
    let (source, cloned, leftover, busy, parent) = (uuid(), uuid(), uuid(), uuid(), uuid());
    // A volume cloned from a volume, as ceph-csi lays it out: source -> <vol>-temp -> vol.
    m.entry(&format!("pvc-{source}"), &source, &vol(&source));
    m.image(&vol(&source));
    let temp = format!("{}-temp", vol(&cloned));
    m.clone_image(&vol(&source), &temp);
    m.entry(&format!("pvc-{cloned}"), &cloned, &vol(&cloned));
    m.clone_image(&temp, &vol(&cloned));
    // A -temp image whose volume is gone (a failed clone or delete): a leftover.
    let leftover_temp = format!("{}-temp", vol(&leftover));
    m.image(&leftover_temp);
    // A -temp image without its volume that still has a clone: not removable.
    let busy_temp = format!("{}-temp", vol(&busy));
    m.image(&busy_temp);
    m.clone_image(&busy_temp, &format!("{tag}-child-{busy}"));
    // A volume image no journal references whose clone a journal snapshot references.
    m.image(&vol(&parent));
    let snap_u = uuid();
    let snap_image = format!("{tag}-snap-{snap_u}");
    m.clone_image(&vol(&parent), &snap_image);
    ferroceph::journal::Journal::new(&m.io, ferroceph::journal::Kind::Snapshot, &tag)
        .reserve(
            &format!("snapshot-{snap_u}"),
            &snap_u,
            &std::collections::BTreeMap::from([
                ("csi.imagename".to_string(), snap_image.clone()),
                ("csi.imageid".to_string(), "1234abcd".to_string()),
                ("csi.source".to_string(), vol(&parent)),
            ]),
        )
        .expect("reserve snapshot");
    let snap_dir = format!("csi.snaps.{tag}");
    m.objects.push(format!("csi.snap.{snap_u}"));
    m.objects.push(snap_dir);

    // 1. Report: the leftover temp is an orphan; nothing in use is.
    let r = journal_doctor(&cfg, &sec, &pool, &tag, &[]);
    let f = findings(&r, "journal.orphan-temp", &leftover_temp);
    assert_eq!(
        f.len(),
        1,
        "a leftover -temp image is reported: {}",
        r.stdout
    );
    assert_eq!(f[0]["status"], "fail", "{}", f[0]);
    assert!(mentioning(&r, &temp).is_empty(), "{}", r.stdout);
    for f in mentioning(&r, &busy_temp) {
        assert_ne!(
            f["status"], "fail",
            "a parent with clones is not an orphan: {f}"
        );
    }
    for f in mentioning(&r, &vol(&parent)) {
        assert_ne!(
            f["status"], "fail",
            "a parent with clones is not an orphan: {f}"
        );
    }

    // 2. --fix removes the leftover only.
    let r = journal_doctor(&cfg, &sec, &pool, &tag, &["--fix"]);
    assert!(!m.image_exists(&leftover_temp), "{}", r.stdout);
    for i in [
        &vol(&source),
        &temp,
        &vol(&cloned),
        &busy_temp,
        &vol(&parent),
        &snap_image,
    ] {
        assert!(m.image_exists(i), "{i} was removed: {}", r.stdout);
    }
    let trash = rados::rbd::trash_list(&m.io).expect("trash list");
    assert!(
        trash.iter().all(|t| !t.name.starts_with(&tag)),
        "moved to the trash: {trash:?}"
    );
    r.assert_no_keys(&[]);
}
