//! The deployment artefacts, checked without a Kubernetes cluster or an image registry:
//!
//! - both kustomizations render with `kubectl kustomize`, and every object of them and of
//!   `examples/` validates against the Kubernetes API schemas (kubernetes-validate,
//!   strict; the snapshot.storage.k8s.io kinds against schemas written here);
//! - every flag our containers get is accepted by the binary (`ferroceph <args> --help`),
//!   the sidecars get only flags they document, and the pieces fit together (sockets,
//!   driver names, volumes, secrets, service accounts, StorageClass parameters the driver
//!   parses, the cluster map);
//! - every sidecar image is a released kubernetes-csi tag (the table in deploy/README.md),
//!   `kubectl apply -k` installs no example object, Services target named container ports,
//!   RBD requires attach (csi-attacher, its RBAC) so Kubernetes runs its Multi-Attach check,
//!   and the restore/clone examples ask for at least their source's size;
//! - the Containerfile installs only packages Debian bookworm has, ships every tool the
//!   node plugin runs, and its entrypoint is the binary it builds.
//!
//! kubectl (Debian kubernetes-client) and kubernetes-validate (PyPI, in .venv-tools) come
//! from scripts/setup.sh; without them these tests fail, they do not skip.

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Kubernetes versions the objects must be valid for: the newest kubernetes-validate
/// knows and an older one still widely run.
const KUBE_VERSIONS: &[&str] = &["1.37.0", "1.30.0"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferroceph")
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kubectl() -> &'static str {
    static K: OnceLock<String> = OnceLock::new();
    K.get_or_init(|| {
        let k = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string());
        let ok = Command::new(&k)
            .args(["version", "--client"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "kubectl ({k}) is missing: run scripts/setup.sh (Debian package kubernetes-client) or set KUBECTL"
        );
        k
    })
}

fn venv_bin(name: &str) -> PathBuf {
    let p = workspace().join(".venv-tools/bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (it installs kubernetes-validate from PyPI into .venv-tools)",
        p.display()
    );
    p
}

fn python() -> PathBuf {
    venv_bin("python")
}

/// YAML stream → JSON values, with the venv's PyYAML.
fn yaml_docs(text: &str) -> Vec<Value> {
    let script = "import sys, json, yaml\n\
                  docs = [d for d in yaml.safe_load_all(sys.stdin) if d is not None]\n\
                  json.dump(docs, sys.stdout)";
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write yaml");
    }
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "YAML does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json from python")
}

fn render(driver: &str) -> &'static (String, Vec<Value>) {
    static R: OnceLock<HashMap<String, (String, Vec<Value>)>> = OnceLock::new();
    let all = R.get_or_init(|| {
        ["rbd", "cephfs"]
            .iter()
            .map(|d| {
                let dir = workspace().join("deploy/kubernetes").join(d);
                let (ok, out, err) = run(Command::new(kubectl()).arg("kustomize").arg(&dir));
                assert!(ok, "kubectl kustomize {} failed:\n{err}", dir.display());
                let docs = yaml_docs(&out);
                (d.to_string(), (out, docs))
            })
            .collect()
    });
    &all[driver]
}

fn kind<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == k).collect()
}

fn named<'a>(docs: &'a [Value], k: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == k && d["metadata"]["name"] == name)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

// -----------------------------------------------------------------------------------------
// Schema validation
// -----------------------------------------------------------------------------------------

/// Schemas of the snapshot.storage.k8s.io/v1 kinds we ship (the CRDs are not part of the
/// core API schemas kubernetes-validate carries). Strict: unknown fields are errors.
fn snapshot_schemas() -> Value {
    let meta = json!({"type": "object", "required": ["name"],
        "properties": {"name": {"type": "string", "minLength": 1},
                       "namespace": {"type": "string"},
                       "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                       "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
        "additionalProperties": false});
    json!({
        "VolumeSnapshotClass": {
            "type": "object",
            "required": ["apiVersion", "kind", "metadata", "driver", "deletionPolicy"],
            "properties": {
                "apiVersion": {"const": "snapshot.storage.k8s.io/v1"},
                "kind": {"const": "VolumeSnapshotClass"},
                "metadata": meta,
                "driver": {"type": "string", "minLength": 1},
                "deletionPolicy": {"enum": ["Delete", "Retain"]},
                "parameters": {"type": "object", "additionalProperties": {"type": "string"}}
            },
            "additionalProperties": false
        },
        "VolumeSnapshot": {
            "type": "object",
            "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {
                "apiVersion": {"const": "snapshot.storage.k8s.io/v1"},
                "kind": {"const": "VolumeSnapshot"},
                "metadata": meta,
                "spec": {
                    "type": "object",
                    "required": ["source"],
                    "properties": {
                        "volumeSnapshotClassName": {"type": "string"},
                        "source": {
                            "type": "object",
                            "properties": {
                                "persistentVolumeClaimName": {"type": "string"},
                                "volumeSnapshotContentName": {"type": "string"}
                            },
                            "additionalProperties": false,
                            "minProperties": 1,
                            "maxProperties": 1
                        }
                    },
                    "additionalProperties": false
                }
            },
            "additionalProperties": false
        }
    })
}

/// Validates a YAML stream: core kinds with kubernetes-validate (strict, every version in
/// KUBE_VERSIONS), snapshot kinds with `snapshot_schemas`. Returns the problems.
fn validate(label: &str, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("objects.yaml");
    std::fs::write(&file, text).expect("write objects");
    let kv = venv_bin("kubernetes-validate");
    for version in KUBE_VERSIONS {
        let (_ok, out, err) = run(Command::new(&kv)
            .args(["--strict", "--kubernetes-version", version])
            .arg(&file));
        let mut passed = 0;
        for line in out.lines().chain(err.lines()) {
            let line = line.replace(&file.display().to_string(), label);
            if line.starts_with("INFO") && line.contains(" passed ") {
                passed += 1;
            } else if line.starts_with("WARN")
                && line.contains("Couldn't find schema for kind")
                && line.contains("snapshot.storage.k8s.io/v1")
            {
                // Checked below against our own schemas.
            } else if !line.trim().is_empty() {
                problems.push(format!("[k8s {version}] {line}"));
            }
        }
        let core = yaml_docs(text)
            .iter()
            .filter(|d| !s(&d["apiVersion"]).starts_with("snapshot.storage.k8s.io/"))
            .count();
        if passed != core {
            problems.push(format!(
                "[k8s {version}] {label}: {passed} of {core} core objects passed validation"
            ));
        }
    }
    // snapshot.storage.k8s.io kinds
    let snaps: Vec<Value> = yaml_docs(text)
        .into_iter()
        .filter(|d| s(&d["apiVersion"]).starts_with("snapshot.storage.k8s.io/"))
        .collect();
    if !snaps.is_empty() {
        let script = "import sys, json, jsonschema\n\
                      schemas, docs = json.load(sys.stdin)\n\
                      for d in docs:\n\
                      \x20   k = d.get('kind')\n\
                      \x20   if k not in schemas:\n\
                      \x20       print(f'{k}: no schema for this kind'); continue\n\
                      \x20   for e in jsonschema.Draft7Validator(schemas[k]).iter_errors(d):\n\
                      \x20       print(f\"{k}/{d.get('metadata', {}).get('name')}: {'/'.join(map(str, e.path))}: {e.message}\")\n";
        let mut child = Command::new(python())
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(json!([snapshot_schemas(), snaps]).to_string().as_bytes())
                .expect("write");
        }
        let out = child.wait_with_output().expect("python");
        assert!(
            out.status.success(),
            "jsonschema failed to run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            problems.push(format!("{label}: {line}"));
        }
    }
    problems
}

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

// -----------------------------------------------------------------------------------------
// Flags and wiring
// -----------------------------------------------------------------------------------------

/// Flags each kubernetes-csi sidecar documents (README "Command line options"), limited to
/// the ones a deployment like ours may reasonably set.
fn sidecar_flags(image: &str) -> Option<&'static [&'static str]> {
    let name = image.rsplit('/').next()?.split(':').next()?;
    Some(match name {
        "csi-provisioner" => &[
            "csi-address",
            "v",
            "timeout",
            "retry-interval-start",
            "retry-interval-max",
            "leader-election",
            "leader-election-namespace",
            "extra-create-metadata",
            "default-fstype",
            "http-endpoint",
            "worker-threads",
            "feature-gates",
            "immediate-topology",
            "prevent-volume-mode-conversion",
            "kube-api-qps",
            "kube-api-burst",
            "volume-name-prefix",
            "volume-name-uuid-length",
        ],
        "csi-resizer" => &[
            "csi-address",
            "v",
            "timeout",
            "retry-interval-start",
            "retry-interval-max",
            "leader-election",
            "leader-election-namespace",
            "handle-volume-inuse-error",
            "http-endpoint",
            "workers",
            "feature-gates",
            "kube-api-qps",
            "kube-api-burst",
        ],
        "csi-snapshotter" => &[
            "csi-address",
            "v",
            "timeout",
            "retry-interval-start",
            "retry-interval-max",
            "leader-election",
            "leader-election-namespace",
            "extra-create-metadata",
            "http-endpoint",
            "worker-threads",
            "feature-gates",
            "kube-api-qps",
            "kube-api-burst",
            "snapshot-name-prefix",
            "snapshot-name-uuid-length",
        ],
        "csi-attacher" => &[
            "csi-address",
            "v",
            "timeout",
            "retry-interval-start",
            "retry-interval-max",
            "leader-election",
            "leader-election-namespace",
            "http-endpoint",
            "worker-threads",
            "kube-api-qps",
            "kube-api-burst",
            "reconcile-sync",
        ],
        "csi-node-driver-registrar" => &[
            "v",
            "csi-address",
            "kubelet-registration-path",
            "http-endpoint",
            "timeout",
            "plugin-registration-path",
        ],
        _ => return None,
    })
}

fn is_ours(image: &str) -> bool {
    let repo = image.split(':').next().unwrap_or("");
    repo == "ferroceph" || repo.ends_with("/ferroceph")
}

/// Container args with `$(VAR)` expanded from the container's env (fieldRef values get a
/// plausible stand-in); an undefined variable is an error, as Kubernetes would pass it on
/// literally.
fn expanded_args(c: &Value) -> Result<Vec<String>, String> {
    let mut env: HashMap<String, String> = HashMap::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let v = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else {
            match s(&e["valueFrom"]["fieldRef"]["fieldPath"]) {
                "spec.nodeName" => "node-1".into(),
                "status.podIP" => "10.0.0.9".into(),
                "metadata.namespace" => "ferroceph".into(),
                other => format!("<{other}>"),
            }
        };
        env.insert(s(&e["name"]).to_string(), v);
    }
    let mut out = Vec::new();
    for a in c["args"].as_array().into_iter().flatten() {
        let mut a = s(a).to_string();
        while let Some(start) = a.find("$(") {
            let end = a[start..]
                .find(')')
                .map(|i| start + i)
                .ok_or_else(|| format!("unterminated $( in {a}"))?;
            let var = &a[start + 2..end];
            let val = env
                .get(var)
                .ok_or_else(|| format!("{} uses $({var}) but defines no env {var}", c["name"]))?;
            a = format!("{}{}{}", &a[..start], val, &a[end + 1..]);
        }
        out.push(a);
    }
    Ok(out)
}

fn flag_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    args.iter().find_map(|a| a.strip_prefix(&prefix))
}

fn flag_name(a: &str) -> Option<&str> {
    let a = a.strip_prefix("--").or_else(|| a.strip_prefix('-'))?;
    Some(a.split('=').next().unwrap_or(a))
}

fn socket_path(endpoint: &str) -> String {
    endpoint
        .trim_start_matches("unix://")
        .trim_start_matches("unix:")
        .to_string()
}

fn mounts(c: &Value) -> Vec<&Value> {
    c["volumeMounts"]
        .as_array()
        .map(|v| v.iter().collect())
        .unwrap_or_default()
}

fn mount_at<'a>(c: &'a Value, path: &str) -> Option<&'a Value> {
    mounts(c)
        .into_iter()
        .find(|m| s(&m["mountPath"]).trim_end_matches('/') == path.trim_end_matches('/'))
}

/// The mount of `c` holding `path` and the pod volume behind it.
fn volume_for<'a>(pod: &'a Value, c: &'a Value, path: &str) -> Option<(&'a Value, &'a Value)> {
    let m = mounts(c)
        .into_iter()
        .filter(|m| {
            let mp = s(&m["mountPath"]).trim_end_matches('/');
            path == mp || path.starts_with(&format!("{mp}/"))
        })
        .max_by_key(|m| s(&m["mountPath"]).len())?;
    let v = pod["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == m["name"])?;
    Some((m, v))
}

#[test]
fn container_flags_are_accepted_and_the_pieces_fit() {
    let mut problems = Vec::new();
    for driver in ["rbd", "cephfs"] {
        let (_, docs) = render(driver);
        let driver_name = format!("{driver}.ferroceph.io");
        let csidriver = named(docs, "CSIDriver", &driver_name)
            .unwrap_or_else(|| panic!("{driver}: no CSIDriver {driver_name}"));
        // RBD: attach required, so the attach/detach controller keeps an RWO volume on one
        // node at a time (its Multi-Attach check); CephFS volumes are shared filesystems.
        let attach_required = driver == "rbd";
        assert_eq!(
            csidriver["spec"]["attachRequired"], attach_required,
            "{driver}"
        );
        assert_eq!(csidriver["spec"]["podInfoOnMount"], false);
        assert_eq!(csidriver["spec"]["fsGroupPolicy"], "File");

        for w in docs
            .iter()
            .filter(|d| d["kind"] == "Deployment" || d["kind"] == "DaemonSet")
        {
            let wname = format!("{driver}/{}", s(&w["metadata"]["name"]));
            let is_node = w["kind"] == "DaemonSet";
            let pod = &w["spec"]["template"]["spec"];
            let containers: Vec<&Value> = pod["containers"]
                .as_array()
                .expect("containers")
                .iter()
                .collect();
            let sa = s(&pod["serviceAccountName"]);
            if named(docs, "ServiceAccount", sa).is_none() {
                problems.push(format!("{wname}: service account {sa:?} is not shipped"));
            }
            let mut driver_endpoint = None;
            let mut sidecar_endpoints = Vec::new();
            let mut images = BTreeSet::new();
            for c in &containers {
                let cname = format!("{wname}/{}", s(&c["name"]));
                let image = s(&c["image"]);
                images.insert(
                    image
                        .rsplit('/')
                        .next()
                        .unwrap_or("")
                        .split(':')
                        .next()
                        .unwrap_or("")
                        .to_string(),
                );
                for r in ["requests", "limits"] {
                    if c["resources"][r]["memory"].is_null() {
                        problems.push(format!("{cname}: no memory {r}"));
                    }
                }
                let args = match expanded_args(c) {
                    Ok(a) => a,
                    Err(e) => {
                        problems.push(format!("{cname}: {e}"));
                        continue;
                    }
                };
                if is_ours(image) {
                    // Every flag, with its value, through the real parser.
                    let (ok, _, err) = run(Command::new(bin()).args(&args).arg("--help"));
                    if !ok {
                        problems.push(format!(
                            "{cname}: ferroceph rejects {args:?}: {}",
                            err.trim()
                        ));
                    }
                    for a in &args {
                        let (ok, _, err) = run(Command::new(bin()).arg(a).arg("--help"));
                        if !ok {
                            problems
                                .push(format!("{cname}: ferroceph rejects {a}: {}", err.trim()));
                        }
                    }
                    let ty = flag_value(&args, "type").unwrap_or("");
                    let endpoint = flag_value(&args, "endpoint").map(socket_path);
                    match ty {
                        "liveness" => {
                            if flag_value(&args, "metricsport").is_none() {
                                problems.push(format!("{cname}: liveness without --metricsport"));
                            }
                            sidecar_endpoints.push((cname.clone(), endpoint.clone()));
                        }
                        t if t == driver => {
                            if flag_value(&args, "drivername") != Some(driver_name.as_str()) {
                                problems
                                    .push(format!("{cname}: --drivername is not {driver_name}"));
                            }
                            let role = if is_node {
                                "nodeserver"
                            } else {
                                "controllerserver"
                            };
                            if flag_value(&args, role) != Some("true") {
                                problems.push(format!("{cname}: --{role}=true missing"));
                            }
                            if is_node
                                && !matches!(flag_value(&args, "nodeid"), Some(n) if !n.is_empty())
                            {
                                problems.push(format!("{cname}: no --nodeid"));
                            }
                            driver_endpoint = endpoint.clone();
                            // The cluster map comes from the shipped ConfigMap.
                            let cfg = flag_value(&args, "configpath")
                                .unwrap_or("/etc/ceph-csi-config/config.json");
                            match volume_for(pod, c, cfg) {
                                Some((_, v))
                                    if named(docs, "ConfigMap", s(&v["configMap"]["name"]))
                                        .is_some() => {}
                                _ => problems
                                    .push(format!("{cname}: {cfg} is not a shipped ConfigMap")),
                            }
                            let keys = flag_value(&args, "keysdir").unwrap_or("/tmp/csi/keys");
                            match volume_for(pod, c, keys) {
                                Some((_, v)) if v["emptyDir"]["medium"] == "Memory" => {}
                                _ => problems.push(format!(
                                    "{cname}: --keysdir {keys} is not a memory-backed emptyDir"
                                )),
                            }
                            // The metrics port is declared.
                            let port = flag_value(&args, "metricsport").unwrap_or("8080");
                            let declared = c["ports"].as_array().into_iter().flatten().any(|p| {
                                p["containerPort"]
                                    .as_u64()
                                    .map(|n| n.to_string())
                                    .as_deref()
                                    == Some(port)
                            });
                            if !declared {
                                problems.push(format!("{cname}: metrics port {port} not declared"));
                            }
                            if is_node {
                                check_node_plugin(&cname, pod, c, &driver_name, &mut problems);
                            } else if c["securityContext"]["privileged"] == true {
                                problems
                                    .push(format!("{cname}: the controller needs no privileges"));
                            }
                        }
                        other => problems.push(format!(
                            "{cname}: --type={other} in the {driver} kustomization"
                        )),
                    }
                } else if let Some(allowed) = sidecar_flags(image) {
                    if image.ends_with(":latest")
                        || image.contains(":canary")
                        || !image.contains(':')
                    {
                        problems.push(format!("{cname}: image {image} is not pinned"));
                    }
                    for a in &args {
                        match flag_name(a) {
                            Some(f) if allowed.contains(&f) => {}
                            _ => problems
                                .push(format!("{cname}: {a} is not a documented {image} flag")),
                        }
                    }
                    if let Some(addr) = flag_value(&args, "csi-address") {
                        sidecar_endpoints.push((cname.clone(), Some(socket_path(addr))));
                    }
                    if image.contains("csi-provisioner")
                        && flag_value(&args, "extra-create-metadata") != Some("true")
                    {
                        problems.push(format!("{cname}: --extra-create-metadata=true missing"));
                    }
                    if !is_node
                        && !image.contains("registrar")
                        && flag_value(&args, "leader-election") != Some("true")
                    {
                        problems.push(format!("{cname}: --leader-election=true missing"));
                    }
                    if image.contains("csi-node-driver-registrar") {
                        let want = format!("/var/lib/kubelet/plugins/{driver_name}/csi.sock");
                        if flag_value(&args, "kubelet-registration-path") != Some(want.as_str()) {
                            problems.push(format!(
                                "{cname}: --kubelet-registration-path is not {want}"
                            ));
                        }
                        match volume_for(pod, c, "/registration") {
                            Some((_, v))
                                if v["hostPath"]["path"] == "/var/lib/kubelet/plugins_registry" => {
                            }
                            _ => problems.push(format!(
                                "{cname}: /registration is not the kubelet's plugins_registry"
                            )),
                        }
                    }
                } else {
                    problems.push(format!("{cname}: unexpected image {image}"));
                }
            }
            // Everything talks to the driver's socket, through the same volume.
            let Some(ep) = driver_endpoint else {
                problems.push(format!("{wname}: no ferroceph driver container"));
                continue;
            };
            for (cname, sock) in sidecar_endpoints {
                if sock.as_deref() != Some(ep.as_str()) {
                    problems.push(format!(
                        "{cname}: talks to {sock:?}, the driver listens on {ep}"
                    ));
                }
            }
            let mut want: Vec<&str> = if is_node {
                vec!["csi-node-driver-registrar", "ferroceph"]
            } else {
                vec![
                    "csi-provisioner",
                    "csi-resizer",
                    "csi-snapshotter",
                    "ferroceph",
                ]
            };
            if attach_required && !is_node {
                // without it, VolumeAttachments stay unattached and no pod starts
                want.push("csi-attacher");
            }
            for w in want {
                if !images.contains(w) {
                    problems.push(format!("{wname}: no {w} container"));
                }
            }
            if images.contains("csi-attacher") && (!attach_required || is_node) {
                problems.push(format!(
                    "{wname}: csi-attacher is not needed here (attachRequired {attach_required})"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn check_node_plugin(
    cname: &str,
    pod: &Value,
    c: &Value,
    driver_name: &str,
    problems: &mut Vec<String>,
) {
    if pod["hostNetwork"] != true {
        problems.push(format!(
            "{cname}: the node plugin needs hostNetwork for the kernel clients"
        ));
    }
    if c["securityContext"]["privileged"] != true {
        problems.push(format!("{cname}: the node plugin must be privileged"));
    }
    for dir in ["/var/lib/kubelet/plugins", "/var/lib/kubelet/pods"] {
        match mount_at(c, dir) {
            Some(m) if m["mountPropagation"] == "Bidirectional" => {}
            _ => problems.push(format!(
                "{cname}: {dir} is not mounted with Bidirectional propagation"
            )),
        }
        match volume_for(pod, c, dir) {
            Some((_, v)) if v["hostPath"]["path"] == dir => {}
            _ => problems.push(format!("{cname}: {dir} is not the host's")),
        }
    }
    for (dir, ro) in [
        ("/dev", false),
        ("/sys", false),
        ("/run/mount", false),
        ("/lib/modules", true),
    ] {
        match (mount_at(c, dir), volume_for(pod, c, dir)) {
            (Some(m), Some((_, v)))
                if v["hostPath"]["path"] == dir && (m["readOnly"] == true) == ro => {}
            _ => problems.push(format!(
                "{cname}: {dir} is not the host's {}",
                if ro { "(read-only)" } else { "" }
            )),
        }
    }
    // user-space attachments outlive the plugin's container: the host's PID namespace and
    // a cgroup of their own on the host's cgroup filesystem (node/outlive.rs)
    if pod["hostPID"] != true {
        problems.push(format!(
            "{cname}: without hostPID the attachments die with the plugin's PID namespace"
        ));
    }
    let args = expanded_args(c).unwrap_or_default();
    let root = flag_value(&args, "cgrouproot")
        .unwrap_or("/sys/fs/cgroup")
        .to_string();
    match flag_value(&args, "attachcgroup") {
        Some(n) if !n.is_empty() && n != "none" => {}
        _ => problems.push(format!(
            "{cname}: --attachcgroup is not set: every plugin restart kills the user-space attachments"
        )),
    }
    match volume_for(pod, c, &root) {
        Some((_, v)) if v["hostPath"]["path"] == "/sys/fs/cgroup" => {}
        _ => problems.push(format!(
            "{cname}: --cgrouproot {root} is not the host's /sys/fs/cgroup"
        )),
    }
    let sock_dir = format!("/var/lib/kubelet/plugins/{driver_name}");
    match volume_for(pod, c, "/csi/csi.sock") {
        Some((_, v)) if v["hostPath"]["path"] == sock_dir.as_str() => {}
        _ => problems.push(format!(
            "{cname}: the socket directory is not the host's {sock_dir}"
        )),
    }
    if pod["automountServiceAccountToken"] != false {
        problems.push(format!("{cname}: the node pod needs no API token"));
    }
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

// -----------------------------------------------------------------------------------------
// What `kubectl apply -k` installs, as a user applies it
// -----------------------------------------------------------------------------------------

/// The kubernetes-csi sidecar releases the manifests name: the newest release of each as
/// of late 2025, from the release tags (and their dates) of each project's repository;
/// deploy/README.md says how they were chosen. A tag not listed here is one nobody checked
/// was ever released, and an unreleased tag is an ImagePullBackOff.
const SIDECAR_RELEASES: &[(&str, &str)] = &[
    ("csi-provisioner", "v6.1.0"),            // 2025-11-18
    ("csi-resizer", "v2.0.0"),                // 2025-10-24
    ("csi-snapshotter", "v8.4.0"),            // 2025-10-23
    ("csi-attacher", "v4.10.0"),              // 2025-09-12
    ("csi-node-driver-registrar", "v2.15.0"), // 2025-09-12
];

fn workloads(docs: &[Value]) -> Vec<&Value> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "DaemonSet")
        .collect()
}

fn containers(w: &Value) -> Vec<&Value> {
    w["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

#[test]
fn sidecar_images_are_released_tags_listed_in_the_readme() {
    let readme = std::fs::read_to_string(workspace().join("deploy/README.md")).expect("README");
    let mut problems = Vec::new();
    let mut named_here = BTreeSet::new();
    for driver in ["rbd", "cephfs"] {
        let (_, docs) = render(driver);
        for w in workloads(docs) {
            for c in containers(w) {
                let image = s(&c["image"]);
                if is_ours(image) {
                    continue;
                }
                let (repo, tag) = image.rsplit_once(':').unwrap_or((image, ""));
                let name = repo.rsplit('/').next().unwrap_or("");
                if repo != format!("registry.k8s.io/sig-storage/{name}") {
                    problems.push(format!("{driver}: {image} is not a kubernetes-csi image"));
                }
                match SIDECAR_RELEASES.iter().find(|(n, _)| *n == name) {
                    Some((_, t)) if *t == tag => {
                        named_here.insert(image.to_string());
                    }
                    Some((_, t)) => problems.push(format!(
                        "{driver}: {image}: the release checked and chosen is {t}"
                    )),
                    None => problems.push(format!("{driver}: {image}: no release recorded")),
                }
            }
        }
    }
    for (name, _) in SIDECAR_RELEASES {
        if !named_here.iter().any(|i| i.contains(&format!("/{name}:"))) {
            problems.push(format!("no manifest uses {name}"));
        }
    }
    // deploy/README.md names exactly the images the manifests use.
    let in_readme: BTreeSet<String> = readme
        .match_indices("registry.k8s.io/sig-storage/")
        .map(|(i, _)| {
            readme[i..]
                .split(|c: char| c == '`' || c.is_whitespace())
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    if in_readme != named_here {
        problems.push(format!(
            "deploy/README.md names {in_readme:?}, the manifests use {named_here:?}"
        ));
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

/// Bytes of a Kubernetes quantity such as `1Gi` or `500M`.
fn quantity(q: &str) -> u64 {
    let units: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().expect("quantity") * factor;
        }
    }
    q.parse().expect("quantity")
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

// -----------------------------------------------------------------------------------------
// Containerfile
// -----------------------------------------------------------------------------------------

struct Stage {
    from: String,
    name: Option<String>,
    /// Instructions with continuation lines joined and comment lines dropped.
    instructions: Vec<String>,
}

fn parse_containerfile(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        let (body, cont) = match t.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (t, false),
        };
        cur.push_str(body);
        cur.push(' ');
        if !cont {
            logical.push(cur.trim().to_string());
            cur.clear();
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for ins in logical {
        let mut words = ins.split_whitespace();
        if words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            let from = words.next().unwrap_or("").to_string();
            let name = match (words.next(), words.next()) {
                (Some(a), Some(n)) if a.eq_ignore_ascii_case("AS") => Some(n.to_string()),
                _ => None,
            };
            stages.push(Stage {
                from,
                name,
                instructions: Vec::new(),
            });
        } else if let Some(st) = stages.last_mut() {
            st.instructions.push(ins);
        }
    }
    stages
}

/// Packages of every `apt-get install` in a stage.
fn apt_packages(stage: &Stage) -> Vec<String> {
    let mut out = Vec::new();
    for ins in &stage.instructions {
        for cmd in ins.split("&&") {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            if let Some(i) = words
                .windows(2)
                .position(|w| w[0] == "apt-get" && w[1] == "install")
            {
                out.extend(
                    words[i + 2..]
                        .iter()
                        .filter(|w| !w.starts_with('-'))
                        .map(|w| w.to_string()),
                );
            }
        }
    }
    out
}

/// The packages `pkgs` pull in (Depends/Pre-Depends, recursively), including themselves.
fn apt_closure(pkgs: &[String]) -> BTreeSet<String> {
    let (ok, out, err) = run(Command::new("apt-cache")
        .args([
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
        ])
        .args(pkgs));
    assert!(ok, "apt-cache depends failed: {err}");
    out.lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('<'))
        .map(|l| l.trim().to_string())
        .collect()
}

fn package_of(path: &str) -> Option<String> {
    let real = std::fs::canonicalize(path).ok()?;
    for candidate in [real.display().to_string(), path.to_string()] {
        let (ok, out, _) = run(Command::new("dpkg-query").args(["-S", &candidate]));
        if ok {
            return out
                .lines()
                .next()
                .and_then(|l| l.split(':').next())
                .map(|p| p.trim().to_string());
        }
        // merged /usr: dpkg knows /lib/... for files now under /usr/lib/...
        if let Some(rest) = candidate.strip_prefix("/usr") {
            let (ok, out, _) = run(Command::new("dpkg-query").args(["-S", rest]));
            if ok {
                return out
                    .lines()
                    .next()
                    .and_then(|l| l.split(':').next())
                    .map(|p| p.trim().to_string());
            }
        }
    }
    None
}

#[test]
fn containerfile_is_buildable_on_debian_bookworm() {
    let text = std::fs::read_to_string(workspace().join("deploy/Containerfile"))
        .expect("deploy/Containerfile");
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    assert!(
        os.lines().any(|l| l == "VERSION_CODENAME=bookworm"),
        "these checks ask apt-cache about Debian bookworm: run them on bookworm"
    );
    let stages = parse_containerfile(&text);
    assert!(stages.len() >= 2, "a multi-stage build is expected");
    let runtime = stages.last().expect("runtime stage");
    assert_eq!(runtime.from, "docker.io/library/debian:bookworm-slim");
    for st in &stages {
        assert!(
            st.from.contains("bookworm"),
            "stage {:?} is not based on bookworm: {}",
            st.name,
            st.from
        );
    }

    // Every package of every stage exists in bookworm.
    let mut missing = Vec::new();
    for st in &stages {
        for p in apt_packages(st) {
            let (ok, out, _) =
                run(Command::new("apt-cache").args(["show", "--no-all-versions", &p]));
            if !ok || !out.contains(&format!("Package: {p}")) {
                missing.push(format!("{p} (stage {:?})", st.name));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in Debian bookworm (or apt's lists are missing: apt-get update): {missing:?}"
    );

    // The build stage builds the binary the runtime stage runs.
    let build = stages
        .iter()
        .find(|s| s.name.as_deref() == Some("build"))
        .expect("a stage named build");
    let build_text = build.instructions.join("\n");
    assert!(
        build_text.contains("cargo build --release --locked -p ferroceph"),
        "{build_text}"
    );
    for p in ["librados-dev", "librbd-dev", "protobuf-compiler"] {
        assert!(
            apt_packages(build).iter().any(|x| x == p),
            "build stage lacks {p}"
        );
    }
    let built = build_text
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0] == "target/release/ferroceph")
        .map(|w| w[1].to_string())
        .expect("the build stage copies target/release/ferroceph somewhere");
    let entry = runtime
        .instructions
        .iter()
        .rfind(|i| i.starts_with("ENTRYPOINT"))
        .expect("ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(entry.trim_start_matches("ENTRYPOINT").trim())
        .expect("ENTRYPOINT in exec (JSON) form");
    assert_eq!(entry, vec!["/usr/local/bin/ferroceph".to_string()]);
    let copies: Vec<Vec<&str>> = runtime
        .instructions
        .iter()
        .filter(|i| i.starts_with("COPY"))
        .map(|i| i.split_whitespace().collect())
        .collect();
    assert!(
        copies
            .iter()
            .any(|c| c.len() == 4 && c[1] == "--from=build" && c[2] == built && c[3] == entry[0]),
        "the runtime stage must COPY --from=build {built} {}",
        entry[0]
    );
    for src in ["Cargo.toml", "Cargo.lock", "crates"] {
        assert!(workspace().join(src).exists(), "COPY source {src} missing");
    }

    // Runtime packages: no ceph-common (too big); everything the tools need is there.
    let runtime_pkgs = apt_packages(runtime);
    assert!(
        !runtime_pkgs.iter().any(|p| p == "ceph-common"),
        "ceph-common makes the image ~77 MB bigger"
    );
    let closure = apt_closure(&runtime_pkgs);
    let copied: Vec<(String, String)> = copies
        .iter()
        .filter(|c| c.len() == 4 && c[1].starts_with("--from=") && c[1] != "--from=build")
        .map(|c| (c[2].to_string(), c[3].to_string()))
        .collect();
    let mut problems = Vec::new();
    for (src, dst) in &copied {
        // The copied binary exists on this bookworm host too: its libraries must come
        // from packages the runtime stage installs.
        assert!(
            Path::new(src).exists(),
            "{src} (copied into the image) is not on this host: run scripts/setup.sh"
        );
        let (ok, out, err) = run(Command::new("ldd").arg(src));
        assert!(ok, "ldd {src}: {err}");
        for lib in out
            .lines()
            .filter_map(|l| l.split("=>").nth(1))
            .filter_map(|r| r.split_whitespace().next())
        {
            match package_of(lib) {
                Some(p) if closure.contains(&p) => {}
                Some(p) => problems.push(format!(
                    "{dst} links {lib} from {p}, which the runtime stage does not install"
                )),
                None => problems.push(format!("{dst} links {lib}, which no package owns")),
            }
        }
    }
    for tool in ferroceph::doctor::TOOLS {
        let shipped_by_package = closure.contains(tool.package);
        let copied_in = copied
            .iter()
            .any(|(_, dst)| dst.rsplit('/').next() == Some(tool.name));
        if !shipped_by_package && !copied_in {
            problems.push(format!(
                "the image lacks {} (package {}), needed for {}",
                tool.name, tool.package, tool.needed_for
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
