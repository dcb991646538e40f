//! The binary serves Identity on its socket, answers the operator client, logs one line per
//! RPC without secrets, and cleans up its socket on SIGTERM.

mod common;
use common::*;
use csi::v1 as pb;
use std::process::Command;

fn client(driver: &Driver, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .arg("client")
        .args(args)
        .arg("--endpoint")
        .arg(driver.endpoint())
        .output()
        .expect("run client");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn client_calls_identity_rpcs() {
    let d = Driver::start(&["--type=rbd", "--controllerserver=true"], &[]);
    let (ok, out, err) = client(&d, &["GetPluginInfo"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], "rbd.ferroceph.io");
    assert_eq!(v["vendorVersion"], env!("CARGO_PKG_VERSION"));

    let (ok, out, err) = client(&d, &["Probe"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ready"], true);

    let (ok, out, _) = client(&d, &["GetPluginCapabilities"]);
    assert!(ok);
    assert!(out.contains("CONTROLLER_SERVICE"), "{out}");
    assert!(out.contains("ONLINE"), "{out}");

    // the log has one line per RPC with method, request id and code
    let log = d.log_text();
    assert!(
        log.contains("GetPluginInfo") && log.contains("req-") && log.contains("code=Ok"),
        "{log}"
    );
}

#[test]
fn node_only_driver_does_not_claim_controller() {
    let d = Driver::start(
        &[
            "--type=rbd",
            "--nodeserver=true",
            "--nodeid=n1",
            "--drivername=rbd.example.com",
        ],
        &[],
    );
    let (ok, out, _) = client(&d, &["GetPluginInfo"]);
    assert!(ok);
    assert!(out.contains("rbd.example.com"));
    let (ok, out, _) = client(&d, &["NodeGetInfo"]);
    assert!(ok);
    assert!(out.contains("n1"), "{out}");
    let (ok, out, _) = client(&d, &["GetPluginCapabilities"]);
    assert!(ok);
    assert!(!out.contains("CONTROLLER_SERVICE"), "{out}");
}

#[test]
fn unknown_rpc_and_unreachable_socket_are_clear_errors() {
    let d = Driver::start(&["--type=rbd"], &[]);
    let (ok, _, err) = client(&d, &["MakeCoffee"]);
    assert!(!ok);
    assert!(err.contains("unknown RPC"), "{err}");
    let out = Command::new(bin())
        .args([
            "client",
            "Probe",
            "--endpoint",
            "unix:///nonexistent/dir/csi.sock",
            "--timeout",
            "2s",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[tokio::test]
async fn secrets_never_reach_the_log() {
    let d = Driver::rbd();
    let key = "AQBsecretTESTKEYnotRealAAAAAAAAAAAAAAAA==";
    let mut ctl = d.controller().await;
    // A request that fails validation after reading secrets, and one that reaches Ceph
    // with a key the cluster rejects: neither the log nor the error may contain it.
    let mut req = create_req(&unique("leak"), 1 << 20);
    req.secrets.insert("userKey".into(), key.into());
    req.parameters.insert("bogus".into(), "x".into());
    let e = ctl.create_volume(req.clone()).await.unwrap_err();
    assert!(!e.message().contains(key));
    req.parameters.remove("bogus");
    let e = ctl.create_volume(req).await.unwrap_err();
    assert!(!e.message().contains(key), "{}", e.message());
    let out = Command::new(bin())
        .args([
            "client",
            "NodeStageVolume",
            "--endpoint",
            &d.endpoint(),
            "--volume-id",
            "x",
            "--json",
        ])
        .arg(format!(r#"{{"secrets": {{"userKey": "{key}"}}}}"#))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains(key));
    let log = d.log_text();
    assert!(log.contains("CreateVolume"), "{log}");
    assert!(!log.contains(key), "secret found in the driver log:\n{log}");
}

#[test]
fn sigterm_removes_socket_and_stale_socket_is_replaced() {
    let mut d = Driver::start(&["--type=rbd"], &[]);
    let st = d.sigterm();
    assert!(st.success(), "exit status {st}");
    assert!(!d.socket.exists(), "socket left behind");
    // a stale socket file from a killed process is replaced on start
    let _stale = std::os::unix::net::UnixListener::bind(&d.socket).unwrap();
    drop(_stale);
    assert!(d.socket.exists());
    d.spawn();
    let (ok, _, err) = client(&d, &["Probe"]);
    assert!(ok, "{err}");
}

#[test]
fn bad_flags_fail_with_a_hint() {
    let out = Command::new(bin())
        .args([
            "--type=rbd",
            "--nodeserver=true",
            "--endpoint=unix:///tmp/x.sock",
        ])
        .env_remove("NODE_ID")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodeid"));
    let out = Command::new(bin())
        .args(["--type=rbd", "--endpoint=tcp://1.2.3.4:5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unix://"));
    let out = Command::new(bin()).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.contains(env!("CARGO_PKG_VERSION")) && v.contains("commit"),
        "{v}"
    );
}

#[tokio::test]
async fn probe_typed() {
    let d = Driver::start(&["--type=rbd"], &[]);
    let mut id = d.identity().await;
    let r = id.probe(pb::ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(r.ready.map(|b| b.value), Some(true));
}

#[tokio::test]
async fn json_logs_carry_method_request_volume_and_code() {
    let d = Driver::start(
        &["--type=rbd", "--controllerserver=true", "--logformat=json"],
        &[],
    );
    let mut ctl = d.controller().await;
    let vid = "0001-0004-none-0000000000000001-eba90b33-0156-11ec-a30b-4678a93686c2";
    let _ = ctl
        .delete_volume(pb::DeleteVolumeRequest {
            volume_id: vid.into(),
            secrets: [
                ("userID".to_string(), "u".to_string()),
                ("userKey".to_string(), "AQBnotakey==".to_string()),
            ]
            .into(),
        })
        .await;
    let log = d.log_text();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["span"]["method"] == "DeleteVolume")
        .unwrap_or_else(|| panic!("no JSON line for DeleteVolume in:\n{log}"));
    assert_eq!(line["span"]["volume"], vid);
    assert!(line["span"]["req"]
        .as_str()
        .unwrap_or("")
        .starts_with("req-"));
    assert!(
        line["fields"]["code"].is_string() && line["fields"]["ms"].is_string(),
        "{line}"
    );
    assert!(!log.contains("AQBnotakey=="));
}

/// The Ceph client libraries are opened on first use: a plugin that has not talked to Ceph
/// (an idle node plugin) does not map them; after one controller call it does.
#[tokio::test]
async fn ceph_libraries_are_loaded_on_first_use() {
    let d = Driver::start(&["--type=rbd", "--controllerserver=true"], &[]);
    let mut id = d.identity().await;
    id.probe(pb::ProbeRequest {}).await.unwrap();
    let pid = d.child.as_ref().expect("driver process").id();
    let maps = || std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let m = maps();
    assert!(
        !m.contains("librados.so") && !m.contains("librbd.so"),
        "an idle driver maps the Ceph libraries"
    );
    let mut ctl = d.controller().await;
    let name = unique("lazy-libs");
    let v = ctl
        .create_volume(create_req(&name, 1 << 20))
        .await
        .expect("create")
        .into_inner()
        .volume
        .unwrap();
    assert!(
        maps().contains("librados.so"),
        "librados not loaded after a create"
    );
    ctl.delete_volume(del_req(&v.volume_id))
        .await
        .expect("delete");
}
