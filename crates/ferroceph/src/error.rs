//! The driver's one error type. Domain code (Ceph work, journal, node attach and mount)
//! returns `Error`; the gRPC layer converts it to a `tonic::Status` here and nowhere else.
//! Each variant is named for what the caller can do about it, which is what the CSI spec's
//! codes mean.

use rados::ErrorKind;
use tonic::{Code, Status};

#[derive(Debug)]
pub enum Error {
    /// The request is wrong; the message says which field and how to fix it.
    InvalidArgument(String),
    /// The volume, snapshot or path does not exist.
    NotFound(String),
    /// A different object already has this name.
    AlreadyExists(String),
    /// The object is in a state that forbids the operation (in use, has snapshots,
    /// unsupported feature...); retrying unchanged will not help until the state changes.
    FailedPrecondition(String),
    /// Another operation on the same object is in flight; retry later.
    Aborted(String),
    /// A size outside what the volume or pool allows.
    OutOfRange(String),
    /// The cluster or a node resource did not answer in time or is down; retry later.
    Unavailable(String),
    /// The RPC's own deadline passed.
    DeadlineExceeded(String),
    /// The cephx user may not do this.
    PermissionDenied(String),
    /// Not enough space or another resource.
    ResourceExhausted(String),
    /// The driver does not implement this.
    Unimplemented(String),
    /// A bug or an unexpected answer; the message says what was being done.
    Internal(String),
    /// A Ceph call failed; `what` says what the driver was doing. Mapped by the error's kind.
    Ceph { what: String, source: rados::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(msg: impl std::fmt::Display) -> Error {
        Error::InvalidArgument(msg.to_string())
    }
    pub fn not_found(msg: impl std::fmt::Display) -> Error {
        Error::NotFound(msg.to_string())
    }
    pub fn precondition(msg: impl std::fmt::Display) -> Error {
        Error::FailedPrecondition(msg.to_string())
    }
    pub fn internal(msg: impl std::fmt::Display) -> Error {
        Error::Internal(msg.to_string())
    }
    pub fn unavailable(msg: impl std::fmt::Display) -> Error {
        Error::Unavailable(msg.to_string())
    }

    /// A Ceph error with what the driver was doing: `.map_err(Error::ceph_ctx("open image"))`.
    pub fn ceph(what: impl Into<String>, source: rados::Error) -> Error {
        Error::Ceph {
            what: what.into(),
            source,
        }
    }

    pub fn ceph_ctx(what: &str) -> impl FnOnce(rados::Error) -> Error + '_ {
        move |e| Error::ceph(what, e)
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Aborted(_) => Code::Aborted,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::Unavailable(_) => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Internal(_) => Code::Internal,
            Error::Ceph { source, .. } => match source.kind() {
                ErrorKind::NotFound => Code::NotFound,
                ErrorKind::AlreadyExists => Code::AlreadyExists,
                ErrorKind::PermissionDenied => Code::PermissionDenied,
                ErrorKind::TimedOut => Code::Unavailable,
                ErrorKind::Busy => Code::FailedPrecondition,
                ErrorKind::InvalidArgument => Code::InvalidArgument,
                _ => Code::Internal,
            },
        }
    }

    /// The message a user reads: what failed, and for Ceph errors what to check.
    pub fn message(&self) -> String {
        match self {
            Error::InvalidArgument(m)
            | Error::NotFound(m)
            | Error::AlreadyExists(m)
            | Error::FailedPrecondition(m)
            | Error::Aborted(m)
            | Error::OutOfRange(m)
            | Error::Unavailable(m)
            | Error::DeadlineExceeded(m)
            | Error::PermissionDenied(m)
            | Error::ResourceExhausted(m)
            | Error::Unimplemented(m)
            | Error::Internal(m) => m.clone(),
            Error::Ceph { what, source } => {
                let msg = format!("{what}: {source}");
                match source.kind() {
                    ErrorKind::PermissionDenied => format!(
                        "{msg} (check the cephx user and key in the secret and the user's caps)"
                    ),
                    ErrorKind::TimedOut => format!("{msg} ({})", timed_out_hint(source)),
                    _ => msg,
                }
            }
        }
    }

    /// The same error with `prefix: ` in front of its message (same code).
    pub fn context(self, prefix: impl std::fmt::Display) -> Error {
        let code = self.code();
        let msg = format!("{prefix}: {}", self.message());
        Error::from_code(code, msg)
    }

    /// The variant for a gRPC code; for the few places that carry a code across a boundary
    /// (a child process's answer, a re-raised error with context).
    pub fn from_code(code: Code, msg: String) -> Error {
        match code {
            Code::InvalidArgument => Error::InvalidArgument(msg),
            Code::NotFound => Error::NotFound(msg),
            Code::AlreadyExists => Error::AlreadyExists(msg),
            Code::FailedPrecondition => Error::FailedPrecondition(msg),
            Code::Aborted => Error::Aborted(msg),
            Code::OutOfRange => Error::OutOfRange(msg),
            Code::Unavailable => Error::Unavailable(msg),
            Code::DeadlineExceeded => Error::DeadlineExceeded(msg),
            Code::PermissionDenied => Error::PermissionDenied(msg),
            Code::ResourceExhausted => Error::ResourceExhausted(msg),
            Code::Unimplemented => Error::Unimplemented(msg),
            _ => Error::Internal(msg),
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Code::NotFound
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for Error {}

/// The one place a driver error becomes a gRPC status.
impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.message())
    }
}

impl From<crate::config::ConfigError> for Error {
    fn from(e: crate::config::ConfigError) -> Error {
        match e {
            crate::config::ConfigError::UnknownCluster { .. } => {
                Error::InvalidArgument(e.to_string())
            }
            _ => Error::FailedPrecondition(e.to_string()),
        }
    }
}

/// What a timed-out Ceph call waited for, as the access layer classified the operation.
fn timed_out_hint(e: &rados::Error) -> &'static str {
    match e.service {
        rados::Service::Monitor => "no monitor answered in time: is the monitor quorum up?",
        rados::Service::Manager => {
            "the mgr did not answer in time (its volumes module waits for the MDS): are the mgr and the filesystem's MDS up?"
        }
        rados::Service::Osd => {
            "waited for the OSDs: no OSD answered in time; are the OSDs up and the pool's PGs active?"
        }
        rados::Service::Client => "the Ceph client library did not answer in time",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_names_what_it_waited_for() {
        let osd: Status = Error::ceph(
            "journal lookup",
            rados::Error::new(
                "omap get",
                libc::ETIMEDOUT,
                "csi.volumes.default in pool rbd",
            ),
        )
        .into();
        assert_eq!(osd.code(), Code::Unavailable);
        assert!(osd.message().contains("OSD"), "{}", osd.message());
        let mon: Status = Error::ceph(
            "read pool usage",
            rados::Error::new("mon command", libc::ETIMEDOUT, "df")
                .from_service(rados::Service::Monitor),
        )
        .into();
        assert_eq!(mon.code(), Code::Unavailable);
        assert!(
            mon.message().contains("monitor quorum"),
            "{}",
            mon.message()
        );
    }

    #[test]
    fn codes_survive_context_and_the_mapping() {
        let e = Error::Aborted("busy".into()).context("delete volume x");
        assert_eq!(e.code(), Code::Aborted);
        assert_eq!(e.message(), "delete volume x: busy");
        let back = Error::from_code(Code::OutOfRange, "too big".into());
        assert_eq!(Status::from(back).code(), Code::OutOfRange);
        let denied = Error::ceph(
            "open pool",
            rados::Error::new("open pool", libc::EPERM, "rbd"),
        );
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(denied.message().contains("caps"));
    }
}
