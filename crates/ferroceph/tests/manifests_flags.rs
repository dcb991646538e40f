//! The containers of the deployment, checked without a cluster: every flag our containers
//! get is accepted by the binary (`ferroceph <args> --help`), the sidecars get only flags
//! they document, and the pieces fit together (sockets, driver names, volumes, secrets,
//! service accounts).
//!
//! kubectl (Debian kubernetes-client) and kubernetes-validate (PyPI, in .venv-tools) come
//! from scripts/setup.sh; without them these tests fail, they do not skip.

mod common;

use common::bin;
use common::manifests::*;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::process::Command;

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
            check_workload(
                docs,
                driver,
                &driver_name,
                attach_required,
                w,
                &mut problems,
            );
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The pod of one Deployment or DaemonSet of a driver's kustomization.
#[derive(Clone, Copy)]
struct Pod<'a> {
    docs: &'a [Value],
    driver: &'a str,
    driver_name: &'a str,
    is_node: bool,
    pod: &'a Value,
}

/// One Deployment or DaemonSet: its service account is shipped, every container has memory
/// requests and limits and fitting flags, everything talks to the driver's socket, and the
/// containers are the ones the workload needs.
fn check_workload(
    docs: &[Value],
    driver: &str,
    driver_name: &str,
    attach_required: bool,
    w: &Value,
    problems: &mut Vec<String>,
) {
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
        let p = Pod {
            docs,
            driver,
            driver_name,
            is_node,
            pod,
        };
        if is_ours(image) {
            check_our_container(
                &p,
                c,
                &cname,
                &args,
                &mut driver_endpoint,
                &mut sidecar_endpoints,
                problems,
            );
        } else if let Some(allowed) = sidecar_flags(image) {
            check_sidecar(
                &p,
                c,
                &cname,
                allowed,
                &args,
                &mut sidecar_endpoints,
                problems,
            );
        } else {
            problems.push(format!("{cname}: unexpected image {image}"));
        }
    }
    // Everything talks to the driver's socket, through the same volume.
    let Some(ep) = driver_endpoint else {
        problems.push(format!("{wname}: no ferroceph driver container"));
        return;
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

/// A ferroceph container: every flag goes through the real parser; the driver container
/// names the driver and its role, reads the shipped cluster map, keeps keys in memory and
/// declares its metrics port. Records the endpoints it serves or probes.
fn check_our_container(
    p: &Pod<'_>,
    c: &Value,
    cname: &str,
    args: &[String],
    driver_endpoint: &mut Option<String>,
    sidecar_endpoints: &mut Vec<(String, Option<String>)>,
    problems: &mut Vec<String>,
) {
    let Pod {
        docs,
        driver,
        driver_name,
        is_node,
        pod,
    } = *p;
    // Every flag, with its value, through the real parser.
    let (ok, _, err) = run(Command::new(bin()).args(args).arg("--help"));
    if !ok {
        problems.push(format!(
            "{cname}: ferroceph rejects {args:?}: {}",
            err.trim()
        ));
    }
    for a in args {
        let (ok, _, err) = run(Command::new(bin()).arg(a).arg("--help"));
        if !ok {
            problems.push(format!("{cname}: ferroceph rejects {a}: {}", err.trim()));
        }
    }
    let ty = flag_value(args, "type").unwrap_or("");
    let endpoint = flag_value(args, "endpoint").map(socket_path);
    match ty {
        "liveness" => {
            if flag_value(args, "metricsport").is_none() {
                problems.push(format!("{cname}: liveness without --metricsport"));
            }
            sidecar_endpoints.push((cname.to_string(), endpoint.clone()));
        }
        t if t == driver => {
            if flag_value(args, "drivername") != Some(driver_name) {
                problems.push(format!("{cname}: --drivername is not {driver_name}"));
            }
            let role = if is_node {
                "nodeserver"
            } else {
                "controllerserver"
            };
            if flag_value(args, role) != Some("true") {
                problems.push(format!("{cname}: --{role}=true missing"));
            }
            if is_node && !matches!(flag_value(args, "nodeid"), Some(n) if !n.is_empty()) {
                problems.push(format!("{cname}: no --nodeid"));
            }
            *driver_endpoint = endpoint.clone();
            // The cluster map comes from the shipped ConfigMap.
            let cfg = flag_value(args, "configpath").unwrap_or("/etc/ceph-csi-config/config.json");
            match volume_for(pod, c, cfg) {
                Some((_, v)) if named(docs, "ConfigMap", s(&v["configMap"]["name"])).is_some() => {}
                _ => problems.push(format!("{cname}: {cfg} is not a shipped ConfigMap")),
            }
            let keys = flag_value(args, "keysdir").unwrap_or("/tmp/csi/keys");
            match volume_for(pod, c, keys) {
                Some((_, v)) if v["emptyDir"]["medium"] == "Memory" => {}
                _ => problems.push(format!(
                    "{cname}: --keysdir {keys} is not a memory-backed emptyDir"
                )),
            }
            // The metrics port is declared.
            let port = flag_value(args, "metricsport").unwrap_or("8080");
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
                check_node_plugin(cname, pod, c, driver_name, problems);
            } else if c["securityContext"]["privileged"] == true {
                problems.push(format!("{cname}: the controller needs no privileges"));
            }
        }
        other => problems.push(format!(
            "{cname}: --type={other} in the {driver} kustomization"
        )),
    }
}

/// A kubernetes-csi sidecar: a pinned image, only documented flags, the settings our
/// deployment relies on. Records the endpoint it talks to.
fn check_sidecar(
    p: &Pod<'_>,
    c: &Value,
    cname: &str,
    allowed: &[&str],
    args: &[String],
    sidecar_endpoints: &mut Vec<(String, Option<String>)>,
    problems: &mut Vec<String>,
) {
    let Pod {
        driver_name,
        is_node,
        pod,
        ..
    } = *p;
    let image = s(&c["image"]);
    if image.ends_with(":latest") || image.contains(":canary") || !image.contains(':') {
        problems.push(format!("{cname}: image {image} is not pinned"));
    }
    for a in args {
        match flag_name(a) {
            Some(f) if allowed.contains(&f) => {}
            _ => problems.push(format!("{cname}: {a} is not a documented {image} flag")),
        }
    }
    if let Some(addr) = flag_value(args, "csi-address") {
        sidecar_endpoints.push((cname.to_string(), Some(socket_path(addr))));
    }
    if image.contains("csi-provisioner")
        && flag_value(args, "extra-create-metadata") != Some("true")
    {
        problems.push(format!("{cname}: --extra-create-metadata=true missing"));
    }
    if !is_node
        && !image.contains("registrar")
        && flag_value(args, "leader-election") != Some("true")
    {
        problems.push(format!("{cname}: --leader-election=true missing"));
    }
    if image.contains("csi-node-driver-registrar") {
        let want = format!("/var/lib/kubelet/plugins/{driver_name}/csi.sock");
        if flag_value(args, "kubelet-registration-path") != Some(want.as_str()) {
            problems.push(format!(
                "{cname}: --kubelet-registration-path is not {want}"
            ));
        }
        match volume_for(pod, c, "/registration") {
            Some((_, v)) if v["hostPath"]["path"] == "/var/lib/kubelet/plugins_registry" => {}
            _ => problems.push(format!(
                "{cname}: /registration is not the kubelet's plugins_registry"
            )),
        }
    }
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
