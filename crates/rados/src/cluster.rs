//! Connecting to a Ceph cluster.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result, Service};
use crate::ioctx::IoCtx;
use crate::sys;

/// Default connection/operation timeout of [`ConnectConfig::new`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything needed to connect, taken from the CSI secrets/config map.
///
/// No `ceph.conf`, keyring file or environment variable is consulted for
/// these settings. `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectConfig {
    /// Monitor addresses, `host:port` (or any form `mon_host` accepts, such as
    /// `[v2:1.2.3.4:3300,v1:1.2.3.4:6789]`).
    pub monitors: Vec<String>,
    /// Ceph user id without the `client.` prefix (a leading `client.` is
    /// tolerated and stripped).
    pub user: String,
    /// The user's cephx key (base64).
    pub key: String,
    /// Bounds connecting (`client_mount_timeout`) and every monitor/OSD
    /// operation (`rados_mon_op_timeout`, `rados_osd_op_timeout`); rounded up
    /// to whole seconds, at least 1.
    pub timeout: Duration,
}

impl ConnectConfig {
    /// A config with [`DEFAULT_TIMEOUT`].
    pub fn new(
        monitors: impl IntoIterator<Item = impl Into<String>>,
        user: impl Into<String>,
        key: impl Into<String>,
    ) -> ConnectConfig {
        ConnectConfig {
            monitors: monitors.into_iter().map(Into::into).collect(),
            user: user.into(),
            key: key.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Same config with another timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> ConnectConfig {
        self.timeout = timeout;
        self
    }

    /// The user id without `client.`.
    pub fn user_id(&self) -> &str {
        let u = self.user.trim();
        u.strip_prefix("client.").unwrap_or(u)
    }

    /// The monitors as one `mon_host` value (`a,b,c`), blanks and repeats dropped:
    /// librados aborts the whole process when one address appears twice (also when once
    /// bare and once inside an `[v2:…,v1:…]` vector), so an entry sharing an address with
    /// an earlier one is left out.
    pub fn mon_host(&self) -> String {
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<&str> = Vec::new();
        for entry in self.monitors.iter().flat_map(|m| split_outside_brackets(m)) {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let addrs: Vec<String> = entry
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(|a| {
                    let a = a.trim();
                    a.strip_prefix("v1:")
                        .or_else(|| a.strip_prefix("v2:"))
                        .unwrap_or(a)
                        .to_string()
                })
                .collect();
            if addrs.iter().any(|a| seen.contains(a)) {
                continue;
            }
            seen.extend(addrs);
            out.push(entry);
        }
        out.join(",")
    }

    /// The timeout in whole seconds as handed to librados (rounded up, ≥ 1).
    pub fn timeout_secs(&self) -> u64 {
        timeout_secs(self.timeout)
    }
}

/// Splits `a,b,[c,d]` at the commas that are not inside brackets.
fn split_outside_brackets(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth <= 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod mon_host_tests {
    use super::*;

    #[test]
    fn repeats_are_dropped_and_vectors_kept_whole() {
        let c = |m: &[&str]| ConnectConfig::new(m.iter().copied(), "u", "k").mon_host();
        assert_eq!(c(&["127.0.0.1:6789", "127.0.0.1:6789"]), "127.0.0.1:6789");
        assert_eq!(
            c(&["[v2:127.0.0.1:3300,v1:127.0.0.1:6789]", "127.0.0.1:6789"]),
            "[v2:127.0.0.1:3300,v1:127.0.0.1:6789]"
        );
        assert_eq!(c(&["a:1,b:2", " ", "b:2", "c:3"]), "a:1,b:2,c:3");
    }
}

pub(crate) fn timeout_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

impl fmt::Debug for ConnectConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectConfig")
            .field("monitors", &self.monitors)
            .field("user", &self.user)
            .field("key", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A connected cluster handle (`rados_t`).
///
/// `Send + Sync`: librados cluster handles are thread safe (see the SAFETY
/// notes in `sys.rs`); configuration only happens inside [`Cluster::connect`]
/// before the handle is shared. Shut down when the last clone of the
/// underlying handle goes away, i.e. after the `Cluster` and every
/// [`IoCtx`]/[`crate::rbd::Image`] created from it have been dropped.
pub struct Cluster {
    pub(crate) handle: Arc<sys::Rados>,
    pub(crate) mgr: Arc<crate::command::MgrLane>,
    monitors: String,
    user: String,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("monitors", &self.monitors)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Options handed to librados. `(name, value, required)`: failing to set a
/// required one aborts the connect; the others are best effort (they may not
/// exist in every Ceph release).
///
/// `mon_op_timeout` false leaves `rados_mon_op_timeout` at 0 (wait forever): the handle for
/// manager commands, whose deadline is enforced from outside (see `command.rs`).
fn options(
    cfg: &ConnectConfig,
    mon_host: &str,
    mon_op_timeout: bool,
) -> Vec<(&'static str, String, bool)> {
    let t = cfg.timeout_secs().to_string();
    let mon_t = if mon_op_timeout {
        t.clone()
    } else {
        "0".into()
    };
    vec![
        // Quiet: nothing on stderr, no log file, no admin socket.
        ("log_to_stderr", "false".into(), true),
        ("err_to_stderr", "false".into(), true),
        ("log_file", String::new(), true),
        ("log_to_file", "false".into(), false),
        ("log_to_syslog", "false".into(), false),
        ("err_to_syslog", "false".into(), false),
        ("admin_socket", String::new(), true),
        // Where and who; never a keyring file (key takes precedence, and an
        // empty keyring path means no default location is searched).
        ("mon_host", mon_host.to_string(), true),
        ("keyring", String::new(), true),
        ("keyfile", String::new(), false),
        ("key", cfg.key.trim().to_string(), true),
        // Timeouts.
        ("client_mount_timeout", t.clone(), true),
        ("rados_mon_op_timeout", mon_t, true),
        ("rados_osd_op_timeout", t, true),
    ]
}

impl Cluster {
    /// Connects and authenticates; blocks for at most about `cfg.timeout`.
    pub fn connect(cfg: &ConnectConfig) -> Result<Cluster> {
        let handle = connect_handle(cfg, true)?;
        Ok(Cluster {
            handle: Arc::new(handle),
            mgr: Arc::new(crate::command::MgrLane::new(cfg.clone())),
            monitors: cfg.mon_host(),
            user: cfg.user_id().to_string(),
        })
    }

    /// The monitors this handle was connected to (`a,b,c`).
    pub fn monitors(&self) -> &str {
        &self.monitors
    }

    /// The user id (without `client.`).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// This client's global id: `client.<id>` in the cluster, and the id of
    /// its watches in [`crate::rbd::Image::watchers`].
    pub fn instance_id(&self) -> u64 {
        self.handle.instance_id()
    }

    /// The cluster fsid.
    pub fn fsid(&self) -> Result<String> {
        self.handle
            .fsid()
            .map_err(|e| Error::new("get fsid", e, "").from_service(Service::Monitor))
    }

    /// The id of pool `name`; `NotFound` if there is none.
    pub fn pool_lookup(&self, name: &str) -> Result<i64> {
        self.handle.pool_lookup(name).map_err(|e| {
            Error::new("look up pool", e, name.to_string()).from_service(Service::Monitor)
        })
    }

    /// The name of pool `id`; `NotFound` if there is none.
    pub fn pool_name(&self, id: i64) -> Result<String> {
        self.handle.pool_reverse_lookup(id).map_err(|e| {
            Error::new("look up pool id", e, id.to_string()).from_service(Service::Monitor)
        })
    }

    /// An io context on pool `pool`, in RADOS namespace `namespace` (`""` is
    /// the default namespace).
    pub fn ioctx(&self, pool: &str, namespace: &str) -> Result<IoCtx> {
        let raw = self
            .handle
            .ioctx_by_name(pool, namespace)
            .map_err(|e| Error::new("open pool", e, describe_pool(pool, namespace)))?;
        Ok(IoCtx::new(raw, pool.to_string(), namespace.to_string()))
    }

    /// An io context on the pool with id `id`, in RADOS namespace `namespace`.
    pub fn ioctx_by_id(&self, id: i64, namespace: &str) -> Result<IoCtx> {
        let raw = self
            .handle
            .ioctx_by_id(id, namespace)
            .map_err(|e| Error::new("open pool", e, describe_pool(&format!("#{id}"), namespace)))?;
        let name = self
            .handle
            .pool_reverse_lookup(id)
            .unwrap_or_else(|_| format!("#{id}"));
        Ok(IoCtx::new(raw, name, namespace.to_string()))
    }
}

/// Creates, configures and connects one librados handle; blocks for at most about
/// `cfg.timeout`. See [`options`] for `mon_op_timeout`.
pub(crate) fn connect_handle(cfg: &ConnectConfig, mon_op_timeout: bool) -> Result<sys::Rados> {
    let user = cfg.user_id().to_string();
    let mon_host = cfg.mon_host();
    let who = format!("to monitors {mon_host} as client.{user}");
    if mon_host.is_empty() {
        return Err(
            Error::invalid("connect", format!("as client.{user}")).with_detail("no monitors given")
        );
    }
    if user.is_empty() {
        return Err(Error::invalid("connect", format!("to monitors {mon_host}"))
            .with_detail("no user given"));
    }
    if let Err(why) = check_key(&cfg.key) {
        return Err(
            Error::invalid("connect", who).with_detail(format!("the key for client.{user} {why}"))
        );
    }

    sys::load().map_err(|why| {
        Error::new("load the Ceph client libraries", libc::ELIBACC, "")
            .with_detail(why)
            .from_service(Service::Client)
    })?;
    let mut h = sys::Rados::create(&user).map_err(|e| {
        Error::new("rados create", e, format!("for client.{user}")).from_service(Service::Client)
    })?;
    for (name, value, required) in options(cfg, &mon_host, mon_op_timeout) {
        if let Err(e) = h.conf_set(name, &value) {
            if required {
                // Never include the value: it may be the key.
                return Err(Error::new("set config option", e, name).from_service(Service::Client));
            }
            tracing::debug!(option = name, errno = e, "optional librados option not set");
        }
    }

    let secs = cfg.timeout_secs();
    let started = Instant::now();
    if let Err(e) = h.connect() {
        let elapsed = started.elapsed();
        tracing::debug!(%mon_host, %user, errno = e, ?elapsed, "rados connect failed");
        return Err(connect_error(e, &mon_host, &user, secs));
    }
    tracing::debug!(%mon_host, %user, elapsed = ?started.elapsed(), "connected to ceph");
    Ok(h)
}

/// Checks that `key` is a cephx key librados can decode: base64 (standard
/// alphabet, padded) of `u16 type, utime created, u16 len, secret[len]`, with
/// type AES (16-byte secret) or NONE. librados logs an undecodable key
/// verbatim on stderr, so it must never see one. Returns what is wrong,
/// without echoing the key.
fn check_key(key: &str) -> std::result::Result<(), &'static str> {
    let key = key.trim();
    if key.is_empty() {
        return Err("is empty");
    }
    let raw = decode_base64(key).ok_or("is not valid base64")?;
    if raw.len() < 12 {
        return Err("is too short to be a cephx key");
    }
    let ty = u16::from_le_bytes([raw[0], raw[1]]);
    let len = usize::from(u16::from_le_bytes([raw[10], raw[11]]));
    if raw.len() < 12 + len {
        return Err("is truncated (not a complete cephx key)");
    }
    match (ty, len) {
        (1, 16) | (0, _) => Ok(()),
        (1, _) => Err("has a secret of the wrong length"),
        _ => Err("has an unsupported key type"),
    }
}

/// Standard base64 with `=` padding (the form `ceph auth` prints).
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let b = s.as_bytes();
    if b.is_empty() || b.len() % 4 != 0 {
        return None;
    }
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return None;
    }
    let body = &b[..b.len() - pad];
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in body {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

fn describe_pool(pool: &str, ns: &str) -> String {
    if ns.is_empty() {
        pool.to_string()
    } else {
        format!("{pool} namespace {ns}")
    }
}

/// Turns a `rados_connect` failure into a clear message (never containing
/// the key).
fn connect_error(errno: i32, mon_host: &str, user: &str, secs: u64) -> Error {
    let e = match errno {
        libc::ETIMEDOUT => Error::new(
            "cannot reach monitors",
            errno,
            format!("{mon_host} within {secs}s"),
        )
        .with_detail(format!("no monitor answered as client.{user}")),
        libc::EACCES | libc::EPERM => Error::new(
            "authenticate",
            errno,
            format!("as client.{user} to monitors {mon_host}"),
        )
        .with_detail(format!(
            "the key for client.{user} was rejected (wrong key, or no such user)"
        )),
        // The key was validated before; what librados still rejects as
        // invalid at this point is a monitor list it cannot parse or resolve.
        libc::EINVAL => Error::new(
            "connect",
            errno,
            format!("to monitors {mon_host} as client.{user}"),
        )
        .with_detail(format!(
            "cannot parse or resolve the monitor addresses {mon_host:?}"
        )),
        libc::ENOENT => Error::new("connect", errno, format!("as client.{user}"))
            .with_detail(format!("cannot identify monitors from {mon_host:?}")),
        _ => Error::new(
            "connect",
            errno,
            format!("to monitors {mon_host} as client.{user}"),
        ),
    };
    e.from_service(Service::Monitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AQBd8wJlAAAAABAAZmVycm9jZXBoLXRlc3Qtaw==";

    fn cfg() -> ConnectConfig {
        ConnectConfig::new(["127.0.0.1:1"], "client.someone", KEY)
            .with_timeout(Duration::from_millis(2500))
    }

    #[test]
    fn debug_redacts_key() {
        let s = format!("{:?}", cfg());
        assert!(!s.contains(KEY), "{s}");
        assert!(s.contains("<redacted>"));
        assert!(s.contains("127.0.0.1:1"));
    }

    #[test]
    fn timeout_rounding() {
        assert_eq!(timeout_secs(Duration::ZERO), 1);
        assert_eq!(timeout_secs(Duration::from_millis(10)), 1);
        assert_eq!(timeout_secs(Duration::from_secs(3)), 3);
        assert_eq!(timeout_secs(Duration::from_millis(2500)), 3);
        assert_eq!(cfg().timeout_secs(), 3);
    }

    #[test]
    fn user_and_monitors_normalised() {
        let mut c = cfg();
        assert_eq!(c.user_id(), "someone");
        c.monitors = vec![" 1.2.3.4:6789".into(), "".into(), "5.6.7.8:3300 ".into()];
        assert_eq!(c.mon_host(), "1.2.3.4:6789,5.6.7.8:3300");
    }

    #[test]
    fn options_are_complete_and_errors_never_show_key() {
        let c = cfg();
        let opts = options(&c, "127.0.0.1:1", true);
        let get = |n: &str| opts.iter().find(|o| o.0 == n).map(|o| o.1.clone());
        assert_eq!(get("keyring").as_deref(), Some(""));
        assert_eq!(get("admin_socket").as_deref(), Some(""));
        assert_eq!(get("log_file").as_deref(), Some(""));
        assert_eq!(get("log_to_stderr").as_deref(), Some("false"));
        assert_eq!(get("err_to_stderr").as_deref(), Some("false"));
        assert_eq!(get("client_mount_timeout").as_deref(), Some("3"));
        assert_eq!(get("rados_mon_op_timeout").as_deref(), Some("3"));
        assert_eq!(get("rados_osd_op_timeout").as_deref(), Some("3"));
        for errno in [
            libc::ETIMEDOUT,
            libc::EACCES,
            libc::EPERM,
            libc::EINVAL,
            libc::ENOENT,
            libc::EIO,
        ] {
            let e = connect_error(errno, "127.0.0.1:1", "someone", 3).to_string();
            assert!(!e.contains(KEY), "{e}");
            assert!(e.contains("client.someone"), "{e}");
        }
        let e = connect_error(libc::ETIMEDOUT, "127.0.0.1:1", "someone", 3).to_string();
        assert!(
            e.starts_with("cannot reach monitors 127.0.0.1:1 within 3s: "),
            "{e}"
        );
        let e = connect_error(libc::EACCES, "m:1", "someone", 3).to_string();
        assert!(e.contains("the key for client.someone was rejected"), "{e}");
    }

    #[test]
    fn invalid_configs_rejected_before_connecting() {
        let mut c = cfg();
        c.monitors.clear();
        assert_eq!(
            Cluster::connect(&c).map(drop).map_err(|e| e.kind()),
            Err(crate::ErrorKind::InvalidArgument)
        );
        for (key, why) in [
            (" ".to_string(), "key for client.someone is empty"),
            (format!("{KEY}\0"), "not valid base64"),
            ("notbase64!!".to_string(), "not valid base64"),
            ("AQBd8wJr".to_string(), "too short"),
            (
                format!("{}==", &VALID_KEY[..VALID_KEY.len() - 6]),
                "truncated",
            ),
        ] {
            let mut c = cfg();
            c.key = key.clone();
            let e = Cluster::connect(&c)
                .map(drop)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(why), "{key:?}: {e}");
            assert!(key.trim().is_empty() || !e.contains(key.trim()), "{e}");
        }
    }

    /// A syntactically valid cephx key (not of any real cluster).
    const VALID_KEY: &str = "AQBd8wJlAAAAABAAZmVycm9jZXBoLXRlc3QteA==";

    #[test]
    fn key_validation() {
        assert_eq!(check_key(VALID_KEY), Ok(()));
        assert_eq!(check_key(&format!(" {VALID_KEY}\n")), Ok(()));
        assert!(check_key("AQBd8wJl AAAAABAAZmVycm9jZXBoLXRlc3QteA==").is_err());
        assert!(check_key("AQBd8wJlAAAAABAAZmVycm9jZXBoLXRlc3QteA").is_err());
        assert_eq!(decode_base64("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(decode_base64("aGk="), Some(b"hi".to_vec()));
        assert_eq!(decode_base64("aGV5"), Some(b"hey".to_vec()));
        assert_eq!(decode_base64("a==="), None);
    }
}
