//! Clients other than grpc-go are served on the CSI socket: Python's grpcio (grpc C-core,
//! which sends the percent-encoded socket path as `:authority`; grpc-java sends the bare
//! path, covered by the unit tests of `server::AuthorityRewriter`) and the project's own
//! client, on one socket at the same time.
//!
//! grpcio comes from PyPI, pinned in scripts/setup.sh, in the .venv-tools venv.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The grpcio version scripts/setup.sh pins.
fn pinned_grpcio() -> String {
    let setup = std::fs::read_to_string(workspace().join("scripts/setup.sh")).unwrap();
    setup
        .lines()
        .find_map(|l| l.strip_prefix("GRPCIO_VERSION="))
        .expect("scripts/setup.sh pins GRPCIO_VERSION")
        .trim()
        .to_string()
}

fn grpcio_identity(socket: &str) -> (bool, String, String) {
    let python = workspace().join(".venv-tools/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it installs grpcio from PyPI into .venv-tools)",
        python.display()
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/grpcio_identity.py");
    let out = Command::new(python)
        .arg(script)
        .arg(socket)
        .output()
        .expect("run python");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn own_client(driver: &Driver, rpc: &str) -> serde_json::Value {
    let out = Command::new(bin())
        .args(["client", rpc, "--endpoint", &driver.endpoint()])
        .output()
        .expect("run client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn grpcio_with_default_authority_and_own_client_are_served() {
    let d = Driver::start(&["--type=rbd", "--controllerserver=true"], &[]);
    let endpoint = d.endpoint();
    let socket = endpoint.strip_prefix("unix://").unwrap().to_string();

    let v = own_client(&d, "GetPluginInfo");
    assert_eq!(v["name"], "rbd.ferroceph.io");

    let (ok, out, err) = grpcio_identity(&socket);
    assert!(
        ok,
        "grpcio failed: {err}\n--- driver log ---\n{}",
        d.log_text()
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["grpcio"], pinned_grpcio().as_str(), "{v}");
    assert_eq!(v["name"], "rbd.ferroceph.io", "{v}");
    assert_eq!(v["vendor_version"], env!("CARGO_PKG_VERSION"), "{v}");
    assert_eq!(v["ready"], true, "{v}");

    // grpcio really sent an authority h2 refuses (else this test proves nothing), and both
    // RPCs reached their handlers.
    let log = d.log_text();
    assert!(
        log.contains("client sent an :authority h2 refuses") && log.contains("csi.sock"),
        "{log}"
    );
    assert!(log.contains("method=Probe"), "{log}");

    // the own client on the same socket afterwards, and grpcio once more
    let v = own_client(&d, "Probe");
    assert_eq!(v["ready"], true);
    let (ok, _, err) = grpcio_identity(&socket);
    assert!(ok, "{err}");
}
