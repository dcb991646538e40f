//! Shared helpers of the manifests_*.rs tests: rendering the kustomizations, reading YAML
//! with the venv's PyYAML, schema validation with kubernetes-validate, and small accessors
//! on the rendered objects.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::workspace;

/// Kubernetes versions the objects must be valid for: the newest kubernetes-validate
/// knows and an older one still widely run.
pub const KUBE_VERSIONS: &[&str] = &["1.37.0", "1.30.0"];

pub fn run(cmd: &mut Command) -> (bool, String, String) {
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

pub fn kubectl() -> &'static str {
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

pub fn venv_bin(name: &str) -> PathBuf {
    let p = workspace().join(".venv-tools/bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (it installs kubernetes-validate from PyPI into .venv-tools)",
        p.display()
    );
    p
}

pub fn python() -> PathBuf {
    venv_bin("python")
}

/// YAML stream → JSON values, with the venv's PyYAML.
pub fn yaml_docs(text: &str) -> Vec<Value> {
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

pub fn render(driver: &str) -> &'static (String, Vec<Value>) {
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

pub fn kind<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == k).collect()
}

pub fn named<'a>(docs: &'a [Value], k: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == k && d["metadata"]["name"] == name)
}

pub fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

// -----------------------------------------------------------------------------------------
// Schema validation
// -----------------------------------------------------------------------------------------

/// Schemas of the snapshot.storage.k8s.io/v1 kinds we ship (the CRDs are not part of the
/// core API schemas kubernetes-validate carries). Strict: unknown fields are errors.
pub fn snapshot_schemas() -> Value {
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
pub fn validate(label: &str, text: &str) -> Vec<String> {
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

pub fn is_ours(image: &str) -> bool {
    let repo = image.split(':').next().unwrap_or("");
    repo == "ferroceph" || repo.ends_with("/ferroceph")
}

pub fn workloads(docs: &[Value]) -> Vec<&Value> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "DaemonSet")
        .collect()
}

pub fn containers(w: &Value) -> Vec<&Value> {
    w["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// Bytes of a Kubernetes quantity such as `1Gi` or `500M`.
pub fn quantity(q: &str) -> u64 {
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
