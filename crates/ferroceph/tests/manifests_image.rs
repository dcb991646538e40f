//! The images of the deployment, checked without an image registry: every sidecar image
//! is a released kubernetes-csi tag (the table in deploy/README.md), and the Containerfile
//! installs only packages Debian bookworm has, ships every tool the node plugin runs, and
//! its entrypoint is the binary it builds.
//!
//! kubectl (Debian kubernetes-client) comes from scripts/setup.sh; without it these tests
//! fail, they do not skip.

mod common;

use common::manifests::*;
use common::workspace;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

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
    assert_packages_in_bookworm(&stages);
    let copies = assert_runtime_runs_the_built_binary(&stages, runtime);
    assert_runtime_has_every_tool(runtime, &copies);
}

/// Every package of every stage exists in bookworm.
fn assert_packages_in_bookworm(stages: &[Stage]) {
    let mut missing = Vec::new();
    for st in stages {
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
}

/// The build stage builds the binary the runtime stage runs. Returns the runtime stage's
/// COPY instructions, split into words.
fn assert_runtime_runs_the_built_binary<'a>(
    stages: &[Stage],
    runtime: &'a Stage,
) -> Vec<Vec<&'a str>> {
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
    copies
}

/// Runtime packages: no ceph-common (too big); everything the tools need is there, and
/// binaries copied from other stages link only libraries of installed packages.
fn assert_runtime_has_every_tool(runtime: &Stage, copies: &[Vec<&str>]) {
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
