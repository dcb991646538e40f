//! gRPC server on a unix socket: one log line per RPC (never the request body, so never a
//! secret), a request id, a deadline on every call, and a guard that turns a panic into
//! an Internal error instead of a dead connection.

use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::body::Body;
use tonic::Status;
use tower::{Layer, Service};
use tracing::Instrument;

/// Parses `unix:///abs/path`, `unix:/abs/path` or a bare absolute path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, String> {
    let path = if let Some(rest) = endpoint.strip_prefix("unix://") {
        rest
    } else if let Some(rest) = endpoint.strip_prefix("unix:") {
        rest
    } else if endpoint.starts_with('/') {
        endpoint
    } else {
        return Err(format!(
            "endpoint {endpoint:?} is not supported: use unix:///path/to/csi.sock"
        ));
    };
    if !path.starts_with('/') || path.len() < 2 {
        return Err(format!(
            "endpoint {endpoint:?} must name an absolute socket path, e.g. unix:///csi/csi.sock"
        ));
    }
    Ok(PathBuf::from(path))
}

/// Creates the socket's directory and removes a stale socket left by an earlier run.
/// Refuses to remove anything that is not a socket.
pub fn prepare_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

tokio::task_local! {
    /// The RPC the current task serves, for metrics recorded deeper down.
    pub static RPC_METHOD: String;
}

/// Adds the volume (or request name) an RPC works on to its log lines.
pub fn note_volume(id: &str) {
    if !id.is_empty() {
        tracing::Span::current().record("volume", id);
    }
}

/// The id of the request being served, for handlers' own log lines.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

#[derive(Clone)]
pub struct RpcLayer {
    pub deadline: Duration,
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            deadline: self.deadline,
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    deadline: Duration,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for RpcService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // Take the service that was polled ready, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("unknown")
            .to_string();
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(|| format!("req-{}", NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)));
        req.extensions_mut().insert(RequestId(request_id.clone()));
        let deadline = client_deadline(&req)
            .map(|d| d.min(self.deadline))
            .unwrap_or(self.deadline);
        let span = tracing::info_span!(
            "rpc",
            method = %method,
            req = %request_id,
            volume = tracing::field::Empty
        );
        let started = Instant::now();
        let metrics = crate::metrics::get();
        metrics.rpc_started(&method);
        Box::pin(async move {
            let call = RPC_METHOD.scope(
                method.clone(),
                AssertUnwindSafe(inner.call(req).instrument(span.clone())).catch_unwind(),
            );
            let result = match tokio::time::timeout(deadline, call).await {
                Ok(Ok(result)) => result,
                Ok(Err(panic)) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(parent: &span, panic = %what, "handler panicked");
                    Ok(Status::internal(format!(
                        "internal error in {method} (request {request_id}); the driver log has details"
                    ))
                    .into_http())
                }
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "{method} did not finish within {:.1}s; it is safe to retry",
                    deadline.as_secs_f64()
                ))
                .into_http()),
            };
            let code = match &result {
                Ok(resp) => grpc_code(resp),
                Err(_) => "Transport".to_string(),
            };
            metrics.rpc_finished(&method, &code, started.elapsed());
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if code == "Ok" {
                tracing::info!(parent: &span, code = %code, ms = format!("{ms:.1}"), "rpc done");
            } else {
                let msg = result
                    .as_ref()
                    .ok()
                    .and_then(|r| r.headers().get("grpc-message"))
                    .and_then(|v| v.to_str().ok())
                    .map(percent_decode)
                    .unwrap_or_default();
                tracing::warn!(parent: &span, code = %code, ms = format!("{ms:.1}"), error = %msg, "rpc failed");
            }
            result
        })
    }
}

/// The deadline the client sent in the `grpc-timeout` header, if any.
fn client_deadline<B>(req: &http::Request<B>) -> Option<Duration> {
    let v = req.headers().get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 {
        return None;
    }
    let (num, unit) = v.split_at(v.len() - 1);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Error responses carry grpc-status in their headers; a missing header means the status
/// follows in the trailers, which for our unary handlers means success.
fn grpc_code<B>(resp: &http::Response<B>) -> String {
    match resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        None => "Ok".to_string(),
        Some(s) => s
            .parse::<i32>()
            .map(|c| format!("{:?}", tonic::Code::from(c)))
            .unwrap_or_else(|_| s.to_string()),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() && s.is_char_boundary(i + 3) {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("/tmp/x.sock").unwrap(),
            PathBuf::from("/tmp/x.sock")
        );
        assert!(socket_path("tcp://127.0.0.1:10000").is_err());
        assert!(socket_path("unix://relative").is_err());
        assert!(socket_path("unix://").is_err());
    }

    #[test]
    fn grpc_timeouts() {
        let req = http::Request::builder()
            .header("grpc-timeout", "1500m")
            .body(())
            .unwrap();
        assert_eq!(client_deadline(&req), Some(Duration::from_millis(1500)));
        let req = http::Request::builder()
            .header("grpc-timeout", "S")
            .body(())
            .unwrap();
        assert_eq!(client_deadline(&req), None);
    }

    #[test]
    fn decodes_grpc_message() {
        assert_eq!(percent_decode("no%20such%20volume"), "no such volume");
        assert_eq!(percent_decode("50%"), "50%");
    }

    #[test]
    fn stale_socket_is_replaced_but_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sub/csi.sock");
        prepare_socket(&sock).unwrap();
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        drop(l);
        prepare_socket(&sock).unwrap();
        assert!(!sock.exists());
        std::fs::write(&sock, b"data").unwrap();
        assert!(prepare_socket(&sock).is_err());
    }
}
