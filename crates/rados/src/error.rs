//! The crate's error type: an operation, the errno librados/librbd returned,
//! and human-readable context (object, image, pool...).

use std::borrow::Cow;
use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Coarse classification of an [`Error`], for callers that map errors to
/// gRPC/CSI codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `ENOENT`
    NotFound,
    /// `EEXIST`
    AlreadyExists,
    /// `EBUSY`, `ENOTEMPTY` (e.g. an image that still has snapshots or
    /// watchers)
    Busy,
    /// `EACCES`, `EPERM`
    PermissionDenied,
    /// `ETIMEDOUT`
    TimedOut,
    /// `EINVAL`, `ERANGE`, `EDOM`
    InvalidArgument,
    /// Anything else.
    Other,
}

/// Which part of the cluster an operation waits for: what a timeout means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// The monitor quorum (connecting, monitor commands, the cluster maps).
    Monitor,
    /// The active mgr (its modules, e.g. CephFS `volumes`).
    Manager,
    /// The OSDs serving the object or image.
    Osd,
    /// Nothing remote: loading the libraries, configuring the handle.
    Client,
}

/// A failed Ceph operation.
///
/// `Display` renders as `"{op} {context}: {strerror} (errno {errno})"`,
/// followed by `": {detail}"` when there is one (e.g. the status string of a
/// monitor command), for example
/// `rbd create csi-vol-x in pool rbd: File exists (errno 17)`.
///
/// Errors are built by this crate only from names, pools and status strings;
/// they never contain key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// What was attempted, e.g. `"rbd create"`.
    pub op: Cow<'static, str>,
    /// Positive errno value.
    pub errno: i32,
    /// What it was attempted on, e.g. `"csi-vol-x in pool rbd"`.
    pub context: String,
    /// Extra explanation, e.g. the status string of a failed command.
    pub detail: Option<String>,
    /// What the operation waited for; OSDs unless the operation says otherwise.
    pub service: Service,
}

impl Error {
    /// New error; `errno` may be given positive or negative.
    pub fn new(op: impl Into<Cow<'static, str>>, errno: i32, context: impl Into<String>) -> Error {
        Error {
            op: op.into(),
            errno: errno.saturating_abs(),
            context: context.into(),
            detail: None,
            service: Service::Osd,
        }
    }

    /// The same error, marked as waiting for `service`.
    pub fn from_service(mut self, service: Service) -> Error {
        self.service = service;
        self
    }

    /// Adds an explanation (ignored when empty).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Error {
        let d = detail.into();
        let d = d.trim();
        if !d.is_empty() {
            self.detail = Some(d.to_string());
        }
        self
    }

    /// An `EINVAL` error for arguments rejected before reaching Ceph.
    pub fn invalid(op: impl Into<Cow<'static, str>>, context: impl Into<String>) -> Error {
        Error::new(op, libc::EINVAL, context)
    }

    /// The classification of this error.
    pub fn kind(&self) -> ErrorKind {
        kind_of(self.errno)
    }

    /// The errno as a `std::io::Error`.
    pub fn to_io_error(&self) -> std::io::Error {
        std::io::Error::from_raw_os_error(self.errno)
    }

    /// `strerror` text, e.g. "File exists".
    pub fn description(&self) -> String {
        strerror(self.errno)
    }
}

/// Maps an errno (positive or negative) to an [`ErrorKind`].
pub fn kind_of(errno: i32) -> ErrorKind {
    match errno.saturating_abs() {
        libc::ENOENT => ErrorKind::NotFound,
        libc::EEXIST => ErrorKind::AlreadyExists,
        libc::EBUSY | libc::ENOTEMPTY => ErrorKind::Busy,
        libc::EACCES | libc::EPERM => ErrorKind::PermissionDenied,
        libc::ETIMEDOUT => ErrorKind::TimedOut,
        libc::EINVAL | libc::ERANGE | libc::EDOM => ErrorKind::InvalidArgument,
        _ => ErrorKind::Other,
    }
}

/// `strerror(errno)` without Rust's " (os error N)" suffix.
pub(crate) fn strerror(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    let suffix = format!(" (os error {errno})");
    match s.strip_suffix(&suffix) {
        Some(t) => t.to_string(),
        None => s,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.op)?;
        if !self.context.is_empty() {
            write!(f, " {}", self.context)?;
        }
        write!(f, ": {} (errno {})", strerror(self.errno), self.errno)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        std::io::Error::new(e.to_io_error().kind(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_format() {
        let e = Error::new("rbd create", -libc::EEXIST, "csi-vol-x in pool rbd");
        assert_eq!(
            e.to_string(),
            "rbd create csi-vol-x in pool rbd: File exists (errno 17)"
        );
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        let e =
            Error::new("mon command", libc::EINVAL, "\"foo\"").with_detail("unknown command foo\n");
        assert_eq!(
            e.to_string(),
            "mon command \"foo\": Invalid argument (errno 22): unknown command foo"
        );
        let e = Error::new("fsid", libc::ENOENT, "");
        assert_eq!(e.to_string(), "fsid: No such file or directory (errno 2)");
        assert_eq!(e.with_detail("  ").detail, None);
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_of(libc::ENOENT), ErrorKind::NotFound);
        assert_eq!(kind_of(-libc::ENOENT), ErrorKind::NotFound);
        assert_eq!(kind_of(libc::EBUSY), ErrorKind::Busy);
        assert_eq!(kind_of(libc::ENOTEMPTY), ErrorKind::Busy);
        assert_eq!(kind_of(libc::EPERM), ErrorKind::PermissionDenied);
        assert_eq!(kind_of(libc::EACCES), ErrorKind::PermissionDenied);
        assert_eq!(kind_of(libc::ETIMEDOUT), ErrorKind::TimedOut);
        assert_eq!(kind_of(libc::EINVAL), ErrorKind::InvalidArgument);
        assert_eq!(kind_of(libc::EIO), ErrorKind::Other);
        assert_eq!(kind_of(i32::MIN), ErrorKind::Other);
    }

    #[test]
    fn io_error_conversion() {
        let e = Error::new("stat", libc::ENOENT, "obj in pool rbd");
        let io: std::io::Error = e.into();
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert!(io.to_string().contains("obj in pool rbd"));
    }
}
