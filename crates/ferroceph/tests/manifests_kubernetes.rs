//! The deployment artefacts as Kubernetes objects, checked without a cluster:
//!
//! - both kustomizations render with `kubectl kustomize`, and every object of them and of
//!   `examples/` validates against the Kubernetes API schemas (kubernetes-validate,
//!   strict; the snapshot.storage.k8s.io kinds against schemas written here);
//! - RBAC is consistent and narrow, RBD requires attach (csi-attacher, its RBAC) so
//!   Kubernetes runs its Multi-Attach check, StorageClass parameters are ones the driver
//!   parses and refer to shipped objects (secrets, the cluster map);
//! - `kubectl apply -k` installs no example object, Services target named container ports,
//!   and the restore/clone examples ask for at least their source's size.
//!
//! kubectl (Debian kubernetes-client) and kubernetes-validate (PyPI, in .venv-tools) come
//! from scripts/setup.sh; without them these tests fail, they do not skip.

mod common;

use common::manifests::*;
use common::workspace;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

#[test]
fn kustomizations_render_and_validate() {
    let mut problems = Vec::new();
    for driver in ["rbd", "cephfs"] {
        let (text, docs) = render(driver);
        assert!(docs.len() > 10, "{driver}: only {} objects", docs.len());
        problems.extend(validate(&format!("deploy/kubernetes/{driver}"), text));
        // Every namespaced object lands in the namespace the kustomization sets.
        for d in docs {
            let cluster_scoped = matches!(
                s(&d["kind"]),
                "CSIDriver"
                    | "StorageClass"
                    | "ClusterRole"
                    | "ClusterRoleBinding"
                    | "VolumeSnapshotClass"
            );
            if !cluster_scoped && d["metadata"]["namespace"] != "ferroceph" {
                problems.push(format!(
                    "{driver}: {} {} is not in namespace ferroceph",
                    d["kind"], d["metadata"]["name"]
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn examples_validate_and_refer_to_shipped_objects() {
    let mut problems = Vec::new();
    for driver in ["rbd", "cephfs"] {
        let (_, deploy) = render(driver);
        let dir = workspace().join("examples").join(driver);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        let names: Vec<String> = files
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        for want in [
            "pvc.yaml",
            "pod.yaml",
            "snapshot.yaml",
            "pvc-restore.yaml",
            "pod-restore.yaml",
            "pvc-clone.yaml",
            "static-pv.yaml",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "examples/{driver}/{want} is missing"
            );
        }
        if driver == "rbd" {
            assert!(names.iter().any(|n| n == "raw-block-pvc.yaml"));
            assert!(names.iter().any(|n| n == "raw-block-pod.yaml"));
        }
        // One stream per directory: kubernetes-validate takes a second to start.
        let mut stream = String::new();
        for f in &files {
            stream.push_str("---\n");
            stream.push_str(&std::fs::read_to_string(f).expect("read example"));
            stream.push('\n');
        }
        problems.extend(validate(&format!("examples/{driver}"), &stream));
        let all = yaml_docs(&stream);
        let driver_name = s(&kind(deploy, "CSIDriver")[0]["metadata"]["name"]).to_string();
        let pvcs: BTreeSet<String> = kind(&all, "PersistentVolumeClaim")
            .iter()
            .map(|p| s(&p["metadata"]["name"]).to_string())
            .collect();
        let snaps: BTreeSet<String> = kind(&all, "VolumeSnapshot")
            .iter()
            .map(|p| s(&p["metadata"]["name"]).to_string())
            .collect();
        for pvc in kind(&all, "PersistentVolumeClaim") {
            let sc = s(&pvc["spec"]["storageClassName"]);
            if !sc.is_empty() && named(deploy, "StorageClass", sc).is_none() {
                problems.push(format!(
                    "{driver}: PVC {} uses unknown StorageClass {sc}",
                    pvc["metadata"]["name"]
                ));
            }
            let src = &pvc["spec"]["dataSource"];
            match s(&src["kind"]) {
                "" => {}
                "PersistentVolumeClaim" if pvcs.contains(s(&src["name"])) => {}
                "VolumeSnapshot" if snaps.contains(s(&src["name"])) => {}
                other => problems.push(format!(
                    "{driver}: PVC {} has data source {other} {} that no example creates",
                    pvc["metadata"]["name"], src["name"]
                )),
            }
        }
        for snap in kind(&all, "VolumeSnapshot") {
            let class = s(&snap["spec"]["volumeSnapshotClassName"]);
            if named(deploy, "VolumeSnapshotClass", class).is_none() {
                problems.push(format!("{driver}: snapshot class {class} is not shipped"));
            }
            let src = s(&snap["spec"]["source"]["persistentVolumeClaimName"]);
            if !pvcs.contains(src) {
                problems.push(format!("{driver}: snapshot of unknown PVC {src}"));
            }
        }
        for pod in kind(&all, "Pod") {
            for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
                let claim = s(&v["persistentVolumeClaim"]["claimName"]);
                if !claim.is_empty() && !pvcs.contains(claim) {
                    problems.push(format!(
                        "{driver}: pod {} mounts unknown PVC {claim}",
                        pod["metadata"]["name"]
                    ));
                }
            }
        }
        for pv in kind(&all, "PersistentVolume") {
            let csi = &pv["spec"]["csi"];
            if csi["driver"] != driver_name.as_str() {
                problems.push(format!(
                    "{driver}: static PV driver {} is not {driver_name}",
                    csi["driver"]
                ));
            }
            if csi["volumeAttributes"]["staticVolume"] != "true" {
                problems.push(format!(
                    "{driver}: static PV without staticVolume: \"true\""
                ));
            }
            let secret = s(&csi["nodeStageSecretRef"]["name"]);
            if named(deploy, "Secret", secret).is_none() {
                problems.push(format!(
                    "{driver}: static PV refers to unknown secret {secret}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn rbac_is_consistent_and_narrow() {
    let mut problems = Vec::new();
    for driver in ["rbd", "cephfs"] {
        let (_, docs) = render(driver);
        for b in docs
            .iter()
            .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
        {
            let bname = format!("{driver}: {} {}", s(&b["kind"]), s(&b["metadata"]["name"]));
            let role_kind = s(&b["roleRef"]["kind"]);
            if named(docs, role_kind, s(&b["roleRef"]["name"])).is_none() {
                problems.push(format!(
                    "{bname}: refers to missing {role_kind} {}",
                    b["roleRef"]["name"]
                ));
            }
            for sub in b["subjects"].as_array().into_iter().flatten() {
                let sa = named(docs, "ServiceAccount", s(&sub["name"]));
                match sa {
                    Some(sa) if sa["metadata"]["namespace"] == sub["namespace"] => {}
                    _ => problems.push(format!(
                        "{bname}: subject {} in {} is not a shipped service account",
                        sub["name"], sub["namespace"]
                    )),
                }
                if s(&sub["name"]).ends_with("-node") {
                    problems.push(format!("{bname}: the node service account needs no role"));
                }
            }
        }
        for r in docs
            .iter()
            .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
        {
            for rule in r["rules"].as_array().into_iter().flatten() {
                let list = |k: &str| -> Vec<String> {
                    rule[k]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|v| s(v).to_string())
                        .collect()
                };
                let (resources, verbs) = (list("resources"), list("verbs"));
                if resources.iter().chain(verbs.iter()).any(|x| x == "*") {
                    problems.push(format!(
                        "{driver}: {} grants a wildcard",
                        r["metadata"]["name"]
                    ));
                }
                if resources.iter().any(|x| x == "secrets") && verbs != ["get"] {
                    problems.push(format!("{driver}: secrets need only get, not {verbs:?}"));
                }
            }
        }
        // What csi-attacher needs where attach is required (its deploy/kubernetes/rbac.yaml).
        let attach_required = kind(docs, "CSIDriver")
            .iter()
            .any(|d| d["spec"]["attachRequired"] == true);
        let controller_role = named(
            docs,
            "ClusterRole",
            &format!("ferroceph-{driver}-controller"),
        )
        .unwrap_or_else(|| panic!("{driver}: no controller ClusterRole"));
        let grants = |group: &str, resource: &str, verb: &str| {
            controller_role["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| {
                    let has = |k: &str, v: &str| {
                        r[k].as_array().is_some_and(|a| a.iter().any(|x| x == v))
                    };
                    has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
                })
        };
        let attacher_rules: &[(&str, &str, &[&str])] = &[
            ("", "persistentvolumes", &["get", "list", "watch", "patch"]),
            ("storage.k8s.io", "csinodes", &["get", "list", "watch"]),
            (
                "storage.k8s.io",
                "volumeattachments",
                &["get", "list", "watch", "patch"],
            ),
            ("storage.k8s.io", "volumeattachments/status", &["patch"]),
        ];
        for (group, resource, verbs) in attacher_rules {
            for verb in *verbs {
                let has = grants(group, resource, verb);
                if attach_required && !has {
                    problems.push(format!(
                        "{driver}: csi-attacher needs {verb} on {resource}, the controller role lacks it"
                    ));
                }
                if !attach_required && has && resource.starts_with("volumeattachments") {
                    problems.push(format!(
                        "{driver}: no attach step, yet the controller may {verb} {resource}"
                    ));
                }
            }
        }
        let node_sa = named(docs, "ServiceAccount", &format!("ferroceph-{driver}-node"))
            .unwrap_or_else(|| panic!("{driver}: no node service account"));
        assert_eq!(node_sa["automountServiceAccountToken"], false);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn storage_classes_parse_and_refer_to_shipped_objects() {
    use ferroceph::doctor::{duplicate_endpoints, parse_monitor};
    let mut problems = Vec::new();
    for driver in ["rbd", "cephfs"] {
        let (_, docs) = render(driver);
        let driver_name = format!("{driver}.ferroceph.io");
        // The cluster map loads with the driver's own loader, and lists each monitor once.
        let cms = kind(docs, "ConfigMap");
        assert_eq!(cms.len(), 1, "{driver}: one ConfigMap expected");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(&path, s(&cms[0]["data"]["config.json"])).expect("write");
        let clusters = ferroceph::config::ClusterMap::new(&path)
            .clusters()
            .unwrap_or_else(|e| panic!("{driver}: config.json: {e}"));
        let ids: BTreeSet<String> = clusters.iter().map(|c| c.cluster_id.clone()).collect();
        for c in clusters.iter() {
            let eps: Vec<_> = c
                .monitors
                .iter()
                .flat_map(|m| parse_monitor(m).unwrap_or_else(|e| panic!("{driver}: {e}")))
                .collect();
            assert!(!eps.is_empty(), "{driver}: no monitors");
            assert!(
                duplicate_endpoints(&eps).is_empty(),
                "{driver}: duplicate monitors"
            );
        }

        let classes = kind(docs, "StorageClass");
        assert!(!classes.is_empty());
        for sc in classes
            .iter()
            .chain(kind(docs, "VolumeSnapshotClass").iter())
        {
            let scname = format!(
                "{driver}: {} {}",
                s(&sc["kind"]),
                s(&sc["metadata"]["name"])
            );
            let provisioner = if sc["kind"] == "StorageClass" {
                &sc["provisioner"]
            } else {
                &sc["driver"]
            };
            if provisioner != driver_name.as_str() {
                problems.push(format!(
                    "{scname}: provisioner {provisioner} is not {driver_name}"
                ));
            }
            let params: HashMap<String, String> = sc["parameters"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), s(v).to_string()))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(id) = params.get("clusterID") {
                if !ids.contains(id) {
                    problems.push(format!("{scname}: clusterID {id} is not in config.json"));
                }
            }
            // Secrets named by the sidecar parameters exist, in that namespace, with keys
            // the driver reads.
            let mut by_kind: BTreeMap<String, (String, String)> = BTreeMap::new();
            for (k, v) in &params {
                if let Some(rest) = k.strip_prefix("csi.storage.k8s.io/") {
                    if let Some(which) = rest.strip_suffix("-secret-name") {
                        by_kind.entry(which.to_string()).or_default().0 = v.clone();
                    } else if let Some(which) = rest.strip_suffix("-secret-namespace") {
                        by_kind.entry(which.to_string()).or_default().1 = v.clone();
                    }
                }
            }
            if by_kind.is_empty() {
                problems.push(format!("{scname}: names no secrets"));
            }
            for (which, (name, ns)) in by_kind {
                let secret = named(docs, "Secret", &name)
                    .filter(|sec| sec["metadata"]["namespace"] == ns.as_str());
                let Some(secret) = secret else {
                    problems.push(format!(
                        "{scname}: {which} secret {ns}/{name} is not shipped"
                    ));
                    continue;
                };
                let keys: BTreeSet<&str> = secret["stringData"]
                    .as_object()
                    .into_iter()
                    .chain(secret["data"].as_object())
                    .flat_map(|m| m.keys().map(String::as_str))
                    .collect();
                let usable = (keys.contains("userID") && keys.contains("userKey"))
                    || (keys.contains("adminID") && keys.contains("adminKey"))
                    || keys.contains("key");
                if !usable {
                    problems.push(format!(
                        "{scname}: secret {name} has no credentials the driver reads ({keys:?})"
                    ));
                }
            }
            if sc["kind"] == "StorageClass" {
                let parsed = match driver {
                    "rbd" => ferroceph::rbd::params::RbdParams::parse(&params)
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    _ => ferroceph::cephfs::params::FsParams::parse(&params)
                        .map(drop)
                        .map_err(|e| e.to_string()),
                };
                if let Err(e) = parsed {
                    problems.push(format!("{scname}: the driver rejects its parameters: {e}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn kustomizations_install_no_example_objects() {
    let mut problems = Vec::new();
    for driver in ["rbd", "cephfs"] {
        let (_, docs) = render(driver);
        for d in docs.iter() {
            let what = format!("{driver}: {} {}", s(&d["kind"]), s(&d["metadata"]["name"]));
            if d["kind"] == "StorageClass" && !d["parameters"]["monitors"].is_null() {
                problems.push(format!(
                    "{what}: a legacy example StorageClass is installed"
                ));
            }
            if d["kind"] == "Secret" && d["type"] == "kubernetes.io/rbd" {
                problems.push(format!("{what}: an in-tree example Secret is installed"));
            }
        }
    }
    // The legacy StorageClass lives in examples/, complete: the seed-002 form (in-tree
    // parameters, only the provisioner changed), parameters the driver accepts, and the
    // in-tree Secrets its csi.storage.k8s.io parameters name.
    let path = workspace().join("examples/rbd/storageclass-legacy.yaml");
    let docs = yaml_docs(&std::fs::read_to_string(&path).expect("legacy example"));
    let legacy = named(&docs, "StorageClass", "ferroceph-rbd-legacy").expect("legacy SC");
    assert_eq!(legacy["provisioner"], "rbd.ferroceph.io");
    for k in [
        "monitors",
        "adminId",
        "pool",
        "userId",
        "fsType",
        "imageFeatures",
    ] {
        assert!(legacy["parameters"][k].is_string(), "legacy SC lacks {k}");
    }
    assert_eq!(legacy["parameters"]["imageFormat"], "2");
    let params: HashMap<String, String> = legacy["parameters"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), s(v).to_string()))
        .collect();
    if let Err(e) = ferroceph::rbd::params::RbdParams::parse(&params) {
        problems.push(format!("legacy SC: the driver rejects its parameters: {e}"));
    }
    for (k, v) in &params {
        if k.starts_with("csi.storage.k8s.io/") && k.ends_with("-secret-name") {
            match named(&docs, "Secret", v) {
                Some(sec) if sec["stringData"]["key"].is_string() => {}
                _ => problems.push(format!("legacy SC: {k} names {v}, not in the example")),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn services_target_named_container_ports() {
    let mut problems = Vec::new();
    for driver in ["rbd", "cephfs"] {
        let (_, docs) = render(driver);
        let services = kind(docs, "Service");
        assert!(!services.is_empty(), "{driver}: no Service");
        for svc in services {
            let sname = format!("{driver}: Service {}", s(&svc["metadata"]["name"]));
            let selector = svc["spec"]["selector"].as_object().expect("selector");
            let pods: Vec<&Value> = workloads(docs)
                .into_iter()
                .filter(|w| {
                    let labels = &w["spec"]["template"]["metadata"]["labels"];
                    selector.iter().all(|(k, v)| &labels[k] == v)
                })
                .collect();
            if pods.is_empty() {
                problems.push(format!("{sname}: selects no pod"));
            }
            for port in svc["spec"]["ports"].as_array().into_iter().flatten() {
                let Some(target) = port["targetPort"].as_str() else {
                    problems.push(format!(
                        "{sname}: targetPort {} is a number, not the container's port name",
                        port["targetPort"]
                    ));
                    continue;
                };
                for w in &pods {
                    let declared = containers(w)
                        .into_iter()
                        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                        .find(|p| p["name"] == target);
                    match declared {
                        Some(p) if p["containerPort"] == port["port"] => {}
                        Some(p) => problems.push(format!(
                            "{sname}: port {} targets {target}, which is {} in {}",
                            port["port"], p["containerPort"], w["metadata"]["name"]
                        )),
                        None => problems.push(format!(
                            "{sname}: {} declares no port named {target}",
                            w["metadata"]["name"]
                        )),
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn restore_and_clone_examples_ask_for_at_least_the_source_size() {
    let mut problems = Vec::new();
    for driver in ["rbd", "cephfs"] {
        let dir = workspace().join("examples").join(driver);
        let files: Vec<(String, String, Vec<Value>)> = std::fs::read_dir(&dir)
            .expect("examples")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .map(|p| {
                let text = std::fs::read_to_string(&p).expect("read");
                let docs = yaml_docs(&text);
                (p.display().to_string(), text, docs)
            })
            .collect();
        let all: Vec<&Value> = files.iter().flat_map(|f| f.2.iter()).collect();
        let size_of_pvc = |name: &str| {
            all.iter()
                .find(|d| d["kind"] == "PersistentVolumeClaim" && d["metadata"]["name"] == name)
                .map(|d| quantity(s(&d["spec"]["resources"]["requests"]["storage"])))
        };
        let mut sources = 0;
        for (path, text, docs) in &files {
            for pvc in kind(docs, "PersistentVolumeClaim") {
                let src = &pvc["spec"]["dataSource"];
                let source_pvc = match s(&src["kind"]) {
                    "" => continue,
                    "PersistentVolumeClaim" => s(&src["name"]).to_string(),
                    "VolumeSnapshot" => all
                        .iter()
                        .find(|d| {
                            d["kind"] == "VolumeSnapshot" && d["metadata"]["name"] == src["name"]
                        })
                        .map(|d| s(&d["spec"]["source"]["persistentVolumeClaimName"]).to_string())
                        .unwrap_or_default(),
                    other => {
                        problems.push(format!("{path}: data source {other}"));
                        continue;
                    }
                };
                sources += 1;
                let want = quantity(s(&pvc["spec"]["resources"]["requests"]["storage"]));
                match size_of_pvc(&source_pvc) {
                    Some(have) if want >= have => {}
                    Some(have) => problems.push(format!(
                        "{path}: asks for {want} bytes, less than the source's {have}"
                    )),
                    None => problems.push(format!("{path}: source PVC {source_pvc} not found")),
                }
                if !(text.contains("Request at least") && text.contains("OutOfRange")) {
                    problems.push(format!(
                        "{path}: does not say a restore/clone must request at least the source's size"
                    ));
                }
            }
        }
        assert!(sources >= 2, "{driver}: no restore and clone examples");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
