// Records the git commit the binary was built from, for `--version` and build-info metrics.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=FERROCEPH_GIT_COMMIT");
    // A build without the repository (a container build context) is told the commit.
    if let Some(c) = std::env::var("FERROCEPH_GIT_COMMIT")
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
    {
        println!(
            "cargo:rustc-env=FERROCEPH_GIT_COMMIT={}",
            &c[..c.len().min(12)]
        );
        return;
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let commit = if dirty && commit != "unknown" {
        format!("{commit}-dirty")
    } else {
        commit
    };
    println!("cargo:rustc-env=FERROCEPH_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/index");
    // HEAD names the branch; a commit moves the branch's ref, not HEAD
    if let Ok(head) = std::fs::read_to_string("../../.git/HEAD") {
        if let Some(r) = head.trim().strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed=../../.git/{r}");
        }
    }
    println!("cargo:rerun-if-changed=../../.git/packed-refs");
}
