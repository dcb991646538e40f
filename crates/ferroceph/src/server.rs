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
pub(crate) fn socket_path(endpoint: &str) -> Result<PathBuf, String> {
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
pub(crate) fn prepare_socket(path: &Path) -> std::io::Result<()> {
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

// ===== clients that send a socket path as :authority =====
//
// grpc C-core (Python, C++, Ruby) sends the percent-encoded socket path as HTTP/2 `:authority`
// over a unix socket, grpc-java the bare path. The h2 crate under tonic parses `:authority` as a
// URI authority and resets such a stream with PROTOCOL_ERROR before any handler runs, and offers
// no setting to relax it. So the bytes a client sends pass through `FixAuthority` first: every
// header block is decoded (its HPACK state has to be followed anyway), and from the first block
// whose `:authority` h2 would refuse on, blocks are re-encoded with `localhost` in its place.
// Connections of clients that send a valid authority (grpc-go: kubelet, the sidecars) reach h2
// byte for byte unchanged.

const FRAME_HEADER_LEN: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"; h2 checks it.
const CLIENT_PREFACE_LEN: usize = 24;
/// Re-encoded blocks are cut into frames no larger than the smallest SETTINGS_MAX_FRAME_SIZE
/// a server can have, so they fit whatever the server announced.
const SAFE_FRAME_LEN: usize = 16_384;
/// A header block larger than this ends the connection; CSI requests carry a few hundred
/// bytes of headers, and h2 refuses header lists past 16 KiB by default.
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// SETTINGS_HEADER_TABLE_SIZE the server's decoder has (the protocol default; neither tonic nor
/// this driver changes it): a client's encoder may not grow its table past it.
const HEADER_TABLE_SIZE: usize = 4096;
/// What a client's unusable `:authority` is replaced with (what grpc-go sends on unix sockets).
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// A header block being collected from a HEADERS frame and its CONTINUATION frames.
struct HeaderBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    /// The HPACK fragment, without padding and priority fields.
    fragment: Vec<u8>,
    /// The frames as received, forwarded as they are when nothing needs changing.
    raw: Vec<u8>,
}

/// The client-to-server half of an HTTP/2 connection, as a byte-stream rewriter: bytes go in
/// with `feed`, and come out (changed only as described above) with `take`.
pub(crate) struct AuthorityRewriter {
    input: Vec<u8>,
    output: Vec<u8>,
    output_pos: usize,
    /// Bytes to forward untouched: the rest of the preface or of a frame's payload.
    skip: usize,
    block: Option<HeaderBlock>,
    decoder: loona_hpack::Decoder<'static>,
    /// Present from the first block that had to be changed on.
    encoder: Option<loona_hpack::Encoder<'static>>,
}

impl Default for AuthorityRewriter {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        AuthorityRewriter {
            input: Vec::new(),
            output: Vec::new(),
            output_pos: 0,
            skip: CLIENT_PREFACE_LEN,
            block: None,
            decoder,
            encoder: None,
        }
    }
}

fn h2_error(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("HTTP/2 from the client: {what}"),
    )
}

/// Whether h2 accepts `value` as `:authority` (it parses it as a URI authority).
fn authority_ok(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

impl AuthorityRewriter {
    /// Whether bytes are waiting to be taken.
    pub(crate) fn has_output(&self) -> bool {
        self.output_pos < self.output.len()
    }

    /// Moves up to `max` processed bytes out.
    pub(crate) fn take(&mut self, max: usize) -> &[u8] {
        let start = self.output_pos;
        let end = self.output.len().min(start + max);
        self.output_pos = end;
        &self.output[start..end]
    }

    /// Takes bytes the client sent; an error means the connection cannot go on (h2 would
    /// end it for the same input).
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.output_pos == self.output.len() {
            self.output.clear();
            self.output_pos = 0;
        }
        self.input.extend_from_slice(bytes);
        let mut pos = 0;
        let result = loop {
            let avail = &self.input[pos..];
            if self.skip > 0 {
                let n = self.skip.min(avail.len());
                if n == 0 {
                    break Ok(());
                }
                self.output.extend_from_slice(&avail[..n]);
                self.skip -= n;
                pos += n;
                continue;
            }
            if avail.len() < FRAME_HEADER_LEN {
                break Ok(());
            }
            let len = u32::from_be_bytes([0, avail[0], avail[1], avail[2]]) as usize;
            let (kind, flags) = (avail[3], avail[4]);
            let stream = u32::from_be_bytes([avail[5], avail[6], avail[7], avail[8]]) & 0x7fff_ffff;
            let in_block = self.block.is_some();
            if kind == FRAME_HEADERS || (kind == FRAME_CONTINUATION && in_block) {
                let collected = self.block.as_ref().map_or(0, |b| b.raw.len());
                if collected + FRAME_HEADER_LEN + len > MAX_HEADER_BLOCK {
                    break Err(h2_error("header block too large"));
                }
                if avail.len() < FRAME_HEADER_LEN + len {
                    break Ok(());
                }
                let frame = avail[..FRAME_HEADER_LEN + len].to_vec();
                pos += frame.len();
                if let Err(e) = self.header_frame(kind, flags, stream, &frame) {
                    break Err(e);
                }
            } else if in_block {
                break Err(h2_error(
                    "a frame other than CONTINUATION inside a header block",
                ));
            } else {
                self.output.extend_from_slice(&avail[..FRAME_HEADER_LEN]);
                pos += FRAME_HEADER_LEN;
                self.skip = len;
            }
        };
        self.input.drain(..pos);
        result
    }

    /// The client closed its side: what could not be parsed goes on as it is, for h2 to judge.
    pub(crate) fn finish(&mut self) {
        if let Some(block) = self.block.take() {
            self.output.extend_from_slice(&block.raw);
        }
        self.output.append(&mut self.input);
    }

    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        frame: &[u8],
    ) -> std::io::Result<()> {
        let payload = &frame[FRAME_HEADER_LEN..];
        if kind == FRAME_HEADERS {
            if self.block.is_some() {
                return Err(h2_error("HEADERS inside a header block"));
            }
            let mut rest = payload;
            let mut pad = 0;
            if flags & FLAG_PADDED != 0 {
                let (&n, after) = rest
                    .split_first()
                    .ok_or_else(|| h2_error("HEADERS too short for its padding"))?;
                pad = usize::from(n);
                rest = after;
            }
            let mut priority = None;
            if flags & FLAG_PRIORITY != 0 {
                if rest.len() < 5 {
                    return Err(h2_error("HEADERS too short for its priority"));
                }
                let (p, after) = rest.split_at(5);
                priority = Some([p[0], p[1], p[2], p[3], p[4]]);
                rest = after;
            }
            if pad > rest.len() {
                return Err(h2_error("HEADERS padding longer than the frame"));
            }
            self.block = Some(HeaderBlock {
                stream,
                end_stream: flags & FLAG_END_STREAM != 0,
                priority,
                fragment: rest[..rest.len() - pad].to_vec(),
                raw: frame.to_vec(),
            });
        } else if let Some(block) = self.block.as_mut() {
            if block.stream != stream {
                return Err(h2_error("CONTINUATION of another stream"));
            }
            block.fragment.extend_from_slice(payload);
            block.raw.extend_from_slice(frame);
        }
        if flags & FLAG_END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                self.header_block(block)?;
            }
        }
        Ok(())
    }

    fn header_block(&mut self, block: HeaderBlock) -> std::io::Result<()> {
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let decoder = &mut self.decoder;
        let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
            decoder.decode_with_cb(&block.fragment, |name, value| {
                headers.push((name.into_owned(), value.into_owned()))
            })
        }));
        if !matches!(decoded, Ok(Ok(()))) {
            return Err(h2_error("undecodable header block (HPACK)"));
        }
        let mut changed = false;
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority" && !authority_ok(value) {
                if self.encoder.is_none() {
                    tracing::debug!(
                        authority = %String::from_utf8_lossy(value),
                        "client sent an :authority h2 refuses; serving it as localhost"
                    );
                }
                *value = REPLACEMENT_AUTHORITY.to_vec();
                changed = true;
            }
        }
        if !changed && self.encoder.is_none() {
            self.output.extend_from_slice(&block.raw);
            return Ok(());
        }
        // A table of size 0 for the encoder: it never refers to an entry of the server's
        // dynamic table, so what the client's blocks put there cannot confuse it.
        let encoder = self.encoder.get_or_insert_with(|| {
            let mut e = loona_hpack::Encoder::new();
            e.set_max_table_size(0);
            e
        });
        let encoded = encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let prefix: &[u8] = match &block.priority {
            Some(p) => p,
            None => &[],
        };
        let first_len = encoded.len().min(SAFE_FRAME_LEN - prefix.len());
        let (first, mut rest) = encoded.split_at(first_len);
        let mut flags = 0;
        if block.end_stream {
            flags |= FLAG_END_STREAM;
        }
        if block.priority.is_some() {
            flags |= FLAG_PRIORITY;
        }
        if rest.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        self.push_frame(FRAME_HEADERS, flags, block.stream, &[prefix, first]);
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(rest.len().min(SAFE_FRAME_LEN));
            rest = after;
            let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
            self.push_frame(FRAME_CONTINUATION, flags, block.stream, &[chunk]);
        }
        Ok(())
    }

    fn push_frame(&mut self, kind: u8, flags: u8, stream: u32, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.output
            .extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        self.output.push(kind);
        self.output.push(flags);
        self.output.extend_from_slice(&stream.to_be_bytes());
        for p in parts {
            self.output.extend_from_slice(p);
        }
    }
}

/// A server-side connection whose incoming HTTP/2 passes through an `AuthorityRewriter`.
pub(crate) struct FixAuthority<S> {
    io: S,
    rewriter: AuthorityRewriter,
    scratch: Box<[u8]>,
    eof: bool,
    failed: Option<(std::io::ErrorKind, String)>,
}

impl<S> FixAuthority<S> {
    pub(crate) fn new(io: S) -> Self {
        FixAuthority {
            io,
            rewriter: AuthorityRewriter::default(),
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
            eof: false,
            failed: None,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FixAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.rewriter.has_output() {
                buf.put_slice(this.rewriter.take(buf.remaining()));
                return Poll::Ready(Ok(()));
            }
            if let Some((kind, msg)) = &this.failed {
                return Poll::Ready(Err(std::io::Error::new(*kind, msg.clone())));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let mut read = tokio::io::ReadBuf::new(&mut this.scratch);
            match Pin::new(&mut this.io).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            if read.filled().is_empty() {
                this.eof = true;
                this.rewriter.finish();
            } else if let Err(e) = this.rewriter.feed(read.filled()) {
                tracing::warn!("closing a CSI client connection: {e}");
                this.failed = Some((e.kind(), e.to_string()));
            }
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FixAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for FixAuthority<S>
{
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The connections of a CSI socket, each through `FixAuthority`.
pub(crate) fn incoming(
    listener: tokio::net::UnixListener,
) -> impl futures::Stream<Item = std::io::Result<FixAuthority<tokio::net::UnixStream>>> {
    use futures::StreamExt;
    tokio_stream::wrappers::UnixListenerStream::new(listener)
        .map(|conn| conn.map(FixAuthority::new))
}

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

tokio::task_local! {
    /// The RPC the current task serves, for metrics recorded deeper down.
    pub(crate) static RPC_METHOD: String;
    /// When the current RPC's deadline passes.
    static RPC_DEADLINE: Instant;
}

/// How long the current RPC may still take (None outside an RPC).
pub(crate) fn time_left() -> Option<Duration> {
    RPC_DEADLINE
        .try_with(|d| d.saturating_duration_since(Instant::now()))
        .ok()
}

/// Adds the volume (or request name) an RPC works on to its log lines.
pub(crate) fn note_volume(id: &str) {
    if !id.is_empty() {
        tracing::Span::current().record("volume", id);
    }
}

#[derive(Clone)]
pub(crate) struct RpcLayer {
    pub(crate) deadline: Duration,
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
pub(crate) struct RpcService<S> {
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

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
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
                RPC_DEADLINE.scope(
                    started + deadline,
                    AssertUnwindSafe(inner.call(req).instrument(span.clone())).catch_unwind(),
                ),
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
pub(crate) async fn shutdown_signal() {
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

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn request(authority: &str, extra: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut h = vec![
            (":scheme", "http"),
            (":method", "POST"),
            (":authority", authority),
            (":path", "/csi.v1.Identity/Probe"),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
        ];
        h.extend_from_slice(extra);
        h.into_iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn encode(enc: &mut loona_hpack::Encoder<'static>, h: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        enc.encode(h.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
    }

    /// Runs bytes through a rewriter in pieces of `step` bytes.
    fn rewrite(input: &[u8], step: usize) -> std::io::Result<Vec<u8>> {
        let mut rw = AuthorityRewriter::default();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            rw.feed(piece)?;
            while rw.has_output() {
                out.extend_from_slice(rw.take(7));
            }
        }
        rw.finish();
        while rw.has_output() {
            out.extend_from_slice(rw.take(usize::MAX));
        }
        Ok(out)
    }

    /// What the server's h2 sees: (frame type, flags, stream, payload) after the preface.
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut rest = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            assert!(len <= SAFE_FRAME_LEN, "frame of {len} bytes");
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        out
    }

    /// The header lists the server decodes, by stream, with END_STREAM and the priority.
    type Decoded = (u32, bool, Option<Vec<u8>>, Vec<(Vec<u8>, Vec<u8>)>);
    fn server_view(bytes: &[u8]) -> Vec<Decoded> {
        let mut dec = loona_hpack::Decoder::new();
        dec.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        let mut out = Vec::new();
        // stream, END_STREAM, priority, fragment so far
        type Pending = (u32, bool, Option<Vec<u8>>, Vec<u8>);
        let mut block: Option<Pending> = None;
        for (kind, flags, stream, payload) in frames(bytes) {
            match kind {
                FRAME_HEADERS => {
                    let mut p = payload.as_slice();
                    let mut pad = 0;
                    if flags & FLAG_PADDED != 0 {
                        pad = p[0] as usize;
                        p = &p[1..];
                    }
                    let mut prio = None;
                    if flags & FLAG_PRIORITY != 0 {
                        prio = Some(p[..5].to_vec());
                        p = &p[5..];
                    }
                    let p = &p[..p.len() - pad];
                    block = Some((stream, flags & FLAG_END_STREAM != 0, prio, p.to_vec()));
                }
                FRAME_CONTINUATION => block.as_mut().unwrap().3.extend_from_slice(&payload),
                _ => continue,
            }
            if flags & FLAG_END_HEADERS != 0 {
                let (stream, end, prio, frag) = block.take().unwrap();
                out.push((stream, end, prio, dec.decode(&frag).unwrap()));
            }
        }
        out
    }

    #[test]
    fn valid_authorities_reach_h2_byte_for_byte() {
        let mut enc = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        for stream in [1, 3] {
            let block = encode(&mut enc, &request("localhost", &[]));
            input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, stream, &block));
            input.extend(frame(0x0, FLAG_END_STREAM, stream, &[0, 0, 0, 0, 0]));
        }
        for step in [1, 2, 5, 9, 64, 4096] {
            assert_eq!(rewrite(&input, step).unwrap(), input, "step {step}");
        }
    }

    #[test]
    fn socket_path_authorities_become_localhost() {
        // grpc C-core sends the percent-encoded path, grpc-java the bare one; the client's
        // encoder indexes them, so later requests refer to its dynamic table.
        for authority in [
            "%2Ftmp%2Fcsi.sock",
            "/var/lib/kubelet/plugins/x/csi.sock",
            "",
        ] {
            let mut enc = loona_hpack::Encoder::new();
            let mut input = PREFACE.to_vec();
            input.extend(frame(0x4, 0, 0, &[]));
            let ok = request("localhost", &[]);
            let bad = request(authority, &[("x-request-id", "r1")]);
            let big_value = "v".repeat(3 * SAFE_FRAME_LEN);
            let big = request(authority, &[("x-big", &big_value)]);
            // 1: valid, passed through; 3: path, padded and with a priority, split into
            // HEADERS + CONTINUATION; 5: the same again (indexed); 7: one that needs
            // CONTINUATION frames once re-encoded; 9: valid again, after the switch.
            let b1 = encode(&mut enc, &ok);
            input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &b1));
            let b3 = encode(&mut enc, &bad);
            let (h, c) = b3.split_at(b3.len() / 2);
            let mut payload = vec![4u8];
            payload.extend_from_slice(&[0, 0, 0, 1, 200]);
            payload.extend_from_slice(h);
            payload.extend_from_slice(&[0; 4]);
            input.extend(frame(
                FRAME_HEADERS,
                FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
                3,
                &payload,
            ));
            input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 3, c));
            let b5 = encode(&mut enc, &bad);
            input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 5, &b5));
            input.extend(frame(0x0, FLAG_END_STREAM, 5, b"\0\0\0\0\0"));
            let b7 = encode(&mut enc, &big);
            for (i, chunk) in b7.chunks(SAFE_FRAME_LEN).enumerate() {
                let last = (i + 1) * SAFE_FRAME_LEN >= b7.len();
                let kind = if i == 0 {
                    FRAME_HEADERS
                } else {
                    FRAME_CONTINUATION
                };
                let flags = if last { FLAG_END_HEADERS } else { 0 };
                input.extend(frame(kind, flags, 7, chunk));
            }
            let b9 = encode(&mut enc, &ok);
            input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 9, &b9));

            for step in [1, 3, 9, 1000, 1 << 20] {
                let out = rewrite(&input, step).unwrap();
                let seen = server_view(&out);
                let localhost = |h: &[(Vec<u8>, Vec<u8>)]| {
                    h.iter()
                        .map(|(n, v)| {
                            let v = if n == b":authority" {
                                b"localhost".to_vec()
                            } else {
                                v.clone()
                            };
                            (n.clone(), v)
                        })
                        .collect::<Vec<_>>()
                };
                assert_eq!(seen.len(), 5, "{authority} step {step}");
                assert_eq!(seen[0], (1, false, None, ok.clone()));
                assert_eq!(
                    seen[1],
                    (3, true, Some(vec![0, 0, 0, 1, 200]), localhost(&bad)),
                    "{authority} step {step}"
                );
                assert_eq!(seen[2], (5, false, None, localhost(&bad)));
                assert_eq!(seen[3], (7, false, None, localhost(&big)));
                assert_eq!(seen[4], (9, false, None, ok.clone()));
                let data: Vec<_> = frames(&out).into_iter().filter(|f| f.0 == 0).collect();
                assert_eq!(data, vec![(0, FLAG_END_STREAM, 5, b"\0\0\0\0\0".to_vec())]);
            }
        }
    }

    #[test]
    fn broken_framing_ends_the_connection() {
        let mut enc = loona_hpack::Encoder::new();
        let block = encode(&mut enc, &request("/tmp/csi.sock", &[]));
        let mut input = PREFACE.to_vec();
        input.extend(frame(FRAME_HEADERS, 0, 1, &block)); // no END_HEADERS
        input.extend(frame(0x0, 0, 1, b"x"));
        assert!(rewrite(&input, 4096).is_err());

        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff],
        ));
        assert!(rewrite(&input, 4096).is_err());

        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_END_HEADERS,
            1,
            &[9, 0x82],
        ));
        assert!(rewrite(&input, 4096).is_err());

        // cut off in the middle of a frame: forwarded as it is, for h2 to refuse
        let mut input = PREFACE.to_vec();
        input.extend(&frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block)[..12]);
        assert_eq!(rewrite(&input, 5).unwrap(), input);
    }

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
