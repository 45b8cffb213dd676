//! The control API transport: HTTP/1.1 + JSON, one request per connection, served by a thread beside the
//! workers — on the node's Unix socket (file permissions are the access control) and, optionally, on a TCP
//! address of the management network where every request must carry `Authorization: Bearer <token>`. The
//! endpoints are in [`crate::api`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

/// Answers a request: (method, path, body) → (status code, JSON body).
pub type Handler = dyn Fn(&str, &str, &[u8]) -> (u16, Value) + Send + Sync;

/// A control API server. Dropping it stops the thread (and removes the Unix socket file).
pub struct ControlServer {
    path: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Binds `path` (replacing a stale socket file, creating the directory) and serves `handler`.
    pub fn start(path: &Path, handler: Arc<Handler>) -> Result<ControlServer, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("node.control_socket: creating {}: {e}", dir.display()))?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(format!(
                    "node.control_socket: {} is in use by a running xlb",
                    path.display()
                ));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener =
            UnixListener::bind(path).map_err(|e| format!("node.control_socket: binding {}: {e}", path.display()))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("xlb-control".into())
            .spawn(move || {
                serve(
                    || listener.accept().map(|(s, _)| s),
                    |s| {
                        s.set_nonblocking(false)
                            .and_then(|_| s.set_read_timeout(Some(IO_TIMEOUT)))
                    },
                    &*handler,
                    None,
                    &stop2,
                )
            })
            .map_err(|e| e.to_string())?;
        Ok(ControlServer {
            path: Some(path.to_path_buf()),
            stop,
            thread: Some(thread),
        })
    }

    /// Serves `handler` on TCP `addr` (a management address), to requests that carry `token`.
    pub fn start_tcp(addr: SocketAddr, token: String, handler: Arc<Handler>) -> Result<ControlServer, String> {
        let listener = TcpListener::bind(addr).map_err(|e| format!("node.api_address: binding {addr}: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("node.api_address: {addr}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("xlb-api-tcp".into())
            .spawn(move || {
                serve(
                    || listener.accept().map(|(s, _)| s),
                    |s| {
                        s.set_nonblocking(false)?;
                        s.set_read_timeout(Some(IO_TIMEOUT))?;
                        s.set_write_timeout(Some(IO_TIMEOUT))
                    },
                    &*handler,
                    Some(&token),
                    &stop2,
                )
            })
            .map_err(|e| e.to_string())?;
        Ok(ControlServer {
            path: None,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Accepts connections until `stop`, answering one request on each (`prepare` sets blocking mode and timeouts).
fn serve<S: Read + Write>(
    accept: impl Fn() -> std::io::Result<S>,
    prepare: impl Fn(&mut S) -> std::io::Result<()>,
    handler: &Handler,
    token: Option<&str>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        match accept() {
            Ok(mut stream) => {
                if let Err(e) = prepare(&mut stream).and_then(|_| answer(&mut stream, handler, token)) {
                    tracing::debug!(error = %e, "control request failed");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Whether the request's headers carry `Authorization: Bearer <token>` (compared in constant time).
fn authorized(headers: &[httparse::Header<'_>], token: &str) -> bool {
    let expected = format!("Bearer {token}");
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("authorization"))
        .any(|h| {
            h.value.len() == expected.len()
                && h.value
                    .iter()
                    .zip(expected.as_bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
}

/// Reads one request (bounded size; the caller bounds the time) and writes one response. With `token`, a
/// request without it is refused (401) before the handler sees it.
fn answer(stream: &mut (impl Read + Write), handler: &Handler, token: Option<&str>) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let (status, body) = loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(head)) => {
                let content_length = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if head + content_length > buf.len() {
                    break (413, json!({"error": format!("request body over {MAX_REQUEST} bytes")}));
                }
                if len < head + content_length {
                    continue;
                }
                if token.is_some_and(|t| !authorized(req.headers, t)) {
                    break (
                        401,
                        json!({"error": "missing or wrong API token (Authorization: Bearer <token>)"}),
                    );
                }
                let (method, path) = (req.method.unwrap_or("").to_string(), req.path.unwrap_or("").to_string());
                break handler(&method, &path, &buf[head..head + content_length]);
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            Ok(httparse::Status::Partial) => break (431, json!({"error": "request headers too large"})),
            Err(e) => break (400, json!({"error": format!("bad HTTP request: {e}")})),
        }
    };
    let body = serde_json::to_vec_pretty(&body).unwrap_or_default();
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        _ => "Error",
    };
    write!(stream, "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    stream.write_all(&body)
}

/// Largest request (headers and body) the control socket reads.
const MAX_REQUEST: usize = 64 * 1024;
/// Longest wait for a request's bytes (and, over TCP, for the response to be taken).
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends `method path` (with an optional JSON body) to the control socket and returns (status, JSON body).
/// Used by `xlbctl` and tests.
pub fn request(socket: &Path, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to {} ({e}): is xlb running?", socket.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    exchange(stream, &socket.display().to_string(), None, method, path, body)
}

/// [`request`] over the TCP API at `addr`, with its `token`.
pub fn request_tcp(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot connect to {addr} ({e}): is xlb running with node.api_address?"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    exchange(stream, &addr.to_string(), Some(token), method, path, body)
}

/// Writes one request to `stream` and reads its response.
fn exchange(
    mut stream: impl Read + Write,
    peer: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: xlb\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the response from {peer}: {e}"))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let body_at = match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err("malformed response from the control socket".into()),
    };
    let status = resp.code.unwrap_or(0);
    let body = serde_json::from_slice(&raw[body_at..]).map_err(|e| format!("response body is not JSON: {e}"))?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_json_and_rejects_unknown_paths() {
        let dir = std::env::temp_dir().join(format!("xlb-control-test-{}", std::process::id()));
        let path = dir.join("c.sock");
        let handler: Arc<Handler> = Arc::new(|method, path, _body| match (method, path) {
            ("GET", "/v1/status") => (200, json!({"ok": true})),
            _ => (404, json!({"error": "no such endpoint"})),
        });
        let server = ControlServer::start(&path, handler).unwrap();
        assert_eq!(
            request(&path, "GET", "/v1/status", None).unwrap(),
            (200, json!({"ok": true}))
        );
        assert_eq!(request(&path, "GET", "/nope", None).unwrap().0, 404);
        // A second server on the same socket is refused while the first runs.
        let again = ControlServer::start(&path, Arc::new(|_: &str, _: &str, _: &[u8]| (200, json!({}))));
        assert!(again.err().unwrap().contains("in use"));
        drop(server);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn with_a_token_only_requests_carrying_it_reach_the_handler() {
        let handler = |_: &str, _: &str, _: &[u8]| (200, json!({"ok": true}));
        let status = |request: &str| {
            let mut ex = crate::testio::Exchange::new(request);
            answer(&mut ex, &handler, Some("0123456789abcdef")).unwrap();
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            resp.parse(&ex.response).unwrap();
            resp.code.unwrap()
        };
        assert_eq!(status("GET /v1/status HTTP/1.1\r\n\r\n"), 401);
        assert_eq!(
            status("GET /v1/status HTTP/1.1\r\nAuthorization: Bearer 0123456789abcdeX\r\n\r\n"),
            401
        );
        assert_eq!(
            status("GET /v1/status HTTP/1.1\r\nAuthorization: Bearer 0123456789abcde\r\n\r\n"),
            401
        );
        assert_eq!(
            status("GET /v1/status HTTP/1.1\r\nAuthorization: Basic 0123456789abcdef\r\n\r\n"),
            401
        );
        assert_eq!(
            status("GET /v1/status HTTP/1.1\r\nauthorization: Bearer 0123456789abcdef\r\n\r\n"),
            200
        );
    }
}
