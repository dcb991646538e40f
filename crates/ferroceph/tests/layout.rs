//! The structure ARCHITECTURE.md promises, checked on the source: no import cycle between
//! modules, no source file over 1,000 lines, no function over 120 lines, and `tonic::Status`
//! built only by the gRPC services.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 1000;
const MAX_FN_LINES: usize = 120;

/// Files that may build a `tonic::Status`: the gRPC services and the one mapping.
const STATUS_ALLOWED: &[&str] = &[
    "error.rs",
    "server.rs",
    "identity.rs",
    "controller/mod.rs",
    "rbd/node/service.rs",
    "cephfs/node.rs",
    "liveness.rs",
    "client.rs",
    "bench",
];

fn src_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `a/b/mod.rs` → ["a", "b"]; `a/c.rs` → ["a", "c"]; lib.rs/main.rs → [].
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|s| s.to_string_lossy().to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The source without its `#[cfg(test)]` tail (unit tests may use anything).
fn non_test(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

fn crate_refs(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == ':')
            .collect();
        out.push(
            path.split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        );
    }
    out
}

/// Strongly connected components with more than one module.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn reach(g: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(n) = todo.pop() {
            for m in g.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    todo.push(m.clone());
                }
            }
        }
        seen
    }
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    for a in graph.keys() {
        let from_a = reach(graph, a);
        let mut comp: Vec<String> = from_a
            .iter()
            .filter(|b| *b != a && reach(graph, b).contains(a))
            .cloned()
            .collect();
        if !comp.is_empty() {
            comp.push(a.clone());
            comp.sort();
            found.insert(comp);
        }
    }
    found.into_iter().collect()
}

#[test]
fn modules_import_each_other_in_one_direction_only() {
    let root = src_root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    for depth in [1, 2] {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in &files {
            let me = module_of(f.strip_prefix(&root).expect("under src"));
            if me.is_empty() {
                continue;
            }
            let me_key = me[..me.len().min(depth)].join("::");
            let text = std::fs::read_to_string(f).expect("read");
            for r in crate_refs(non_test(&text)) {
                if r.is_empty() {
                    continue;
                }
                let to = r[..r.len().min(depth)].join("::");
                let related = to == me_key
                    || me_key.starts_with(&format!("{to}::"))
                    || to.starts_with(&format!("{me_key}::"));
                if !related {
                    graph.entry(me_key.clone()).or_default().insert(to);
                }
            }
        }
        let c = cycles(&graph);
        assert!(
            c.is_empty(),
            "import cycles between modules (depth {depth}): {c:?}"
        );
    }
}

#[test]
fn no_source_file_or_function_is_too_long() {
    let mut files = Vec::new();
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for c in ["ferroceph/src", "rados/src"] {
        rust_files(&crates.join(c), &mut files);
    }
    let mut problems = Vec::new();
    for f in &files {
        // the FFI declarations of librados/librbd
        if f.ends_with("rados/src/sys.rs") {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() > MAX_FILE_LINES {
            problems.push(format!("{}: {} lines", f.display(), lines.len()));
        }
        problems.extend(
            long_functions(&lines)
                .into_iter()
                .map(|(name, at, n)| format!("{}:{at}: fn {name} is {n} lines", f.display())),
        );
    }
    assert!(problems.is_empty(), "too long:\n{}", problems.join("\n"));
}

/// Functions whose body (signature to closing brace at the same indentation) is too long.
fn long_functions(lines: &[&str]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let sig = trimmed
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("pub ")
            .trim_start_matches("async ");
        let Some(name) = sig.strip_prefix("fn ") else {
            continue;
        };
        let name: String = name
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let Some(open) = (i..lines.len()).find(|&j| {
            let l = lines[j].trim_end();
            l.ends_with('{') || l.ends_with(';')
        }) else {
            continue;
        };
        if lines[open].trim_end().ends_with(';') {
            continue; // a declaration
        }
        let close = (open + 1..lines.len()).find(|&j| {
            let l = lines[j];
            l.len() - l.trim_start().len() == indent && l.trim_start().starts_with('}')
        });
        if let Some(close) = close {
            let n = close - i + 1;
            if n > MAX_FN_LINES {
                out.push((name, i + 1, n));
            }
        }
    }
    out
}

#[test]
fn only_the_grpc_services_build_a_status() {
    let root = src_root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut offenders = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .expect("under src")
            .display()
            .to_string();
        if STATUS_ALLOWED.iter().any(|a| rel.starts_with(a)) {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("read");
        let n = non_test(&text).matches("Status::").count();
        if n > 0 {
            offenders.push(format!("{rel}: {n}"));
        }
    }
    assert!(
        offenders.is_empty(),
        "domain code builds tonic::Status (return crate::error::Error instead): {offenders:?}"
    );
}

/// Operator tools (client, doctor, bench, the FUSE exporter process) depend on the driver's
/// modules, never the other way round.
#[test]
fn the_driver_does_not_depend_on_its_tools() {
    const TOOLS: &[&str] = &["client", "doctor", "bench", "fuse_export"];
    const MAY_USE_TOOLS: &[&str] = &["cli.rs", "main.rs", "liveness.rs"];
    let root = src_root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut offenders = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .expect("under src")
            .display()
            .to_string();
        let module = module_of(f.strip_prefix(&root).expect("under src"));
        let in_tool = module.first().is_some_and(|m| TOOLS.contains(&m.as_str()));
        if in_tool || MAY_USE_TOOLS.contains(&rel.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("read");
        for r in crate_refs(non_test(&text)) {
            if r.first().is_some_and(|m| TOOLS.contains(&m.as_str())) {
                offenders.push(format!("{rel} uses crate::{}", r.join("::")));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:?}");
}
