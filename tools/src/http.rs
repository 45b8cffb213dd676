//! The HTTP/1.1 transport of the control API and the metrics endpoint: hyper on a single-threaded tokio runtime,
//! in one thread per server (never a datapath worker). Every connection is a task of that runtime, so a slow or
//! silent client holds only its own task: the others are read, answered and written meanwhile.
//!
//! Limits, per connection (one request each, `Connection: close`):
//! - the request head must arrive within [`Limits::header_timeout`] (hyper's header read timeout);
//! - the whole exchange (head, body, answer taken by the client) within [`Limits::conn_timeout`], else the
//!   connection is dropped: a trickling or non-reading client cannot hold the server;
//! - a body is framed by one `Content-Length` of at most [`Limits::max_body`] bytes: `Transfer-Encoding` is
//!   refused with 411, a larger length with 413 before any of it is read; hyper itself refuses a head with an
//!   invalid or conflicting `Content-Length` (400, closing the connection).
//!
//! Dropping an [`HttpServer`] stops its runtime at once: the listener closes and connections still open are
//! dropped, whatever their clients are doing.

use std::convert::Infallible;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::service::service_fn;
use hyper::{HeaderMap, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
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

fn spawn_connection<S>(stream: S, limits: Limits, service: Arc<Service>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::task::spawn(async move {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(false)
            .serve_connection(
                TokioIo::new(stream),
                service_fn(move |req| answer(req, limits, service.clone())),
            );
        match tokio::time::timeout(limits.conn_timeout, conn).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "HTTP connection failed"),
            Err(_) => tracing::debug!("HTTP connection dropped: over its time limit"),
        }
    });
}

/// Checks the framing, reads the body within the limit, and calls the service.
async fn answer(
    req: hyper::Request<Incoming>,
    limits: Limits,
    service: Arc<Service>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let response = match framing(req.headers(), limits.max_body) {
        Err(refusal) => refusal,
        Ok(()) => {
            let (head, body) = req.into_parts();
            match Limited::new(body, limits.max_body).collect().await {
                Ok(body) => service(Request {
                    method: head.method.to_string(),
                    path: head.uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
                    headers: head.headers,
                    body: body.to_bytes(),
                }),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => too_large(limits.max_body),
                Err(e) => Response::error(400, format!("reading the request body: {e}")),
            }
        }
    };
    Ok(to_hyper(response))
}

/// A request body must come as one `Content-Length` (hyper has checked it is a number and that repeated ones
/// agree) of at most `max_body` bytes.
fn framing(headers: &HeaderMap, max_body: usize) -> Result<(), Response> {
    if let Some(te) = headers.get(TRANSFER_ENCODING) {
        return Err(Response::error(
            411,
            format!(
                "Transfer-Encoding ({}) is not accepted: send the body with a Content-Length",
                te.to_str().unwrap_or("?")
            ),
        ));
    }
    let length = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    match length {
        Some(n) if n > max_body as u64 => Err(too_large(max_body)),
        _ => Ok(()),
    }
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
