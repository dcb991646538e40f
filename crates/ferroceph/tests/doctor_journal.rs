//! `ferroceph doctor` journal consistency against the dev cluster: orphaned journal
//! entries, images and snapshots are reported and `--fix` removes them, but never an image
//! in use nor a create still in flight.

mod common;

use common::doctor::*;

#[test]
fn journal_orphans_are_reported_and_fixed() {
    let c = common::cluster();
    let pool = c.get("FERRO_RBD_POOL");
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &key);
    let conn = admin();
    let tag = common::unique("doctortest");
    let vol_prefix = format!("{tag}-vol-");
    let snap_prefix = format!("{tag}-snap-");
    let (m, o) = plant_orphans(&conn, &pool, &tag);
    // A PV list without the healthy volume.
    let pv_empty = dir.path().join("pv-empty.json");
    std::fs::write(&pv_empty, r#"{"apiVersion": "v1", "items": []}"#).expect("write pv json");
    let (healthy_name, handle, dangling_obj) = (&o.healthy_name, &o.handle, &o.dangling_obj);
    let pv_full = dir.path().join("pv-full.json");
    let pvs = serde_json::json!({"items": [{"metadata": {"name": healthy_name},
        "spec": {"csi": {"driver": "rbd.ferroceph.io", "volumeHandle": handle}}}]});
    std::fs::write(&pv_full, pvs.to_string()).expect("write pv json");

    let base: Vec<String> = [
        "--role",
        "controller",
        "--configpath",
        &cfg,
        "--secrets-file",
        &sec,
        "--pool",
        &pool,
        "--instanceid",
        &tag,
        "--volume-name-prefix",
        &vol_prefix,
        "--snapshot-name-prefix",
        &snap_prefix,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = base.iter().map(String::as_str).collect();
        a.extend_from_slice(extra);
        doctor(&a)
    };

    // 1. Report only: each problem precisely, exit 1, nothing changed.
    let pv_empty_s = pv_empty.display().to_string();
    let r = run(&["--json", "--pv-json", &pv_empty_s]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_orphans_reported(&r, &o, &m);

    // 2. --fix: prints the plan first, then removes exactly the orphans.
    let r = run(&["--fix"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_orphans_fixed(&r, &o, &m);

    // 3. Clean afterwards (once the dangling object is gone), with a PV list that has the
    // volume.
    m.io.remove_object(dangling_obj)
        .expect("remove dangling object");
    assert!(rados::rbd::remove(&m.io, &o.img(&o.dangling)).is_ok());
    let pv_full_s = pv_full.display().to_string();
    let r = run(&["--json", "--pv-json", &pv_full_s]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    let j = r.check("journal");
    assert_eq!(j["status"], "ok", "{j}");
    assert!(s(&j["summary"]).contains("1 entry with an image"), "{j}");
}

/// What journal_orphans_are_reported_and_fixed plants in the journal of instance `tag`.
struct Orphans {
    pool: String,
    tag: String,
    vol_prefix: String,
    /// A healthy volume: full journal entry and its image.
    healthy: String,
    healthy_name: String,
    /// An orphaned image: no journal at all.
    orphan_img: String,
    /// An orphaned journal key: directory key + per-volume object, no image.
    orphan_key: String,
    key_name: String,
    /// An image whose per-volume object has no directory key (interrupted delete).
    dangling: String,
    dangling_obj: String,
    /// The healthy volume's handle.
    handle: String,
}

impl Orphans {
    fn img(&self, u: &str) -> String {
        format!("{}{u}", self.vol_prefix)
    }
}

/// Plants a healthy volume and the orphans of [`Orphans`] in `pool`.
fn plant_orphans(conn: &rados::Cluster, pool: &str, tag: &str) -> (JournalMess, Orphans) {
    let c = common::cluster();
    let vol_prefix = format!("{tag}-vol-");
    let mut m = JournalMess {
        io: conn.ioctx(pool, "").expect("ioctx"),
        instance: tag.to_string(),
        images: Vec::new(),
        entries: Vec::new(),
        objects: Vec::new(),
    };
    let uuid = || uuid::Uuid::new_v4().to_string();
    let (healthy, orphan_img, orphan_key, dangling) = (uuid(), uuid(), uuid(), uuid());
    let img = |u: &str| format!("{vol_prefix}{u}");
    // A healthy volume: full journal entry and its image.
    let healthy_name = format!("pvc-{healthy}");
    m.entry(&healthy_name, &healthy, &img(&healthy));
    m.image(&img(&healthy));
    // An orphaned image: no journal at all.
    m.image(&img(&orphan_img));
    // An orphaned journal key: directory key + per-volume object, no image.
    let key_name = format!("pvc-{orphan_key}");
    m.entry(&key_name, &orphan_key, &img(&orphan_key));
    // An image whose per-volume object has no directory key (interrupted delete).
    m.image(&img(&dangling));
    let dangling_obj = format!("csi.volume.{dangling}");
    m.io.create_with_omap(
        &dangling_obj,
        &[
            ("csi.volname", format!("pvc-{dangling}").as_bytes()),
            ("csi.imagename", img(&dangling).as_bytes()),
        ],
    )
    .expect("create per-volume object");
    m.objects.push(dangling_obj.clone());
    let pool_id = m.io.pool_id();
    let handle = ferroceph::volid::CsiId::new(&c.fsid(), pool_id, &healthy)
        .expect("handle")
        .to_string();
    let o = Orphans {
        pool: pool.to_string(),
        tag: tag.to_string(),
        vol_prefix,
        healthy,
        healthy_name,
        orphan_img,
        orphan_key,
        key_name,
        dangling,
        dangling_obj,
        handle,
    };
    (m, o)
}

/// Report only: each problem precisely, exit 1, nothing changed.
fn assert_orphans_reported(r: &Run, o: &Orphans, m: &JournalMess) {
    let Orphans {
        pool,
        tag,
        healthy,
        orphan_img,
        orphan_key,
        key_name,
        dangling,
        dangling_obj,
        handle,
        ..
    } = o;
    let img = |u: &str| o.img(u);
    let one = |id: &str, u: &str| {
        let f = findings(r, id, u);
        assert_eq!(f.len(), 1, "{id} for {u}: {}", r.stdout);
        assert_eq!(f[0]["status"], "fail", "{}", f[0]);
        assert!(f[0]["fix"].as_str().is_some_and(|f| !f.is_empty()));
        f[0].clone()
    };
    let f = one("journal.orphan-image", orphan_img);
    assert!(
        s(&f["summary"]).contains(&format!("{pool}/{}", img(orphan_img))),
        "{f}"
    );
    assert!(s(&f["fix"]).contains("rbd trash mv"), "{f}");
    let f = one("journal.orphan-key", orphan_key);
    assert!(
        s(&f["summary"]).contains(&format!("csi.volume.{key_name}")),
        "{f}"
    );
    assert!(
        s(&f["fix"]).contains(&format!(
            "rmomapkey csi.volumes.{tag} csi.volume.{key_name}"
        )),
        "{f}"
    );
    // An image with a per-volume object but no key in this instance's directory may be
    // another instance's volume: reported, never called an orphan.
    assert!(
        findings(r, "journal.orphan-image", dangling).is_empty(),
        "{}",
        r.stdout
    );
    let f = findings(r, "journal.dangling-object", dangling);
    assert_eq!(f.len(), 1, "{}", r.stdout);
    assert_eq!(f[0]["status"], "warn", "{}", f[0]);
    assert!(
        s(&f[0]["fix"]).contains(&format!("rm {dangling_obj}")),
        "{}",
        f[0]
    );
    let f = one("journal.no-pv", healthy);
    assert!(s(&f["summary"]).contains(handle.as_str()), "{f}");
    // The healthy volume is reported for nothing else.
    let about_healthy: Vec<_> = r.report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| s(&c["summary"]).contains(healthy.as_str()))
        .collect();
    assert_eq!(about_healthy.len(), 1, "{}", r.stdout);
    r.assert_no_keys(&[]);
    assert!(m.image_exists(&img(orphan_img)) && m.image_exists(&img(dangling)));
    assert!(m.key_exists(key_name) && m.object_exists(dangling_obj));
}

/// --fix: prints the plan first, then removes exactly the orphans.
fn assert_orphans_fixed(r: &Run, o: &Orphans, m: &JournalMess) {
    let Orphans {
        pool,
        healthy,
        healthy_name,
        orphan_img,
        orphan_key,
        key_name,
        dangling,
        dangling_obj,
        ..
    } = o;
    let img = |u: &str| o.img(u);
    let (plan, report) = r
        .stdout
        .split_once("\n\n")
        .unwrap_or_else(|| panic!("no plan before the report:\n{}", r.stdout));
    assert!(plan.starts_with("--fix will remove:"), "{}", r.stdout);
    let plan_lines: Vec<&str> = plan.lines().skip(1).collect();
    assert_eq!(plan_lines.len(), 2, "{plan}");
    assert!(
        plan_lines
            .iter()
            .any(|l| l.contains(&format!("image {pool}/{}", img(orphan_img)))),
        "{plan}"
    );
    assert!(
        plan.contains(&format!("journal key csi.volume.{key_name}")),
        "{plan}"
    );
    assert!(!plan.contains(dangling.as_str()), "{plan}");
    assert!(!plan.contains(healthy.as_str()), "{plan}");
    assert!(report.contains("fixed: removed"), "{}", r.stdout);
    r.assert_no_keys(&[]);
    assert!(!m.image_exists(&img(orphan_img)));
    assert!(m.image_exists(&img(dangling)));
    assert!(m.object_exists(dangling_obj));
    assert!(!m.key_exists(key_name));
    assert!(!m.object_exists(&format!("csi.volume.{orphan_key}")));
    // The healthy volume is untouched.
    assert!(m.image_exists(&img(healthy)));
    assert!(m.key_exists(healthy_name));
    assert!(m.object_exists(&format!("csi.volume.{healthy}")));
}

#[test]
fn journal_without_a_pool_listing_nothing_is_checked_or_fixed() {
    let c = common::cluster();
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &key);
    let r = doctor(&[
        "--role",
        "controller",
        "--json",
        "--fix",
        "--configpath",
        &cfg,
        "--secrets-file",
        &sec,
        "--pool",
        &common::unique("no-such-pool"),
    ]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_eq!(r.check("journal")["status"], "skip", "{}", r.stdout);
    assert!(!r.stderr.contains("will remove"), "{}", r.stderr);
}

#[test]
fn journal_fix_leaves_an_orphaned_image_in_use() {
    let c = common::cluster();
    let pool = c.get("FERRO_RBD_POOL");
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &key);
    let conn = admin();
    let tag = common::unique("doctorbusy");
    let vol_prefix = format!("{tag}-vol-");
    let mut m = JournalMess {
        io: conn.ioctx(&pool, "").expect("ioctx"),
        instance: tag.clone(),
        images: Vec::new(),
        entries: Vec::new(),
        objects: Vec::new(),
    };
    let busy = format!("{vol_prefix}{}", uuid::Uuid::new_v4());
    m.image(&busy);
    // Opened read-write: the handle watches the header, as a mapped image's client does.
    let held = rados::rbd::Image::open(&m.io, &busy).expect("open image");
    let r = doctor(&[
        "--role",
        "controller",
        "--configpath",
        &cfg,
        "--secrets-file",
        &sec,
        "--pool",
        &pool,
        "--instanceid",
        &tag,
        "--volume-name-prefix",
        &vol_prefix,
        "--snapshot-name-prefix",
        &format!("{tag}-snap-"),
        "--fix",
    ]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("watcher(s)"), "{}", r.stdout);
    assert!(m.image_exists(&busy), "an image in use was removed");
    drop(held);
}

#[test]
fn journal_fresh_incomplete_entry_is_a_create_in_flight() {
    let c = common::cluster();
    let pool = c.get("FERRO_RBD_POOL");
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &key);
    let conn = admin();
    let tag = common::unique("doctorflight");
    let vol_prefix = format!("{tag}-vol-");
    let mut m = JournalMess {
        io: conn.ioctx(&pool, "").expect("ioctx"),
        instance: tag.clone(),
        images: Vec::new(),
        entries: Vec::new(),
        objects: Vec::new(),
    };
    let u = uuid::Uuid::new_v4().to_string();
    let name = format!("pvc-{u}");
    // Reserved, image not created yet: no csi.imageid.
    let attrs = std::collections::BTreeMap::from([(
        "csi.imagename".to_string(),
        format!("{vol_prefix}{u}"),
    )]);
    m.journal().reserve(&name, &u, &attrs).expect("reserve");
    m.entries.push((name.clone(), u.clone()));
    let r = doctor(&[
        "--role",
        "controller",
        "--json",
        "--fix",
        "--configpath",
        &cfg,
        "--secrets-file",
        &sec,
        "--pool",
        &pool,
        "--instanceid",
        &tag,
        "--volume-name-prefix",
        &vol_prefix,
        "--snapshot-name-prefix",
        &format!("{tag}-snap-"),
    ]);
    assert_eq!(r.code, 0, "warnings only: {}", r.stdout);
    let f = findings(&r, "journal.in-flight", &u);
    assert_eq!(f.len(), 1, "{}", r.stdout);
    assert_eq!(f[0]["status"], "warn");
    assert!(
        m.key_exists(&name),
        "--fix removed an entry that may be in flight"
    );
}
