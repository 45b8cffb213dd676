//! The control API transport: HTTP/1.1 + JSON, one request per connection, served by [`crate::http`] beside the
//! workers — on the node's Unix socket (file permissions are the access control) and, optionally, on a TCP
//! address of the management network where every request must carry `Authorization: Bearer <token>`. The
//! endpoints are in [`crate::api`]; the client and the body types are in the `xlb-api` crate.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::http::{self, HttpServer, Limits, Listener, Response};

/// Answers a request: (method, path, body) → (status code, JSON body).
pub type Handler = dyn Fn(&str, &str, &[u8]) -> (u16, Value) + Send + Sync;

/// Largest request body the control API reads (a listener or group definition is well under 4 KiB).
pub const MAX_BODY: usize = 64 * 1024;

/// The control API's per-connection limits.
pub const LIMITS: Limits = Limits {
    max_body: MAX_BODY,
    header_timeout: Duration::from_secs(5),
    conn_timeout: Duration::from_secs(10),
};

/// A control API server. Dropping it stops it (and removes the Unix socket file).
pub struct ControlServer {
    path: Option<PathBuf>,
    _server: HttpServer,
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
        let server = http::start("xlb-control", Listener::Unix(listener), LIMITS, service(handler, None))?;
        Ok(ControlServer {
            path: Some(path.to_path_buf()),
            _server: server,
        })
    }

    /// Serves `handler` on TCP `addr` (a management address), to requests that carry `token`.
    pub fn start_tcp(addr: SocketAddr, token: String, handler: Arc<Handler>) -> Result<ControlServer, String> {
        let listener = TcpListener::bind(addr).map_err(|e| format!("node.api_address: binding {addr}: {e}"))?;
        let server = http::start(
            "xlb-api-tcp",
            Listener::Tcp(listener),
            LIMITS,
            service(handler, Some(token)),
        )
        .map_err(|e| format!("node.api_address: {addr}: {e}"))?;
        Ok(ControlServer {
            path: None,
            _server: server,
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The HTTP service over `handler`: with `token`, a request without it is refused (401) before the handler sees
/// it.
pub(crate) fn service(handler: Arc<Handler>, token: Option<String>) -> Arc<http::Service> {
    Arc::new(move |req: http::Request| {
        if let Some(token) = &token {
            let presented = req.headers.get_all(hyper::header::AUTHORIZATION);
            if !presented.iter().any(|v| authorized(v.as_bytes(), token)) {
                return Response::error(401, "missing or wrong API token (Authorization: Bearer <token>)");
            }
        }
        let (status, body) = handler(&req.method, &req.path, &req.body);
        Response::json(status, &body)
    })
}

/// Whether an `Authorization` value is `Bearer <token>` (compared in constant time).
fn authorized(value: &[u8], token: &str) -> bool {
    let expected = format!("Bearer {token}");
    value.len() == expected.len()
        && value
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::{Read, Write};
    use xlb_api::client::{request, request_tcp};

    fn temp_socket(name: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("xlb-control-{name}-{}", std::process::id()));
        (dir.join("c.sock"), dir)
    }

    #[test]
    fn serves_json_and_rejects_unknown_paths() {
        let (path, dir) = temp_socket("serves");
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
        let handler: Arc<Handler> = Arc::new(|_: &str, _: &str, _: &[u8]| (200, json!({"ok": true})));
        // Port 0 on loopback: the kernel picks a free port; find it by binding first.
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let _server = ControlServer::start_tcp(addr, "0123456789abcdef".into(), handler).unwrap();
        let status = |auth: &str| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(
                s,
                "GET /v1/status HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out.split(' ').nth(1).unwrap().parse::<u16>().unwrap()
        };
        assert_eq!(status(""), 401);
        assert_eq!(status("Authorization: Bearer 0123456789abcdeX\r\n"), 401);
        assert_eq!(status("Authorization: Bearer 0123456789abcde\r\n"), 401);
        assert_eq!(status("Authorization: Basic 0123456789abcdef\r\n"), 401);
        assert_eq!(status("authorization: Bearer 0123456789abcdef\r\n"), 200);
        assert_eq!(
            request_tcp(addr, "0123456789abcdef", "GET", "/v1/status", None).unwrap(),
            (200, json!({"ok": true}))
        );
    }
}
