//! The HTTP/1.1 transport of the control API and the metrics endpoint: hyper on a single-threaded tokio runtime,
//! in one thread per server (never a datapath worker). Every connection is a task of that runtime, so a slow or
//! silent client holds only its own task: the others are read, answered and written meanwhile.
//!
//! Limits, per connection (one request each, `Connection: close`):
//! - the request head must arrive within [`Limits::header_timeout`] (hyper's header read timeout);
//! - the whole exchange (head, body, answer taken by the client) within [`Limits::conn_timeout`], else the
//!   connection is dropped: a trickling or non-reading client cannot hold the server;
//! - a body is framed by one `Content-Length` of at most [`Limits::max_body`] bytes: `Transfer-Encoding` is
//!   refused with 411, a repeated or non-numeric `Content-Length` with 400, a larger length with 413, each with a
//!   JSON `{"error": ...}` and before any of the body is read.
//!
//! The framing check looks at the request head before hyper does ([`check_head`]): hyper would refuse those
//! heads too, but with an empty 400 or 431 that does not say what was wrong. A head that passes is handed to
//! hyper unchanged ([`Rewind`]).
//!
//! Dropping an [`HttpServer`] stops its runtime at once: the listener closes and connections still open are
//! dropped, whatever their clients are doing.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{HeaderMap, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;

/// A request as a [`Service`] sees it: the body read in full (within the limits).
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An answer.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// `Allow` header (with 405).
    pub allow: Option<&'static str>,
}

impl Response {
    /// A JSON answer.
    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: serde_json::to_vec_pretty(body).unwrap_or_default(),
            allow: None,
        }
    }

    /// `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, &serde_json::json!({ "error": message.into() }))
    }
}

/// Answers requests; called on the server's thread (keep it short: other connections wait meanwhile).
pub type Service = dyn Fn(Request) -> Response + Send + Sync;

/// Per-connection limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body.
    pub max_body: usize,
    /// Longest wait for the request head.
    pub header_timeout: Duration,
    /// Longest time a connection may take in all: head, body, and the client taking the answer.
    pub conn_timeout: Duration,
}

/// A listening socket to serve.
pub enum Listener {
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
}

/// A running server. Dropping it stops it (promptly: open connections are dropped).
pub struct HttpServer {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `service` on `listener` from a new thread named `name`.
pub fn start(name: &str, listener: Listener, limits: Limits, service: Arc<Service>) -> Result<HttpServer, String> {
    match &listener {
        Listener::Unix(l) => l.set_nonblocking(true),
        Listener::Tcp(l) => l.set_nonblocking(true),
    }
    .map_err(|e| format!("{name}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("{name}: starting its runtime: {e}"))?;
    let (stop, mut stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            runtime.block_on(async move {
                let accepting = async {
                    match listener {
                        Listener::Unix(l) => {
                            let l = tokio::net::UnixListener::from_std(l)?;
                            loop {
                                match l.accept().await {
                                    Ok((s, _)) => spawn_connection(s, limits, service.clone()),
                                    Err(e) => accept_failed(e).await,
                                }
                            }
                        }
                        Listener::Tcp(l) => {
                            let l = tokio::net::TcpListener::from_std(l)?;
                            loop {
                                match l.accept().await {
                                    Ok((s, _)) => spawn_connection(s, limits, service.clone()),
                                    Err(e) => accept_failed(e).await,
                                }
                            }
                        }
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), std::io::Error>(())
                };
                tokio::select! {
                    _ = &mut stopped => {}
                    r = accepting => if let Err(e) = r {
                        tracing::error!(error = %e, "HTTP server stopped");
                    }
                }
            });
            // Dropping the runtime here drops every connection task still running.
        })
        .map_err(|e| format!("{name}: spawning its thread: {e}"))?;
    Ok(HttpServer {
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// After a failed accept (e.g. out of file descriptors): log, pause briefly, go on accepting.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

pub(crate) fn spawn_connection<S>(mut stream: S, limits: Limits, service: Arc<Service>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::task::spawn(async move {
        let exchange = async move {
            let head = tokio::time::timeout(limits.header_timeout, read_head(&mut stream)).await;
            let Ok(Ok(head)) = head else {
                return; // no complete head in time, or the client went away
            };
            if let Err(refusal) = check_head(&head, limits.max_body) {
                let _ = refuse(&mut stream, refusal).await;
                return;
            }
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(false)
                .serve_connection(
                    TokioIo::new(Rewind::new(head, stream)),
                    service_fn(move |req| answer(req, limits, service.clone())),
                );
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection failed");
            }
        };
        if tokio::time::timeout(limits.conn_timeout, exchange).await.is_err() {
            tracing::debug!("HTTP connection dropped: over its time limit");
        }
    });
}

/// Largest request head looked at by [`check_head`]; a longer one goes to hyper as it is (which refuses it).
const MAX_HEAD: usize = 16 * 1024;

/// Reads from `stream` until the end of the request head (`\r\n\r\n`), [`MAX_HEAD`] bytes, or EOF; returns
/// what was read (possibly some of the body too).
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    while buf.len() < MAX_HEAD && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

/// The framing rules on a request head: no `Transfer-Encoding`, at most one `Content-Length`, a decimal number
/// of at most `max_body`. A head that does not parse is left to hyper (which answers 400).
pub(crate) fn check_head(head: &[u8], max_body: usize) -> Result<(), Response> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return Ok(());
    }
    if let Some(te) = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    {
        return Err(Response::error(
            411,
            format!(
                "Transfer-Encoding ({}) is not accepted: send the body with a Content-Length",
                String::from_utf8_lossy(te.value)
            ),
        ));
    }
    let lengths: Vec<&[u8]> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value)
        .collect();
    match lengths.as_slice() {
        [] => Ok(()),
        [value] => {
            let text = String::from_utf8_lossy(value);
            let digits = text.trim();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Response::error(
                    400,
                    format!("Content-Length: {text:?} is not a byte count"),
                ));
            }
            match digits.parse::<u64>() {
                Ok(n) if n <= max_body as u64 => Ok(()),
                _ => Err(too_large(max_body)),
            }
        }
        more => Err(Response::error(
            400,
            format!("Content-Length given {} times: send it once", more.len()),
        )),
    }
}

/// Writes a refusal and closes the connection (hyper has not seen it).
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, r: Response) -> io::Result<()> {
    let reason = StatusCode::from_u16(r.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&r.body).await?;
    stream.shutdown().await
}

/// A stream that first yields bytes already read from it (the request head), then the rest.
struct Rewind<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewind<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind { prefix, at: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Checks the framing, reads the body within the limit, and calls the service.
async fn answer(
    req: hyper::Request<Incoming>,
    limits: Limits,
    service: Arc<Service>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    // The head passed [`check_head`]; the limit is enforced again on what is read.
    let (head, body) = req.into_parts();
    let response = match Limited::new(body, limits.max_body).collect().await {
        Ok(body) => service(Request {
            method: head.method.to_string(),
            path: head.uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
            headers: head.headers,
            body: body.to_bytes(),
        }),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => too_large(limits.max_body),
        Err(e) => Response::error(400, format!("reading the request body: {e}")),
    };
    Ok(to_hyper(response))
}

fn too_large(max_body: usize) -> Response {
    Response::error(
        413,
        format!("request body over {max_body} bytes (Content-Length too large)"),
    )
}

fn to_hyper(r: Response) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(Bytes::from(r.body)));
    *out.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    out.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(r.content_type));
    if let Some(allow) = r.allow {
        out.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Generous limits: the trickler below is not cut off by a timeout while the test runs.
    const PATIENT: Limits = Limits {
        max_body: 1024,
        header_timeout: Duration::from_secs(120),
        conn_timeout: Duration::from_secs(120),
    };

    fn echo_server(name: &str, limits: Limits) -> (HttpServer, std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("xlb-http-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let service: Arc<Service> = Arc::new(|req: Request| {
            Response::json(200, &serde_json::json!({"path": req.path, "body": req.body.len()}))
        });
        (
            start(name, Listener::Unix(listener), limits, service).unwrap(),
            path,
            dir,
        )
    }

    fn get(path: &std::path::Path, i: usize) -> String {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(s, "GET /n/{i} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn fifty_clients_are_answered_while_one_trickles_a_byte_per_second() {
        let (server, path, dir) = echo_server("trickle", PATIENT);
        // The trickler: a 30-byte body, one byte a second.
        let mut trickler = UnixStream::connect(&path).unwrap();
        trickler
            .write_all(b"PUT /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\n\r\n")
            .unwrap();
        let trickled = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicBool::new(false));
        let (t2, f2) = (trickled.clone(), finished.clone());
        let mut writer = trickler.try_clone().unwrap();
        let trickle = std::thread::spawn(move || {
            for _ in 0..30 {
                if writer.write_all(b"x").is_err() {
                    break;
                }
                t2.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_secs(1));
            }
            f2.store(true, Ordering::SeqCst);
        });
        while trickled.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        let clients: Vec<_> = (0..50)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || get(&path, i))
            })
            .collect();
        for (i, c) in clients.into_iter().enumerate() {
            let answer = c.join().unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(answer.contains(&format!("/n/{i}")), "{answer}");
        }
        // All 50 were answered while the trickler was still sending its body.
        assert!(
            !finished.load(Ordering::SeqCst),
            "the 50 answers waited for the trickler"
        );
        // Stopping the server does not wait for the trickler either: its connection is dropped.
        drop(server);
        assert!(!finished.load(Ordering::SeqCst), "stopping waited for the trickler");
        trickler.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut rest = Vec::new();
        assert!(
            trickler.read_to_end(&mut rest).is_ok(),
            "trickler's connection left open"
        );
        assert!(rest.is_empty(), "the trickler got an answer: {rest:?}");
        let _ = trickle.join();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_client_that_does_not_read_is_cut_off_at_the_connection_limit() {
        let limits = Limits {
            conn_timeout: Duration::from_millis(500),
            ..PATIENT
        };
        let dir = std::env::temp_dir().join(format!("xlb-http-noread-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // An answer far larger than any socket buffer.
        const BIG: usize = 32 << 20;
        let service: Arc<Service> = Arc::new(|_req: Request| Response {
            status: 200,
            content_type: "application/octet-stream",
            body: vec![b'x'; BIG],
            allow: None,
        });
        let server = start("noread", Listener::Unix(listener), limits, service).unwrap();
        let mut silent = UnixStream::connect(&path).unwrap();
        silent.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        // Another client is answered while the silent one holds its answer.
        let mut other = UnixStream::connect(&path).unwrap();
        other.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut got = vec![0u8; 4096];
        let n = other.read(&mut got).unwrap();
        assert!(got[..n].starts_with(b"HTTP/1.1 200"));
        drop(other);
        // The server gives the silent client up (long after its limit, a generous wait), so what it can read
        // afterwards stops short of the whole answer.
        std::thread::sleep(limits.conn_timeout * 10);
        silent.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut all = Vec::new();
        let read = silent.read_to_end(&mut all);
        assert!(read.is_ok(), "{read:?}");
        assert!(
            all.len() < BIG,
            "the whole answer was written to a client that did not read"
        );
        drop(server);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn framing_refusals_name_the_problem() {
        let (_server, path, dir) = echo_server("framing", PATIENT);
        let send = |request: &[u8]| {
            let mut s = UnixStream::connect(&path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            s.write_all(request).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let chunked = send(b"PUT /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n");
        assert!(chunked.starts_with("HTTP/1.1 411"), "{chunked}");
        assert!(chunked.contains("Transfer-Encoding"), "{chunked}");
        let big = send(b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2048\r\n\r\n");
        assert!(big.starts_with("HTTP/1.1 413"), "{big}");
        assert!(big.contains("1024 bytes"), "{big}");
        for (lengths, status, named) in [
            ("Content-Length: -1\r\n", 400, "byte count"),
            ("Content-Length: 1, 2\r\n", 400, "byte count"),
            ("Content-Length: 18446744073709551615\r\n", 413, "bytes"),
            ("Content-Length: 99999999999999999999999\r\n", 413, "bytes"),
            ("Content-Length: 2\r\nContent-Length: 2\r\n", 400, "2 times"),
            ("Content-Length: 2\r\ncontent-length: 40\r\n", 400, "2 times"),
        ] {
            let out = send(format!("PUT /x HTTP/1.1\r\nHost: t\r\n{lengths}\r\n{{}}").as_bytes());
            assert!(out.starts_with(&format!("HTTP/1.1 {status}")), "{lengths:?}: {out}");
            let body = out.split_once("\r\n\r\n").unwrap().1;
            let error: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(error["error"].as_str().unwrap().contains(named), "{lengths:?}: {out}");
        }
        let ok = send(b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}");
        assert!(ok.starts_with("HTTP/1.1 200") && ok.contains("\"body\": 2"), "{ok}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
