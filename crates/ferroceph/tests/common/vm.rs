//! Kernel scenarios: tests that run inside a VM booted with Debian's own kernel (rbd, nbd and
//! ceph modules; see scripts/vm.sh). On the host, the first scenario test to run boots the VM
//! once for every scenario the test filter selects; the same test binary runs each scenario
//! inside the guest (`FERRO_IN_VM=1`), and each host test passes or fails with its scenario,
//! showing the guest's output and driver logs on failure.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Whether this process runs inside the VM.
pub fn in_vm() -> bool {
    std::env::var_os("FERRO_IN_VM").is_some()
}

/// Where a scenario's driver logs go inside the VM (the results share), so the host can
/// show them on failure and audit them for secrets.
pub fn guest_log_dir() -> Option<PathBuf> {
    std::env::var_os("FERRO_KEPT_LOGS").map(PathBuf::from)
}

/// The outcome of one scenario inside the VM.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub exit: Option<i32>,
    pub secs: String,
    pub output: String,
}

struct Run {
    /// The scenarios that ran to an end, even when the VM failed afterwards.
    outcomes: HashMap<String, Outcome>,
    /// Why the VM did not run its whole plan, if it did not.
    failure: Option<String>,
    dir: PathBuf,
}

/// Runs `body` as the kernel scenario `name`: inside the VM it runs; on the host it fails
/// unless the scenario passed in the VM. `all` lists every scenario of the test binary, in
/// the order the VM runs them.
pub fn scenario<F, Fut>(name: &str, all: &[&str], body: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    if in_vm() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(body());
        return;
    }
    assert!(all.contains(&name), "scenario {name} is not in the list");
    static RUN: OnceLock<Run> = OnceLock::new();
    let run = RUN.get_or_init(|| boot(all));
    let Some(o) = run.outcomes.get(name) else {
        match &run.failure {
            Some(why) => panic!("the kernel VM did not run scenario {name}: {why}"),
            None => panic!(
                "scenario {name} has no result: the VM stopped before it ran (see {}/console.log)\n{}",
                run.dir.display(),
                tail(&read(&run.dir.join("console.log")), 60)
            ),
        }
    };
    if o.exit == Some(0) {
        eprintln!("{name}: passed in the VM in {} s", o.secs);
        return;
    }
    let logs = driver_logs(&run.dir.join("logs").join(name));
    panic!(
        "scenario {name} failed in the VM (exit {:?}, {} s):\n{}\n--- driver logs ---\n{}\n--- kernel log (tail) ---\n{}",
        o.exit,
        o.secs,
        tail(&o.output, 200),
        logs,
        tail(&read(&run.dir.join("dmesg.log")), 40),
    );
}

/// Which scenarios this test process will ask for, from libtest's own arguments (filters,
/// `--exact`, `--skip`), so a filtered `cargo test` boots the VM for those only.
fn selected(all: &[&str]) -> Vec<String> {
    const WITH_VALUE: &[&str] = &[
        "--test-threads",
        "--format",
        "--logfile",
        "--color",
        "--skip",
        "-Z",
        "--report-time",
    ];
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut exact = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--exact" {
            exact = true;
        } else if a == "--skip" {
            skips.extend(args.next());
        } else if WITH_VALUE.contains(&a.as_str()) {
            args.next();
        } else if !a.starts_with('-') {
            filters.push(a);
        }
    }
    let matches = |name: &str, f: &str| if exact { name == f } else { name.contains(f) };
    all.iter()
        .filter(|n| filters.is_empty() || filters.iter().any(|f| matches(n, f)))
        .filter(|n| !skips.iter().any(|s| matches(n, s)))
        .map(|n| n.to_string())
        .collect()
}

fn boot(all: &[&str]) -> Run {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm");
    let dir = root.join("last");
    let _ = std::fs::remove_dir_all(&dir);
    let names = selected(all);
    let failure = run_plan(&dir, &names).err();
    let mut outcomes = HashMap::new();
    for n in &names {
        let rc = read(&dir.join(format!("{n}.rc")));
        if rc.is_empty() {
            continue;
        }
        outcomes.insert(
            n.clone(),
            Outcome {
                exit: rc.trim().parse().ok(),
                secs: read(&dir.join(format!("{n}.secs"))).trim().to_string(),
                output: read(&dir.join(format!("{n}.log"))),
            },
        );
    }
    Run {
        outcomes,
        failure,
        dir,
    }
}

/// Writes the plan and boots the VM on it; Err says why the guest did not finish it.
fn run_plan(dir: &Path, names: &[String]) -> Result<(), String> {
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut plan = format!("{}\n", exe.display());
    for n in names {
        plan.push_str(n);
        plan.push('\n');
    }
    std::fs::write(dir.join("plan"), plan).map_err(|e| format!("write the plan: {e}"))?;
    eprintln!(
        "booting the kernel VM for {} scenario(s); console: {}",
        names.len(),
        dir.join("console.log").display()
    );
    let script = super::workspace().join("scripts/vm.sh");
    let out = Command::new(&script)
        .arg("boot")
        .arg(dir)
        .arg(std::env::var("FERRO_VM_TIMEOUT").unwrap_or_else(|_| "1200".into()))
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} boot failed ({}): {}\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            tail(&read(&dir.join("console.log")), 40)
        ));
    }
    if !dir.join("done").exists() {
        return Err(format!(
            "the guest powered off before finishing its plan:\n{}",
            tail(&read(&dir.join("console.log")), 60)
        ));
    }
    Ok(())
}

fn read(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn driver_logs(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        out.push_str(&format!("== {} ==\n", e.path().display()));
        out.push_str(&tail(&read(&e.path()), 80));
        out.push('\n');
    }
    out
}
