//! The cluster map and its monitors: addresses parse, are listed once, and answer.

use super::credentials::credential_checks;
use super::report::{Check, Verdict};
use super::DoctorArgs;
use crate::config::{ClusterInfo, ClusterMap};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// One monitor endpoint from the cluster map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Splits one `monitors` entry into endpoints. Accepts `host`, `host:port`, `[v6]:port`,
/// `v1:`/`v2:` prefixes, `/nonce` suffixes and addrvecs `[v2:a:3300,v1:a:6789]`, and
/// comma-separated lists. Without a port: 3300 for `v2:`, 6789 otherwise.
pub fn parse_monitor(entry: &str) -> Result<Vec<Endpoint>, String> {
    let s = entry.trim();
    let inner = match s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(i) if i.starts_with("v1:") || i.starts_with("v2:") => i,
        _ => s,
    };
    let parts: Vec<&str> = inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return Err(format!("{entry:?} names no monitor"));
    }
    parts.into_iter().map(parse_one_monitor).collect()
}

fn parse_one_monitor(a: &str) -> Result<Endpoint, String> {
    let (a, default_port) = if let Some(r) = a.strip_prefix("v2:") {
        (r, 3300)
    } else if let Some(r) = a.strip_prefix("v1:") {
        (r, 6789)
    } else {
        (a, 6789)
    };
    // A `/nonce` suffix (addrs as `ceph mon dump` prints them).
    let a = match a.rsplit_once('/') {
        Some((head, nonce)) if nonce.bytes().all(|c| c.is_ascii_digit()) => head,
        _ => a,
    };
    let bad = || format!("{a:?} is not host, host:port or [ipv6]:port");
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or_else(bad)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| bad())?,
            None if tail.is_empty() => default_port,
            None => return Err(bad()),
        };
        (h.to_string(), port)
    } else if a.matches(':').count() > 1 {
        (a.to_string(), default_port)
    } else if let Some((h, p)) = a.split_once(':') {
        (h.to_string(), p.parse::<u16>().map_err(|_| bad())?)
    } else {
        (a.to_string(), default_port)
    };
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok(Endpoint { host, port })
}

/// What answered on a monitor port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// A Ceph messenger banner (`ceph v027` = msgr1, `ceph v2` = msgr2).
    Ceph(&'static str),
    /// The port is open but said nothing within the deadline.
    Silent,
    /// Something else answered.
    NotCeph,
    /// Could not connect (the reason).
    Down(String),
}

/// Classifies the first bytes a monitor port sends.
pub(crate) fn classify_banner(bytes: &[u8]) -> Probe {
    if bytes.starts_with(b"ceph v2") {
        Probe::Ceph("msgr2")
    } else if bytes.starts_with(b"ceph v027") {
        Probe::Ceph("msgr1")
    } else if bytes.is_empty() {
        Probe::Silent
    } else {
        Probe::NotCeph
    }
}

fn resolve(ep: &Endpoint, timeout: Duration) -> Result<Vec<SocketAddr>, String> {
    let target = (ep.host.clone(), ep.port);
    let (tx, rx) = std::sync::mpsc::channel();
    // getaddrinfo has no deadline of its own.
    std::thread::spawn(move || {
        let _ = tx.send(target.to_socket_addrs().map(|a| a.collect::<Vec<_>>()));
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(v)) if !v.is_empty() => Ok(v),
        Ok(Ok(_)) => Err(format!("{} resolves to no address", ep.host)),
        Ok(Err(e)) => Err(format!("cannot resolve {}: {e}", ep.host)),
        Err(_) => Err(format!(
            "resolving {} took longer than {:.1}s",
            ep.host,
            timeout.as_secs_f64()
        )),
    }
}

fn probe_endpoint(ep: &Endpoint, timeout: Duration) -> (Probe, Option<SocketAddr>) {
    let addrs = match resolve(ep, timeout) {
        Ok(a) => a,
        Err(e) => return (Probe::Down(e), None),
    };
    let mut last = String::new();
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(timeout.min(Duration::from_secs(2))));
                let mut buf = [0u8; 9];
                let mut got = 0;
                while got < buf.len() {
                    match s.read(&mut buf[got..]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
                return (classify_banner(&buf[..got]), Some(addr));
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    (Probe::Down(last), None)
}

/// Endpoints listed more than once (same host and port), in first-seen order.
pub fn duplicate_endpoints(eps: &[Endpoint]) -> Vec<Endpoint> {
    let mut seen = std::collections::HashSet::new();
    let mut dups: Vec<Endpoint> = Vec::new();
    for e in eps {
        if !seen.insert((e.host.to_ascii_lowercase(), e.port)) && !dups.contains(e) {
            dups.push(e.clone());
        }
    }
    dups
}

/// The cluster's monitors as librados should get them: each endpoint once. librados
/// aborts the process (ceph_assert in MonMap::add) when an address repeats.
pub(crate) fn unique_monitors(monitors: &[String]) -> Vec<String> {
    let mut eps = Vec::new();
    for m in monitors {
        match parse_monitor(m) {
            Ok(v) => eps.extend(v),
            Err(_) => return monitors.to_vec(),
        }
    }
    let mut out: Vec<String> = Vec::new();
    for e in eps {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

pub(super) fn cluster_checks(args: &DoctorArgs) -> Vec<Check> {
    let mut out = Vec::new();
    let map = ClusterMap::new(&args.configpath);
    let clusters = match map.clusters() {
        Ok(c) => c,
        Err(e) => {
            out.push(Check::problem(
                "config",
                Verdict::Fail,
                e.to_string(),
                "every RPC looks up its clusterID in this map to find the monitors",
                format!(
                    "fill the cluster map ConfigMap (ferroceph-rbd-config / ferroceph-cephfs-config in deploy/kubernetes) with config.json = [{{\"clusterID\": \"<fsid>\", \"monitors\": [\"<mon-ip>:6789\"]}}] and mount it at {} (or pass --configpath)",
                    args.configpath.parent().map(|p| p.display().to_string()).unwrap_or_default()
                ),
            ));
            return out;
        }
    };
    if clusters.is_empty() {
        out.push(Check::problem(
            "config",
            Verdict::Fail,
            format!("{} lists no cluster", args.configpath.display()),
            "StorageClasses name a clusterID that must be in this map",
            "add an entry {\"clusterID\": \"<fsid>\", \"monitors\": [\"<mon-ip>:6789\"]} to config.json",
        ));
        return out;
    }
    out.push(Check::ok(
        "config",
        format!(
            "{} parses: {} cluster(s): {}",
            args.configpath.display(),
            clusters.len(),
            clusters
                .iter()
                .map(|c| c.cluster_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    for c in clusters.iter() {
        out.push(monitors_check(c, args.timeout));
    }
    if let Some(path) = &args.secrets_file {
        out.extend(credential_checks(args, path, &clusters));
    } else {
        out.push(Check::skip(
            "ceph.auth",
            "no --secrets-file given: the Ceph user and its caps were not tried",
        ));
    }
    out
}

fn monitors_check(c: &ClusterInfo, timeout: Duration) -> Check {
    let id = format!("monitors.{}", c.cluster_id);
    if c.monitors.is_empty() {
        return Check::problem(
            id,
            Verdict::Fail,
            format!("clusterID {:?} lists no monitors", c.cluster_id),
            "the driver cannot reach a cluster without monitors",
            "add \"monitors\": [\"<mon-ip>:6789\", ...] to this entry of config.json (ceph mon dump shows them)",
        );
    }
    let mut endpoints = Vec::new();
    let mut bad = Vec::new();
    for m in &c.monitors {
        match parse_monitor(m) {
            Ok(eps) => endpoints.extend(eps),
            Err(e) => bad.push(e),
        }
    }
    if !bad.is_empty() {
        return Check::problem(
            id,
            Verdict::Fail,
            format!("unparsable monitor address: {}", bad.join("; ")),
            "librados cannot connect to an address it cannot parse",
            "write monitors as \"10.0.0.1:6789\" (or \"[v2:10.0.0.1:3300,v1:10.0.0.1:6789]\")",
        );
    }
    let dups = duplicate_endpoints(&endpoints);
    if !dups.is_empty() {
        let list = dups
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Check::problem(
            id,
            Verdict::Fail,
            format!("monitor(s) listed more than once: {list}"),
            "librados aborts the whole process (ceph_assert in MonMap::add) when a monitor address repeats: the driver would crash on its first call for this cluster",
            "list each monitor once in this entry of config.json (an addrvec [v2:ip:3300,v1:ip:6789] already covers both ports of a monitor)",
        );
    }
    let probed: Vec<(Endpoint, (Probe, Option<SocketAddr>))> = std::thread::scope(|s| {
        let handles: Vec<_> = endpoints
            .iter()
            .map(|ep| s.spawn(move || (ep.clone(), probe_endpoint(ep, timeout))))
            .collect();
        handles
            .into_iter()
            .zip(endpoints.iter())
            .map(|(h, ep)| {
                h.join()
                    .unwrap_or_else(|_| (ep.clone(), (Probe::Down("probe panicked".into()), None)))
            })
            .collect()
    });
    // Two names for one address crash librados just the same.
    let mut by_addr: BTreeMap<SocketAddr, Vec<String>> = BTreeMap::new();
    for (ep, (_, addr)) in &probed {
        if let Some(a) = addr {
            by_addr.entry(*a).or_default().push(ep.to_string());
        }
    }
    if let Some((addr, names)) = by_addr.iter().find(|(_, n)| n.len() > 1) {
        return Check::problem(
            id,
            Verdict::Fail,
            format!("{} all reach {addr}", names.join(" and ")),
            "librados aborts the whole process (ceph_assert in MonMap::add) when a monitor address repeats: the driver would crash on its first call for this cluster",
            "list each monitor once in this entry of config.json",
        );
    }
    let results: Vec<(Endpoint, Probe)> = probed.into_iter().map(|(e, (p, _))| (e, p)).collect();
    let describe = |(ep, p): &(Endpoint, Probe)| match p {
        Probe::Ceph(v) => format!("{ep} ok ({v})"),
        Probe::Silent => format!("{ep} open (no banner)"),
        Probe::NotCeph => format!("{ep} answers, but not as a Ceph monitor"),
        Probe::Down(e) => format!("{ep} unreachable ({e})"),
    };
    let up = results
        .iter()
        .filter(|(_, p)| matches!(p, Probe::Ceph(_) | Probe::Silent))
        .count();
    let text = results.iter().map(describe).collect::<Vec<_>>().join("; ");
    let fix = "check the addresses against `ceph mon dump`, and that the node and the controller pods can reach them (firewall, hostNetwork for kernel clients); 6789 is msgr1 and 3300 msgr2";
    if up == results.len() {
        Check::ok(
            id,
            format!("{up}/{} monitor(s) reachable: {text}", results.len()),
        )
    } else if up == 0 {
        Check::problem(
            id,
            Verdict::Fail,
            format!("no monitor reachable: {text}"),
            format!(
                "every call for clusterID {:?} would time out (DeadlineExceeded) waiting for a monitor",
                c.cluster_id
            ),
            fix,
        )
    } else {
        Check::problem(
            id,
            Verdict::Warn,
            format!("{up}/{} monitor(s) reachable: {text}", results.len()),
            "clients retry other monitors, but every connection that tries a dead one first is slower",
            fix,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_addresses() {
        let ep = |h: &str, p| Endpoint {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            parse_monitor("10.0.0.1:6789").unwrap(),
            vec![ep("10.0.0.1", 6789)]
        );
        assert_eq!(parse_monitor("mon-a").unwrap(), vec![ep("mon-a", 6789)]);
        assert_eq!(
            parse_monitor("[v2:10.0.0.1:3300/0,v1:10.0.0.1:6789/0]").unwrap(),
            vec![ep("10.0.0.1", 3300), ep("10.0.0.1", 6789)]
        );
        assert_eq!(
            parse_monitor("v2:10.0.0.1").unwrap(),
            vec![ep("10.0.0.1", 3300)]
        );
        assert_eq!(parse_monitor("[::1]:6789").unwrap(), vec![ep("::1", 6789)]);
        assert_eq!(parse_monitor("fe80::1").unwrap(), vec![ep("fe80::1", 6789)]);
        assert_eq!(
            parse_monitor("a:1, b:2").unwrap(),
            vec![ep("a", 1), ep("b", 2)]
        );
        assert!(parse_monitor("a:notaport").is_err());
        assert!(parse_monitor("a:0").is_err());
        assert!(parse_monitor("").is_err());
        assert!(parse_monitor("[::1]x").is_err());
        assert_eq!(ep("::1", 6789).to_string(), "[::1]:6789");
        assert_eq!(ep("10.0.0.1", 6789).to_string(), "10.0.0.1:6789");
    }

    #[test]
    fn duplicated_monitors_are_caught() {
        let eps: Vec<Endpoint> = [
            "10.0.0.1:6789",
            "[v2:10.0.0.1:3300,v1:10.0.0.1:6789]",
            "B:1",
            "b:1",
        ]
        .iter()
        .flat_map(|m| parse_monitor(m).unwrap())
        .collect();
        let d: Vec<String> = duplicate_endpoints(&eps)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(d, vec!["10.0.0.1:6789", "b:1"]);
        assert_eq!(
            unique_monitors(&[
                "10.0.0.1:6789".into(),
                "[v2:10.0.0.1:3300,v1:10.0.0.1:6789]".into()
            ]),
            vec!["10.0.0.1:6789".to_string(), "10.0.0.1:3300".into()]
        );
        assert_eq!(unique_monitors(&["x:y".into()]), vec!["x:y".to_string()]);
    }

    #[test]
    fn banners() {
        assert_eq!(classify_banner(b"ceph v027"), Probe::Ceph("msgr1"));
        assert_eq!(classify_banner(b"ceph v2\n\x10"), Probe::Ceph("msgr2"));
        assert_eq!(classify_banner(b""), Probe::Silent);
        assert_eq!(classify_banner(b"HTTP/1.1 "), Probe::NotCeph);
    }

    #[test]
    fn unreachable_monitor_fails_fast() {
        // A port nothing listens on: connection refused right away.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let c = ClusterInfo {
            cluster_id: "x".into(),
            monitors: vec![format!("127.0.0.1:{port}")],
            rbd: Default::default(),
            cephfs: Default::default(),
        };
        let started = std::time::Instant::now();
        let check = monitors_check(&c, Duration::from_secs(2));
        assert_eq!(check.status, Verdict::Fail, "{check:?}");
        assert!(check.summary.contains("unreachable"), "{check:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
